//! Intensity-based feature families of IBSI-1 on dose grids: intensity-based
//! statistics (§3.3, raw values in the ROI), intensity histogram (§3.4,
//! discretised grey levels), intensity-volume histogram (§3.5) and local
//! intensity peaks (§3.2).
//!
//! Percentiles use linear interpolation between order statistics (numpy's
//! default, R type 7); this gives the IBSI phantom's 90th percentile of 4.

use super::volume::{Discretised, Feature, Volume};

/// Feature names of [`intensity_statistics`], in output order.
const STAT_NAMES: [&str; 20] = [
    "original_firstorder_Mean",
    "original_firstorder_Variance",
    "original_firstorder_Skewness",
    "original_firstorder_ExcessKurtosis",
    "original_firstorder_Kurtosis",
    "original_firstorder_Median",
    "original_firstorder_Minimum",
    "original_firstorder_10Percentile",
    "original_firstorder_90Percentile",
    "original_firstorder_Maximum",
    "original_firstorder_InterquartileRange",
    "original_firstorder_Range",
    "original_firstorder_MeanAbsoluteDeviation",
    "original_firstorder_RobustMeanAbsoluteDeviation",
    "original_firstorder_MedianAbsoluteDeviation",
    "original_firstorder_CoefficientOfVariation",
    "original_firstorder_QuartileCoefficientOfDispersion",
    "original_firstorder_Energy",
    "original_firstorder_TotalEnergy",
    "original_firstorder_RootMeanSquared",
];

/// Feature names of [`intensity_histogram`], in output order.
const HIST_NAMES: [&str; 23] = [
    "original_histogram_Mean",
    "original_histogram_Variance",
    "original_histogram_Skewness",
    "original_histogram_ExcessKurtosis",
    "original_histogram_Median",
    "original_histogram_Minimum",
    "original_histogram_10Percentile",
    "original_histogram_90Percentile",
    "original_histogram_Maximum",
    "original_histogram_Mode",
    "original_histogram_InterquartileRange",
    "original_histogram_Range",
    "original_histogram_MeanAbsoluteDeviation",
    "original_histogram_RobustMeanAbsoluteDeviation",
    "original_histogram_MedianAbsoluteDeviation",
    "original_histogram_CoefficientOfVariation",
    "original_histogram_QuartileCoefficientOfDispersion",
    "original_histogram_Entropy",
    "original_histogram_Uniformity",
    "original_histogram_MaximumGradient",
    "original_histogram_MaximumGradientGreyLevel",
    "original_histogram_MinimumGradient",
    "original_histogram_MinimumGradientGreyLevel",
];

/// Feature names of [`intensity_volume_histogram`], in output order.
const IVH_NAMES: [&str; 7] = [
    "original_ivh_V10",
    "original_ivh_V90",
    "original_ivh_I10",
    "original_ivh_I90",
    "original_ivh_V10MinusV90",
    "original_ivh_I10MinusI90",
    "original_ivh_AreaUnderCurve",
];

/// Feature names of [`local_intensity`], in output order.
const LOCAL_NAMES: [&str; 2] = [
    "original_localintensity_LocalIntensityPeak",
    "original_localintensity_GlobalIntensityPeak",
];

