//! The objects esorisk sends back: a Comprehensive SR with the risk
//! ([`sr`]) and an RT Structure Set with the learned ROI ([`rtstruct`]).
//!
//! Both join the input study rather than start a new one: they copy the
//! Patient and General Study attributes of the objects received (same
//! Study Instance UID), so a PACS or planning system files them next to the
//! plan they describe. docs/CONFORMANCE.md (section 8) lists what they hold.
//!
//! [`ReportInputs`] gathers, once, everything the writers need from the
//! received objects; [`sr::RiskReport`] is what the model concluded.

pub mod contour;
pub mod rtstruct;
pub mod sr;

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use snafu::Snafu;

use crate::charset::Received;
use crate::receive::sop;
use crate::rt::attr;
use crate::rt::write::{put_seq, put_str};

/// Why a report object could not be built.
#[derive(Debug, Snafu)]
pub enum ReportError {
    #[snafu(display("cannot report on the input objects: {what}"))]
    Inputs { what: String },
    #[snafu(display("learned ROI: {what}"))]
    Mask { what: String },
    #[snafu(display("risk result: {what}"))]
    Values { what: String },
}

/// Text that goes wherever a person might read an object's description.
pub const RESEARCH_NOTICE: &str = "research use only, not for clinical use";

/// Text esorisk words itself (descriptions, reasons, notes), made plain
/// ASCII for the objects it writes: they declare ISO_IR 192 for the names
/// copied from the inputs, but older planning systems read every value as
/// ASCII or Latin-1 and would garble a dash or a multiplication sign. The
/// typographic characters of esorisk's wording become their ASCII
/// spelling; any other character (a name quoted from the inputs, such as
/// an ROI's) is kept, since it is the input's own.
pub fn plain_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{2010}'..='\u{2015}' | '\u{2212}' => out.push('-'),
            '\u{2026}' => out.push_str("..."),
            '\u{d7}' => out.push('x'),
            '\u{2192}' => out.push_str("->"),
            '\u{2190}' => out.push_str("<-"),
            '\u{2265}' => out.push_str(">="),
            '\u{2264}' => out.push_str("<="),
            '\u{b1}' => out.push_str("+/-"),
            '\u{2248}' => out.push('~'),
            '\u{b0}' => out.push_str(" deg"),
            '\u{b2}' => out.push('2'),
            '\u{b3}' => out.push('3'),
            '\u{3b1}' => out.push_str("alpha"),
            '\u{3b2}' => out.push_str("beta"),
            '\u{b5}' | '\u{3bc}' => out.push('u'),
            '\u{2018}' | '\u{2019}' => out.push('\''),
            '\u{201c}' | '\u{201d}' => out.push('"'),
            '\u{a0}' => out.push(' '),
            '\u{b7}' => out.push('.'),
            c => out.push(c),
        }
    }
    out
}

/// One received instance, as the SR's evidence lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRef {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// One received axial CT slice that contours can be linked to.
#[derive(Debug, Clone, PartialEq)]
pub struct CtSliceRef {
    pub series_instance_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// Patient z of the slice (mm).
    pub z: f64,
    /// Slice Thickness when the slice states one (mm).
    pub thickness: Option<f64>,
}

/// What the report writers need from the received objects.
#[derive(Debug, Clone)]
pub struct ReportInputs {
    /// Patient, Patient Study and General Study attributes of the source
    /// object (RT Dose first, then RT Structure Set, RT Plan, CT), copied
    /// element by element with their text decoded as the source's Specific
    /// Character Set says ([`Received::element`]); type 2 attributes the
    /// source lacks are present and empty.
    pub patient_study: InMemDicomObject,
    /// The source's Timezone Offset From UTC (0008,0201), which applies to
    /// the copied dates and times; None when it has none (they are then in
    /// the local time of whoever wrote them) or one that is not `±HHMM`.
    pub timezone_offset: Option<time::UtcOffset>,
    pub study_instance_uid: String,
    /// The frame of reference of the dose (the grid the ROI is learned on);
    /// None when no input states one.
    pub frame_of_reference_uid: Option<String>,
    /// Position Reference Indicator of the object that gave the frame of
    /// reference ("" when absent).
    pub position_reference_indicator: String,
    /// Every input instance, in input order, each once.
    pub evidence: Vec<EvidenceRef>,
    /// Axial CT slices in the dose's frame of reference, ascending z.
    pub ct_slices: Vec<CtSliceRef>,
}

