//! Dose-volume histograms and the metrics computed from them.
//!
//! A DVH is built from the ROI's sample points (the same n³ points per voxel
//! that make the fractional-occupancy mask): each inside point carries its
//! share of the voxel's volume and the dose interpolated at that point. The
//! doses are binned every 0.01 Gy and each bin spread over the interval to
//! its neighbours, so the cumulative DVH is continuous and D2cc, D_x% and
//! V_x read from it carry no more than that binning.

use serde::Serialize;

use super::grid::Grid;
use super::structure::Roi;

/// Voxel doses with their volumes, sorted by dose, descending.
#[derive(Debug, Clone, Default)]
pub struct DoseVolume {
    /// (dose Gy, volume cm³), hottest first.
    pub points: Vec<(f64, f64)>,
    pub volume_cc: f64,
    /// Volume of the ROI outside the dose grid (counted as 0 Gy).
    pub outside_cc: f64,
    /// Mean computed from unbinned doses, when known.
    pub exact_mean: Option<f64>,
}

impl DoseVolume {
    /// From the ROI's sample points (n³ per voxel) with the dose
    /// interpolated at each point, binned every 0.01 Gy (the mean, minimum
    /// and maximum are exact). Points outside the dose grid count as 0 Gy.
    ///
    /// The samples are laid out on `grid`; the dose is interpolated on
    /// `dose_grid` (they may differ, e.g. a grid extended to cover the ROI).
    pub fn from_samples(
        roi: &Roi,
        grid: &Grid,
        dose_grid: &Grid,
        dose: &[f32],
        n: usize,
    ) -> DoseVolume {
        const BIN: f64 = 0.01;
        let n = n.max(1);
        let mut bins: Vec<f64> = Vec::new();
        let (mut total, mut outside) = (0.0, 0.0);
        let (mut sum, mut lo, mut hi) = (0.0, f64::MAX, f64::MIN);
        let per_sample: Vec<f64> = (0..grid.nz())
            .map(|k| grid.voxel_cc(k) / (n * n * n) as f64)
            .collect();
        roi.for_each_sample(grid, n, |k, x, y, z| {
            let v = per_sample[k];
            let d = match dose_grid.interpolate(dose, x, y, z) {
                Some(d) => d.max(0.0),
                None => {
                    outside += v;
                    0.0
                }
            };
            let b = (d / BIN).round() as usize;
            if b >= bins.len() {
                bins.resize(b + 1, 0.0);
            }
            bins[b] += v;
            total += v;
            sum += d * v;
            lo = lo.min(d);
            hi = hi.max(d);
        });
        let mut points: Vec<(f64, f64)> = bins
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, v)| **v > 0.0)
            .map(|(b, v)| (b as f64 * BIN, *v))
            .collect();
        // Exact extremes at the ends of the binned list.
        if let Some(first) = points.first_mut() {
            first.0 = hi;
        }
        if let Some(last) = points.last_mut() {
            last.0 = lo;
        }
        DoseVolume {
            points,
            volume_cc: total,
            outside_cc: outside,
            exact_mean: (total > 0.0).then(|| sum / total),
        }
    }

    /// The same DVH with every dose mapped by a monotonic function (EQD2).
    pub fn map_dose(&self, f: impl Fn(f64) -> f64) -> DoseVolume {
        let points: Vec<(f64, f64)> = self.points.iter().map(|(d, v)| (f(*d), *v)).collect();
        DoseVolume {
            points,
            volume_cc: self.volume_cc,
            outside_cc: self.outside_cc,
            exact_mean: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn mean(&self) -> f64 {
        if let Some(m) = self.exact_mean {
            return m;
        }
        if self.volume_cc <= 0.0 {
            return 0.0;
        }
        self.points.iter().map(|(d, v)| d * v).sum::<f64>() / self.volume_cc
    }

    pub fn max(&self) -> f64 {
        self.points.first().map(|p| p.0).unwrap_or(0.0)
    }

    pub fn min(&self) -> f64 {
        self.points.last().map(|p| p.0).unwrap_or(0.0)
    }

    /// The dose interval each point stands for: halfway to its neighbours
    /// (the hottest point reaches up to itself, the coldest down to itself).
    /// Spreading each point's volume uniformly over its interval makes the
    /// DVH continuous, as the underlying dose is.
    fn interval(&self, i: usize) -> (f64, f64) {
        let d = self.points[i].0;
        let hi = if i == 0 {
            d
        } else {
            (self.points[i - 1].0 + d) / 2.0
        };
        let lo = self.points.get(i + 1).map(|p| (p.0 + d) / 2.0).unwrap_or(d);
        (lo, hi)
    }

    /// Minimum dose to the hottest `cc` cm³ (D2cc with cc = 2).
    pub fn d_cc(&self, cc: f64) -> f64 {
        let mut acc = 0.0;
        for (i, (_, v)) in self.points.iter().enumerate() {
            if acc + v >= cc - 1e-12 {
                let (lo, hi) = self.interval(i);
                let t = if *v > 0.0 {
                    ((cc - acc) / v).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                return hi - t * (hi - lo);
            }
            acc += v;
        }
        self.min()
    }

    /// Minimum dose to the hottest `pct` % of the volume (D_x%).
    pub fn d_pct(&self, pct: f64) -> f64 {
        self.d_cc(self.volume_cc * pct / 100.0)
    }

    /// Volume (cm³) receiving at least `gy`.
    pub fn v_gy_cc(&self, gy: f64) -> f64 {
        let mut total = 0.0;
        for (i, (_, v)) in self.points.iter().enumerate() {
            let (lo, hi) = self.interval(i);
            if lo >= gy {
                total += v;
            } else if hi > gy {
                total += v * (hi - gy) / (hi - lo);
            } else if hi == gy && lo == gy {
                total += v;
            } else {
                break;
            }
        }
        total
    }

    /// Share (%) of the volume receiving at least `gy`.
    pub fn v_gy_pct(&self, gy: f64) -> f64 {
        if self.volume_cc <= 0.0 {
            return 0.0;
        }
        100.0 * self.v_gy_cc(gy) / self.volume_cc
    }

    /// Generalised EUD, (Σ vᵢ Dᵢᵃ / V)^(1/a).
    pub fn geud(&self, a: f64) -> f64 {
        if self.volume_cc <= 0.0 {
            return 0.0;
        }
        if a == 0.0 {
            // The geometric mean.
            let l = self
                .points
                .iter()
                .map(|(d, v)| v * d.max(1e-9).ln())
                .sum::<f64>()
                / self.volume_cc;
            return l.exp();
        }
        let s = self
            .points
            .iter()
            .map(|(d, v)| v * d.max(0.0).powf(a))
            .sum::<f64>()
            / self.volume_cc;
        s.powf(1.0 / a)
    }

    /// Lyman–Kutcher–Burman NTCP: Φ((gEUD(1/n) − TD50) / (m·TD50)).
    pub fn lkb_ntcp(&self, td50: f64, m: f64, n: f64) -> f64 {
        let t = (self.geud(1.0 / n) - td50) / (m * td50);
        normal_cdf(t)
    }

    /// Cumulative DVH sampled every `step` Gy: (dose, % of volume ≥ dose).
    pub fn cumulative(&self, step: f64) -> Vec<(f64, f64)> {
        let top = self.max();
        let mut out = Vec::new();
        let mut d = 0.0;
        while d <= top + step {
            out.push((d, self.v_gy_pct(d)));
            d += step;
        }
        out
    }

    /// The usual metrics in one struct.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            volume_cc: self.volume_cc,
            outside_dose_grid_cc: self.outside_cc,
            mean_gy: self.mean(),
            min_gy: self.min(),
            max_gy: self.max(),
            d2cc_gy: self.d_cc(2.0),
            d98_gy: self.d_pct(98.0),
            d95_gy: self.d_pct(95.0),
            d50_gy: self.d_pct(50.0),
            d2_gy: self.d_pct(2.0),
            v5_pct: self.v_gy_pct(5.0),
            v20_pct: self.v_gy_pct(20.0),
            v35_pct: self.v_gy_pct(35.0),
            v50_pct: self.v_gy_pct(50.0),
            v60_pct: self.v_gy_pct(60.0),
            v70_pct: self.v_gy_pct(70.0),
            v35_cc: self.v_gy_cc(35.0),
            v50_cc: self.v_gy_cc(50.0),
            v60_cc: self.v_gy_cc(60.0),
        }
    }
}

