//! Grey level distance zone matrix (GLDZM) features, IBSI-1 §3.9, one 3D
//! matrix for the whole ROI.
//!
//! Zones are those of the GLSZM (26-connected voxels of one grey level); each
//! zone's distance is the smallest distance to the ROI edge over its voxels,
//! and the matrix counts zones by grey level and distance. pyradiomics has no
//! GLDZM: names follow its GLSZM style.

use super::glszm::{for_each_zone, pack, pair_features, Padded};
use super::volume::{Discretised, Feature};

/// Emitted feature names (in output order) and their IBSI reference keys.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    (
        "original_gldzm_SmallDistanceEmphasis",
        "Small distance emphasis [3D]",
    ),
    (
        "original_gldzm_LargeDistanceEmphasis",
        "Large distance emphasis [3D]",
    ),
    (
        "original_gldzm_LowGrayLevelZoneEmphasis",
        "Low grey level zone emphasis [3D]",
    ),
    (
        "original_gldzm_HighGrayLevelZoneEmphasis",
        "High grey level zone emphasis [3D]",
    ),
    (
        "original_gldzm_SmallDistanceLowGrayLevelEmphasis",
        "Small distance low grey level emphasis [3D]",
    ),
    (
        "original_gldzm_SmallDistanceHighGrayLevelEmphasis",
        "Small distance high grey level emphasis [3D]",
    ),
    (
        "original_gldzm_LargeDistanceLowGrayLevelEmphasis",
        "Large distance low grey level emphasis [3D]",
    ),
    (
        "original_gldzm_LargeDistanceHighGrayLevelEmphasis",
        "Large distance high grey level emphasis [3D]",
    ),
    (
        "original_gldzm_GrayLevelNonUniformity",
        "Grey level non-uniformity [3D]",
    ),
    (
        "original_gldzm_GrayLevelNonUniformityNormalized",
        "Normalised grey level non-uniformity [3D]",
    ),
    (
        "original_gldzm_ZoneDistanceNonUniformity",
        "Zone distance non-uniformity [3D]",
    ),
    (
        "original_gldzm_ZoneDistanceNonUniformityNormalized",
        "Normalised zone distance non-uniformity [3D]",
    ),
    ("original_gldzm_ZonePercentage", "Zone percentage [3D]"),
    (
        "original_gldzm_GrayLevelVariance",
        "Grey level variance [3D]",
    ),
    (
        "original_gldzm_ZoneDistanceVariance",
        "Zone distance variance [3D]",
    ),
    (
        "original_gldzm_ZoneDistanceEntropy",
        "Zone distance entropy [3D]",
    ),
];

/// GLDZM features of the ROI (16 values, names as in [`IBSI_NAMES`]).
pub fn gldzm(d: &Discretised) -> Vec<Feature> {
    let grid = Padded::new(d);
    let distance = edge_distance(&grid);
    let mut entries = Vec::new();
    for_each_zone(&grid, |level, members| {
        let zone_distance = members.iter().map(|&p| distance[p]).min().unwrap_or(1);
        entries.push(pack(level, zone_distance as usize));
    });
    let values = pair_features(&mut entries, grid.n_voxels);
    Feature::named(IBSI_NAMES, values)
}

