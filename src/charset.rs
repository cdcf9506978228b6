//! Text of received data sets, decoded with their Specific Character Set
//! (0008,0005) as PS3.5 section 6.1 and annexes H to K define it.
//!
//! dicom-rs 0.10 decodes text with the first value of Specific Character
//! Set only, and ignores a first value it does not know (an empty one, as
//! in `\ISO 2022 IR 87`, or `ISO_IR 148`). Such text is then decoded as
//! ISO 8859-1, one character per byte, so the bytes as received can be
//! recovered from it; [`Received`] does that and decodes them again here,
//! with ISO 2022 code extensions (escape sequences switching G0 and G1).
//!
//! What is decoded:
//!
//! * single-byte sets: ISO_IR 6, 100, 101, 109, 110, 126, 127, 138, 144,
//!   148, 166, 203 and 13 (JIS X 0201), plain or in their ISO 2022 forms;
//! * multi-byte sets with code extensions: ISO 2022 IR 87 (JIS X 0208),
//!   159 (JIS X 0212), 149 (KS X 1001) and 58 (GB 2312);
//! * ISO_IR 192 (UTF-8), GB18030 and GBK, as the only value.
//!
//! A value that cannot be decoded faithfully (an unknown character set, an
//! escape sequence for a set not listed above, a byte the active sets do
//! not define) is an error; [`Received::element`] then applies the
//! fallback described there rather than copy garbage.

use std::borrow::Cow;

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, VR};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;
use encoding_rs::Encoding;

/// What a 94-character set designated to G0 (bytes 0x21-0x7E) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    /// ISO-IR 6 (ASCII).
    Ascii,
    /// ISO-IR 14, JIS X 0201 Romaji. Read as ASCII (0x5C and 0x7E stay
    /// backslash and tilde), as the DICOM examples and other toolkits do.
    Romaji,
    /// ISO-IR 87, JIS X 0208 (two bytes per character).
    Jis0208,
    /// ISO-IR 159, JIS X 0212 (two bytes per character).
    Jis0212,
}

/// What the set designated to G1 (bytes 0xA0-0xFF) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G1 {
    /// Nothing designated: a byte above 0x7F is an error.
    None,
    /// ISO 8859-1 right-hand part (ISO-IR 100).
    Latin1,
    /// The right-hand part of another ISO 8859 (or TIS 620) set.
    Upper(&'static Encoding),
    /// ISO-IR 13, JIS X 0201 Katakana.
    Katakana,
    /// ISO-IR 149, KS X 1001 (two bytes per character).
    Ksx1001,
    /// ISO-IR 58, GB 2312 (two bytes per character).
    Gb2312,
}

/// What a Defined Term of Specific Character Set stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    /// Initial G0 and G1 (value 1) of a set that code extensions may
    /// switch away from.
    Iso2022(G0, G1),
    /// A set only designated by an escape sequence (not valid as value 1).
    Extension,
    /// A set without code extensions: the whole value in one encoding.
    Whole(&'static Encoding),
}

fn term(t: &str) -> Option<Term> {
    use Term::*;
    let upper = |e| Iso2022(G0::Ascii, G1::Upper(e));
    Some(match t {
        "" | "ISO_IR 6" | "ISO 2022 IR 6" => Iso2022(G0::Ascii, G1::None),
        "ISO_IR 100" | "ISO 2022 IR 100" => Iso2022(G0::Ascii, G1::Latin1),
        "ISO_IR 101" | "ISO 2022 IR 101" => upper(encoding_rs::ISO_8859_2),
        "ISO_IR 109" | "ISO 2022 IR 109" => upper(encoding_rs::ISO_8859_3),
        "ISO_IR 110" | "ISO 2022 IR 110" => upper(encoding_rs::ISO_8859_4),
        "ISO_IR 126" | "ISO 2022 IR 126" => upper(encoding_rs::ISO_8859_7),
        "ISO_IR 127" | "ISO 2022 IR 127" => upper(encoding_rs::ISO_8859_6),
        "ISO_IR 138" | "ISO 2022 IR 138" => upper(encoding_rs::ISO_8859_8),
        "ISO_IR 144" | "ISO 2022 IR 144" => upper(encoding_rs::ISO_8859_5),
        // windows-1254 and windows-874 equal ISO 8859-9 and TIS 620 from
        // 0xA0 up, the only bytes a G1 set covers.
        "ISO_IR 148" | "ISO 2022 IR 148" => upper(encoding_rs::WINDOWS_1254),
        "ISO_IR 166" | "ISO 2022 IR 166" => upper(encoding_rs::WINDOWS_874),
        "ISO_IR 203" | "ISO 2022 IR 203" => upper(encoding_rs::ISO_8859_15),
        "ISO_IR 13" | "ISO 2022 IR 13" => Iso2022(G0::Romaji, G1::Katakana),
        "ISO 2022 IR 87" | "ISO 2022 IR 159" | "ISO 2022 IR 149" | "ISO 2022 IR 58" => Extension,
        "ISO_IR 192" => Whole(encoding_rs::UTF_8),
        "GB18030" => Whole(encoding_rs::GB18030),
        // GB2312 is no Defined Term, but dicom-rs reads it as GBK.
        "GBK" | "GB2312" => Whole(encoding_rs::GBK),
        _ => return None,
    })
}

