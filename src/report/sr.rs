//! The Comprehensive SR that carries the risk: an Imaging Measurement
//! Report (TID 1500).
//!
//! Content tree of a scored study (TID rows in brackets):
//!
//! ```text
//! CONTAINER (126000, DCM, "Imaging Measurement Report")          [1500]
//!   HAS CONCEPT MOD  CODE Language = (en-US, RFC5646)           [1204]
//!   HAS OBS CONTEXT  CODE Observer Type = Device; UIDREF, TEXT
//!                    Device Observer UID, Name, Manufacturer,
//!                    Model Name                                 [1002, 1004]
//!   HAS CONCEPT MOD  CODE Procedure reported = (108290001, SCT)
//!   CONTAINS CONTAINER Imaging Measurements (126010, DCM)
//!     CONTAINS CONTAINER Measurement Group (125007, DCM)        [1501]
//!       HAS OBS CONTEXT TEXT Tracking Identifier, UIDREF Tracking UID
//!       CONTAINS CODE Finding = (16761005, SCT, "Esophagitis")
//!       CONTAINS COMPOSITE Region in Space -> the RT Structure Set
//!         HAS CONCEPT MOD TEXT Referenced ROI Identifier = ROI Number
//!       HAS CONCEPT MOD CODE Finding Site = (32849002, SCT, "Esophagus")
//!       HAS CONCEPT MOD TEXT Algorithm Name
//!         HAS CONCEPT MOD TEXT Algorithm Version                [4019]
//!       CONTAINS NUM risk (ESR0001, 99ESORISK), units "1"
//!       CONTAINS NUM esophagus Dmean, V35, V50, V60, ROI volume and
//!                    ROI mean dose (99ESORISK codes)
//!       CONTAINS TEXT Dosiomic feature (ESR0002) "name = value", ...
//!   CONTAINS CONTAINER Qualitative Evaluations (C0034375, UMLS)
//!     CONTAINS TEXT Comment: research result, synthetic training data
//! ```
//!
//! The reference to the returned structure set's ROI extends TID 1501
//! (an extensible template) with the items TID 1411 uses for it, "Region in
//! Space" and "Referenced Region of Interest Identifier". TID 1411 itself
//! does not fit: it relates the two by HAS PROPERTIES, which the
//! Comprehensive SR IOD does not allow from a COMPOSITE item (DCMTK refuses
//! to read such a document), so here the identifier is a concept modifier
//! of the reference, which the IOD allows from any item.
//!
//! No standard code says "probability of grade ≥ 2 radiation esophagitis",
//! so the risk and the dose metrics use the private coding scheme
//! [`CODING_SCHEME`] ("99" prefix, declared in the Coding Scheme
//! Identification Sequence and in docs/CONFORMANCE.md).

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::rtstruct::LEARNED_ROI_NUMBER;
use super::{
    hierarchical, plain_ascii, put_header, sop_ref, EvidenceRef, ReportError, ReportInputs,
    SeriesHeader, RESEARCH_NOTICE,
};
use crate::receive::sop;
use crate::rt::write::{ds, put_seq, put_str, with_meta};
use crate::store::ts;
use crate::uid;

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";

/// Series Number of returned SRs: high, after the planning system's own.
pub const SERIES_NUMBER: &str = "9001";

/// The private coding scheme of the risk and the dose metrics.
pub const CODING_SCHEME: &str = "99ESORISK";

/// Device Observer UID of esorisk (under the project's UID root).
pub const DEVICE_OBSERVER_UID: &str = "2.25.238912379870381227473521938102547823.2.1";

/// A coded concept: (code value, coding scheme designator, code meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub &'static str, pub &'static str, pub &'static str);

