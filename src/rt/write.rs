//! Writing RT objects from in-memory data: RT Dose from a dose grid, RT
//! Structure Set from contours, a minimal RT Plan. Used to build test
//! phantoms and synthetic studies, and by anything that returns objects.

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::grid::Grid;
use super::rle;
use super::structure::ContourPlane;
use crate::receive::sop;
use crate::store::ts;
use crate::uid;

/// Patient and study attributes shared by a study's objects.
#[derive(Debug, Clone)]
pub struct StudyHeader {
    pub patient_id: String,
    pub patient_name: String,
    pub patient_sex: Option<String>,
    pub patient_age: Option<String>,
    pub study_instance_uid: String,
    pub frame_of_reference_uid: String,
    pub study_date: String,
    /// With a root, new UIDs are `<root>.<n>`: the same inputs then give
    /// the same bytes. Without, they are random.
    uid_root: Option<String>,
    uid_counter: std::cell::Cell<u32>,
}

impl StudyHeader {
    pub fn new(patient_id: &str) -> StudyHeader {
        StudyHeader {
            patient_id: patient_id.into(),
            patient_name: format!("Phantom^{patient_id}"),
            patient_sex: None,
            patient_age: None,
            study_instance_uid: uid::generate(),
            frame_of_reference_uid: uid::generate(),
            study_date: "20260101".into(),
            uid_root: None,
            uid_counter: std::cell::Cell::new(0),
        }
    }

    /// A header whose UIDs all derive from `root` (at most 58 characters).
    pub fn deterministic(patient_id: &str, root: &str) -> StudyHeader {
        StudyHeader {
            study_instance_uid: format!("{root}.1"),
            frame_of_reference_uid: format!("{root}.2"),
            uid_root: Some(root.to_string()),
            uid_counter: std::cell::Cell::new(2),
            ..StudyHeader::new(patient_id)
        }
    }

    /// A new UID for an object or series of this study.
    pub fn uid(&self) -> String {
        match &self.uid_root {
            Some(root) => {
                let n = self.uid_counter.get() + 1;
                self.uid_counter.set(n);
                format!("{root}.{n}")
            }
            None => uid::generate(),
        }
    }
}

pub fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn put_us(obj: &mut InMemDicomObject, tag: Tag, v: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
}

pub fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(
        tag,
        VR::SQ,
        DataSetSequence::new(items, Length::UNDEFINED),
    ));
}

pub(crate) fn ds(v: f64) -> String {
    // DS holds at most 16 characters: fixed notation for ordinary numbers,
    // scientific for tiny ones (dose grid scaling), 9 significant digits.
    if v == 0.0 || (v.abs() >= 1e-3 && v.abs() < 1e9) {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
        if s.is_empty() || s == "-" {
            "0".into()
        } else {
            s
        }
    } else {
        format!("{v:.8e}")
    }
}

pub(crate) fn ds_list(v: &[f64]) -> String {
    v.iter().map(|x| ds(*x)).collect::<Vec<_>>().join("\\")
}

