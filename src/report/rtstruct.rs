//! The RT Structure Set that carries the learned ROI back to the planning
//! system.
//!
//! The ROI is a voxel mask on the dose grid. Each axial plane of the grid
//! becomes one contour plane at the grid's z, traced by
//! [`contour::contours`], so that reading the object back with
//! [`crate::rt::structure`] and taking voxel centres on the same grid gives
//! the mask again. The object joins the input study, shares the dose's
//! frame of reference (planning systems refuse a structure set in another
//! one) and links each contour to the CT slice it lies on when the CT was
//! received.
//!
//! An empty mask still gives a valid object: the ROI is declared, with no
//! contours. The SR can then reference it whatever the model found, and a
//! planning system shows an empty structure rather than failing an import.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::contour;
use super::{
    plain_ascii, put_header, sop_ref, ReportError, ReportInputs, SeriesHeader, RESEARCH_NOTICE,
};
use crate::receive::sop;
use crate::rt::grid::Grid;
use crate::rt::write::{ds_list, put_seq, put_str, with_meta};
use crate::store::ts;
use crate::uid;

/// ROI Number of the learned ROI in the returned structure set (the SR
/// names it by this number).
pub const LEARNED_ROI_NUMBER: i64 = 1;

/// ROI Name esorisk gives the learned ROI.
pub const DEFAULT_ROI_NAME: &str = "ESORISK_ROI";

/// Series Number of the returned structure set: high, so that it sorts
/// after the planning system's own series.
pub const SERIES_NUMBER: &str = "9002";

/// Display colour (RGB) of the learned ROI.
const COLOR: [u8; 3] = [255, 128, 0];

