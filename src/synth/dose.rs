//! A physically shaped dose around the PTV: conformal core with a penumbra,
//! a low-dose bath (IMRT/VMAT) or beam-shaped fields (3D-CRT), and partial
//! sparing of the esophagus outside the target.

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
    /// Scales the low-dose bath's height and reach (planner and patient
    /// dependent: arc geometry, number of beams, optimisation priorities).
    pub bath_scale: f64,
    pub bath_reach: f64,
}

/// Dose in Gy on `grid` for prescription `rx`.
pub fn compute(grid: &Grid, a: &Anatomy, shape: &DoseShape, rx: f64) -> Vec<f32> {
    let (sigma, bath0, lambda) = match (shape.sbrt, shape.technique) {
        (true, _) => (2.5, 0.30, 18.0),
        (false, Technique::Vmat) => (3.5, 0.48, 110.0),
        (false, Technique::Imrt) => (3.0, 0.40, 90.0),
        (false, Technique::Conformal3d) => (4.5, 0.0, 55.0),
    };
    let (bath0, lambda) = (bath0 * shape.bath_scale, lambda * shape.bath_reach);
    let ptv = a.ptv;
    let c = ptv.c;
    // Field half-sizes for 3D-CRT: the PTV plus a 7 mm block margin.
    let w_half = ptv.r[0].max(ptv.r[1]) + 7.0;
    let l_half = ptv.r[2] + 7.0;
    let beams: Vec<(f64, f64)> = shape
        .angles
        .iter()
        .map(|g| {
            let t = g.to_radians();
            // Gantry 0 irradiates from anterior (−y) towards +y.
            (t.sin(), t.cos())
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
                    for (ux, uy) in &beams {
                        let (dx, dy, dz) = (x - c[0], y - c[1], z - c[2]);
                        let perp = (dx * uy - dy * ux).abs();
                        let depth = dx * ux + dy * uy;
                        let infield = normal_cdf((w_half - perp) / 4.0)
                            * normal_cdf((l_half - dz.abs()) / 4.0);
                        sum += infield * (-0.0045 * depth).exp();
                    }
                    let fields = sum / beams.len().max(1) as f64;
                    fields.max(core) + 0.10 * shape.bath_scale * (-sd.max(0.0) / lambda).exp()
                } else {
                    core + (1.0 - core) * bath0 * (-sd.max(0.0) / lambda).exp()
                };
                // Optimisation takes dose off the esophagus outside the PTV.
                if shape.sparing > 0.0 && eso_in_z && sd > 0.0 {
                    let re = ((x - ex) / a.esophagus.rx).hypot((y - ey) / a.esophagus.ry);
                    if re < 1.6 {
                        let far = (x - ex) * (c[0] - ex) + (y - ey) * (c[1] - ey) < 0.0;
                        // Far-wall sparing is a deliberate, strong objective.
                        let wall = match (shape.far_wall_only, far) {
                            (true, true) => 1.6,
                            (true, false) => 0.15,
                            _ => 1.0,
                        };
                        let fade = ((1.6 - re) / 0.6).clamp(0.0, 1.0);
                        rel *= 1.0 - (shape.sparing * wall).min(0.9) * fade * (1.0 - core);
                    }
                }
                gy[grid.index(i, j, k)] = (rx * rel) as f32;
            }
        }
    }
    gy
}
