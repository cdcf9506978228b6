//! A planning CT for a synthetic patient: one axial slice per contour
//! plane, Hounsfield units painted from the same anatomy the structures and
//! the dose come from.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::anatomy::Anatomy;
use crate::receive::sop;
use crate::rt::write::{self, put_str, ImageRefs, StudyHeader};
use crate::store::ts;

/// Pixels per row and column.
const SIZE: usize = 256;

/// Hounsfield units at a point.
fn hu(a: &Anatomy, x: f64, y: f64, z: f64) -> f64 {
    if (x / a.body.0).powi(2) + (y / a.body.1).powi(2) > 1.0 {
        return -1000.0;
    }
    let p = [x, y, z];
    let (cx, cy, cr) = a.cord;
    if a.gtv.q(p) <= 1.0 {
        return 35.0;
    }
    if a.esophagus.contains(p) {
        let (ex, ey) = a.esophagus.centre(z);
        // A collapsed lumen with a little air in the middle.
        return if (x - ex).hypot(y - ey) < 2.0 {
            -600.0
        } else {
            40.0
        };
    }
    if (x - cx).hypot(y - cy) <= cr {
        return 30.0;
    }
    // Vertebral body in front of the cord, canal walls around it.
    if (x - cx).hypot(y - (cy - cr - 16.0)) <= 15.0 || ((x - cx).hypot(y - cy) <= cr + 6.0) {
        return 500.0;
    }
    if a.lung_left.q(p) <= 1.0 || a.lung_right.q(p) <= 1.0 {
        return -820.0;
    }
    if a.heart.q(p) <= 1.0 {
        return 45.0;
    }
    // Chest wall and mediastinal soft tissue, with subcutaneous fat.
    if (x / (a.body.0 - 12.0)).powi(2) + (y / (a.body.1 - 12.0)).powi(2) > 1.0 {
        -90.0
    } else {
        20.0
    }
}

/// The CT series at the given slice positions; returns the objects and the
/// references a structure set needs.
pub fn series(
    h: &StudyHeader,
    a: &Anatomy,
    z: &[f64],
    thickness: f64,
) -> (Vec<FileDicomObject<InMemDicomObject>>, ImageRefs) {
    let series_uid = h.uid();
    let fov = 2.0 * a.body.0.max(a.body.1) + 40.0;
    let spacing = fov / SIZE as f64;
    let x0 = -fov / 2.0 + spacing / 2.0;
    let mut objects = Vec::with_capacity(z.len());
    let mut slices = Vec::with_capacity(z.len());
    for (n, zz) in z.iter().enumerate() {
        let sop_uid = h.uid();
        let mut obj = InMemDicomObject::new_empty();
        write::header(&mut obj, h, sop::CT_IMAGE, &sop_uid, &series_uid, "CT");
        put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, "2");
        put_str(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            &(n + 1).to_string(),
        );
        put_str(
            &mut obj,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &h.frame_of_reference_uid,
        );
        put_str(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        put_str(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            "ORIGINAL\\PRIMARY\\AXIAL",
        );
        put_str(&mut obj, tags::ACQUISITION_NUMBER, VR::IS, "1");
        put_str(&mut obj, tags::PATIENT_POSITION, VR::CS, "HFS");
        put_str(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
        put_str(&mut obj, tags::KVP, VR::DS, "120");
        put_str(
            &mut obj,
            tags::SLICE_THICKNESS,
            VR::DS,
            &format!("{thickness}"),
        );
        put_str(
            &mut obj,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &format!("{x0:.4}\\{x0:.4}\\{zz:.4}"),
        );
        put_str(
            &mut obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            "1\\0\\0\\0\\1\\0",
        );
        put_str(&mut obj, tags::SLICE_LOCATION, VR::DS, &format!("{zz:.4}"));
        put_str(
            &mut obj,
            tags::PIXEL_SPACING,
            VR::DS,
            &format!("{spacing:.6}\\{spacing:.6}"),
        );
        for (tag, v) in [
            (tags::SAMPLES_PER_PIXEL, 1u16),
            (tags::ROWS, SIZE as u16),
            (tags::COLUMNS, SIZE as u16),
            (tags::BITS_ALLOCATED, 16),
            (tags::BITS_STORED, 16),
            (tags::HIGH_BIT, 15),
            (tags::PIXEL_REPRESENTATION, 0),
        ] {
            obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
        put_str(
            &mut obj,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        put_str(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
        put_str(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
        put_str(&mut obj, tags::RESCALE_TYPE, VR::LO, "HU");
        put_str(&mut obj, tags::WINDOW_CENTER, VR::DS, "40");
        put_str(&mut obj, tags::WINDOW_WIDTH, VR::DS, "400");
        let pixels: Vec<u16> = (0..SIZE * SIZE)
            .map(|i| {
                let (x, y) = (
                    x0 + (i % SIZE) as f64 * spacing,
                    x0 + (i / SIZE) as f64 * spacing,
                );
                (hu(a, x, y, *zz) + 1024.0).clamp(0.0, 4095.0) as u16
            })
            .collect();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        objects.push(write::with_meta(
            obj,
            sop::CT_IMAGE,
            &sop_uid,
            ts::EXPLICIT_VR_LE,
        ));
        slices.push((*zz, sop_uid));
    }
    (
        objects,
        ImageRefs {
            sop_class_uid: sop::CT_IMAGE.into(),
            series_instance_uid: series_uid,
            slices,
        },
    )
}