/// The metrics shown for every structure.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub volume_cc: f64,
    pub outside_dose_grid_cc: f64,
    pub mean_gy: f64,
    pub min_gy: f64,
    pub max_gy: f64,
    pub d2cc_gy: f64,
    pub d98_gy: f64,
    pub d95_gy: f64,
    pub d50_gy: f64,
    pub d2_gy: f64,
    pub v5_pct: f64,
    pub v20_pct: f64,
    pub v35_pct: f64,
    pub v50_pct: f64,
    pub v60_pct: f64,
    /// QUANTEC's V70 (< 20 % for the esophagus).
    pub v70_pct: f64,
    pub v35_cc: f64,
    pub v50_cc: f64,
    pub v60_cc: f64,
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 on erf; |error| < 1.5e-7).
pub fn normal_cdf(t: f64) -> f64 {
    let x = t / std::f64::consts::SQRT_2;
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let k = 1.0 / (1.0 + 0.327_591_1 * x);
    let y = 1.0
        - (((((1.061_405_429 * k - 1.453_152_027) * k) + 1.421_413_741) * k - 0.284_496_736) * k
            + 0.254_829_592)
            * k
            * (-x * x).exp();
    0.5 * (1.0 + sign * y)
}

/// EQD2 of a total dose `d` given in `n` fractions: D (d/n + α/β) / (2 + α/β).
pub fn eqd2(total: f64, fractions: f64, alpha_beta: f64) -> f64 {
    if fractions <= 0.0 {
        return total;
    }
    total * (total / fractions + alpha_beta) / (2.0 + alpha_beta)
}

