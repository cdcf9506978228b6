//! The image every feature family reads: a dose (or any intensity) grid on
//! regular voxels, a binary ROI mask, and its discretised grey levels.
//!
//! Layout is z-major, `index = (z * ny + y) * nx + x`, with voxel spacing in
//! millimetres. Families receive the same `Volume` and `Discretised` so the
//! ROI and the binning are decided once, in one place.

/// Intensities and ROI mask on a regular grid.
#[derive(Debug, Clone)]
pub struct Volume {
    /// `[nz, ny, nx]`.
    pub dims: [usize; 3],
    /// `[dz, dy, dx]` in mm.
    pub spacing: [f64; 3],
    /// One value per voxel (Gy for dose), z-major.
    pub values: Vec<f64>,
    /// One flag per voxel, z-major; `true` = inside the ROI.
    pub mask: Vec<bool>,
}

impl Volume {
    pub fn index(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.dims[1] + y) * self.dims[2] + x
    }

    /// Number of voxels inside the ROI.
    pub fn count(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }

    /// Values of the voxels inside the ROI, in storage order.
    pub fn roi_values(&self) -> Vec<f64> {
        self.values
            .iter()
            .zip(&self.mask)
            .filter(|&(_, &m)| m)
            .map(|(&v, _)| v)
            .collect()
    }

    /// Volume of one voxel in mm³.
    pub fn voxel_volume(&self) -> f64 {
        self.spacing[0] * self.spacing[1] * self.spacing[2]
    }
}

/// How intensities become grey levels (IBSI-1 §2.7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Discretisation {
    /// Fixed bin size `width` starting at `lower` (the re-segmentation lower
    /// bound; 0 Gy for dose): level = ⌊(x − lower) / width⌋ + 1.
    BinWidth { width: f64, lower: f64 },
    /// Fixed bin number over the ROI's own range:
    /// level = ⌊n (x − min) / (max − min)⌋ + 1, with x = max → n.
    BinCount(usize),
}

/// Grey levels of a [`Volume`]'s ROI.
#[derive(Debug, Clone)]
pub struct Discretised {
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
    /// 1-based grey level per voxel; 0 outside the ROI.
    pub levels: Vec<u32>,
    /// Highest level that can occur (the matrix size Ng); levels inside the
    /// ROI lie in `1..=n_levels`, not all of them need to occur.
    pub n_levels: usize,
    /// Bin width for [`Discretisation::BinWidth`]; `None` for a fixed bin
    /// count. Bin `l` covers `[lower + (l − 1) w, lower + l w)`.
    pub width: Option<f64>,
    /// Lower bound of bin 1 (the ROI minimum for a fixed bin count).
    pub lower: f64,
}

impl Discretised {
    pub fn new(volume: &Volume, d: Discretisation) -> Discretised {
        let roi = volume.roi_values();
        let mut levels = vec![0u32; volume.values.len()];
        let (n_levels, width, lower) = match d {
            Discretisation::BinWidth { width, lower } => {
                let mut top = 0u32;
                for (i, (&v, &m)) in volume.values.iter().zip(&volume.mask).enumerate() {
                    if m {
                        let l = (((v - lower) / width).floor().max(0.0) as u32) + 1;
                        levels[i] = l;
                        top = top.max(l);
                    }
                }
                (top as usize, Some(width), lower)
            }
            Discretisation::BinCount(n) => {
                let n = n.max(1);
                let min = roi.iter().cloned().fold(f64::INFINITY, f64::min);
                let max = roi.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let range = max - min;
                for (i, (&v, &m)) in volume.values.iter().zip(&volume.mask).enumerate() {
                    if m {
                        let l = if range > 0.0 {
                            ((n as f64 * (v - min) / range).floor() as u32 + 1).min(n as u32)
                        } else {
                            1
                        };
                        levels[i] = l;
                    }
                }
                (n, None, if min.is_finite() { min } else { 0.0 })
            }
        };
        Discretised {
            dims: volume.dims,
            spacing: volume.spacing,
            levels,
            n_levels,
            width,
            lower,
        }
    }

