//! Grey level run length matrix (GLRLM) features, IBSI-1 §3.7: how long the
//! runs of consecutive ROI voxels with equal grey level are along the 13
//! unique 3D directions. Every feature is given twice: "3D, averaged"
//! (computed per direction, then averaged) and "3D, merged" (computed once on
//! the sum of the 13 matrices).

use super::volume::{Discretised, Feature, PaddedLevels};

/// The 13 unique 3D directions `[dz, dy, dx]`; a run read backwards is the
/// same run, so the opposite 13 add nothing.
const DIRECTIONS: [[isize; 3]; 13] = [
    [0, 0, 1],
    [0, 1, -1],
    [0, 1, 0],
    [0, 1, 1],
    [1, -1, -1],
    [1, -1, 0],
    [1, -1, 1],
    [1, 0, -1],
    [1, 0, 0],
    [1, 0, 1],
    [1, 1, -1],
    [1, 1, 0],
    [1, 1, 1],
];

/// Number of features per aggregation.
const N_FEATURES: usize = 16;

/// Every emitted feature name (in emission order: 16 averaged, then the same
/// 16 merged) and its key in `reference_values.glrlm` of the IBSI phantom data.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    (
        "original_glrlm_ShortRunEmphasis",
        "Short runs emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_LongRunEmphasis",
        "Long runs emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_LowGrayLevelRunEmphasis",
        "Low grey level run emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_HighGrayLevelRunEmphasis",
        "High grey level run emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_ShortRunLowGrayLevelEmphasis",
        "Short run low grey level emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_ShortRunHighGrayLevelEmphasis",
        "Short run high grey level emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_LongRunLowGrayLevelEmphasis",
        "Long run low grey level emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_LongRunHighGrayLevelEmphasis",
        "Long run high grey level emphasis [3D, averaged]",
    ),
    (
        "original_glrlm_GrayLevelNonUniformity",
        "Grey level non-uniformity [3D, averaged]",
    ),
    (
        "original_glrlm_GrayLevelNonUniformityNormalized",
        "Normalised grey level non-uniformity [3D, averaged]",
    ),
    (
        "original_glrlm_RunLengthNonUniformity",
        "Run length non-uniformity [3D, averaged]",
    ),
    (
        "original_glrlm_RunLengthNonUniformityNormalized",
        "Normalised run length non-uniformity [3D, averaged]",
    ),
    (
        "original_glrlm_RunPercentage",
        "Run percentage [3D, averaged]",
    ),
    (
        "original_glrlm_GrayLevelVariance",
        "Grey level variance [3D, averaged]",
    ),
    (
        "original_glrlm_RunVariance",
        "Run length variance [3D, averaged]",
    ),
    ("original_glrlm_RunEntropy", "Run entropy [3D, averaged]"),
    (
        "original_glrlmMerged_ShortRunEmphasis",
        "Short runs emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_LongRunEmphasis",
        "Long runs emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_LowGrayLevelRunEmphasis",
        "Low grey level run emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_HighGrayLevelRunEmphasis",
        "High grey level run emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_ShortRunLowGrayLevelEmphasis",
        "Short run low grey level emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_ShortRunHighGrayLevelEmphasis",
        "Short run high grey level emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_LongRunLowGrayLevelEmphasis",
        "Long run low grey level emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_LongRunHighGrayLevelEmphasis",
        "Long run high grey level emphasis [3D, merged]",
    ),
    (
        "original_glrlmMerged_GrayLevelNonUniformity",
        "Grey level non-uniformity [3D, merged]",
    ),
    (
        "original_glrlmMerged_GrayLevelNonUniformityNormalized",
        "Normalised grey level non-uniformity [3D, merged]",
    ),
    (
        "original_glrlmMerged_RunLengthNonUniformity",
        "Run length non-uniformity [3D, merged]",
    ),
    (
        "original_glrlmMerged_RunLengthNonUniformityNormalized",
        "Normalised run length non-uniformity [3D, merged]",
    ),
    (
        "original_glrlmMerged_RunPercentage",
        "Run percentage [3D, merged]",
    ),
    (
        "original_glrlmMerged_GrayLevelVariance",
        "Grey level variance [3D, merged]",
    ),
    (
        "original_glrlmMerged_RunVariance",
        "Run length variance [3D, merged]",
    ),
    (
        "original_glrlmMerged_RunEntropy",
        "Run entropy [3D, merged]",
    ),
];

