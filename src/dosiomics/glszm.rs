//! Grey level size zone matrix (GLSZM) features, IBSI-1 §3.8, one 3D matrix
//! for the whole ROI.
//!
//! A zone is a 26-connected group of ROI voxels sharing one grey level; the
//! matrix counts zones by grey level and zone size (in voxels). The zone
//! labelling (`for_each_zone`) and the arithmetic common to all
//! "grey level × count" matrices (`pair_features`) live here and are reused
//! by the GLDZM and NGLDM families.

use super::volume::{Discretised, Feature};

/// Emitted feature names (in output order) and their IBSI reference keys.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    (
        "original_glszm_SmallAreaEmphasis",
        "Small zone emphasis [3D]",
    ),
    (
        "original_glszm_LargeAreaEmphasis",
        "Large zone emphasis [3D]",
    ),
    (
        "original_glszm_LowGrayLevelZoneEmphasis",
        "Low grey level zone emphasis [3D]",
    ),
    (
        "original_glszm_HighGrayLevelZoneEmphasis",
        "High grey level zone emphasis [3D]",
    ),
    (
        "original_glszm_SmallAreaLowGrayLevelEmphasis",
        "Small zone low grey level emphasis [3D]",
    ),
    (
        "original_glszm_SmallAreaHighGrayLevelEmphasis",
        "Small zone high grey level emphasis [3D]",
    ),
    (
        "original_glszm_LargeAreaLowGrayLevelEmphasis",
        "Large zone low grey level emphasis [3D]",
    ),
    (
        "original_glszm_LargeAreaHighGrayLevelEmphasis",
        "Large zone high grey level emphasis [3D]",
    ),
    (
        "original_glszm_GrayLevelNonUniformity",
        "Grey level non-uniformity [3D]",
    ),
    (
        "original_glszm_GrayLevelNonUniformityNormalized",
        "Normalised grey level non-uniformity [3D]",
    ),
    (
        "original_glszm_SizeZoneNonUniformity",
        "Zone size non-uniformity [3D]",
    ),
    (
        "original_glszm_SizeZoneNonUniformityNormalized",
        "Normalised zone size non-uniformity [3D]",
    ),
    ("original_glszm_ZonePercentage", "Zone percentage [3D]"),
    (
        "original_glszm_GrayLevelVariance",
        "Grey level variance [3D]",
    ),
    ("original_glszm_ZoneVariance", "Zone size variance [3D]"),
    ("original_glszm_ZoneEntropy", "Zone size entropy [3D]"),
];

/// GLSZM features of the ROI (16 values, names as in [`IBSI_NAMES`]).
pub fn glszm(d: &Discretised) -> Vec<Feature> {
    let grid = Padded::new(d);
    let mut entries = Vec::new();
    for_each_zone(&grid, |level, members| {
        entries.push(pack(level, members.len()))
    });
    let values = pair_features(&mut entries, grid.n_voxels);
    Feature::named(IBSI_NAMES, values)
}

/// The grey levels with a one-voxel border of level 0 (outside) around the
/// grid, so that every ROI voxel has all 26 neighbours in bounds and the
/// neighbour loops need no bounds checks.
pub(super) struct Padded {
    /// Grey level per padded voxel, 0 outside the ROI and in the border.
    pub levels: Vec<u32>,
    /// Padded dimensions `[nz + 2, ny + 2, nx + 2]`.
    pub dims: [usize; 3],
    /// Number of ROI voxels.
    pub n_voxels: usize,
}

impl Padded {
    /// An inconsistent `Discretised` (levels not matching `dims`) is treated
    /// as an empty ROI rather than a panic.
    pub fn new(d: &Discretised) -> Padded {
        let [nz, ny, nx] = d.dims;
        let n = nz.checked_mul(ny).and_then(|v| v.checked_mul(nx));
        if n != Some(d.levels.len()) || d.levels.is_empty() {
            return Padded {
                levels: Vec::new(),
                dims: [0; 3],
                n_voxels: 0,
            };
        }
        let (py, px) = (ny + 2, nx + 2);
        let mut levels = vec![0u32; (nz + 2) * py * px];
        for z in 0..nz {
            for y in 0..ny {
                let src = (z * ny + y) * nx;
                let dst = ((z + 1) * py + y + 1) * px + 1;
                levels[dst..dst + nx].copy_from_slice(&d.levels[src..src + nx]);
            }
        }
        let n_voxels = d.levels.iter().filter(|&&l| l > 0).count();
        Padded {
            levels,
            dims: [nz + 2, py, px],
            n_voxels,
        }
    }

