//! From a study to the network's input: the dose cropped around the
//! esophagus on a fixed grid, the target region for the segmentation branch,
//! and the dosiomic features for the fusion head.
//!
//! The crop keeps its geometry ([`Crop`]) so the predicted region maps back
//! to patient coordinates (for dosiomics in the learned ROI, and for the
//! RT Structure Set the node returns).

use serde::{Deserialize, Serialize};

use crate::dosiomics::roi::{self, DoseKind, NotScorable, PatientDose};
use crate::dosiomics::search::DosiomicsModelFile;
use crate::rt::dvh;
use crate::rt::grid::Grid;
use crate::rt::study::Study;

/// Input settings (stored in the model card; a model only reads inputs made
/// with its own).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Grid `[D, H, W]` (z, y, x).
    pub size: [usize; 3],
    /// Spacing `[dz, dy, dx]` in mm.
    pub spacing_mm: [f64; 3],
    /// Dose the network sees.
    pub dose: DoseKind,
    /// Add the esophagus mask as a second channel.
    pub mask_channel: bool,
    /// α/β (Gy) for EQD2.
    pub alpha_beta: f64,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            size: [32, 24, 24],
            spacing_mm: [8.0, 8.0, 8.0],
            dose: DoseKind::Eqd2,
            mask_channel: true,
            alpha_beta: 10.0,
        }
    }
}

impl InputConfig {
    pub fn channels(&self) -> usize {
        1 + usize::from(self.mask_channel)
    }

    pub fn voxels(&self) -> usize {
        self.size.iter().product()
    }
}

/// Where the network's grid lies in the patient: voxel `(k, j, i)` has its
/// centre at `centre + ((i − (W−1)/2) dx, (j − (H−1)/2) dy, (k − (D−1)/2) dz)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Crop {
    /// Patient coordinates (x, y, z) of the grid's centre, mm.
    pub centre: [f64; 3],
    pub size: [usize; 3],
    pub spacing_mm: [f64; 3],
}

impl Crop {
    /// Patient (x, y, z) of voxel (k, j, i).
    pub fn position(&self, k: usize, j: usize, i: usize) -> [f64; 3] {
        let off =
            |n: usize, s: f64, c: f64, idx: usize| c + (idx as f64 - (n as f64 - 1.0) / 2.0) * s;
        [
            off(self.size[2], self.spacing_mm[2], self.centre[0], i),
            off(self.size[1], self.spacing_mm[1], self.centre[1], j),
            off(self.size[0], self.spacing_mm[0], self.centre[2], k),
        ]
    }

    /// Nearest voxel (k, j, i) of a patient position, if inside.
    pub fn voxel(&self, p: [f64; 3]) -> Option<[usize; 3]> {
        let idx = |v: f64, c: f64, s: f64, n: usize| -> Option<usize> {
            let f = ((v - c) / s + (n as f64 - 1.0) / 2.0).round();
            (f >= 0.0 && f < n as f64).then_some(f as usize)
        };
        Some([
            idx(p[2], self.centre[2], self.spacing_mm[0], self.size[0])?,
            idx(p[1], self.centre[1], self.spacing_mm[1], self.size[1])?,
            idx(p[0], self.centre[0], self.spacing_mm[2], self.size[2])?,
        ])
    }
}

/// One patient, ready for the network.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `C × D × H × W`: dose / prescription dose (EQD2 of the prescription
    /// for EQD2 input), then the esophagus mask when asked for.
    pub input: Vec<f32>,
    /// `D × H × W`: the optimal ROI (from the dosiomics model) on the crop.
    pub target: Vec<u8>,
    /// Standardised dosiomic features of the dosiomics model, measured in
    /// the optimal ROI itself (training) — inference measures them in the
    /// predicted ROI.
    pub dosiomics: Vec<f32>,
    pub crop: Crop,
    /// Prescription used for normalisation (Gy, in the input's dose kind).
    pub norm_gy: f64,
}

