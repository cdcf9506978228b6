//! RT Dose: pixel data to a dose grid in Gy, in patient coordinates.

use std::path::Path;

use dicom_core::value::DicomValueType;
use dicom_core::value::Value;
use dicom_core::PrimitiveValue;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::attr;
use super::grid::Grid;
use super::{rle, RtError};
use crate::store::ts;

/// How the dose was summed (3004,000A).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Summation {
    Plan,
    MultiPlan,
    Fraction,
    Beam,
    Brachy,
    Other(String),
}

impl Summation {
    fn parse(s: &str) -> Summation {
        match s {
            "PLAN" => Summation::Plan,
            "MULTI_PLAN" => Summation::MultiPlan,
            "FRACTION" => Summation::Fraction,
            "BEAM" => Summation::Beam,
            "BRACHY" => Summation::Brachy,
            other => Summation::Other(other.to_string()),
        }
    }
}

/// The Dose Summation Type as DICOM spells it (an unknown one as it came).
impl std::fmt::Display for Summation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Summation::Plan => "PLAN",
            Summation::MultiPlan => "MULTI_PLAN",
            Summation::Fraction => "FRACTION",
            Summation::Beam => "BEAM",
            Summation::Brachy => "BRACHY",
            Summation::Other(s) => s,
        })
    }
}

/// Settings for reading doses.
#[derive(Debug, Clone, Default)]
pub struct DoseOptions {
    /// Gy that a RELATIVE dose of 1.0 stands for. Without it RELATIVE doses
    /// are refused: the node cannot guess the normalisation.
    pub relative_normalisation_gy: Option<f64>,
}

/// What the RT Dose says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DoseInfo {
    pub sop_instance_uid: String,
    pub frame_of_reference_uid: Option<String>,
    pub summation: Summation,
    pub dose_type: String,
    pub units: String,
    /// The plans the dose belongs to: one, or for a MULTI_PLAN sum every
    /// plan summed.
    pub referenced_plan_uids: Vec<String>,
    pub referenced_beams: Vec<i64>,
    /// Instance Creation (else Content) Date and Time, sortable as text.
    pub created: Option<String>,
    /// Patient orientation implied by Image Orientation (Patient).
    pub orientation: &'static str,
    /// Remarks for the physicist (e.g. RELATIVE dose normalised).
    pub notes: Vec<String>,
}

/// A dose distribution on an ascending, axis-aligned grid.
#[derive(Debug, Clone)]
pub struct RtDose {
    pub grid: Grid,
    /// Dose in Gy, indexed by `grid.index(i, j, k)`.
    pub gy: Vec<f32>,
    pub info: DoseInfo,
}

/// Highest dose (Gy) read as a plan's: above it the Dose Grid Scaling or the
/// units are damaged. Stereotactic hot spots stay well under 200 Gy.
pub const MAX_PLAUSIBLE_GY: f64 = 1000.0;

/// Read an RT Dose file.
pub fn read(path: &Path, options: &DoseOptions) -> Result<RtDose, RtError> {
    let obj = super::open(path)?;
    from_object(&obj, options)
}

