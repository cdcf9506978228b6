//! A voxel grid in patient coordinates (mm), axis-aligned and ascending.
//!
//! Every reader puts its data on this layout so later stages never think
//! about orientation: x grows with the column index, y with the row index,
//! z with the plane index. Planes may be unevenly spaced (RT Dose allows it).

/// Geometry of a grid of `nx × ny × z.len()` voxels.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Centre of the first voxel in x and y (mm).
    pub x0: f64,
    pub y0: f64,
    /// Voxel size in x (columns) and y (rows), mm, positive.
    pub dx: f64,
    pub dy: f64,
    pub nx: usize,
    pub ny: usize,
    /// Centres of the planes, ascending (mm).
    pub z: Vec<f64>,
}

impl Grid {
    /// A uniform grid.
    pub fn uniform(origin: [f64; 3], spacing: [f64; 3], dims: [usize; 3]) -> Grid {
        Grid {
            x0: origin[0],
            y0: origin[1],
            dx: spacing[0],
            dy: spacing[1],
            nx: dims[0],
            ny: dims[1],
            z: (0..dims[2])
                .map(|k| origin[2] + k as f64 * spacing[2])
                .collect(),
        }
    }

    pub fn nz(&self) -> usize {
        self.z.len()
    }

    pub fn len(&self) -> usize {
        self.nx * self.ny * self.nz()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Linear index of voxel (i, j, k).
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        (k * self.ny + j) * self.nx + i
    }

    pub fn x(&self, i: usize) -> f64 {
        self.x0 + i as f64 * self.dx
    }

    pub fn y(&self, j: usize) -> f64 {
        self.y0 + j as f64 * self.dy
    }

    /// Where plane k's slab starts and ends: halfway to each neighbour
    /// (as far as the nearest neighbour's half distance at the ends). On
    /// unevenly spaced planes the slab is not centred on its plane.
    pub fn z_bounds(&self, k: usize) -> (f64, f64) {
        let n = self.z.len();
        if n < 2 {
            let half = self.dz(k) / 2.0;
            let z = self.z.get(k).copied().unwrap_or(0.0);
            return (z - half, z + half);
        }
        let lo = if k == 0 {
            self.z[1] - self.z[0]
        } else {
            self.z[k] - self.z[k - 1]
        };
        let hi = if k + 1 == n {
            self.z[n - 1] - self.z[n - 2]
        } else {
            self.z[k + 1] - self.z[k]
        };
        (self.z[k] - lo / 2.0, self.z[k] + hi / 2.0)
    }

    /// Thickness of plane k: half the distance to each neighbour (the
    /// nearest neighbour's distance at the ends).
    pub fn dz(&self, k: usize) -> f64 {
        let n = self.z.len();
        match n {
            0 => 0.0,
            1 => self.dx.min(self.dy),
            _ => {
                let (lo, hi) = self.z_bounds(k);
                hi - lo
            }
        }
    }

    /// Volume of a voxel in plane k, in cm³.
    pub fn voxel_cc(&self, k: usize) -> f64 {
        self.dx * self.dy * self.dz(k) / 1000.0
    }

