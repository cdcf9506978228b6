//! Neighbourhood grey tone difference matrix (NGTDM) features, IBSI-1 §3.10,
//! one 3D matrix for the whole ROI.
//!
//! For every ROI voxel, the absolute difference between its grey level and
//! the mean grey level of its neighbours (Chebyshev distance 1, 26
//! neighbours) is summed per grey level (`s_i`); `n_i` counts the voxels.
//! Following IBSI, neighbours outside the ROI are left out of the mean and a
//! voxel without any ROI neighbour is left out altogether.

use super::volume::{Discretised, Feature};

/// Emitted feature names (in output order) and their IBSI reference keys.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    ("original_ngtdm_Coarseness", "Coarseness [3D]"),
    ("original_ngtdm_Contrast", "Contrast [3D]"),
    ("original_ngtdm_Busyness", "Busyness [3D]"),
    ("original_ngtdm_Complexity", "Complexity [3D]"),
    ("original_ngtdm_Strength", "Strength [3D]"),
];

/// NGTDM features of the ROI (5 values, names as in [`IBSI_NAMES`]).
pub fn ngtdm(d: &Discretised) -> Vec<Feature> {
    let values = match matrix(d) {
        Some((n, s)) => features(&n, &s),
        None => [None; 5],
    };
    Feature::named(IBSI_NAMES, values)
}

/// `(n_i, s_i)` indexed by grey level; `None` for an inconsistent grid.
fn matrix(d: &Discretised) -> Option<(Vec<u64>, Vec<f64>)> {
    let [nz, ny, nx] = d.dims;
    let len = nz.checked_mul(ny)?.checked_mul(nx)?;
    if len != d.levels.len() || len == 0 {
        return None;
    }
    let top = d.levels.iter().copied().max().unwrap_or(0) as usize;
    let mut n = vec![0u64; top + 1];
    let mut s = vec![0.0f64; top + 1];
    let lv = &d.levels;
    for z in 0..nz {
        let (z0, z1) = (z.saturating_sub(1), (z + 1).min(nz - 1));
        for y in 0..ny {
            let (y0, y1) = (y.saturating_sub(1), (y + 1).min(ny - 1));
            for x in 0..nx {
                let level = lv[(z * ny + y) * nx + x];
                if level == 0 {
                    continue;
                }
                let (x0, x1) = (x.saturating_sub(1), (x + 1).min(nx - 1));
                // Sum over the 3×3×3 block including the centre, then take
                // the centre out (cheaper than testing for it 27 times).
                let (mut sum, mut count) = (0u64, 0u32);
                for zz in z0..=z1 {
                    for yy in y0..=y1 {
                        let row = (zz * ny + yy) * nx;
                        for &m in &lv[row + x0..=row + x1] {
                            if m > 0 {
                                sum += u64::from(m);
                                count += 1;
                            }
                        }
                    }
                }
                sum -= u64::from(level);
                count -= 1;
                if count > 0 {
                    let mean = sum as f64 / f64::from(count);
                    n[level as usize] += 1;
                    s[level as usize] += (f64::from(level) - mean).abs();
                }
            }
        }
    }
    Some((n, s))
}

