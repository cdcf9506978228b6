//! RT Plan (and RT Ion Plan): prescription, fractionation, technique.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::attr;
use super::RtError;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RtPlan {
    pub sop_instance_uid: String,
    pub label: Option<String>,
    pub frame_of_reference_uid: Option<String>,
    /// Total prescribed dose (Gy) and where it came from.
    pub prescription_gy: Option<f64>,
    pub prescription_source: String,
    /// Planned fractions, over all fraction groups.
    pub fractions: Option<u32>,
    /// Fraction groups (300A,0070): more than one is a course in parts.
    pub fraction_groups: usize,
    /// Fractions per day, from the fraction pattern, when stated.
    pub fractions_per_day: Option<u32>,
    /// IMRT, VMAT, 3D-CRT, or as much as the plan tells.
    pub technique: String,
    pub radiation_type: Option<String>,
    pub beams: usize,
    pub referenced_structure_set_uid: Option<String>,
    /// RT Plan Date and Time (else Instance Creation), `YYYYMMDDHHMMSS…`,
    /// so that plans compare by it as text.
    pub date_time: Option<String>,
    /// Instance Creation Date and Time, the same way: which of two exports
    /// of one plan is the later.
    pub created: Option<String>,
    /// Approval Status (300E,0002): APPROVED, UNAPPROVED, REJECTED.
    pub approval: Option<String>,
    /// Plans this one names in its Referenced RT Plan Sequence, with the
    /// RT Plan Relationship (PRIOR, PREDECESSOR, CONCURRENT, …).
    pub related: Vec<(String, String)>,
    pub notes: Vec<String>,
}

/// The most fractions a plan may plan and still be read as a course.
pub const MAX_FRACTIONS: i64 = 100;

impl RtPlan {
    /// Dose per fraction (Gy), when both prescription and fractions are known.
    pub fn dose_per_fraction(&self) -> Option<f64> {
        Some(self.prescription_gy? / f64::from(self.fractions?))
    }
}

pub fn read(path: &Path) -> Result<RtPlan, RtError> {
    let obj = super::open(path)?;
    Ok(from_object(&obj))
}