pub fn header(
    obj: &mut InMemDicomObject,
    h: &StudyHeader,
    class: &str,
    sop_uid: &str,
    series_uid: &str,
    modality: &str,
) {
    put_str(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put_str(obj, tags::SOP_CLASS_UID, VR::UI, class);
    put_str(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
    put_str(obj, tags::STUDY_DATE, VR::DA, &h.study_date);
    put_str(obj, tags::STUDY_TIME, VR::TM, "120000");
    put_str(obj, tags::ACCESSION_NUMBER, VR::SH, "");
    put_str(obj, tags::MODALITY, VR::CS, modality);
    put_str(obj, tags::MANUFACTURER, VR::LO, "esorisk");
    put_str(obj, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
    put_str(obj, tags::OPERATORS_NAME, VR::PN, "");
    put_str(obj, tags::PATIENT_NAME, VR::PN, &h.patient_name);
    put_str(obj, tags::PATIENT_ID, VR::LO, &h.patient_id);
    put_str(obj, tags::PATIENT_BIRTH_DATE, VR::DA, "");
    put_str(
        obj,
        tags::PATIENT_SEX,
        VR::CS,
        h.patient_sex.as_deref().unwrap_or(""),
    );
    if let Some(age) = &h.patient_age {
        put_str(obj, tags::PATIENT_AGE, VR::AS, age);
    }
    put_str(obj, tags::STUDY_INSTANCE_UID, VR::UI, &h.study_instance_uid);
    put_str(obj, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    put_str(obj, tags::STUDY_ID, VR::SH, "1");
    put_str(obj, tags::SERIES_NUMBER, VR::IS, "1");
    put_str(obj, tags::INSTANCE_NUMBER, VR::IS, "1");
}

/// The axial image plane and monochrome pixel description shared by CT and
/// RT Dose: position, orientation, spacing (row, column), size and bits.
fn image_plane(
    obj: &mut InMemDicomObject,
    position: [f64; 3],
    orientation: [f64; 6],
    spacing: [f64; 2],
    rows: u16,
    columns: u16,
    bits: u16,
) {
    put_str(
        obj,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &ds_list(&position),
    );
    put_str(
        obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &ds_list(&orientation),
    );
    put_str(obj, tags::PIXEL_SPACING, VR::DS, &ds_list(&spacing));
    put_str(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    for (tag, v) in [
        (tags::SAMPLES_PER_PIXEL, 1),
        (tags::ROWS, rows),
        (tags::COLUMNS, columns),
        (tags::BITS_ALLOCATED, bits),
        (tags::BITS_STORED, bits),
        (tags::HIGH_BIT, bits - 1),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        put_us(obj, tag, v);
    }
}

/// Wrap a data set with file meta information for `transfer_syntax`.
pub fn with_meta(
    obj: InMemDicomObject,
    class: &str,
    sop_uid: &str,
    transfer_syntax: &str,
) -> FileDicomObject<InMemDicomObject> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(sop_uid)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME);
    obj.with_meta(meta)
        .unwrap_or_else(|_| unreachable!("every required meta attribute is set"))
}

/// How to encode an RT Dose.
#[derive(Debug, Clone)]
pub struct DoseEncoding {
    /// 16 or 32.
    pub bits: u16,
    /// HFS, HFP, FFS or FFP: the direction of rows and columns.
    pub orientation: &'static str,
    /// Grid Frame Offset Vector as absolute z (type b) instead of relative.
    pub absolute_offsets: bool,
    /// RLE Lossless instead of explicit VR little endian.
    pub rle: bool,
    pub summation: &'static str,
    pub units: &'static str,
    pub referenced_plan_uid: Option<String>,
    /// Further plans a MULTI_PLAN dose sums, after `referenced_plan_uid`.
    pub more_plan_uids: Vec<String>,
    pub referenced_beam: Option<i64>,
    /// PHYSICAL or EFFECTIVE (RBE-weighted).
    pub dose_type: &'static str,
}

impl Default for DoseEncoding {
    fn default() -> Self {
        DoseEncoding {
            bits: 32,
            orientation: "HFS",
            absolute_offsets: false,
            rle: false,
            summation: "PLAN",
            units: "GY",
            referenced_plan_uid: None,
            more_plan_uids: Vec::new(),
            referenced_beam: None,
            dose_type: "PHYSICAL",
        }
    }
}

/// An RT Dose file for dose `gy` on `grid` (ascending axes, uniform z not
/// required). Pixel values use the full unsigned range of `bits`.
pub fn rt_dose(
    h: &StudyHeader,
    grid: &Grid,
    gy: &[f32],
    enc: &DoseEncoding,
) -> FileDicomObject<InMemDicomObject> {
    let sop_uid = h.uid();
    let mut obj = InMemDicomObject::new_empty();
    header(&mut obj, h, sop::RT_DOSE, &sop_uid, &h.uid(), "RTDOSE");
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &h.frame_of_reference_uid,
    );
    put_str(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put_str(&mut obj, tags::SLICE_THICKNESS, VR::DS, "");
    let (rx, cy) = match enc.orientation {
        "HFP" => (-1.0, -1.0),
        "FFS" => (-1.0, 1.0),
        "FFP" => (1.0, -1.0),
        _ => (1.0, 1.0),
    };
    let nz = rx * cy;
    let (nx, ny, nk) = (grid.nx, grid.ny, grid.nz());
    let x_first = if rx > 0.0 { grid.x0 } else { grid.x(nx - 1) };
    let y_first = if cy > 0.0 { grid.y0 } else { grid.y(ny - 1) };
    // Frames run along the normal: ascending z when it points up.
    let frame_order: Vec<usize> = if nz > 0.0 {
        (0..nk).collect()
    } else {
        (0..nk).rev().collect()
    };
    let z_first = grid.z[frame_order[0]];
    let offsets: Vec<f64> = frame_order
        .iter()
        .map(|k| {
            if enc.absolute_offsets {
                grid.z[*k]
            } else {
                nz * (grid.z[*k] - z_first)
            }
        })
        .collect();
    image_plane(
        &mut obj,
        [x_first, y_first, z_first],
        [rx, 0.0, 0.0, 0.0, cy, 0.0],
        [grid.dy, grid.dx],
        ny as u16,
        nx as u16,
        enc.bits,
    );
    put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &nk.to_string());
    obj.put(DataElement::new(
        tags::FRAME_INCREMENT_POINTER,
        VR::AT,
        PrimitiveValue::Tags(vec![tags::GRID_FRAME_OFFSET_VECTOR].into()),
    ));
    put_str(&mut obj, tags::DOSE_UNITS, VR::CS, enc.units);
    put_str(&mut obj, tags::DOSE_TYPE, VR::CS, enc.dose_type);
    put_str(&mut obj, tags::DOSE_SUMMATION_TYPE, VR::CS, enc.summation);
    put_str(
        &mut obj,
        tags::GRID_FRAME_OFFSET_VECTOR,
        VR::DS,
        &ds_list(&offsets),
    );
    let max = gy.iter().copied().fold(0f32, f32::max).max(1e-6);
    let top = if enc.bits == 16 {
        f64::from(u16::MAX)
    } else {
        4.0e9
    };
    let scaling = f64::from(max) / top;
    // Round the scaling to what DS can hold, then quantise with it.
    let scaling: f64 = ds(scaling).parse().unwrap_or(scaling);
    put_str(&mut obj, tags::DOSE_GRID_SCALING, VR::DS, &ds(scaling));
    if let Some(plan) = &enc.referenced_plan_uid {
        let mut r = InMemDicomObject::new_empty();
        put_str(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, sop::RT_PLAN);
        put_str(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, plan);
        if let Some(beam) = enc.referenced_beam {
            let mut b = InMemDicomObject::new_empty();
            put_str(
                &mut b,
                tags::REFERENCED_BEAM_NUMBER,
                VR::IS,
                &beam.to_string(),
            );
            let mut fg = InMemDicomObject::new_empty();
            put_seq(&mut fg, tags::REFERENCED_BEAM_SEQUENCE, vec![b]);
            put_str(&mut fg, tags::REFERENCED_FRACTION_GROUP_NUMBER, VR::IS, "1");
            put_seq(&mut r, tags::REFERENCED_FRACTION_GROUP_SEQUENCE, vec![fg]);
        }
        let mut items = vec![r];
        for more in &enc.more_plan_uids {
            let mut r = InMemDicomObject::new_empty();
            put_str(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, sop::RT_PLAN);
            put_str(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, more);
            items.push(r);
        }
        put_seq(&mut obj, tags::REFERENCED_RT_PLAN_SEQUENCE, items);
    }
    // Stored order: frame by frame, row by row, in the file's directions.
    let mut frames: Vec<Vec<u32>> = Vec::with_capacity(nk);
    for k in &frame_order {
        let mut f = Vec::with_capacity(nx * ny);
        for j in 0..ny {
            let jj = if cy > 0.0 { j } else { ny - 1 - j };
            for i in 0..nx {
                let ii = if rx > 0.0 { i } else { nx - 1 - i };
                let v = f64::from(gy[grid.index(ii, jj, *k)]) / scaling;
                f.push(v.round().clamp(0.0, top) as u32);
            }
        }
        frames.push(f);
    }
    let transfer_syntax = if enc.rle {
        let bytes = usize::from(enc.bits / 8);
        let fragments: Vec<Vec<u8>> = frames.iter().map(|f| rle::encode_frame(f, bytes)).collect();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(vec![], fragments)),
        ));
        ts::RLE_LOSSLESS
    } else {
        let flat = frames.concat();
        let value = if enc.bits == 16 {
            PrimitiveValue::U16(flat.iter().map(|v| *v as u16).collect())
        } else {
            PrimitiveValue::U32(flat.into())
        };
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, value));
        ts::EXPLICIT_VR_LE
    };
    with_meta(obj, sop::RT_DOSE, &sop_uid, transfer_syntax)
}