    pub fn index(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.dims[1] + y) * self.dims[2] + x
    }
}

/// The ROI of a [`Discretised`] volume as the matrix families (GLCM, GLRLM)
/// walk it: a grid zero-padded by one voxel on every side, holding each ROI
/// voxel's *compact* level + 1 (0 outside), so that a neighbour lookup needs
/// no bounds check. Only the levels present in the ROI get a compact level
/// (a matrix row), which keeps the matrices small when the bins are fine,
/// while `levels` keeps their true values for the features.
pub(crate) struct PaddedLevels {
    pub dims: [usize; 3],
    pub grid: Vec<u32>,
    /// Indices into `grid` of the ROI voxels, in z, y, x order.
    pub roi: Vec<usize>,
    /// True grey level of each compact level.
    pub levels: Vec<f64>,
    /// Highest grey level present.
    pub lmax: usize,
}

impl PaddedLevels {
    /// `None` when the levels do not fill the grid or no voxel is in the ROI.
    pub(crate) fn new(d: &Discretised) -> Option<PaddedLevels> {
        let [nz, ny, nx] = d.dims;
        let n = nz.checked_mul(ny).and_then(|v| v.checked_mul(nx));
        if n != Some(d.levels.len()) || d.levels.is_empty() {
            return None;
        }
        let lmax = d.levels.iter().copied().max().unwrap_or(0) as usize;
        if lmax == 0 {
            return None;
        }
        let mut compact = vec![u32::MAX; lmax + 1];
        let mut n_roi = 0usize;
        for &l in &d.levels {
            if l > 0 {
                compact[l as usize] = 0;
                n_roi += 1;
            }
        }
        let mut levels = Vec::new();
        for (l, c) in compact.iter_mut().enumerate() {
            if *c == 0 {
                *c = levels.len() as u32;
                levels.push(l as f64);
            }
        }
        let dims = [nz + 2, ny + 2, nx + 2];
        let mut grid = vec![0u32; dims[0] * dims[1] * dims[2]];
        let mut roi = Vec::with_capacity(n_roi);
        for z in 0..nz {
            for y in 0..ny {
                let src = (z * ny + y) * nx;
                let dst = ((z + 1) * dims[1] + y + 1) * dims[2] + 1;
                for x in 0..nx {
                    let l = d.levels[src + x];
                    if l > 0 {
                        grid[dst + x] = compact[l as usize] + 1;
                        roi.push(dst + x);
                    }
                }
            }
        }
        Some(PaddedLevels {
            dims,
            grid,
            roi,
            levels,
            lmax,
        })
    }
}

/// One named feature value. `None` = not defined for this ROI (empty ROI,
/// zero variance, ...): written as missing, never as NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// pyradiomics-style name, e.g. `original_glcm_JointEntropy`.
    pub name: String,
    pub value: Option<f64>,
}

impl Feature {
    /// A feature whose value is kept only when finite.
    pub fn new(name: impl Into<String>, value: f64) -> Feature {
        Feature {
            name: name.into(),
            value: value.is_finite().then_some(value),
        }
    }

    /// The features of one IBSI family: the names of its table, in order,
    /// each with its computed value (kept only when finite, like
    /// [`Feature::new`], so no family can let a NaN through).
    pub fn named(
        table: &[(&str, &str)],
        values: impl IntoIterator<Item = Option<f64>>,
    ) -> Vec<Feature> {
        let features: Vec<Feature> = table
            .iter()
            .zip(values)
            .map(|(&(name, _), value)| Feature {
                name: name.to_string(),
                value: value.filter(|v| v.is_finite()),
            })
            .collect();
        debug_assert_eq!(features.len(), table.len(), "a value for every name");
        features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_never_emits_a_value_that_is_not_finite() {
        let table = [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")];
        let f = Feature::named(
            &table,
            [Some(f64::NAN), Some(f64::INFINITY), Some(1.5), None],
        );
        let values: Vec<Option<f64>> = f.iter().map(|x| x.value).collect();
        assert_eq!(values, [None, None, Some(1.5), None]);
        let names: Vec<&str> = f.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }
}