/// The risk: probability (0..1) of grade ≥ 2 radiation esophagitis.
pub const RISK: Code = Code(
    "ESR0001",
    CODING_SCHEME,
    "Probability of grade >= 2 radiation esophagitis",
);
/// One dosiomic feature the model used, as TEXT "name = value".
pub const DOSIOMIC_FEATURE: Code = Code("ESR0002", CODING_SCHEME, "Dosiomic feature");
/// Why a study was not scored (TEXT).
pub const NOT_SCORED: Code = Code("ESR0003", CODING_SCHEME, "Reason the study was not scored");
/// Something unusual about the inputs that the score was computed despite
/// (TEXT): which of two plans was taken, a structure set found without a
/// reference, CT images ignored.
pub const INPUT_NOTE: Code = Code("ESR0004", CODING_SCHEME, "Note on the inputs");
/// Mean dose to the whole esophagus (Gy).
pub const ESOPHAGUS_DMEAN: Code = Code("ESR0010", CODING_SCHEME, "Esophagus mean dose");
/// Percent of the esophagus volume receiving at least 35, 50, 60, 70 Gy
/// (QUANTEC's V35, V50 and V70, and the meta-analysis' V60).
pub const ESOPHAGUS_V35: Code = Code("ESR0011", CODING_SCHEME, "Esophagus V35Gy");
pub const ESOPHAGUS_V50: Code = Code("ESR0012", CODING_SCHEME, "Esophagus V50Gy");
pub const ESOPHAGUS_V60: Code = Code("ESR0013", CODING_SCHEME, "Esophagus V60Gy");
pub const ESOPHAGUS_V70: Code = Code("ESR0016", CODING_SCHEME, "Esophagus V70Gy");
/// The published LKB NTCP of the esophagus (Belderbos 2005 parameters, on
/// the EQD2 dose when the fractions are known), 0..1: a reference model the
/// reader can set the risk beside.
pub const ESOPHAGUS_LKB: Code = Code("ESR0017", CODING_SCHEME, "Esophagus LKB NTCP");
/// Volume of the learned ROI (cm³).
pub const ROI_VOLUME: Code = Code("ESR0014", CODING_SCHEME, "Learned ROI volume");
/// Mean dose to the learned ROI (Gy).
pub const ROI_DMEAN: Code = Code("ESR0015", CODING_SCHEME, "Learned ROI mean dose");

