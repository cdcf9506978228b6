//! Analytic phantoms: studies whose DVHs are known in closed form, written
//! as real DICOM (RT Structure Set, RT Plan, RT Dose). Used by the tests,
//! the RT benchmark and `scripts/crosscheck-dvh`.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use super::grid::Grid;
use super::structure::ContourPlane;
use super::write::{self, DoseEncoding, RoiSpec, StudyHeader};
use crate::uid;

/// A phantom study in memory.
pub struct Phantom {
    pub name: &'static str,
    pub grid: Grid,
    pub gy: Vec<f32>,
    pub rois: Vec<RoiSpec>,
    pub prescription_gy: f64,
    pub fractions: u32,
}

/// A regular polygon with the area of the circle of radius r, so polygon
/// error does not enter volumes.
pub fn circle(cx: f64, cy: f64, r: f64, n: usize) -> Vec<[f64; 2]> {
    let a = 2.0 * PI / n as f64;
    let r = r * (a / a.sin()).sqrt();
    (0..n)
        .map(|i| {
            let t = i as f64 * a;
            [cx + r * t.cos(), cy + r * t.sin()]
        })
        .collect()
}

/// An ellipse as a 64-gon.
pub fn ellipse(cx: f64, cy: f64, a: f64, b: f64) -> Vec<[f64; 2]> {
    (0..64)
        .map(|i| {
            let t = i as f64 * 2.0 * PI / 64.0;
            [cx + a * t.cos(), cy + b * t.sin()]
        })
        .collect()
}

pub fn dose_on(grid: &Grid, f: impl Fn(f64, f64, f64) -> f64) -> Vec<f32> {
    let mut gy = vec![0f32; grid.len()];
    for (k, z) in grid.z.iter().enumerate() {
        for j in 0..grid.ny {
            for i in 0..grid.nx {
                gy[grid.index(i, j, k)] = f(grid.x(i), grid.y(j), *z) as f32;
            }
        }
    }
    gy
}

pub fn roi(number: i64, name: &str, kind: &str, planes: Vec<ContourPlane>) -> RoiSpec {
    RoiSpec {
        number,
        name: name.into(),
        interpreted_type: kind.into(),
        planes,
        color: [255, 64, 0],
    }
}

/// Contours of `shape(z)` every `step` mm from z0 to z1.
pub fn planes(
    z0: f64,
    z1: f64,
    step: f64,
    shape: impl Fn(f64) -> Option<Vec<Vec<[f64; 2]>>>,
) -> Vec<ContourPlane> {
    (0..)
        .map(|k| z0 + step * k as f64)
        .take_while(|z| *z <= z1 + 1e-9)
        .filter_map(|z| shape(z).map(|polygons| ContourPlane { z, polygons }))
        .collect()
}

/// A sphere of radius 20 mm ("GTV") at the origin in D = 30 + 0.5·x Gy.
/// V(≥D) is the spherical cap beyond x₀ = 2(D − 30): π h² (3r − h)/3.
pub fn sphere_linear() -> Phantom {
    let r = 20.0;
    let grid = Grid::uniform([-40.0, -40.0, -40.0], [2.5, 2.5, 2.5], [33, 33, 33]);
    let gy = dose_on(&grid, |x, _, _| 30.0 + 0.5 * x);
    let sphere = planes(-40.0, 40.0, 2.5, |z| {
        (z.abs() < r).then(|| vec![circle(0.0, 0.0, (r * r - z * z).sqrt(), 128)])
    });
    Phantom {
        name: "sphere",
        grid,
        gy,
        rois: vec![roi(1, "GTV", "GTV", sphere)],
        prescription_gy: 60.0,
        fractions: 30,
    }
}

/// A hollow cylinder ("Esophagus", radii 10 and 30 mm, 40 mm long) in
/// D = 10 + r Gy: V(≥D) = π L (30² − r₀²) with r₀ = D − 10.
pub fn hollow_cylinder_radial() -> Phantom {
    let (ro, ri) = (30.0, 10.0);
    let grid = Grid::uniform([-40.0, -40.0, -25.0], [2.0, 2.0, 2.5], [41, 41, 21]);
    let gy = dose_on(&grid, |x, y, _| 10.0 + (x * x + y * y).sqrt());
    let tube = planes(-20.0, 20.0, 2.5, |_| {
        Some(vec![circle(0.0, 0.0, ro, 256), circle(0.0, 0.0, ri, 256)])
    });
    Phantom {
        name: "cylinder",
        grid,
        gy,
        rois: vec![roi(1, "Esophagus", "ORGAN", tube)],
        prescription_gy: 60.0,
        fractions: 30,
    }
}

