//! A study's dose, structures and DVH metrics, ready to show or score.
//!
//! The structures are rasterised on the dose grid, extended where an organ
//! reaches beyond it, so that the part of an organ outside the dose grid is
//! counted (at 0 Gy) and reported instead of silently dropped.

use serde::Serialize;

use super::dvh::{self, DoseVolume, Metrics};
use super::grid::Grid;
use super::names::{self, Match, Organ};
use super::structure::Roi;
use super::study::Study;

/// Settings of the analysis.
#[derive(Debug, Clone)]
pub struct Options {
    /// α/β for EQD2, Gy.
    pub alpha_beta: f64,
    /// Samples per voxel edge for the fractional mask.
    pub supersampling: usize,
    /// DVHs for every ROI with contours, not only the recognised organs.
    pub all_rois: bool,
    /// Only these organs (the scoring job needs the esophagus alone, and the
    /// body and lungs cost most of the time); `None`: all recognised.
    pub organs: Option<Vec<Organ>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            alpha_beta: 10.0,
            supersampling: 4,
            all_rois: false,
            organs: None,
        }
    }
}

/// ROI number given to a union built here (never a real ROI's number).
pub const UNION_ROI_NUMBER: i64 = -1;

/// LKB parameters for grade ≥ 2 acute esophagitis (Belderbos et al. 2005:
/// TD50 47 Gy, m 0.36, n 0.69), applied to the EQD2 dose.
pub const LKB_ESOPHAGITIS: Lkb = Lkb {
    td50_gy: 47.0,
    m: 0.36,
    n: 0.69,
    source: "Belderbos et al. 2005",
};

/// Lyman–Kutcher–Burman model parameters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lkb {
    pub td50_gy: f64,
    pub m: f64,
    pub n: f64,
    pub source: &'static str,
}

/// A published NTCP for one structure, for reference.
#[derive(Debug, Clone, Serialize)]
pub struct Ntcp {
    pub model: Lkb,
    /// gEUD with a = 1/n (Gy).
    pub geud_gy: f64,
    pub ntcp: f64,
    /// "EQD2" or "physical".
    pub dose: &'static str,
}

/// DVH results for one structure.
#[derive(Debug, Clone, Serialize)]
pub struct StructureDvh {
    pub organ: Option<Organ>,
    pub roi_number: i64,
    pub roi_name: String,
    pub physical: Metrics,
    /// The same metrics on the EQD2 dose (when fractions are known).
    pub eqd2: Option<Metrics>,
    /// Published LKB NTCP (esophagus only), for reference.
    pub lkb: Option<Ntcp>,
    /// Cumulative DVH, physical dose: (Gy, % volume ≥ Gy), 200 steps up to
    /// the maximum (0.01 to 0.5 Gy apart).
    pub curve: Vec<(f64, f64)>,
    #[serde(skip)]
    pub dose_volume: DoseVolume,
}

/// Everything `esorisk inspect` shows.
#[derive(Debug, Serialize)]
pub struct Analysis {
    pub grid: Grid,
    pub matches: Vec<Match>,
    pub structures: Vec<StructureDvh>,
    pub alpha_beta: f64,
    pub fractions: Option<u32>,
    pub notes: Vec<String>,
}

impl serde::Serialize for Grid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Grid", 6)?;
        st.serialize_field(
            "origin_mm",
            &[self.x0, self.y0, self.z.first().copied().unwrap_or(0.0)],
        )?;
        st.serialize_field(
            "spacing_mm",
            &[
                self.dx,
                self.dy,
                if self.z.len() > 1 {
                    self.z[1] - self.z[0]
                } else {
                    0.0
                },
            ],
        )?;
        st.serialize_field("size", &[self.nx, self.ny, self.z.len()])?;
        st.serialize_field(
            "uniform_z",
            &self
                .z
                .windows(2)
                .all(|w| ((w[1] - w[0]) - (self.z[1] - self.z[0])).abs() < 1e-3),
        )?;
        st.end()
    }
}

