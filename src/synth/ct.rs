//! A planning CT for a synthetic patient: one axial slice per contour
//! plane, Hounsfield units painted from the same anatomy the structures and
//! the dose come from.

use dicom_object::{FileDicomObject, InMemDicomObject};

use super::anatomy::Anatomy;
use crate::receive::sop;
use crate::rt::write::{self, CtSlice, ImageRefs, StudyHeader};

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
        let pixels: Vec<u16> = (0..SIZE * SIZE)
            .map(|i| {
                let (x, y) = (
                    x0 + (i % SIZE) as f64 * spacing,
                    x0 + (i / SIZE) as f64 * spacing,
                );
                (hu(a, x, y, *zz) + 1024.0).clamp(0.0, 4095.0) as u16
            })
            .collect();
        let (obj, sop_uid) = write::ct_image(
            h,
            CtSlice {
                series_instance_uid: &series_uid,
                instance_number: n + 1,
                position: [x0, x0, *zz],
                pixel_spacing: spacing,
                size: SIZE as u16,
                slice_thickness: thickness,
                pixels,
            },
        );
        objects.push(obj);
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