/// Patient, Patient Study and General Study module attributes copied from
/// the inputs. Type 2 ones are written empty when the source lacks them.
const COPIED: &[(Tag, Option<VR>)] = &[
    // Patient
    (tags::PATIENT_NAME, Some(VR::PN)),
    (tags::PATIENT_ID, Some(VR::LO)),
    (tags::ISSUER_OF_PATIENT_ID, None),
    (tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE, None),
    (tags::PATIENT_BIRTH_DATE, Some(VR::DA)),
    (tags::PATIENT_BIRTH_TIME, None),
    (tags::PATIENT_SEX, Some(VR::CS)),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, None),
    (tags::OTHER_PATIENT_NAMES, None),
    (tags::PATIENT_COMMENTS, None),
    (tags::PATIENT_SPECIES_DESCRIPTION, None),
    (tags::PATIENT_IDENTITY_REMOVED, None),
    (tags::DEIDENTIFICATION_METHOD, None),
    (tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, None),
    (tags::QUALITY_CONTROL_SUBJECT, None),
    (tags::RESPONSIBLE_PERSON, None),
    (tags::RESPONSIBLE_ORGANIZATION, None),
    // Patient Study
    (tags::PATIENT_AGE, None),
    (tags::PATIENT_SIZE, None),
    (tags::PATIENT_WEIGHT, None),
    // General Study
    (tags::STUDY_INSTANCE_UID, None),
    (tags::STUDY_DATE, Some(VR::DA)),
    (tags::STUDY_TIME, Some(VR::TM)),
    (tags::REFERRING_PHYSICIAN_NAME, Some(VR::PN)),
    (tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE, None),
    (tags::STUDY_ID, Some(VR::SH)),
    (tags::ACCESSION_NUMBER, Some(VR::SH)),
    (tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE, None),
    (tags::STUDY_DESCRIPTION, None),
    (tags::PHYSICIANS_OF_RECORD, None),
    (tags::NAME_OF_PHYSICIANS_READING_STUDY, None),
    (tags::PROCEDURE_CODE_SEQUENCE, None),
    (tags::REFERENCED_STUDY_SEQUENCE, None),
];

/// Preference of source object for patient and study attributes: the dose
/// is what was scored.
fn source_rank(class: &str) -> u8 {
    match class {
        sop::RT_DOSE => 0,
        sop::RT_STRUCTURE_SET => 1,
        sop::RT_PLAN | sop::RT_ION_PLAN => 2,
        sop::CT_IMAGE => 3,
        _ => 4,
    }
}