    /// Index offsets of the 26 neighbours (Chebyshev distance 1).
    pub fn offsets26(&self) -> [isize; 26] {
        let slice = (self.dims[1] * self.dims[2]) as isize;
        let row = self.dims[2] as isize;
        let mut out = [0isize; 26];
        let mut k = 0;
        for dz in -1isize..=1 {
            for dy in -1isize..=1 {
                for dx in -1isize..=1 {
                    if (dz, dy, dx) != (0, 0, 0) {
                        out[k] = dz * slice + dy * row + dx;
                        k += 1;
                    }
                }
            }
        }
        out
    }
}

/// Calls `visit(level, members)` once per zone: a maximal 26-connected set
/// of ROI voxels with the same grey level; `members` are padded indices.
///
/// Iterative fill with an explicit worklist (no recursion: a dose ROI can be
/// one zone of tens of thousands of voxels).
pub(super) fn for_each_zone(grid: &Padded, mut visit: impl FnMut(u32, &[usize])) {
    let offsets = grid.offsets26();
    let mut seen = vec![false; grid.levels.len()];
    let mut members: Vec<usize> = Vec::new();
    for seed in 0..grid.levels.len() {
        let level = grid.levels[seed];
        if level == 0 || seen[seed] {
            continue;
        }
        seen[seed] = true;
        members.clear();
        members.push(seed);
        let mut head = 0;
        while head < members.len() {
            let p = members[head];
            head += 1;
            for &o in &offsets {
                // In bounds: `p` is an ROI voxel, hence not in the border.
                let q = p.wrapping_add_signed(o);
                if grid.levels[q] == level && !seen[q] {
                    seen[q] = true;
                    members.push(q);
                }
            }
        }
        visit(level, &members);
    }
}

/// One matrix entry, grey level `i` (row) and count `j` (column: zone size,
/// zone distance or dependence), as a sortable key.
pub(super) fn pack(i: u32, j: usize) -> u64 {
    (u64::from(i) << 32) | j.min(u32::MAX as usize) as u64
}

