//! A streaming structural check of a received data set.
//!
//! The node stores data sets exactly as received, so it never needs them in
//! memory. This walker reads element headers in the negotiated transfer
//! syntax, descends into sequences and encapsulated pixel data, skips every
//! value it does not need, and keeps the few top-level attributes that index
//! the instance. Memory stays bounded whatever the size of the pixel data, and
//! a data set that is truncated or structurally broken is refused before it
//! is acknowledged.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Seek};

use crate::charset::{self, CharacterSets};

/// Attributes read from the top level of a data set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub specific_character_set: Option<String>,
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    pub study_description: Option<String>,
    pub series_description: Option<String>,
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub study_id: Option<String>,
    pub series_number: Option<i64>,
    pub instance_number: Option<i64>,
    pub frame_of_reference_uid: Option<String>,
}

/// How the data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    pub const IMPLICIT_LE: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
    };
    pub const EXPLICIT_LE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };
    pub const EXPLICIT_BE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: true,
    };
}

/// Why a data set was refused.
#[derive(Debug)]
pub enum ScanError {
    /// Reading the stored bytes failed (the disk, not the data).
    Io(io::Error),
    /// A deflated data set whose deflate stream does not decode, ends
    /// early, or is followed by more than its padding.
    Deflate(String),
    Truncated {
        offset: u64,
        what: String,
    },
    Invalid {
        offset: u64,
        what: String,
    },
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Io(e) => write!(f, "read error: {e}"),
            ScanError::Deflate(what) => write!(f, "deflated data set: {what}"),
            ScanError::Truncated { offset, what } => {
                write!(f, "data set truncated at byte {offset}: {what}")
            }
            ScanError::Invalid { offset, what } => {
                write!(f, "malformed data set at byte {offset}: {what}")
            }
        }
    }
}

impl std::error::Error for ScanError {}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const MAX_DEPTH: usize = 64;
/// Largest top-level value read for indexing; longer ones are skipped.
const MAX_KEPT_VALUE: u32 = 1024;

