//! Candidate regions of interest: where on the esophagus dosiomic features
//! are measured.
//!
//! Every candidate is a named, documented function of the dose and the
//! structures, evaluated on one grid (the dose grid, extended where the
//! esophagus or PTV reach beyond it, the outside counted at 0 Gy). The ROI
//! search ranks them; the model learns to reproduce the winner.

use crate::rt::analysis::{analysis_grid, MAX_EXTRA_VOXELS};
use crate::rt::dvh;
use crate::rt::grid::Grid;
use crate::rt::names::{self, Organ};
use crate::rt::structure::Roi;
use crate::rt::study::Study;

use super::volume::Volume;

/// Which dose the features read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DoseKind {
    /// Physical dose in Gy.
    Physical,
    /// EQD2 (α/β from the settings) in Gy.
    Eqd2,
}

/// A patient's dose and the masks candidates are built from, on one grid.
#[derive(Debug, Clone)]
pub struct PatientDose {
    /// The feature grid (see `feature_grid`).
    pub grid: Grid,
    /// `[dz, dy, dx]` (mm); the grid's planes are evenly spaced.
    pub spacing: [f64; 3],
    pub physical: Vec<f32>,
    /// EQD2 dose; `None` when the number of fractions is unknown.
    pub eqd2: Option<Vec<f32>>,
    pub esophagus: Vec<bool>,
    pub ptv: Option<Vec<bool>>,
    /// Names of the structures used, for the record.
    pub esophagus_name: String,
    pub ptv_name: Option<String>,
    pub fractions: Option<u32>,
    /// Share of esophagus voxels outside the dose grid (counted at 0 Gy).
    pub esophagus_outside_dose: f64,
}

#[cfg(test)]
impl PatientDose {
    /// A test patient: a physical dose and an esophagus, no PTV, no EQD2.
    pub(crate) fn for_test(
        grid: Grid,
        spacing: [f64; 3],
        physical: Vec<f32>,
        esophagus: Vec<bool>,
    ) -> PatientDose {
        PatientDose {
            grid,
            spacing,
            physical,
            eqd2: None,
            esophagus,
            ptv: None,
            esophagus_name: "Esophagus".into(),
            ptv_name: None,
            fractions: None,
            esophagus_outside_dose: 0.0,
        }
    }
}

/// Why a study has no dosiomics, in a physicist's words.
#[derive(Debug, Clone, PartialEq)]
pub struct NotScorable(pub String);

impl std::fmt::Display for NotScorable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotScorable {}

