//! Dosiomics on synthetic patients: candidate ROIs, the `features` command,
//! and the ROI search's determinism.

use std::path::Path;
use std::process::Command;

use esorisk::dosiomics::roi::{DoseKind, PatientDose, CANDIDATES};
use esorisk::dosiomics::search::{self, DosiomicsModelFile, SearchOptions};
use esorisk::dosiomics::{self, Discretisation};
use esorisk::rt::study::{self, Study};

fn cohort(dir: &Path, patients: usize) {
    esorisk::synth::generate_cohort(
        dir,
        &[(esorisk::synth::Hospital::preset("hospital1"), patients)],
        42,
        0.7,
        false,
    )
    .expect("synth");
}

fn load(dir: &Path) -> Study {
    study::load(&[dir.to_path_buf()], &Default::default()).expect("study loads")
}

/// Every candidate's features, in CANDIDATES order.
fn candidate_features(s: &Study) -> Vec<Option<Vec<Option<f64>>>> {
    let pd = PatientDose::from_study(s, 10.0, None).expect("scorable");
    CANDIDATES
        .iter()
        .map(|c| {
            c.mask(&pd)
                .and_then(|m| pd.volume(&m, DoseKind::Physical, 4))
                .map(|v| {
                    dosiomics::extract(
                        &v,
                        Discretisation::BinWidth {
                            width: 1.0,
                            lower: 0.0,
                        },
                    )
                    .into_iter()
                    .map(|f| f.value)
                    .collect()
                })
        })
        .collect()
}

fn assert_same(a: &[Option<Vec<Option<f64>>>], b: &[Option<Vec<Option<f64>>>]) {
    let names = dosiomics::feature_names();
    for (c, (x, y)) in CANDIDATES.iter().zip(a.iter().zip(b)) {
        let (Some(x), Some(y)) = (x, y) else {
            assert_eq!(x.is_some(), y.is_some(), "{}", c.name);
            continue;
        };
        for (n, (p, q)) in names.iter().zip(x.iter().zip(y)) {
            match (p, q) {
                (Some(p), Some(q)) => assert!(
                    (p - q).abs() <= 1e-6 * (1.0 + p.abs()),
                    "{} {n}: {p} vs {q}",
                    c.name
                ),
                _ => assert_eq!(p, q, "{} {n}", c.name),
            }
        }
    }
}

#[test]
fn candidates_ignore_roi_names_and_patient_position() {
    let dir = tempfile::tempdir().expect("tmp");
    cohort(dir.path(), 3);
    // A patient with dose on the esophagus (the first with a non-empty
    // 20 Gy region), so the isodose candidates are not trivially empty.
    let mut chosen = None;
    for p in ["H1-0001", "H1-0002", "H1-0003"] {
        let s = load(&dir.path().join(p));
        let f = candidate_features(&s);
        let vol = dosiomics::feature_names()
            .iter()
            .position(|n| n == "original_shape_VoxelVolume")
            .expect("volume feature");
        let i20 = CANDIDATES
            .iter()
            .position(|c| c.name == "esophagus_ge20gy")
            .expect("candidate");
        if f[i20].as_ref().and_then(|r| r[vol]).unwrap_or(0.0) > 0.0 {
            chosen = Some((s, f));
            break;
        }
    }
    let (s, reference) = chosen.expect("a patient with ≥ 20 Gy on the esophagus");
    assert!(
        reference.iter().all(|r| r.is_some()),
        "every candidate defined"
    );

    // Renamed structures: matched by meaning, same regions, same features.
    let mut s2 = s;
    if let Some(ss) = &mut s2.structures {
        for r in &mut ss.rois {
            r.info.name = match r.info.name.as_str() {
                "Esophagus" => "OESOPHAGUS".into(),
                "PTV" => "PTV_60".into(),
                n => format!("{n}_renamed"),
            };
        }
    }
    assert_same(&reference, &candidate_features(&s2));

    // The whole patient moved (dose grid and contours together).
    let shift = [12.5, -25.0, 37.5];
    s2.dose.grid.x0 += shift[0];
    s2.dose.grid.y0 += shift[1];
    for z in &mut s2.dose.grid.z {
        *z += shift[2];
    }
    if let Some(ss) = &mut s2.structures {
        for r in &mut ss.rois {
            for p in &mut r.planes {
                p.z += shift[2];
                for poly in &mut p.polygons {
                    for pt in poly {
                        pt[0] += shift[0];
                        pt[1] += shift[1];
                    }
                }
            }
        }
    }
    assert_same(&reference, &candidate_features(&s2));
}