/// Every emitted feature name and the key of its IBSI reference value in
/// `reference_values.<family>` of the phantom reference; `""` = no reference.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    ("original_firstorder_Mean", "Mean intensity"),
    ("original_firstorder_Variance", "Intensity variance"),
    ("original_firstorder_Skewness", "Intensity skewness"),
    (
        "original_firstorder_ExcessKurtosis",
        "(Excess) intensity kurtosis",
    ),
    ("original_firstorder_Kurtosis", ""),
    ("original_firstorder_Median", "Median intensity"),
    ("original_firstorder_Minimum", "Minimum intensity"),
    (
        "original_firstorder_10Percentile",
        "10\\ :sup:`th` intensity percentile",
    ),
    (
        "original_firstorder_90Percentile",
        "90\\ :sup:`th` intensity percentile",
    ),
    ("original_firstorder_Maximum", "Maximum intensity"),
    (
        "original_firstorder_InterquartileRange",
        "Intensity interquartile range",
    ),
    ("original_firstorder_Range", "Intensity range"),
    (
        "original_firstorder_MeanAbsoluteDeviation",
        "Intensity-based mean absolute deviation",
    ),
    (
        "original_firstorder_RobustMeanAbsoluteDeviation",
        "Intensity-based robust mean absolute deviation",
    ),
    (
        "original_firstorder_MedianAbsoluteDeviation",
        "Intensity-based median absolute deviation",
    ),
    (
        "original_firstorder_CoefficientOfVariation",
        "Intensity-based coefficient of variation",
    ),
    (
        "original_firstorder_QuartileCoefficientOfDispersion",
        "Intensity-based quartile coefficient of dispersion",
    ),
    ("original_firstorder_Energy", "Intensity-based energy"),
    ("original_firstorder_TotalEnergy", ""),
    (
        "original_firstorder_RootMeanSquared",
        "Root mean square intensity",
    ),
    ("original_histogram_Mean", "Mean discretised intensity"),
    (
        "original_histogram_Variance",
        "Discretised intensity variance",
    ),
    (
        "original_histogram_Skewness",
        "Discretised intensity skewness",
    ),
    (
        "original_histogram_ExcessKurtosis",
        "(Excess) discretised intensity kurtosis",
    ),
    ("original_histogram_Median", "Median discretised intensity"),
    (
        "original_histogram_Minimum",
        "Minimum discretised intensity",
    ),
    (
        "original_histogram_10Percentile",
        "10\\ :sup:`th` discretised intensity percentile",
    ),
    (
        "original_histogram_90Percentile",
        "90\\ :sup:`th` discretised intensity percentile",
    ),
    (
        "original_histogram_Maximum",
        "Maximum discretised intensity",
    ),
    ("original_histogram_Mode", "Intensity histogram mode"),
    (
        "original_histogram_InterquartileRange",
        "Discretised intensity interquartile range",
    ),
    ("original_histogram_Range", "Discretised intensity range"),
    (
        "original_histogram_MeanAbsoluteDeviation",
        "Intensity histogram mean absolute deviation",
    ),
    (
        "original_histogram_RobustMeanAbsoluteDeviation",
        "Intensity histogram robust mean absolute deviation",
    ),
    (
        "original_histogram_MedianAbsoluteDeviation",
        "Intensity histogram median absolute deviation",
    ),
    (
        "original_histogram_CoefficientOfVariation",
        "Intensity histogram coefficient of variation",
    ),
    (
        "original_histogram_QuartileCoefficientOfDispersion",
        "Intensity histogram quartile coefficient of dispersion",
    ),
    (
        "original_histogram_Entropy",
        "Discretised intensity entropy",
    ),
    (
        "original_histogram_Uniformity",
        "Discretised intensity uniformity",
    ),
    (
        "original_histogram_MaximumGradient",
        "Maximum histogram gradient",
    ),
    (
        "original_histogram_MaximumGradientGreyLevel",
        "Maximum histogram gradient intensity",
    ),
    (
        "original_histogram_MinimumGradient",
        "Minimum histogram gradient",
    ),
    (
        "original_histogram_MinimumGradientGreyLevel",
        "Minimum histogram gradient intensity",
    ),
    ("original_ivh_V10", "Volume at intensity fraction"),
    ("original_ivh_V90", "Volume at intensity fraction #2"),
    ("original_ivh_I10", "Intensity at volume fraction"),
    ("original_ivh_I90", "Intensity at volume fraction #2"),
    (
        "original_ivh_V10MinusV90",
        "Volume fraction difference between intensity fractions",
    ),
    (
        "original_ivh_I10MinusI90",
        "Intensity fraction difference between volume fractions",
    ),
    // The manual's phantom value (0.32) has no row in the reference file.
    ("original_ivh_AreaUnderCurve", ""),
    (
        "original_localintensity_LocalIntensityPeak",
        "Local intensity peak",
    ),
    (
        "original_localintensity_GlobalIntensityPeak",
        "Global intensity peak",
    ),
];

/// Pairs names with values; the array lengths tie every output to its name
/// list at compile time, so names and order never depend on the input.
fn emit<const N: usize>(names: &[&str; N], values: [Option<f64>; N]) -> Vec<Feature> {
    names
        .iter()
        .zip(values)
        .map(|(&name, value)| match value {
            Some(x) => Feature::new(name, x),
            None => Feature {
                name: name.to_string(),
                value: None,
            },
        })
        .collect()
}

/// Linear-interpolation percentile (`p` in [0, 1]) of a sorted, non-empty slice.
fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Mean, variance, skewness and excess kurtosis of a weighted sample
/// (weights are voxel counts). IBSI sets skewness and kurtosis to 0 when
/// the variance is 0.
fn moments(pairs: impl Iterator<Item = (f64, f64)> + Clone, n: f64) -> [f64; 4] {
    let mean = pairs.clone().map(|(x, w)| x * w).sum::<f64>() / n;
    let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
    for (x, w) in pairs {
        let d = x - mean;
        let d2 = d * d;
        m2 += w * d2;
        m3 += w * d2 * d;
        m4 += w * d2 * d2;
    }
    let (m2, m3, m4) = (m2 / n, m3 / n, m4 / n);
    if m2 > 0.0 {
        [mean, m2, m3 / m2.powf(1.5), m4 / (m2 * m2) - 3.0]
    } else {
        [mean, 0.0, 0.0, 0.0]
    }
}

