//! Neighbouring grey level dependence matrix (NGLDM) features, IBSI-1 §3.11,
//! one 3D matrix for the whole ROI.
//!
//! For every ROI voxel the dependence `j` is the number of voxels within
//! Chebyshev distance 1 (26 neighbours) that share its grey level
//! (coarseness α = 0), counting the voxel itself as IBSI does, so 1 ≤ j ≤ 27;
//! neighbours outside the ROI do not count. The matrix counts voxels by grey
//! level and dependence. pyradiomics' GLDM is this matrix; its names are used
//! where it has the feature.

use super::glszm::{pack, pair_features};
use super::volume::{Discretised, Feature};

/// Emitted feature names (in output order) and their IBSI reference keys.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    (
        "original_ngldm_SmallDependenceEmphasis",
        "Low dependence emphasis [3D]",
    ),
    (
        "original_ngldm_LargeDependenceEmphasis",
        "High dependence emphasis [3D]",
    ),
    (
        "original_ngldm_LowGrayLevelEmphasis",
        "Low grey level count emphasis [3D]",
    ),
    (
        "original_ngldm_HighGrayLevelEmphasis",
        "High grey level count emphasis [3D]",
    ),
    (
        "original_ngldm_SmallDependenceLowGrayLevelEmphasis",
        "Low dependence low grey level emphasis [3D]",
    ),
    (
        "original_ngldm_SmallDependenceHighGrayLevelEmphasis",
        "Low dependence high grey level emphasis [3D]",
    ),
    (
        "original_ngldm_LargeDependenceLowGrayLevelEmphasis",
        "High dependence low grey level emphasis [3D]",
    ),
    (
        "original_ngldm_LargeDependenceHighGrayLevelEmphasis",
        "High dependence high grey level emphasis [3D]",
    ),
    (
        "original_ngldm_GrayLevelNonUniformity",
        "Grey level non-uniformity [3D]",
    ),
    (
        "original_ngldm_GrayLevelNonUniformityNormalized",
        "Normalised grey level non-uniformity [3D]",
    ),
    (
        "original_ngldm_DependenceNonUniformity",
        "Dependence count non-uniformity [3D]",
    ),
    (
        "original_ngldm_DependenceNonUniformityNormalized",
        "Normalised dependence count non-uniformity [3D]",
    ),
    (
        "original_ngldm_DependencePercentage",
        "Dependence count percentage [3D]",
    ),
    (
        "original_ngldm_GrayLevelVariance",
        "Grey level variance [3D]",
    ),
    (
        "original_ngldm_DependenceVariance",
        "Dependence count variance [3D]",
    ),
    (
        "original_ngldm_DependenceEntropy",
        "Dependence count entropy [3D]",
    ),
    (
        "original_ngldm_DependenceEnergy",
        "Dependence count energy [3D]",
    ),
];

/// NGLDM features of the ROI (17 values, names as in [`IBSI_NAMES`]).
pub fn ngldm(d: &Discretised) -> Vec<Feature> {
    let mut entries = dependences(d);
    let n_voxels = entries.len();
    let values = pair_features(&mut entries, n_voxels);
    Feature::named(IBSI_NAMES, values)
}

/// One packed (grey level, dependence) entry per ROI voxel; empty for an
/// inconsistent grid. Every ROI voxel has a neighbourhood under the IBSI
/// definition, so the dependence percentage is always 1.
fn dependences(d: &Discretised) -> Vec<u64> {
    let [nz, ny, nx] = d.dims;
    let len = nz.checked_mul(ny).and_then(|v| v.checked_mul(nx));
    if len != Some(d.levels.len()) || d.levels.is_empty() {
        return Vec::new();
    }
    let lv = &d.levels;
    let mut entries = Vec::new();
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
                // The 3×3×3 block includes the centre voxel, which is the
                // IBSI "+1"; outside-ROI voxels have level 0 and never match.
                let mut j = 0usize;
                for zz in z0..=z1 {
                    for yy in y0..=y1 {
                        let row = (zz * ny + yy) * nx;
                        j += lv[row + x0..=row + x1]
                            .iter()
                            .filter(|&&m| m == level)
                            .count();
                    }
                }
                entries.push(pack(level, j));
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{
        assert_ibsi, assert_names, binned, phantom_levels as phantom, textured_tube,
    };
    use super::*;

    /// IBSI reference values (3D rows); all given to 3 significant digits.
    const REFERENCE: &[(&str, f64)] = &[
        ("Low dependence emphasis [3D]", 0.045),
        ("High dependence emphasis [3D]", 109.0),
        ("Low grey level count emphasis [3D]", 0.693),
        ("High grey level count emphasis [3D]", 7.66),
        ("Low dependence low grey level emphasis [3D]", 0.00963),
        ("Low dependence high grey level emphasis [3D]", 0.736),
        ("High dependence low grey level emphasis [3D]", 102.0),
        ("High dependence high grey level emphasis [3D]", 235.0),
        ("Grey level non-uniformity [3D]", 37.9),
        ("Normalised grey level non-uniformity [3D]", 0.512),
        ("Dependence count non-uniformity [3D]", 4.86),
        ("Normalised dependence count non-uniformity [3D]", 0.0657),
        ("Dependence count percentage [3D]", 1.0),
        ("Grey level variance [3D]", 3.05),
        ("Dependence count variance [3D]", 22.1),
        ("Dependence count entropy [3D]", 4.4),
        ("Dependence count energy [3D]", 0.0533),
    ];

    fn volume(dims: [usize; 3], values: Vec<f64>, mask: Vec<bool>) -> Discretised {
        binned(dims, 2.0, 1.0, values, mask)
    }

    #[test]
    fn ibsi_phantom() {
        assert_ibsi(&ngldm(&phantom()), IBSI_NAMES, REFERENCE);
    }

    #[test]
    fn edge_cases() {
        let empty = volume([2, 2, 2], vec![1.0; 8], vec![false; 8]);
        let f = ngldm(&empty);
        assert_names(&f, IBSI_NAMES);
        assert!(f.iter().all(|f| f.value.is_none()));
        assert_names(&ngldm(&volume([0, 3, 3], vec![], vec![])), IBSI_NAMES);
        let mut bad = volume([2, 2, 2], vec![1.0; 8], vec![true; 8]);
        bad.levels.pop();
        assert_names(&ngldm(&bad), IBSI_NAMES);
        // Single voxel: dependence 1 (the voxel itself).
        let mut mask = vec![false; 27];
        mask[13] = true;
        let f = ngldm(&volume([3, 3, 3], vec![5.0; 27], mask));
        assert_names(&f, IBSI_NAMES);
        assert_eq!(f[0].value, Some(1.0));
        assert_eq!(f[3].value, Some(25.0));
        // Constant 3×3×3 block: the centre has dependence 27.
        let f = ngldm(&volume([3, 3, 3], vec![2.0; 27], vec![true; 27]));
        assert_names(&f, IBSI_NAMES);
        let hde = (8.0 * 64.0 + 12.0 * 144.0 + 6.0 * 324.0 + 729.0) / 27.0;
        assert!((f[1].value.expect("HDE") - hde).abs() < 1e-9);
        assert_eq!(f[13].value, Some(0.0));
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn speed() {
        let d = textured_tube();
        let n = d.levels.iter().filter(|&&l| l > 0).count();
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            std::hint::black_box(ngldm(std::hint::black_box(&d)));
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "ngldm: {n} voxels, {} levels, best {best:.3} ms",
            d.n_levels
        );
    }
}