const REPORT: Code = Code("126000", "DCM", "Imaging Measurement Report");
const LANGUAGE: Code = Code("121049", "DCM", "Language of Content Item and Descendants");
const EN_US: Code = Code("en-US", "RFC5646", "English (United States)");
const OBSERVER_TYPE: Code = Code("121005", "DCM", "Observer Type");
const DEVICE: Code = Code("121007", "DCM", "Device");
const DEVICE_UID: Code = Code("121012", "DCM", "Device Observer UID");
const DEVICE_NAME: Code = Code("121013", "DCM", "Device Observer Name");
const DEVICE_MANUFACTURER: Code = Code("121014", "DCM", "Device Observer Manufacturer");
const DEVICE_MODEL: Code = Code("121015", "DCM", "Device Observer Model Name");
const PROCEDURE_REPORTED: Code = Code("121058", "DCM", "Procedure reported");
const RADIATION_THERAPY: Code = Code("108290001", "SCT", "Radiation therapy");
const IMAGING_MEASUREMENTS: Code = Code("126010", "DCM", "Imaging Measurements");
const MEASUREMENT_GROUP: Code = Code("125007", "DCM", "Measurement Group");
const TRACKING_ID: Code = Code("112039", "DCM", "Tracking Identifier");
const TRACKING_UID: Code = Code("112040", "DCM", "Tracking Unique Identifier");
const FINDING: Code = Code("121071", "DCM", "Finding");
const ESOPHAGITIS: Code = Code("16761005", "SCT", "Esophagitis");
const FINDING_SITE: Code = Code("363698007", "SCT", "Finding Site");
const ESOPHAGUS: Code = Code("32849002", "SCT", "Esophagus");
const REGION_IN_SPACE: Code = Code("130488", "DCM", "Region in Space");
const ROI_IDENTIFIER: Code = Code("130489", "DCM", "Referenced Region of Interest Identifier");
const ALGORITHM_NAME: Code = Code("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = Code("111003", "DCM", "Algorithm Version");
const QUALITATIVE: Code = Code("C0034375", "UMLS", "Qualitative Evaluations");
const COMMENT: Code = Code("121106", "DCM", "Comment");
const NO_UNITS: Code = Code("1", "UCUM", "no units");
const GRAY: Code = Code("Gy", "UCUM", "Gray");
const PERCENT: Code = Code("%", "UCUM", "percent");
const CUBIC_CM: Code = Code("cm3", "UCUM", "cubic centimeter");

/// The statement every returned SR carries.
pub const RESEARCH_STATEMENT: &str = "Research result from a model trained on synthetic data; \
     not validated on patients; research use only, not for clinical use.";

/// What the model concluded for one study.
#[derive(Debug, Clone, Default)]
pub struct RiskReport {
    /// Probability of grade ≥ 2 radiation esophagitis, 0..1.
    pub risk: f64,
    pub model_name: String,
    pub model_version: String,
    pub esophagus_dmean_gy: Option<f64>,
    pub esophagus_v35_pct: Option<f64>,
    pub esophagus_v50_pct: Option<f64>,
    pub esophagus_v60_pct: Option<f64>,
    pub esophagus_v70_pct: Option<f64>,
    /// [`ESOPHAGUS_LKB`], 0..1.
    pub esophagus_lkb_ntcp: Option<f64>,
    pub roi_volume_cc: Option<f64>,
    pub roi_mean_gy: Option<f64>,
    /// The model's most influential features, in order: (name, value).
    pub features: Vec<(String, f64)>,
    /// (Series Instance UID, SOP Instance UID) of the returned RT
    /// Structure Set, in the input study; its ROI
    /// [`LEARNED_ROI_NUMBER`] is referenced.
    pub rtstruct_ref: Option<(String, String)>,
    /// (Series Instance UID, SOP Instance UID) of an earlier esorisk SR of
    /// the same study (a Comprehensive SR) that this one replaces.
    pub predecessor: Option<(String, String)>,
    /// What was unusual about the inputs, in plain words, one note each.
    pub notes: Vec<String>,
}

/// The SR with the risk for `input`'s study.
///
/// Fails when the risk is not a probability or a dose metric is not a
/// finite number: a DS cannot hold NaN, and a report with a made-up value
/// is worse than none.
pub fn risk_sr(
    input: &ReportInputs,
    result: &RiskReport,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
    if !(0.0..=1.0).contains(&result.risk) {
        return Err(ReportError::Values {
            what: format!("risk {} is not a probability in 0..1", result.risk),
        });
    }
    let metrics = [
        (ESOPHAGUS_DMEAN, result.esophagus_dmean_gy, GRAY),
        (ESOPHAGUS_V35, result.esophagus_v35_pct, PERCENT),
        (ESOPHAGUS_V50, result.esophagus_v50_pct, PERCENT),
        (ESOPHAGUS_V60, result.esophagus_v60_pct, PERCENT),
        (ESOPHAGUS_V70, result.esophagus_v70_pct, PERCENT),
        (ESOPHAGUS_LKB, result.esophagus_lkb_ntcp, NO_UNITS),
        (ROI_VOLUME, result.roi_volume_cc, CUBIC_CM),
        (ROI_DMEAN, result.roi_mean_gy, GRAY),
    ];
    if let Some((c, Some(v), _)) = metrics
        .iter()
        .find(|(_, v, _)| v.is_some_and(|v| !v.is_finite()))
    {
        return Err(ReportError::Values {
            what: format!("{} is {v}", c.2),
        });
    }

    let mut group = vec![
        text("HAS OBS CONTEXT", TRACKING_ID, "esorisk esophagitis risk"),
        uidref("HAS OBS CONTEXT", TRACKING_UID, &uid::generate()),
        code("CONTAINS", FINDING, ESOPHAGITIS),
    ];
    let rtstruct = result
        .rtstruct_ref
        .as_ref()
        .map(|(series, sop_uid)| EvidenceRef {
            study_instance_uid: input.study_instance_uid.clone(),
            series_instance_uid: series.clone(),
            sop_class_uid: sop::RT_STRUCTURE_SET.into(),
            sop_instance_uid: sop_uid.clone(),
        });
    if let Some(r) = &rtstruct {
        let mut region = item("CONTAINS", "COMPOSITE", REGION_IN_SPACE);
        put_seq(
            &mut region,
            tags::REFERENCED_SOP_SEQUENCE,
            vec![sop_ref(&r.sop_class_uid, &r.sop_instance_uid)],
        );
        put_seq(
            &mut region,
            tags::CONTENT_SEQUENCE,
            vec![text(
                "HAS CONCEPT MOD",
                ROI_IDENTIFIER,
                &LEARNED_ROI_NUMBER.to_string(),
            )],
        );
        group.push(region);
    }
    group.push(code("HAS CONCEPT MOD", FINDING_SITE, ESOPHAGUS));
    let mut algorithm = text("HAS CONCEPT MOD", ALGORITHM_NAME, &result.model_name);
    put_seq(
        &mut algorithm,
        tags::CONTENT_SEQUENCE,
        vec![text(
            "HAS CONCEPT MOD",
            ALGORITHM_VERSION,
            &result.model_version,
        )],
    );
    group.push(algorithm);
    group.push(num("CONTAINS", RISK, result.risk, NO_UNITS));
    for (concept, value, units) in metrics {
        if let Some(v) = value {
            group.push(num("CONTAINS", concept, v, units));
        }
    }
    for (name, value) in &result.features {
        let v = if value.is_finite() {
            ds(*value)
        } else {
            "not a number".into()
        };
        group.push(text("CONTAINS", DOSIOMIC_FEATURE, &format!("{name} = {v}")));
    }
    let measurements = container(
        "CONTAINS",
        IMAGING_MEASUREMENTS,
        vec![container("CONTAINS", MEASUREMENT_GROUP, group)],
    );
    let mut evaluations: Vec<InMemDicomObject> = result
        .notes
        .iter()
        .map(|n| text("CONTAINS", INPUT_NOTE, n))
        .collect();
    evaluations.push(text("CONTAINS", COMMENT, RESEARCH_STATEMENT));
    let qualitative = container("CONTAINS", QUALITATIVE, evaluations);
    let predecessor = result
        .predecessor
        .as_ref()
        .map(|(series, sop_uid)| EvidenceRef {
            study_instance_uid: input.study_instance_uid.clone(),
            series_instance_uid: series.clone(),
            sop_class_uid: COMPREHENSIVE_SR.into(),
            sop_instance_uid: sop_uid.clone(),
        });
    Ok(document(
        input,
        vec![measurements, qualitative],
        rtstruct.as_ref(),
        predecessor.as_ref(),
    ))
}

/// An SR saying the study was not scored, and why (e.g. no esophagus
/// contour, a dose the node cannot read). Same modules and template as
/// [`risk_sr`], with the reason as a TEXT qualitative evaluation.
pub fn not_scored_sr(input: &ReportInputs, reason: &str) -> FileDicomObject<InMemDicomObject> {
    let qualitative = container(
        "CONTAINS",
        QUALITATIVE,
        vec![
            text("CONTAINS", NOT_SCORED, reason),
            text("CONTAINS", COMMENT, RESEARCH_STATEMENT),
        ],
    );
    document(input, vec![qualitative], None, None)
}

/// The SR around a content tree's findings: the header modules, the SR
/// Document General module and the TID 1500 root with its context.
fn document(
    input: &ReportInputs,
    findings: Vec<InMemDicomObject>,
    rtstruct: Option<&EvidenceRef>,
    predecessor: Option<&EvidenceRef>,
) -> FileDicomObject<InMemDicomObject> {
    let (date, time) = input.now();
    let sop_instance_uid = uid::generate();
    let series_instance_uid = uid::generate();
    let mut obj = InMemDicomObject::new_empty();
    put_header(
        &mut obj,
        input,
        &SeriesHeader {
            sop_class_uid: COMPREHENSIVE_SR,
            sop_instance_uid: &sop_instance_uid,
            series_instance_uid: &series_instance_uid,
            modality: "SR",
            series_number: SERIES_NUMBER,
            series_description: &format!("esorisk risk report - {RESEARCH_NOTICE}"),
            date: &date,
            time: &time,
        },
    );
    put_seq(
        &mut obj,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![coding_scheme()],
    );

    // SR Document Series.
    put_seq(
        &mut obj,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );

    // SR Document General.
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    // Machine output nobody has signed.
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_seq(&mut obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    put_seq(
        &mut obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        hierarchical(&input.evidence),
    );
    // Every instance the content references must be listed as evidence;
    // the returned structure set was not an input, so it is "other".
    if let Some(r) = rtstruct {
        put_seq(
            &mut obj,
            tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE,
            hierarchical(std::slice::from_ref(r)),
        );
    }
    if let Some(p) = predecessor {
        put_seq(
            &mut obj,
            tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
            hierarchical(std::slice::from_ref(p)),
        );
    }

    // SR Document Content: the TID 1500 root.
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(REPORT)],
    );
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);
    let mut content = vec![
        code("HAS CONCEPT MOD", LANGUAGE, EN_US),
        code("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
        uidref("HAS OBS CONTEXT", DEVICE_UID, DEVICE_OBSERVER_UID),
        text("HAS OBS CONTEXT", DEVICE_NAME, "esorisk"),
        text("HAS OBS CONTEXT", DEVICE_MANUFACTURER, "esorisk project"),
        text(
            "HAS OBS CONTEXT",
            DEVICE_MODEL,
            concat!("esorisk ", env!("CARGO_PKG_VERSION")),
        ),
        code("HAS CONCEPT MOD", PROCEDURE_REPORTED, RADIATION_THERAPY),
    ];
    content.extend(findings);
    put_seq(&mut obj, tags::CONTENT_SEQUENCE, content);
    with_meta(obj, COMPREHENSIVE_SR, &sop_instance_uid, ts::EXPLICIT_VR_LE)
}