/// IBSI-1 §3.3 intensity-based statistical features of the raw ROI values.
pub fn intensity_statistics(v: &Volume) -> Vec<Feature> {
    let mut x = v.roi_values();
    if x.is_empty() {
        return emit(&STAT_NAMES, [None; 20]);
    }
    x.sort_unstable_by(f64::total_cmp);
    let n = x.len() as f64;
    let [mean, var, skew, exkurt] = moments(x.iter().map(|&a| (a, 1.0)), n);
    // pyradiomics reports the plain (non-excess) kurtosis and 0 for a flat ROI.
    let kurt = if var > 0.0 { exkurt + 3.0 } else { 0.0 };
    let median = percentile_sorted(&x, 0.5);
    let (p10, p25, p75, p90) = (
        percentile_sorted(&x, 0.10),
        percentile_sorted(&x, 0.25),
        percentile_sorted(&x, 0.75),
        percentile_sorted(&x, 0.90),
    );
    let (min, max) = (x[0], x[x.len() - 1]);
    let mad = x.iter().map(|a| (a - mean).abs()).sum::<f64>() / n;
    let medad = x.iter().map(|a| (a - median).abs()).sum::<f64>() / n;
    // The 10–90 subset is contiguous in the sorted values (bounds inclusive);
    // it is never empty since P10 <= P90 lie within [min, max].
    let lo = x.partition_point(|&a| a < p10);
    let hi = x.partition_point(|&a| a <= p90);
    let robust = &x[lo..hi.max(lo)];
    let rmad = if robust.is_empty() {
        0.0
    } else {
        let rn = robust.len() as f64;
        let rmean = robust.iter().sum::<f64>() / rn;
        robust.iter().map(|a| (a - rmean).abs()).sum::<f64>() / rn
    };
    let energy = x.iter().map(|a| a * a).sum::<f64>();
    emit(
        &STAT_NAMES,
        [
            Some(mean),
            Some(var),
            Some(skew),
            Some(exkurt),
            Some(kurt),
            Some(median),
            Some(min),
            Some(p10),
            Some(p90),
            Some(max),
            Some(p75 - p25),
            Some(max - min),
            Some(mad),
            Some(rmad),
            Some(medad),
            // Undefined (None) for a zero mean, like QCoD for P75 + P25 = 0.
            Some(var.sqrt() / mean),
            Some((p75 - p25) / (p75 + p25)),
            Some(energy),
            Some(energy * v.voxel_volume()),
            Some((energy / n).sqrt()),
        ],
    )
}

/// Counts of the ROI grey levels, indexed by level (index 0 unused), sized
/// to cover `1..=n_levels` even where the top levels are absent.
fn level_counts(d: &Discretised) -> Vec<u64> {
    let top = d.levels.iter().copied().max().unwrap_or(0) as usize;
    let mut counts = vec![0u64; top.max(d.n_levels) + 1];
    for &l in &d.levels {
        counts[l as usize] += 1;
    }
    counts[0] = 0;
    counts
}

/// The `k`-th (0-based) smallest grey level of the histogram.
fn kth_level(counts: &[u64], k: u64) -> f64 {
    let mut seen = 0u64;
    for (level, &c) in counts.iter().enumerate().skip(1) {
        seen += c;
        if seen > k {
            return level as f64;
        }
    }
    (counts.len() - 1) as f64
}

/// Linear-interpolation percentile of the grey levels, from their histogram.
fn percentile_counts(counts: &[u64], total: u64, p: f64) -> f64 {
    let h = (total - 1) as f64 * p;
    let lo = h.floor() as u64;
    let a = kth_level(counts, lo);
    let b = kth_level(counts, (lo + 1).min(total - 1));
    a + (h - lo as f64) * (b - a)
}