/// A byte source that can skip forward cheaply and knows where it is.
trait Source {
    fn read_exact_at(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn skip(&mut self, n: u64) -> io::Result<u64>;
    fn position(&self) -> u64;
    /// Bytes left when known (files), `None` for streams.
    fn remaining(&self) -> Option<u64>;
}

/// A seekable file region: skipping is a seek, bounded by the file length.
struct FileSource<R> {
    inner: BufReader<R>,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Source for FileSource<R> {
    fn read_exact_at(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_full(&mut self.inner, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let n = n.min(self.len.saturating_sub(self.pos));
        self.inner.seek_relative(n as i64)?;
        self.pos += n;
        Ok(n)
    }
    fn position(&self) -> u64 {
        self.pos
    }
    fn remaining(&self) -> Option<u64> {
        Some(self.len.saturating_sub(self.pos))
    }
}

/// A forward-only stream (e.g. an inflating reader): skipping reads and drops.
struct StreamSource<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Source for StreamSource<R> {
    fn read_exact_at(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_full(&mut self.inner, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += skipped;
        Ok(skipped)
    }
    fn position(&self) -> u64 {
        self.pos
    }
    fn remaining(&self) -> Option<u64> {
        None
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A reader that notes whether reading from it failed, so that an error
/// coming out of the inflater can be told apart: the file's (I/O) or the
/// deflate stream's (the data).
struct Watched<R> {
    inner: R,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read(buf);
        if matches!(&r, Err(e) if e.kind() != io::ErrorKind::Interrupted) {
            self.failed.set(true);
        }
        r
    }
}

/// Scan a data set stored in a file from `offset` to the end of the file.
pub fn scan_file<R: Read + Seek>(
    mut file: R,
    offset: u64,
    encoding: Encoding,
    deflated: bool,
) -> Result<Header, ScanError> {
    let len = file.seek(io::SeekFrom::End(0))?;
    file.seek(io::SeekFrom::Start(offset))?;
    if deflated {
        let failed = std::rc::Rc::new(std::cell::Cell::new(false));
        let reader = BufReader::with_capacity(
            64 * 1024,
            Watched {
                inner: file,
                failed: failed.clone(),
            },
        );
        let inflater = BufReader::new(flate2::bufread::DeflateDecoder::new(reader));
        let mut walker = Walker::new(StreamSource {
            inner: inflater,
            pos: 0,
        });
        // flate2 reports a corrupt or incomplete stream as an I/O error.
        let deflate_or_io = |e: io::Error| {
            if failed.get() {
                ScanError::Io(e)
            } else {
                ScanError::Deflate(e.to_string())
            }
        };
        match walker.data_set(encoding, 0, None, false) {
            Ok(()) => {}
            Err(ScanError::Io(e)) => return Err(deflate_or_io(e)),
            Err(e) => return Err(e),
        }
        // The walk ended where the inflater did, at the end of the deflate
        // stream. What follows it is not part of the data set: at most the
        // one NUL that pads a stream of odd length to an even one.
        let decoder = walker.src.inner.into_inner();
        let consumed = decoder.total_in();
        let mut rest = decoder.into_inner();
        let mut tail = [0u8; 2];
        let n = read_full(&mut rest, &mut tail).map_err(deflate_or_io)?;
        if n > 1 || (n == 1 && tail[0] != 0) {
            let extra = len.saturating_sub(offset).saturating_sub(consumed);
            return Err(ScanError::Deflate(format!(
                "{extra} bytes after the end of the deflate stream"
            )));
        }
        Ok(walker.header)
    } else {
        let reader = BufReader::with_capacity(64 * 1024, file);
        Walker::new(FileSource {
            inner: reader,
            pos: 0,
            len: len.saturating_sub(offset),
        })
        .run(encoding)
    }
}

/// Scan a data set held in memory (tests and small objects).
pub fn scan_bytes(bytes: &[u8], encoding: Encoding) -> Result<Header, ScanError> {
    scan_file(io::Cursor::new(bytes), 0, encoding, false)
}

struct Walker<S> {
    src: S,
    header: Header,
    charset: CharacterSets,
}

struct ElementHeader {
    vr: Option<[u8; 2]>,
    len: u32,
    offset: u64,
}

impl<S: Source> Walker<S> {
    fn new(src: S) -> Self {
        Walker {
            src,
            header: Header::default(),
            charset: CharacterSets::new::<&str>(&[]),
        }
    }

    fn run(mut self, enc: Encoding) -> Result<Header, ScanError> {
        self.data_set(enc, 0, None, false)?;
        Ok(self.header)
    }

    fn truncated(&self, what: impl Into<String>) -> ScanError {
        ScanError::Truncated {
            offset: self.src.position(),
            what: what.into(),
        }
    }

    fn invalid(&self, offset: u64, what: impl Into<String>) -> ScanError {
        ScanError::Invalid {
            offset,
            what: what.into(),
        }
    }

    fn u16(&self, b: [u8; 2], enc: Encoding) -> u16 {
        if enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: [u8; 4], enc: Encoding) -> u32 {
        if enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Read a tag; `Ok(None)` at a clean end of input.
    fn tag(&mut self, enc: Encoding) -> Result<Option<(u16, u16)>, ScanError> {
        let mut b = [0u8; 4];
        match self.src.read_exact_at(&mut b)? {
            0 => Ok(None),
            4 => Ok(Some((
                self.u16([b[0], b[1]], enc),
                self.u16([b[2], b[3]], enc),
            ))),
            _ => Err(self.truncated("partial tag")),
        }
    }

    fn len4(&mut self, enc: Encoding) -> Result<u32, ScanError> {
        let mut b = [0u8; 4];
        if self.src.read_exact_at(&mut b)? != 4 {
            return Err(self.truncated("partial length"));
        }
        Ok(self.u32(b, enc))
    }

    fn element_header(
        &mut self,
        tag: (u16, u16),
        enc: Encoding,
    ) -> Result<ElementHeader, ScanError> {
        let offset = self.src.position() - 4;
        if !enc.explicit_vr || tag.0 == 0xFFFE {
            let len = self.len4(enc)?;
            return Ok(ElementHeader {
                vr: None,
                len,
                offset,
            });
        }
        let mut vr = [0u8; 2];
        if self.src.read_exact_at(&mut vr)? != 2 {
            return Err(self.truncated("partial VR"));
        }
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(self.invalid(
                offset,
                format!(
                    "element ({:04X},{:04X}) has an invalid VR {:02X}{:02X}",
                    tag.0, tag.1, vr[0], vr[1]
                ),
            ));
        }
        let len = if matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        ) {
            let mut reserved = [0u8; 2];
            if self.src.read_exact_at(&mut reserved)? != 2 {
                return Err(self.truncated("partial reserved bytes"));
            }
            self.len4(enc)?
        } else {
            let mut b = [0u8; 2];
            if self.src.read_exact_at(&mut b)? != 2 {
                return Err(self.truncated("partial length"));
            }
            u32::from(self.u16(b, enc))
        };
        Ok(ElementHeader {
            vr: Some(vr),
            len,
            offset,
        })
    }

    fn skip_exact(&mut self, n: u64, tag: (u16, u16)) -> Result<(), ScanError> {
        if let Some(rem) = self.src.remaining() {
            if n > rem {
                return Err(self.truncated(format!(
                    "value of ({:04X},{:04X}) needs {n} bytes, {rem} left",
                    tag.0, tag.1
                )));
            }
        }
        let got = self.src.skip(n)?;
        if got != n {
            return Err(self.truncated(format!(
                "value of ({:04X},{:04X}) is cut short",
                tag.0, tag.1
            )));
        }
        Ok(())
    }

    /// Walk a data set (top level or an item) until the end of input, the
    /// end of a defined-length item, or an item delimiter.
    fn data_set(
        &mut self,
        enc: Encoding,
        depth: usize,
        end: Option<u64>,
        delimited: bool,
    ) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(self.invalid(self.src.position(), "sequences nested too deeply"));
        }
        loop {
            if let Some(end) = end {
                let pos = self.src.position();
                if pos == end {
                    return Ok(());
                }
                if pos > end {
                    return Err(self.invalid(pos, "an element runs past the end of its item"));
                }
            }
            let Some(tag) = self.tag(enc)? else {
                if depth == 0 && end.is_none() && !delimited {
                    return Ok(());
                }
                return Err(self.truncated("sequence item not closed"));
            };
            if tag == ITEM_END {
                self.len4(enc)?;
                if delimited {
                    return Ok(());
                }
                return Err(self.invalid(self.src.position() - 8, "item delimiter outside an item"));
            }
            if tag.0 == 0xFFFE {
                return Err(self.invalid(
                    self.src.position() - 4,
                    format!("unexpected ({:04X},{:04X}) in a data set", tag.0, tag.1),
                ));
            }
            if depth == 0 && tag.0 == 0x0002 {
                return Err(self.invalid(
                    self.src.position() - 4,
                    "file meta information (group 0002) inside the data set",
                ));
            }
            let el = self.element_header(tag, enc)?;
            if el.len == UNDEFINED {
                if tag == PIXEL_DATA && el.vr.is_some_and(|v| &v == b"OB" || &v == b"OW") {
                    self.fragments(enc)?;
                } else if el.vr.is_none() || el.vr == Some(*b"SQ") {
                    self.sequence(enc, depth)?;
                } else if el.vr == Some(*b"UN") {
                    // UN of undefined length holds a sequence in implicit VR LE.
                    self.sequence(Encoding::IMPLICIT_LE, depth)?;
                } else {
                    return Err(self.invalid(
                        el.offset,
                        format!(
                            "({:04X},{:04X}) has undefined length but is not a sequence",
                            tag.0, tag.1
                        ),
                    ));
                }
            } else if el.vr == Some(*b"SQ") {
                let end = self.src.position() + u64::from(el.len);
                if let Some(rem) = self.src.remaining() {
                    if u64::from(el.len) > rem {
                        return Err(self.truncated(format!(
                            "sequence ({:04X},{:04X}) is cut short",
                            tag.0, tag.1
                        )));
                    }
                }
                self.sequence_until(enc, depth, end)?;
            } else if depth == 0 && el.len <= MAX_KEPT_VALUE && is_kept(tag) {
                let mut buf = vec![0u8; el.len as usize];
                if self.src.read_exact_at(&mut buf)? != buf.len() {
                    return Err(self.truncated(format!(
                        "value of ({:04X},{:04X}) is cut short",
                        tag.0, tag.1
                    )));
                }
                self.keep(tag, &buf, enc);
            } else {
                self.skip_exact(u64::from(el.len), tag)?;
            }
        }
    }

    /// Items of an undefined-length sequence, up to its delimiter.
    fn sequence(&mut self, enc: Encoding, depth: usize) -> Result<(), ScanError> {
        loop {
            let Some(tag) = self.tag(enc)? else {
                return Err(self.truncated("sequence not closed"));
            };
            let len = self.len4(enc)?;
            match tag {
                SEQ_END => return Ok(()),
                ITEM => self.item(enc, depth, len)?,
                other => {
                    return Err(self.invalid(
                        self.src.position() - 8,
                        format!(
                            "({:04X},{:04X}) where a sequence item was expected",
                            other.0, other.1
                        ),
                    ))
                }
            }
        }
    }

    /// Items of a defined-length sequence ending at `end`.
    fn sequence_until(&mut self, enc: Encoding, depth: usize, end: u64) -> Result<(), ScanError> {
        while self.src.position() < end {
            let Some(tag) = self.tag(enc)? else {
                return Err(self.truncated("sequence cut short"));
            };
            let len = self.len4(enc)?;
            match tag {
                ITEM => self.item(enc, depth, len)?,
                // Tolerated inside defined-length sequences by many writers.
                SEQ_END => {}
                other => {
                    return Err(self.invalid(
                        self.src.position() - 8,
                        format!(
                            "({:04X},{:04X}) where a sequence item was expected",
                            other.0, other.1
                        ),
                    ))
                }
            }
        }
        if self.src.position() != end {
            return Err(self.invalid(
                self.src.position(),
                "sequence items overrun the sequence length",
            ));
        }
        Ok(())
    }

    fn item(&mut self, enc: Encoding, depth: usize, len: u32) -> Result<(), ScanError> {
        if len == UNDEFINED {
            self.data_set(enc, depth + 1, None, true)
        } else {
            if let Some(rem) = self.src.remaining() {
                if u64::from(len) > rem {
                    return Err(self.truncated("sequence item cut short"));
                }
            }
            let end = self.src.position() + u64::from(len);
            self.data_set(enc, depth + 1, Some(end), false)
        }
    }

    /// Encapsulated pixel data: items of defined length, then a delimiter.
    fn fragments(&mut self, enc: Encoding) -> Result<(), ScanError> {
        loop {
            let Some(tag) = self.tag(enc)? else {
                return Err(self.truncated("encapsulated pixel data not closed"));
            };
            let len = self.len4(enc)?;
            match tag {
                SEQ_END => return Ok(()),
                ITEM if len != UNDEFINED => self.skip_exact(u64::from(len), ITEM)?,
                _ => {
                    return Err(self.invalid(
                        self.src.position() - 8,
                        "encapsulated pixel data holds something other than fragments",
                    ))
                }
            }
        }
    }

    fn keep(&mut self, tag: (u16, u16), raw: &[u8], enc: Encoding) {
        let _ = enc; // all kept attributes are text; byte order does not apply
        if tag == (0x0008, 0x0005) {
            let text = clean(&String::from_utf8_lossy(raw));
            self.charset = CharacterSets::new(&text.split('\\').collect::<Vec<_>>());
            self.header.specific_character_set = Some(text);
            return;
        }
        let value = match tag {
            (0x0010, 0x0010) => clean(&charset::decode_raw(&self.charset, raw, true)),
            (0x0008, 0x0050)
            | (0x0008, 0x1030)
            | (0x0008, 0x103E)
            | (0x0010, 0x0020)
            | (0x0020, 0x0010) => clean(&charset::decode_raw(&self.charset, raw, false)),
            _ => clean(&String::from_utf8_lossy(raw)),
        };
        let h = &mut self.header;
        let slot = match tag {
            (0x0008, 0x0016) => &mut h.sop_class_uid,
            (0x0008, 0x0018) => &mut h.sop_instance_uid,
            (0x0008, 0x0020) => &mut h.study_date,
            (0x0008, 0x0030) => &mut h.study_time,
            (0x0008, 0x0050) => &mut h.accession_number,
            (0x0008, 0x0060) => &mut h.modality,
            (0x0008, 0x1030) => &mut h.study_description,
            (0x0008, 0x103E) => &mut h.series_description,
            (0x0010, 0x0010) => &mut h.patient_name,
            (0x0010, 0x0020) => &mut h.patient_id,
            (0x0010, 0x0030) => &mut h.patient_birth_date,
            (0x0010, 0x0040) => &mut h.patient_sex,
            (0x0020, 0x000D) => &mut h.study_instance_uid,
            (0x0020, 0x000E) => &mut h.series_instance_uid,
            (0x0020, 0x0010) => &mut h.study_id,
            (0x0020, 0x0052) => &mut h.frame_of_reference_uid,
            (0x0020, 0x0011) => {
                h.series_number = value.parse().ok();
                return;
            }
            (0x0020, 0x0013) => {
                h.instance_number = value.parse().ok();
                return;
            }
            _ => return,
        };
        *slot = Some(value);
    }
}

fn is_kept(tag: (u16, u16)) -> bool {
    matches!(
        tag,
        (0x0008, 0x0005)
            | (0x0008, 0x0016)
            | (0x0008, 0x0018)
            | (0x0008, 0x0020)
            | (0x0008, 0x0030)
            | (0x0008, 0x0050)
            | (0x0008, 0x0060)
            | (0x0008, 0x1030)
            | (0x0008, 0x103E)
            | (0x0010, 0x0010)
            | (0x0010, 0x0020)
            | (0x0010, 0x0030)
            | (0x0010, 0x0040)
            | (0x0020, 0x000D)
            | (0x0020, 0x000E)
            | (0x0020, 0x0010)
            | (0x0020, 0x0011)
            | (0x0020, 0x0013)
            | (0x0020, 0x0052)
    )
}

/// Strip DICOM padding (trailing NUL and spaces, leading spaces).
fn clean(s: &str) -> String {
    s.trim_end_matches(['\0', ' '])
        .trim_start_matches(' ')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el_explicit(out: &mut Vec<u8>, g: u16, e: u16, vr: &[u8; 2], val: &[u8]) {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(val.len() as u16).to_le_bytes());
        out.extend_from_slice(val);
    }