/// One ROI to write.
#[derive(Debug, Clone)]
pub struct RoiSpec {
    pub number: i64,
    pub name: String,
    /// RT ROI Interpreted Type, e.g. ORGAN, PTV, GTV, CTV, EXTERNAL.
    pub interpreted_type: String,
    pub planes: Vec<ContourPlane>,
    pub color: [u8; 3],
}

/// An RT Structure Set with the given ROIs.
pub fn rt_struct(
    h: &StudyHeader,
    sop_uid: &str,
    label: &str,
    rois: &[RoiSpec],
) -> FileDicomObject<InMemDicomObject> {
    rt_struct_on_images(h, sop_uid, label, rois, None)
}

/// The images a structure set was drawn on: one series, slices by z.
#[derive(Debug, Clone)]
pub struct ImageRefs {
    pub sop_class_uid: String,
    pub series_instance_uid: String,
    /// (z of the slice in mm, SOP Instance UID).
    pub slices: Vec<(f64, String)>,
}

impl ImageRefs {
    fn at(&self, z: f64) -> Option<&str> {
        self.slices
            .iter()
            .find(|(sz, _)| (sz - z).abs() < 0.05)
            .map(|(_, u)| u.as_str())
    }

    fn item(&self, uid: &str) -> InMemDicomObject {
        let mut i = InMemDicomObject::new_empty();
        put_str(
            &mut i,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            &self.sop_class_uid,
        );
        put_str(&mut i, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, uid);
        i
    }
}

