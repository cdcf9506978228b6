//! Morphological features (IBSI-1 §3.1): size and shape of the ROI from a
//! marching-cubes surface mesh, the voxel-centre point cloud (PCA), bounding
//! volumes (axis-aligned box, approximate enclosing ellipsoid, convex hull),
//! and the spatial autocorrelation of intensities (Moran's I, Geary's C).
//!
//! The morphological and intensity masks are the same mask here. All
//! distances, areas and volumes are physical (mm, mm², mm³), honouring
//! anisotropic voxel spacing.

use super::mesh::{self, PaddedMask, Point};
use super::volume::{Feature, Volume};

/// Emitted names, in order, with their IBSI-1 reference keys.
pub const IBSI_NAMES: &[(&str, &str)] = &[
    ("original_shape_MeshVolume", "Volume (mesh)"),
    ("original_shape_VoxelVolume", "Volume (voxel counting)"),
    ("original_shape_SurfaceArea", "Surface area (mesh)"),
    (
        "original_shape_SurfaceVolumeRatio",
        "Surface to volume ratio",
    ),
    ("original_shape_Compactness1", "Compactness 1"),
    ("original_shape_Compactness2", "Compactness 2"),
    (
        "original_shape_SphericalDisproportion",
        "Spherical disproportion",
    ),
    ("original_shape_Sphericity", "Sphericity"),
    ("original_shape_Asphericity", "Asphericity"),
    ("original_shape_CentreOfMassShift", "Centre of mass shift"),
    ("original_shape_Maximum3DDiameter", "Maximum 3D diameter"),
    ("original_shape_MajorAxisLength", "Major axis length"),
    ("original_shape_MinorAxisLength", "Minor axis length"),
    ("original_shape_LeastAxisLength", "Least axis length"),
    ("original_shape_Elongation", "Elongation"),
    ("original_shape_Flatness", "Flatness"),
    (
        "original_shape_VolumeDensityAABB",
        "Volume density (axis-aligned bounding box)",
    ),
    (
        "original_shape_AreaDensityAABB",
        "Area density (axis-aligned bounding box)",
    ),
    (
        "original_shape_VolumeDensityAEE",
        "Volume density (approximate enclosing ellipsoid)",
    ),
    (
        "original_shape_AreaDensityAEE",
        "Area density (approximate enclosing ellipsoid)",
    ),
    (
        "original_shape_VolumeDensityConvexHull",
        "Volume density (convex hull)",
    ),
    (
        "original_shape_AreaDensityConvexHull",
        "Area density (convex hull)",
    ),
    ("original_shape_IntegratedIntensity", "Integrated intensity"),
    ("original_shape_MoransI", "Moran\u{2019}s I index"),
    ("original_shape_GearysC", "Geary\u{2019}s C measure"),
];

/// Pair budget for Moran's I and Geary's C, which sum over all N(N − 1)/2
/// voxel pairs. ROIs with at most this many pairs (N ≤ 1414 voxels) are
/// computed exactly. Larger ROIs use about this many pairs, sampled
/// deterministically: the voxels are shuffled once (SplitMix64, fixed seed)
/// and voxel k is paired with voxels k + 1 … k + K of the shuffled order
/// (cyclically), K = ⌊budget / N⌋. Each is then a uniformly random pair,
/// every voxel takes part in exactly 2K of them, and the pair sums enter
/// only as weighted means (Σw·x / Σw); mean and variance still use every
/// voxel. This beats taking all pairs among a random subset of voxels at
/// the same cost by far, because every voxel is used evenly: on a smooth
/// 20 000-voxel dose ROI the subset design was 11 % (Moran) and 6 % (Geary)
/// off, these pairs are within a few per cent and 0.3 % over several seeds
/// (0.6 % and 0.05 % with the seed used), in 2–3 ms.
pub const AUTOCORRELATION_MAX_PAIRS: usize = 1_000_000;

/// IBSI-1 morphological features of `v`'s ROI, named as in [`IBSI_NAMES`].
/// An empty ROI (or a mask that does not match `dims`) gives all `None`.
pub fn morphology(v: &Volume) -> Vec<Feature> {
    let values = compute(v).unwrap_or([f64::NAN; 25]);
    IBSI_NAMES
        .iter()
        .zip(values)
        .map(|(&(name, _), x)| Feature::new(name, x))
        .collect()
}

