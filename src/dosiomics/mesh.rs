//! Geometry behind the morphological features (IBSI-1 §3.1): a marching-cubes
//! surface of a binary ROI mask at iso-level 0.5, and an exact 3D convex hull.
//!
//! All coordinates here are integer *doubled voxel indices* `[x, y, z]` of a
//! mask padded with one empty voxel on every side: at iso-level 0.5 on a 0/1
//! mask every mesh vertex is the midpoint of a lattice edge, so twice its
//! index coordinate is an integer. Integer vertices make the mesh exactly
//! watertight and the hull predicates exact; callers scale to millimetres.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A mesh or hull vertex in doubled voxel-index coordinates `[x, y, z]`.
pub type Point = [i64; 3];

/// The ROI mask cropped to its bounding box plus one empty voxel on every
/// side (the zero padding IBSI asks for, so the mesh closes at the grid edge).
pub struct PaddedMask {
    /// `[nx, ny, nz]` of the padded box.
    pub dims: [usize; 3],
    /// x-fastest flags, `(z * ny + y) * nx + x`.
    inside: Vec<bool>,
}

impl PaddedMask {
    /// Crops `mask` (z-major, `dims = [nz, ny, nx]`); `None` when the mask is
    /// empty or its length does not match `dims`.
    pub fn new(mask: &[bool], dims: [usize; 3]) -> Option<PaddedMask> {
        let [nz, ny, nx] = dims;
        if nz.checked_mul(ny)?.checked_mul(nx)? != mask.len() {
            return None;
        }
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        let mut any = false;
        for z in 0..nz {
            for y in 0..ny {
                let row = &mask[(z * ny + y) * nx..(z * ny + y + 1) * nx];
                for (x, &m) in row.iter().enumerate() {
                    if m {
                        any = true;
                        for (k, c) in [x, y, z].into_iter().enumerate() {
                            lo[k] = lo[k].min(c);
                            hi[k] = hi[k].max(c);
                        }
                    }
                }
            }
        }
        if !any {
            return None;
        }
        let pd = [hi[0] - lo[0] + 3, hi[1] - lo[1] + 3, hi[2] - lo[2] + 3];
        let mut inside = vec![false; pd[0] * pd[1] * pd[2]];
        for z in lo[2]..=hi[2] {
            for y in lo[1]..=hi[1] {
                for x in lo[0]..=hi[0] {
                    if mask[(z * ny + y) * nx + x] {
                        let (px, py, pz) = (x - lo[0] + 1, y - lo[1] + 1, z - lo[2] + 1);
                        inside[(pz * pd[1] + py) * pd[0] + px] = true;
                    }
                }
            }
        }
        Some(PaddedMask { dims: pd, inside })
    }

    #[inline]
    fn at(&self, x: usize, y: usize, z: usize) -> bool {
        self.inside[(z * self.dims[1] + y) * self.dims[0] + x]
    }

    /// Size of the ROI's axis-aligned bounding box in voxels `[x, y, z]`. It
    /// equals the box of the mesh vertices, which lie half a voxel outside the
    /// outermost voxel centres.
    pub fn extent(&self) -> [usize; 3] {
        [self.dims[0] - 2, self.dims[1] - 2, self.dims[2] - 2]
    }
}

/// Cube corner `c` sits at `[c & 1, (c >> 1) & 1, (c >> 2) & 1]`.
fn corner(c: usize) -> [i64; 3] {
    [(c & 1) as i64, ((c >> 1) & 1) as i64, ((c >> 2) & 1) as i64]
}

/// The 12 cube edges as corner pairs `(a, a | 1 << axis)`, grouped by axis.
fn edges() -> [(usize, usize); 12] {
    let mut e = [(0, 0); 12];
    let mut i = 0;
    for axis in 0..3 {
        for c in 0..8 {
            if c & (1 << axis) == 0 {
                e[i] = (c, c | (1 << axis));
                i += 1;
            }
        }
    }
    e
}

/// Midpoints of the 12 cube edges in doubled coordinates.
fn edge_midpoints() -> [Point; 12] {
    edges().map(|(a, b)| {
        let (pa, pb) = (corner(a), corner(b));
        [pa[0] + pb[0], pa[1] + pb[1], pa[2] + pb[2]]
    })
}

fn det(a: Point, b: Point, c: Point) -> i64 {
    let n = cross(b, c);
    a[0] * n[0] + a[1] * n[1] + a[2] * n[2]
}