impl ReportInputs {
    /// Gather the report inputs from the received objects.
    ///
    /// Fails only when no object carries a Study Instance UID: without one
    /// the report cannot join the study. Objects lacking a series or SOP UID
    /// cannot be referenced and are left out of the evidence.
    pub fn from_objects(
        objects: &[FileDicomObject<InMemDicomObject>],
    ) -> Result<ReportInputs, ReportError> {
        let class = |o: &InMemDicomObject| attr::string(o, tags::SOP_CLASS_UID).unwrap_or_default();
        let source = objects
            .iter()
            .filter(|o| attr::string(o, tags::STUDY_INSTANCE_UID).is_some())
            .min_by_key(|o| source_rank(&class(o)))
            .ok_or_else(|| ReportError::Inputs {
                what: if objects.is_empty() {
                    "no input objects".into()
                } else {
                    "no input object has a Study Instance UID".into()
                },
            })?;
        let study_instance_uid = attr::string(source, tags::STUDY_INSTANCE_UID).unwrap_or_default();
        let text = Received::of(source);
        let mut patient_study = InMemDicomObject::new_empty();
        for (tag, type2) in COPIED {
            match source.element(*tag) {
                Ok(el) => {
                    patient_study.put(text.element(el));
                }
                Err(_) => {
                    if let Some(vr) = type2 {
                        put_str(&mut patient_study, *tag, *vr, "");
                    }
                }
            }
        }

        // The frame of reference the ROI lives in: the dose's (the ROI is
        // learned on the dose grid), else the structure set's, else any.
        let for_of = |o: &InMemDicomObject| -> Option<String> {
            attr::string(o, tags::FRAME_OF_REFERENCE_UID).or_else(|| {
                attr::items(o, tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE)
                    .iter()
                    .find_map(|f| attr::string(f, tags::FRAME_OF_REFERENCE_UID))
            })
        };
        let mut ranked: Vec<&FileDicomObject<InMemDicomObject>> = objects.iter().collect();
        ranked.sort_by_key(|o| source_rank(&class(o)));
        let for_source = ranked.iter().find(|o| for_of(o).is_some());
        let frame_of_reference_uid = for_source.and_then(|o| for_of(o));
        let position_reference_indicator = for_source
            .and_then(|o| attr::string(o, tags::POSITION_REFERENCE_INDICATOR))
            .unwrap_or_default();

        let mut evidence: Vec<EvidenceRef> = Vec::new();
        let mut ct_slices = Vec::new();
        for o in objects {
            let (Some(study), Some(series), Some(sop_class), Some(sop_instance)) = (
                attr::string(o, tags::STUDY_INSTANCE_UID),
                attr::string(o, tags::SERIES_INSTANCE_UID),
                attr::string(o, tags::SOP_CLASS_UID),
                attr::string(o, tags::SOP_INSTANCE_UID),
            ) else {
                continue;
            };
            if evidence.iter().any(|e| e.sop_instance_uid == sop_instance) {
                continue;
            }
            if sop_class == sop::CT_IMAGE
                && frame_of_reference_uid.is_some()
                && attr::string(o, tags::FRAME_OF_REFERENCE_UID) == frame_of_reference_uid
            {
                if let Some(z) = axial_z(o) {
                    ct_slices.push(CtSliceRef {
                        series_instance_uid: series.clone(),
                        sop_class_uid: sop_class.clone(),
                        sop_instance_uid: sop_instance.clone(),
                        z,
                        thickness: attr::float(o, tags::SLICE_THICKNESS).filter(|t| *t > 0.0),
                    });
                }
            }
            evidence.push(EvidenceRef {
                study_instance_uid: study,
                series_instance_uid: series,
                sop_class_uid: sop_class,
                sop_instance_uid: sop_instance,
            });
        }
        ct_slices.sort_by(|a, b| a.z.total_cmp(&b.z));
        let timezone_offset =
            attr::string(source, tags::TIMEZONE_OFFSET_FROM_UTC).and_then(|v| parse_offset(&v));
        Ok(ReportInputs {
            patient_study,
            timezone_offset,
            study_instance_uid,
            frame_of_reference_uid,
            position_reference_indicator,
            evidence,
            ct_slices,
        })
    }

    /// The CT slice a contour at height `z` lies on: the nearest slice, if
    /// within half its thickness (half the median slice spacing when the
    /// slice states no thickness; 0.05 mm for a lone slice without one).
    pub fn ct_slice_at(&self, z: f64) -> Option<&CtSliceRef> {
        let spacing = {
            let mut d: Vec<f64> = self
                .ct_slices
                .windows(2)
                .map(|w| w[1].z - w[0].z)
                .filter(|d| *d > 1e-3)
                .collect();
            d.sort_by(f64::total_cmp);
            d.get(d.len() / 2).copied()
        };
        self.ct_slices
            .iter()
            .min_by(|a, b| (a.z - z).abs().total_cmp(&(b.z - z).abs()))
            .filter(|s| {
                let half = s.thickness.or(spacing).map_or(0.05, |t| t / 2.0);
                (s.z - z).abs() <= half + 1e-6
            })
    }
}

/// Patient z of an axial image, None for a tilted or non-axial one (its
/// plane is not one of the contour planes).
fn axial_z(o: &InMemDicomObject) -> Option<f64> {
    let ipp = attr::floats(o, tags::IMAGE_POSITION_PATIENT)?;
    let iop = attr::floats(o, tags::IMAGE_ORIENTATION_PATIENT)?;
    if ipp.len() != 3 || iop.len() != 6 {
        return None;
    }
    let nz = iop[0] * iop[4] - iop[1] * iop[3];
    (nz.abs() > 0.999).then_some(ipp[2])
}

impl ReportInputs {
    /// The current date and time as DA and TM values, for the dates and
    /// times esorisk itself writes: in the input's Timezone Offset From UTC
    /// when it has one (the offset is copied and applies to every date and
    /// time of the object), else in the node's local time, without an
    /// offset, like the copied study date and time; in UTC, still without
    /// an offset, when the local offset cannot be determined.
    pub fn now(&self) -> (String, String) {
        let utc = time::OffsetDateTime::now_utc();
        let t = match self.timezone_offset {
            Some(offset) => utc.to_offset(offset),
            None => time::OffsetDateTime::now_local().unwrap_or(utc),
        };
        da_tm(t)
    }
}