/// Feature values in [`IBSI_NAMES`] order; NaN marks an undefined value.
fn compute(v: &Volume) -> Option<[f64; 25]> {
    let [nz, ny, nx] = v.dims;
    if v.values.len() != v.mask.len() {
        return None;
    }
    let pm = PaddedMask::new(&v.mask, v.dims)?;
    // Millimetres per unit of doubled index, [x, y, z].
    let [dz, dy, dx] = v.spacing;
    let half = [dx / 2.0, dy / 2.0, dz / 2.0];
    let phys = |p: &Point| {
        [
            p[0] as f64 * half[0],
            p[1] as f64 * half[1],
            p[2] as f64 * half[2],
        ]
    };

    // Mesh volume (divergence theorem, origin at the padded corner) and area.
    let (mut six_vol, mut two_area) = (0.0, 0.0);
    mesh::for_each_triangle(&pm, |t| {
        let [a, b, c] = t.map(|p| phys(&p));
        let n = cross3(sub3(b, a), sub3(c, a));
        two_area += norm3(n);
        six_vol += dot3(a, cross3(b, c));
    });
    let volume = (six_vol / 6.0).abs();
    let area = two_area / 2.0;

    // Voxel point set (physical centres) and intensities.
    let mut pos: Vec<[f64; 3]> = Vec::new();
    let mut vals: Vec<f64> = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let i = (z * ny + y) * nx + x;
                if v.mask[i] {
                    pos.push([x as f64 * dx, y as f64 * dy, z as f64 * dz]);
                    vals.push(v.values[i]);
                }
            }
        }
    }
    let n = pos.len() as f64;
    let voxel_volume = n * dx * dy * dz;

    let sph = (36.0 * std::f64::consts::PI * volume * volume).cbrt();
    let compactness1 = volume / (std::f64::consts::PI.sqrt() * area.powf(1.5));
    let compactness2 = 36.0 * std::f64::consts::PI * volume * volume / area.powi(3);

    // Centre of mass shift: geometric vs intensity-weighted (same mask).
    let mut geo = [0.0; 3];
    let mut wsum = [0.0; 3];
    let mut total = 0.0;
    for (p, &x) in pos.iter().zip(&vals) {
        for k in 0..3 {
            geo[k] += p[k];
            wsum[k] += x * p[k];
        }
        total += x;
    }
    let com_shift = norm3([
        geo[0] / n - wsum[0] / total,
        geo[1] / n - wsum[1] / total,
        geo[2] / n - wsum[2] / total,
    ]);

    // PCA of voxel centres. IBSI's reference values use the unbiased sample
    // covariance (1/(N − 1), as numpy.cov): with 1/N the phantom's axis
    // lengths fall 0.7 % low and outside tolerance. Undefined for one voxel.
    let mean = geo.map(|s| s / n);
    let mut cov = [[0.0; 3]; 3];
    for p in &pos {
        let d = sub3(*p, mean);
        for (row, &dr) in cov.iter_mut().zip(&d) {
            for (cell, &dc) in row.iter_mut().zip(&d) {
                *cell += dr * dc;
            }
        }
    }
    let cov = cov.map(|row| row.map(|x| x / (n - 1.0)));
    let [l_major, l_minor, l_least] = sym3_eigenvalues(&cov);
    let (sa, sb, sc) = (
        2.0 * l_major.sqrt(),
        2.0 * l_minor.sqrt(),
        2.0 * l_least.sqrt(),
    );

    // Axis-aligned bounding box of the mesh vertices.
    let ext = pm.extent();
    let (bx, by, bz) = (ext[0] as f64 * dx, ext[1] as f64 * dy, ext[2] as f64 * dz);
    let aabb_volume = bx * by * bz;
    let aabb_area = 2.0 * (bx * by + by * bz + bz * bx);

    let aee_volume = 4.0 * std::f64::consts::PI * sa * sb * sc / 3.0;
    let aee_area = ellipsoid_area(sa, sb, sc);

    // Convex hull of the mesh vertices, and the maximum diameter over its
    // vertices (the farthest vertex pair is always a pair of hull vertices).
    let cand = mesh::hull_candidates(mesh::surface_vertices(&pm));
    let (mut hull_volume, mut hull_area, mut diameter) = (f64::NAN, f64::NAN, f64::NAN);
    if let Some(faces) = mesh::convex_hull(&cand) {
        let (mut six, mut two) = (0.0, 0.0);
        let mut used = vec![false; cand.len()];
        for f in &faces {
            let [a, b, c] = f.map(|i| phys(&cand[i]));
            two += norm3(cross3(sub3(b, a), sub3(c, a)));
            six += dot3(a, cross3(b, c));
            for &i in f {
                used[i] = true;
            }
        }
        hull_volume = (six / 6.0).abs();
        hull_area = two / 2.0;
        let verts: Vec<[f64; 3]> = cand
            .iter()
            .zip(&used)
            .filter(|(_, &u)| u)
            .map(|(p, _)| phys(p))
            .collect();
        diameter = max_distance(&verts);
    } else if !cand.is_empty() {
        diameter = max_distance(&cand.iter().map(phys).collect::<Vec<_>>());
    }

    let mean_value = total / n;
    let (moran, geary) = autocorrelation(&pos, &vals, mean_value);

    Some([
        volume,
        voxel_volume,
        area,
        area / volume,
        compactness1,
        compactness2,
        area / sph,
        sph / area,
        area / sph - 1.0,
        com_shift,
        diameter,
        2.0 * sa,
        2.0 * sb,
        2.0 * sc,
        (l_minor / l_major).sqrt(),
        (l_least / l_major).sqrt(),
        volume / aabb_volume,
        area / aabb_area,
        volume / aee_volume,
        area / aee_area,
        volume / hull_volume,
        area / hull_area,
        volume * mean_value,
        moran,
        geary,
    ])
}

