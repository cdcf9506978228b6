//! A physically shaped dose around the PTV: conformal core with a penumbra,
//! an intermediate-dose spill and a long low-dose bath (IMRT/VMAT) or
//! MLC-shaped fields (3D-CRT), partial sparing of the esophagus outside the
//! target and, in far-wall plans, of its far wall inside the target too.

use super::anatomy::Anatomy;
use crate::rt::dvh::normal_cdf;
use crate::rt::grid::Grid;
use crate::rt::write::Technique;

/// Dose-shaping parameters of one plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DoseShape {
    pub technique: Technique,
    pub sbrt: bool,
    /// Gantry angles (degrees) of 3D-CRT fields.
    pub angles: Vec<f64>,
    /// Fraction of the dose outside the target taken off the esophagus.
    pub sparing: f64,
    /// Sparing only the esophageal wall away from the target.
    pub far_wall_only: bool,
    /// With far-wall sparing, the relative dose the far wall is held to
    /// inside the PTV as well (the esophagus carved out of the optimisation
    /// target: a cold spot at the target's edge that keeps the mean dose up
    /// but breaks the full-circumference high dose).
    pub far_wall_cap: f64,
    /// Scales the intermediate-dose spill around the PTV: its height and its
    /// reach (conformity, arc and beam geometry).
    pub spill_scale: f64,
    pub spill_reach: f64,
    /// Scales the low-dose bath's height and reach (planner and patient
    /// dependent: arc geometry, number of beams, optimisation priorities).
    pub bath_scale: f64,
    pub bath_reach: f64,
}

/// Dose in Gy on `grid` for prescription `rx`.
pub fn compute(grid: &Grid, a: &Anatomy, shape: &DoseShape, rx: f64) -> Vec<f32> {
    // Penumbra σ (mm); intermediate-dose spill just outside the PTV (height,
    // reach in mm); low-dose bath from the beams' entrance and exit paths
    // (height, reach in mm).
    let (sigma, spill0, spill_reach, bath0, bath_reach) = match (shape.sbrt, shape.technique) {
        (true, _) => (2.5, 0.30, 10.0, 0.06, 40.0),
        (false, Technique::Vmat) => (3.5, 0.40, 22.0, 0.30, 200.0),
        (false, Technique::Imrt) => (3.0, 0.36, 18.0, 0.25, 180.0),
        (false, Technique::Conformal3d) => (4.5, 0.10, 55.0, 0.14, 180.0),
    };
    let (spill0, spill_reach) = (spill0 * shape.spill_scale, spill_reach * shape.spill_reach);
    let (bath0, bath_reach) = (bath0 * shape.bath_scale, bath_reach * shape.bath_reach);
    let ptv = a.ptv;
    let c = ptv.c;
    // 3D-CRT apertures: the PTV's beam's-eye-view outline plus a 7 mm
    // block/MLC margin. Per beam: direction and the aperture's half-width
    // at the PTV's mid-height.
    let l_half = ptv.r[2] + 7.0;
    let beams: Vec<(f64, f64, f64)> = shape
        .angles
        .iter()
        .map(|g| {
            let t = g.to_radians();
            // Gantry 0 irradiates from anterior (−y) towards +y.
            let (ux, uy) = (t.sin(), t.cos());
            let w = (ptv.r[0] * uy).hypot(ptv.r[1] * ux) + 7.0;
            (ux, uy, w)
        })
        .collect();
    let mut gy = vec![0f32; grid.len()];
    for (k, z) in grid.z.iter().enumerate() {
        let (ex, ey) = a.esophagus.centre(*z);
        let eso_in_z = *z <= a.esophagus.z_top + 5.0 && *z >= a.esophagus.z_bottom - 5.0;
        for j in 0..grid.ny {
            let y = grid.y(j);
            for i in 0..grid.nx {
                let x = grid.x(i);
                if (x / a.body.0).powi(2) + (y / a.body.1).powi(2) > 1.0 {
                    continue;
                }
                let p = [x, y, *z];
                let sd = ptv.signed_distance(p);
                let core = 1.0 - normal_cdf(sd / sigma);
                let mut rel = if shape.technique == Technique::Conformal3d && !shape.sbrt {
                    let mut sum = 0.0;
                    let (dx, dy, dz) = (x - c[0], y - c[1], z - c[2]);
                    // The aperture narrows with the PTV towards its ends.
                    let taper = (1.0 - (dz / l_half).powi(2)).max(0.0).sqrt();
                    for (ux, uy, w_half) in &beams {
                        let perp = (dx * uy - dy * ux).abs();
                        let depth = dx * ux + dy * uy;
                        let infield = normal_cdf((w_half * taper - perp) / 4.0)
                            * normal_cdf((l_half - dz.abs()) / 4.0);
                        sum += infield * (-0.0045 * depth).exp();
                    }
                    let fields = sum / beams.len().max(1) as f64;
                    fields.max(core)
                        + spill0 * (-sd.max(0.0) / spill_reach).exp()
                        + bath0 * (-sd.max(0.0) / bath_reach).exp()
                } else {
                    let out = sd.max(0.0);
                    let spill = spill0 * (-out / spill_reach).exp();
                    core + (1.0 - core) * (spill + bath0 * (-out / bath_reach).exp()).min(0.9)
                };
                // Optimisation takes dose off the esophagus outside the PTV
                // and, with far-wall sparing, off its far wall inside it.
                if eso_in_z {
                    let re = ((x - ex) / a.esophagus.rx).hypot((y - ey) / a.esophagus.ry);
                    if re < 1.6 {
                        let fade = ((1.6 - re) / 0.6).clamp(0.0, 1.0);
                        // Signed distance (mm) along the esophagus-to-target
                        // direction: negative on the far wall.
                        let (tx, ty) = (c[0] - ex, c[1] - ey);
                        let along = ((x - ex) * tx + (y - ey) * ty) / tx.hypot(ty).max(1e-6);
                        if shape.far_wall_only && sd <= 0.0 && rel > shape.far_wall_cap {
                            let far = normal_cdf(-along / 2.0);
                            rel -= far * fade * (rel - shape.far_wall_cap);
                        }
                        if shape.sparing > 0.0 && sd > 0.0 {
                            // Far-wall sparing is a deliberate, strong objective.
                            let wall = match (shape.far_wall_only, along < 0.0) {
                                (true, true) => 1.6,
                                (true, false) => 0.15,
                                _ => 1.0,
                            };
                            rel *= 1.0 - (shape.sparing * wall).min(0.9) * fade * (1.0 - core);
                        }
                    }
                }
                gy[grid.index(i, j, k)] = (rx * rel) as f32;
            }
        }
    }
    gy
}