/// Why a text value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The character sets a data set declares, ready to decode its text bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharacterSets {
    /// The Specific Character Set as declared (values trimmed).
    declared: Vec<String>,
    mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Iso2022 {
        g0: G0,
        g1: G1,
    },
    Whole(&'static Encoding),
    /// Value 1 is not a term this module knows: only ASCII text decodes.
    Unknown(String),
}

impl CharacterSets {
    /// The sets of a Specific Character Set with these values. Values are
    /// trimmed of spaces. Without values (or with one empty value) text is
    /// in the default repertoire, and a byte above 0x7F is read as
    /// ISO 8859-1.
    pub fn new<S: AsRef<str>>(values: &[S]) -> CharacterSets {
        let declared: Vec<String> = values
            .iter()
            .map(|v| v.as_ref().trim_matches([' ', '\0']).to_string())
            .collect();
        let first = declared.first().map_or("", String::as_str);
        let mode = match term(first) {
            // No declaration: the default repertoire, but bytes above 0x7F
            // are read as ISO 8859-1, as dicom-rs and many readers do.
            Some(Term::Iso2022(G0::Ascii, G1::None)) if declared.len() <= 1 && first.is_empty() => {
                Mode::Iso2022 {
                    g0: G0::Ascii,
                    g1: G1::Latin1,
                }
            }
            Some(Term::Iso2022(g0, g1)) => Mode::Iso2022 { g0, g1 },
            Some(Term::Whole(e)) => Mode::Whole(e),
            Some(Term::Extension) | None => Mode::Unknown(first.to_string()),
        };
        CharacterSets { declared, mode }
    }

    /// The Specific Character Set as declared, values joined by `\`.
    pub fn declared(&self) -> String {
        self.declared.join("\\")
    }

    /// Decode the bytes of one text value. With `split`, the bytes are the
    /// values of a multi-valued string VR (SH, LO, PN, UC) and a backslash
    /// in the initial G0 set separates them; without, a backslash is text
    /// (ST, LT, UT).
    pub fn decode(&self, raw: &[u8], split: bool) -> Result<Vec<String>, DecodeError> {
        match &self.mode {
            Mode::Whole(enc) => {
                let text = enc
                    .decode_without_bom_handling_and_without_replacement(raw)
                    .ok_or_else(|| DecodeError(format!("bytes that are not {}", enc.name())))?;
                Ok(if split {
                    text.split('\\').map(String::from).collect()
                } else {
                    vec![text.into_owned()]
                })
            }
            Mode::Iso2022 { g0, g1 } => Iso2022 {
                initial: (*g0, *g1),
            }
            .decode(raw, split),
            Mode::Unknown(name) => {
                if raw
                    .iter()
                    .all(|b| (0x20..0x7F).contains(b) || b"\t\n\x0c\r".contains(b))
                {
                    let text = String::from_utf8_lossy(raw);
                    Ok(if split {
                        text.split('\\').map(String::from).collect()
                    } else {
                        vec![text.into_owned()]
                    })
                } else {
                    Err(DecodeError(format!(
                        "text that is not ASCII in character set {name:?}, which is not supported"
                    )))
                }
            }
        }
    }
}

/// A decoder for ISO 2022 8-bit text with code extensions.
struct Iso2022 {
    initial: (G0, G1),
}