/// IBSI-1 §3.4 intensity histogram features of the grey levels.
///
/// The histogram runs over levels `1..=n_levels` (empty bins included, as
/// IBSI requires for the gradient), so with a fixed bin width starting at
/// 0 Gy the low-dose bins below the ROI minimum are part of it.
pub fn intensity_histogram(d: &Discretised) -> Vec<Feature> {
    let counts = level_counts(d);
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return emit(&HIST_NAMES, [None; 23]);
    }
    let n = total as f64;
    let ng = counts.len() - 1;
    let occupied = || {
        counts
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(|(l, &c)| (l as f64, c as f64))
    };
    let [mean, var, skew, exkurt] = moments(occupied(), n);
    let median = percentile_counts(&counts, total, 0.5);
    let p10 = percentile_counts(&counts, total, 0.10);
    let p25 = percentile_counts(&counts, total, 0.25);
    let p75 = percentile_counts(&counts, total, 0.75);
    let p90 = percentile_counts(&counts, total, 0.90);
    let min = kth_level(&counts, 0);
    let max = kth_level(&counts, total - 1);

    // Mode: highest count; ties go to the level closest to the mean, and
    // between two equidistant levels to the lower one (IBSI).
    let mut mode = 0usize;
    for (l, &c) in counts.iter().enumerate().skip(1) {
        let better = mode == 0
            || c > counts[mode]
            || (c == counts[mode] && (l as f64 - mean).abs() < (mode as f64 - mean).abs());
        if better {
            mode = l;
        }
    }

    let mad = occupied().map(|(l, c)| c * (l - mean).abs()).sum::<f64>() / n;
    let medad = occupied().map(|(l, c)| c * (l - median).abs()).sum::<f64>() / n;
    let robust = || occupied().filter(|&(l, _)| l >= p10 && l <= p90);
    let rn: f64 = robust().map(|(_, c)| c).sum();
    let rmean = robust().map(|(l, c)| l * c).sum::<f64>() / rn;
    let rmad = robust().map(|(l, c)| c * (l - rmean).abs()).sum::<f64>() / rn;

    let entropy = -occupied()
        .map(|(_, c)| {
            let p = c / n;
            p * p.log2()
        })
        .sum::<f64>();
    let uniformity = occupied().map(|(_, c)| (c / n) * (c / n)).sum::<f64>();

    // Histogram gradient: one-sided at the ends, central inside; the first
    // extreme wins ties. Undefined for a single-bin histogram.
    let (mut gmax, mut gmin) = (None::<(f64, usize)>, None::<(f64, usize)>);
    if ng >= 2 {
        for i in 1..=ng {
            let g = if i == 1 {
                counts[2] as f64 - counts[1] as f64
            } else if i == ng {
                counts[ng] as f64 - counts[ng - 1] as f64
            } else {
                (counts[i + 1] as f64 - counts[i - 1] as f64) / 2.0
            };
            if gmax.is_none_or(|(m, _)| g > m) {
                gmax = Some((g, i));
            }
            if gmin.is_none_or(|(m, _)| g < m) {
                gmin = Some((g, i));
            }
        }
    }

    emit(
        &HIST_NAMES,
        [
            Some(mean),
            Some(var),
            Some(skew),
            Some(exkurt),
            Some(median),
            Some(min),
            Some(p10),
            Some(p90),
            Some(max),
            Some(mode as f64),
            Some(p75 - p25),
            Some(max - min),
            Some(mad),
            Some(rmad),
            Some(medad),
            Some(var.sqrt() / mean),
            Some((p75 - p25) / (p75 + p25)),
            Some(entropy),
            Some(uniformity),
            gmax.map(|g| g.0),
            gmax.map(|g| g.1 as f64),
            gmin.map(|g| g.0),
            gmin.map(|g| g.1 as f64),
        ],
    )
}

/// IBSI-1 §3.5 intensity-volume histogram features.
///
/// The IVH is evaluated at the grey levels `i = 1..=n_levels`; the
/// intensity range G spans level 1 (the discretisation's lower bound, 0 Gy
/// for dose, i.e. the re-segmentation bound IBSI asks for) to `n_levels`,
/// so `γ_i = (i − 1)/(n_levels − 1)` and `ν_i` is the fraction of ROI
/// voxels at level `i` or above. V10/V90 are therefore volume fractions at
/// 10 %/90 % of that range — not the radiotherapy V10 Gy.
///
/// Intensities (I10, I90, their difference) are reported in the volume's
/// unit (Gy): level `i` stands for the *lower edge* of its bin,
/// `lower + (i − 1)·w`, where `w` is the bin width (for a fixed bin count,
/// `(max − min)/n`). With that choice `ν_i` is exactly the fraction of the
/// ROI receiving at least that dose, and the IBSI phantom (bin width 1
/// from 1, level = value) reproduces the reference. IBSI's bin-centre
/// convention for continuous intensities would add `w/2` to I10 and I90
/// (not to their difference).
///
/// When no level of the histogram has `ν ≤ x` (the top bin alone holds more
/// than x % of the ROI), `I_x` is the upper edge of the top bin, where
/// `ν = 0`, instead of being undefined. The area under the curve is the
/// trapezoidal integral of `ν` over `γ`; IBSI sets it to 0 when the range
/// holds a single level, where `γ` is undefined (V10/V90 are then None).
pub fn intensity_volume_histogram(v: &Volume, d: &Discretised) -> Vec<Feature> {
    let counts = level_counts(d);
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return emit(&IVH_NAMES, [None; 7]);
    }
    let ng = counts.len() - 1;
    let width = match d.width {
        Some(w) => w,
        None => {
            let max = v.roi_values().into_iter().fold(f64::NEG_INFINITY, f64::max);
            (max - d.lower) / d.n_levels.max(1) as f64
        }
    };
    let intensity = |level: usize| d.lower + (level as f64 - 1.0) * width;

    // at_least[i] = voxels with level >= i, for i in 1..=ng + 1.
    let mut at_least = vec![0u64; ng + 2];
    for i in (1..=ng).rev() {
        at_least[i] = at_least[i + 1] + counts[i];
    }
    let nu = |i: usize| at_least[i] as f64 / total as f64;

    // Integer comparisons keep exact ties (γ = x, ν = x) on the right side.
    let volume_at = |pct: usize| -> Option<f64> {
        (ng >= 2)
            .then(|| (1..=ng).find(|&i| (i - 1) * 100 >= pct * (ng - 1)))
            .flatten()
            .map(nu)
    };
    let intensity_at = |pct: u64| -> Option<f64> {
        (1..=ng + 1)
            .find(|&i| at_least[i] * 100 <= pct * total)
            .map(intensity)
    };
    let (v10, v90) = (volume_at(10), volume_at(90));
    let (i10, i90) = (intensity_at(10), intensity_at(90));
    let auc = if ng >= 2 {
        let step = 1.0 / (ng - 1) as f64;
        (1..ng).map(|i| 0.5 * (nu(i) + nu(i + 1)) * step).sum()
    } else {
        0.0
    };

    emit(
        &IVH_NAMES,
        [
            v10,
            v90,
            i10,
            i90,
            v10.zip(v90).map(|(a, b)| a - b),
            i10.zip(i90).map(|(a, b)| a - b),
            Some(auc),
        ],
    )
}