/// The Coding Scheme Identification item declaring [`CODING_SCHEME`].
fn coding_scheme() -> InMemDicomObject {
    let mut i = InMemDicomObject::new_empty();
    put_str(
        &mut i,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        CODING_SCHEME,
    );
    put_str(
        &mut i,
        tags::CODING_SCHEME_UID,
        VR::UI,
        "2.25.238912379870381227473521938102547823.3.1",
    );
    put_str(
        &mut i,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        "esorisk private codes (see the esorisk DICOM conformance statement)",
    );
    put_str(&mut i, tags::CODING_SCHEME_VERSION, VR::SH, "1");
    put_str(
        &mut i,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        "esorisk project",
    );
    i
}

fn code_item(c: Code) -> InMemDicomObject {
    let mut i = InMemDicomObject::new_empty();
    put_str(&mut i, tags::CODE_VALUE, VR::SH, c.0);
    put_str(&mut i, tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.1);
    put_str(&mut i, tags::CODE_MEANING, VR::LO, c.2);
    i
}

/// A content item with its relationship, value type and concept name.
fn item(relationship: &str, value_type: &str, concept: Code) -> InMemDicomObject {
    let mut i = InMemDicomObject::new_empty();
    put_str(&mut i, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut i, tags::VALUE_TYPE, VR::CS, value_type);
    put_seq(
        &mut i,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(concept)],
    );
    i
}