fn sub3(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross3(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot3(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm3(a: [f64; 3]) -> f64 {
    dot3(a, a).sqrt()
}

fn max_distance(pts: &[[f64; 3]]) -> f64 {
    let mut best = 0.0f64;
    for (i, a) in pts.iter().enumerate() {
        for b in &pts[i + 1..] {
            let d = sub3(*a, *b);
            best = best.max(dot3(d, d));
        }
    }
    best.sqrt()
}

/// Eigenvalues of a symmetric 3×3 matrix, descending, clamped at 0
/// (closed-form trigonometric solution; the covariance is positive
/// semi-definite so tiny negatives are rounding).
fn sym3_eigenvalues(a: &[[f64; 3]; 3]) -> [f64; 3] {
    let p1 = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
    let mut e = if p1 == 0.0 {
        [a[0][0], a[1][1], a[2][2]]
    } else {
        let q = (a[0][0] + a[1][1] + a[2][2]) / 3.0;
        let p2 = (a[0][0] - q).powi(2) + (a[1][1] - q).powi(2) + (a[2][2] - q).powi(2) + 2.0 * p1;
        let p = (p2 / 6.0).sqrt();
        let b = |r: usize, c: usize| (a[r][c] - if r == c { q } else { 0.0 }) / p;
        let det = b(0, 0) * (b(1, 1) * b(2, 2) - b(1, 2) * b(2, 1))
            - b(0, 1) * (b(1, 0) * b(2, 2) - b(1, 2) * b(2, 0))
            + b(0, 2) * (b(1, 0) * b(2, 1) - b(1, 1) * b(2, 0));
        let phi = (det / 2.0).clamp(-1.0, 1.0).acos() / 3.0;
        let e1 = q + 2.0 * p * phi.cos();
        let e3 = q + 2.0 * p * (phi + 2.0 * std::f64::consts::PI / 3.0).cos();
        [e1, 3.0 * q - e1 - e3, e3]
    };
    e.sort_by(|x, y| y.total_cmp(x));
    // Clamp rounding negatives, keeping NaN (undefined) as NaN.
    e.map(|x| if x < 0.0 { 0.0 } else { x })
}

/// Surface area of an ellipsoid with semi-axes `a ≥ b ≥ c`, by the IBSI-1
/// Legendre series 4πab Σ_ν (αβ)^ν / (1 − 4ν²) P_ν((α² + β²) / (2αβ)),
/// α = √(1 − b²/a²), β = √(1 − c²/a²), stopped after ν = 20 as IBSI does
/// (so results match the reference implementations, not the exact area).
fn ellipsoid_area(a: f64, b: f64, c: f64) -> f64 {
    let alpha = (1.0 - (b / a).powi(2)).max(0.0).sqrt();
    let beta = (1.0 - (c / a).powi(2)).max(0.0).sqrt();
    let ab = alpha * beta;
    let mut sum = 1.0; // ν = 0 term: P₀ = 1.
    if ab > 0.0 {
        let x = (alpha * alpha + beta * beta) / (2.0 * ab);
        // Legendre recurrence: (ν + 1) P_{ν+1} = (2ν + 1) x P_ν − ν P_{ν−1}.
        let (mut p_prev, mut p) = (1.0, x);
        let mut pow = 1.0;
        for nu in 1..=20 {
            pow *= ab;
            let nu_f = nu as f64;
            sum += pow / (1.0 - 4.0 * nu_f * nu_f) * p;
            let p_next = ((2.0 * nu_f + 1.0) * x * p - nu_f * p_prev) / (nu_f + 1.0);
            p_prev = p;
            p = p_next;
        }
    }
    4.0 * std::f64::consts::PI * a * b * sum
}

/// Moran's I and Geary's C with inverse-distance weights (IBSI-1 §3.1,
/// N365 and NPT7): exact up to [`AUTOCORRELATION_MAX_PAIRS`] pairs, sampled
/// pairs beyond (see there).
fn autocorrelation(pos: &[[f64; 3]], vals: &[f64], mean: f64) -> (f64, f64) {
    let n = vals.len();
    let s2: f64 = vals.iter().map(|x| (x - mean).powi(2)).sum();
    if n < 2 || s2.is_nan() || s2 <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let mut order: Vec<usize> = (0..n).collect();
    let exact = (n as u128) * (n as u128 - 1) / 2 <= AUTOCORRELATION_MAX_PAIRS as u128;
    if !exact {
        // Fisher–Yates shuffle driven by SplitMix64 with a fixed seed.
        let mut state = 0x5EED_5EED_5EED_5EED_u64;
        for i in (1..n).rev() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            order.swap(i, (z % (i as u64 + 1)) as usize);
        }
    }
    // f32 coordinates relative to the centroid and f32 centred values:
    // four-wide SIMD for the square root and division; sums go to f64 in
    // short blocks, so rounding stays near 1e-6 relative.
    let mut centre = [0.0; 3];
    for p in pos {
        for k in 0..3 {
            centre[k] += p[k] / n as f64;
        }
    }
    let coord = |k: usize| -> Vec<f32> {
        order
            .iter()
            .map(|&i| (pos[i][k] - centre[k]) as f32)
            .collect()
    };
    let pts = Pairs {
        x: coord(0),
        y: coord(1),
        z: coord(2),
        c: order.iter().map(|&i| (vals[i] - mean) as f32).collect(),
    };
    let mut sums = [0.0f64; 3];
    if exact {
        // Shift s pairs k with k + s (mod n): s = 1 … ⌊(n − 1)/2⌋ and, for
        // even n, half of s = n/2 cover every unordered pair exactly once.
        for s in 1..=(n - 1) / 2 {
            pts.shift(s, n, &mut sums);
        }
        if n.is_multiple_of(2) {
            pts.shift(n / 2, n / 2, &mut sums);
        }
    } else {
        for s in 1..=(AUTOCORRELATION_MAX_PAIRS / n).max(1) {
            pts.shift(s, n, &mut sums);
        }
    }
    let [sw, swc, swd] = sums;
    let nf = n as f64;
    let moran = nf * swc / (sw * s2);
    let geary = (nf - 1.0) * swd / (2.0 * sw * s2);
    (moran, geary)
}

/// Voxel positions and centred values, structure-of-arrays for SIMD.
struct Pairs {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    c: Vec<f32>,
}

impl Pairs {
    /// Adds Σw, Σw·cᵢcⱼ and Σw·(cᵢ − cⱼ)² over the pairs (k, k + s mod n),
    /// k < count, to `sums`.
    fn shift(&self, s: usize, count: usize, sums: &mut [f64; 3]) {
        let n = self.x.len();
        let first = count.min(n - s);
        self.run(0, s, first, sums);
        if count > first {
            self.run(n - s, 0, count - first, sums);
        }
    }

    /// Pairs (a + t, b + t) for t < len.
    fn run(&self, a: usize, b: usize, len: usize, sums: &mut [f64; 3]) {
        const LANES: usize = 8;
        const BLOCK: usize = 1024;
        let mut t0 = 0;
        while t0 < len {
            let t1 = (t0 + BLOCK).min(len);
            let (a0, a1, b0, b1) = (a + t0, a + t1, b + t0, b + t1);
            let mut acc = [[0.0f32; LANES]; 3];
            let lanes = self.x[a0..a1]
                .chunks_exact(LANES)
                .zip(self.x[b0..b1].chunks_exact(LANES))
                .zip(self.y[a0..a1].chunks_exact(LANES))
                .zip(self.y[b0..b1].chunks_exact(LANES))
                .zip(self.z[a0..a1].chunks_exact(LANES))
                .zip(self.z[b0..b1].chunks_exact(LANES))
                .zip(self.c[a0..a1].chunks_exact(LANES))
                .zip(self.c[b0..b1].chunks_exact(LANES));
            for (((((((xa, xb), ya), yb), za), zb), ca), cb) in lanes {
                for l in 0..LANES {
                    let (dx, dy, dz) = (xa[l] - xb[l], ya[l] - yb[l], za[l] - zb[l]);
                    let w = 1.0 / (dx * dx + dy * dy + dz * dz).sqrt();
                    let d = ca[l] - cb[l];
                    acc[0][l] += w;
                    acc[1][l] += w * ca[l] * cb[l];
                    acc[2][l] += w * d * d;
                }
            }
            for t in t0 + (t1 - t0) / LANES * LANES..t1 {
                let (i, j) = (a + t, b + t);
                let (dx, dy, dz) = (
                    self.x[i] - self.x[j],
                    self.y[i] - self.y[j],
                    self.z[i] - self.z[j],
                );
                let w = 1.0 / (dx * dx + dy * dy + dz * dz).sqrt();
                let d = self.c[i] - self.c[j];
                acc[0][0] += w;
                acc[1][0] += w * self.c[i] * self.c[j];
                acc[2][0] += w * d * d;
            }
            for k in 0..3 {
                sums[k] += acc[k].iter().map(|&v| v as f64).sum::<f64>();
            }
            t0 = t1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::phantom_volume as phantom;
    use super::*;

    /// (IBSI key, reference, tolerance) from ibsi_phantom.json.
    const REFERENCE: &[(&str, f64, f64)] = &[
        ("Volume (mesh)", 556.0, 4.0),
        ("Volume (voxel counting)", 592.0, 4.0),
        ("Surface area (mesh)", 388.0, 3.0),
        ("Surface to volume ratio", 0.698, 0.004),
        ("Compactness 1", 0.0411, 0.0003),
        ("Compactness 2", 0.599, 0.004),
        ("Spherical disproportion", 1.19, 0.01),
        ("Sphericity", 0.843, 0.005),
        ("Asphericity", 0.186, 0.001),
        ("Centre of mass shift", 0.672, 0.004),
        ("Maximum 3D diameter", 13.1, 0.1),
        ("Major axis length", 11.4, 0.1),
        ("Minor axis length", 9.31, 0.06),
        ("Least axis length", 8.54, 0.05),
        ("Elongation", 0.816, 0.005),
        ("Flatness", 0.749, 0.005),
        ("Volume density (axis-aligned bounding box)", 0.869, 0.005),
        ("Area density (axis-aligned bounding box)", 0.866, 0.005),
        (
            "Volume density (approximate enclosing ellipsoid)",
            1.17,
            0.01,
        ),
        ("Area density (approximate enclosing ellipsoid)", 1.36, 0.01),
        ("Volume density (convex hull)", 0.961, 0.006),
        ("Area density (convex hull)", 1.03, 0.01),
        ("Integrated intensity", 1200.0, 10.0),
        ("Moran\u{2019}s I index", 0.0397, 0.0003),
        ("Geary\u{2019}s C measure", 0.974, 0.006),
    ];

    fn value(f: &[Feature], name: &str) -> f64 {
        f.iter()
            .find(|x| x.name == name)
            .and_then(|x| x.value)
            .unwrap_or(f64::NAN)
    }

    fn assert_contract(f: &[Feature]) {
        assert_eq!(f.len(), IBSI_NAMES.len());
        for (x, (name, _)) in f.iter().zip(IBSI_NAMES) {
            assert_eq!(x.name, *name);
            if let Some(v) = x.value {
                assert!(v.is_finite(), "{name} = {v}");
            }
        }
    }

    #[test]
    fn phantom_matches_ibsi() {
        let f = morphology(&phantom());
        assert_contract(&f);
        let mut bad = Vec::new();
        for ((name, key), (rkey, reference, tol)) in IBSI_NAMES.iter().zip(REFERENCE) {
            assert_eq!(key, rkey);
            let got = value(&f, name);
            println!("| {name} | {key} | {reference} | {got:.5} |");
            if (got - reference).abs().is_nan() || (got - reference).abs() > *tol {
                bad.push(format!("{name}: {got} vs {reference} ± {tol}"));
            }
        }
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn keys_exist_in_reference() {
        let text = std::fs::read_to_string("/work/shared/reference/ibsi_phantom.json");
        if let Ok(text) = text {
            for (_, key) in IBSI_NAMES {
                let escaped = key.replace('\u{2019}', "\\u2019");
                assert!(
                    text.contains(&format!("\"{key}\""))
                        || text.contains(&format!("\"{escaped}\"")),
                    "missing key {key}"
                );
            }
        }
    }

    fn grid(
        dims: [usize; 3],
        spacing: [f64; 3],
        f: impl Fn(usize, usize, usize) -> Option<f64>,
    ) -> Volume {
        let mut values = Vec::new();
        let mut mask = Vec::new();
        for z in 0..dims[0] {
            for y in 0..dims[1] {
                for x in 0..dims[2] {
                    let v = f(z, y, x);
                    mask.push(v.is_some());
                    values.push(v.unwrap_or(0.0));
                }
            }
        }
        Volume {
            dims,
            spacing,
            values,
            mask,
        }
    }

    #[test]
    fn edge_cases_keep_names_and_never_nan() {
        // Empty ROI: all None.
        let empty = grid([3, 3, 3], [1.0; 3], |_, _, _| None);
        let f = morphology(&empty);
        assert_contract(&f);
        assert!(f.iter().all(|x| x.value.is_none()));
        // Zero-sized grid and a mask/dims mismatch.
        let zero = grid([0, 0, 0], [1.0; 3], |_, _, _| None);
        assert_contract(&morphology(&zero));
        let mut broken = grid([2, 2, 2], [1.0; 3], |_, _, _| Some(1.0));
        broken.mask.pop();
        assert_contract(&morphology(&broken));
        // Single voxel: a closed octahedron of volume dx·dy·dz / 6.
        let one = grid([3, 3, 3], [3.0, 2.5, 2.5], |z, y, x| {
            (z == 1 && y == 1 && x == 1).then_some(5.0)
        });
        let f = morphology(&one);
        assert_contract(&f);
        let v = value(&f, "original_shape_MeshVolume");
        assert!((v - 3.0 * 2.5 * 2.5 / 6.0).abs() < 1e-12, "{v}");
        assert_eq!(value(&f, "original_shape_VoxelVolume"), 3.0 * 2.5 * 2.5);
        assert!(value(&f, "original_shape_Maximum3DDiameter") > 0.0);
        assert!(value(&f, "original_shape_Elongation").is_nan());
        assert!(value(&f, "original_shape_MoransI").is_nan());
        // Single voxel on the grid corner (padding must close the mesh).
        let corner = grid([2, 2, 2], [1.0; 3], |z, y, x| {
            (z + y + x == 0).then_some(1.0)
        });
        let f = morphology(&corner);
        assert!((value(&f, "original_shape_MeshVolume") - 1.0 / 6.0).abs() < 1e-12);
        assert!((value(&f, "original_shape_SurfaceArea") - 3f64.sqrt()).abs() < 1e-12);
        // Constant intensity, zero intensity, negative intensities.
        for c in [7.0, 0.0, -3.0] {
            let block = grid([4, 5, 6], [1.0; 3], |z, _, x| (z > 0 && x < 5).then_some(c));
            let f = morphology(&block);
            assert_contract(&f);
            assert!(value(&f, "original_shape_MoransI").is_nan());
            assert!(value(&f, "original_shape_MeshVolume") > 0.0);
        }
        // Flat (one-slice) and line-shaped ROIs.
        let flat = grid([1, 6, 6], [1.0; 3], |_, y, x| Some((y * x) as f64));
        assert_contract(&morphology(&flat));
        let line = grid([1, 1, 9], [1.0; 3], |_, _, x| Some(x as f64));
        let f = morphology(&line);
        assert_contract(&f);
        assert!(value(&f, "original_shape_VolumeDensityConvexHull") > 0.0);
    }

    #[test]
    fn sphere_converges() {
        // The mesh volume converges on the ball's volume. The area of a
        // marching-cubes mesh of a *binary* mask does not converge on 4πr²:
        // its facets take a few fixed orientations (a staircase effect), so
        // it stays about 8 % high at every radius; IBSI accepts this.
        for r in [4.0f64, 8.0, 16.0, 32.0] {
            let n = (2.0 * r) as usize + 5;
            let c = n as f64 / 2.0 - 0.3;
            let ball = grid([n, n, n], [1.0; 3], |z, y, x| {
                let d2 = (z as f64 - c).powi(2) + (y as f64 - c).powi(2) + (x as f64 - c).powi(2);
                (d2 <= r * r).then_some(1.0)
            });
            let f = morphology(&ball);
            let v = value(&f, "original_shape_MeshVolume");
            let a = value(&f, "original_shape_SurfaceArea");
            let vox = value(&f, "original_shape_VoxelVolume");
            let v_err = (v / (4.0 / 3.0 * std::f64::consts::PI * r.powi(3)) - 1.0).abs();
            let a_ratio = a / (4.0 * std::f64::consts::PI * r * r);
            let mesh_vs_voxels = 1.0 - v / vox;
            let d = value(&f, "original_shape_Maximum3DDiameter");
            let hull = value(&f, "original_shape_VolumeDensityConvexHull");
            println!("r={r}: V err {v_err:.4}, A/4πr² {a_ratio:.4}, 1 − V/Vvox {mesh_vs_voxels:.4}, diam {d:.3}, hull density {hull:.4}");
            // Mesh and voxel-count volumes converge (difference ∝ 1/r).
            assert!(mesh_vs_voxels.abs() < 0.08 / r, "r={r}");
            assert!(a_ratio > 1.0 && a_ratio < 1.12, "r={r}");
            assert!((d - 2.0 * r).abs() < 2.0, "r={r}: {d}");
            assert!(hull < 1.0 && hull > 0.9, "r={r}");
            if r >= 16.0 {
                assert!(v_err < 0.01, "r={r}");
            }
        }
    }

    #[test]
    fn anisotropic_spacing_scales_box() {
        // A 4×3×2 box: volume densities do not depend on spacing per axis
        // in the voxel counts, and the AABB is the voxel box.
        let b = grid([2, 3, 4], [3.0, 2.5, 2.0], |_, _, _| Some(1.0));
        let f = morphology(&b);
        assert_eq!(value(&f, "original_shape_VoxelVolume"), 24.0 * 15.0);
        let d = value(&f, "original_shape_Maximum3DDiameter");
        assert!(d > 0.0 && d < (8.0f64.powi(2) + 7.5f64.powi(2) + 6.0f64.powi(2)).sqrt());
        let hull = value(&f, "original_shape_VolumeDensityConvexHull");
        assert!(
            (hull - 1.0).abs() < 1e-9,
            "a convex mesh is its own hull: {hull}"
        );
    }

    /// 20 000-voxel tube in a 30×40×40 grid with smooth dose 0–70 Gy.
    fn tube() -> Volume {
        grid([30, 40, 40], [3.0, 2.5, 2.5], |z, y, x| {
            let (dy, dx) = (y as f64 - 19.5, x as f64 - 19.5);
            let r2 = dy * dy + dx * dx;
            (r2 <= 212.0)
                .then(|| 70.0 * (-r2 / 400.0).exp() * (0.6 + 0.4 * (z as f64 / 5.0).sin().abs()))
        })
    }

    #[test]
    #[ignore = "timing: run with --release -- --ignored --nocapture"]
    fn timing_tube() {
        let v = tube();
        println!("voxels: {}", v.count());
        let f = morphology(&v);
        let reps = 50;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(morphology(std::hint::black_box(&v)));
        }
        println!(
            "morphology: {:.3} ms",
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        );
        for x in &f {
            println!("{} = {:?}", x.name, x.value);
        }
    }

    /// All-pairs Moran's I and Geary's C straight from the IBSI formulas.
    fn brute_autocorrelation(pos: &[[f64; 3]], vals: &[f64]) -> (f64, f64) {
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let s2: f64 = vals.iter().map(|x| (x - mean).powi(2)).sum();
        let (mut sw, mut swc, mut swd) = (0.0, 0.0, 0.0);
        for i in 0..pos.len() {
            for j in 0..pos.len() {
                if i != j {
                    let w = 1.0 / norm3(sub3(pos[i], pos[j]));
                    let (a, b) = (vals[i] - mean, vals[j] - mean);
                    sw += w;
                    swc += w * a * b;
                    swd += w * (a - b) * (a - b);
                }
            }
        }
        (n / sw * swc / s2, (n - 1.0) / (2.0 * sw) * swd / s2)
    }

    fn roi_points(v: &Volume) -> (Vec<[f64; 3]>, Vec<f64>) {
        let [_, ny, nx] = v.dims;
        let [dz, dy, dx] = v.spacing;
        let pos = (0..v.mask.len())
            .filter(|&i| v.mask[i])
            .map(|i| {
                let (z, y, x) = (i / (ny * nx), (i / nx) % ny, i % nx);
                [x as f64 * dx, y as f64 * dy, z as f64 * dz]
            })
            .collect();
        (pos, v.roi_values())
    }

    #[test]
    fn autocorrelation_exact_path_matches_brute_force() {
        // Odd and even voxel counts (the half shift), anisotropic spacing.
        for (dims, keep) in [([3, 5, 5], 8usize), ([4, 6, 5], 2), ([6, 9, 10], 1000)] {
            let v = grid(dims, [3.0, 2.5, 2.0], |z, y, x| {
                let i = (z * dims[1] + y) * dims[2] + x;
                (i % keep != 1).then(|| ((i * 7919) % 23) as f64 + 0.1 * z as f64)
            });
            let (pos, vals) = roi_points(&v);
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let (m, g) = autocorrelation(&pos, &vals, mean);
            let (bm, bg) = brute_autocorrelation(&pos, &vals);
            println!("N={}: Moran {m} vs {bm}, Geary {g} vs {bg}", vals.len());
            assert!(
                (m - bm).abs() < 1e-5 * bm.abs().max(0.01),
                "N={}",
                vals.len()
            );
            assert!((g - bg).abs() < 1e-5 * bg.abs(), "N={}", vals.len());
        }
        // Two voxels: one pair.
        let two = grid([1, 1, 2], [1.0; 3], |_, _, x| Some(x as f64));
        let f = morphology(&two);
        assert!((value(&f, "original_shape_MoransI") + 1.0).abs() < 1e-6);
        assert!((value(&f, "original_shape_GearysC") - 1.0).abs() < 1e-6);
    }

    #[test]
    #[ignore = "slow exact reference: run with --release -- --ignored --nocapture"]
    fn autocorrelation_sampling_error() {
        let v = tube();
        let (pos, vals) = roi_points(&v);
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let (m, g) = autocorrelation(&pos, &vals, mean);
        let (em, eg) = brute_autocorrelation(&pos, &vals);
        println!("Moran exact {em:.5} sampled {m:.5}; Geary exact {eg:.5} sampled {g:.5}");
        assert!((m / em - 1.0).abs() < 0.05);
        assert!((g / eg - 1.0).abs() < 0.01);
    }
}