/// Triangulates a closed polygon of cube-edge midpoints (`p`, in order,
/// outward by the right-hand rule) so that the enclosed volume is largest,
/// i.e. the surface bulges out of the ROI. Non-planar polygons (five or more
/// vertices) can be tiled several ways; this is how the classic
/// Lorensen–Cline table tiles the five-vertex ones, and it reproduces IBSI's
/// 556 mm³ for the phantom (the possible tilings span 549–556 mm³). With
/// `strict`, no diagonal may run inside a cube face: such a chord would touch
/// the neighbouring cube's surface on an ambiguous face (a non-manifold
/// edge). Dynamic programming over all triangulations, O(m³) with m ≤ 7,
/// done once per table entry.
fn triangulate(p: &[Point], strict: bool) -> Option<Vec<[usize; 3]>> {
    let m = p.len();
    if m < 3 {
        return None;
    }
    let on_common_face = |a: Point, b: Point| (0..3).any(|k| a[k] == b[k] && a[k] != 1);
    let allowed = |i: usize, j: usize| {
        j == i + 1 || (i == 0 && j == m - 1) || !strict || !on_common_face(p[i], p[j])
    };
    // best[i][j]: largest 6·volume of the sub-polygon i..=j closed by chord i–j.
    let mut best = vec![vec![None::<i64>; m]; m];
    let mut split = vec![vec![0usize; m]; m];
    for i in 0..m - 1 {
        best[i][i + 1] = Some(0);
    }
    for len in 2..m {
        for i in 0..m - len {
            let j = i + len;
            for k in i + 1..j {
                if !allowed(i, k) || !allowed(k, j) {
                    continue;
                }
                if let (Some(a), Some(b)) = (best[i][k], best[k][j]) {
                    let v = a + b + det(p[i], p[k], p[j]);
                    if best[i][j].is_none_or(|cur| v > cur) {
                        best[i][j] = Some(v);
                        split[i][j] = k;
                    }
                }
            }
        }
    }
    best[0][m - 1]?;
    let mut tris = Vec::with_capacity(m - 2);
    let mut todo = vec![(0, m - 1)];
    while let Some((i, j)) = todo.pop() {
        if j > i + 1 {
            let k = split[i][j];
            tris.push([i, k, j]);
            todo.push((i, k));
            todo.push((k, j));
        }
    }
    Some(tris)
}

/// Triangles (as cube-edge indices, outward-facing by the right-hand rule)
/// for one of the 256 corner configurations.
#[derive(Clone, Copy)]
struct Case {
    n: usize,
    tri: [[u8; 3]; 10],
}

/// Marching-cubes table, derived rather than transcribed: on each cube face
/// the crossing edges are joined so that inside corners on a face diagonal
/// stay separate (the ambiguous face is always split the same way, using
/// only that face's four corners, so neighbouring cubes agree and the mesh
/// is watertight with no holes); the face segments, directed with the inside
/// on their left seen from outside the cube, chain into closed loops, and
/// each loop is triangulated by [`triangulate`]. For the unambiguous cases
/// this gives the same polygons as the classic Lorensen–Cline table.
fn table() -> &'static [Case] {
    static TABLE: OnceLock<Vec<Case>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let edges = edges();
        let mid = edge_midpoints();
        let mut edge_of = [[usize::MAX; 8]; 8];
        for (i, &(a, b)) in edges.iter().enumerate() {
            edge_of[a][b] = i;
            edge_of[b][a] = i;
        }
        // Face corners counter-clockwise seen from outside the cube.
        let mut faces = [[0usize; 4]; 6];
        for axis in 0..3 {
            let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
            for side in 0..2 {
                let mut q = [0usize; 4];
                for (i, (cu, cv)) in [(0, 0), (1, 0), (1, 1), (0, 1)].into_iter().enumerate() {
                    q[i] = (side << axis) | (cu << u) | (cv << v);
                }
                if side == 0 {
                    q.reverse();
                }
                faces[axis * 2 + side] = q;
            }
        }
        (0..256usize)
            .map(|config| {
                let inside = |c: usize| config & (1 << c) != 0;
                let mut next = [usize::MAX; 12];
                for q in &faces {
                    for i in 0..4 {
                        if inside(q[i]) && !inside(q[(i + 1) % 4]) {
                            // Exit edge q[i]→q[i+1]; walk back to the edge
                            // where this run of inside corners was entered.
                            let mut j = (i + 3) % 4;
                            while inside(q[j]) {
                                j = (j + 3) % 4;
                            }
                            next[edge_of[q[i]][q[(i + 1) % 4]]] = edge_of[q[j]][q[(j + 1) % 4]];
                        }
                    }
                }
                let mut case = Case {
                    n: 0,
                    tri: [[0; 3]; 10],
                };
                let mut used = [false; 12];
                for start in 0..12 {
                    if next[start] == usize::MAX || used[start] {
                        continue;
                    }
                    let mut lp = Vec::with_capacity(12);
                    let mut e = start;
                    while !used[e] {
                        used[e] = true;
                        lp.push(e as u8);
                        e = next[e];
                    }
                    // Loops run clockwise seen from outside the surface;
                    // reversed, their triangles face out of the ROI.
                    lp.reverse();
                    let p: Vec<Point> = lp.iter().map(|&e| mid[e as usize]).collect();
                    // Every loop (3 to 7 vertices) has a strict
                    // triangulation; the fallback only guards the table.
                    let tris = triangulate(&p, true).or_else(|| triangulate(&p, false));
                    for [a, b, c] in tris.unwrap_or_default() {
                        case.tri[case.n] = [lp[a], lp[b], lp[c]];
                        case.n += 1;
                    }
                }
                case
            })
            .collect()
    })
}