/// A TEXT item. Its value is esorisk's wording (a reason, a note, a
/// feature or model name), written in plain ASCII ([`plain_ascii`]).
fn text(relationship: &str, concept: Code, value: &str) -> InMemDicomObject {
    let mut i = item(relationship, "TEXT", concept);
    put_str(&mut i, tags::TEXT_VALUE, VR::UT, &plain_ascii(value));
    i
}

fn code(relationship: &str, concept: Code, value: Code) -> InMemDicomObject {
    let mut i = item(relationship, "CODE", concept);
    put_seq(&mut i, tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]);
    i
}

fn uidref(relationship: &str, concept: Code, value: &str) -> InMemDicomObject {
    let mut i = item(relationship, "UIDREF", concept);
    put_str(&mut i, tags::UID, VR::UI, value);
    i
}

fn num(relationship: &str, concept: Code, value: f64, units: Code) -> InMemDicomObject {
    let mut i = item(relationship, "NUM", concept);
    let mut m = InMemDicomObject::new_empty();
    put_str(&mut m, tags::NUMERIC_VALUE, VR::DS, &ds(value));
    put_seq(
        &mut m,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(units)],
    );
    put_seq(&mut i, tags::MEASURED_VALUE_SEQUENCE, vec![m]);
    i
}

fn container(
    relationship: &str,
    concept: Code,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut i = item(relationship, "CONTAINER", concept);
    put_str(&mut i, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut i, tags::CONTENT_SEQUENCE, children);
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fit_their_value_representations() {
        for c in [
            RISK,
            DOSIOMIC_FEATURE,
            NOT_SCORED,
            INPUT_NOTE,
            ESOPHAGUS_DMEAN,
            ESOPHAGUS_V35,
            ESOPHAGUS_V50,
            ESOPHAGUS_V60,
            ESOPHAGUS_V70,
            ESOPHAGUS_LKB,
            ROI_VOLUME,
            ROI_DMEAN,
            ROI_IDENTIFIER,
            LANGUAGE,
        ] {
            assert!(c.0.len() <= 16 && c.1.len() <= 16 && c.2.chars().count() <= 64);
        }
        assert!(CODING_SCHEME.starts_with("99"));
        assert!(DEVICE_OBSERVER_UID.starts_with(uid::ROOT));
        assert_eq!(uid::validate(DEVICE_OBSERVER_UID), Ok(()));
    }
}