/// An RT Structure Set whose contours reference the images they lie on
/// (Contour Image Sequence per contour, and the series in the Referenced
/// Frame of Reference Sequence).
pub fn rt_struct_on_images(
    h: &StudyHeader,
    sop_uid: &str,
    label: &str,
    rois: &[RoiSpec],
    images: Option<&ImageRefs>,
) -> FileDicomObject<InMemDicomObject> {
    let mut obj = InMemDicomObject::new_empty();
    header(
        &mut obj,
        h,
        sop::RT_STRUCTURE_SET,
        sop_uid,
        &h.uid(),
        "RTSTRUCT",
    );
    put_str(&mut obj, tags::STRUCTURE_SET_LABEL, VR::SH, label);
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &h.frame_of_reference_uid,
    );
    put_str(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put_str(&mut obj, tags::STRUCTURE_SET_DATE, VR::DA, &h.study_date);
    put_str(&mut obj, tags::STRUCTURE_SET_TIME, VR::TM, "120000");
    let mut f = InMemDicomObject::new_empty();
    put_str(
        &mut f,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &h.frame_of_reference_uid,
    );
    if let Some(img) = images {
        let mut series = InMemDicomObject::new_empty();
        put_str(
            &mut series,
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &img.series_instance_uid,
        );
        put_seq(
            &mut series,
            tags::CONTOUR_IMAGE_SEQUENCE,
            img.slices.iter().map(|(_, u)| img.item(u)).collect(),
        );
        let mut study = InMemDicomObject::new_empty();
        // Detached Study Management SOP Class, as PS3.3 C.8.8.5 prescribes.
        put_str(
            &mut study,
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.3.1.2.3.1",
        );
        put_str(
            &mut study,
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &h.study_instance_uid,
        );
        put_seq(
            &mut study,
            tags::RT_REFERENCED_SERIES_SEQUENCE,
            vec![series],
        );
        put_seq(&mut f, tags::RT_REFERENCED_STUDY_SEQUENCE, vec![study]);
    }
    put_seq(
        &mut obj,
        tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE,
        vec![f],
    );
    let mut roi_items = Vec::new();
    let mut contour_items = Vec::new();
    let mut observation_items = Vec::new();
    for r in rois {
        let mut it = InMemDicomObject::new_empty();
        put_str(&mut it, tags::ROI_NUMBER, VR::IS, &r.number.to_string());
        put_str(
            &mut it,
            tags::REFERENCED_FRAME_OF_REFERENCE_UID,
            VR::UI,
            &h.frame_of_reference_uid,
        );
        put_str(&mut it, tags::ROI_NAME, VR::LO, &r.name);
        put_str(&mut it, tags::ROI_GENERATION_ALGORITHM, VR::CS, "MANUAL");
        roi_items.push(it);
        let contours: Vec<InMemDicomObject> = r
            .planes
            .iter()
            .flat_map(|p| p.polygons.iter().map(move |poly| (p.z, poly)))
            .map(|(z, poly)| {
                let mut c = InMemDicomObject::new_empty();
                if let Some(uid) = images.and_then(|img| img.at(z)) {
                    let item = images.map(|img| img.item(uid));
                    put_seq(
                        &mut c,
                        tags::CONTOUR_IMAGE_SEQUENCE,
                        item.into_iter().collect(),
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
                let pts: Vec<f64> = poly.iter().flat_map(|p| [p[0], p[1], z]).collect();
                put_str(&mut c, tags::CONTOUR_DATA, VR::DS, &ds_list(&pts));
                c
            })
            .collect();
        let mut rc = InMemDicomObject::new_empty();
        put_str(
            &mut rc,
            tags::ROI_DISPLAY_COLOR,
            VR::IS,
            &format!("{}\\{}\\{}", r.color[0], r.color[1], r.color[2]),
        );
        put_seq(&mut rc, tags::CONTOUR_SEQUENCE, contours);
        put_str(
            &mut rc,
            tags::REFERENCED_ROI_NUMBER,
            VR::IS,
            &r.number.to_string(),
        );
        contour_items.push(rc);
        let mut ob = InMemDicomObject::new_empty();
        put_str(
            &mut ob,
            tags::OBSERVATION_NUMBER,
            VR::IS,
            &r.number.to_string(),
        );
        put_str(
            &mut ob,
            tags::REFERENCED_ROI_NUMBER,
            VR::IS,
            &r.number.to_string(),
        );
        put_str(
            &mut ob,
            tags::RTROI_INTERPRETED_TYPE,
            VR::CS,
            &r.interpreted_type,
        );
        put_str(&mut ob, tags::ROI_INTERPRETER, VR::PN, "");
        observation_items.push(ob);
    }
    put_seq(&mut obj, tags::STRUCTURE_SET_ROI_SEQUENCE, roi_items);
    put_seq(&mut obj, tags::ROI_CONTOUR_SEQUENCE, contour_items);
    put_seq(
        &mut obj,
        tags::RTROI_OBSERVATIONS_SEQUENCE,
        observation_items,
    );
    with_meta(obj, sop::RT_STRUCTURE_SET, sop_uid, ts::EXPLICIT_VR_LE)
}

/// A minimal RT Plan: target prescription, fractions, static photon beams
/// with their dose per fraction, and the referenced structure set.
pub fn rt_plan(
    h: &StudyHeader,
    sop_uid: &str,
    structure_set_uid: &str,
    prescription_gy: Option<f64>,
    fractions: u32,
    beam_doses: &[f64],
) -> FileDicomObject<InMemDicomObject> {
    let spec = PlanSpec {
        label: "LUNG".into(),
        prescription_gy,
        fractions,
        fractions_per_day: 1,
        technique: Technique::Conformal3d,
        beams: beam_doses
            .iter()
            .enumerate()
            .map(|(i, d)| (i as f64 * 90.0, *d))
            .collect(),
    };
    rt_plan_spec(h, sop_uid, structure_set_uid, &spec)
}

/// Delivery technique of a synthetic plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Technique {
    /// Static beams shaped to the target, one segment each.
    Conformal3d,
    /// Static beams with several segments (step and shoot).
    Imrt,
    /// Rotating arcs.
    Vmat,
}

impl Technique {
    pub fn label(self) -> &'static str {
        match self {
            Technique::Conformal3d => "3D-CRT",
            Technique::Imrt => "IMRT",
            Technique::Vmat => "VMAT",
        }
    }
}