/// The study's dose and masks plus what normalises them: the first step of
/// both training and scoring.
pub struct Prepared {
    /// On the plan's own dose grid: the network's input, its training
    /// target and the ROI returned to the planning system.
    pub patient: PatientDose,
    /// On the dosiomics model's feature grid when that differs (see
    /// `Prepared::features`).
    resampled: Option<PatientDose>,
    pub crop: Crop,
    pub norm_gy: f64,
}

/// Locate the crop and the normalisation for a study, with its dose and
/// masks on the plan's own grid and, for the features, on the dosiomics
/// model's feature grid (`resample_mm`, see `PatientDose::from_study`).
pub fn prepare(
    study: &Study,
    cfg: &InputConfig,
    resample_mm: Option<f64>,
) -> Result<Prepared, NotScorable> {
    let patient = PatientDose::from_study(study, cfg.alpha_beta, None)?;
    let resampled = match resample_mm {
        Some(r) if patient.spacing.iter().any(|s| (s - r).abs() > 1e-6) => {
            Some(PatientDose::from_study(study, cfg.alpha_beta, Some(r))?)
        }
        _ => None,
    };
    if cfg.dose == DoseKind::Eqd2 && patient.eqd2.is_none() {
        let why = study
            .plan
            .as_ref()
            .and_then(|p| p.notes.iter().find(|n| n.contains("Number of Fractions")))
            .map_or(
                "RT Plan missing or without a fraction group".to_string(),
                |n| n.clone(),
            );
        return Err(NotScorable(format!(
            "the number of fractions is unknown ({why}); the model reads EQD2"
        )));
    }
    // Esophagus bounding box centre in patient coordinates.
    let g = &patient.grid;
    let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    let plane = g.nx * g.ny;
    for (idx, _) in patient.esophagus.iter().enumerate().filter(|(_, &m)| m) {
        let (k, j, i) = (idx / plane, (idx / g.nx) % g.ny, idx % g.nx);
        let p = [g.x(i), g.y(j), g.z[k]];
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    let centre = [
        (lo[0] + hi[0]) / 2.0,
        (lo[1] + hi[1]) / 2.0,
        (lo[2] + hi[2]) / 2.0,
    ];
    let prescription = study.plan.as_ref().and_then(|p| p.prescription_gy);
    let fractions = patient.fractions;
    let max_dose = patient.physical.iter().cloned().fold(0f32, f32::max) as f64;
    let physical_norm = prescription
        .filter(|p| *p > 0.0)
        .unwrap_or(max_dose.max(1.0));
    let norm_gy = match (cfg.dose, fractions) {
        (DoseKind::Eqd2, Some(n)) => dvh::eqd2(physical_norm, f64::from(n), cfg.alpha_beta),
        _ => physical_norm,
    };
    Ok(Prepared {
        crop: Crop {
            centre,
            size: cfg.size,
            spacing_mm: cfg.spacing_mm,
        },
        norm_gy,
        patient,
        resampled,
    })
}

/// Reference prescription of the prescription scale (Gy, EQD2 or physical).
pub const SCALE_REFERENCE_GY: f64 = 60.0;

/// The head's prescription-scale input for a study normalised by `norm_gy`:
/// ln(norm_gy / 60 Gy), 0 for a 60 Gy prescription, about +0.7 for a
/// three-fraction SBRT plan in EQD2.
pub fn prescription_scale(norm_gy: f64) -> f32 {
    (norm_gy.max(1.0) / SCALE_REFERENCE_GY).ln() as f32
}

/// A probability threshold of the learned ROI as a cut on the segmentation
/// logits (clamped away from 0 and 1).
pub fn roi_cut(p: f64) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln() as f32
}

impl Prepared {
    /// The network input (`C × D × H × W`).
    pub fn input(&self, cfg: &InputConfig) -> Vec<f32> {
        let p = &self.patient;
        let dose = p.dose(cfg.dose).unwrap_or(&p.physical);
        let n = cfg.voxels();
        let mut out = vec![0f32; cfg.channels() * n];
        let eso: Vec<f32> = p
            .esophagus
            .iter()
            .map(|&m| f32::from(u8::from(m)))
            .collect();
        let [d, h, w] = cfg.size;
        for k in 0..d {
            for j in 0..h {
                for i in 0..w {
                    let [x, y, z] = self.crop.position(k, j, i);
                    let v = (k * h + j) * w + i;
                    if let Some(gy) = p.grid.interpolate(dose, x, y, z) {
                        out[v] = (gy / self.norm_gy) as f32;
                    }
                    if cfg.mask_channel {
                        out[n + v] = self.nearest(&eso, x, y, z).unwrap_or(0.0);
                    }
                }
            }
        }
        out
    }