/// City-block (6-connected) distance of every ROI voxel to the nearest voxel
/// outside the ROI, on the padded grid; 0 outside the ROI.
///
/// The padding makes voxels beyond the image count as outside, so a voxel on
/// the ROI or image border has distance 1 (IBSI: the lowest distance is 1).
/// IBSI describes repeated 6-connected erosion; the two-pass raster sweep
/// (Rosenfeld & Pfaltz) gives the same L1 distances in O(N). The ROI mask
/// serves as both the morphological and the intensity mask.
fn edge_distance(grid: &Padded) -> Vec<u32> {
    let row = grid.dims[2];
    let slice = grid.dims[1] * row;
    // Half of u32::MAX so that `+ 1` cannot overflow.
    let mut dist: Vec<u32> = grid
        .levels
        .iter()
        .map(|&l| if l > 0 { u32::MAX / 2 } else { 0 })
        .collect();
    // ROI voxels are never in the border, so `p ± 1`, `p ± row` and
    // `p ± slice` stay in bounds.
    for p in 0..dist.len() {
        if grid.levels[p] > 0 {
            let m = dist[p - 1].min(dist[p - row]).min(dist[p - slice]) + 1;
            dist[p] = dist[p].min(m);
        }
    }
    for p in (0..dist.len()).rev() {
        if grid.levels[p] > 0 {
            let m = dist[p + 1].min(dist[p + row]).min(dist[p + slice]) + 1;
            dist[p] = dist[p].min(m);
        }
    }
    dist
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{
        assert_ibsi, assert_names, binned, phantom_levels as phantom, textured_tube,
    };
    use super::*;

    /// IBSI reference values (3D rows); all given to 3 significant digits.
    const REFERENCE: &[(&str, f64)] = &[
        ("Small distance emphasis [3D]", 1.0),
        ("Large distance emphasis [3D]", 1.0),
        ("Low grey level zone emphasis [3D]", 0.253),
        ("High grey level zone emphasis [3D]", 15.6),
        ("Small distance low grey level emphasis [3D]", 0.253),
        ("Small distance high grey level emphasis [3D]", 15.6),
        ("Large distance low grey level emphasis [3D]", 0.253),
        ("Large distance high grey level emphasis [3D]", 15.6),
        ("Grey level non-uniformity [3D]", 1.4),
        ("Normalised grey level non-uniformity [3D]", 0.28),
        ("Zone distance non-uniformity [3D]", 5.0),
        ("Normalised zone distance non-uniformity [3D]", 1.0),
        ("Zone percentage [3D]", 0.0676),
        ("Grey level variance [3D]", 2.64),
        ("Zone distance variance [3D]", 0.0),
        ("Zone distance entropy [3D]", 1.92),
    ];

    fn volume(dims: [usize; 3], values: Vec<f64>, mask: Vec<bool>) -> Discretised {
        binned(dims, 2.0, 1.0, values, mask)
    }

    #[test]
    fn ibsi_phantom() {
        assert_ibsi(&gldzm(&phantom()), IBSI_NAMES, REFERENCE);
    }

    /// Distances on a 5×5×5 cube: 1 on the surface, 3 at the centre.
    #[test]
    fn distance_map() {
        let d = volume([5, 5, 5], vec![1.0; 125], vec![true; 125]);
        let grid = Padded::new(&d);
        let dist = edge_distance(&grid);
        let at = |z: usize, y: usize, x: usize| dist[((z + 1) * 7 + y + 1) * 7 + x + 1];
        assert_eq!(at(0, 0, 0), 1);
        assert_eq!(at(2, 2, 0), 1);
        assert_eq!(at(1, 1, 1), 2);
        assert_eq!(at(2, 2, 1), 2);
        assert_eq!(at(2, 2, 2), 3);
        // A hole in the middle makes its face neighbours distance 1.
        let mut mask = vec![true; 125];
        mask[62] = false;
        let grid = Padded::new(&volume([5, 5, 5], vec![1.0; 125], mask));
        let dist = edge_distance(&grid);
        let at = |z: usize, y: usize, x: usize| dist[((z + 1) * 7 + y + 1) * 7 + x + 1];
        assert_eq!(at(2, 2, 1), 1);
        assert_eq!(at(1, 1, 1), 2);
        assert_eq!(at(1, 1, 2), 2);
        // A zone's distance is its minimum: the inner 3×3×3 core of level 2
        // in a cube of level 1 sits at distance 2.
        let mut values = vec![1.0; 125];
        for z in 1..4 {
            for y in 1..4 {
                for x in 1..4 {
                    values[(z * 5 + y) * 5 + x] = 2.0;
                }
            }
        }
        let f = gldzm(&volume([5, 5, 5], values, vec![true; 125]));
        // Zones: level 1 (distance 1) and level 2 (distance 2).
        assert_eq!(f[0].value, Some((1.0 + 0.25) / 2.0));
        assert_eq!(f[1].value, Some((1.0 + 4.0) / 2.0));
    }

    /// The raster sweep against a brute-force search for the nearest
    /// outside voxel (border included) on irregular masks.
    #[test]
    fn distance_map_brute_force() {
        let (nz, ny, nx) = (6, 7, 8);
        let mut state = 12345u64;
        for _ in 0..20 {
            let mask: Vec<bool> = (0..nz * ny * nx)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 33) % 10 < 8
                })
                .collect();
            let grid = Padded::new(&volume([nz, ny, nx], vec![1.0; mask.len()], mask));
            let dist = edge_distance(&grid);
            let [pz, py, px] = grid.dims;
            let coord = |p: usize| {
                (
                    (p / (py * px)) as i64,
                    ((p / px) % py) as i64,
                    (p % px) as i64,
                )
            };
            for (p, &dp) in dist.iter().enumerate() {
                if grid.levels[p] == 0 {
                    assert_eq!(dp, 0);
                    continue;
                }
                let (z, y, x) = coord(p);
                let nearest = (0..pz * py * px)
                    .filter(|&q| grid.levels[q] == 0)
                    .map(|q| {
                        let (qz, qy, qx) = coord(q);
                        (z - qz).abs() + (y - qy).abs() + (x - qx).abs()
                    })
                    .min();
                assert_eq!(Some(i64::from(dp)), nearest);
            }
        }
    }

    #[test]
    fn edge_cases() {
        let empty = volume([2, 2, 2], vec![1.0; 8], vec![false; 8]);
        let f = gldzm(&empty);
        assert_names(&f, IBSI_NAMES);
        assert!(f.iter().all(|f| f.value.is_none()));
        assert_names(&gldzm(&volume([0, 3, 3], vec![], vec![])), IBSI_NAMES);
        let mut bad = volume([2, 2, 2], vec![1.0; 8], vec![true; 8]);
        bad.levels.pop();
        assert_names(&gldzm(&bad), IBSI_NAMES);
        let mut mask = vec![false; 27];
        mask[13] = true;
        let f = gldzm(&volume([3, 3, 3], vec![5.0; 27], mask));
        assert_names(&f, IBSI_NAMES);
        assert_eq!(f[0].value, Some(1.0));
        let f = gldzm(&volume([3, 4, 5], vec![2.0; 60], vec![true; 60]));
        assert_names(&f, IBSI_NAMES);
        assert_eq!(f[14].value, Some(0.0));
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn speed() {
        let d = textured_tube();
        let n = d.levels.iter().filter(|&&l| l > 0).count();
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            std::hint::black_box(gldzm(std::hint::black_box(&d)));
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "gldzm: {n} voxels, {} levels, best {best:.3} ms",
            d.n_levels
        );
    }
}