/// Read an RT Dose already opened.
pub fn from_object(
    obj: &FileDicomObject<InMemDicomObject>,
    options: &DoseOptions,
) -> Result<RtDose, RtError> {
    let sop = attr::string(obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let bad = |what: String| RtError::Dose {
        sop: sop.clone(),
        what,
    };
    let rows = attr::int(obj, tags::ROWS).ok_or_else(|| bad("Rows missing".into()))? as usize;
    let cols = attr::int(obj, tags::COLUMNS).ok_or_else(|| bad("Columns missing".into()))? as usize;
    let frames = match attr::int(obj, tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(n) if n >= 1 => n as usize,
        Some(n) => return Err(bad(format!("Number of Frames {n}: an empty dose grid"))),
    };
    let bits =
        attr::int(obj, tags::BITS_ALLOCATED).ok_or_else(|| bad("Bits Allocated missing".into()))?;
    let signed = attr::int(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    if attr::int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 {
        return Err(bad("more than one sample per pixel".into()));
    }
    if rows == 0 || cols == 0 {
        return Err(bad("empty dose grid (0 rows or columns)".into()));
    }
    // Rows and Columns are 16-bit; anything larger was read from damaged
    // text (a negative number becomes huge as a size).
    if rows > 65535 || cols > 65535 || frames > i32::MAX as usize {
        return Err(bad(format!(
            "{rows} rows × {cols} columns × {frames} frames is not a dose grid"
        )));
    }
    if bits != 16 && bits != 32 {
        return Err(bad(format!(
            "{bits}-bit dose pixels; only 16 and 32 bits are defined for RT Dose"
        )));
    }
    let units = attr::string(obj, tags::DOSE_UNITS)
        .unwrap_or_default()
        .to_uppercase();
    let dose_type = attr::string(obj, tags::DOSE_TYPE)
        .unwrap_or_default()
        .to_uppercase();
    let summation = Summation::parse(
        &attr::string(obj, tags::DOSE_SUMMATION_TYPE)
            .unwrap_or_default()
            .to_uppercase(),
    );
    if dose_type == "ERROR" {
        return Err(bad(
            "Dose Type ERROR is a dose difference, not a dose distribution".into(),
        ));
    }
    let mut notes = Vec::new();
    let unit_gy = match units.as_str() {
        "GY" => 1.0,
        "RELATIVE" => match options.relative_normalisation_gy {
            Some(n) => {
                notes.push(format!("RELATIVE dose scaled by {n} Gy per 1.0 (configured normalisation)"));
                n
            }
            None => {
                return Err(bad(
                    "dose is in RELATIVE units; esorisk needs absolute dose in Gy (export the dose in GY, or configure a normalisation)".into(),
                ))
            }
        },
        other => return Err(bad(format!("unknown Dose Units {other:?} (GY or RELATIVE expected)"))),
    };
    let scaling = attr::float(obj, tags::DOSE_GRID_SCALING)
        .ok_or_else(|| bad("Dose Grid Scaling missing or not a number".into()))?;
    if scaling <= 0.0 {
        return Err(bad(format!(
            "Dose Grid Scaling {scaling} is not positive: the stored values cannot be doses"
        )));
    }

    // Geometry.
    let ipp = attr::floats(obj, tags::IMAGE_POSITION_PATIENT)
        .filter(|v| v.len() == 3)
        .ok_or_else(|| bad("Image Position (Patient) missing or not three numbers".into()))?;
    let iop = attr::floats(obj, tags::IMAGE_ORIENTATION_PATIENT)
        .filter(|v| v.len() == 6)
        .ok_or_else(|| bad("Image Orientation (Patient) missing or not six numbers".into()))?;
    let spacing = attr::floats(obj, tags::PIXEL_SPACING)
        .filter(|v| v.len() == 2 && v[0] > 0.0 && v[1] > 0.0)
        .ok_or_else(|| bad("Pixel Spacing missing or not positive".into()))?;
    let (dy, dx) = (spacing[0], spacing[1]);
    let axial = |v: f64, want_abs_one: bool| {
        if want_abs_one {
            (v.abs() - 1.0).abs() < 1e-3
        } else {
            v.abs() < 1e-3
        }
    };
    if !(axial(iop[0], true)
        && axial(iop[1], false)
        && axial(iop[2], false)
        && axial(iop[3], false)
        && axial(iop[4], true)
        && axial(iop[5], false))
    {
        return Err(bad(format!(
            "Image Orientation (Patient) {iop:?} is not axial; only axial doses (HFS, HFP, FFS, FFP) are supported"
        )));
    }
    let (rx, cy) = (iop[0].signum(), iop[4].signum());
    let orientation = match (rx > 0.0, cy > 0.0) {
        (true, true) => "HFS",
        (false, true) => "FFS",
        (false, false) => "HFP",
        (true, false) => "FFP",
    };
    // Offsets run along the plane normal, row × column direction.
    let nz = rx * cy;
    let offsets = if frames == 1 {
        attr::floats(obj, tags::GRID_FRAME_OFFSET_VECTOR).unwrap_or_else(|| vec![0.0])
    } else {
        attr::floats(obj, tags::GRID_FRAME_OFFSET_VECTOR)
            .ok_or_else(|| bad("Grid Frame Offset Vector missing or not numbers".into()))?
    };
    let offsets = if frames == 1 && offsets.len() > 1 {
        notes.push(format!(
            "single-frame dose with {} grid frame offsets; the first is used",
            offsets.len()
        ));
        offsets[..1].to_vec()
    } else {
        offsets
    };
    if offsets.len() != frames {
        return Err(bad(format!(
            "{} grid frame offsets for {frames} frames",
            offsets.len()
        )));
    }
    // Type (a): relative, first offset 0. Type (b): absolute z, first
    // offset equal to the z of Image Position (Patient). Exports round the
    // offsets (114.1 for a plane at 114.0986), so "equal" is nearer than
    // half a plane: read as relative, absolute offsets of a feet-first
    // dose would mirror it about its first plane.
    let half_plane = offsets
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(f64::INFINITY, f64::min)
        / 2.0;
    let tolerance = if half_plane.is_finite() {
        half_plane.max(1e-3)
    } else {
        1e-3
    };
    let gap = (offsets[0] - ipp[2]).abs();
    let absolute = offsets[0] != 0.0 && gap < tolerance;
    if offsets[0] != 0.0 && !absolute {
        notes.push(format!(
            "first grid frame offset {} is neither 0 nor the plane's z {}; read as relative",
            offsets[0], ipp[2]
        ));
    } else if absolute && gap >= 1e-3 {
        notes.push(format!(
            "grid frame offsets read as z values: the first, {}, is {gap:.3} mm from the plane's z {}",
            offsets[0], ipp[2]
        ));
    }
    // Planes are placed from Image Position (Patient): absolute offsets
    // give the distances between planes, as relative ones do.
    let z: Vec<f64> = offsets
        .iter()
        .map(|o| {
            if absolute {
                ipp[2] + (o - offsets[0])
            } else {
                ipp[2] + nz * (o - offsets[0])
            }
        })
        .collect();

    // Pixel values, frame by frame, in stored order.
    let mut pixel_note = None;
    let raw = pixel_values(
        obj,
        frames,
        rows * cols,
        bits as usize,
        signed,
        &mut pixel_note,
    )
    .map_err(&bad)?;
    notes.extend(pixel_note);

    // Put planes and axes in ascending order.
    let mut plane_order: Vec<usize> = (0..frames).collect();
    plane_order.sort_by(|a, b| z[*a].total_cmp(&z[*b]));
    if plane_order
        .windows(2)
        .any(|w| (z[w[1]] - z[w[0]]).abs() < 1e-6)
    {
        return Err(bad("two dose planes at the same position".into()));
    }
    let grid = Grid {
        x0: if rx > 0.0 {
            ipp[0]
        } else {
            ipp[0] - (cols as f64 - 1.0) * dx
        },
        y0: if cy > 0.0 {
            ipp[1]
        } else {
            ipp[1] - (rows as f64 - 1.0) * dy
        },
        dx,
        dy,
        nx: cols,
        ny: rows,
        z: plane_order.iter().map(|k| z[*k]).collect(),
    };
    let factor = scaling * unit_gy;
    let mut gy = vec![0f32; grid.len()];
    for (k_new, k_old) in plane_order.iter().enumerate() {
        for j in 0..rows {
            let jj = if cy > 0.0 { j } else { rows - 1 - j };
            let src = (k_old * rows + j) * cols;
            let dst_row = grid.index(0, jj, k_new);
            for i in 0..cols {
                let ii = if rx > 0.0 { i } else { cols - 1 - i };
                gy[dst_row + ii] = (raw[src + i] * factor) as f32;
            }
        }
    }
    // A scaling that makes the doses absurd (or overflows them to infinity)
    // is damage, not a plan: no treatment deposits a kilogray.
    let max = gy.iter().copied().fold(0f32, f32::max);
    if f64::from(max) > MAX_PLAUSIBLE_GY {
        return Err(bad(format!(
            "the highest dose is {max:.3e} Gy (Dose Grid Scaling {scaling}): not a treatment plan's dose"
        )));
    }

    let plan_items = attr::items(obj, tags::REFERENCED_RT_PLAN_SEQUENCE);
    let mut referenced_plan_uids: Vec<String> = Vec::new();
    for uid in plan_items
        .iter()
        .filter_map(|p| attr::string(p, tags::REFERENCED_SOP_INSTANCE_UID))
    {
        if !referenced_plan_uids.contains(&uid) {
            referenced_plan_uids.push(uid);
        }
    }
    let referenced_beams = plan_items
        .iter()
        .flat_map(|p| attr::items(p, tags::REFERENCED_FRACTION_GROUP_SEQUENCE))
        .flat_map(|fg| attr::items(fg, tags::REFERENCED_BEAM_SEQUENCE))
        .filter_map(|b| attr::int(b, tags::REFERENCED_BEAM_NUMBER))
        .collect();
    if referenced_plan_uids.is_empty() {
        notes.push("no Referenced RT Plan Sequence: the dose cannot be tied to a plan".into());
    }
    Ok(RtDose {
        grid,
        gy,
        info: DoseInfo {
            sop_instance_uid: sop.clone(),
            frame_of_reference_uid: attr::string(obj, tags::FRAME_OF_REFERENCE_UID),
            summation,
            dose_type,
            units,
            referenced_plan_uids,
            referenced_beams,
            created: attr::date_time(
                obj,
                tags::INSTANCE_CREATION_DATE,
                tags::INSTANCE_CREATION_TIME,
            )
            .or_else(|| attr::date_time(obj, tags::CONTENT_DATE, tags::CONTENT_TIME)),
            orientation,
            notes,
        },
    })
}

/// Stored pixel values as f64 (unscaled), in file order.
fn pixel_values(
    obj: &FileDicomObject<InMemDicomObject>,
    frames: usize,
    frame_len: usize,
    bits: usize,
    signed: bool,
    note: &mut Option<String>,
) -> Result<Vec<f64>, String> {
    let n = frames * frame_len;
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let el = obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| "no Pixel Data".to_string())?;
    let bytes_per = bits / 8;
    let from_u32 = |v: u32| -> f64 {
        match (bits, signed) {
            (16, true) => f64::from(v as u16 as i16),
            (32, true) => f64::from(v as i32),
            _ => f64::from(v),
        }
    };
    let values: Vec<u32> = match el.value() {
        Value::PixelSequence(_) if ts_uid != ts::RLE_LOSSLESS => {
            // JPEG and friends hold at most 16 bits; dicom-pixeldata
            // decodes them (32-bit doses come uncompressed or as RLE).
            if bits != 16 {
                return Err(format!(
                    "{bits}-bit dose compressed with transfer syntax {ts_uid}; 32-bit doses can be read uncompressed or RLE"
                ));
            }
            use dicom_pixeldata::PixelDecoder;
            let decoded = obj.decode_pixel_data().map_err(|e| {
                format!("cannot decode the dose pixel data (transfer syntax {ts_uid}): {e}")
            })?;
            decoded
                .data()
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_ne_bytes([c[0], c[1]])))
                .collect()
        }
        Value::PixelSequence(seq) => {
            let frames = seq.fragments();
            let per_frame = if frames.is_empty() {
                0
            } else {
                n / frames.len()
            };
            if frames.is_empty() || per_frame * frames.len() != n {
                return Err(format!(
                    "{} RLE fragments do not divide into {n} pixels (one fragment per frame)",
                    frames.len()
                ));
            }
            let mut out = Vec::with_capacity(n);
            for f in frames {
                out.extend(rle::decode_frame(f, per_frame, bytes_per).map_err(|e| e.to_string())?);
            }
            out
        }
        Value::Primitive(p) => {
            let big_endian = ts_uid == ts::EXPLICIT_VR_BE;
            match (p, bits) {
                (PrimitiveValue::U32(v), 32) => v.to_vec(),
                (PrimitiveValue::U16(v), 16) => v.iter().map(|w| u32::from(*w)).collect(),
                (PrimitiveValue::U16(v), 32) if big_endian => {
                    // Writers disagree on 32-bit values in big-endian OW:
                    // some store whole 32-bit big-endian values, DCMTK
                    // swaps 16-bit words only. A dose grid is smooth, so
                    // the word order with the smaller pixel-to-pixel
                    // variation is the right one.
                    let whole: Vec<u32> = v
                        .chunks_exact(2)
                        .map(|w| (u32::from(w[0]) << 16) | u32::from(w[1]))
                        .collect();
                    let words: Vec<u32> = v
                        .chunks_exact(2)
                        .map(|w| (u32::from(w[1]) << 16) | u32::from(w[0]))
                        .collect();
                    let roughness = |x: &[u32]| {
                        x.windows(2)
                            .map(|p| (f64::from(p[0]) - f64::from(p[1])).abs())
                            .sum::<f64>()
                    };
                    if roughness(&words) < roughness(&whole) {
                        *note = Some("32-bit big-endian pixels stored with 16-bit word swapping (DCMTK style)".into());
                        words
                    } else {
                        whole
                    }
                }
                (PrimitiveValue::U16(v), 32) => v
                    .chunks_exact(2)
                    .map(|w| (u32::from(w[1]) << 16) | u32::from(w[0]))
                    .collect(),
                (PrimitiveValue::U8(b), _) => b
                    .chunks_exact(bytes_per)
                    .map(|c| match (bytes_per, big_endian) {
                        (2, false) => u32::from(u16::from_le_bytes([c[0], c[1]])),
                        (2, true) => u32::from(u16::from_be_bytes([c[0], c[1]])),
                        (_, false) => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        (_, true) => u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    })
                    .collect(),
                (PrimitiveValue::I32(v), 32) => v.iter().map(|x| *x as u32).collect(),
                (PrimitiveValue::I16(v), 16) => v.iter().map(|x| *x as u16 as u32).collect(),
                (other, _) => {
                    return Err(format!(
                        "unexpected pixel data representation {:?}",
                        other.value_type()
                    ))
                }
            }
        }
        Value::Sequence(_) => return Err("Pixel Data is a sequence".into()),
    };
    if values.len() < n {
        return Err(format!(
            "pixel data holds {} values, {n} expected",
            values.len()
        ));
    }
    // A whole frame or more left over: Number of Frames is not what the
    // pixel data holds, and the planes would be read against the wrong
    // offsets.
    if values.len() >= n + frame_len {
        return Err(format!(
            "pixel data holds {} frames of {frame_len} values; Number of Frames says {frames}",
            values.len() / frame_len
        ));
    }
    Ok(values[..n].iter().map(|v| from_u32(*v)).collect())
}