/// The IBSI features shared by GLSZM, GLDZM and NGLDM, computed from one
/// entry per zone (or neighbourhood), each [`pack`]ed as (`i`, `j`), with
/// `n_voxels` the number of ROI voxels.
///
/// Storing entries instead of a dense `Ng × Nj` matrix keeps memory at
/// O(entries) when the size axis is long (one zone can hold the whole ROI).
///
/// Output order: small-j emphasis, large-j emphasis, low grey level
/// emphasis, high grey level emphasis, small-j low grey, small-j high grey,
/// large-j low grey, large-j high grey, grey level non-uniformity (plain,
/// normalised), j non-uniformity (plain, normalised), percentage
/// (entries / voxels), grey level variance, j variance, entropy (log2),
/// energy. All `None` when there is no entry.
pub(super) fn pair_features(entries: &mut [u64], n_voxels: usize) -> [Option<f64>; 17] {
    if entries.is_empty() || n_voxels == 0 {
        return [None; 17];
    }
    entries.sort_unstable();
    let ns = entries.len() as f64;
    let max_j = entries.iter().map(|&k| k & 0xffff_ffff).max().unwrap_or(0) as usize;
    let mut per_j = vec![0u64; max_j + 1];

    // Distinct (i, j, count) entries, with the grey level marginal on the fly
    // (entries are sorted by i first).
    let mut cells: Vec<(f64, f64, f64)> = Vec::new();
    let mut gl_nu = 0.0;
    let mut run_level = u64::MAX;
    let mut run_count = 0.0;
    let mut start = 0;
    while start < entries.len() {
        let key = entries[start];
        let mut end = start + 1;
        while end < entries.len() && entries[end] == key {
            end += 1;
        }
        let (i, j) = (key >> 32, key & 0xffff_ffff);
        let c = (end - start) as f64;
        if i != run_level {
            gl_nu += run_count * run_count;
            run_level = i;
            run_count = 0.0;
        }
        run_count += c;
        per_j[j as usize] += (end - start) as u64;
        cells.push((i as f64, j as f64, c));
        start = end;
    }
    gl_nu += run_count * run_count;
    let j_nu: f64 = per_j.iter().map(|&c| (c as f64) * (c as f64)).sum();

    let mut s = [0.0f64; 8];
    let (mut mean_i, mut mean_j) = (0.0, 0.0);
    let (mut entropy, mut energy) = (0.0, 0.0);
    for &(i, j, c) in &cells {
        let (i2, j2) = (i * i, j * j);
        s[0] += c / j2;
        s[1] += c * j2;
        s[2] += c / i2;
        s[3] += c * i2;
        s[4] += c / (i2 * j2);
        s[5] += c * i2 / j2;
        s[6] += c * j2 / i2;
        s[7] += c * i2 * j2;
        let p = c / ns;
        mean_i += p * i;
        mean_j += p * j;
        entropy -= p * p.log2();
        energy += p * p;
    }
    // Second pass for the variances: exact zero for a single column.
    let (mut var_i, mut var_j) = (0.0, 0.0);
    for &(i, j, c) in &cells {
        let p = c / ns;
        var_i += p * (i - mean_i) * (i - mean_i);
        var_j += p * (j - mean_j) * (j - mean_j);
    }
    let finite = |v: f64| v.is_finite().then_some(v);
    [
        finite(s[0] / ns),
        finite(s[1] / ns),
        finite(s[2] / ns),
        finite(s[3] / ns),
        finite(s[4] / ns),
        finite(s[5] / ns),
        finite(s[6] / ns),
        finite(s[7] / ns),
        finite(gl_nu / ns),
        finite(gl_nu / (ns * ns)),
        finite(j_nu / ns),
        finite(j_nu / (ns * ns)),
        finite(ns / n_voxels as f64),
        finite(var_i),
        finite(var_j),
        // `-0.0` for a single cell; report it as 0.
        finite(entropy.max(0.0)),
        finite(energy),
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
        ("Small zone emphasis [3D]", 0.255),
        ("Large zone emphasis [3D]", 550.0),
        ("Low grey level zone emphasis [3D]", 0.253),
        ("High grey level zone emphasis [3D]", 15.6),
        ("Small zone low grey level emphasis [3D]", 0.0256),
        ("Small zone high grey level emphasis [3D]", 2.76),
        ("Large zone low grey level emphasis [3D]", 503.0),
        ("Large zone high grey level emphasis [3D]", 1490.0),
        ("Grey level non-uniformity [3D]", 1.4),
        ("Normalised grey level non-uniformity [3D]", 0.28),
        ("Zone size non-uniformity [3D]", 1.0),
        ("Normalised zone size non-uniformity [3D]", 0.2),
        ("Zone percentage [3D]", 0.0676),
        ("Grey level variance [3D]", 2.64),
        ("Zone size variance [3D]", 331.0),
        ("Zone size entropy [3D]", 2.32),
    ];

    fn volume(dims: [usize; 3], values: Vec<f64>, mask: Vec<bool>) -> Discretised {
        binned(dims, 2.0, 1.0, values, mask)
    }

    #[test]
    fn ibsi_phantom() {
        assert_ibsi(&glszm(&phantom()), IBSI_NAMES, REFERENCE);
    }

    #[test]
    fn edge_cases() {
        // Empty mask.
        let empty = volume([2, 2, 2], vec![1.0; 8], vec![false; 8]);
        let f = glszm(&empty);
        assert_names(&f, IBSI_NAMES);
        assert!(f.iter().all(|f| f.value.is_none()));
        // Zero-sized grid and inconsistent levels.
        assert_names(&glszm(&volume([0, 3, 3], vec![], vec![])), IBSI_NAMES);
        let mut bad = volume([2, 2, 2], vec![1.0; 8], vec![true; 8]);
        bad.levels.pop();
        assert_names(&glszm(&bad), IBSI_NAMES);
        // Single voxel: one zone of size 1.
        let mut mask = vec![false; 27];
        mask[13] = true;
        let f = glszm(&volume([3, 3, 3], vec![5.0; 27], mask));
        assert_names(&f, IBSI_NAMES);
        assert_eq!(f[0].value, Some(1.0));
        assert_eq!(f[15].value, Some(0.0));
        // Constant intensity, full grid: one zone.
        let f = glszm(&volume([3, 4, 5], vec![2.0; 60], vec![true; 60]));
        assert_names(&f, IBSI_NAMES);
        assert_eq!(f[1].value, Some(3600.0));
        assert_eq!(f[12].value, Some(1.0 / 60.0));
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
            std::hint::black_box(glszm(std::hint::black_box(&d)));
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "glszm: {n} voxels, {} levels, best {best:.3} ms",
            d.n_levels
        );
    }
}