    /// Top-level elements of a sample RT Dose data set, each as its bytes.
    fn sample_elements() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut push = |g, e, vr: &[u8; 2], val: &[u8]| {
            let mut d = Vec::new();
            el_explicit(&mut d, g, e, vr, val);
            out.push(d);
        };
        push(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.481.2\0");
        push(0x0008, 0x0018, b"UI", b"1.2.3.4\0");
        push(0x0008, 0x0060, b"CS", b"RTDOSE");
        push(0x0010, 0x0010, b"PN", b"Doe^Jane");
        // An undefined-length sequence with one undefined-length item.
        let mut d = Vec::new();
        d.extend_from_slice(&[0x0C, 0x30, 0x02, 0x00]);
        d.extend_from_slice(b"SQ\0\0");
        d.extend_from_slice(&UNDEFINED.to_le_bytes());
        d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        d.extend_from_slice(&UNDEFINED.to_le_bytes());
        el_explicit(&mut d, 0x0008, 0x1155, b"UI", b"1.2.9\0");
        d.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        d.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        out.push(d);
        let mut push = |g, e, vr: &[u8; 2], val: &[u8]| {
            let mut d = Vec::new();
            el_explicit(&mut d, g, e, vr, val);
            out.push(d);
        };
        push(0x0020, 0x000D, b"UI", b"1.2.5\0");
        push(0x0020, 0x000E, b"UI", b"1.2.6\0");
        // OW pixel data, defined length.
        let mut d = Vec::new();
        d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
        d.extend_from_slice(b"OW\0\0");
        d.extend_from_slice(&8u32.to_le_bytes());
        d.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        out.push(d);
        out
    }

