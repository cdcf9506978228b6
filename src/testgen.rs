//! Structurally valid CT and RT objects for the ingest tests and benchmarks:
//! realistic sizes, no realistic anatomy or dose (the phantom hospitals in
//! `synth` provide those). RT objects are built with [`crate::rt::write`].

use std::path::{Path, PathBuf};

use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::rt::grid::Grid;
use crate::rt::phantom::circle;
use crate::rt::structure::ContourPlane;
use crate::rt::write::{self, CtSlice, DoseEncoding, RoiSpec, StudyHeader};

/// xorshift64*: deterministic noise for pixel values.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The study every object of one `write_set` call belongs to.
pub fn study_header(seed: u64) -> StudyHeader {
    let mut h = StudyHeader::new(&format!("SYN{seed:06}"));
    h.patient_name = format!("Synthetic^SYN{seed:06}");
    h.patient_sex = Some("F".into());
    h
}

/// One CT slice of `size`×`size` 16-bit pixels, 3 mm apart by `index`.
pub fn ct_slice(
    h: &StudyHeader,
    series: &str,
    index: usize,
    size: u16,
    seed: u64,
) -> FileDicomObject<InMemDicomObject> {
    let mut rng = Rng(seed
        .wrapping_add(index as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1);
    let n = usize::from(size);
    let c = f64::from(size) / 2.0;
    let pixels: Vec<u16> = (0..n * n)
        .map(|i| {
            let (x, y) = ((i % n) as f64 - c, (i / n) as f64 - c);
            let body = if x * x / 1.2 + y * y < c * c * 0.7 {
                1024.0
            } else {
                0.0
            };
            (body + (rng.next() % 40) as f64) as u16
        })
        .collect();
    let spacing = 500.0 / f64::from(size);
    write::ct_image(
        h,
        CtSlice {
            series_instance_uid: series,
            instance_number: index + 1,
            position: [-250.0, -250.0, index as f64 * 3.0],
            pixel_spacing: spacing,
            size,
            slice_thickness: 3.0,
            pixels,
        },
    )
    .0
}

/// An RT Dose of 256×256 32-bit pixels per plane and about `mbytes` MB.
pub fn rt_dose(
    h: &StudyHeader,
    plan_uid: &str,
    mbytes: usize,
    seed: u64,
) -> FileDicomObject<InMemDicomObject> {
    let frames = ((mbytes * 1_000_000) / (256 * 256 * 4)).max(1);
    let grid = Grid::uniform([-255.0, -255.0, 0.0], [2.0, 2.0, 2.0], [256, 256, frames]);
    let mut rng = Rng(seed | 1);
    let gy: Vec<f32> = (0..grid.len())
        .map(|i| ((i % 6_000_000) as f32 + (rng.next() % 1000) as f32) * 1e-5)
        .collect();
    let enc = DoseEncoding {
        referenced_plan_uid: Some(plan_uid.to_string()),
        ..Default::default()
    };
    write::rt_dose(h, &grid, &gy, &enc)
}

/// An RT Structure Set with one round "Esophagus" every 3 mm over 40 planes.
pub fn rt_struct(h: &StudyHeader, sop_uid: &str) -> FileDicomObject<InMemDicomObject> {
    let planes = (0..40)
        .map(|k| ContourPlane {
            z: f64::from(k) * 3.0,
            polygons: vec![circle(0.0, 20.0, 8.0, 16)],
        })
        .collect();
    let roi = RoiSpec {
        number: 1,
        name: "Esophagus".into(),
        interpreted_type: "ORGAN".into(),
        planes,
        color: [255, 128, 0],
    };
    write::rt_struct(h, sop_uid, "LUNG", &[roi])
}

/// Write `count` objects of `kind` (ct, rtdose, rtplan, rtstruct, study) to `out`.
pub fn write_set(
    out: &Path,
    kind: &str,
    count: usize,
    size: u16,
    mbytes: usize,
    seed: u64,
) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    let h = study_header(seed);
    let series = h.uid();
    let mut paths = Vec::new();
    let mut save = |obj: FileDicomObject<InMemDicomObject>,
                    name: String|
     -> Result<(), Box<dyn std::error::Error>> {
        let p = out.join(name);
        obj.write_to_file(&p)?;
        paths.push(p);
        Ok(())
    };
    match kind {
        "ct" => {
            for i in 0..count {
                save(
                    ct_slice(&h, &series, i, size, seed),
                    format!("ct_{i:04}.dcm"),
                )?;
            }
        }
        "rtdose" => {
            for i in 0..count {
                save(
                    rt_dose(&h, &h.uid(), mbytes, seed + i as u64),
                    format!("rtdose_{i:04}.dcm"),
                )?;
            }
        }
        "rtplan" => {
            for i in 0..count {
                save(
                    write::rt_plan(&h, &h.uid(), &h.uid(), Some(60.0), 30, &[2.0]),
                    format!("rtplan_{i:04}.dcm"),
                )?;
            }
        }
        "rtstruct" => {
            for i in 0..count {
                save(rt_struct(&h, &h.uid()), format!("rtstruct_{i:04}.dcm"))?;
            }
        }
        "study" => {
            let (plan, ss) = (h.uid(), h.uid());
            save(rt_struct(&h, &ss), "rtstruct.dcm".into())?;
            save(
                write::rt_plan(&h, &plan, &ss, Some(60.0), 30, &[2.0]),
                "rtplan.dcm".into(),
            )?;
            save(rt_dose(&h, &plan, mbytes, seed), "rtdose.dcm".into())?;
            let ct_series = h.uid();
            for i in 0..count {
                save(
                    ct_slice(&h, &ct_series, i, size, seed),
                    format!("ct_{i:04}.dcm"),
                )?;
            }
        }
        other => {
            return Err(
                format!("unknown kind {other:?} (ct, rtdose, rtplan, rtstruct, study)").into(),
            )
        }
    }
    Ok(paths)
}
