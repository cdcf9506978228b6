//! Grey level co-occurrence matrix (GLCM) features, IBSI-1 §3.6: how often
//! pairs of grey levels occur in neighbouring voxels (Chebyshev distance 1)
//! of the ROI, in 3D over the 13 unique directions, as symmetric matrices.
//! Every feature is given twice: "3D, averaged" (computed per direction, then
//! averaged) and "3D, merged" (computed once on the sum of the 13 matrices).

use super::volume::{Discretised, Feature, PaddedLevels};

/// The 13 unique 3D neighbour offsets `[dz, dy, dx]` at Chebyshev distance 1;
/// the other 13 are their negatives, covered by making the matrices symmetric.
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
const N_FEATURES: usize = 25;

/// Every emitted feature name (in emission order: 25 averaged, then the same
/// 25 merged) and its key in `reference_values.glcm` of the IBSI phantom data.
/// `SumVariance` and `Dissimilarity` are the names older pyradiomics versions
/// used before dropping them as duplicates (of `ClusterTendency` and
/// `DifferenceAverage`); IBSI keeps them as separate features.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    (
        "original_glcm_MaximumProbability",
        "Joint maximum [3D, averaged]",
    ),
    ("original_glcm_JointAverage", "Joint average [3D, averaged]"),
    ("original_glcm_SumSquares", "Joint variance [3D, averaged]"),
    ("original_glcm_JointEntropy", "Joint entropy [3D, averaged]"),
    (
        "original_glcm_DifferenceAverage",
        "Difference average [3D, averaged]",
    ),
    (
        "original_glcm_DifferenceVariance",
        "Difference variance [3D, averaged]",
    ),
    (
        "original_glcm_DifferenceEntropy",
        "Difference entropy [3D, averaged]",
    ),
    ("original_glcm_SumAverage", "Sum average [3D, averaged]"),
    ("original_glcm_SumVariance", "Sum variance [3D, averaged]"),
    ("original_glcm_SumEntropy", "Sum entropy [3D, averaged]"),
    (
        "original_glcm_JointEnergy",
        "Angular second moment [3D, averaged]",
    ),
    ("original_glcm_Contrast", "Contrast [3D, averaged]"),
    (
        "original_glcm_Dissimilarity",
        "Dissimilarity [3D, averaged]",
    ),
    ("original_glcm_Id", "Inverse difference [3D, averaged]"),
    (
        "original_glcm_Idn",
        "Normalised inverse difference [3D, averaged]",
    ),
    (
        "original_glcm_Idm",
        "Inverse difference moment [3D, averaged]",
    ),
    (
        "original_glcm_Idmn",
        "Normalised inverse difference moment [3D, averaged]",
    ),
    (
        "original_glcm_InverseVariance",
        "Inverse variance [3D, averaged]",
    ),
    ("original_glcm_Correlation", "Correlation [3D, averaged]"),
    (
        "original_glcm_Autocorrelation",
        "Autocorrelation [3D, averaged]",
    ),
    (
        "original_glcm_ClusterTendency",
        "Cluster tendency [3D, averaged]",
    ),
    ("original_glcm_ClusterShade", "Cluster shade [3D, averaged]"),
    (
        "original_glcm_ClusterProminence",
        "Cluster prominence [3D, averaged]",
    ),
    (
        "original_glcm_Imc1",
        "Information correlation 1 [3D, averaged]",
    ),
    (
        "original_glcm_Imc2",
        "Information correlation 2 [3D, averaged]",
    ),
    (
        "original_glcmMerged_MaximumProbability",
        "Joint maximum [3D, merged]",
    ),
    (
        "original_glcmMerged_JointAverage",
        "Joint average [3D, merged]",
    ),
    (
        "original_glcmMerged_SumSquares",
        "Joint variance [3D, merged]",
    ),
    (
        "original_glcmMerged_JointEntropy",
        "Joint entropy [3D, merged]",
    ),
    (
        "original_glcmMerged_DifferenceAverage",
        "Difference average [3D, merged]",
    ),
    (
        "original_glcmMerged_DifferenceVariance",
        "Difference variance [3D, merged]",
    ),
    (
        "original_glcmMerged_DifferenceEntropy",
        "Difference entropy [3D, merged]",
    ),
    ("original_glcmMerged_SumAverage", "Sum average [3D, merged]"),
    (
        "original_glcmMerged_SumVariance",
        "Sum variance [3D, merged]",
    ),
    ("original_glcmMerged_SumEntropy", "Sum entropy [3D, merged]"),
    (
        "original_glcmMerged_JointEnergy",
        "Angular second moment [3D, merged]",
    ),
    ("original_glcmMerged_Contrast", "Contrast [3D, merged]"),
    (
        "original_glcmMerged_Dissimilarity",
        "Dissimilarity [3D, merged]",
    ),
    ("original_glcmMerged_Id", "Inverse difference [3D, merged]"),
    (
        "original_glcmMerged_Idn",
        "Normalised inverse difference [3D, merged]",
    ),
    (
        "original_glcmMerged_Idm",
        "Inverse difference moment [3D, merged]",
    ),
    (
        "original_glcmMerged_Idmn",
        "Normalised inverse difference moment [3D, merged]",
    ),
    (
        "original_glcmMerged_InverseVariance",
        "Inverse variance [3D, merged]",
    ),
    (
        "original_glcmMerged_Correlation",
        "Correlation [3D, merged]",
    ),
    (
        "original_glcmMerged_Autocorrelation",
        "Autocorrelation [3D, merged]",
    ),
    (
        "original_glcmMerged_ClusterTendency",
        "Cluster tendency [3D, merged]",
    ),
    (
        "original_glcmMerged_ClusterShade",
        "Cluster shade [3D, merged]",
    ),
    (
        "original_glcmMerged_ClusterProminence",
        "Cluster prominence [3D, merged]",
    ),
    (
        "original_glcmMerged_Imc1",
        "Information correlation 1 [3D, merged]",
    ),
    (
        "original_glcmMerged_Imc2",
        "Information correlation 2 [3D, merged]",
    ),
];