impl Iso2022 {
    fn decode(&self, raw: &[u8], split: bool) -> Result<Vec<String>, DecodeError> {
        let err = |at: usize, what: &str| DecodeError(format!("{what} at byte {at}"));
        let (mut g0, mut g1) = self.initial;
        let mut values = Vec::new();
        let mut cur = String::new();
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if b == 0x1B {
                let (len, set) = escape(&raw[i + 1..]).ok_or_else(|| {
                    err(
                        i,
                        "an escape sequence for a character set that is not supported",
                    )
                })?;
                match set {
                    Designation::G0(s) => g0 = s,
                    Designation::G1(s) => g1 = s,
                }
                i += 1 + len;
                continue;
            }
            let two_byte_g0 = matches!(g0, G0::Jis0208 | G0::Jis0212);
            if b < 0x80 && (!two_byte_g0 || b < 0x21 || b == 0x7F) {
                if split && b == b'\\' {
                    values.push(std::mem::take(&mut cur));
                    (g0, g1) = self.initial;
                } else {
                    cur.push(char::from(b));
                    // G0 returns to value 1's set at each line end.
                    if matches!(b, b'\n' | b'\r' | 0x0C) {
                        g0 = self.initial.0;
                    }
                }
                i += 1;
                continue;
            }
            if b < 0x80 {
                // A two-byte G0 set (JIS X 0208 or 0212), read as EUC-JP.
                let t = *raw
                    .get(i + 1)
                    .filter(|t| (0x21..0x7F).contains(*t))
                    .ok_or_else(|| err(i, "half a two-byte character"))?;
                let euc: &[u8] = if g0 == G0::Jis0212 {
                    &[0x8F, b | 0x80, t | 0x80]
                } else {
                    &[b | 0x80, t | 0x80]
                };
                cur.push(
                    one_char(encoding_rs::EUC_JP, euc)
                        .ok_or_else(|| err(i, "a JIS code without a character"))?,
                );
                i += 2;
                continue;
            }
            match g1 {
                G1::None => return Err(err(i, "a byte above 0x7F without a G1 character set")),
                _ if b < 0xA0 => return Err(err(i, "a C1 control byte")),
                G1::Latin1 => {
                    cur.push(char::from(b));
                    i += 1;
                }
                G1::Upper(enc) => {
                    cur.push(
                        one_char(enc, &[b])
                            .ok_or_else(|| err(i, "a byte the character set does not define"))?,
                    );
                    i += 1;
                }
                G1::Katakana => {
                    if !(0xA1..=0xDF).contains(&b) {
                        return Err(err(i, "a byte JIS X 0201 does not define"));
                    }
                    let c = char::from_u32(0xFF61 + u32::from(b - 0xA1))
                        .ok_or_else(|| err(i, "a byte JIS X 0201 does not define"))?;
                    cur.push(c);
                    i += 1;
                }
                G1::Ksx1001 | G1::Gb2312 => {
                    let t = *raw
                        .get(i + 1)
                        .filter(|t| (0xA1..0xFF).contains(*t))
                        .ok_or_else(|| err(i, "half a two-byte character"))?;
                    let enc = if g1 == G1::Ksx1001 {
                        encoding_rs::EUC_KR
                    } else {
                        encoding_rs::GBK
                    };
                    cur.push(
                        one_char(enc, &[b, t])
                            .ok_or_else(|| err(i, "a two-byte code without a character"))?,
                    );
                    i += 2;
                }
            }
        }
        values.push(cur);
        Ok(values)
    }
}

enum Designation {
    G0(G0),
    G1(G1),
}