    /// True when both grids have the same geometry (to 0.01 mm).
    pub fn same_geometry(&self, other: &Grid) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() < 0.01;
        self.nx == other.nx
            && self.ny == other.ny
            && self.z.len() == other.z.len()
            && close(self.x0, other.x0)
            && close(self.y0, other.y0)
            && close(self.dx, other.dx)
            && close(self.dy, other.dy)
            && self.z.iter().zip(&other.z).all(|(a, b)| close(*a, *b))
    }

    /// Fractional position along x/y (voxel units) of a coordinate.
    pub fn fx(&self, x: f64) -> f64 {
        (x - self.x0) / self.dx
    }

    pub fn fy(&self, y: f64) -> f64 {
        (y - self.y0) / self.dy
    }

    /// Fractional plane index of z (linear between uneven planes), or None
    /// outside the grid.
    pub fn fz(&self, z: f64) -> Option<f64> {
        let n = self.z.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return ((z - self.z[0]).abs() < 1e-6).then_some(0.0);
        }
        if z < self.z[0] - 1e-6 || z > self.z[n - 1] + 1e-6 {
            return None;
        }
        let k = match self.z.binary_search_by(|p| p.total_cmp(&z)) {
            Ok(k) => return Some(k as f64),
            Err(k) => k.clamp(1, n - 1),
        };
        let (a, b) = (self.z[k - 1], self.z[k]);
        Some((k - 1) as f64 + (z - a) / (b - a))
    }

    /// Trilinear interpolation of per-voxel `values` at (x, y, z); None
    /// outside the voxel centres' extent (within 1e-6 mm).
    pub fn interpolate(&self, values: &[f32], x: f64, y: f64, z: f64) -> Option<f64> {
        let fz = self.fz(z)?;
        let (fx, fy) = (self.fx(x), self.fy(y));
        let inside = |f: f64, n: usize| f >= -1e-6 && f <= (n as f64 - 1.0) + 1e-6;
        if !inside(fx, self.nx) || !inside(fy, self.ny) {
            return None;
        }
        Some(self.trilinear(values, fx, fy, fz))
    }

    /// Trilinear interpolation at fractional indices (clamped to the grid).
    pub fn trilinear(&self, values: &[f32], fx: f64, fy: f64, fz: f64) -> f64 {
        let split = |f: f64, n: usize| -> (usize, usize, f64) {
            let f = f.clamp(0.0, (n.max(1) - 1) as f64);
            let i0 = (f.floor() as usize).min(n.max(1) - 1);
            let i1 = (i0 + 1).min(n.max(1) - 1);
            (i0, i1, f - i0 as f64)
        };
        let (i0, i1, tx) = split(fx, self.nx);
        let (j0, j1, ty) = split(fy, self.ny);
        let (k0, k1, tz) = split(fz, self.nz());
        let v = |i, j, k| f64::from(values[self.index(i, j, k)]);
        let c00 = v(i0, j0, k0) * (1.0 - tx) + v(i1, j0, k0) * tx;
        let c10 = v(i0, j1, k0) * (1.0 - tx) + v(i1, j1, k0) * tx;
        let c01 = v(i0, j0, k1) * (1.0 - tx) + v(i1, j0, k1) * tx;
        let c11 = v(i0, j1, k1) * (1.0 - tx) + v(i1, j1, k1) * tx;
        let c0 = c00 * (1.0 - ty) + c10 * ty;
        let c1 = c01 * (1.0 - ty) + c11 * ty;
        c0 * (1.0 - tz) + c1 * tz
    }

    /// Extent of the grid's voxel centres: [(xmin, xmax), (ymin, ymax), (zmin, zmax)].
    pub fn extent(&self) -> [(f64, f64); 3] {
        [
            (self.x0, self.x(self.nx.saturating_sub(1))),
            (self.y0, self.y(self.ny.saturating_sub(1))),
            (
                self.z.first().copied().unwrap_or(0.0),
                self.z.last().copied().unwrap_or(0.0),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_grid_geometry() {
        let g = Grid::uniform([-10.0, -20.0, 5.0], [2.0, 2.5, 3.0], [11, 17, 5]);
        assert_eq!(g.len(), 11 * 17 * 5);
        assert_eq!(g.x(10), 10.0);
        assert_eq!(g.y(16), 20.0);
        assert_eq!(g.z[4], 17.0);
        assert!((g.dz(0) - 3.0).abs() < 1e-12 && (g.dz(2) - 3.0).abs() < 1e-12);
        assert!((g.voxel_cc(1) - 0.015).abs() < 1e-12);
        assert_eq!(g.fz(8.0), Some(1.0));
        assert_eq!(g.fz(9.5), Some(1.5));
        assert_eq!(g.fz(4.0), None);
    }
}