impl PatientDose {
    /// Rasterise the esophagus (and PTV, when present) on the feature grid
    /// (the dose grid, or isotropic `resample_mm` voxels: see
    /// `feature_grid`), voxel centre inside, as `inspect` defines the binary
    /// mask.
    pub fn from_study(
        study: &Study,
        alpha_beta: f64,
        resample_mm: Option<f64>,
    ) -> Result<PatientDose, NotScorable> {
        let ss = study.structures.as_ref().ok_or_else(|| {
            NotScorable("no RT Structure Set linked to the dose: no esophagus to measure".into())
        })?;
        let eso_match = names::match_organ(Organ::Esophagus, &ss.rois).ok_or_else(|| {
            NotScorable(format!(
                "no ROI recognised as the esophagus among {} ROIs ({})",
                ss.rois.len(),
                ss.rois
                    .iter()
                    .map(|r| r.info.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if !eso_match.tied.is_empty() {
            return Err(NotScorable(format!(
                "{} ROIs match the esophagus equally well: {:?} (ROI {}), {}; rename or remove all but one",
                eso_match.tied.len() + 1,
                eso_match.roi_name,
                eso_match.roi_number,
                eso_match.tied.join(", ")
            )));
        }
        let find = |n: i64| ss.rois.iter().find(|r| r.info.number == n);
        let eso = find(eso_match.roi_number)
            .filter(|r| !r.planes.is_empty())
            .ok_or_else(|| {
                NotScorable(format!(
                    "the esophagus ROI {:?} has no contours",
                    eso_match.roi_name
                ))
            })?;
        let ptv = names::match_organ(Organ::Ptv, &ss.rois)
            .and_then(|m| find(m.roi_number))
            .filter(|r| !r.planes.is_empty());
        let mut rois = vec![eso];
        rois.extend(ptv);
        let (grid, spacing, physical, covered) = feature_grid(study, &rois, resample_mm)?;
        let esophagus = eso.rasterize(&grid, 1).centre_mask(&grid);
        let n_eso = esophagus.iter().filter(|&&m| m).count();
        if n_eso == 0 {
            return Err(NotScorable(format!(
                "the esophagus ROI {:?} covers no voxel centre of the dose grid",
                eso.info.name
            )));
        }
        let outside = esophagus
            .iter()
            .zip(&covered)
            .filter(|(&m, &c)| m && !c)
            .count();
        let esophagus_outside_dose = outside as f64 / n_eso as f64;
        if esophagus_outside_dose > 0.5 {
            return Err(NotScorable(format!(
                "the dose grid covers only {:.0}% of the esophagus {:?}",
                100.0 * (1.0 - esophagus_outside_dose),
                eso.info.name
            )));
        }
        let fractions = study.plan.as_ref().and_then(|p| p.fractions);
        let eqd2 = fractions.map(|n| dvh::eqd2_grid(&physical, f64::from(n), alpha_beta));
        Ok(PatientDose {
            spacing,
            physical,
            eqd2,
            esophagus,
            ptv: ptv.map(|r| r.rasterize(&grid, 1).centre_mask(&grid)),
            esophagus_name: eso.info.name.clone(),
            ptv_name: ptv.map(|r| r.info.name.clone()),
            fractions,
            esophagus_outside_dose,
            grid,
        })
    }

    pub fn dims(&self) -> [usize; 3] {
        [self.grid.nz(), self.grid.ny, self.grid.nx]
    }

    /// The same patient with the dose multiplied by `factor` (EQD2
    /// recomputed from the scaled physical dose), as a plan a few percent
    /// hotter or colder would be read: the masks that follow the dose
    /// (`esophagus_ge40gy`, …) follow it here too.
    pub fn scaled(&self, factor: f64, alpha_beta: f64) -> PatientDose {
        let physical: Vec<f32> = self
            .physical
            .iter()
            .map(|&d| (f64::from(d) * factor) as f32)
            .collect();
        let eqd2 = self
            .fractions
            .map(|n| dvh::eqd2_grid(&physical, f64::from(n), alpha_beta));
        PatientDose {
            grid: self.grid.clone(),
            spacing: self.spacing,
            physical,
            eqd2,
            esophagus: self.esophagus.clone(),
            ptv: self.ptv.clone(),
            esophagus_name: self.esophagus_name.clone(),
            ptv_name: self.ptv_name.clone(),
            fractions: self.fractions,
            esophagus_outside_dose: self.esophagus_outside_dose,
        }
    }

    /// The dose features read.
    pub fn dose(&self, kind: DoseKind) -> Option<&[f32]> {
        match kind {
            DoseKind::Physical => Some(&self.physical),
            DoseKind::Eqd2 => self.eqd2.as_deref(),
        }
    }

    /// The feature image for `mask`: the bounding box of the mask padded by
    /// `pad` voxels (so local-intensity spheres and the surface mesh see the
    /// surroundings), clipped to the grid. An empty mask gives an empty
    /// volume.
    pub fn volume(&self, mask: &[bool], kind: DoseKind, pad: usize) -> Option<Volume> {
        let dose = self.dose(kind)?;
        let [nz, ny, nx] = self.dims();
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
            let c = [i / (nx * ny), (i / nx) % ny, i % nx];
            for a in 0..3 {
                lo[a] = lo[a].min(c[a]);
                hi[a] = hi[a].max(c[a]);
            }
        }
        if lo[0] == usize::MAX {
            return Some(Volume {
                dims: [0, 0, 0],
                spacing: self.spacing,
                values: vec![],
                mask: vec![],
            });
        }
        let n = [nz, ny, nx];
        for a in 0..3 {
            lo[a] = lo[a].saturating_sub(pad);
            hi[a] = (hi[a] + pad).min(n[a] - 1);
        }
        let dims = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
        let mut values = Vec::with_capacity(dims.iter().product());
        let mut m = Vec::with_capacity(values.capacity());
        for z in lo[0]..=hi[0] {
            for y in lo[1]..=hi[1] {
                let row = (z * ny + y) * nx;
                for x in lo[2]..=hi[2] {
                    values.push(f64::from(dose[row + x]));
                    m.push(mask[row + x]);
                }
            }
        }
        Some(Volume {
            dims,
            spacing: self.spacing,
            values,
            mask: m,
        })
    }
}

/// A grid for features: the grid, `[dz, dy, dx]`, the physical dose on it,
/// and which voxels the dose grid covers.
pub type FeatureGrid = (Grid, [f64; 3], Vec<f32>, Vec<bool>);

/// The dose on the dose grid extended to cover `rois` (the outside at
/// 0 Gy), or, with `resample_mm`, interpolated (trilinear) onto isotropic
/// voxels of that size over the same extent. Texture and shape features
/// depend on the voxel size, so a model that should read plans from dose
/// grids of 2.5 mm and 4 mm alike reads them all on one grid (IBSI's
/// interpolation step).
pub fn feature_grid(
    study: &Study,
    rois: &[&Roi],
    resample_mm: Option<f64>,
) -> Result<FeatureGrid, NotScorable> {
    let mut grid = analysis_grid(&study.dose.grid, rois).map_err(NotScorable)?;
    if let Some(s) = resample_mm.filter(|s| s.is_finite() && *s > 0.0) {
        // A grid already of that voxel size is kept as it is, planes and
        // all: recomputing its planes would move them by rounding errors.
        let already =
            uniform_spacing(&grid).is_some_and(|d| d.iter().all(|v| (v - s).abs() < 1e-6));
        if !already {
            grid = isotropic(&grid, s)?;
        }
    }
    let spacing = uniform_spacing(&grid).ok_or_else(|| {
        NotScorable(
            "the dose grid's planes are unevenly spaced; dosiomic features need a regular grid"
                .into(),
        )
    })?;
    let (physical, covered) = if grid.same_geometry(&study.dose.grid) {
        (study.dose.gy.clone(), vec![true; grid.len()])
    } else {
        study.dose.resample(&grid)
    };
    Ok((grid, spacing, physical, covered))
}

/// A grid of `s`-mm cubes from the first voxel centre of `g` over its
/// extent (the last partial voxel dropped), or why there is none: a grid
/// whose spacing says it spans metres (a damaged Pixel Spacing) would not
/// fit in memory at `s` mm.
fn isotropic(g: &Grid, s: f64) -> Result<Grid, NotScorable> {
    let z0 = g.z.first().copied().unwrap_or(0.0);
    let z1 = g.z.last().copied().unwrap_or(z0);
    let extent = [
        g.nx.saturating_sub(1) as f64 * g.dx,
        g.ny.saturating_sub(1) as f64 * g.dy,
        z1 - z0,
    ];
    let n = extent.map(|e| (e / s + 1e-6).floor() + 1.0);
    let voxels: f64 = n.iter().product();
    if voxels.is_nan() || voxels > MAX_EXTRA_VOXELS {
        return Err(NotScorable(format!(
            "the dose grid spans {:.0} × {:.0} × {:.0} mm, more than a patient; its spacing or positions are damaged",
            extent[0], extent[1], extent[2]
        )));
    }
    Ok(Grid::uniform(
        [g.x0, g.y0, z0],
        [s, s, s],
        n.map(|v| v as usize),
    ))
}

/// `[dz, dy, dx]` when the planes are evenly spaced (within 1 µm).
fn uniform_spacing(grid: &Grid) -> Option<[f64; 3]> {
    let dz = if grid.nz() > 1 {
        grid.z[1] - grid.z[0]
    } else {
        grid.dx.min(grid.dy)
    };
    let even = grid.z.windows(2).all(|w| ((w[1] - w[0]) - dz).abs() < 1e-3);
    (even && dz > 0.0).then_some([dz, grid.dy, grid.dx])
}

/// A candidate region: its name (used in files and the model) and what it
/// is, in words.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub name: &'static str,
    pub description: &'static str,
    rule: Rule,
}

#[derive(Debug, Clone, Copy)]
enum Rule {
    Whole,
    Margin(f64),
    Third(usize),
    Isodose(f64, DoseKind),
    Circumferential(f64, DoseKind),
    NearPtv(f64),
    InField,
}

macro_rules! candidates {
    ($($name:literal, $rule:expr, $desc:literal;)*) => {
        /// Every candidate ROI, in the order tables list them.
        pub const CANDIDATES: &[Candidate] = &[$(Candidate { name: $name, description: $desc, rule: $rule }),*];
    };
}

candidates! {
    "esophagus", Rule::Whole, "the whole esophagus as contoured (voxel centre inside)";
    "esophagus_3mm", Rule::Margin(3.0), "the esophagus expanded by 3 mm in 3D";
    "esophagus_5mm", Rule::Margin(5.0), "the esophagus expanded by 5 mm in 3D";
    "esophagus_10mm", Rule::Margin(10.0), "the esophagus expanded by 10 mm in 3D";
    "esophagus_upper", Rule::Third(2), "the cranial third of the esophagus's contoured length";
    "esophagus_middle", Rule::Third(1), "the middle third of the esophagus's contoured length";
    "esophagus_lower", Rule::Third(0), "the caudal third of the esophagus's contoured length";
    "esophagus_ge20gy", Rule::Isodose(20.0, DoseKind::Physical), "esophagus voxels receiving at least 20 Gy (physical)";
    "esophagus_ge30gy", Rule::Isodose(30.0, DoseKind::Physical), "esophagus voxels receiving at least 30 Gy (physical)";
    "esophagus_ge40gy", Rule::Isodose(40.0, DoseKind::Physical), "esophagus voxels receiving at least 40 Gy (physical)";
    "esophagus_ge50gy", Rule::Isodose(50.0, DoseKind::Physical), "esophagus voxels receiving at least 50 Gy (physical)";
    "esophagus_ge20gy_eqd2", Rule::Isodose(20.0, DoseKind::Eqd2), "esophagus voxels receiving at least 20 Gy EQD2";
    "esophagus_ge30gy_eqd2", Rule::Isodose(30.0, DoseKind::Eqd2), "esophagus voxels receiving at least 30 Gy EQD2";
    "esophagus_ge40gy_eqd2", Rule::Isodose(40.0, DoseKind::Eqd2), "esophagus voxels receiving at least 40 Gy EQD2";
    "esophagus_ge50gy_eqd2", Rule::Isodose(50.0, DoseKind::Eqd2), "esophagus voxels receiving at least 50 Gy EQD2";
    "esophagus_circ30gy", Rule::Circumferential(30.0, DoseKind::Physical), "the esophagus on axial planes where its whole circumference (every esophagus voxel of the plane) receives at least 30 Gy (physical)";
    "esophagus_circ40gy", Rule::Circumferential(40.0, DoseKind::Physical), "the esophagus on axial planes where its whole circumference receives at least 40 Gy (physical)";
    "esophagus_circ50gy", Rule::Circumferential(50.0, DoseKind::Physical), "the esophagus on axial planes where its whole circumference receives at least 50 Gy (physical)";
    "esophagus_circ30gy_eqd2", Rule::Circumferential(30.0, DoseKind::Eqd2), "the esophagus on axial planes where its whole circumference receives at least 30 Gy EQD2";
    "esophagus_circ40gy_eqd2", Rule::Circumferential(40.0, DoseKind::Eqd2), "the esophagus on axial planes where its whole circumference receives at least 40 Gy EQD2";
    "esophagus_circ50gy_eqd2", Rule::Circumferential(50.0, DoseKind::Eqd2), "the esophagus on axial planes where its whole circumference receives at least 50 Gy EQD2";
    "esophagus_ptv10mm", Rule::NearPtv(10.0), "esophagus voxels within 10 mm of the PTV";
    "esophagus_infield", Rule::InField, "esophagus voxels on axial planes that hold PTV voxels";
}

/// The candidate called `name`.
pub fn candidate(name: &str) -> Option<&'static Candidate> {
    CANDIDATES.iter().find(|c| c.name == name)
}

impl Candidate {
    /// Where the candidate can lie at all: the esophagus, grown by the
    /// margin for margin rules. A learned ROI is kept inside it.
    pub fn support(&self, p: &PatientDose) -> Vec<bool> {
        match self.rule {
            Rule::Margin(mm) => dilate(&p.esophagus, p.dims(), p.spacing, mm),
            _ => p.esophagus.clone(),
        }
    }

    /// The candidate's mask on the patient's grid. `None` when it cannot be
    /// defined for this patient (EQD2 without a fraction count, a PTV rule
    /// without a PTV); an empty mask is a valid, empty region.
    pub fn mask(&self, p: &PatientDose) -> Option<Vec<bool>> {
        let dims = p.dims();
        let eso = &p.esophagus;
        Some(match self.rule {
            Rule::Whole => eso.clone(),
            Rule::Margin(mm) => dilate(eso, dims, p.spacing, mm),
            Rule::Third(t) => {
                let plane = dims[1] * dims[2];
                let planes: Vec<usize> = (0..dims[0])
                    .filter(|&k| eso[k * plane..(k + 1) * plane].iter().any(|&m| m))
                    .collect();
                let (first, last) = (*planes.first()?, *planes.last()?);
                let n = last - first + 1;
                eso.iter()
                    .enumerate()
                    .map(|(i, &m)| m && 3 * (i / plane - first) / n == t)
                    .collect()
            }
            Rule::Isodose(gy, kind) => {
                let dose = p.dose(kind)?;
                eso.iter()
                    .zip(dose)
                    .map(|(&m, &d)| m && f64::from(d) >= gy)
                    .collect()
            }
            Rule::Circumferential(gy, kind) => {
                // A plane counts when the lowest dose over its esophagus
                // voxels reaches the level: the whole cross-section, not a
                // part of it, is exposed.
                let dose = p.dose(kind)?;
                let plane = dims[1] * dims[2];
                let whole: Vec<bool> = (0..dims[0])
                    .map(|k| {
                        let span = k * plane..(k + 1) * plane;
                        let mut inside = eso[span.clone()]
                            .iter()
                            .zip(&dose[span])
                            .filter(|(&m, _)| m)
                            .peekable();
                        inside.peek().is_some() && inside.all(|(_, &d)| f64::from(d) >= gy)
                    })
                    .collect();
                eso.iter()
                    .enumerate()
                    .map(|(i, &m)| m && whole[i / plane])
                    .collect()
            }
            Rule::NearPtv(mm) => {
                let near = dilate(p.ptv.as_ref()?, dims, p.spacing, mm);
                eso.iter().zip(&near).map(|(&a, &b)| a && b).collect()
            }
            Rule::InField => {
                let ptv = p.ptv.as_ref()?;
                let plane = dims[1] * dims[2];
                let in_field: Vec<bool> = (0..dims[0])
                    .map(|k| ptv[k * plane..(k + 1) * plane].iter().any(|&m| m))
                    .collect();
                eso.iter()
                    .enumerate()
                    .map(|(i, &m)| m && in_field[i / plane])
                    .collect()
            }
        })
    }
}

/// `mask` grown by `mm` in 3D (Euclidean, physical spacing): every voxel
/// whose centre lies within `mm` of a mask voxel's centre. Only boundary
/// voxels are spread, so the cost follows the surface, not the volume.
pub fn dilate(mask: &[bool], dims: [usize; 3], spacing: [f64; 3], mm: f64) -> Vec<bool> {
    let [nz, ny, nx] = dims;
    let r = [
        (mm / spacing[0]).floor() as i64,
        (mm / spacing[1]).floor() as i64,
        (mm / spacing[2]).floor() as i64,
    ];
    let mut ball = Vec::new();
    for dz in -r[0]..=r[0] {
        for dy in -r[1]..=r[1] {
            for dx in -r[2]..=r[2] {
                let d2 = (dz as f64 * spacing[0]).powi(2)
                    + (dy as f64 * spacing[1]).powi(2)
                    + (dx as f64 * spacing[2]).powi(2);
                if d2 <= mm * mm + 1e-9 {
                    ball.push([dz, dy, dx]);
                }
            }
        }
    }
    let mut out = mask.to_vec();
    let at = |z: i64, y: i64, x: i64| -> Option<usize> {
        (z >= 0 && y >= 0 && x >= 0 && (z as usize) < nz && (y as usize) < ny && (x as usize) < nx)
            .then(|| (z as usize * ny + y as usize) * nx + x as usize)
    };
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let (z, y, x) = (
            (i / (nx * ny)) as i64,
            ((i / nx) % ny) as i64,
            (i % nx) as i64,
        );
        let interior = [
            (1, 0, 0),
            (-1, 0, 0),
            (0, 1, 0),
            (0, -1, 0),
            (0, 0, 1),
            (0, 0, -1),
        ]
        .iter()
        .all(|(a, b, c)| at(z + a, y + b, x + c).is_some_and(|j| mask[j]));
        if interior {
            continue;
        }
        for [a, b, c] in &ball {
            if let Some(j) = at(z + a, y + b, x + c) {
                out[j] = true;
            }
        }
    }
    out
}

/// Dice similarity of two masks of equal length (1 when both are empty).
pub fn dice(a: &[bool], b: &[bool]) -> f64 {
    let (mut both, mut na, mut nb) = (0usize, 0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        na += usize::from(x);
        nb += usize::from(y);
        both += usize::from(x && y);
    }
    if na + nb == 0 {
        1.0
    } else {
        2.0 * both as f64 / (na + nb) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grid whose spacing says it spans kilometres is refused before the
    /// resampled grid is allocated; a thorax-sized one is resampled.
    #[test]
    fn isotropic_grids_are_bounded() {
        let thorax = Grid::uniform([0.0; 3], [4.0, 4.0, 4.0], [120, 90, 100]);
        let g = isotropic(&thorax, 2.5).expect("thorax");
        assert_eq!((g.nx, g.ny, g.nz()), (191, 143, 159));
        let far = Grid::uniform([0.0; 3], [1e6, 1e6, 4.0], [48, 48, 56]);
        let e = isotropic(&far, 2.5).expect_err("kilometres");
        assert!(e.0.contains("more than a patient"), "{e}");
    }

    #[test]
    fn dilation_by_a_margin_is_a_ball() {
        let dims = [9, 9, 9];
        let mut m = vec![false; 729];
        m[(4 * 9 + 4) * 9 + 4] = true;
        let d = dilate(&m, dims, [1.0, 1.0, 1.0], 2.0);
        // Lattice points within radius 2 of the centre: 33.
        assert_eq!(d.iter().filter(|&&v| v).count(), 33);
        // Anisotropic spacing: 3 mm planes, 2 mm margin stays in-plane.
        let d = dilate(&m, dims, [3.0, 1.0, 1.0], 2.0);
        assert_eq!(d.iter().filter(|&&v| v).count(), 13);
    }

    #[test]
    fn circumferential_rule_takes_whole_planes() {
        // Three planes of 4 × 4, the esophagus 2 × 2 in each. Plane 0 gets
        // 55 Gy everywhere, plane 1 on three of its four esophagus voxels,
        // plane 2 none.
        let mut esophagus = vec![false; 48];
        let mut physical = vec![0.0f32; 48];
        for k in 0..3 {
            for (j, i) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
                esophagus[(k * 4 + j) * 4 + i] = true;
            }
        }
        for v in &mut physical[0..16] {
            *v = 55.0;
        }
        for (j, i) in [(1, 1), (1, 2), (2, 1)] {
            physical[(4 + j) * 4 + i] = 55.0;
        }
        let p = PatientDose::for_test(
            Grid::uniform([0.0; 3], [1.0, 1.0, 3.0], [4, 4, 3]),
            [3.0, 1.0, 1.0],
            physical,
            esophagus,
        );
        let circ = candidate("esophagus_circ50gy").and_then(|c| c.mask(&p));
        let circ = circ.unwrap_or_default();
        let planes: Vec<usize> = (0..3)
            .map(|k| circ[k * 16..(k + 1) * 16].iter().filter(|&&m| m).count())
            .collect();
        assert_eq!(planes, [4, 0, 0]);
        // The isodose rule, by contrast, keeps the partly covered plane.
        let iso = candidate("esophagus_ge50gy").and_then(|c| c.mask(&p));
        assert_eq!(iso.unwrap_or_default().iter().filter(|&&m| m).count(), 7);
        // No EQD2 without the fractions: the EQD2 variant is undefined.
        assert!(candidate("esophagus_circ50gy_eqd2")
            .and_then(|c| c.mask(&p))
            .is_none());
    }

    /// A plan scaled by 5 %: every dose moves, the EQD2 is computed again
    /// from the scaled dose (not scaled itself), and the isodose candidates
    /// take in the voxels that crossed their level.
    #[test]
    fn a_scaled_dose_moves_the_isodose_regions() {
        let mut p = PatientDose::for_test(
            Grid::uniform([0.0; 3], [1.0, 1.0, 1.0], [3, 1, 1]),
            [1.0, 1.0, 1.0],
            vec![20.0, 38.5, 45.0],
            vec![true; 3],
        );
        p.fractions = Some(30);
        p.eqd2 = Some(dvh::eqd2_grid(&p.physical, 30.0, 10.0));
        let ge40 = |p: &PatientDose| {
            candidate("esophagus_ge40gy")
                .and_then(|c| c.mask(p))
                .unwrap_or_default()
        };
        assert_eq!(ge40(&p), [false, false, true]);
        let hot = p.scaled(1.05, 10.0);
        assert_eq!(hot.physical, [21.0, 40.425, 47.25]);
        assert_eq!(ge40(&hot), [false, true, true]);
        let eqd2 = hot.eqd2.as_deref().unwrap_or_default();
        let expected = dvh::eqd2_grid(&hot.physical, 30.0, 10.0);
        assert_eq!(eqd2, expected.as_slice());
        // 47.25 Gy in 30 fractions: 1.575 Gy each, EQD2 below the dose.
        assert!((f64::from(eqd2[2]) - 47.25 * (1.575 + 10.0) / 12.0).abs() < 1e-3);
        assert_eq!(hot.esophagus, p.esophagus);
    }

    #[test]
    fn dice_counts_overlap() {
        assert_eq!(dice(&[true, true, false], &[true, false, false]), 2.0 / 3.0);
        assert_eq!(dice(&[false], &[false]), 1.0);
    }
}