/// Voxels a grid covering the structures may add to the dose grid's own.
/// Structures that reach further lie in another place than the dose (a
/// damaged position or spacing), and a grid over both would not fit in
/// memory: 2^25 voxels is a 2.5 mm grid of 80 cm each way.
pub const MAX_EXTRA_VOXELS: f64 = (1u64 << 25) as f64;

/// A grid with the dose grid's spacing that covers the dose grid and `rois`,
/// or why there is none.
pub fn analysis_grid(dose: &Grid, rois: &[&Roi]) -> Result<Grid, String> {
    let [(mut xmin, mut xmax), (mut ymin, mut ymax), (mut zmin, mut zmax)] = dose.extent();
    let (x_in, y_in, z_in) = ((xmin, xmax), (ymin, ymax), (zmin, zmax));
    for r in rois {
        for p in &r.planes {
            zmin = zmin.min(p.z);
            zmax = zmax.max(p.z);
            for pt in p.polygons.iter().flatten() {
                xmin = xmin.min(pt[0]);
                xmax = xmax.max(pt[0]);
                ymin = ymin.min(pt[1]);
                ymax = ymax.max(pt[1]);
            }
        }
    }
    if (xmin, xmax) == x_in && (ymin, ymax) == y_in && (zmin, zmax) == z_in {
        return Ok(dose.clone());
    }
    // Extend by whole voxels so the dose grid's own voxels stay aligned.
    // Counted in f64 first: a far-off structure must not overflow them.
    let steps = |from: f64, to: f64, d: f64| ((to - from) / d).ceil().max(0.0) + 1.0;
    let dz = if dose.z.len() > 1 {
        dose.dz(0).min(dose.dz(dose.z.len() - 1))
    } else {
        dose.dx
    };
    let [ax, bx, ay, by, az, bz] = [
        steps(xmin, x_in.0, dose.dx),
        steps(x_in.1, xmax, dose.dx),
        steps(ymin, y_in.0, dose.dy),
        steps(y_in.1, ymax, dose.dy),
        steps(zmin, z_in.0, dz),
        steps(z_in.1, zmax, dz),
    ];
    let voxels =
        (dose.nx as f64 + ax + bx) * (dose.ny as f64 + ay + by) * (dose.nz() as f64 + az + bz);
    if voxels.is_nan() || voxels > dose.len() as f64 + MAX_EXTRA_VOXELS {
        let beyond = [
            x_in.0 - xmin,
            xmax - x_in.1,
            y_in.0 - ymin,
            ymax - y_in.1,
            z_in.0 - zmin,
            zmax - z_in.1,
        ]
        .into_iter()
        .fold(0.0f64, f64::max);
        return Err(format!(
            "the structures reach {} beyond the dose grid: dose and structures do not lie together",
            if beyond < 1e6 {
                format!("{beyond:.0} mm")
            } else {
                format!("{beyond:.1e} mm")
            }
        ));
    }
    let [ax, bx, ay, by, az, bz] = [ax, bx, ay, by, az, bz].map(|n| n as usize);
    let mut z: Vec<f64> = (1..=az).rev().map(|k| z_in.0 - k as f64 * dz).collect();
    z.extend(dose.z.iter().copied());
    z.extend((1..=bz).map(|k| z_in.1 + k as f64 * dz));
    Ok(Grid {
        x0: dose.x0 - ax as f64 * dose.dx,
        y0: dose.y0 - ay as f64 * dose.dy,
        dx: dose.dx,
        dy: dose.dy,
        nx: dose.nx + ax + bx,
        ny: dose.ny + ay + by,
        z,
    })
}

impl Analysis {
    /// An analysis that stops before the DVHs, saying why in `notes`.
    fn without_dvh(
        study: &Study,
        options: &Options,
        matches: Vec<Match>,
        notes: Vec<String>,
    ) -> Analysis {
        Analysis {
            grid: study.dose.grid.clone(),
            matches,
            structures: vec![],
            alpha_beta: options.alpha_beta,
            fractions: study.plan.as_ref().and_then(|p| p.fractions),
            notes,
        }
    }
}