/// The escape sequence starting `rest` (after ESC): its length and what it
/// designates (PS3.3 tables C.12-3 and C.12-4).
fn escape(rest: &[u8]) -> Option<(usize, Designation)> {
    use Designation as D;
    let upper = |e| D::G1(G1::Upper(e));
    let found = match rest {
        [b'(', b'B', ..] => (2, D::G0(G0::Ascii)),
        [b'(', b'J', ..] => (2, D::G0(G0::Romaji)),
        [b')', b'I', ..] => (2, D::G1(G1::Katakana)),
        [b'$', b'B', ..] | [b'$', b'@', ..] => (2, D::G0(G0::Jis0208)),
        [b'$', b'(', b'D', ..] => (3, D::G0(G0::Jis0212)),
        [b'$', b')', b'C', ..] => (3, D::G1(G1::Ksx1001)),
        [b'$', b')', b'A', ..] => (3, D::G1(G1::Gb2312)),
        [b'-', f, ..] => (
            2,
            match f {
                b'A' => D::G1(G1::Latin1),
                b'B' => upper(encoding_rs::ISO_8859_2),
                b'C' => upper(encoding_rs::ISO_8859_3),
                b'D' => upper(encoding_rs::ISO_8859_4),
                b'F' => upper(encoding_rs::ISO_8859_7),
                b'G' => upper(encoding_rs::ISO_8859_6),
                b'H' => upper(encoding_rs::ISO_8859_8),
                b'L' => upper(encoding_rs::ISO_8859_5),
                b'M' => upper(encoding_rs::WINDOWS_1254),
                b'T' => upper(encoding_rs::WINDOWS_874),
                b'b' => upper(encoding_rs::ISO_8859_15),
                _ => return None,
            },
        ),
        _ => return None,
    };
    Some(found)
}

/// The single character these bytes encode, if they encode exactly one.
fn one_char(enc: &'static Encoding, bytes: &[u8]) -> Option<char> {
    let s = enc.decode_without_bom_handling_and_without_replacement(bytes)?;
    let mut chars = s.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// Whether text of this VR is decoded with the Specific Character Set.
fn is_text_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::SH | VR::LO | VR::PN | VR::UC | VR::ST | VR::LT | VR::UT
    )
}

/// How text elements of an object read by dicom-object are made right.
#[derive(Debug, Clone)]
pub struct Received {
    sets: CharacterSets,
    /// The codec dicom-rs decoded the text with.
    used: SpecificCharacterSet,
    /// Whether dicom-rs decoded the text as the declaration says.
    faithful: bool,
}

impl Received {
    /// The text decoding of an object read with dicom-object, from its
    /// Specific Character Set.
    ///
    /// dicom-rs's decoding is kept when the declaration is missing or a
    /// single value dicom-rs knows (text without a declaration that is
    /// not ASCII is thus read as ISO 8859-1, as dicom-rs does).
    pub fn of(obj: &InMemDicomObject) -> Received {
        let values: Vec<String> = obj
            .element(dicom_dictionary_std::tags::SPECIFIC_CHARACTER_SET)
            .ok()
            .and_then(|e| e.value().to_multi_str().ok().map(|v| v.to_vec()))
            .unwrap_or_default();
        // What dicom-parser does: the first value, when it knows it.
        let used = values
            .first()
            .and_then(|v| SpecificCharacterSet::from_code(v))
            .unwrap_or_default();
        let first_blank = values.first().is_none_or(|v| v.trim().is_empty());
        let faithful = values.len() <= 1
            && (first_blank
                || values
                    .first()
                    .and_then(|v| SpecificCharacterSet::from_code(v))
                    .is_some());
        Received {
            sets: CharacterSets::new(&values),
            used,
            faithful,
        }
    }

    /// The bytes dicom-rs decoded into `text`, when they can be known.
    fn bytes(&self, text: &str) -> Option<Vec<u8>> {
        let name = self.used.name();
        let latin1 = name == "ISO_IR 6" || name == "ISO_IR 100";
        let katakana = name == "ISO_IR 13";
        text.chars()
            .map(|c| {
                let u = u32::from(c);
                if u < 0x80 || (latin1 && u <= 0xFF) {
                    u8::try_from(u).ok()
                } else if katakana && (0xFF61..=0xFF9F).contains(&u) {
                    u8::try_from(u - 0xFF61 + 0xA1).ok()
                } else {
                    None
                }
            })
            .collect()
    }

    /// Decode what dicom-rs read as `values`; with `split`, they are the
    /// values of a multi-valued VR (dicom-rs split the bytes at each
    /// backslash, which may have been part of a two-byte character).
    fn decode(&self, values: &[String], split: bool) -> Result<Vec<String>, DecodeError> {
        let raw = self
            .bytes(&values.join("\\"))
            .ok_or_else(|| DecodeError("text dicom-rs could not read byte for byte".into()))?;
        self.sets.decode(&raw, split)
    }