/// GLCM features of the ROI of `d`: 25 "3D, averaged" then 25 "3D, merged"
/// values, named as in [`IBSI_NAMES`]. All `None` when no two neighbouring
/// voxels lie in the ROI.
pub fn glcm(d: &Discretised) -> Vec<Feature> {
    let (averaged, merged) = compute(d);
    Feature::named(IBSI_NAMES, averaged.into_iter().chain(merged))
}

type Values = [Option<f64>; N_FEATURES];

fn compute(d: &Discretised) -> (Values, Values) {
    let none = [None; N_FEATURES];
    let Some(padded) = PaddedLevels::new(d) else {
        return (none, none);
    };
    let PaddedLevels {
        dims: pdims,
        grid,
        roi,
        levels: lv,
        lmax,
    } = padded;
    let nc = lv.len();
    // IBSI normalises Idn/Idmn by Ng, the number of bins of the
    // discretisation, including bins that no ROI voxel falls in.
    let ng = d.n_levels.max(lmax) as f64;

    let mut counts = vec![0u32; nc * nc];
    let mut m = vec![0.0f64; nc * nc];
    let mut merged = vec![0.0f64; nc * nc];
    let mut work = Work::new(lmax);
    let mut sum = [0.0f64; N_FEATURES];
    let mut cnt = [0usize; N_FEATURES];
    for dir in DIRECTIONS {
        let pairs = count_pairs(&grid, pdims, &roi, dir, nc, &mut counts);
        // Symmetric matrix: each pair counts once as (a, b) and once as (b, a).
        for i in 0..nc {
            for j in 0..nc {
                m[i * nc + j] = f64::from(counts[i * nc + j]) + f64::from(counts[j * nc + i]);
            }
        }
        if pairs == 0 {
            // A direction without pairs contributes nothing to the average.
            continue;
        }
        for (acc, &v) in merged.iter_mut().zip(&m) {
            *acc += v;
        }
        let f = features(&m, &lv, ng, &mut work);
        // A feature undefined in one direction (e.g. correlation where that
        // direction sees a single grey level) is averaged over the directions
        // where it is defined.
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
    let total: f64 = merged.iter().sum();
    let merged = if total > 0.0 {
        features(&merged, &lv, ng, &mut work).map(|v| v.is_finite().then_some(v))
    } else {
        none
    };
    (averaged, merged)
}

/// Counts the ordered pairs (voxel, its neighbour along `dir`) with both
/// in the ROI into `counts` (`nc`×`nc`, cleared first; not yet symmetric);
/// returns the number of pairs. `grid`, `pdims` and `roi` as in [`PaddedLevels`].
fn count_pairs(
    grid: &[u32],
    pdims: [usize; 3],
    roi: &[usize],
    dir: [isize; 3],
    nc: usize,
    counts: &mut [u32],
) -> usize {
    counts.iter_mut().for_each(|v| *v = 0);
    let [_, py, px] = pdims;
    // Positive for all 13 directions (their first non-zero component is +1).
    let off = (dir[0] * (py * px) as isize + dir[1] * px as isize + dir[2]).unsigned_abs();
    let mut pairs = 0usize;
    for &i in roi {
        let b = grid[i + off];
        if b != 0 {
            let a = grid[i];
            counts[(a as usize - 1) * nc + b as usize - 1] += 1;
            pairs += 1;
        }
    }
    pairs
}

/// Scratch marginals reused across matrices.
struct Work {
    px: Vec<f64>,
    /// `p_{i−j}` indexed by |i − j|.
    pdiff: Vec<f64>,
    /// `p_{i+j}` indexed by i + j.
    psum: Vec<f64>,
}

impl Work {
    fn new(lmax: usize) -> Work {
        Work {
            px: Vec::new(),
            pdiff: vec![0.0; lmax + 1],
            psum: vec![0.0; 2 * lmax + 1],
        }
    }
}

/// The 25 IBSI features (in [`IBSI_NAMES`] order) of one symmetric count
/// matrix with at least one pair. Entropies use log2. Undefined values come
/// out non-finite.
fn features(m: &[f64], lv: &[f64], ng: f64, w: &mut Work) -> [f64; N_FEATURES] {
    let nc = lv.len();
    let total: f64 = m.iter().sum();
    let inv = 1.0 / total;
    w.px.clear();
    w.px.resize(nc, 0.0);
    w.pdiff.iter_mut().for_each(|v| *v = 0.0);
    w.psum.iter_mut().for_each(|v| *v = 0.0);

    let (mut jmax, mut mu, mut hxy, mut asm) = (0.0f64, 0.0, 0.0, 0.0);
    let (mut contrast, mut dissim, mut id, mut idn, mut idm, mut idmn, mut invvar, mut autoc) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let ng2 = ng * ng;
    for i in 0..nc {
        let a = lv[i];
        let mut row = 0.0;
        for j in 0..nc {
            let c = m[i * nc + j];
            if c == 0.0 {
                continue;
            }
            let p = c * inv;
            let b = lv[j];
            let dd = (a - b).abs();
            let d2 = dd * dd;
            row += p;
            jmax = jmax.max(p);
            mu += a * p;
            hxy -= p * p.log2();
            asm += p * p;
            contrast += d2 * p;
            dissim += dd * p;
            id += p / (1.0 + dd);
            idn += p / (1.0 + dd / ng);
            idm += p / (1.0 + d2);
            idmn += p / (1.0 + d2 / ng2);
            if dd > 0.0 {
                invvar += p / d2;
            }
            autoc += a * b * p;
            w.pdiff[dd as usize] += p;
            w.psum[(a + b) as usize] += p;
        }
        w.px[i] = row;
    }

    // Second pass: moments about the mean (the matrix is symmetric, so both
    // marginals share the mean `mu` and the variance `var`).
    let (mut var, mut cov, mut ct, mut cs, mut cp) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for i in 0..nc {
        let da = lv[i] - mu;
        for j in 0..nc {
            let c = m[i * nc + j];
            if c == 0.0 {
                continue;
            }
            let p = c * inv;
            let db = lv[j] - mu;
            var += da * da * p;
            cov += da * db * p;
            let s = da + db;
            let s2 = s * s;
            ct += s2 * p;
            cs += s2 * s * p;
            cp += s2 * s2 * p;
        }
    }

    let (mut mud, mut hd) = (0.0, 0.0);
    for (k, &p) in w.pdiff.iter().enumerate() {
        if p > 0.0 {
            mud += k as f64 * p;
            hd -= p * p.log2();
        }
    }
    let mut vard = 0.0;
    for (k, &p) in w.pdiff.iter().enumerate() {
        if p > 0.0 {
            vard += (k as f64 - mud).powi(2) * p;
        }
    }
    let (mut mus, mut hs) = (0.0, 0.0);
    for (k, &p) in w.psum.iter().enumerate() {
        if p > 0.0 {
            mus += k as f64 * p;
            hs -= p * p.log2();
        }
    }
    let mut vars = 0.0;
    for (k, &p) in w.psum.iter().enumerate() {
        if p > 0.0 {
            vars += (k as f64 - mus).powi(2) * p;
        }
    }

    // Marginal entropy HX (= HY). With p_i. = p_.j, IBSI's HXY1 =
    // −Σ p_ij log2(p_i. p_.j) and HXY2 = −Σ p_i. p_.j log2(p_i. p_.j) both
    // reduce exactly to HX + HY = 2 HX.
    let hx: f64 =
        w.px.iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| -p * p.log2())
            .sum();
    let hxy12 = 2.0 * hx;
    // IMC1 is undefined for a single grey level (HX = 0): 0/0 → None.
    let imc1 = if hx > 0.0 {
        (hxy - hxy12) / hx
    } else {
        f64::NAN
    };
    // HXY ≤ HX + HY, so the exponent is ≤ 0; clamp rounding noise.
    let imc2 = (1.0 - (-2.0 * (hxy12 - hxy).max(0.0)).exp())
        .max(0.0)
        .sqrt();
    // Correlation is undefined when the marginal variance is zero.
    let corr = if var > 0.0 { cov / var } else { f64::NAN };

    [
        jmax, mu, var, hxy, mud, vard, hd, mus, vars, hs, asm, contrast, dissim, id, idn, idm,
        idmn, invvar, corr, autoc, ct, cs, cp, imc1, imc2,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{
        assert_averaged_and_merged, assert_ibsi, assert_names, binned, phantom_levels as phantom,
        smooth_cylinder,
    };
    use super::*;

    /// `reference_values.glcm` rows "[3D, averaged]" and "[3D, merged]" of
    /// /work/shared/reference/ibsi_phantom.json (no tolerance given: 3
    /// significant digits).
    const REFERENCE: &[(&str, f64)] = &[
        ("Joint maximum [3D, averaged]", 0.503),
        ("Joint maximum [3D, merged]", 0.509),
        ("Joint average [3D, averaged]", 2.14),
        ("Joint average [3D, merged]", 2.15),
        ("Joint variance [3D, averaged]", 3.1),
        ("Joint variance [3D, merged]", 3.13),
        ("Joint entropy [3D, averaged]", 2.4),
        ("Joint entropy [3D, merged]", 2.57),
        ("Difference average [3D, averaged]", 1.43),
        ("Difference average [3D, merged]", 1.38),
        ("Difference variance [3D, averaged]", 3.06),
        ("Difference variance [3D, merged]", 3.21),
        ("Difference entropy [3D, averaged]", 1.56),
        ("Difference entropy [3D, merged]", 1.64),
        ("Sum average [3D, averaged]", 4.29),
        ("Sum average [3D, merged]", 4.3),
        ("Sum variance [3D, averaged]", 7.07),
        ("Sum variance [3D, merged]", 7.41),
        ("Sum entropy [3D, averaged]", 1.92),
        ("Sum entropy [3D, merged]", 2.11),
        ("Angular second moment [3D, averaged]", 0.303),
        ("Angular second moment [3D, merged]", 0.291),
        ("Contrast [3D, averaged]", 5.32),
        ("Contrast [3D, merged]", 5.12),
        ("Dissimilarity [3D, averaged]", 1.43),
        ("Dissimilarity [3D, merged]", 1.38),
        ("Inverse difference [3D, averaged]", 0.677),
        ("Inverse difference [3D, merged]", 0.688),
        ("Normalised inverse difference [3D, averaged]", 0.851),
        ("Normalised inverse difference [3D, merged]", 0.856),
        ("Inverse difference moment [3D, averaged]", 0.618),
        ("Inverse difference moment [3D, merged]", 0.631),
        ("Normalised inverse difference moment [3D, averaged]", 0.898),
        ("Normalised inverse difference moment [3D, merged]", 0.902),
        ("Inverse variance [3D, averaged]", 0.0604),
        ("Inverse variance [3D, merged]", 0.0574),
        ("Correlation [3D, averaged]", 0.157),
        ("Correlation [3D, merged]", 0.183),
        ("Autocorrelation [3D, averaged]", 5.06),
        ("Autocorrelation [3D, merged]", 5.19),
        ("Cluster tendency [3D, averaged]", 7.07),
        ("Cluster tendency [3D, merged]", 7.41),
        ("Cluster shade [3D, averaged]", 16.6),
        ("Cluster shade [3D, merged]", 17.4),
        ("Cluster prominence [3D, averaged]", 145.0),
        ("Cluster prominence [3D, merged]", 147.0),
        ("Information correlation 1 [3D, averaged]", -0.157),
        ("Information correlation 1 [3D, merged]", -0.0288),
        ("Information correlation 2 [3D, averaged]", 0.52),
        ("Information correlation 2 [3D, merged]", 0.269),
    ];

    #[test]
    fn names_table_is_consistent() {
        assert_averaged_and_merged(IBSI_NAMES, N_FEATURES, "glcm");
    }

    #[test]
    fn ibsi_phantom() {
        assert_ibsi(&glcm(&phantom()), IBSI_NAMES, REFERENCE);
    }

    fn volume(dims: [usize; 3], values: Vec<f64>, mask: Vec<bool>) -> Discretised {
        binned(dims, 1.0, 0.0, values, mask)
    }

    fn check_edge(d: &Discretised) -> Vec<Feature> {
        let f = glcm(d);
        assert_names(&f, IBSI_NAMES);
        f
    }

    #[test]
    fn edge_cases() {
        // Empty mask.
        let f = check_edge(&volume([3, 3, 3], vec![5.0; 27], vec![false; 27]));
        assert!(f.iter().all(|x| x.value.is_none()));
        // Single voxel: no pairs.
        let mut mask = vec![false; 27];
        mask[13] = true;
        let f = check_edge(&volume([3, 3, 3], vec![5.0; 27], mask));
        assert!(f.iter().all(|x| x.value.is_none()));
        // Constant intensity: correlation and IMC1 undefined, the rest defined.
        let f = check_edge(&volume([3, 3, 3], vec![5.0; 27], vec![true; 27]));
        let get = |n: &str| f.iter().find(|x| x.name == n).and_then(|x| x.value);
        assert_eq!(get("original_glcm_JointEnergy"), Some(1.0));
        assert_eq!(get("original_glcmMerged_MaximumProbability"), Some(1.0));
        assert_eq!(get("original_glcm_Correlation"), None);
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
            out = glcm(&d);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("glcm: {n} voxels, {} levels: {ms:.3} ms", d.n_levels);
        assert_eq!(out.len(), IBSI_NAMES.len());
    }
}
