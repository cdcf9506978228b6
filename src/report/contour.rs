//! Marching squares: one axial plane of a binary mask to closed polygons.
//!
//! The polygons are what an RT Structure Set carries, so they are built to
//! survive the trip through a planning system and back through
//! [`crate::rt::structure`]:
//!
//! - The iso-line is taken at 0.5 between voxel centres (1 inside, 0
//!   outside), so every vertex is the midpoint between two neighbouring voxel
//!   centres whose values differ, i.e. the midpoint of the voxel edge they
//!   share. A horizontal line through a row of voxel centres meets the
//!   polygons only at such midpoints, half a voxel from any centre, so the
//!   voxel-centre rule (even-odd, as planning systems fill contours) gives
//!   back exactly the mask, with a margin of half a voxel against rounding.
//! - Every connected region (4-connected) gives one outer contour and every
//!   hole one contour of its own; holes are not bridged to their outer
//!   boundary, because planning systems combine the contours of a plane by
//!   even-odd.
//! - Outer boundaries run counter-clockwise in patient (x, y), holes
//!   clockwise: the inside is always on the left.
//! - Saddle cells (two diagonal voxels inside, the other two outside) are
//!   always split: diagonal neighbours are separate regions. One rule for
//!   every cell keeps the output independent of scan order.
//! - No closing point is repeated (DICOM closes CLOSED_PLANAR contours
//!   implicitly) and vertices in the middle of straight runs are dropped.
//!
//! Corners are cut (a single voxel becomes a diamond of half its area): the
//! polygons enclose slightly less area than the voxels do, which is the price
//! of vertices that sit half a voxel from every centre.

use std::collections::HashMap;

/// A point in doubled voxel-index units: voxel centre (i, j) is (2i, 2j),
/// so every edge midpoint has integer coordinates and all geometry before
/// the conversion to millimetres is exact.
type P = (i64, i64);