/// Calls `f` with every triangle of the iso-0.5 marching-cubes surface of
/// `m`, vertices in doubled padded-grid coordinates, consistently oriented
/// with outward normals (right-hand rule).
pub fn for_each_triangle(m: &PaddedMask, mut f: impl FnMut(&[Point; 3])) {
    let table = table();
    let mid = edge_midpoints();
    let [nx, ny, nz] = m.dims;
    for z in 0..nz - 1 {
        for y in 0..ny - 1 {
            for x in 0..nx - 1 {
                let mut config = 0usize;
                for c in 0..8 {
                    if m.at(x + (c & 1), y + ((c >> 1) & 1), z + ((c >> 2) & 1)) {
                        config |= 1 << c;
                    }
                }
                if config == 0 || config == 255 {
                    continue;
                }
                let base = [2 * x as i64, 2 * y as i64, 2 * z as i64];
                let case = &table[config];
                for t in &case.tri[..case.n] {
                    let p = t.map(|e| {
                        let d = mid[e as usize];
                        [base[0] + d[0], base[1] + d[1], base[2] + d[2]]
                    });
                    f(&p);
                }
            }
        }
    }
}

/// Every mesh vertex: the midpoint between an ROI voxel and each of its
/// 6-neighbours outside the ROI (exactly the lattice edges the marching-cubes
/// surface crosses), each listed once.
pub fn surface_vertices(m: &PaddedMask) -> Vec<Point> {
    let [nx, ny, nz] = m.dims;
    let mut out = Vec::new();
    // Inside voxels never touch the padding border, so ±1 stays in range.
    for z in 1..nz.saturating_sub(1) {
        for y in 1..ny.saturating_sub(1) {
            for x in 1..nx.saturating_sub(1) {
                if !m.at(x, y, z) {
                    continue;
                }
                let c = [2 * x as i64, 2 * y as i64, 2 * z as i64];
                let nb = [
                    (m.at(x - 1, y, z), [-1, 0, 0]),
                    (m.at(x + 1, y, z), [1, 0, 0]),
                    (m.at(x, y - 1, z), [0, -1, 0]),
                    (m.at(x, y + 1, z), [0, 1, 0]),
                    (m.at(x, y, z - 1), [0, 0, -1]),
                    (m.at(x, y, z + 1), [0, 0, 1]),
                ];
                for (ins, d) in nb {
                    if !ins {
                        out.push([c[0] + d[0], c[1] + d[1], c[2] + d[2]]);
                    }
                }
            }
        }
    }
    out
}

/// Drops points that cannot be hull vertices: a point strictly between two
/// others on an axis-parallel line lies on their segment. Keeps, for each
/// of the three axes in turn, only the two extremes of every line.
pub fn hull_candidates(mut pts: Vec<Point>) -> Vec<Point> {
    for axis in 0..3 {
        let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
        pts.sort_unstable_by_key(|p| (p[u], p[v], p[axis]));
        pts.dedup();
        let mut keep = Vec::with_capacity(pts.len());
        let mut i = 0;
        while i < pts.len() {
            let mut j = i + 1;
            while j < pts.len() && pts[j][u] == pts[i][u] && pts[j][v] == pts[i][v] {
                j += 1;
            }
            keep.push(pts[i]);
            if j - 1 > i {
                keep.push(pts[j - 1]);
            }
            i = j;
        }
        pts = keep;
    }
    pts
}