    /// Value of the patient-grid voxel nearest to (x, y, z).
    fn nearest(&self, values: &[f32], x: f64, y: f64, z: f64) -> Option<f32> {
        let g = &self.patient.grid;
        let (fx, fy, fz) = (g.fx(x).round(), g.fy(y).round(), g.fz(z)?.round());
        (fx >= 0.0 && fy >= 0.0 && (fx as usize) < g.nx && (fy as usize) < g.ny)
            .then(|| values[g.index(fx as usize, fy as usize, fz as usize)])
    }

    /// A patient-grid mask on the crop (nearest neighbour).
    pub fn to_crop(&self, mask: &[bool]) -> Vec<u8> {
        let as_f: Vec<f32> = mask.iter().map(|&m| f32::from(u8::from(m))).collect();
        let [d, h, w] = self.crop.size;
        let mut out = vec![0u8; d * h * w];
        for k in 0..d {
            for j in 0..h {
                for i in 0..w {
                    let [x, y, z] = self.crop.position(k, j, i);
                    if self.nearest(&as_f, x, y, z).unwrap_or(0.0) > 0.5 {
                        out[(k * h + j) * w + i] = 1;
                    }
                }
            }
        }
        out
    }

    /// The learned ROI on the patient grid from the segmentation logits on
    /// the crop: the logits interpolated trilinearly at each patient voxel
    /// inside the crop, cut at `cut`, and kept inside `support` (where the
    /// ROI's rule can reach, see [`Prepared::roi_support`]). The crop's
    /// voxels are coarser than the esophagus is wide, so the branch says
    /// which part of the organ, and the contour gives the outline.
    pub fn roi_from_logits(&self, logits: &[f32], cut: f32, support: &[bool]) -> Vec<bool> {
        self.roi_from_logits_on(&self.patient.grid, logits, cut, support)
    }

    /// The patient on the grid the dosiomic features are measured on.
    pub fn features(&self) -> &PatientDose {
        self.resampled.as_ref().unwrap_or(&self.patient)
    }

    /// `roi_from_logits` on the feature grid, with `support` there: the
    /// learned ROI whose features the head reads.
    pub fn feature_roi_from_logits(&self, logits: &[f32], cut: f32, support: &[bool]) -> Vec<bool> {
        self.roi_from_logits_on(&self.features().grid, logits, cut, support)
    }

    fn roi_from_logits_on(
        &self,
        g: &Grid,
        logits: &[f32],
        cut: f32,
        support: &[bool],
    ) -> Vec<bool> {
        let c = &self.crop;
        let [d, h, w] = c.size;
        // Fractional crop index along one axis; `None` outside the crop's
        // voxels (half a voxel beyond the outer centres).
        let frac = |v: f64, centre: f64, s: f64, n: usize| -> Option<f64> {
            let f = (v - centre) / s + (n as f64 - 1.0) / 2.0;
            (f >= -0.5 && f <= n as f64 - 0.5).then(|| f.clamp(0.0, (n - 1) as f64))
        };
        let split = |f: f64, n: usize| {
            let i0 = (f.floor() as usize).min(n - 1);
            (i0, (i0 + 1).min(n - 1), (f - i0 as f64) as f32)
        };
        let at = |k: usize, j: usize, i: usize| logits[(k * h + j) * w + i];
        let mut out = vec![false; g.len()];
        for (idx, o) in out.iter_mut().enumerate() {
            if !support.get(idx).copied().unwrap_or(false) {
                continue;
            }
            let (i, j, k) = (idx % g.nx, (idx / g.nx) % g.ny, idx / (g.nx * g.ny));
            let (Some(fx), Some(fy), Some(fz)) = (
                frac(g.x(i), c.centre[0], c.spacing_mm[2], w),
                frac(g.y(j), c.centre[1], c.spacing_mm[1], h),
                frac(g.z[k], c.centre[2], c.spacing_mm[0], d),
            ) else {
                continue;
            };
            let ((i0, i1, tx), (j0, j1, ty), (k0, k1, tz)) =
                (split(fx, w), split(fy, h), split(fz, d));
            let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
            let plane = |k| {
                lerp(
                    lerp(at(k, j0, i0), at(k, j0, i1), tx),
                    lerp(at(k, j1, i0), at(k, j1, i1), tx),
                    ty,
                )
            };
            *o = lerp(plane(k0), plane(k1), tz) > cut;
        }
        out
    }