/// GLRLM features of the ROI of `d`: 16 "3D, averaged" then 16 "3D, merged"
/// values, named as in [`IBSI_NAMES`]. All `None` for an empty ROI.
pub fn glrlm(d: &Discretised) -> Vec<Feature> {
    let (averaged, merged) = compute(d);
    Feature::named(IBSI_NAMES, averaged.into_iter().chain(merged))
}

type Values = [Option<f64>; N_FEATURES];

fn compute(d: &Discretised) -> (Values, Values) {
    let none = [None; N_FEATURES];
    let Some(padded) = PaddedLevels::new(d) else {
        return (none, none);
    };
    let [nz, ny, nx] = d.dims;
    let PaddedLevels {
        dims: pdims,
        grid,
        roi,
        levels: lv,
        ..
    } = padded;
    let nc = lv.len();
    let nv = roi.len();
    // A run cannot be longer than the largest grid dimension.
    let nr = nz.max(ny).max(nx);

    let mut m = vec![0.0f64; nc * nr];
    let mut merged = vec![0.0f64; nc * nr];
    let mut work = Work::default();
    let mut sum = [0.0f64; N_FEATURES];
    let mut cnt = [0usize; N_FEATURES];
    for dir in DIRECTIONS {
        m.iter_mut().for_each(|v| *v = 0.0);
        count_runs(&grid, pdims, &roi, dir, nr, &mut m);
        for (acc, &v) in merged.iter_mut().zip(&m) {
            *acc += v;
        }
        // A non-empty ROI has at least one run in every direction, and all
        // features are then defined (grey levels and run lengths are ≥ 1).
        let f = features(&m, &lv, nr, nv as f64, &mut work);
        for k in 0..N_FEATURES {
            if f[k].is_finite() {
                sum[k] += f[k];
                cnt[k] += 1;
            }
        }
    }
    let mut averaged = none;
    for k in 0..N_FEATURES {
        if cnt[k] > 0 {
            averaged[k] = Some(sum[k] / cnt[k] as f64);
        }
    }
    // IBSI: for the merged matrix, run percentage divides by the number of
    // voxels times the number of directions (each voxel is in one run per
    // direction), so that it stays in (0, 1].
    let nv_merged = (nv * DIRECTIONS.len()) as f64;
    let merged =
        features(&merged, &lv, nr, nv_merged, &mut work).map(|v| v.is_finite().then_some(v));
    (averaged, merged)
}

/// Adds the runs along `dir` to `m` (compact level × run length − 1, `nr`
/// columns). `grid` is the zero-padded grid of compact level + 1 (0 outside
/// the ROI) with dims `pdims`, and `roi` the grid indices of the ROI voxels.
/// Each run is walked once, from its first voxel: one whose predecessor along
/// `dir` differs. The zero border ends every walk, so no bounds checks.
fn count_runs(
    grid: &[u32],
    pdims: [usize; 3],
    roi: &[usize],
    dir: [isize; 3],
    nr: usize,
    m: &mut [f64],
) {
    let [_, py, px] = pdims;
    // Positive for all 13 directions (their first non-zero component is +1).
    let off = (dir[0] * (py * px) as isize + dir[1] * px as isize + dir[2]).unsigned_abs();
    for &i in roi {
        let l = grid[i];
        if grid[i - off] == l {
            continue;
        }
        let mut len = 1usize;
        let mut j = i + off;
        while grid[j] == l {
            len += 1;
            j += off;
        }
        m[(l as usize - 1) * nr + len.min(nr) - 1] += 1.0;
    }
}

/// Scratch marginals reused across matrices.
#[derive(Default)]
struct Work {
    /// Runs per grey level.
    ri: Vec<f64>,
    /// Runs per run length.
    rj: Vec<f64>,
}