    fn sample() -> Vec<u8> {
        sample_elements().concat()
    }

    #[test]
    fn reads_header_and_skips_values() {
        let h = scan_bytes(&sample(), Encoding::EXPLICIT_LE).expect("scan");
        assert_eq!(
            h.sop_class_uid.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.481.2")
        );
        assert_eq!(h.sop_instance_uid.as_deref(), Some("1.2.3.4"));
        assert_eq!(h.study_instance_uid.as_deref(), Some("1.2.5"));
        assert_eq!(h.series_instance_uid.as_deref(), Some("1.2.6"));
        assert_eq!(h.patient_name.as_deref(), Some("Doe^Jane"));
        assert_eq!(h.modality.as_deref(), Some("RTDOSE"));
    }

    #[test]
    fn patient_name_in_iso_2022_is_decoded() {
        // PS3.5 I.2 (Korean, KS X 1001 in G1) and H.3.1 (Japanese, JIS X
        // 0208 in G0), and ISO 8859-9 which dicom-rs does not know.
        let ks = [0x1B, b'$', b')', b'C'];
        let hong = [
            &b"Hong^Gildong="[..],
            &ks,
            &[0xFB, 0xF3],
            b"^",
            &ks,
            &[0xD1, 0xCE, 0xD4, 0xD7],
            b"=",
            &ks,
            &[0xC8, 0xAB],
            b"^",
            &ks,
            &[0xB1, 0xE6, 0xB5, 0xBF],
        ]
        .concat();
        let yamada = [
            &b"Yamada^Tarou="[..],
            &[0x1B, b'$', b'B'],
            b";3ED",
            &[0x1B, b'(', b'B'],
            b" ",
        ]
        .concat();
        for (charset, name, want) in [
            (
                &b"\\ISO 2022 IR 149"[..],
                &hong[..],
                "Hong^Gildong=洪^吉洞=홍^길동",
            ),
            (
                b"ISO 2022 IR 6\\ISO 2022 IR 87",
                &yamada,
                "Yamada^Tarou=山田",
            ),
            (b"ISO_IR 148", b"\xD6zt\xFCrk^\xDEule ", "Öztürk^Şule"),
        ] {
            let mut d = Vec::new();
            el_explicit(&mut d, 0x0008, 0x0005, b"CS", charset);
            el_explicit(&mut d, 0x0010, 0x0010, b"PN", name);
            let h = scan_bytes(&d, Encoding::EXPLICIT_LE).expect("scan");
            assert_eq!(h.patient_name.as_deref(), Some(want));
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let elements = sample_elements();
        let d = elements.concat();
        // Cuts exactly between two top-level elements leave a shorter but
        // well-formed data set; every other cut must be refused.
        let boundaries: Vec<usize> = elements
            .iter()
            .scan(0, |acc, e| {
                *acc += e.len();
                Some(*acc)
            })
            .collect();
        for cut in 1..d.len() {
            let ok = scan_bytes(&d[..cut], Encoding::EXPLICIT_LE).is_ok();
            assert_eq!(ok, boundaries.contains(&cut), "cut at {cut}");
        }
    }

    /// Every single-byte change of the sample, read in every encoding the
    /// receiver accepts, scans or is refused, never panics: the data set is
    /// the peer's to send.
    #[test]
    fn damaged_data_sets_never_panic() {
        let d = sample();
        let mut refused = 0;
        for at in 0..d.len() {
            for value in [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF] {
                let mut b = d.clone();
                b[at] = value;
                for enc in [
                    Encoding::EXPLICIT_LE,
                    Encoding::IMPLICIT_LE,
                    Encoding::EXPLICIT_BE,
                ] {
                    refused += usize::from(scan_bytes(&b, enc).is_err());
                }
            }
        }
        assert!(refused > d.len(), "{refused} refused");
    }

    fn deflate(b: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b).expect("deflate");
        enc.finish().expect("deflate")
    }