    /// Where the dosiomics model's ROI can lie (the esophagus, or its
    /// margin for margin rules).
    pub fn roi_support(&self, model: &DosiomicsModelFile) -> Vec<bool> {
        support_on(&self.patient, model)
    }

    /// `roi_support` on the feature grid.
    pub fn feature_roi_support(&self, model: &DosiomicsModelFile) -> Vec<bool> {
        support_on(self.features(), model)
    }

    /// The dosiomics model's features, from a `measure` row, standardised
    /// and clipped as the model does; missing values take the median.
    pub fn dosiomics(row: &[Option<f64>], model: &DosiomicsModelFile) -> Vec<f32> {
        let selected = model.selected(row);
        model
            .model
            .standardised(|n| selected.iter().find(|(s, _)| s == n).and_then(|(_, v)| *v))
            .into_iter()
            .map(|z| z as f32)
            .collect()
    }

    /// The optimal ROI (as the dosiomics model defines it) on the patient
    /// grid; empty when it cannot be defined.
    pub fn optimal_roi(&self, model: &DosiomicsModelFile) -> Vec<bool> {
        optimal_on(&self.patient, model)
    }

    /// `optimal_roi` on the feature grid.
    pub fn feature_optimal_roi(&self, model: &DosiomicsModelFile) -> Vec<bool> {
        optimal_on(self.features(), model)
    }
}

/// Whether a learned ROI on `p`'s grid is under `min_cc` (empty counts):
/// too small for the fused shape and texture features, which then come
/// from the rule-defined ROI. Never, without a minimum.
pub fn too_small(roi: &[bool], p: &PatientDose, min_cc: Option<f64>) -> bool {
    min_cc.is_some_and(|min| roi_cc(roi, p) < min)
}

/// The volume (cc) of a mask on `p`'s grid.
pub fn roi_cc(roi: &[bool], p: &PatientDose) -> f64 {
    roi.iter().filter(|&&m| m).count() as f64 * p.spacing.iter().product::<f64>() / 1000.0
}

fn support_on(p: &PatientDose, model: &DosiomicsModelFile) -> Vec<bool> {
    roi::candidate(&model.roi)
        .map(|c| c.support(p))
        .unwrap_or_else(|| p.esophagus.clone())
}

fn optimal_on(p: &PatientDose, model: &DosiomicsModelFile) -> Vec<bool> {
    roi::candidate(&model.roi)
        .and_then(|c| c.mask(p))
        .unwrap_or_else(|| vec![false; p.grid.len()])
}