/// IBSI-1 §3.2 local and global intensity peak: the mean intensity within a
/// 1 cm³ sphere (radius (3/4π)^{1/3} cm ≈ 6.2035 mm) around the
/// maximum-intensity ROI voxel(s), respectively around every ROI voxel,
/// taking the highest such mean. The sphere holds every image voxel whose
/// centre lies within the radius, inside the ROI or not; voxels beyond the
/// grid edge are simply absent.
///
/// The sphere is cut into x-runs, one per (dz, dy) offset, and each run is
/// summed from row prefix sums, so one sphere costs O(r²) rather than O(r³).
pub fn local_intensity(v: &Volume) -> Vec<Feature> {
    let [nz, ny, nx] = v.dims;
    let spacing_ok = v.spacing.iter().all(|s| s.is_finite() && *s > 0.0);
    let roi: Vec<usize> = (0..v.mask.len().min(v.values.len()))
        .filter(|&i| v.mask[i])
        .collect();
    if roi.is_empty() || !spacing_ok || nz * ny * nx != v.values.len() {
        return emit(&LOCAL_NAMES, [None; 2]);
    }
    let [sz, sy, sx] = v.spacing;
    let r2 = (3000.0 / (4.0 * std::f64::consts::PI)).powf(2.0 / 3.0);
    let reach = |s: f64| (r2.sqrt() / s).floor() as usize;
    let (rz, ry, rx) = (reach(sz), reach(sy), reach(sx));

    // Sphere as runs (dz, dy, half-width in x).
    let mut runs: Vec<(isize, isize, usize)> = Vec::new();
    for dz in -(rz as isize)..=rz as isize {
        for dy in -(ry as isize)..=ry as isize {
            let rest = r2 - (dz as f64 * sz).powi(2) - (dy as f64 * sy).powi(2);
            if rest < 0.0 {
                continue;
            }
            let mut hx = (rest.sqrt() / sx).floor() as usize;
            while ((hx + 1) as f64 * sx).powi(2) <= rest {
                hx += 1;
            }
            while hx > 0 && (hx as f64 * sx).powi(2) > rest {
                hx -= 1;
            }
            runs.push((dz, dy, hx));
        }
    }

    // ROI bounding box grown by the sphere's reach, clipped to the grid.
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for &i in &roi {
        let c = [i / (ny * nx), (i / nx) % ny, i % nx];
        for a in 0..3 {
            lo[a] = lo[a].min(c[a]);
            hi[a] = hi[a].max(c[a]);
        }
    }
    let z0 = lo[0].saturating_sub(rz);
    let y0 = lo[1].saturating_sub(ry);
    let x0 = lo[2].saturating_sub(rx);
    let z1 = (hi[0] + rz).min(nz - 1);
    let y1 = (hi[1] + ry).min(ny - 1);
    let x1 = (hi[2] + rx).min(nx - 1);
    let (by, bx) = (y1 - y0 + 1, x1 - x0 + 1);

    // Prefix sums along x of each box row: row (z, y) starts at
    // ((z − z0)·by + (y − y0))·(bx + 1).
    let mut prefix = vec![0.0f64; (z1 - z0 + 1) * by * (bx + 1)];
    for z in z0..=z1 {
        for y in y0..=y1 {
            let row = ((z - z0) * by + (y - y0)) * (bx + 1);
            let src = v.index(z, y, x0);
            let mut acc = 0.0;
            for k in 0..bx {
                acc += v.values[src + k];
                prefix[row + k + 1] = acc;
            }
        }
    }

    let sphere_mean = |i: usize| -> f64 {
        let (z, y, x) = (i / (ny * nx), (i / nx) % ny, i % nx);
        let (mut sum, mut count) = (0.0, 0usize);
        for &(dz, dy, hx) in &runs {
            let (zz, yy) = (z as isize + dz, y as isize + dy);
            if zz < z0 as isize || zz > z1 as isize || yy < y0 as isize || yy > y1 as isize {
                continue;
            }
            let row = ((zz as usize - z0) * by + (yy as usize - y0)) * (bx + 1);
            let a = x.saturating_sub(hx).max(x0) - x0;
            let b = (x + hx).min(x1) - x0;
            sum += prefix[row + b + 1] - prefix[row + a];
            count += b - a + 1;
        }
        sum / count as f64
    };

    let roi_max = roi
        .iter()
        .map(|&i| v.values[i])
        .fold(f64::NEG_INFINITY, f64::max);
    let mut local = f64::NEG_INFINITY;
    let mut global = f64::NEG_INFINITY;
    for &i in &roi {
        let m = sphere_mean(i);
        global = global.max(m);
        if v.values[i] == roi_max {
            local = local.max(m);
        }
    }
    emit(&LOCAL_NAMES, [Some(local), Some(global)])
}