/// An RT Structure Set holding `mask` (voxel centres inside, indexed like
/// `grid`) as one ROI named `roi_name`.
///
/// Fails when the mask does not match the grid, or when no input states a
/// frame of reference (the contours would float in an unknown space).
pub fn learned_roi_rtstruct(
    input: &ReportInputs,
    grid: &Grid,
    mask: &[bool],
    roi_name: &str,
) -> Result<FileDicomObject<InMemDicomObject>, ReportError> {
    if mask.len() != grid.len() {
        return Err(ReportError::Mask {
            what: format!(
                "{} mask values for a grid of {} x {} x {} voxels",
                mask.len(),
                grid.nx,
                grid.ny,
                grid.nz()
            ),
        });
    }
    let frame_of_reference_uid =
        input
            .frame_of_reference_uid
            .as_deref()
            .ok_or_else(|| ReportError::Mask {
                what: "no input object states a Frame of Reference UID".into(),
            })?;
    let (date, time) = input.now();
    let sop_instance_uid = uid::generate();
    let series_instance_uid = uid::generate();
    let description = format!("esorisk learned ROI - {RESEARCH_NOTICE}");
    let mut obj = InMemDicomObject::new_empty();
    put_header(
        &mut obj,
        input,
        &SeriesHeader {
            sop_class_uid: sop::RT_STRUCTURE_SET,
            sop_instance_uid: &sop_instance_uid,
            series_instance_uid: &series_instance_uid,
            modality: "RTSTRUCT",
            series_number: SERIES_NUMBER,
            series_description: &description,
            date: &date,
            time: &time,
        },
    );
    put_str(&mut obj, tags::OPERATORS_NAME, VR::PN, "");

    // Frame of Reference module, at the top level.
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame_of_reference_uid,
    );
    put_str(
        &mut obj,
        tags::POSITION_REFERENCE_INDICATOR,
        VR::LO,
        &input.position_reference_indicator,
    );

    // Structure Set module.
    put_str(
        &mut obj,
        tags::STRUCTURE_SET_LABEL,
        VR::SH,
        "ESORISK RESEARCH",
    );
    put_str(
        &mut obj,
        tags::STRUCTURE_SET_NAME,
        VR::LO,
        "esorisk learned ROI",
    );
    put_str(
        &mut obj,
        tags::STRUCTURE_SET_DESCRIPTION,
        VR::ST,
        &description,
    );
    put_str(&mut obj, tags::STRUCTURE_SET_DATE, VR::DA, &date);
    put_str(&mut obj, tags::STRUCTURE_SET_TIME, VR::TM, &time);
    put_seq(
        &mut obj,
        tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE,
        vec![referenced_frame(input, frame_of_reference_uid)],
    );
    let mut roi = InMemDicomObject::new_empty();
    put_str(
        &mut roi,
        tags::ROI_NUMBER,
        VR::IS,
        &LEARNED_ROI_NUMBER.to_string(),
    );
    put_str(
        &mut roi,
        tags::REFERENCED_FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame_of_reference_uid,
    );
    put_str(&mut roi, tags::ROI_NAME, VR::LO, &plain_ascii(roi_name));
    put_str(
        &mut roi,
        tags::ROI_DESCRIPTION,
        VR::ST,
        &format!("dose-response region learned by the esorisk model; {RESEARCH_NOTICE}"),
    );
    put_str(
        &mut roi,
        tags::ROI_GENERATION_ALGORITHM,
        VR::CS,
        "AUTOMATIC",
    );
    put_str(
        &mut roi,
        tags::ROI_GENERATION_DESCRIPTION,
        VR::LO,
        "esorisk dosiomics model, voxel mask on the dose grid",
    );
    put_seq(&mut obj, tags::STRUCTURE_SET_ROI_SEQUENCE, vec![roi]);

    // ROI Contour module.
    let mut rc = InMemDicomObject::new_empty();
    put_str(
        &mut rc,
        tags::ROI_DISPLAY_COLOR,
        VR::IS,
        &format!("{}\\{}\\{}", COLOR[0], COLOR[1], COLOR[2]),
    );
    let contours = contour_items(input, grid, mask);
    // Contour Sequence is type 3: an empty ROI simply has none.
    if !contours.is_empty() {
        put_seq(&mut rc, tags::CONTOUR_SEQUENCE, contours);
    }
    put_str(
        &mut rc,
        tags::REFERENCED_ROI_NUMBER,
        VR::IS,
        &LEARNED_ROI_NUMBER.to_string(),
    );
    put_seq(&mut obj, tags::ROI_CONTOUR_SEQUENCE, vec![rc]);

    // RT ROI Observations module. The interpreted type stays empty (type
    // 2): the ROI is a model's dose-response region, not an organ, a
    // target or an avoidance structure anyone has prescribed.
    let mut ob = InMemDicomObject::new_empty();
    put_str(&mut ob, tags::OBSERVATION_NUMBER, VR::IS, "1");
    put_str(
        &mut ob,
        tags::REFERENCED_ROI_NUMBER,
        VR::IS,
        &LEARNED_ROI_NUMBER.to_string(),
    );
    put_str(&mut ob, tags::RTROI_INTERPRETED_TYPE, VR::CS, "");
    put_str(&mut ob, tags::ROI_INTERPRETER, VR::PN, "");
    put_seq(&mut obj, tags::RTROI_OBSERVATIONS_SEQUENCE, vec![ob]);

    // Approval module: nobody has approved a machine's contour.
    put_str(&mut obj, tags::APPROVAL_STATUS, VR::CS, "UNAPPROVED");

    Ok(with_meta(
        obj,
        sop::RT_STRUCTURE_SET,
        &sop_instance_uid,
        ts::EXPLICIT_VR_LE,
    ))
}

/// The Referenced Frame of Reference item; with CT received, it lists the
/// slices by series as the image set the contours were drawn on.
fn referenced_frame(input: &ReportInputs, frame_of_reference_uid: &str) -> InMemDicomObject {
    let mut f = InMemDicomObject::new_empty();
    put_str(
        &mut f,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        frame_of_reference_uid,
    );
    if input.ct_slices.is_empty() {
        return f;
    }
    let mut series: Vec<&str> = Vec::new();
    for s in &input.ct_slices {
        if !series.contains(&s.series_instance_uid.as_str()) {
            series.push(&s.series_instance_uid);
        }
    }
    let series_items = series
        .into_iter()
        .map(|uid| {
            let mut se = InMemDicomObject::new_empty();
            put_str(&mut se, tags::SERIES_INSTANCE_UID, VR::UI, uid);
            put_seq(
                &mut se,
                tags::CONTOUR_IMAGE_SEQUENCE,
                input
                    .ct_slices
                    .iter()
                    .filter(|s| s.series_instance_uid == uid)
                    .map(|s| sop_ref(&s.sop_class_uid, &s.sop_instance_uid))
                    .collect(),
            );
            se
        })
        .collect();
    // The Detached Study Management SOP Class, as PS3.3 C.8.8.5 prescribes.
    let mut study = sop_ref("1.2.840.10008.3.1.2.3.1", &input.study_instance_uid);
    put_seq(
        &mut study,
        tags::RT_REFERENCED_SERIES_SEQUENCE,
        series_items,
    );
    put_seq(&mut f, tags::RT_REFERENCED_STUDY_SEQUENCE, vec![study]);
    f
}