/// Everything the network trains on for one study.
pub fn sample(
    study: &Study,
    cfg: &InputConfig,
    model: &DosiomicsModelFile,
) -> Result<Sample, NotScorable> {
    let p = prepare(study, cfg, model.resample_mm)?;
    let roi = p.optimal_roi(model);
    let on_features = p.feature_optimal_roi(model);
    Ok(Sample {
        input: p.input(cfg),
        target: p.to_crop(&roi),
        dosiomics: Prepared::dosiomics(&model.measure(p.features(), &on_features), model),
        crop: p.crop,
        norm_gy: p.norm_gy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::grid::Grid;

    #[test]
    fn too_small_counts_the_volume_and_an_empty_roi() {
        let p = tube_patient();
        let grid = &p.patient;
        // 2 mm voxels: 0.008 cc each.
        let mut roi = vec![false; grid.grid.len()];
        assert!(!too_small(&roi, grid, None), "no minimum, never too small");
        assert!(too_small(&roi, grid, Some(0.001)), "empty is too small");
        roi.iter_mut().take(100).for_each(|m| *m = true);
        assert!(!too_small(&roi, grid, Some(0.8)));
        assert!(too_small(&roi, grid, Some(0.81)));
    }

    #[test]
    fn prescription_scale_is_log_of_the_ratio_to_60_gy() {
        assert_eq!(prescription_scale(60.0), 0.0);
        // 54 Gy in 3 fractions is 126 Gy EQD2 (alpha/beta 10).
        let sbrt = crate::rt::dvh::eqd2(54.0, 3.0, 10.0);
        assert!((prescription_scale(sbrt) - 0.742).abs() < 1e-3);
        assert!(prescription_scale(45.0) < 0.0);
        assert!(prescription_scale(0.0).is_finite());
    }

    /// A 2 mm patient grid around the origin with a vertical tube of radius
    /// 4 mm as the esophagus, and an 8 mm crop of 4³ voxels on the origin.
    fn tube_patient() -> Prepared {
        let n = 20;
        let grid = Grid::uniform([-19.0; 3], [2.0; 3], [n; 3]);
        let mut esophagus = vec![false; grid.len()];
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    esophagus[grid.index(i, j, k)] = grid.x(i).hypot(grid.y(j)) <= 4.0;
                }
            }
        }
        Prepared {
            patient: PatientDose::for_test(
                grid.clone(),
                [2.0; 3],
                vec![0.0; grid.len()],
                esophagus,
            ),
            resampled: None,
            crop: Crop {
                centre: [0.0; 3],
                size: [4, 4, 4],
                spacing_mm: [8.0; 3],
            },
            norm_gy: 1.0,
        }
    }

    #[test]
    fn learned_roi_interpolates_within_the_support() {
        let p = tube_patient();
        // Logit +5 on the upper two crop planes (z = 4, 12 mm), −5 on the
        // lower two (z = −12, −4 mm): interpolated, it crosses 0 at z = 0.
        let logits: Vec<f32> = (0..64)
            .map(|v| if v / 16 >= 2 { 5.0 } else { -5.0 })
            .collect();
        let support = p.patient.esophagus.clone();
        let roi = p.roi_from_logits(&logits, 0.0, &support);
        let g = &p.patient.grid;
        let mut inside = 0;
        for (idx, &m) in roi.iter().enumerate() {
            let (i, j, k) = (idx % g.nx, (idx / g.nx) % g.ny, idx / (g.nx * g.ny));
            let z = g.z[k];
            // Inside the tube, above z = 0, and within the crop (centres
            // ±12 mm, voxels reach ±16 mm).
            let expected = support[idx] && z > 0.0 && z < 16.0 && g.x(i).abs() < 16.0;
            assert_eq!(m, expected, "voxel ({i}, {j}, {k}) at z = {z}");
            inside += usize::from(m);
        }
        assert!(inside > 0);
        // Outside the support nothing is kept, even where the logits are high.
        let none = p.roi_from_logits(&logits, 0.0, &vec![false; g.len()]);
        assert!(!none.iter().any(|&m| m));
    }

    #[test]
    fn crop_positions_and_voxels_round_trip() {
        let c = Crop {
            centre: [10.0, -20.0, 100.0],
            size: [4, 5, 6],
            spacing_mm: [8.0, 5.0, 4.0],
        };
        for (k, j, i) in [(0, 0, 0), (3, 4, 5), (2, 1, 3)] {
            assert_eq!(c.voxel(c.position(k, j, i)), Some([k, j, i]));
        }
        // The centre lies between the middle voxels for even sizes.
        let p = c.position(2, 2, 3);
        assert!((p[1] - -20.0).abs() < 1e-9 && (p[2] - 104.0).abs() < 1e-9);
        assert_eq!(c.voxel([1e4, 0.0, 0.0]), None);
    }
}