#[cfg(test)]
mod tests {
    use super::super::testutil::phantom_volume as phantom;
    use super::*;
    // `super::super` is the crate root here and `dosiomics` in the main crate.
    use super::super::volume::Discretisation;

    /// `reference_values` rows of the phantom reference for these families
    /// (all with a null tolerance, i.e. 3 significant digits).
    const REFERENCE: &[(&str, f64)] = &[
        ("Mean intensity", 2.15),
        ("Intensity variance", 3.05),
        ("Intensity skewness", 1.08),
        ("(Excess) intensity kurtosis", -0.355),
        ("Median intensity", 1.0),
        ("Minimum intensity", 1.0),
        ("10\\ :sup:`th` intensity percentile", 1.0),
        ("90\\ :sup:`th` intensity percentile", 4.0),
        ("Maximum intensity", 6.0),
        ("Intensity interquartile range", 3.0),
        ("Intensity range", 5.0),
        ("Intensity-based mean absolute deviation", 1.55),
        ("Intensity-based robust mean absolute deviation", 1.11),
        ("Intensity-based median absolute deviation", 1.15),
        ("Intensity-based coefficient of variation", 0.812),
        ("Intensity-based quartile coefficient of dispersion", 0.6),
        ("Intensity-based energy", 567.0),
        ("Root mean square intensity", 2.77),
        ("Mean discretised intensity", 2.15),
        ("Discretised intensity variance", 3.05),
        ("Discretised intensity skewness", 1.08),
        ("(Excess) discretised intensity kurtosis", -0.355),
        ("Median discretised intensity", 1.0),
        ("Minimum discretised intensity", 1.0),
        ("10\\ :sup:`th` discretised intensity percentile", 1.0),
        ("90\\ :sup:`th` discretised intensity percentile", 4.0),
        ("Maximum discretised intensity", 6.0),
        ("Intensity histogram mode", 1.0),
        ("Discretised intensity interquartile range", 3.0),
        ("Discretised intensity range", 5.0),
        ("Intensity histogram mean absolute deviation", 1.55),
        ("Intensity histogram robust mean absolute deviation", 1.11),
        ("Intensity histogram median absolute deviation", 1.15),
        ("Intensity histogram coefficient of variation", 0.812),
        (
            "Intensity histogram quartile coefficient of dispersion",
            0.6,
        ),
        ("Discretised intensity entropy", 1.27),
        ("Discretised intensity uniformity", 0.512),
        ("Maximum histogram gradient", 8.0),
        ("Maximum histogram gradient intensity", 3.0),
        ("Minimum histogram gradient", -50.0),
        ("Minimum histogram gradient intensity", 1.0),
        ("Volume at intensity fraction", 0.324),
        ("Volume at intensity fraction #2", 0.0946),
        ("Intensity at volume fraction", 5.0),
        ("Intensity at volume fraction #2", 2.0),
        (
            "Volume fraction difference between intensity fractions",
            0.23,
        ),
        (
            "Intensity fraction difference between volume fractions",
            3.0,
        ),
        ("Local intensity peak", 2.6),
        ("Global intensity peak", 3.1),
    ];

    fn all_families(v: &Volume, d: &Discretised) -> Vec<Feature> {
        let mut f = intensity_statistics(v);
        f.extend(intensity_histogram(d));
        f.extend(intensity_volume_histogram(v, d));
        f.extend(local_intensity(v));
        f
    }

    fn bin1(v: &Volume) -> Discretised {
        Discretised::new(
            v,
            Discretisation::BinWidth {
                width: 1.0,
                lower: 1.0,
            },
        )
    }

    fn value(f: &[Feature], name: &str) -> Option<f64> {
        f.iter().find(|x| x.name == name).and_then(|x| x.value)
    }