    /// The element with its text (also in sequence items) decoded as its
    /// Specific Character Set says.
    ///
    /// When a value cannot be decoded faithfully: a Person Name keeps the
    /// first (alphabetic) component group of each of its values when that
    /// group decodes, and is empty otherwise; other text is emptied. A
    /// warning names the attribute.
    pub fn element(&self, el: &InMemElement) -> InMemElement {
        if self.faithful {
            return el.clone();
        }
        match el.value() {
            Value::Sequence(seq) => {
                let items: Vec<InMemDicomObject> = seq
                    .items()
                    .iter()
                    .map(|item| {
                        InMemDicomObject::from_element_iter(item.iter().map(|e| self.element(e)))
                    })
                    .collect();
                DataElement::new(
                    el.tag(),
                    VR::SQ,
                    DataSetSequence::new(items, Length::UNDEFINED),
                )
            }
            Value::Primitive(p) if is_text_vr(el.vr()) => {
                let (values, split): (Cow<'_, [String]>, bool) = match p {
                    PrimitiveValue::Str(s) => (Cow::Owned(vec![s.clone()]), false),
                    PrimitiveValue::Strs(v) => (Cow::Borrowed(&v[..]), true),
                    _ => return el.clone(),
                };
                let decoded = match self.decode(&values, split) {
                    Ok(v) => v,
                    Err(e) => {
                        let kept = self.fallback(el.vr(), &values);
                        tracing::warn!(
                            tag = %el.tag(),
                            charset = %self.sets.declared(),
                            "text not copied as received: {e}; {}",
                            if kept.iter().any(|v| !v.is_empty()) {
                                "the alphabetic name is kept"
                            } else {
                                "the value is left empty"
                            }
                        );
                        kept
                    }
                };
                let value = if split {
                    PrimitiveValue::Strs(decoded.into_iter().collect())
                } else {
                    PrimitiveValue::Str(decoded.concat())
                };
                DataElement::new(el.tag(), el.vr(), value)
            }
            _ => el.clone(),
        }
    }

    /// What is kept of values that cannot be decoded: see [`Self::element`].
    fn fallback(&self, vr: VR, values: &[String]) -> Vec<String> {
        if vr != VR::PN {
            return vec![String::new()];
        }
        let kept: Vec<String> = values
            .iter()
            .map(|v| {
                let alphabetic = v.split('=').next().unwrap_or_default();
                self.bytes(alphabetic)
                    .and_then(|b| self.sets.decode(&b, false).ok())
                    .map(|d| d.concat())
                    .unwrap_or_default()
            })
            .collect();
        if kept.iter().all(String::is_empty) {
            vec![String::new()]
        } else {
            kept
        }
    }
}

