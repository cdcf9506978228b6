//! Small synthetic CT and RT objects for tests and benchmarks.
//!
//! These are structurally valid DICOM instances with realistic sizes, not
//! realistic anatomy or dose; the phantom-hospital generator produces those.

use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use crate::receive::sop;
use crate::store::ts;
use crate::uid;

/// UIDs shared by the objects of one synthetic study.
#[derive(Debug, Clone)]
pub struct StudyUids {
    pub study: String,
    pub frame_of_reference: String,
    pub patient_id: String,
}

impl StudyUids {
    pub fn new(seed: u64) -> Self {
        StudyUids {
            study: uid::generate(),
            frame_of_reference: uid::generate(),
            patient_id: format!("SYN{seed:06}"),
        }
    }
}

fn text(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn us(obj: &mut InMemDicomObject, tag: dicom_core::Tag, v: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
}

fn common(
    obj: &mut InMemDicomObject,
    s: &StudyUids,
    sop_class: &str,
    sop_instance: &str,
    series: &str,
    modality: &str,
) {
    text(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    text(obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
    text(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance);
    text(obj, tags::STUDY_DATE, VR::DA, "20261126");
    text(obj, tags::STUDY_TIME, VR::TM, "101500");
    text(obj, tags::ACCESSION_NUMBER, VR::SH, "");
    text(obj, tags::MODALITY, VR::CS, modality);
    text(obj, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
    text(obj, tags::STUDY_DESCRIPTION, VR::LO, "Synthetic lung RT");
    text(
        obj,
        tags::PATIENT_NAME,
        VR::PN,
        &format!("Synthetic^{}", s.patient_id),
    );
    text(obj, tags::PATIENT_ID, VR::LO, &s.patient_id);
    text(obj, tags::PATIENT_BIRTH_DATE, VR::DA, "19550101");
    text(obj, tags::PATIENT_SEX, VR::CS, "F");
    text(obj, tags::STUDY_INSTANCE_UID, VR::UI, &s.study);
    text(obj, tags::SERIES_INSTANCE_UID, VR::UI, series);
    text(obj, tags::STUDY_ID, VR::SH, "1");
    text(obj, tags::SERIES_NUMBER, VR::IS, "1");
    text(obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    text(
        obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &s.frame_of_reference,
    );
}

fn finish(
    obj: InMemDicomObject,
    sop_class: &str,
    sop_instance: &str,
) -> FileDicomObject<InMemDicomObject> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(ts::EXPLICIT_VR_LE)
        .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME);
    obj.with_meta(meta)
        .unwrap_or_else(|_| unreachable!("meta table fields are all set"))
}

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

/// One CT slice of `size`×`size` 16-bit pixels at height `z` mm.
pub fn ct_slice(
    s: &StudyUids,
    series: &str,
    index: usize,
    size: u16,
    seed: u64,
) -> FileDicomObject<InMemDicomObject> {
    let sop_instance = uid::generate();
    let mut obj = InMemDicomObject::new_empty();
    common(&mut obj, s, sop::CT_IMAGE, &sop_instance, series, "CT");
    text(
        &mut obj,
        tags::IMAGE_TYPE,
        VR::CS,
        "ORIGINAL\\PRIMARY\\AXIAL",
    );
    text(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &(index + 1).to_string(),
    );
    let z = index as f64 * 3.0;
    text(
        &mut obj,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &format!("-250\\-250\\{z}"),
    );
    text(
        &mut obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        "1\\0\\0\\0\\1\\0",
    );
    text(&mut obj, tags::SLICE_THICKNESS, VR::DS, "3");
    text(
        &mut obj,
        tags::PIXEL_SPACING,
        VR::DS,
        "0.9765625\\0.9765625",
    );
    text(&mut obj, tags::PATIENT_POSITION, VR::CS, "HFS");
    us(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    text(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    us(&mut obj, tags::ROWS, size);
    us(&mut obj, tags::COLUMNS, size);
    us(&mut obj, tags::BITS_ALLOCATED, 16);
    us(&mut obj, tags::BITS_STORED, 16);
    us(&mut obj, tags::HIGH_BIT, 15);
    us(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    text(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    text(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
    let mut rng = Rng(seed
        .wrapping_add(index as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1);
    let n = usize::from(size) * usize::from(size);
    let c = f64::from(size) / 2.0;
    let pixels: Vec<u16> = (0..n)
        .map(|i| {
            let (x, y) = (
                (i % usize::from(size)) as f64 - c,
                (i / usize::from(size)) as f64 - c,
            );
            let body = if x * x / 1.2 + y * y < c * c * 0.7 {
                1024.0
            } else {
                0.0
            };
            (body + (rng.next() % 40) as f64) as u16
        })
        .collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    ));
    finish(obj, sop::CT_IMAGE, &sop_instance)
}

/// An RT Dose grid with 32-bit pixels, about `mbytes` MB of pixel data.
pub fn rt_dose(
    s: &StudyUids,
    series: &str,
    plan_uid: &str,
    mbytes: usize,
    seed: u64,
) -> FileDicomObject<InMemDicomObject> {
    let sop_instance = uid::generate();
    let (rows, cols) = (256u16, 256u16);
    let frames = ((mbytes * 1_000_000) / (usize::from(rows) * usize::from(cols) * 4)).max(1);
    let mut obj = InMemDicomObject::new_empty();
    common(&mut obj, s, sop::RT_DOSE, &sop_instance, series, "RTDOSE");
    text(
        &mut obj,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        "-255\\-255\\0",
    );
    text(
        &mut obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        "1\\0\\0\\0\\1\\0",
    );
    text(&mut obj, tags::PIXEL_SPACING, VR::DS, "2\\2");
    us(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    text(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    text(
        &mut obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.to_string(),
    );
    obj.put(DataElement::new(
        tags::FRAME_INCREMENT_POINTER,
        VR::AT,
        PrimitiveValue::Tags(vec![tags::GRID_FRAME_OFFSET_VECTOR].into()),
    ));
    us(&mut obj, tags::ROWS, rows);
    us(&mut obj, tags::COLUMNS, cols);
    us(&mut obj, tags::BITS_ALLOCATED, 32);
    us(&mut obj, tags::BITS_STORED, 32);
    us(&mut obj, tags::HIGH_BIT, 31);
    us(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    text(&mut obj, tags::DOSE_UNITS, VR::CS, "GY");
    text(&mut obj, tags::DOSE_TYPE, VR::CS, "PHYSICAL");
    text(&mut obj, tags::DOSE_SUMMATION_TYPE, VR::CS, "PLAN");
    let offsets: Vec<String> = (0..frames).map(|k| format!("{}", k * 2)).collect();
    text(
        &mut obj,
        tags::GRID_FRAME_OFFSET_VECTOR,
        VR::DS,
        &offsets.join("\\"),
    );
    text(&mut obj, tags::DOSE_GRID_SCALING, VR::DS, "1e-5");
    let mut plan_ref = InMemDicomObject::new_empty();
    text(
        &mut plan_ref,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        sop::RT_PLAN,
    );
    text(
        &mut plan_ref,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        plan_uid,
    );
    obj.put(DataElement::new(
        tags::REFERENCED_RT_PLAN_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![plan_ref], Length::UNDEFINED),
    ));
    let mut rng = Rng(seed | 1);
    let n = usize::from(rows) * usize::from(cols) * frames;
    let pixels: Vec<u32> = (0..n)
        .map(|i| ((i % 6_000_000) as u32) + (rng.next() % 1000) as u32)
        .collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U32(pixels.into()),
    ));
    finish(obj, sop::RT_DOSE, &sop_instance)
}

/// A minimal RT Plan: 60 Gy in 30 fractions, one fraction group.
pub fn rt_plan(
    s: &StudyUids,
    series: &str,
    sop_instance: &str,
    struct_uid: &str,
) -> FileDicomObject<InMemDicomObject> {
    let mut obj = InMemDicomObject::new_empty();
    common(&mut obj, s, sop::RT_PLAN, sop_instance, series, "RTPLAN");
    text(&mut obj, tags::RT_PLAN_LABEL, VR::SH, "LUNG");
    text(&mut obj, tags::RT_PLAN_GEOMETRY, VR::CS, "PATIENT");
    let mut fg = InMemDicomObject::new_empty();
    text(&mut fg, tags::FRACTION_GROUP_NUMBER, VR::IS, "1");
    text(&mut fg, tags::NUMBER_OF_FRACTIONS_PLANNED, VR::IS, "30");
    text(&mut fg, tags::NUMBER_OF_BEAMS, VR::IS, "0");
    text(
        &mut fg,
        tags::NUMBER_OF_BRACHY_APPLICATION_SETUPS,
        VR::IS,
        "0",
    );
    obj.put(DataElement::new(
        tags::FRACTION_GROUP_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![fg], Length::UNDEFINED),
    ));
    let mut rs = InMemDicomObject::new_empty();
    text(
        &mut rs,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        sop::RT_STRUCTURE_SET,
    );
    text(
        &mut rs,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        struct_uid,
    );
    obj.put(DataElement::new(
        tags::REFERENCED_STRUCTURE_SET_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![rs], Length::UNDEFINED),
    ));
    finish(obj, sop::RT_PLAN, sop_instance)
}

/// A minimal RT Structure Set with one circular "Esophagus" contour per plane.
pub fn rt_struct(
    s: &StudyUids,
    series: &str,
    sop_instance: &str,
) -> FileDicomObject<InMemDicomObject> {
    let mut obj = InMemDicomObject::new_empty();
    common(
        &mut obj,
        s,
        sop::RT_STRUCTURE_SET,
        sop_instance,
        series,
        "RTSTRUCT",
    );
    text(&mut obj, tags::STRUCTURE_SET_LABEL, VR::SH, "LUNG");
    text(&mut obj, tags::STRUCTURE_SET_DATE, VR::DA, "20261126");
    text(&mut obj, tags::STRUCTURE_SET_TIME, VR::TM, "101500");
    let mut roi = InMemDicomObject::new_empty();
    text(&mut roi, tags::ROI_NUMBER, VR::IS, "1");
    text(
        &mut roi,
        tags::REFERENCED_FRAME_OF_REFERENCE_UID,
        VR::UI,
        &s.frame_of_reference,
    );
    text(&mut roi, tags::ROI_NAME, VR::LO, "Esophagus");
    text(&mut roi, tags::ROI_GENERATION_ALGORITHM, VR::CS, "MANUAL");
    obj.put(DataElement::new(
        tags::STRUCTURE_SET_ROI_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![roi], Length::UNDEFINED),
    ));
    let contours: Vec<InMemDicomObject> = (0..40)
        .map(|k| {
            let z = f64::from(k) * 3.0;
            let pts: Vec<String> = (0..16)
                .map(|i| {
                    let a = f64::from(i) * std::f64::consts::TAU / 16.0;
                    format!("{:.2}\\{:.2}\\{z:.1}", 8.0 * a.cos(), 20.0 + 8.0 * a.sin())
                })
                .collect();
            let mut c = InMemDicomObject::new_empty();
            text(
                &mut c,
                tags::CONTOUR_GEOMETRIC_TYPE,
                VR::CS,
                "CLOSED_PLANAR",
            );
            text(&mut c, tags::NUMBER_OF_CONTOUR_POINTS, VR::IS, "16");
            text(&mut c, tags::CONTOUR_DATA, VR::DS, &pts.join("\\"));
            c
        })
        .collect();
    let mut roi_contour = InMemDicomObject::new_empty();
    text(
        &mut roi_contour,
        tags::ROI_DISPLAY_COLOR,
        VR::IS,
        "255\\128\\0",
    );
    text(&mut roi_contour, tags::REFERENCED_ROI_NUMBER, VR::IS, "1");
    roi_contour.put(DataElement::new(
        tags::CONTOUR_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(contours, Length::UNDEFINED),
    ));
    obj.put(DataElement::new(
        tags::ROI_CONTOUR_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![roi_contour], Length::UNDEFINED),
    ));
    finish(obj, sop::RT_STRUCTURE_SET, sop_instance)
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
    let s = StudyUids::new(seed);
    let series = uid::generate();
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
                    ct_slice(&s, &series, i, size, seed),
                    format!("ct_{i:04}.dcm"),
                )?;
            }
        }
        "rtdose" => {
            for i in 0..count {
                save(
                    rt_dose(&s, &series, &uid::generate(), mbytes, seed + i as u64),
                    format!("rtdose_{i:04}.dcm"),
                )?;
            }
        }
        "rtplan" => {
            for i in 0..count {
                save(
                    rt_plan(&s, &series, &uid::generate(), &uid::generate()),
                    format!("rtplan_{i:04}.dcm"),
                )?;
            }
        }
        "rtstruct" => {
            for i in 0..count {
                save(
                    rt_struct(&s, &series, &uid::generate()),
                    format!("rtstruct_{i:04}.dcm"),
                )?;
            }
        }
        "study" => {
            let (plan, ss) = (uid::generate(), uid::generate());
            save(rt_struct(&s, &uid::generate(), &ss), "rtstruct.dcm".into())?;
            save(
                rt_plan(&s, &uid::generate(), &plan, &ss),
                "rtplan.dcm".into(),
            )?;
            save(
                rt_dose(&s, &uid::generate(), &plan, mbytes, seed),
                "rtdose.dcm".into(),
            )?;
            let ct_series = uid::generate();
            for i in 0..count {
                save(
                    ct_slice(&s, &ct_series, i, size, seed),
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