/// One Contour Sequence item per polygon, plane by plane in ascending z.
fn contour_items(input: &ReportInputs, grid: &Grid, mask: &[bool]) -> Vec<InMemDicomObject> {
    let plane = grid.nx * grid.ny;
    let mut items = Vec::new();
    for (k, z) in grid.z.iter().enumerate() {
        let Some(m) = mask.get(k * plane..(k + 1) * plane) else {
            continue;
        };
        if !m.iter().any(|v| *v) {
            continue;
        }
        let image = input.ct_slice_at(*z);
        for poly in contour::contours(m, grid.nx, grid.ny, grid.x0, grid.y0, grid.dx, grid.dy) {
            let mut c = InMemDicomObject::new_empty();
            if let Some(s) = image {
                put_seq(
                    &mut c,
                    tags::CONTOUR_IMAGE_SEQUENCE,
                    vec![sop_ref(&s.sop_class_uid, &s.sop_instance_uid)],
                );
            }
            put_str(
                &mut c,
                tags::CONTOUR_GEOMETRIC_TYPE,
                VR::CS,
                "CLOSED_PLANAR",
            );
            put_str(
                &mut c,
                tags::NUMBER_OF_CONTOUR_POINTS,
                VR::IS,
                &poly.len().to_string(),
            );
            put_str(
                &mut c,
                tags::CONTOUR_NUMBER,
                VR::IS,
                &(items.len() + 1).to_string(),
            );
            let pts: Vec<f64> = poly.iter().flat_map(|p| [p[0], p[1], *z]).collect();
            put_str(&mut c, tags::CONTOUR_DATA, VR::DS, &ds_list(&pts));
            items.push(c);
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::structure;

    fn inputs(frame_of_reference_uid: Option<&str>) -> ReportInputs {
        let mut patient_study = InMemDicomObject::new_empty();
        put_str(
            &mut patient_study,
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "2.25.1",
        );
        put_str(&mut patient_study, tags::PATIENT_ID, VR::LO, "P1");
        ReportInputs {
            patient_study,
            timezone_offset: None,
            study_instance_uid: "2.25.1".into(),
            frame_of_reference_uid: frame_of_reference_uid.map(String::from),
            position_reference_indicator: String::new(),
            evidence: vec![],
            ct_slices: vec![],
        }
    }

    #[test]
    fn ring_on_three_planes_reads_back_exactly() {
        let grid = Grid::uniform([-10.0, 5.0, -7.5], [2.0, 2.5, 3.0], [9, 8, 5]);
        let mut mask = vec![false; grid.len()];
        for k in 1..4 {
            for j in 1..7 {
                for i in 1..8 {
                    let hole = k == 2 && (3..5).contains(&j) && (3..6).contains(&i);
                    mask[grid.index(i, j, k)] = !hole;
                }
            }
        }
        let obj = learned_roi_rtstruct(&inputs(Some("2.25.2")), &grid, &mask, "ESORISK_ROI")
            .expect("rtstruct");
        let ss = structure::from_object(&obj).expect("reads");
        assert_eq!(ss.frame_of_reference_uids, vec!["2.25.2".to_string()]);
        let roi = &ss.rois[0];
        assert_eq!(roi.planes.len(), 3);
        assert_eq!(roi.planes[1].polygons.len(), 2, "outer contour and hole");
        assert_eq!(roi.rasterize(&grid, 1).centre_mask(&grid), mask);
        assert!(
            ss.contour_image_uids.is_empty(),
            "no CT, no image references"
        );
    }

    #[test]
    fn refuses_a_mask_off_the_grid_or_without_a_frame_of_reference() {
        let grid = Grid::uniform([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2, 2, 2]);
        let mask = vec![true; grid.len()];
        assert!(learned_roi_rtstruct(&inputs(None), &grid, &mask, "R").is_err());
        assert!(learned_roi_rtstruct(&inputs(Some("2.25.2")), &grid, &mask[1..], "R").is_err());
        assert!(learned_roi_rtstruct(&inputs(Some("2.25.2")), &grid, &mask, "R").is_ok());
    }
}