impl RtDose {
    /// Multiply every voxel (FRACTION doses times the number of fractions).
    pub fn scale(&mut self, factor: f64) {
        for v in &mut self.gy {
            *v = (f64::from(*v) * factor) as f32;
        }
    }

    pub fn max_gy(&self) -> f32 {
        self.gy.iter().copied().fold(0.0, f32::max)
    }

    /// Sum doses on the same grid (beam doses of one plan).
    pub fn sum(doses: Vec<RtDose>) -> Result<RtDose, RtError> {
        let mut it = doses.into_iter();
        let mut total = it.next().ok_or_else(|| RtError::Study {
            what: "no dose to sum".into(),
        })?;
        for d in it {
            if !total.grid.same_geometry(&d.grid) {
                return Err(RtError::Study {
                    what: format!(
                        "beam doses {} and {} are on different grids; they cannot be summed voxel by voxel",
                        total.info.sop_instance_uid, d.info.sop_instance_uid
                    ),
                });
            }
            for (a, b) in total.gy.iter_mut().zip(&d.gy) {
                *a += *b;
            }
            total
                .info
                .referenced_beams
                .extend(d.info.referenced_beams.iter().copied());
            total
                .info
                .notes
                .push(format!("summed with {}", d.info.sop_instance_uid));
        }
        Ok(total)
    }