/// A thorax-like phantom on a 200×256×256 dose grid of 2 mm with eight
/// structures and a Gaussian dose around a right-lung target (benchmarks).
pub fn thorax() -> Phantom {
    thorax_on(Grid::uniform(
        [-255.0, -255.0, -200.0],
        [2.0, 2.0, 2.0],
        [256, 256, 200],
    ))
}

/// The thorax phantom on another dose grid (e.g. a coarse one for tests).
pub fn thorax_on(grid: Grid) -> Phantom {
    let gy = dose_on(&grid, |x, y, z| {
        60.0 * (-((x - 40.0).powi(2) + (y + 20.0).powi(2) + z * z) / (2.0 * 45.0f64.powi(2))).exp()
    });
    let lung = |cx: f64, a: f64| {
        move |z: f64| {
            (z.abs() < 120.0).then(|| {
                vec![ellipse(
                    cx,
                    -10.0,
                    a * (1.0 - (z / 130.0).powi(2)).sqrt(),
                    80.0,
                )]
            })
        }
    };
    let ball = |rad: f64| {
        move |z: f64| {
            (z.abs() < rad).then(|| vec![circle(40.0, -20.0, (rad * rad - z * z).sqrt(), 64)])
        }
    };
    let rois = vec![
        roi(
            1,
            "BODY",
            "EXTERNAL",
            planes(-180.0, 180.0, 2.5, |_| {
                Some(vec![ellipse(0.0, 0.0, 170.0, 120.0)])
            }),
        ),
        roi(
            2,
            "Lung_L",
            "ORGAN",
            planes(-120.0, 120.0, 2.5, lung(75.0, 55.0)),
        ),
        roi(
            3,
            "Lung_R",
            "ORGAN",
            planes(-120.0, 120.0, 2.5, lung(-75.0, 60.0)),
        ),
        roi(
            4,
            "Heart",
            "ORGAN",
            planes(-100.0, -10.0, 2.5, |z| {
                Some(vec![ellipse(
                    15.0,
                    30.0,
                    55.0 * (1.0 - ((z + 55.0) / 50.0).powi(2)).max(0.05).sqrt(),
                    45.0,
                )])
            }),
        ),
        roi(
            5,
            "SpinalCord",
            "ORGAN",
            planes(-180.0, 180.0, 2.5, |_| {
                Some(vec![circle(0.0, -70.0, 6.0, 32)])
            }),
        ),
        roi(
            6,
            "Esophagus",
            "ORGAN",
            planes(-150.0, 100.0, 2.5, |z| {
                Some(vec![ellipse(z * 0.05, -40.0, 9.0, 7.0)])
            }),
        ),
        roi(7, "GTV", "GTV", planes(-25.0, 25.0, 2.5, ball(25.0))),
        roi(8, "PTV", "PTV", planes(-35.0, 35.0, 2.5, ball(35.0))),
    ];
    Phantom {
        name: "thorax",
        grid,
        gy,
        rois,
        prescription_gy: 60.0,
        fractions: 30,
    }
}

/// Write the phantom as RT Structure Set, RT Plan and RT Dose into `dir`.
pub fn write(p: &Phantom, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let h = StudyHeader::new(&format!("PHANTOM_{}", p.name.to_uppercase()));
    let (ss, plan) = (uid::generate(), uid::generate());
    let per_fraction = p.prescription_gy / f64::from(p.fractions);
    let objects = vec![
        (write::rt_struct(&h, &ss, p.name, &p.rois), "rtstruct.dcm"),
        (
            write::rt_plan(
                &h,
                &plan,
                &ss,
                Some(p.prescription_gy),
                p.fractions,
                &[per_fraction],
            ),
            "rtplan.dcm",
        ),
        (
            write::rt_dose(
                &h,
                &p.grid,
                &p.gy,
                &DoseEncoding {
                    referenced_plan_uid: Some(plan.clone()),
                    ..Default::default()
                },
            ),
            "rtdose.dcm",
        ),
    ];
    objects
        .into_iter()
        .map(|(obj, name)| {
            let path = dir.join(name);
            obj.write_to_file(&path)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(path)
        })
        .collect()
}