#[test]
fn features_command_prints_every_feature_and_no_nan() {
    let dir = tempfile::tempdir().expect("tmp");
    cohort(dir.path(), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["features", "--roi", "esophagus_5mm", "--format", "json"])
        .arg(dir.path().join("H1-0001"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
    let j: serde_json::Value = serde_json::from_str(&text).expect("json");
    let f = j["features"].as_object().expect("features");
    let names = dosiomics::feature_names();
    assert_eq!(f.len(), names.len());
    for n in &names {
        assert!(f[n].is_number() || f[n].is_null(), "{n}: {}", f[n]);
    }
    assert!(j["voxels"].as_u64().unwrap_or(0) > 100, "{}", j["voxels"]);
    assert!(f["original_firstorder_Mean"].is_number());

    // A structure by its own name, CSV with IBSI names.
    let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args([
            "features",
            "--roi",
            "esophagus",
            "--format",
            "csv",
            "--bin-width",
            "2.5",
        ])
        .arg(dir.path().join("H1-0001"))
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("original_glcm_JointEntropy,"), "{text}");
    assert!(text.contains("\"Joint entropy [3D, averaged]\""));

    // An unknown region is an error that lists what exists.
    let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["features", "--roi", "Liver"])
        .arg(dir.path().join("H1-0001"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Liver") && err.contains("esophagus_infield"),
        "{err}"
    );
}

#[test]
fn roi_search_is_deterministic_and_saves_a_loadable_model() {
    let dir = tempfile::tempdir().expect("tmp");
    cohort(dir.path(), 40);
    let patients = search::read_labels(dir.path()).expect("labels");
    let o = SearchOptions {
        repeats: 2,
        folds: 3,
        bootstrap: 100,
        seed: 5,
        ..Default::default()
    };
    let features = search::cohort_features(dir.path(), &patients, &o);
    assert!(features.iter().all(|f| f.error.is_none()));
    let (a, model_a) = search::search(&patients, &features, &o, dir.path()).expect("search");
    let (b, model_b) = search::search(&patients, &features, &o, dir.path()).expect("search");
    assert_eq!(a.csv(), b.csv());
    assert_eq!(model_a, model_b);
    assert_eq!(a.ranking.len(), CANDIDATES.len());
    assert!(a.ranking.windows(2).all(|w| w[0].cv_auc >= w[1].cv_auc));
    assert_eq!(a.best, model_a.roi);
    // The stability screen measured the training patients at three dose
    // scalings: the mean dose of the whole esophagus scales with the dose
    // (no second difference), the histogram's steepest-fall bin jumps and
    // is left out, and the model holds no feature above the threshold.
    let names = dosiomics::feature_names();
    let col = |n: &str| names.iter().position(|x| x == n).expect("feature");
    let whole = CANDIDATES
        .iter()
        .position(|c| c.name == "esophagus")
        .expect("esophagus");
    let inst = &a.instability[whole];
    let mean = inst[col("original_firstorder_Mean")].expect("measured");
    assert!(mean < 1e-6, "mean dose instability {mean}");
    let jump = inst[col("original_histogram_MinimumGradientGreyLevel")].expect("measured");
    assert!(
        jump > o.max_instability,
        "steepest-fall bin instability {jump}"
    );
    let best_idx = CANDIDATES
        .iter()
        .position(|c| c.name == a.best)
        .expect("best");
    let screen = model_a.stability.as_ref().expect("screen recorded");
    assert!(!screen.excluded.is_empty());
    for f in &model_a.model.features {
        let x = a.instability[best_idx][col(&f.name)].unwrap_or(0.0);
        assert!(x <= o.max_instability, "{} kept at {x}", f.name);
        assert!(!screen.excluded.iter().any(|(n, _)| *n == f.name));
    }
    assert!(a.stability_csv().lines().count() > names.len());
    // Without the screen nothing is measured twice and nothing is left out.
    let off = SearchOptions {
        stability_scale: 0.0,
        ..o.clone()
    };
    let plain = search::cohort_features(dir.path(), &patients, &off);
    assert!(plain.iter().all(|f| f.scaled.is_empty()));
    let (c, model_c) = search::search(&patients, &plain, &off, dir.path()).expect("search");
    assert!(c.instability.is_empty() && model_c.stability.is_none());
    assert!(c.ranking.iter().all(|r| r.unstable == 0));
    // The saved file loads back to the same model and predicts.
    let path = dir.path().join("models/dosiomics.json");
    model_a.save(&path).expect("save");
    let loaded = DosiomicsModelFile::load(&path).expect("load");
    assert_eq!(loaded, model_a);
    assert!(loaded.intended_use.contains("synthetic"));
    let index = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let best = CANDIDATES
        .iter()
        .position(|c| c.name == a.best)
        .expect("best");
    let p = loaded.predict(&index, features[0].rois[best].as_ref().expect("defined"));
    assert!(p > 0.0 && p < 1.0);
    // The CSV and the chart are written.
    a.png(&dir.path().join("roi.png")).expect("png");
    assert!(
        std::fs::metadata(dir.path().join("roi.png"))
            .map(|m| m.len())
            .unwrap_or(0)
            > 1000
    );
}

/// Features measured on isotropic voxels: on the plan's own voxel size the
/// grid is the dose grid itself; on 4 mm the dose is interpolated and the
/// structures rasterised again, and what does not depend on the voxel size
/// (volume, mean dose) stays close; the truth mask follows the grid.
#[test]
fn features_on_a_resampled_grid() {
    let dir = tempfile::tempdir().expect("tmp");
    cohort(dir.path(), 10);
    let cohort_json = search::read_cohort_json(dir.path()).expect("cohort.json");
    let patients = search::read_labels(dir.path()).expect("labels");
    let mut compared = 0;
    for p in &patients {
        let s = load(&dir.path().join(&p.patient_id));
        let native = PatientDose::from_study(&s, 10.0, None).expect("scorable");
        // Hospital 1 plans on 2.5 mm: resampling to 2.5 mm changes nothing.
        assert_eq!(native.spacing, [2.5, 2.5, 2.5]);
        let same = PatientDose::from_study(&s, 10.0, Some(2.5)).expect("scorable");
        assert_eq!(same.grid.nx, native.grid.nx);
        assert_eq!(same.grid.z, native.grid.z);
        assert_eq!(same.esophagus, native.esophagus);
        assert_eq!(same.physical, native.physical);
        assert_eq!(same.ptv, native.ptv);

        let coarse = PatientDose::from_study(&s, 10.0, Some(4.0)).expect("scorable");
        assert_eq!(coarse.spacing, [4.0, 4.0, 4.0]);
        let cc = |pd: &PatientDose, m: &[bool]| {
            m.iter().filter(|&&v| v).count() as f64 * pd.spacing.iter().product::<f64>() / 1000.0
        };
        let mean = |pd: &PatientDose| {
            let (sum, n) = pd
                .esophagus
                .iter()
                .zip(&pd.physical)
                .filter(|(&m, _)| m)
                .fold((0.0, 0usize), |(s, n), (_, &d)| (s + f64::from(d), n + 1));
            sum / n as f64
        };
        let (v0, v1) = (
            cc(&native, &native.esophagus),
            cc(&coarse, &coarse.esophagus),
        );
        assert!(
            (v1 / v0 - 1.0).abs() < 0.15,
            "esophagus {v0:.1} cc vs {v1:.1} cc"
        );
        assert!((mean(&native) - mean(&coarse)).abs() < 1.0);
        let t0 = search::read_truth(dir.path(), &cohort_json, p, &native.grid).expect("truth");
        let t1 = search::read_truth(dir.path(), &cohort_json, p, &coarse.grid).expect("truth");
        let (r0, r1) = (cc(&native, &t0), cc(&coarse, &t1));
        assert_eq!(r0 == 0.0, r1 == 0.0, "{r0} cc vs {r1} cc");
        if r0 > 0.0 {
            assert!(
                (r1 / r0 - 1.0).abs() < 0.25,
                "truth {r0:.1} cc vs {r1:.1} cc"
            );
            compared += 1;
        }
    }
    assert!(compared > 0, "no patient with a truth region");
    // A model file written before the setting existed measures on the dose
    // grid.
    let old = r#"{"format":"esorisk-dosiomics","version":1,"created_by":"x","roi":"esophagus",
        "roi_description":"d","dose":"physical","alpha_beta":10.0,"bin_width_gy":1.0,
        "model":{"intercept":0.0,"lambda":0.1,"features":[],"candidates":0},
        "training":{"cohort":"c","cohort_generator":"g","cohort_seed":null,"patients":1,
        "events":0,"cv_auc":0.5,"lambda_rule":"min","seed":1},"intended_use":"synthetic"}"#;
    let path = dir.path().join("old.json");
    std::fs::write(&path, old).expect("write");
    match DosiomicsModelFile::load(&path) {
        Ok(m) => assert_eq!(m.resample_mm, None),
        Err(e) => panic!("an old model file no longer loads: {e}"),
    }
}