/// Closed polygons, in patient mm, around the `true` voxels of one plane.
///
/// `mask` holds `nx × ny` values, row-major with x fastest; voxel (i, j) is
/// centred at `(x0 + i·dx, y0 + j·dy)`. A mask shorter than `nx × ny` is read
/// as `false` past its end.
pub fn contours(
    mask: &[bool],
    nx: usize,
    ny: usize,
    x0: f64,
    y0: f64,
    dx: f64,
    dy: f64,
) -> Vec<Vec<[f64; 2]>> {
    let (nxi, nyi) = (nx as i64, ny as i64);
    // Outside the plane counts as outside the mask: that closes regions
    // touching the border.
    let at = |i: i64, j: i64| -> bool {
        i >= 0
            && j >= 0
            && i < nxi
            && j < nyi
            && mask
                .get(j as usize * nx + i as usize)
                .copied()
                .unwrap_or(false)
    };
    // Directed segments, inside on the left, keyed by their start. Every
    // vertex starts exactly one segment (in the cell where the shared edge
    // runs inside → outside counter-clockwise) and ends exactly one.
    let mut next: HashMap<P, P> = HashMap::new();
    let mut starts: Vec<P> = Vec::new();
    for cj in -1..nyi {
        for ci in -1..nxi {
            // Corners counter-clockwise: a (ci, cj), b, c, d; edge k runs
            // from corner k to corner k+1.
            let corner = [
                at(ci, cj),
                at(ci + 1, cj),
                at(ci + 1, cj + 1),
                at(ci, cj + 1),
            ];
            let mid = |k: usize| -> P {
                match k {
                    0 => (2 * ci + 1, 2 * cj),
                    1 => (2 * ci + 2, 2 * cj + 1),
                    2 => (2 * ci + 1, 2 * cj + 2),
                    _ => (2 * ci, 2 * cj + 1),
                }
            };
            let exits: Vec<usize> = (0..4)
                .filter(|k| corner[*k] && !corner[(k + 1) % 4])
                .collect();
            let entry = (0..4).find(|k| !corner[*k] && corner[(k + 1) % 4]);
            let mut add = |from: P, to: P| {
                next.insert(from, to);
                starts.push(from);
            };
            match (exits.as_slice(), entry) {
                ([k], Some(e)) => add(mid(*k), mid(e)),
                // Saddle: cut off each inside corner on its own, from the
                // edge leaving it to the edge entering it.
                ([k, l], _) => {
                    add(mid(*k), mid((k + 3) % 4));
                    add(mid(*l), mid((l + 3) % 4));
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for s in starts {
        let Some(mut to) = next.remove(&s) else {
            continue; // already part of a traced loop
        };
        let mut ring = vec![s];
        while to != s {
            ring.push(to);
            match next.remove(&to) {
                Some(t) => to = t,
                // Cannot happen (every vertex starts a segment); stop
                // rather than loop if it ever does.
                None => break,
            }
        }
        let ring = corners(&ring);
        if ring.len() >= 3 {
            out.push(
                ring.iter()
                    .map(|(x, y)| [x0 + *x as f64 * 0.5 * dx, y0 + *y as f64 * 0.5 * dy])
                    .collect(),
            );
        }
    }
    out
}

/// The vertices of a closed ring where its direction changes.
fn corners(ring: &[P]) -> Vec<P> {
    let n = ring.len();
    (0..n)
        .filter(|i| {
            let (p, v, q) = (ring[(i + n - 1) % n], ring[*i], ring[(i + 1) % n]);
            (v.0 - p.0) * (q.1 - v.1) - (v.1 - p.1) * (q.0 - v.0) != 0
        })
        .map(|i| ring[i])
        .collect()
}

/// Twice the signed area of a polygon (positive when counter-clockwise).
pub fn signed_area2(poly: &[[f64; 2]]) -> f64 {
    let n = poly.len();
    (0..n)
        .map(|i| {
            let (p, q) = (poly[i], poly[(i + 1) % n]);
            p[0] * q[1] - q[0] * p[1]
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::grid::Grid;
    use crate::rt::structure::{ContourPlane, Roi, RoiInfo};

    /// Even-odd point in polygons, half-open in y like the reader.
    fn inside(polys: &[Vec<[f64; 2]>], x: f64, y: f64) -> bool {
        let mut odd = false;
        for poly in polys {
            let n = poly.len();
            for a in 0..n {
                let (p, q) = (poly[a], poly[(a + 1) % n]);
                if (p[1] <= y) != (q[1] <= y) {
                    let xc = p[0] + (y - p[1]) / (q[1] - p[1]) * (q[0] - p[0]);
                    if x < xc {
                        odd = !odd;
                    }
                }
            }
        }
        odd
    }

    fn parse(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        // Rows are written top to bottom; j = 0 is the first row.
        let ny = rows.len();
        let nx = rows.first().map_or(0, |r| r.len());
        let mask = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (mask, nx, ny)
    }

    const GEOM: (f64, f64, f64, f64) = (-20.0, 7.5, 1.25, 2.5);

    /// Contours of `mask`, checked against every invariant; returns them.
    fn check(mask: &[bool], nx: usize, ny: usize) -> Vec<Vec<[f64; 2]>> {
        let (x0, y0, dx, dy) = GEOM;
        let polys = contours(mask, nx, ny, x0, y0, dx, dy);
        for j in 0..ny {
            for i in 0..nx {
                let (x, y) = (x0 + i as f64 * dx, y0 + j as f64 * dy);
                assert_eq!(
                    inside(&polys, x, y),
                    mask[j * nx + i],
                    "voxel ({i}, {j}) of {polys:?}"
                );
            }
        }
        for p in &polys {
            assert!(p.len() >= 3);
            assert_ne!(p.first(), p.last(), "closing point repeated");
            for w in p.windows(2) {
                assert_ne!(w[0], w[1], "repeated vertex");
            }
            // Every vertex is a voxel-edge midpoint: exactly one of its
            // doubled index coordinates is odd.
            for v in p {
                let fx = ((v[0] - x0) / dx * 2.0).round() as i64;
                let fy = ((v[1] - y0) / dy * 2.0).round() as i64;
                assert_eq!((fx + fy).rem_euclid(2), 1, "{v:?} not an edge midpoint");
            }
        }
        // The reader's own rasteriser agrees.
        let grid = Grid::uniform([x0, y0, 0.0], [dx, dy, 2.0], [nx, ny, 1]);
        let roi = Roi {
            info: RoiInfo {
                number: 1,
                name: "T".into(),
                interpreted_type: None,
                frame_of_reference_uid: None,
                planes: 1,
                notes: vec![],
            },
            planes: vec![ContourPlane {
                z: 0.0,
                polygons: polys.clone(),
            }],
        };
        let back = if polys.is_empty() {
            vec![false; nx * ny]
        } else {
            roi.rasterize(&grid, 1).centre_mask(&grid)
        };
        assert_eq!(back, mask, "structure::rasterize differs");
        polys
    }

    fn outer_and_holes(polys: &[Vec<[f64; 2]>]) -> (usize, usize) {
        let outer = polys.iter().filter(|p| signed_area2(p) > 0.0).count();
        (outer, polys.len() - outer)
    }

    #[test]
    fn square() {
        let (m, nx, ny) = parse(&[".....", ".###.", ".###.", ".###.", "....."]);
        let p = check(&m, nx, ny);
        assert_eq!(p.len(), 1);
        // An octagon: the straight runs collapse to their ends.
        assert_eq!(p[0].len(), 8);
        assert!(
            signed_area2(&p[0]) > 0.0,
            "outer boundary counter-clockwise"
        );
    }

    #[test]
    fn l_shape() {
        let (m, nx, ny) = parse(&["#...", "#...", "#...", "####"]);
        let p = check(&m, nx, ny);
        assert_eq!(outer_and_holes(&p), (1, 0));
    }

    #[test]
    fn ring_gives_a_clockwise_hole() {
        let (m, nx, ny) = parse(&["#####", "#...#", "#...#", "#...#", "#####"]);
        let p = check(&m, nx, ny);
        assert_eq!(outer_and_holes(&p), (1, 1));
    }

    #[test]
    fn island_in_a_hole() {
        let (m, nx, ny) = parse(&[
            "#######", "#.....#", "#.....#", "#..#..#", "#.....#", "#.....#", "#######",
        ]);
        let p = check(&m, nx, ny);
        assert_eq!(outer_and_holes(&p), (2, 1));
    }

    #[test]
    fn two_blobs() {
        let (m, nx, ny) = parse(&["##....", "##....", "....##", "....##"]);
        let p = check(&m, nx, ny);
        assert_eq!(outer_and_holes(&p), (2, 0));
    }

    #[test]
    fn diagonal_neighbours_are_separate() {
        let (m, nx, ny) = parse(&["#.", ".#"]);
        let p = check(&m, nx, ny);
        assert_eq!(outer_and_holes(&p), (2, 0));
        // The other saddle: the background is what touches diagonally.
        let (m, nx, ny) = parse(&["###", "#.#", "##.", "###"]);
        let p = check(&m, nx, ny);
        assert!(!p.is_empty());
    }

    #[test]
    fn single_voxel_is_a_diamond() {
        let (m, nx, ny) = parse(&["...", ".#.", "..."]);
        let p = check(&m, nx, ny);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].len(), 4);
        let (_, _, dx, dy) = GEOM;
        // Half the voxel's area.
        assert!((signed_area2(&p[0]) / 2.0 - dx * dy / 2.0).abs() < 1e-9);
    }

    #[test]
    fn empty_and_full() {
        let (m, nx, ny) = parse(&["....", "...."]);
        assert!(check(&m, nx, ny).is_empty());
        assert!(contours(&[], 0, 0, 0.0, 0.0, 1.0, 1.0).is_empty());
        let (m, nx, ny) = parse(&["####", "####"]);
        assert_eq!(check(&m, nx, ny).len(), 1);
    }

    #[test]
    fn random_masks_round_trip() {
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..300 {
            let (nx, ny) = (1 + n % 13, 1 + (n / 13) % 11);
            let density = 30 + (n % 5) as u64 * 10;
            let m: Vec<bool> = (0..nx * ny)
                .map(|_| {
                    s = s
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (s >> 33) % 100 < density
                })
                .collect();
            check(&m, nx, ny);
        }
    }
}
