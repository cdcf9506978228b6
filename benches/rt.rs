//! RT reading benchmark: load a 200×256×256 32-bit RT Dose and rasterise 8
//! structures onto its grid (fractional masks, 4×4×4 samples per voxel).
//!
//!     cargo bench --bench rt
//!
//! Target: under 1 s for both together on the development machine.

use std::time::Instant;

use esorisk::rt::dose::{self, DoseOptions};
use esorisk::rt::phantom;
use esorisk::rt::structure;

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let files = phantom::write(&phantom::thorax(), dir.path()).expect("write phantom");
    let (ss_path, dose_path) = (files[0].clone(), files[2].clone());
    let mb = std::fs::metadata(&dose_path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    let mut totals = Vec::new();
    for run in 0..5 {
        let t0 = Instant::now();
        let d = dose::read(&dose_path, &DoseOptions::default()).expect("read dose");
        let t_dose = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let ss = structure::read(&ss_path).expect("read structures");
        let masks: Vec<_> = ss.rois.iter().map(|r| r.rasterize(&d.grid, 4)).collect();
        let t_struct = t1.elapsed().as_secs_f64();
        let voxels: usize = masks.iter().map(|m| m.voxels.len()).sum();
        let total = t0.elapsed().as_secs_f64();
        totals.push(total);
        println!(
            "run {run}: dose {:.0} ms ({mb:.0} MB, {}×{}×{}), 8 structures {:.0} ms ({voxels} mask voxels), total {:.0} ms",
            t_dose * 1e3,
            d.grid.nx,
            d.grid.ny,
            d.grid.nz(),
            t_struct * 1e3,
            total * 1e3
        );
    }
    totals.sort_by(f64::total_cmp);
    println!(
        "median total: {:.0} ms (target < 1000 ms)",
        totals[totals.len() / 2] * 1e3
    );
}