    #[test]
    fn names_match_ibsi_table() {
        let v = phantom();
        let f = all_families(&v, &bin1(&v));
        let names: Vec<&str> = f.iter().map(|x| x.name.as_str()).collect();
        let table: Vec<&str> = IBSI_NAMES.iter().map(|x| x.0).collect();
        assert_eq!(names, table);
        for (_, key) in IBSI_NAMES.iter().filter(|x| !x.1.is_empty()) {
            assert!(REFERENCE.iter().any(|r| r.0 == *key), "unknown key {key}");
        }
        assert_eq!(
            IBSI_NAMES.iter().filter(|x| !x.1.is_empty()).count(),
            REFERENCE.len()
        );
    }

    #[test]
    fn phantom_matches_reference() {
        let v = phantom();
        let d = bin1(&v);
        for (i, &l) in d.levels.iter().enumerate() {
            assert_eq!(l as f64, if v.mask[i] { v.values[i] } else { 0.0 });
        }
        let f = all_families(&v, &d);
        for (name, key) in IBSI_NAMES.iter().filter(|x| !x.1.is_empty()) {
            let reference = REFERENCE.iter().find(|r| r.0 == *key).map(|r| r.1).unwrap();
            let got = value(&f, name).unwrap_or(f64::NAN);
            let tol = 0.5 * 10f64.powf(reference.abs().log10().floor() - 2.0);
            println!("{name:55} {key:60} {reference:>9} {got:>12.6}");
            assert!(
                (got - reference).abs() <= tol,
                "{name}: {got} vs {reference}"
            );
        }
        // Manual value without a row in the reference file.
        let auc = value(&f, "original_ivh_AreaUnderCurve").unwrap();
        assert!((auc - 0.32).abs() <= 0.005, "AUC {auc}");
        // pyradiomics-style extras.
        let kurt = value(&f, "original_firstorder_Kurtosis").unwrap();
        assert!((kurt - 2.645).abs() < 0.005, "kurtosis {kurt}");
        let te = value(&f, "original_firstorder_TotalEnergy").unwrap();
        assert!((te - 567.0 * 8.0).abs() < 1e-9);
    }

    fn check_contract(v: &Volume, d: &Discretised) -> Vec<Feature> {
        let f = all_families(v, d);
        let names: Vec<&str> = f.iter().map(|x| x.name.as_str()).collect();
        let table: Vec<&str> = IBSI_NAMES.iter().map(|x| x.0).collect();
        assert_eq!(names, table);
        assert!(f.iter().all(|x| x.value.is_none_or(f64::is_finite)));
        f
    }

    #[test]
    fn edge_cases() {
        let mut v = phantom();
        v.mask.iter_mut().for_each(|m| *m = false);
        for d in [
            Discretisation::BinWidth {
                width: 1.0,
                lower: 0.0,
            },
            Discretisation::BinCount(16),
        ] {
            let f = check_contract(&v, &Discretised::new(&v, d));
            assert!(f.iter().all(|x| x.value.is_none()));
        }

        // Single voxel.
        v.mask[27] = true;
        for d in [
            Discretisation::BinWidth {
                width: 1.0,
                lower: 0.0,
            },
            Discretisation::BinCount(16),
        ] {
            let f = check_contract(&v, &Discretised::new(&v, d));
            assert_eq!(value(&f, "original_firstorder_Variance"), Some(0.0));
        }

        // Constant intensity, also zero (CoV/QCoD undefined).
        for c in [0.0, 42.0] {
            let mut v = phantom();
            v.values.iter_mut().for_each(|x| *x = c);
            for d in [
                Discretisation::BinWidth {
                    width: 1.0,
                    lower: 0.0,
                },
                Discretisation::BinWidth {
                    width: 0.5,
                    lower: c,
                },
                Discretisation::BinCount(16),
            ] {
                let d = Discretised::new(&v, d);
                let f = check_contract(&v, &d);
                assert_eq!(
                    value(&f, "original_localintensity_GlobalIntensityPeak"),
                    Some(c)
                );
                assert_eq!(value(&f, "original_firstorder_Skewness"), Some(0.0));
            }
        }

        // Degenerate grids and spacing.
        let v = Volume {
            dims: [0, 0, 0],
            spacing: [2.0; 3],
            values: vec![],
            mask: vec![],
        };
        check_contract(&v, &Discretised::new(&v, Discretisation::BinCount(8)));
        let mut v = phantom();
        v.spacing = [0.0, 2.0, f64::NAN];
        check_contract(&v, &bin1(&v));
    }