    /// Dose at a point by trilinear interpolation; None outside the grid.
    pub fn sample(&self, x: f64, y: f64, z: f64) -> Option<f32> {
        self.grid.interpolate(&self.gy, x, y, z).map(|v| v as f32)
    }

    /// The dose on another grid by trilinear interpolation; voxels outside
    /// this dose grid get `None` in the returned mask and 0 Gy.
    pub fn resample(&self, target: &Grid) -> (Vec<f32>, Vec<bool>) {
        let g = &self.grid;
        let inside = |f: f64, n: usize| f >= -1e-6 && f <= (n as f64 - 1.0) + 1e-6;
        let xs: Vec<Option<f64>> = (0..target.nx)
            .map(|i| Some(g.fx(target.x(i))).filter(|f| inside(*f, g.nx)))
            .collect();
        let ys: Vec<Option<f64>> = (0..target.ny)
            .map(|j| Some(g.fy(target.y(j))).filter(|f| inside(*f, g.ny)))
            .collect();
        let mut out = vec![0f32; target.len()];
        let mut covered = vec![false; target.len()];
        for (k, z) in target.z.iter().enumerate() {
            let Some(fz) = g.fz(*z) else { continue };
            for (j, fy) in ys.iter().enumerate() {
                let Some(fy) = fy else { continue };
                for (i, fx) in xs.iter().enumerate() {
                    let Some(fx) = fx else { continue };
                    let idx = target.index(i, j, k);
                    out[idx] = g.trilinear(&self.gy, *fx, *fy, fz) as f32;
                    covered[idx] = true;
                }
            }
        }
        (out, covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dose_with(values: impl Fn(f64, f64, f64) -> f32) -> RtDose {
        let grid = Grid::uniform([0.0, 0.0, 0.0], [2.0, 2.0, 3.0], [10, 8, 6]);
        let mut gy = vec![0f32; grid.len()];
        for k in 0..grid.nz() {
            for j in 0..grid.ny {
                for i in 0..grid.nx {
                    gy[grid.index(i, j, k)] = values(grid.x(i), grid.y(j), grid.z[k]);
                }
            }
        }
        RtDose {
            grid,
            gy,
            info: DoseInfo {
                sop_instance_uid: "1.2".into(),
                frame_of_reference_uid: None,
                summation: Summation::Plan,
                dose_type: "PHYSICAL".into(),
                units: "GY".into(),
                referenced_plan_uids: vec![],
                created: None,
                referenced_beams: vec![],
                orientation: "HFS",
                notes: vec![],
            },
        }
    }

    #[test]
    fn trilinear_is_exact_for_linear_fields() {
        let d = dose_with(|x, y, z| (1.0 + 0.5 * x + 0.25 * y + 0.1 * z) as f32);
        let v = d.sample(3.3, 7.1, 4.4).expect("inside");
        assert!((f64::from(v) - (1.0 + 1.65 + 1.775 + 0.44)).abs() < 1e-4);
        assert!(d.sample(-1.0, 0.0, 0.0).is_none());
        let target = Grid::uniform([1.0, 1.0, 1.5], [1.0, 1.0, 1.0], [12, 10, 10]);
        let (r, covered) = d.resample(&target);
        for k in 0..target.nz() {
            for j in 0..target.ny {
                for i in 0..target.nx {
                    let idx = target.index(i, j, k);
                    let (x, y, z) = (target.x(i), target.y(j), target.z[k]);
                    if covered[idx] {
                        let want = 1.0 + 0.5 * x + 0.25 * y + 0.1 * z;
                        assert!((f64::from(r[idx]) - want).abs() < 1e-4, "{x} {y} {z}");
                    } else {
                        assert!(x > 18.0 || y > 14.0 || z > 15.0);
                    }
                }
            }
        }
    }

    #[test]
    fn sums_need_matching_grids() {
        let a = dose_with(|_, _, _| 1.0);
        let b = dose_with(|_, _, _| 2.0);
        let s = RtDose::sum(vec![a.clone(), b]).expect("sum");
        assert!(s.gy.iter().all(|v| (*v - 3.0).abs() < 1e-6));
        let mut c = dose_with(|_, _, _| 1.0);
        c.grid.x0 += 1.0;
        assert!(RtDose::sum(vec![a, c]).is_err());
    }
}