/// A date and time as DA and TM values (in their own offset).
fn da_tm(t: time::OffsetDateTime) -> (String, String) {
    (
        format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()),
        format!("{:02}{:02}{:02}", t.hour(), t.minute(), t.second()),
    )
}

/// A Timezone Offset From UTC value (`+HHMM` or `-HHMM`, -1200 to +1400).
fn parse_offset(v: &str) -> Option<time::UtcOffset> {
    let v = v.trim();
    let (sign, digits) = match v.as_bytes().first()? {
        b'+' => (1i8, &v[1..]),
        b'-' => (-1i8, &v[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i8 = digits[..2].parse().ok()?;
    let minutes: i8 = digits[2..].parse().ok()?;
    let in_range = if sign < 0 {
        (hours, minutes) <= (12, 0)
    } else {
        (hours, minutes) <= (14, 0)
    };
    if minutes > 59 || !in_range {
        return None;
    }
    time::UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()
}

/// An offset as a Timezone Offset From UTC value.
fn format_offset(o: time::UtcOffset) -> String {
    let (h, m, _) = o.as_hms();
    let sign = if o.is_negative() { '-' } else { '+' };
    format!("{sign}{:02}{:02}", h.unsigned_abs(), m.unsigned_abs())
}

/// What a returned object says about its series and creation.
struct SeriesHeader<'a> {
    sop_class_uid: &'a str,
    sop_instance_uid: &'a str,
    series_instance_uid: &'a str,
    modality: &'a str,
    series_number: &'a str,
    series_description: &'a str,
    date: &'a str,
    time: &'a str,
}

/// SOP Common, Patient, General Study, the series module's common part
/// and General Equipment, shared by the SR and the RT Structure Set.
fn put_header(obj: &mut InMemDicomObject, input: &ReportInputs, h: &SeriesHeader<'_>) {
    // UTF-8: copied names may come from any character set, and are held
    // decoded (crate::charset).
    put_str(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put_str(obj, tags::SOP_CLASS_UID, VR::UI, h.sop_class_uid);
    put_str(obj, tags::SOP_INSTANCE_UID, VR::UI, h.sop_instance_uid);
    put_str(obj, tags::INSTANCE_CREATION_DATE, VR::DA, h.date);
    put_str(obj, tags::INSTANCE_CREATION_TIME, VR::TM, h.time);
    if let Some(offset) = input.timezone_offset {
        put_str(
            obj,
            tags::TIMEZONE_OFFSET_FROM_UTC,
            VR::SH,
            &format_offset(offset),
        );
    }
    for el in input.patient_study.iter() {
        obj.put(el.clone());
    }
    put_str(obj, tags::MODALITY, VR::CS, h.modality);
    put_str(
        obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        h.series_instance_uid,
    );
    put_str(obj, tags::SERIES_NUMBER, VR::IS, h.series_number);
    put_str(obj, tags::SERIES_DESCRIPTION, VR::LO, h.series_description);
    put_str(obj, tags::SERIES_DATE, VR::DA, h.date);
    put_str(obj, tags::SERIES_TIME, VR::TM, h.time);
    put_str(obj, tags::MANUFACTURER, VR::LO, "esorisk");
    put_str(obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "esorisk");
    put_str(
        obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    put_str(obj, tags::INSTANCE_NUMBER, VR::IS, "1");
}

/// An item of the SOP Instance Reference macro.
fn sop_ref(class: &str, instance: &str) -> InMemDicomObject {
    let mut i = InMemDicomObject::new_empty();
    put_str(&mut i, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put_str(&mut i, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
    i
}

/// Instances of one series, and series of one study, in first-seen order.
type Series<'a> = (&'a str, Vec<&'a EvidenceRef>);
type Study<'a> = (&'a str, Vec<Series<'a>>);

/// Hierarchical SOP Instance Reference items: study > series > instance,
/// in first-seen order.
fn hierarchical(refs: &[EvidenceRef]) -> Vec<InMemDicomObject> {
    let mut studies: Vec<Study<'_>> = Vec::new();
    for r in refs {
        let si = match studies.iter().position(|(s, _)| *s == r.study_instance_uid) {
            Some(i) => i,
            None => {
                studies.push((&r.study_instance_uid, Vec::new()));
                studies.len() - 1
            }
        };
        let series = &mut studies[si].1;
        match series.iter_mut().find(|(s, _)| *s == r.series_instance_uid) {
            Some((_, v)) => v.push(r),
            None => series.push((&r.series_instance_uid, vec![r])),
        }
    }
    studies
        .into_iter()
        .map(|(study, series)| {
            let mut st = InMemDicomObject::new_empty();
            put_str(&mut st, tags::STUDY_INSTANCE_UID, VR::UI, study);
            let items = series
                .into_iter()
                .map(|(uid, sops)| {
                    let mut se = InMemDicomObject::new_empty();
                    put_str(&mut se, tags::SERIES_INSTANCE_UID, VR::UI, uid);
                    put_seq(
                        &mut se,
                        tags::REFERENCED_SOP_SEQUENCE,
                        sops.iter()
                            .map(|r| sop_ref(&r.sop_class_uid, &r.sop_instance_uid))
                            .collect(),
                    );
                    se
                })
                .collect();
            put_seq(&mut st, tags::REFERENCED_SERIES_SEQUENCE, items);
            st
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(study: &str, series: &str, sop: &str) -> EvidenceRef {
        EvidenceRef {
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            sop_class_uid: "1.2.3".into(),
            sop_instance_uid: sop.into(),
        }
    }

    #[test]
    fn evidence_groups_by_study_then_series() {
        let items = hierarchical(&[
            ev("1", "1.1", "1.1.1"),
            ev("1", "1.2", "1.2.1"),
            ev("1", "1.1", "1.1.2"),
            ev("2", "2.1", "2.1.1"),
        ]);
        assert_eq!(items.len(), 2);
        let series = attr::items(&items[0], tags::REFERENCED_SERIES_SEQUENCE);
        assert_eq!(series.len(), 2);
        assert_eq!(
            attr::items(&series[0], tags::REFERENCED_SOP_SEQUENCE).len(),
            2
        );
    }

    #[test]
    fn esorisk_wording_becomes_plain_ascii() {
        assert_eq!(
            plain_ascii(
                "not scored \u{2014} 3 \u{d7} 4 \u{d7} 5 voxels, RT Dose \u{2192} RT Plan, \u{2265} 2, \u{3b1}/\u{3b2} \u{2026}"
            ),
            "not scored - 3 x 4 x 5 voxels, RT Dose -> RT Plan, >= 2, alpha/beta ..."
        );
        // A name quoted from the inputs keeps its own characters.
        assert_eq!(
            plain_ascii("ROI \"Speiser\u{f6}hre\" \u{2014} ignored"),
            "ROI \"Speiser\u{f6}hre\" - ignored"
        );
    }

    #[test]
    fn timezone_offsets() {
        let hm = |h, m| time::UtcOffset::from_hms(h, m, 0).ok();
        assert_eq!(parse_offset("+0900"), hm(9, 0));
        assert_eq!(parse_offset("-0330 "), hm(-3, -30));
        assert_eq!(parse_offset("+1400"), hm(14, 0));
        assert_eq!(parse_offset("-1200"), hm(-12, 0));
        for bad in [
            "", "0900", "+900", "+09:00", "+1401", "-1230", "+0960", "UTC",
        ] {
            assert_eq!(parse_offset(bad), None, "{bad:?}");
        }
        for v in ["+0900", "-0330", "+0000", "+0545"] {
            assert_eq!(parse_offset(v).map(format_offset).as_deref(), Some(v));
        }
    }

    #[test]
    fn ct_slice_within_half_thickness() {
        let slice = |z: f64| CtSliceRef {
            series_instance_uid: "1".into(),
            sop_class_uid: sop::CT_IMAGE.into(),
            sop_instance_uid: format!("1.{}", (z * 10.0) as i64),
            z,
            thickness: None,
        };
        let input = ReportInputs {
            patient_study: InMemDicomObject::new_empty(),
            timezone_offset: None,
            study_instance_uid: "1".into(),
            frame_of_reference_uid: None,
            position_reference_indicator: String::new(),
            evidence: vec![],
            ct_slices: vec![slice(0.0), slice(2.5), slice(5.0)],
        };
        assert_eq!(input.ct_slice_at(2.4).map(|s| s.z), Some(2.5));
        assert_eq!(input.ct_slice_at(6.25).map(|s| s.z), Some(5.0));
        assert!(input.ct_slice_at(6.3).is_none());
        assert!(input.ct_slice_at(-1.3).is_none());
    }
}