    #[test]
    fn dose_ivh_in_gray() {
        // 100 voxels at 0.5, 1.5, ..., 99.5 Gy: bin i (width 1 from 0) holds one
        // voxel, so I10 = 90 Gy (90–100 Gy holds 10 %) and I90 = 10 Gy.
        let values: Vec<f64> = (0..100).map(|i| i as f64 + 0.5).collect();
        let v = Volume {
            dims: [1, 10, 10],
            spacing: [2.0; 3],
            mask: vec![true; 100],
            values,
        };
        let d = Discretised::new(
            &v,
            Discretisation::BinWidth {
                width: 1.0,
                lower: 0.0,
            },
        );
        let f = intensity_volume_histogram(&v, &d);
        assert_eq!(value(&f, "original_ivh_I10"), Some(90.0));
        assert_eq!(value(&f, "original_ivh_I90"), Some(10.0));
        // Same with a fixed bin count over the ROI range [0.5, 99.5].
        let d = Discretised::new(&v, Discretisation::BinCount(99));
        let f = intensity_volume_histogram(&v, &d);
        let i10 = value(&f, "original_ivh_I10").unwrap();
        assert!((i10 - 90.5).abs() < 1e-9, "{i10}");
    }

    #[test]
    fn local_intensity_matches_brute_force() {
        // Anisotropic grid, pseudo-random values, ROI touching the grid edges.
        let (nz, ny, nx) = (7usize, 9usize, 11usize);
        let mut seed = 12345u64;
        let mut values = Vec::new();
        let mut mask = Vec::new();
        for i in 0..nz * ny * nx {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            values.push((seed >> 33) as f64 / (1u64 << 31) as f64 * 70.0);
            mask.push(i % 3 != 0);
        }
        for spacing in [[3.0, 2.5, 2.0], [1.5, 4.0, 1.0], [2.0, 2.0, 2.0]] {
            let v = Volume {
                dims: [nz, ny, nx],
                spacing,
                values: values.clone(),
                mask: mask.clone(),
            };
            let r2 = (3000.0 / (4.0 * std::f64::consts::PI)).powf(2.0 / 3.0);
            let mean_at = |i: usize| {
                let (z, y, x) = (i / (ny * nx), (i / nx) % ny, i % nx);
                let (mut s, mut c) = (0.0, 0.0);
                for j in 0..v.values.len() {
                    let (a, b, e) = (j / (ny * nx), (j / nx) % ny, j % nx);
                    let d2 = ((a as f64 - z as f64) * spacing[0]).powi(2)
                        + ((b as f64 - y as f64) * spacing[1]).powi(2)
                        + ((e as f64 - x as f64) * spacing[2]).powi(2);
                    if d2 <= r2 {
                        s += v.values[j];
                        c += 1.0;
                    }
                }
                s / c
            };
            let roi: Vec<usize> = (0..v.values.len()).filter(|&i| v.mask[i]).collect();
            let max = roi.iter().map(|&i| v.values[i]).fold(f64::MIN, f64::max);
            let global = roi.iter().map(|&i| mean_at(i)).fold(f64::MIN, f64::max);
            let local = roi
                .iter()
                .filter(|&&i| v.values[i] == max)
                .map(|&i| mean_at(i))
                .fold(f64::MIN, f64::max);
            let f = local_intensity(&v);
            assert!((f[0].value.unwrap() - local).abs() < 1e-9);
            assert!((f[1].value.unwrap() - global).abs() < 1e-9);
        }
    }

    /// `cargo test --release -- --ignored --nocapture timing`
    #[test]
    #[ignore]
    fn timing() {
        let (nz, ny, nx) = (30usize, 40usize, 40usize);
        let mut values = Vec::with_capacity(nz * ny * nx);
        let mut mask = Vec::with_capacity(nz * ny * nx);
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let (dy, dx) = (y as f64 - 19.5, x as f64 - 19.5);
                    let r2 = dy * dy + dx * dx;
                    values.push(70.0 * (-r2 / 300.0).exp() * (1.0 - 0.3 * z as f64 / nz as f64));
                    mask.push(r2 <= 14.6 * 14.6);
                }
            }
        }
        let v = Volume {
            dims: [nz, ny, nx],
            spacing: [3.0, 2.5, 2.5],
            values,
            mask,
        };
        let d = Discretised::new(
            &v,
            Discretisation::BinWidth {
                width: 1.0,
                lower: 0.0,
            },
        );
        let reps = 20;
        let t = std::time::Instant::now();
        let mut f = Vec::new();
        for _ in 0..reps {
            f = all_families(&v, &d);
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        println!(
            "{} ROI voxels, {} features: {ms:.2} ms per call",
            v.count(),
            f.len()
        );
        for (name, t) in [
            ("stats", time(|| intensity_statistics(&v))),
            ("histogram", time(|| intensity_histogram(&d))),
            ("ivh", time(|| intensity_volume_histogram(&v, &d))),
            ("local", time(|| local_intensity(&v))),
        ] {
            println!("  {name}: {t:.2} ms");
        }
    }

    fn time(f: impl Fn() -> Vec<Feature>) -> f64 {
        let t = std::time::Instant::now();
        for _ in 0..20 {
            std::hint::black_box(f());
        }
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    }
}
