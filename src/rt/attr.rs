//! Tolerant attribute access on dicom-object data sets.
//!
//! Planning systems and converters sometimes write standard attributes with
//! VR UN (the value bytes are then the text or binary value as it would have
//! been encoded). These helpers read the value either way, so one odd VR
//! does not make a whole RT object unreadable.

use dicom_core::Tag;
use dicom_object::InMemDicomObject;

/// Text value, trimmed of DICOM padding.
pub fn string(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let el = obj.element(tag).ok()?;
    // A UN value is the attribute's encoded bytes: for text, the text.
    let s = match (el.vr(), el.to_str()) {
        (dicom_core::VR::UN, _) | (_, Err(_)) => {
            String::from_utf8_lossy(&el.to_bytes().ok()?).into_owned()
        }
        (_, Ok(s)) => s.into_owned(),
    };
    let s = s
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// Decimal (DS/FD/FL/IS) values; `None` when any of them is not a finite
/// number. A decimal string cannot spell NaN or infinity, and a binary one
/// that holds them is damaged: either would flow into grid coordinates and
/// doses as if it were a measurement.
pub fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let el = obj.element(tag).ok()?;
    let values: Option<Vec<f64>> = match el.to_multi_float64() {
        Ok(v) if el.vr() != dicom_core::VR::UN && !v.is_empty() => Some(v),
        _ => string(obj, tag)?
            .split('\\')
            .map(|p| p.trim().parse::<f64>().ok())
            .collect(),
    };
    values.filter(|v| v.iter().all(|x| x.is_finite()))
}

pub fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    floats(obj, tag).and_then(|v| v.first().copied())
}

/// Integer (US/IS/UL) value; a 2-byte UN is read as little-endian US.
pub fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    let el = obj.element(tag).ok()?;
    if el.vr() != dicom_core::VR::UN {
        if let Ok(v) = el.to_int::<i64>() {
            return Some(v);
        }
    }
    if let Some(s) = string(obj, tag) {
        if let Ok(v) = s.parse::<i64>() {
            return Some(v);
        }
    }
    let b = el.to_bytes().ok()?;
    match b.len() {
        2 => Some(i64::from(u16::from_le_bytes([b[0], b[1]]))),
        4 => Some(i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        _ => None,
    }
}

/// Items of a sequence (empty when absent or not a sequence).
pub fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.element(tag).ok().and_then(|e| e.items()).unwrap_or(&[])
}

/// A referenced SOP Instance UID in the first item of a reference sequence.
pub fn referenced_uid(obj: &InMemDicomObject, seq: Tag) -> Option<String> {
    items(obj, seq)
        .iter()
        .find_map(|i| string(i, dicom_dictionary_std::tags::REFERENCED_SOP_INSTANCE_UID))
}

/// A date (DA) and time (TM) as one sortable text; the time may be absent.
pub fn date_time(obj: &InMemDicomObject, date: Tag, time: Tag) -> Option<String> {
    let d = string(obj, date).filter(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))?;
    let t: String = string(obj, time)
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(6)
        .collect();
    Some(format!("{d}{t:0<6}"))
}

/// Whether esorisk wrote the object (its returned RT Structure Set, say):
/// Manufacturer and Manufacturer's Model Name are both "esorisk", as the
/// outputs set them. Such an object is never an input to scoring: a PACS
/// that forwards whole studies sends the returned ROI back.
pub fn written_by_esorisk(obj: &InMemDicomObject) -> bool {
    use dicom_dictionary_std::tags;
    string(obj, tags::MANUFACTURER).as_deref() == Some("esorisk")
        && string(obj, tags::MANUFACTURER_MODEL_NAME).as_deref() == Some("esorisk")
}
