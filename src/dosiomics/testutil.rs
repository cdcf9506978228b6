//! The IBSI-1 digital phantom and the 3-significant-digit check, shared by
//! every feature family's tests.

use super::volume::{Discretisation, Discretised, Feature, Volume};

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

/// `values` under `mask` on a grid of `spacing` mm voxels, in grey levels of
/// width 1 counted from `lower`: the small volumes of the edge-case tests.
pub fn binned(
    dims: [usize; 3],
    spacing: f64,
    lower: f64,
    values: Vec<f64>,
    mask: Vec<bool>,
) -> Discretised {
    let v = Volume {
        dims,
        spacing: [spacing; 3],
        values,
        mask,
    };
    Discretised::new(&v, Discretisation::BinWidth { width: 1.0, lower })
}

/// A family's features carry exactly the names of its `table` (name, IBSI
/// key), in order, and every value is finite or undefined.
pub fn assert_names(features: &[Feature], table: &[(&str, &str)]) {
    let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
    let expected: Vec<&str> = table.iter().map(|&(n, _)| n).collect();
    assert_eq!(names, expected);
    for f in features {
        assert!(f.value.is_none_or(f64::is_finite), "{f:?}");
    }
}

/// Every feature whose IBSI key is not empty matches its `reference` value
/// within 3 significant digits; all mismatches are reported at once.
pub fn assert_ibsi(features: &[Feature], table: &[(&str, &str)], reference: &[(&str, f64)]) {
    assert_names(features, table);
    let mut failures = Vec::new();
    for (f, &(name, key)) in features.iter().zip(table) {
        if key.is_empty() {
            continue;
        }
        let &(_, expected) = reference
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no reference for {key}"));
        let computed = f.value.unwrap_or(f64::NAN);
        println!("{name:55} {key:45} {expected:>10} {computed:.6}");
        if !within_3_sig(computed, expected) {
            failures.push(format!(
                "{name} ({key}): computed {computed}, reference {expected}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The "3D, averaged" and "3D, merged" halves of a matrix family's `table`
/// name the same `n` features, under `original_<family>_` and
/// `original_<family>Merged_`.
pub fn assert_averaged_and_merged(table: &[(&str, &str)], n: usize, family: &str) {
    assert_eq!(table.len(), 2 * n);
    let (avg_prefix, mrg_prefix) = (
        format!("original_{family}_"),
        format!("original_{family}Merged_"),
    );
    for k in 0..n {
        let (avg, key_a) = table[k];
        let (mrg, key_m) = table[k + n];
        assert_eq!(
            avg.strip_prefix(avg_prefix.as_str()),
            mrg.strip_prefix(mrg_prefix.as_str())
        );
        assert!(avg.starts_with(avg_prefix.as_str()), "{avg}");
        assert_eq!(
            key_a.strip_suffix(" [3D, averaged]"),
            key_m.strip_suffix(" [3D, merged]")
        );
        assert!(key_a.ends_with(" [3D, averaged]"));
    }
}

/// 30×40×40 grid of 2 mm voxels, a cylinder of radius 14.6 voxels along z
/// (~20,000 voxels) of smooth dose 0–70 Gy in 1 Gy bins from 0: the volume
/// the ignored timing tests run on.
pub fn smooth_cylinder() -> Discretised {
    let dims = [30, 40, 40];
    let mut values = Vec::new();
    let mut mask = Vec::new();
    for z in 0..30 {
        for y in 0..40 {
            for x in 0..40 {
                let (dy, dx) = (y as f64 - 19.5, x as f64 - 19.5);
                let r2 = dy * dy + dx * dx;
                values.push(70.0 * (-r2 / 300.0).exp() * (1.0 - z as f64 / 60.0) + 0.1 * dx);
                mask.push(r2 <= 14.6 * 14.6);
            }
        }
    }
    binned(dims, 2.0, 0.0, values, mask)
}

/// The same 30×40×40 tube with a ripple on the dose (0–70 Gy, 1 Gy bins from
/// 0), so that zones break up: the volume the zone families' timing tests
/// run on.
pub fn textured_tube() -> Discretised {
    let (nz, ny, nx) = (30, 40, 40);
    let (mut values, mut mask) = (Vec::new(), Vec::new());
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let (dy, dx) = (y as f64 - 19.5, x as f64 - 19.5);
                let r2 = dy * dy + dx * dx;
                let v = 70.0 * (-r2 / 200.0).exp() * (0.7 + 0.3 * (z as f64 / 5.0).sin())
                    + 2.0 * (x as f64 * 0.7).sin() * (y as f64 * 0.5).cos();
                values.push(v.max(0.0));
                mask.push(r2 <= 14.6 * 14.6);
            }
        }
    }
    binned([nz, ny, nx], 2.0, 0.0, values, mask)
}