    fn scan_deflated(b: &[u8]) -> Result<Header, ScanError> {
        // Behind a preamble, as in the temporary file.
        let mut file = vec![0xAA; 10];
        file.extend_from_slice(b);
        scan_file(io::Cursor::new(file), 10, Encoding::EXPLICIT_LE, true)
    }

    /// A deflate stream that does not decode, ends early or is followed by
    /// other bytes is the data's fault (C000), not an I/O error (A700);
    /// a pad byte after a stream of odd length is allowed.
    #[test]
    fn deflated_data_sets_are_checked_to_the_end_of_the_stream() {
        let z = deflate(&sample());
        let h = scan_deflated(&z).expect("valid stream");
        assert_eq!(h.sop_instance_uid.as_deref(), Some("1.2.3.4"));
        let mut padded = z.clone();
        padded.push(0);
        scan_deflated(&padded).expect("one pad byte");

        let mut trailing = z.clone();
        trailing.extend_from_slice(b"trailing garbage");
        let mut two_nuls = z.clone();
        two_nuls.extend_from_slice(&[0, 0]);
        let mut corrupt = z.clone();
        corrupt[z.len() / 3] ^= 0xFF;
        corrupt[z.len() / 3 + 1] ^= 0x5A;
        for (what, bytes) in [
            ("trailing bytes", trailing),
            ("two NULs", two_nuls),
            ("cut in half", z[..z.len() / 2].to_vec()),
            ("not deflated", sample()),
            ("corrupt", corrupt),
        ] {
            match scan_deflated(&bytes) {
                Err(
                    ScanError::Deflate(_) | ScanError::Invalid { .. } | ScanError::Truncated { .. },
                ) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"trailing garbage");
        let e = scan_deflated(&trailing).expect_err("trailing");
        assert_eq!(
            e.to_string(),
            "deflated data set: 16 bytes after the end of the deflate stream"
        );
        assert!(matches!(
            scan_deflated(&z[..z.len() / 2]),
            Err(ScanError::Deflate(_))
        ));
    }

    /// A read error of the file under the inflater stays an I/O error.
    #[test]
    fn a_read_error_under_the_inflater_is_io() {
        struct Failing(io::Cursor<Vec<u8>>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.position() > 40 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(16);
                self.0.read(&mut buf[..n])
            }
        }
        impl Seek for Failing {
            fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
                self.0.seek(pos)
            }
        }
        let z = deflate(&sample());
        match scan_file(Failing(io::Cursor::new(z)), 0, Encoding::EXPLICIT_LE, true) {
            Err(ScanError::Io(e)) => assert_eq!(e.to_string(), "disk on fire"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_refused() {
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(scan_bytes(&junk, Encoding::EXPLICIT_LE).is_err());
        assert!(scan_bytes(&junk, Encoding::IMPLICIT_LE).is_err());
    }

    #[test]
    fn encapsulated_pixel_data() {
        let mut d = Vec::new();
        el_explicit(
            &mut d,
            0x0008,
            0x0016,
            b"UI",
            b"1.2.840.10008.5.1.4.1.1.2\0",
        );
        d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
        d.extend_from_slice(b"OB\0\0");
        d.extend_from_slice(&UNDEFINED.to_le_bytes());
        d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
        d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 9, 9, 9, 9]);
        d.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert!(scan_bytes(&d, Encoding::EXPLICIT_LE).is_ok());
        assert!(scan_bytes(&d[..d.len() - 8], Encoding::EXPLICIT_LE).is_err());
    }

    #[test]
    fn big_endian_and_implicit() {
        let mut be = Vec::new();
        be.extend_from_slice(&0x0008u16.to_be_bytes());
        be.extend_from_slice(&0x0018u16.to_be_bytes());
        be.extend_from_slice(b"UI");
        be.extend_from_slice(&4u16.to_be_bytes());
        be.extend_from_slice(b"1.23");
        let h = scan_bytes(&be, Encoding::EXPLICIT_BE).expect("be");
        assert_eq!(h.sop_instance_uid.as_deref(), Some("1.23"));

        let mut im = Vec::new();
        im.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, 4, 0, 0, 0]);
        im.extend_from_slice(b"1.24");
        let h = scan_bytes(&im, Encoding::IMPLICIT_LE).expect("implicit");
        assert_eq!(h.sop_instance_uid.as_deref(), Some("1.24"));
    }
}