/// The 16 IBSI features (in [`IBSI_NAMES`] order) of one run length matrix
/// (`lv.len()` × `nr`); `nv` is the run-percentage denominator. Entropy uses
/// log2. With no runs every value is NaN.
fn features(m: &[f64], lv: &[f64], nr: usize, nv: f64, w: &mut Work) -> [f64; N_FEATURES] {
    let nc = lv.len();
    w.ri.clear();
    w.ri.resize(nc, 0.0);
    w.rj.clear();
    w.rj.resize(nr, 0.0);
    let ns: f64 = m.iter().sum();
    if ns <= 0.0 {
        return [f64::NAN; N_FEATURES];
    }
    let inv = 1.0 / ns;
    let (mut sre, mut lre, mut lgre, mut hgre) = (0.0, 0.0, 0.0, 0.0);
    let (mut srlge, mut srhge, mut lrlge, mut lrhge, mut ent) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &a) in lv.iter().enumerate() {
        let a2 = a * a;
        let row = &m[i * nr..(i + 1) * nr];
        let mut ri = 0.0;
        for (jx, &r) in row.iter().enumerate() {
            if r == 0.0 {
                continue;
            }
            let j = (jx + 1) as f64;
            let j2 = j * j;
            ri += r;
            w.rj[jx] += r;
            sre += r / j2;
            lre += r * j2;
            lgre += r / a2;
            hgre += r * a2;
            srlge += r / (a2 * j2);
            srhge += r * a2 / j2;
            lrlge += r * j2 / a2;
            lrhge += r * a2 * j2;
            let p = r * inv;
            ent -= p * p.log2();
        }
        w.ri[i] = ri;
    }
    let glnu: f64 = w.ri.iter().map(|r| r * r).sum::<f64>() * inv;
    let rlnu: f64 = w.rj.iter().map(|r| r * r).sum::<f64>() * inv;
    let mu_i: f64 = lv.iter().zip(&w.ri).map(|(a, r)| a * r).sum::<f64>() * inv;
    let var_i: f64 = lv
        .iter()
        .zip(&w.ri)
        .map(|(a, r)| (a - mu_i).powi(2) * r)
        .sum::<f64>()
        * inv;
    let mu_j: f64 =
        w.rj.iter()
            .enumerate()
            .map(|(jx, r)| (jx + 1) as f64 * r)
            .sum::<f64>()
            * inv;
    let var_j: f64 =
        w.rj.iter()
            .enumerate()
            .map(|(jx, r)| ((jx + 1) as f64 - mu_j).powi(2) * r)
            .sum::<f64>()
            * inv;
    [
        sre * inv,
        lre * inv,
        lgre * inv,
        hgre * inv,
        srlge * inv,
        srhge * inv,
        lrlge * inv,
        lrhge * inv,
        glnu,
        glnu * inv,
        rlnu,
        rlnu * inv,
        ns / nv,
        var_i,
        var_j,
        ent,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{
        assert_averaged_and_merged, assert_ibsi, assert_names, binned, phantom_levels as phantom,
        smooth_cylinder,
    };
    use super::*;

    /// `reference_values.glrlm` rows "[3D, averaged]" and "[3D, merged]" of
    /// /work/shared/reference/ibsi_phantom.json (no tolerance given: 3
    /// significant digits).
    const REFERENCE: &[(&str, f64)] = &[
        ("Short runs emphasis [3D, averaged]", 0.705),
        ("Short runs emphasis [3D, merged]", 0.729),
        ("Long runs emphasis [3D, averaged]", 3.06),
        ("Long runs emphasis [3D, merged]", 2.76),
        ("Low grey level run emphasis [3D, averaged]", 0.603),
        ("Low grey level run emphasis [3D, merged]", 0.607),
        ("High grey level run emphasis [3D, averaged]", 9.7),
        ("High grey level run emphasis [3D, merged]", 9.64),
        ("Short run low grey level emphasis [3D, averaged]", 0.352),
        ("Short run low grey level emphasis [3D, merged]", 0.372),
        ("Short run high grey level emphasis [3D, averaged]", 8.54),
        ("Short run high grey level emphasis [3D, merged]", 8.67),
        ("Long run low grey level emphasis [3D, averaged]", 2.39),
        ("Long run low grey level emphasis [3D, merged]", 2.16),
        ("Long run high grey level emphasis [3D, averaged]", 17.6),
        ("Long run high grey level emphasis [3D, merged]", 15.6),
        ("Grey level non-uniformity [3D, averaged]", 21.8),
        ("Grey level non-uniformity [3D, merged]", 281.0),
        ("Normalised grey level non-uniformity [3D, averaged]", 0.43),
        ("Normalised grey level non-uniformity [3D, merged]", 0.43),
        ("Run length non-uniformity [3D, averaged]", 26.9),
        ("Run length non-uniformity [3D, merged]", 328.0),
        ("Normalised run length non-uniformity [3D, averaged]", 0.513),
        ("Normalised run length non-uniformity [3D, merged]", 0.501),
        ("Run percentage [3D, averaged]", 0.68),
        ("Run percentage [3D, merged]", 0.68),
        ("Grey level variance [3D, averaged]", 3.46),
        ("Grey level variance [3D, merged]", 3.48),
        ("Run length variance [3D, averaged]", 0.574),
        ("Run length variance [3D, merged]", 0.598),
        ("Run entropy [3D, averaged]", 2.43),
        ("Run entropy [3D, merged]", 2.62),
    ];

    #[test]
    fn names_table_is_consistent() {
        assert_averaged_and_merged(IBSI_NAMES, N_FEATURES, "glrlm");
    }

    #[test]
    fn ibsi_phantom() {
        assert_ibsi(&glrlm(&phantom()), IBSI_NAMES, REFERENCE);
    }

    fn volume(dims: [usize; 3], values: Vec<f64>, mask: Vec<bool>) -> Discretised {
        binned(dims, 1.0, 0.0, values, mask)
    }

    fn check_edge(d: &Discretised) -> Vec<Feature> {
        let f = glrlm(d);
        assert_names(&f, IBSI_NAMES);
        f
    }

    #[test]
    fn edge_cases() {
        // Empty mask.
        let f = check_edge(&volume([3, 3, 3], vec![5.0; 27], vec![false; 27]));
        assert!(f.iter().all(|x| x.value.is_none()));
        // Single voxel: one run of length 1 per direction.
        let mut mask = vec![false; 27];
        mask[13] = true;
        let f = check_edge(&volume([3, 3, 3], vec![5.0; 27], mask));
        let get = |f: &[Feature], n: &str| f.iter().find(|x| x.name == n).and_then(|x| x.value);
        assert_eq!(get(&f, "original_glrlm_ShortRunEmphasis"), Some(1.0));
        assert_eq!(get(&f, "original_glrlm_RunPercentage"), Some(1.0));
        assert_eq!(get(&f, "original_glrlmMerged_RunPercentage"), Some(1.0));
        assert_eq!(get(&f, "original_glrlmMerged_RunEntropy"), Some(0.0));
        // Constant intensity: runs of length 3 along every direction through
        // the full cube; run percentage is runs per voxel.
        let f = check_edge(&volume([3, 3, 3], vec![5.0; 27], vec![true; 27]));
        assert_eq!(get(&f, "original_glrlmMerged_GrayLevelVariance"), Some(0.0));
        assert_eq!(
            get(&f, "original_glrlmMerged_GrayLevelNonUniformityNormalized"),
            Some(1.0)
        );
        // Runs along x of a 1×1×7 line: one run of 7 in x, 7 runs of 1 in the
        // other 12 directions.
        let f = check_edge(&volume([1, 1, 7], vec![3.0; 7], vec![true; 7]));
        let rp = get(&f, "original_glrlmMerged_RunPercentage").unwrap_or(f64::NAN);
        assert!((rp - (1.0 + 12.0 * 7.0) / (13.0 * 7.0)).abs() < 1e-12);
        // Empty grid and a grid whose levels do not match its dims.
        check_edge(&volume([0, 0, 0], vec![], vec![]));
        let mut bad = volume([2, 2, 2], vec![1.0; 8], vec![true; 8]);
        bad.levels.pop();
        check_edge(&bad);
        // Flat and thin grids.
        check_edge(&volume(
            [1, 1, 7],
            (0..7).map(f64::from).collect(),
            vec![true; 7],
        ));
        check_edge(&volume(
            [7, 1, 1],
            (0..7).map(f64::from).collect(),
            vec![true; 7],
        ));
    }

    /// Release-mode timing on a ~20,000-voxel cylinder of smooth dose:
    /// `cargo test --release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing() {
        let d = smooth_cylinder();
        let n = d.levels.iter().filter(|&&l| l > 0).count();
        let reps = 500;
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        for _ in 0..reps {
            out = glrlm(&d);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("glrlm: {n} voxels, {} levels: {ms:.3} ms", d.n_levels);
        assert_eq!(out.len(), IBSI_NAMES.len());
    }
}