/// EQD2 of every voxel of a dose grid.
pub fn eqd2_grid(dose: &[f32], fractions: f64, alpha_beta: f64) -> Vec<f32> {
    dose.iter()
        .map(|d| eqd2(f64::from(*d), fractions, alpha_beta) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dv(points: Vec<(f64, f64)>) -> DoseVolume {
        let mut points = points;
        points.sort_by(|a, b| b.0.total_cmp(&a.0));
        DoseVolume {
            volume_cc: points.iter().map(|p| p.1).sum(),
            points,
            outside_cc: 0.0,
            exact_mean: None,
        }
    }

    #[test]
    fn metrics_on_a_simple_histogram() {
        // 10 cc at 10 Gy, 5 cc at 30 Gy, 5 cc at 60 Gy; each spread over
        // the interval halfway to its neighbours: [45, 60], [20, 45], [10, 20].
        let d = dv(vec![(10.0, 10.0), (30.0, 5.0), (60.0, 5.0)]);
        assert!((d.mean() - (100.0 + 150.0 + 300.0) / 20.0).abs() < 1e-9);
        assert_eq!(d.max(), 60.0);
        assert_eq!(d.min(), 10.0);
        assert!((d.d_cc(2.0) - 54.0).abs() < 1e-9);
        assert!((d.d_cc(5.0) - 45.0).abs() < 1e-9);
        assert!((d.d_cc(7.5) - 32.5).abs() < 1e-9);
        assert!((d.d_pct(50.0) - 20.0).abs() < 1e-9);
        assert!((d.v_gy_cc(30.0) - 8.0).abs() < 1e-9);
        assert!((d.v_gy_pct(30.0) - 40.0).abs() < 1e-9);
        assert!((d.v_gy_cc(50.0) - 5.0 * 10.0 / 15.0).abs() < 1e-9);
        assert!((d.v_gy_cc(0.0) - 20.0).abs() < 1e-9);
        // Monotonic and continuous in between.
        let mut last = f64::MAX;
        for i in 0..700 {
            let v = d.v_gy_cc(i as f64 * 0.1);
            assert!(v <= last + 1e-12);
            last = v;
        }
        assert!((d.geud(1.0) - d.mean()).abs() < 1e-9);
        assert!((d.geud(100.0) - 60.0).abs() < 1.0);
    }

    #[test]
    fn lkb_and_eqd2() {
        // gEUD equal to TD50 gives 50 %.
        let d = dv(vec![(40.0, 1.0)]);
        assert!((d.lkb_ntcp(40.0, 0.1, 1.0) - 0.5).abs() < 1e-6);
        assert!((normal_cdf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((normal_cdf(-1.96) - 0.024_997_9).abs() < 1e-6);
        // 60 Gy in 30 fractions is 60 Gy EQD2; 50 Gy in 5 fractions, α/β 10, is 83.3 Gy.
        assert!((eqd2(60.0, 30.0, 10.0) - 60.0).abs() < 1e-9);
        assert!((eqd2(50.0, 5.0, 10.0) - 50.0 * 20.0 / 12.0).abs() < 1e-9);
        // Per voxel, with the fractions of the plan.
        let grid = eqd2_grid(&[0.0, 30.0, 60.0], 30.0, 10.0);
        assert_eq!(grid[0], 0.0);
        assert!(
            (f64::from(grid[1]) - 27.5).abs() < 1e-5 && (f64::from(grid[2]) - 60.0).abs() < 1e-5
        );
    }
}