/// What an RT Plan says.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    pub label: String,
    pub prescription_gy: Option<f64>,
    pub fractions: u32,
    /// 2 for twice-daily treatment (written as a fraction pattern).
    pub fractions_per_day: u32,
    pub technique: Technique,
    /// (gantry angle in degrees, beam dose per fraction in Gy); for VMAT the
    /// start angle of each arc.
    pub beams: Vec<(f64, f64)>,
}

/// An RT Plan from a [`PlanSpec`].
pub fn rt_plan_spec(
    h: &StudyHeader,
    sop_uid: &str,
    structure_set_uid: &str,
    spec: &PlanSpec,
) -> FileDicomObject<InMemDicomObject> {
    let mut obj = InMemDicomObject::new_empty();
    header(&mut obj, h, sop::RT_PLAN, sop_uid, &h.uid(), "RTPLAN");
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &h.frame_of_reference_uid,
    );
    put_str(&mut obj, tags::RT_PLAN_LABEL, VR::SH, &spec.label);
    put_str(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put_str(&mut obj, tags::RT_PLAN_DATE, VR::DA, &h.study_date);
    put_str(&mut obj, tags::RT_PLAN_TIME, VR::TM, "120000");
    put_str(&mut obj, tags::RT_PLAN_GEOMETRY, VR::CS, "PATIENT");
    if let Some(rx) = spec.prescription_gy {
        let mut d = InMemDicomObject::new_empty();
        put_str(&mut d, tags::DOSE_REFERENCE_NUMBER, VR::IS, "1");
        put_str(&mut d, tags::DOSE_REFERENCE_STRUCTURE_TYPE, VR::CS, "SITE");
        put_str(&mut d, tags::DOSE_REFERENCE_DESCRIPTION, VR::LO, "PTV");
        put_str(&mut d, tags::DOSE_REFERENCE_TYPE, VR::CS, "TARGET");
        put_str(&mut d, tags::TARGET_PRESCRIPTION_DOSE, VR::DS, &ds(rx));
        put_seq(&mut obj, tags::DOSE_REFERENCE_SEQUENCE, vec![d]);
    }
    let mut fg = InMemDicomObject::new_empty();
    put_str(&mut fg, tags::FRACTION_GROUP_NUMBER, VR::IS, "1");
    put_str(
        &mut fg,
        tags::NUMBER_OF_FRACTIONS_PLANNED,
        VR::IS,
        &spec.fractions.to_string(),
    );
    if spec.fractions_per_day > 1 {
        let per_day = spec.fractions_per_day as usize;
        put_str(
            &mut fg,
            tags::NUMBER_OF_FRACTION_PATTERN_DIGITS_PER_DAY,
            VR::IS,
            &per_day.to_string(),
        );
        put_str(&mut fg, tags::REPEAT_FRACTION_CYCLE_LENGTH, VR::IS, "1");
        let week: String = (0..7)
            .map(|d| {
                if d < 5 {
                    "1".repeat(per_day)
                } else {
                    "0".repeat(per_day)
                }
            })
            .collect();
        put_str(&mut fg, tags::FRACTION_PATTERN, VR::LT, &week);
    }
    put_str(
        &mut fg,
        tags::NUMBER_OF_BEAMS,
        VR::IS,
        &spec.beams.len().to_string(),
    );
    put_str(
        &mut fg,
        tags::NUMBER_OF_BRACHY_APPLICATION_SETUPS,
        VR::IS,
        "0",
    );
    let refs: Vec<InMemDicomObject> = spec
        .beams
        .iter()
        .enumerate()
        .map(|(i, (_, d))| {
            let mut b = InMemDicomObject::new_empty();
            put_str(&mut b, tags::BEAM_DOSE, VR::DS, &ds(*d));
            put_str(
                &mut b,
                tags::REFERENCED_BEAM_NUMBER,
                VR::IS,
                &(i + 1).to_string(),
            );
            b
        })
        .collect();
    put_seq(&mut fg, tags::REFERENCED_BEAM_SEQUENCE, refs);
    put_seq(&mut obj, tags::FRACTION_GROUP_SEQUENCE, vec![fg]);
    let vmat = spec.technique == Technique::Vmat;
    let beams: Vec<InMemDicomObject> = spec
        .beams
        .iter()
        .enumerate()
        .map(|(i, (angle, _))| {
            let mut b = InMemDicomObject::new_empty();
            put_str(&mut b, tags::BEAM_NUMBER, VR::IS, &(i + 1).to_string());
            put_str(
                &mut b,
                tags::BEAM_NAME,
                VR::LO,
                &format!("{}{}", if vmat { "ARC" } else { "F" }, i + 1),
            );
            put_str(
                &mut b,
                tags::BEAM_TYPE,
                VR::CS,
                if vmat { "DYNAMIC" } else { "STATIC" },
            );
            put_str(&mut b, tags::RADIATION_TYPE, VR::CS, "PHOTON");
            put_str(&mut b, tags::TREATMENT_MACHINE_NAME, VR::SH, "LINAC1");
            put_str(&mut b, tags::PRIMARY_DOSIMETER_UNIT, VR::CS, "MU");
            put_str(&mut b, tags::TREATMENT_DELIVERY_TYPE, VR::CS, "TREATMENT");
            put_str(&mut b, tags::NUMBER_OF_WEDGES, VR::IS, "0");
            put_str(&mut b, tags::NUMBER_OF_COMPENSATORS, VR::IS, "0");
            put_str(&mut b, tags::NUMBER_OF_BOLI, VR::IS, "0");
            put_str(&mut b, tags::NUMBER_OF_BLOCKS, VR::IS, "0");
            let devices: Vec<InMemDicomObject> = ["ASYMX", "ASYMY"]
                .iter()
                .map(|t| {
                    let mut d = InMemDicomObject::new_empty();
                    put_str(&mut d, tags::RT_BEAM_LIMITING_DEVICE_TYPE, VR::CS, t);
                    put_str(&mut d, tags::NUMBER_OF_LEAF_JAW_PAIRS, VR::IS, "1");
                    d
                })
                .collect();
            put_seq(&mut b, tags::BEAM_LIMITING_DEVICE_SEQUENCE, devices);
            let n_cp: usize = match spec.technique {
                Technique::Conformal3d => 2,
                Technique::Imrt => 10,
                Technique::Vmat => 90,
            };
            put_str(&mut b, tags::FINAL_CUMULATIVE_METERSET_WEIGHT, VR::DS, "1");
            put_str(
                &mut b,
                tags::NUMBER_OF_CONTROL_POINTS,
                VR::IS,
                &n_cp.to_string(),
            );
            let cps: Vec<InMemDicomObject> = (0..n_cp)
                .map(|c| {
                    let mut cp = InMemDicomObject::new_empty();
                    put_str(&mut cp, tags::CONTROL_POINT_INDEX, VR::IS, &c.to_string());
                    put_str(
                        &mut cp,
                        tags::CUMULATIVE_METERSET_WEIGHT,
                        VR::DS,
                        &ds(c as f64 / (n_cp - 1) as f64),
                    );
                    if c == 0 || vmat {
                        let g = if vmat {
                            (angle + 4.0 * c as f64) % 360.0
                        } else {
                            *angle
                        };
                        put_str(&mut cp, tags::GANTRY_ANGLE, VR::DS, &ds(g));
                    }
                    if c == 0 {
                        put_str(&mut cp, tags::NOMINAL_BEAM_ENERGY, VR::DS, "6");
                        put_str(
                            &mut cp,
                            tags::GANTRY_ROTATION_DIRECTION,
                            VR::CS,
                            if vmat { "CW" } else { "NONE" },
                        );
                    }
                    cp
                })
                .collect();
            put_seq(&mut b, tags::CONTROL_POINT_SEQUENCE, cps);
            b
        })
        .collect();
    put_seq(&mut obj, tags::BEAM_SEQUENCE, beams);
    let mut rs = InMemDicomObject::new_empty();
    put_str(
        &mut rs,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        sop::RT_STRUCTURE_SET,
    );
    put_str(
        &mut rs,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        structure_set_uid,
    );
    put_seq(&mut obj, tags::REFERENCED_STRUCTURE_SET_SEQUENCE, vec![rs]);
    with_meta(obj, sop::RT_PLAN, sop_uid, ts::EXPLICIT_VR_LE)
}

