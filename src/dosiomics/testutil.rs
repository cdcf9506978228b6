//! The IBSI-1 digital phantom and the 3-significant-digit check, shared by
//! every feature family's tests.

use super::volume::{Discretisation, Discretised, Volume};

/// Phantom intensities, `[z][y][x]`, 2 mm voxels.
pub const PHANTOM_VALUES: [[[u8; 5]; 4]; 4] = [
    [
        [1, 4, 4, 1, 1],
        [1, 4, 6, 1, 1],
        [4, 1, 6, 4, 1],
        [4, 4, 6, 4, 1],
    ],
    [
        [1, 4, 4, 1, 1],
        [1, 1, 6, 1, 1],
        [1, 1, 3, 1, 1],
        [4, 4, 6, 1, 1],
    ],
    [
        [1, 4, 4, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 9, 1, 1],
        [1, 1, 6, 1, 1],
    ],
    [
        [1, 4, 4, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 6, 1, 1],
    ],
];

/// Phantom ROI mask, `[z][y][x]`.
pub const PHANTOM_MASK: [[[u8; 5]; 4]; 4] = [
    [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ],
    [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ],
    [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 1, 1],
        [1, 1, 1, 1, 1],
    ],
    [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ],
];

/// The phantom as a volume.
pub fn phantom_volume() -> Volume {
    Volume {
        dims: [4, 4, 5],
        spacing: [2.0, 2.0, 2.0],
        values: PHANTOM_VALUES
            .iter()
            .flatten()
            .flatten()
            .map(|&v| f64::from(v))
            .collect(),
        mask: PHANTOM_MASK
            .iter()
            .flatten()
            .flatten()
            .map(|&m| m == 1)
            .collect(),
    }
}

/// The phantom's grey levels: fixed bin size 1 from 1, so each level equals
/// its intensity (the manual's setting for this phantom).
pub fn phantom_levels() -> Discretised {
    let v = phantom_volume();
    let d = Discretised::new(
        &v,
        Discretisation::BinWidth {
            width: 1.0,
            lower: 1.0,
        },
    );
    for ((&l, &x), &m) in d.levels.iter().zip(&v.values).zip(&v.mask) {
        assert_eq!(l, if m { x as u32 } else { 0 }, "level must equal value");
    }
    d
}

/// Within the manual's 3 significant digits of `reference` (1e-9 at 0).
pub fn within_3_sig(computed: f64, reference: f64) -> bool {
    let tol = if reference == 0.0 {
        1e-9
    } else {
        0.5 * 10f64.powi(reference.abs().log10().floor() as i32 - 2)
    };
    (computed - reference).abs() <= tol
}