pub fn from_object(obj: &FileDicomObject<InMemDicomObject>) -> RtPlan {
    let mut notes = Vec::new();
    // Prescription: the target dose reference, else the fraction group.
    let mut targets: Vec<f64> = Vec::new();
    for d in attr::items(obj, tags::DOSE_REFERENCE_SEQUENCE) {
        let is_target = attr::string(d, tags::DOSE_REFERENCE_TYPE)
            .is_some_and(|t| t.eq_ignore_ascii_case("TARGET"));
        // Absent or empty (allowed: the attribute is optional) says nothing.
        if !is_target || attr::string(d, tags::TARGET_PRESCRIPTION_DOSE).is_none() {
            continue;
        }
        match attr::float(d, tags::TARGET_PRESCRIPTION_DOSE) {
            Some(gy) if gy > 0.0 && gy <= super::dose::MAX_PLAUSIBLE_GY => targets.push(gy),
            other => notes.push(format!(
                "a Target Prescription Dose that is not a dose ({}) was ignored",
                other.map_or_else(|| "not a number".to_string(), |gy| format!("{gy} Gy"))
            )),
        }
    }
    let groups = attr::items(obj, tags::FRACTION_GROUP_SEQUENCE);
    // Several fraction groups are given one after another (a plan with
    // its boost beams in a second group), so the plan's dose is given in
    // all their fractions together.
    // Above MAX_FRACTIONS is no external-beam course (twice-daily lung
    // schedules stay under 70), and EQD2 from it would be meaningless.
    let per_group: Vec<Option<u32>> = groups
        .iter()
        .map(|g| match attr::int(g, tags::NUMBER_OF_FRACTIONS_PLANNED) {
            Some(n) if n > MAX_FRACTIONS => {
                notes.push(format!(
                    "a Number of Fractions Planned that is not a treatment course ({n}) was ignored"
                ));
                None
            }
            Some(n) if n > 0 => Some(n as u32),
            _ => None,
        })
        .collect();
    let fractions = per_group
        .iter()
        .copied()
        .sum::<Option<u32>>()
        .filter(|n| *n > 0 && i64::from(*n) <= MAX_FRACTIONS);
    if groups.len() > 1 {
        notes.push(format!(
            "{} fraction groups ({} fractions): read as one course of {} fractions",
            groups.len(),
            per_group
                .iter()
                .map(|n| n.map_or_else(|| "?".to_string(), |n| n.to_string()))
                .collect::<Vec<_>>()
                .join(" + "),
            fractions.map_or_else(|| "unknown".to_string(), |n| n.to_string())
        ));
    }
    let fg = groups.first();
    let fractions_per_day = fg.and_then(|g| {
        let digits = attr::int(g, tags::NUMBER_OF_FRACTION_PATTERN_DIGITS_PER_DAY)? as usize;
        let pattern = attr::string(g, tags::FRACTION_PATTERN)?;
        let bytes = pattern.as_bytes();
        (digits > 0).then(|| {
            bytes
                .chunks(digits)
                .map(|day| day.iter().filter(|c| **c == b'1').count() as u32)
                .max()
                .unwrap_or(0)
        })
    });
    let (prescription_gy, prescription_source) =
        if let Some(max) = targets.iter().copied().reduce(f64::max) {
            if targets.len() > 1 {
                notes.push(format!(
                    "{} target prescriptions; the highest ({max} Gy) is used",
                    targets.len()
                ));
            }
            (
                Some(max),
                "Target Prescription Dose (300A,0026)".to_string(),
            )
        } else {
            // The fraction groups' dose: beam doses per fraction × fractions.
            // One beam dose that is there but not a number would make the
            // sum short, so then there is no sum.
            let mut total = Some(0.0);
            for (g, n) in groups.iter().zip(&per_group) {
                let beams = attr::items(g, tags::REFERENCED_BEAM_SEQUENCE);
                let stated: Vec<&InMemDicomObject> = beams
                    .iter()
                    .filter(|b| attr::string(b, tags::BEAM_DOSE).is_some())
                    .collect();
                let doses: Vec<f64> = stated
                    .iter()
                    .filter_map(|b| attr::float(b, tags::BEAM_DOSE))
                    .filter(|gy| *gy >= 0.0)
                    .collect();
                if doses.len() != stated.len() {
                    notes.push(format!(
                        "{} of {} Beam Doses are not doses; no prescription is summed from them",
                        stated.len() - doses.len(),
                        stated.len()
                    ));
                    total = None;
                }
                total = total
                    .zip(*n)
                    .map(|(t, n)| t + doses.iter().sum::<f64>() * f64::from(n));
            }
            let course_gy = total.unwrap_or(0.0);
            match (course_gy > 0.0, fractions) {
                (true, Some(_)) => (
                    Some(course_gy),
                    "sum of Beam Dose (300A,0084) × fractions in each fraction group".to_string(),
                ),
                _ => (None, "no prescription in the plan".to_string()),
            }
        };
    let photon_beams = attr::items(obj, tags::BEAM_SEQUENCE);
    let ion_beams = attr::items(obj, tags::ION_BEAM_SEQUENCE);
    let beams: Vec<&InMemDicomObject> = photon_beams.iter().chain(ion_beams.iter()).collect();
    let treatment: Vec<&InMemDicomObject> = beams
        .iter()
        .copied()
        .filter(|b| {
            attr::string(b, tags::TREATMENT_DELIVERY_TYPE)
                .is_none_or(|t| t.eq_ignore_ascii_case("TREATMENT"))
        })
        .collect();
    let radiation_type = treatment
        .iter()
        .find_map(|b| attr::string(b, tags::RADIATION_TYPE));
    let technique = technique(&treatment, !ion_beams.is_empty());
    RtPlan {
        sop_instance_uid: attr::string(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        label: attr::string(obj, tags::RT_PLAN_LABEL),
        frame_of_reference_uid: attr::string(obj, tags::FRAME_OF_REFERENCE_UID),
        prescription_gy,
        prescription_source,
        fractions,
        fraction_groups: groups.len(),
        fractions_per_day,
        technique,
        radiation_type,
        beams: treatment.len(),
        referenced_structure_set_uid: attr::referenced_uid(
            obj,
            tags::REFERENCED_STRUCTURE_SET_SEQUENCE,
        ),
        date_time: attr::date_time(obj, tags::RT_PLAN_DATE, tags::RT_PLAN_TIME).or_else(|| {
            attr::date_time(
                obj,
                tags::INSTANCE_CREATION_DATE,
                tags::INSTANCE_CREATION_TIME,
            )
        }),
        created: attr::date_time(
            obj,
            tags::INSTANCE_CREATION_DATE,
            tags::INSTANCE_CREATION_TIME,
        ),
        approval: attr::string(obj, tags::APPROVAL_STATUS).map(|s| s.to_ascii_uppercase()),
        related: attr::items(obj, tags::REFERENCED_RT_PLAN_SEQUENCE)
            .iter()
            .filter_map(|i| {
                Some((
                    attr::string(i, tags::REFERENCED_SOP_INSTANCE_UID)?,
                    attr::string(i, tags::RT_PLAN_RELATIONSHIP)
                        .unwrap_or_default()
                        .to_ascii_uppercase(),
                ))
            })
            .collect(),
        notes,
    }
}

/// VMAT: a dynamic beam whose gantry rotates. IMRT: dynamic or many-segment
/// static beams with MLC motion. 3D-CRT: static beams with one shape each.
fn technique(beams: &[&InMemDicomObject], ion: bool) -> String {
    if beams.is_empty() {
        return "unknown (no treatment beams)".into();
    }
    if ion {
        let scan = beams
            .iter()
            .find_map(|b| attr::string(b, tags::SCAN_MODE))
            .unwrap_or_default();
        return if scan.eq_ignore_ascii_case("MODULATED") {
            "IMPT".into()
        } else {
            "ion therapy".into()
        };
    }
    let mut vmat = false;
    let mut modulated = false;
    for b in beams {
        let dynamic =
            attr::string(b, tags::BEAM_TYPE).is_some_and(|t| t.eq_ignore_ascii_case("DYNAMIC"));
        let cps = attr::items(b, tags::CONTROL_POINT_SEQUENCE);
        let rotates = cps
            .first()
            .and_then(|cp| attr::string(cp, tags::GANTRY_ROTATION_DIRECTION))
            .is_some_and(|d| d == "CW" || d == "CC");
        if dynamic && rotates {
            vmat = true;
        }
        if cps.len() > 2 {
            modulated = true;
        }
    }
    if vmat {
        "VMAT".into()
    } else if modulated {
        "IMRT".into()
    } else {
        "3D-CRT".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::write::{put_seq, put_str};
    use dicom_core::VR;

    /// A twice-daily plan of 30 fractions without a target dose reference,
    /// whose fraction group states these beam doses.
    fn plan_with_beam_doses(doses: &[&str]) -> RtPlan {
        plan_with("30", doses)
    }

    fn plan_with(fractions: &str, doses: &[&str]) -> RtPlan {
        let mut obj = InMemDicomObject::new_empty();
        put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3");
        let mut fg = InMemDicomObject::new_empty();
        put_str(
            &mut fg,
            tags::NUMBER_OF_FRACTIONS_PLANNED,
            VR::IS,
            fractions,
        );
        put_str(
            &mut fg,
            tags::NUMBER_OF_FRACTION_PATTERN_DIGITS_PER_DAY,
            VR::IS,
            "2",
        );
        // Two fractions a day, Monday to Friday, for three weeks.
        put_str(
            &mut fg,
            tags::FRACTION_PATTERN,
            VR::LT,
            &"11111111110000".repeat(3),
        );
        let beams: Vec<InMemDicomObject> = doses
            .iter()
            .map(|d| {
                let mut b = InMemDicomObject::new_empty();
                put_str(&mut b, tags::BEAM_DOSE, VR::DS, d);
                b
            })
            .collect();
        put_seq(&mut fg, tags::REFERENCED_BEAM_SEQUENCE, beams);
        put_seq(&mut obj, tags::FRACTION_GROUP_SEQUENCE, vec![fg]);
        let file = crate::rt::write::with_meta(
            obj,
            crate::receive::sop::RT_PLAN,
            "1.2.3",
            crate::store::ts::EXPLICIT_VR_LE,
        );
        from_object(&file)
    }

    #[test]
    fn twice_daily_fraction_pattern_and_beam_dose_prescription() {
        let p = plan_with_beam_doses(&["0.6", "0.9"]);
        assert_eq!(p.fractions, Some(30));
        assert_eq!(p.fractions_per_day, Some(2));
        assert!(
            (p.prescription_gy.expect("rx") - 45.0).abs() < 1e-9,
            "{:?}",
            p.prescription_gy
        );
        assert!(p.prescription_source.contains("Beam Dose"));
        assert!((p.dose_per_fraction().expect("dpf") - 1.5).abs() < 1e-9);
    }

    /// A beam dose that is not a number would make the sum short: no sum,
    /// and a note says why.
    #[test]
    fn a_damaged_beam_dose_gives_no_summed_prescription() {
        let p = plan_with_beam_doses(&["0.6", "NaN"]);
        assert_eq!(p.prescription_gy, None);
        assert!(
            p.notes.iter().any(|n| n.contains("1 of 2 Beam Doses")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn fractions_beyond_a_treatment_course_are_ignored_with_a_note() {
        let p = plan_with("100", &["1.0"]);
        assert_eq!(p.fractions, Some(100));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        for n in ["101", "2147483647"] {
            let p = plan_with(n, &["1.0"]);
            assert_eq!(p.fractions, None, "{n}");
            assert!(
                p.notes
                    .iter()
                    .any(|x| x.contains("not a treatment course") && x.contains(n)),
                "{:?}",
                p.notes
            );
        }
        assert_eq!(plan_with("0", &["1.0"]).fractions, None);
    }
}