/// One axial CT slice to write (HFS, pixels row by row, stored = HU + 1024).
#[derive(Debug, Clone)]
pub struct CtSlice<'a> {
    pub series_instance_uid: &'a str,
    pub instance_number: usize,
    /// Centre of the first pixel (x, y) and the slice's z, mm.
    pub position: [f64; 3],
    pub pixel_spacing: f64,
    pub size: u16,
    pub slice_thickness: f64,
    pub pixels: Vec<u16>,
}

/// A CT Image object; returns it with its SOP Instance UID.
pub fn ct_image(h: &StudyHeader, s: CtSlice<'_>) -> (FileDicomObject<InMemDicomObject>, String) {
    let sop_uid = h.uid();
    let mut obj = InMemDicomObject::new_empty();
    header(
        &mut obj,
        h,
        sop::CT_IMAGE,
        &sop_uid,
        s.series_instance_uid,
        "CT",
    );
    put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, "2");
    put_str(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &s.instance_number.to_string(),
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
        &ds(s.slice_thickness),
    );
    put_str(&mut obj, tags::SLICE_LOCATION, VR::DS, &ds(s.position[2]));
    image_plane(
        &mut obj,
        s.position,
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        [s.pixel_spacing, s.pixel_spacing],
        s.size,
        s.size,
        16,
    );
    put_str(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    put_str(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
    put_str(&mut obj, tags::RESCALE_TYPE, VR::LO, "HU");
    put_str(&mut obj, tags::WINDOW_CENTER, VR::DS, "40");
    put_str(&mut obj, tags::WINDOW_WIDTH, VR::DS, "400");
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(s.pixels.into()),
    ));
    (
        with_meta(obj, sop::CT_IMAGE, &sop_uid, ts::EXPLICIT_VR_LE),
        sop_uid,
    )
}