/// Decode the raw bytes of a text attribute (SH, LO, PN, UC) of a data set
/// with Specific Character Set `sets`; values joined by `\`. A value that
/// cannot be decoded is treated as [`Received::element`] does (for a PN,
/// its alphabetic group; else empty).
pub fn decode_raw(sets: &CharacterSets, raw: &[u8], pn: bool) -> String {
    match sets.decode(raw, true) {
        Ok(v) => v.join("\\"),
        Err(_) if pn => raw
            .split(|b| *b == b'\\')
            .map(|v| {
                let alphabetic = v.split(|b| *b == b'=').next().unwrap_or_default();
                sets.decode(alphabetic, false)
                    .map(|d| d.concat())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\\"),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESC: u8 = 0x1B;

    fn bytes(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// PS3.5 H.3.1: `\ISO 2022 IR 87`.
    fn yamada() -> Vec<u8> {
        bytes(&[
            b"Yamada^Tarou=",
            &[ESC, b'$', b'B'],
            b";3ED",
            &[ESC, b'(', b'B'],
            b"^",
            &[ESC, b'$', b'B'],
            b"B@O:",
            &[ESC, b'(', b'B'],
            b"=",
            &[ESC, b'$', b'B'],
            b"$d$^$@",
            &[ESC, b'(', b'B'],
            b"^",
            &[ESC, b'$', b'B'],
            b"$?$m$&",
            &[ESC, b'(', b'B'],
        ])
    }

    /// PS3.5 I.2: `\ISO 2022 IR 149`.
    fn hong() -> Vec<u8> {
        let g1 = [ESC, b'$', b')', b'C'];
        bytes(&[
            b"Hong^Gildong=",
            &g1,
            &[0xFB, 0xF3],
            b"^",
            &g1,
            &[0xD1, 0xCE, 0xD4, 0xD7],
            b"=",
            &g1,
            &[0xC8, 0xAB],
            b"^",
            &g1,
            &[0xB1, 0xE6, 0xB5, 0xBF],
        ])
    }

    fn one(sets: &[&str], raw: &[u8]) -> Result<String, DecodeError> {
        CharacterSets::new(sets)
            .decode(raw, true)
            .map(|v| v.join("\\"))
    }

    #[test]
    fn japanese_with_code_extensions() {
        let want = "Yamada^Tarou=山田^太郎=やまだ^たろう";
        assert_eq!(one(&["", "ISO 2022 IR 87"], &yamada()).as_deref(), Ok(want));
        assert_eq!(
            one(&["ISO 2022 IR 6", "ISO 2022 IR 87"], &yamada()).as_deref(),
            Ok(want)
        );
        // PS3.5 H.3.2: ISO 2022 IR 13 in value 1, katakana in G1.
        let raw = bytes(&[
            &[0xD4, 0xCF, 0xC0, 0xDE],
            b"^",
            &[0xC0, 0xDB, 0xB3],
            b"=",
            &[ESC, b'$', b'B'],
            b";3ED",
            &[ESC, b'(', b'J'],
            b"^",
            &[ESC, b'$', b'B'],
            b"B@O:",
            &[ESC, b'(', b'J'],
        ]);
        assert_eq!(
            one(&["ISO 2022 IR 13", "ISO 2022 IR 87"], &raw).as_deref(),
            Ok("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎")
        );
    }

    #[test]
    fn a_backslash_inside_a_kanji_does_not_split_values() {
        // JIS 0x305C: its second byte is a backslash.
        let raw = bytes(&[&[ESC, b'$', b'B'], b"0\\", &[ESC, b'(', b'B'], b"\\B"]);
        let kanji = encoding_rs::EUC_JP
            .decode_without_bom_handling_and_without_replacement(&[0xB0, 0xDC])
            .expect("a JIS X 0208 code")
            .into_owned();
        assert_eq!(
            CharacterSets::new(&["", "ISO 2022 IR 87"]).decode(&raw, true),
            Ok(vec![kanji, "B".to_string()])
        );
    }

    #[test]
    fn korean_and_turkish() {
        assert_eq!(
            one(&["", "ISO 2022 IR 149"], &hong()).as_deref(),
            Ok("Hong^Gildong=洪^吉洞=홍^길동")
        );
        let raw = [
            b'\xD6', b'z', b't', 0xFC, b'r', b'k', b'^', 0xDE, b'u', b'l', b'e',
        ];
        assert_eq!(one(&["ISO_IR 148"], &raw).as_deref(), Ok("Öztürk^Şule"));
        assert_eq!(
            one(&["ISO 2022 IR 100"], b"M\xFCller").as_deref(),
            Ok("Müller")
        );
    }

    #[test]
    fn what_cannot_be_decoded_is_an_error() {
        // JIS X 0213 (ESC $ ( Q) is not a DICOM character set.
        let raw = bytes(&[b"Yamada=", &[ESC, b'$', b'(', b'Q'], b";3"]);
        assert!(one(&["", "ISO 2022 IR 87"], &raw).is_err());
        // A byte above 0x7F without a G1 set.
        assert!(one(&["ISO 2022 IR 6", "ISO 2022 IR 87"], b"M\xFCller").is_err());
        // An unknown set: only ASCII decodes.
        assert_eq!(one(&["ISO_IR 999"], b"Doe^Jane").as_deref(), Ok("Doe^Jane"));
        assert!(one(&["ISO_IR 999"], b"M\xFCller").is_err());
        // Half a two-byte character.
        assert!(one(&["", "ISO 2022 IR 149"], &[ESC, b'$', b')', b'C', 0xB1]).is_err());
        // Without a declaration, ISO 8859-1 (as dicom-rs reads it).
        assert_eq!(one(&[], b"M\xFCller").as_deref(), Ok("Müller"));
        // The fallback for a person name: the alphabetic group.
        let sets = CharacterSets::new(&["", "ISO 2022 IR 87"]);
        assert_eq!(decode_raw(&sets, &raw, true), "Yamada");
        assert_eq!(decode_raw(&sets, &raw, false), "");
    }
}
