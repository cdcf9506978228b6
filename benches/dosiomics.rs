//! Dosiomics benchmark: every feature family on a 20,000-voxel tubular ROI
//! of smooth dose (1 Gy bins), and the whole candidate-ROI set of one
//! synthetic patient.
//!
//!     cargo bench --bench dosiomics
//!
//! Targets: all families for the 20,000-voxel ROI under 50 ms; the whole
//! candidate set for one patient under 1 s. The volumes are also written to
//! `target/bench-dosiomics/` (NumPy arrays) so `scripts/bench-dosiomics`
//! can time pyradiomics on the same data.

use std::path::Path;
use std::time::Instant;

use esorisk::dosiomics::roi::{DoseKind, PatientDose, CANDIDATES};
use esorisk::dosiomics::{self, Discretisation, Discretised, Volume};

fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        f();
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// A 30×40×40 grid (3 × 2.5 × 2.5 mm) with a cylinder along z and dose
/// falling from 70 Gy across it, with a small ripple.
fn tube() -> Volume {
    let dims = [30, 40, 40];
    let mut values = Vec::new();
    let mut mask = Vec::new();
    for z in 0..dims[0] {
        for y in 0..dims[1] {
            for x in 0..dims[2] {
                let (fx, fy) = (x as f64 - 19.5, y as f64 - 19.5);
                mask.push(fx * fx + fy * fy <= 14.75f64.powi(2));
                values.push(
                    (70.0 * (1.0 - (x as f64) / 40.0) + 2.0 * ((z + y) as f64 * 0.7).sin())
                        .max(0.0),
                );
            }
        }
    }
    Volume {
        dims,
        spacing: [3.0, 2.5, 2.5],
        values,
        mask,
    }
}

fn write_npy(path: &Path, descr: &str, shape: [usize; 3], data: &[u8]) {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        shape[0], shape[1], shape[2]
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    std::fs::write(path, out).expect("write npy");
}

fn export(dir: &Path, name: &str, v: &Volume) {
    let values: Vec<u8> = v.values.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mask: Vec<u8> = v.mask.iter().map(|&m| u8::from(m)).collect();
    write_npy(
        &dir.join(format!("{name}_values.npy")),
        "<f8",
        v.dims,
        &values,
    );
    write_npy(&dir.join(format!("{name}_mask.npy")), "|u1", v.dims, &mask);
    let as_map = |lower: f64| -> serde_json::Map<String, serde_json::Value> {
        dosiomics::extract(v, Discretisation::BinWidth { width: 1.0, lower })
            .into_iter()
            .map(|f| (f.name, f.value.into()))
            .collect()
    };
    // pyradiomics starts bin 1 at the ROI minimum rounded down to a bin
    // edge (esorisk at 0 Gy): compare on pyradiomics' binning too.
    let min = v.roi_values().into_iter().fold(f64::INFINITY, f64::min);
    let meta = serde_json::json!({
        "spacing_zyx_mm": v.spacing,
        "voxels": v.count(),
        "features": as_map(0.0),
        "features_pyradiomics_binning": as_map(min.floor()),
    });
    std::fs::write(dir.join(format!("{name}.json")), meta.to_string()).expect("write json");
}

fn main() {
    let out = Path::new("target/bench-dosiomics");
    std::fs::create_dir_all(out).expect("out dir");
    let v = tube();
    let d = Discretisation::BinWidth {
        width: 1.0,
        lower: 0.0,
    };
    let g = Discretised::new(&v, d);
    println!(
        "tube ROI: {} voxels, {} grey levels (1 Gy bins)",
        v.count(),
        g.n_levels
    );
    let runs = 30;
    type Family<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let families: [Family; 11] = [
        (
            "morphology",
            Box::new(|| drop(dosiomics::morphology::morphology(&v))),
        ),
        (
            "local intensity",
            Box::new(|| drop(dosiomics::stats::local_intensity(&v))),
        ),
        (
            "intensity statistics",
            Box::new(|| drop(dosiomics::stats::intensity_statistics(&v))),
        ),
        (
            "intensity histogram",
            Box::new(|| drop(dosiomics::stats::intensity_histogram(&g))),
        ),
        (
            "intensity-volume histogram",
            Box::new(|| drop(dosiomics::stats::intensity_volume_histogram(&v, &g))),
        ),
        (
            "GLCM (averaged + merged)",
            Box::new(|| drop(dosiomics::glcm::glcm(&g))),
        ),
        (
            "GLRLM (averaged + merged)",
            Box::new(|| drop(dosiomics::glrlm::glrlm(&g))),
        ),
        ("GLSZM", Box::new(|| drop(dosiomics::glszm::glszm(&g)))),
        ("GLDZM", Box::new(|| drop(dosiomics::gldzm::gldzm(&g)))),
        ("NGTDM", Box::new(|| drop(dosiomics::ngtdm::ngtdm(&g)))),
        ("NGLDM", Box::new(|| drop(dosiomics::ngldm::ngldm(&g)))),
    ];
    for (name, f) in &families {
        println!("  {name:<28} {:>7.2} ms", median_ms(f, runs));
    }
    let all = median_ms(|| drop(dosiomics::extract(&v, d)), runs);
    println!(
        "all families, {} features: {all:.1} ms median of {runs} (target < 50 ms)",
        dosiomics::feature_names().len()
    );
    export(out, "tube", &v);

    // One synthetic patient, every candidate ROI.
    let dir = tempfile::tempdir().expect("tmp");
    esorisk::synth::generate_cohort(
        dir.path(),
        &[(esorisk::synth::Hospital::preset("hospital1"), 4)],
        7,
        1.0,
        false,
    )
    .expect("synth");
    let mut load_ms = Vec::new();
    let mut cand_ms = Vec::new();
    let mut hottest: Option<(f64, Volume)> = None;
    for p in ["H1-0001", "H1-0002", "H1-0003", "H1-0004"] {
        let t0 = Instant::now();
        let study =
            esorisk::rt::study::load(&[dir.path().join(p)], &Default::default()).expect("load");
        // On the feature grid of the default settings (2.5 mm isotropic).
        let pd = PatientDose::from_study(&study, 10.0, Some(2.5)).expect("scorable");
        let t_load = t0.elapsed().as_secs_f64() * 1e3;
        let mut voxels = 0;
        let t = median_ms(
            || {
                voxels = 0;
                for c in CANDIDATES {
                    if let Some(m) = c.mask(&pd) {
                        if let Some(v) = pd.volume(&m, DoseKind::Physical, 4) {
                            voxels += v.count();
                            drop(dosiomics::extract(&v, d));
                        }
                    }
                }
            },
            5,
        );
        println!(
            "patient {p}: read + rasterise {t_load:.0} ms; {} candidates ({voxels} ROI voxels in all) {t:.0} ms",
            CANDIDATES.len()
        );
        load_ms.push(t_load);
        cand_ms.push(t);
        let m = CANDIDATES[0].mask(&pd).expect("esophagus");
        if let Some(v) = pd.volume(&m, DoseKind::Physical, 4) {
            let vals = v.roi_values();
            let mean = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
            if hottest.as_ref().is_none_or(|(m, _)| mean > *m) {
                hottest = Some((mean, v));
            }
        }
    }
    if let Some((_, v)) = &hottest {
        export(out, "esophagus", v);
    }
    let worst = cand_ms.iter().cloned().fold(0.0, f64::max);
    println!(
        "candidate set per patient: worst {worst:.0} ms (+ {:.0} ms reading) (target < 1000 ms)",
        load_ms.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "volumes for the pyradiomics comparison written to {}",
        out.display()
    );
}