fn sub(a: Point, b: Point) -> Point {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: Point, b: Point) -> Point {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Exact dot product (i128: coordinates up to 2³¹ cannot overflow).
fn dot(a: Point, b: Point) -> i128 {
    a.iter().zip(&b).map(|(&x, &y)| x as i128 * y as i128).sum()
}

struct Face {
    v: [usize; 3],
    /// Outward normal `(v1 − v0) × (v2 − v0)`.
    n: Point,
    /// Neighbour across edge `v[i] → v[i + 1]`.
    nb: [usize; 3],
    outside: Vec<usize>,
    alive: bool,
}

impl Face {
    fn new(v: [usize; 3], pts: &[Point]) -> Face {
        Face {
            v,
            n: cross(sub(pts[v[1]], pts[v[0]]), sub(pts[v[2]], pts[v[0]])),
            nb: [usize::MAX; 3],
            outside: Vec::new(),
            alive: true,
        }
    }

    /// Scaled signed distance of `p` above the face plane; exact.
    fn height(&self, pts: &[Point], p: usize) -> i128 {
        dot(self.n, sub(pts[p], pts[self.v[0]]))
    }
}

/// Convex hull of `pts` by quickhull with exact integer predicates: returns
/// triangles (indices into `pts`) oriented counter-clockwise seen from
/// outside, or `None` when the points do not span 3D. Coplanar and
/// collinear points are handled exactly: a point counts as outside a face
/// only when strictly above its plane, so points on the hull surface are
/// simply absorbed, and a flat hull facet may come out as several coplanar
/// triangles (harmless for volume, area and diameter).
pub fn convex_hull(pts: &[Point]) -> Option<Vec<[usize; 3]>> {
    if pts.len() < 4 {
        return None;
    }
    // Initial tetrahedron from extreme points.
    let i0 = (0..pts.len()).min_by_key(|&i| pts[i])?;
    let norm2 = |a: Point| dot(a, a);
    let i1 = (0..pts.len()).max_by_key(|&i| norm2(sub(pts[i], pts[i0])))?;
    let e01 = sub(pts[i1], pts[i0]);
    if norm2(e01) == 0 {
        return None;
    }
    let i2 = (0..pts.len()).max_by_key(|&i| norm2(cross(e01, sub(pts[i], pts[i0]))))?;
    let n012 = cross(e01, sub(pts[i2], pts[i0]));
    if norm2(n012) == 0 {
        return None;
    }
    let i3 = (0..pts.len()).max_by_key(|&i| dot(n012, sub(pts[i], pts[i0])).abs())?;
    if dot(n012, sub(pts[i3], pts[i0])) == 0 {
        return None;
    }
    let tet = [i0, i1, i2, i3];
    let mut faces: Vec<Face> = Vec::new();
    for skip in 0..4 {
        let mut v = [0usize; 3];
        let mut k = 0;
        for (j, &t) in tet.iter().enumerate() {
            if j != skip {
                v[k] = t;
                k += 1;
            }
        }
        let mut f = Face::new(v, pts);
        if f.height(pts, tet[skip]) > 0 {
            f = Face::new([v[0], v[2], v[1]], pts);
        }
        faces.push(f);
    }
    for a in 0..4 {
        for e in 0..3 {
            let (p, q) = (faces[a].v[e], faces[a].v[(e + 1) % 3]);
            for b in 0..4 {
                if b != a && (0..3).any(|k| faces[b].v[k] == q && faces[b].v[(k + 1) % 3] == p) {
                    faces[a].nb[e] = b;
                }
            }
        }
    }
    for p in 0..pts.len() {
        if tet.contains(&p) {
            continue;
        }
        if let Some(f) = faces.iter_mut().find(|f| f.height(pts, p) > 0) {
            f.outside.push(p);
        }
    }

    let mut stamp: Vec<u32> = vec![0; faces.len()];
    let mut visible_flag: Vec<bool> = vec![false; faces.len()];
    let mut round = 0u32;
    let mut stack: Vec<usize> = (0..4).filter(|&f| !faces[f].outside.is_empty()).collect();
    let mut visible = Vec::new();
    let mut horizon: Vec<(usize, usize, usize)> = Vec::new();
    let mut start_of: HashMap<usize, usize> = HashMap::new();
    while let Some(f0) = stack.pop() {
        if !faces[f0].alive || faces[f0].outside.is_empty() {
            continue;
        }
        let eye = *faces[f0]
            .outside
            .iter()
            .max_by_key(|&&p| faces[f0].height(pts, p))?;
        round += 1;
        visible.clear();
        horizon.clear();
        visible.push(f0);
        stamp[f0] = round;
        visible_flag[f0] = true;
        let mut k = 0;
        while k < visible.len() {
            let cur = visible[k];
            k += 1;
            for e in 0..3 {
                let g = faces[cur].nb[e];
                if stamp[g] != round {
                    stamp[g] = round;
                    visible_flag[g] = faces[g].height(pts, eye) > 0;
                    if visible_flag[g] {
                        visible.push(g);
                    }
                }
                if !visible_flag[g] {
                    horizon.push((faces[cur].v[e], faces[cur].v[(e + 1) % 3], g));
                }
            }
        }
        // New faces fan from the eye over the horizon edges.
        let first_new = faces.len();
        start_of.clear();
        for &(a, b, g) in &horizon {
            let id = faces.len();
            let mut f = Face::new([a, b, eye], pts);
            f.nb[0] = g;
            for e in 0..3 {
                if faces[g].v[e] == b && faces[g].v[(e + 1) % 3] == a {
                    faces[g].nb[e] = id;
                }
            }
            faces.push(f);
            stamp.push(0);
            visible_flag.push(false);
            start_of.insert(a, id);
        }
        for id in first_new..faces.len() {
            let [_, b, _] = faces[id].v;
            // Edge b → eye borders the new face starting at b; edge eye → a
            // borders the new face ending at a, which links back here.
            let next = *start_of.get(&b)?;
            faces[id].nb[1] = next;
            faces[next].nb[2] = id;
        }
        let mut orphans = Vec::new();
        for &f in &visible {
            faces[f].alive = false;
            orphans.append(&mut faces[f].outside);
        }
        for p in orphans {
            if p == eye {
                continue;
            }
            if let Some(f) = (first_new..faces.len()).find(|&f| faces[f].height(pts, p) > 0) {
                faces[f].outside.push(p);
            }
        }
        stack.extend((first_new..faces.len()).filter(|&f| !faces[f].outside.is_empty()));
    }
    Some(faces.iter().filter(|f| f.alive).map(|f| f.v).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic generator for test inputs.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn random_mask(seed: u64, dims: [usize; 3], density: u64) -> Vec<bool> {
        let mut r = Lcg(seed);
        (0..dims.iter().product::<usize>())
            .map(|_| r.next() % 100 < density)
            .collect()
    }

    /// Every directed edge is matched by exactly one reversed edge, no edge
    /// is used twice in one direction and no triangle is degenerate.
    fn check_closed_oriented(tris: &[[Point; 3]]) -> i64 {
        let mut edges: HashMap<(Point, Point), i32> = HashMap::new();
        let mut six_volume = 0;
        for t in tris {
            let n = cross(sub(t[1], t[0]), sub(t[2], t[0]));
            assert_ne!(n, [0, 0, 0], "degenerate triangle {t:?}");
            six_volume += det(t[0], t[1], t[2]);
            for k in 0..3 {
                *edges.entry((t[k], t[(k + 1) % 3])).or_insert(0) += 1;
            }
        }
        for (&(a, b), &c) in &edges {
            assert_eq!(c, 1, "edge {a:?}→{b:?} used {c} times");
            assert_eq!(edges.get(&(b, a)), Some(&1), "edge {a:?}→{b:?} has no twin");
        }
        six_volume
    }

    fn triangles(m: &PaddedMask) -> Vec<[Point; 3]> {
        let mut tris = Vec::new();
        for_each_triangle(m, |t| tris.push(*t));
        tris
    }

    #[test]
    fn single_voxel_is_closed_octahedron() {
        let m = PaddedMask::new(&[true], [1, 1, 1]).expect("non-empty");
        let tris = triangles(&m);
        assert_eq!(tris.len(), 8);
        // Octahedron with half-diagonal 1/2 voxel: volume 1/6 voxel, i.e.
        // 8/6 in doubled units (6·V = 8).
        assert_eq!(check_closed_oriented(&tris), 8);
        assert_eq!(surface_vertices(&m).len(), 6);
    }

    #[test]
    fn random_masks_give_watertight_outward_meshes() {
        for seed in 0..40 {
            let dims = [5 + (seed as usize % 3), 6, 7];
            let mask = random_mask(seed, dims, 20 + 15 * (seed % 5));
            let Some(m) = PaddedMask::new(&mask, dims) else {
                continue;
            };
            let tris = triangles(&m);
            let six = check_closed_oriented(&tris);
            assert!(six > 0, "seed {seed}: volume must be positive");
            // Mesh vertices are exactly the crossing-edge midpoints.
            let mut from_mesh: Vec<Point> = tris.iter().flatten().copied().collect();
            from_mesh.sort_unstable();
            from_mesh.dedup();
            let mut listed = surface_vertices(&m);
            listed.sort_unstable();
            assert_eq!(from_mesh, listed, "seed {seed}");
        }
    }

    #[test]
    fn all_256_configurations_close_up() {
        // Each configuration alone in a 2×2×2 mask (padded to 4×4×4).
        for config in 1..256usize {
            let mask: Vec<bool> = (0..8)
                .map(|i| {
                    let (z, y, x) = (i >> 2, (i >> 1) & 1, i & 1);
                    config & (1 << (x | (y << 1) | (z << 2))) != 0
                })
                .collect();
            let m = PaddedMask::new(&mask, [2, 2, 2]).expect("non-empty");
            let six = check_closed_oriented(&triangles(&m));
            assert!(six > 0, "config {config}");
        }
    }

    fn check_hull(pts: &[Point]) -> Option<i128> {
        let faces = convex_hull(pts)?;
        let mut edges: HashMap<(usize, usize), i32> = HashMap::new();
        let mut six: i128 = 0;
        for f in &faces {
            let (a, b, c) = (pts[f[0]], pts[f[1]], pts[f[2]]);
            let n = cross(sub(b, a), sub(c, a));
            assert_ne!(n, [0, 0, 0]);
            for p in pts {
                assert!(dot(n, sub(*p, a)) <= 0, "point {p:?} above hull face");
            }
            six += dot(a, cross(b, c));
            for k in 0..3 {
                *edges.entry((f[k], f[(k + 1) % 3])).or_insert(0) += 1;
            }
        }
        for (&(a, b), &c) in &edges {
            assert_eq!(c, 1);
            assert_eq!(edges.get(&(b, a)), Some(&1));
        }
        assert!(six > 0);
        Some(six)
    }

    #[test]
    fn hull_of_lattice_points_is_exact() {
        // Cube lattice: almost everything coplanar or collinear.
        let mut cube = Vec::new();
        for x in 0..5 {
            for y in 0..5 {
                for z in 0..5 {
                    cube.push([x, y, z]);
                }
            }
        }
        assert_eq!(check_hull(&cube), Some(6 * 64));
        // Random points on a tiny lattice, with many duplicates.
        for seed in 0..60 {
            let mut r = Lcg(seed + 100);
            let n = 4 + (seed as usize * 7) % 200;
            let span = 2 + seed % 6;
            let pts: Vec<Point> = (0..n)
                .map(|_| {
                    [
                        (r.next() % span) as i64,
                        (r.next() % span) as i64,
                        (r.next() % span) as i64,
                    ]
                })
                .collect();
            let _ = check_hull(&pts);
        }
        // Degenerate inputs.
        assert!(convex_hull(&[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]).is_none());
        assert!(convex_hull(&[[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, 3, 0]]).is_none());
        assert!(convex_hull(&[[0, 0, 0]; 9]).is_none());
        assert!(convex_hull(&[]).is_none());
    }

    #[test]
    fn candidate_filter_keeps_the_hull() {
        for seed in 0..20 {
            let dims = [6, 7, 8];
            let mask = random_mask(seed + 7, dims, 40);
            let Some(m) = PaddedMask::new(&mask, dims) else {
                continue;
            };
            let all = surface_vertices(&m);
            let cand = hull_candidates(all.clone());
            assert!(cand.len() <= all.len());
            assert_eq!(check_hull(&all), check_hull(&cand), "seed {seed}");
        }
    }
}