/// Match organs, rasterise them and compute their DVHs.
pub fn analyse(study: &Study, options: &Options) -> Analysis {
    let mut notes = Vec::new();
    let Some(ss) = &study.structures else {
        let notes = vec!["no structure set: no DVH".into()];
        return Analysis::without_dvh(study, options, vec![], notes);
    };
    let mut matches = names::match_organs(&ss.rois);
    // Lungs contoured in halves: their union stands for the lungs.
    let lungs_union: Option<Roi> = if matches.iter().any(|m| m.organ == Organ::Lungs) {
        None
    } else {
        names::lung_halves(&ss.rois).map(|(l, r)| {
            let name = format!("{}+{}", l.info.name, r.info.name);
            matches.push(Match {
                organ: Organ::Lungs,
                roi_number: UNION_ROI_NUMBER,
                roi_name: name.clone(),
                reason: format!(
                    "no whole-lungs ROI; union of {:?} and {:?}",
                    l.info.name, r.info.name
                ),
                passed_over: vec![],
                tied: vec![],
            });
            Roi::union(l, r, UNION_ROI_NUMBER, &name)
        })
    };
    for organ in [Organ::Esophagus, Organ::Ptv] {
        if !matches.iter().any(|m| m.organ == organ) {
            notes.push(format!("no ROI recognised as {}", organ.label()));
        }
    }
    let mut chosen: Vec<(Option<Organ>, &Roi)> = matches
        .iter()
        .filter_map(|m| {
            ss.rois
                .iter()
                .chain(lungs_union.iter())
                .find(|r| r.info.number == m.roi_number)
                .map(|r| (Some(m.organ), r))
        })
        .filter(|(o, _)| {
            options
                .organs
                .as_ref()
                .is_none_or(|want| o.is_some_and(|o| want.contains(&o)))
        })
        .collect();
    if options.all_rois {
        for r in &ss.rois {
            if !r.planes.is_empty() && !chosen.iter().any(|(_, c)| c.info.number == r.info.number) {
                chosen.push((None, r));
            }
        }
    }
    let rois: Vec<&Roi> = chosen.iter().map(|(_, r)| *r).collect();
    let grid = match analysis_grid(&study.dose.grid, &rois) {
        Ok(g) => g,
        Err(why) => {
            notes.push(format!("{why}; no DVH"));
            return Analysis::without_dvh(study, options, matches, notes);
        }
    };
    if !grid.same_geometry(&study.dose.grid) {
        notes.push(
            "structures reach beyond the dose grid; the part outside is counted at 0 Gy".into(),
        );
    }
    let fractions = study.plan.as_ref().and_then(|p| p.fractions);
    if fractions.is_none() {
        notes.push("number of fractions unknown: no EQD2".into());
    }
    let structures = chosen
        .iter()
        .map(|(organ, r)| {
            let dv = DoseVolume::from_samples(
                r,
                &grid,
                &study.dose.grid,
                &study.dose.gy,
                options.supersampling,
            );
            let eq_dv =
                fractions.map(|n| dv.map_dose(|d| dvh::eqd2(d, f64::from(n), options.alpha_beta)));
            let eq = eq_dv.as_ref().map(|e| e.metrics());
            let lkb = (*organ == Some(Organ::Esophagus) && !dv.is_empty()).then(|| {
                let (basis, dose) = match &eq_dv {
                    Some(e) => (e, "EQD2"),
                    None => (&dv, "physical"),
                };
                let m = LKB_ESOPHAGITIS;
                Ntcp {
                    model: m,
                    geud_gy: basis.geud(1.0 / m.n),
                    ntcp: basis.lkb_ntcp(m.td50_gy, m.m, m.n),
                    dose,
                }
            });
            StructureDvh {
                organ: *organ,
                roi_number: r.info.number,
                roi_name: r.info.name.clone(),
                physical: dv.metrics(),
                eqd2: eq,
                lkb,
                curve: dv.cumulative((dv.max() / 200.0).clamp(0.01, 0.5)),
                dose_volume: dv,
            }
        })
        .collect();
    Analysis {
        grid,
        matches,
        structures,
        alpha_beta: options.alpha_beta,
        fractions,
        notes,
    }
}