/// Coarseness, contrast, busyness, complexity, strength (IBSI definitions).
fn features(n: &[u64], s: &[f64]) -> [Option<f64>; 5] {
    let nvc: u64 = n.iter().sum();
    if nvc == 0 {
        return [None; 5];
    }
    let nvc = nvc as f64;
    // (i, p_i, s_i) for the grey levels with p_i > 0.
    let present: Vec<(f64, f64, f64)> = n
        .iter()
        .zip(s)
        .enumerate()
        .filter(|&(_, (&c, _))| c > 0)
        .map(|(i, (&c, &si))| (i as f64, c as f64 / nvc, si))
        .collect();
    let ngp = present.len();
    let sum_ps: f64 = present.iter().map(|&(_, p, s)| p * s).sum();
    let sum_s: f64 = present.iter().map(|&(_, _, s)| s).sum();

    // Double sums over i1 ≠ i2 (the diagonal terms are all zero), using
    // symmetry: each unordered pair counts twice.
    let (mut contrast, mut busy_den, mut complexity, mut strength) = (0.0, 0.0, 0.0, 0.0);
    for (a, &(i1, p1, s1)) in present.iter().enumerate() {
        for &(i2, p2, s2) in &present[a + 1..] {
            let d = i1 - i2;
            contrast += 2.0 * p1 * p2 * d * d;
            busy_den += 2.0 * (i1 * p1 - i2 * p2).abs();
            complexity += 2.0 * d.abs() * (p1 * s1 + p2 * s2) / (p1 + p2);
            strength += 2.0 * (p1 + p2) * d * d;
        }
    }
    let finite = |v: f64| v.is_finite().then_some(v);
    // A uniform texture has sum p_i s_i = 0: IBSI and pyradiomics cap
    // coarseness at 1e6, an arbitrary sentinel; we report it as undefined.
    let coarseness = if sum_ps > 0.0 {
        finite(1.0 / sum_ps)
    } else {
        None
    };
    // IBSI: contrast and busyness are 0 for a single grey level, strength is
    // 0 when sum s_i = 0. A zero busyness denominator with several levels
    // (i1 p1 = i2 p2 for every pair) stays undefined.
    let contrast = if ngp > 1 {
        finite(contrast / (ngp * (ngp - 1)) as f64 * sum_s / nvc)
    } else {
        Some(0.0)
    };
    let busyness = if ngp > 1 {
        finite(sum_ps / busy_den)
    } else {
        Some(0.0)
    };
    let strength = if sum_s > 0.0 {
        finite(strength / sum_s)
    } else {
        Some(0.0)
    };
    [
        coarseness,
        contrast,
        busyness,
        finite(complexity / nvc),
        strength,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{
        assert_ibsi, assert_names, binned, phantom_levels as phantom, textured_tube,
    };
    use super::*;

    /// IBSI reference values (3D rows); all given to 3 significant digits.
    const REFERENCE: &[(&str, f64)] = &[
        ("Coarseness [3D]", 0.0296),
        ("Contrast [3D]", 0.584),
        ("Busyness [3D]", 6.54),
        ("Complexity [3D]", 13.5),
        ("Strength [3D]", 0.763),
    ];

    fn volume(dims: [usize; 3], values: Vec<f64>, mask: Vec<bool>) -> Discretised {
        binned(dims, 2.0, 1.0, values, mask)
    }

    #[test]
    fn ibsi_phantom() {
        assert_ibsi(&ngtdm(&phantom()), IBSI_NAMES, REFERENCE);
    }

    /// A 3×3×3 block of level 1 around a level-2 centre. The centre's 26
    /// neighbours average 1: s_2 = 1. Every other voxel has k neighbours in
    /// the block, one of them the centre, so its mean is 1 + 1/k: corners
    /// (k = 7), edges (k = 11) and face centres (k = 17) give
    /// s_1 = 8/7 + 12/11 + 6/17.
    #[test]
    fn neighbourhood_means() {
        let mut values = vec![1.0; 27];
        values[13] = 2.0;
        let d = volume([3, 3, 3], values, vec![true; 27]);
        let (n, s) = matrix(&d).expect("consistent grid");
        assert_eq!(n[1..], [26, 1]);
        assert!((s[2] - 1.0).abs() < 1e-12);
        assert!((s[1] - (8.0 / 7.0 + 12.0 / 11.0 + 6.0 / 17.0)).abs() < 1e-12);
    }

    #[test]
    fn edge_cases() {
        let empty = volume([2, 2, 2], vec![1.0; 8], vec![false; 8]);
        let f = ngtdm(&empty);
        assert_names(&f, IBSI_NAMES);
        assert!(f.iter().all(|f| f.value.is_none()));
        assert_names(&ngtdm(&volume([0, 3, 3], vec![], vec![])), IBSI_NAMES);
        let mut bad = volume([2, 2, 2], vec![1.0; 8], vec![true; 8]);
        bad.levels.pop();
        assert_names(&ngtdm(&bad), IBSI_NAMES);
        // Single voxel: no valid neighbourhood, nothing defined.
        let mut mask = vec![false; 27];
        mask[13] = true;
        let f = ngtdm(&volume([3, 3, 3], vec![5.0; 27], mask));
        assert_names(&f, IBSI_NAMES);
        assert!(f.iter().all(|f| f.value.is_none()));
        // Constant intensity: coarseness undefined, the rest 0 (IBSI).
        let f = ngtdm(&volume([3, 4, 5], vec![2.0; 60], vec![true; 60]));
        assert_names(&f, IBSI_NAMES);
        let values: Vec<Option<f64>> = f.iter().map(|f| f.value).collect();
        assert_eq!(values, [None, Some(0.0), Some(0.0), Some(0.0), Some(0.0)]);
        // Two isolated voxels of different levels: no neighbourhoods.
        let mut mask = vec![false; 27];
        mask[0] = true;
        mask[26] = true;
        let mut values = vec![1.0; 27];
        values[26] = 3.0;
        let f = ngtdm(&volume([3, 3, 3], values, mask));
        assert_names(&f, IBSI_NAMES);
        assert!(f.iter().all(|f| f.value.is_none()));
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn speed() {
        let d = textured_tube();
        let n = d.levels.iter().filter(|&&l| l > 0).count();
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            std::hint::black_box(ngtdm(std::hint::black_box(&d)));
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "ngtdm: {n} voxels, {} levels, best {best:.3} ms",
            d.n_levels
        );
    }
}
