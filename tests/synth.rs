//! Phantom hospitals: deterministic, valid DICOM that reads back through the
//! RT readers, with labels whose figures land where the model says.

use std::path::{Path, PathBuf};
use std::process::Command;

use esorisk::rt::dose::DoseOptions;
use esorisk::rt::names::{self, Organ};
use esorisk::rt::study;
use esorisk::synth::{self, Hospital};

fn labels(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("labels.csv")).expect("labels.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

/// dciodvfy's error lines for a file.
fn dciodvfy_errors(f: &Path) -> Vec<String> {
    let o = Command::new("dciodvfy")
        .arg(f)
        .output()
        .expect("dciodvfy (dicom3tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines()
        .filter(|l| l.starts_with("Error"))
        .map(String::from)
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[test]
fn same_seed_same_bytes() {
    let (a, b) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    for d in [a.path(), b.path()] {
        synth::generate_cohort(d, &[(Hospital::preset("hospital3"), 3)], 42, 0.7, false)
            .expect("generate");
    }
    for f in [
        "labels.csv",
        "cohort.json",
        "H3-0002/rtdose.dcm",
        "H3-0002/rtstruct.dcm",
        "H3-0003/rtplan.dcm",
        "truth/H3-0001.npy",
    ] {
        let (x, y) = (
            std::fs::read(a.path().join(f)).expect("a"),
            std::fs::read(b.path().join(f)).expect("b"),
        );
        assert!(x == y, "{f} differs between two runs with the same seed");
    }
    let c = tempfile::tempdir().expect("tmp");
    synth::generate_cohort(
        c.path(),
        &[(Hospital::preset("hospital3"), 3)],
        43,
        0.7,
        false,
    )
    .expect("generate");
    assert_ne!(
        std::fs::read(a.path().join("labels.csv")).expect("a"),
        std::fs::read(c.path().join("labels.csv")).expect("c")
    );
}

#[test]
fn every_hospital_writes_valid_dicom_that_reads_back() {
    let out = tempfile::tempdir().expect("tmp");
    let hospitals: Vec<(Hospital, usize)> = ["hospital1", "hospital2", "hospital3"]
        .iter()
        .map(|h| (Hospital::preset(h), 2))
        .collect();
    synth::generate_cohort(out.path(), &hospitals, 7, 0.7, false).expect("generate");
    let cohort: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("cohort.json")).expect("cohort.json"),
    )
    .expect("json");
    let mut conformal = 0;
    for row in labels(out.path()) {
        let id = &row["patient_id"];
        let dir = out.path().join(id);
        // dciodvfy (Debian 12's aborts on uncompressed 32-bit pixel data:
        // those doses are checked through an RLE copy).
        for f in files(&dir) {
            let mut target = f.clone();
            let ts = esorisk::send::DicomFile::read(&f)
                .expect("read")
                .transfer_syntax_uid;
            if f.ends_with("rtdose.dcm") && ts != esorisk::store::ts::RLE_LOSSLESS {
                let rle = out.path().join(format!("{id}-rle.dcm"));
                let st = Command::new("dcmcrle")
                    .arg(&f)
                    .arg(&rle)
                    .status()
                    .expect("dcmcrle (DCMTK)");
                assert!(st.success());
                target = rle;
            }
            let errors = dciodvfy_errors(&target);
            assert!(errors.is_empty(), "{}: {errors:?}", f.display());
        }
        // The readers see what was written.
        let s = study::load(std::slice::from_ref(&dir), &DoseOptions::default()).expect("load");
        assert!(s.problems.is_empty(), "{id}: {:?}", s.problems);
        let p = cohort["patients"]
            .as_array()
            .expect("patients")
            .iter()
            .find(|p| p["patient_id"] == id.as_str())
            .expect("grid");
        let g = &s.dose.grid;
        assert_eq!(p["shape"], serde_json::json!([g.nz(), g.ny, g.nx]), "{id}");
        assert!((p["origin_mm"][0].as_f64().expect("x") - g.x0).abs() < 1e-3);
        assert!((p["spacing_mm"][2].as_f64().expect("dz") - (g.z[1] - g.z[0])).abs() < 1e-3);
        let plan = s.plan.as_ref().expect("plan");
        assert_eq!(
            plan.fractions.map(|f| f.to_string()),
            Some(row["fractions"].clone())
        );
        assert_eq!(plan.technique, row["technique"], "{id}");
        if plan.technique == "3D-CRT" {
            // One static field per gantry angle the dose was shaped with:
            // AP/PA, or AP/PA and an oblique pair.
            assert!(matches!(plan.beams, 2 | 4), "{id}: {} beams", plan.beams);
            conformal += 1;
        }
        let ss = s.structures.as_ref().expect("structures");
        let eso = names::match_organ(Organ::Esophagus, &ss.rois)
            .unwrap_or_else(|| panic!("{id}: esophagus"));
        assert!(!eso.roi_name.contains("PRV"));
        let mean: f64 = row["esophagus_mean_gy"].parse().expect("mean");
        let max = s.dose.max_gy();
        assert!(mean >= 0.0 && f64::from(max) >= mean);
        // The truth mask has the documented shape.
        let npy = std::fs::read(out.path().join(&row["truth_file"])).expect("npy");
        assert!(npy.starts_with(b"\x93NUMPY"));
        let shape = &p["truth_shape"];
        let n: u64 = shape
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("n"))
            .product();
        let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
        assert_eq!((npy.len() - 10 - header_len) as u64, n, "{id}");
    }
    assert!(conformal > 0, "the draw holds a 3D-CRT plan");
}

/// `scripts/ceiling-terms --cohort COHORT ARGS…`: its standard output.
fn ceiling_terms(cohort: &Path, args: &[&std::ffi::OsStr]) -> String {
    let o = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/ceiling-terms"
    ))
    .arg("--cohort")
    .arg(cohort)
    .args(args)
    .output()
    .expect("run scripts/ceiling-terms (python3)");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// The internal-split column of the row of `text` (a ceiling-terms table)
/// that starts with `row`.
fn internal_cell(text: &str, row: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("| {row}")))
        .unwrap_or_else(|| panic!("no row {row:?} in\n{text}"));
    line.split('|')
        .nth(2)
        .expect("internal column")
        .trim()
        .parse()
        .expect("AUC")
}

#[test]
fn incidence_and_ceiling_auc_of_a_small_cohort() {
    // 120 hospital-1 patients, seed 1. Seeds 1-4 at this size give
    // conventional incidence 32-40 %, SBRT 0-9.5 %, ceiling AUC 0.87-0.90 and
    // the mean dose 0.07-0.11 below it; seed 1 is a typical one. (The paper
    // preset's seed is not used: its first 120 patients happen to hold 4
    // events among 23 SBRT patients of about 4 % risk each.)
    let out = tempfile::tempdir().expect("tmp");
    let summary = synth::generate_cohort(
        out.path(),
        &[(Hospital::preset("hospital1"), 120)],
        1,
        235.0 / 336.0,
        false,
    )
    .expect("generate");
    let h = &summary.per_hospital[0];
    assert!(
        (0.30..=0.45).contains(&h.incidence_conventional),
        "incidence {}",
        h.incidence_conventional
    );
    assert!(
        h.incidence_sbrt.is_none_or(|s| s < 0.10),
        "SBRT incidence {:?}",
        h.incidence_sbrt
    );
    assert!(
        (0.85..=0.92).contains(&h.auc_p_dose),
        "ceiling AUC {}",
        h.auc_p_dose
    );
    assert!(
        h.auc_mean_dose <= h.auc_p_dose - 0.03,
        "mean-dose AUC {} too close to the ceiling {}",
        h.auc_mean_dose,
        h.auc_p_dose
    );
    let rows = labels(out.path());
    let train = rows.iter().filter(|r| r["split"] == "train").count();
    assert!(
        (train as f64 / rows.len() as f64 - 235.0 / 336.0).abs() < 0.03,
        "{train}"
    );
    assert!(summary.text().contains("AUC of p_dose"));

    // scripts/ceiling-terms reads the same labels: its p_dose AUC must be
    // this crate's, and the dose term alone (the risk length), which drives
    // this cohort's risk, must rank it well above chance.
    let text = ceiling_terms(out.path(), &[]);
    let internal: Vec<_> = rows.iter().filter(|r| r["split"] == "internal").collect();
    let cell = |row: &str| internal_cell(&text, row);
    let p: Vec<f64> = internal
        .iter()
        .map(|r| r["p_dose"].parse().expect("p_dose"))
        .collect();
    let y: Vec<bool> = internal.iter().map(|r| r["label"] == "1").collect();
    let expected = esorisk::metrics::auc(&p, &y);
    assert!(
        (cell("p_dose (ceiling)") - expected).abs() < 0.0015,
        "script {} against {expected}",
        cell("p_dose (ceiling)")
    );
    assert!(cell("dose term alone") > 0.6, "{text}");

    // With a predictions file (here p_dose itself as the model, and as the
    // two baselines it is combined with), the last table splits the AUC by
    // whether the dose term is zero: the model's row within L > 0 must be
    // this crate's AUC of p_dose over the internal patients with L > 0.
    let model = "DGD (full) (dosiomics in the predicted ROI)";
    let mean_dose = "mean esophagus dose (logistic)";
    let lkb = "LKB NTCP (Belderbos 2005, EQD2)";
    let mut csv =
        format!("patient_id,hospital,split,label,\"{model}\",\"{mean_dose}\",\"{lkb}\"\n");
    for r in &rows {
        let p = &r["p_dose"];
        csv += &format!(
            "{},{},{},{},{p},{p},{p}\n",
            r["patient_id"], r["hospital"], r["split"], r["label"]
        );
    }
    let predictions = out.path().join("predictions.csv");
    std::fs::write(&predictions, csv).expect("write predictions");
    let text = ceiling_terms(
        out.path(),
        &["--predictions".as_ref(), predictions.as_os_str()],
    );
    let dosed: Vec<_> = internal
        .iter()
        .filter(|r| r["risk_length_cm"].parse::<f64>().expect("L") > 0.0)
        .collect();
    let p: Vec<f64> = dosed
        .iter()
        .map(|r| r["p_dose"].parse().expect("p"))
        .collect();
    let y: Vec<bool> = dosed.iter().map(|r| r["label"] == "1").collect();
    assert!(y.iter().any(|&e| e) && !y.iter().all(|&e| e), "{y:?}");
    let expected = esorisk::metrics::auc(&p, &y);
    let got = internal_cell(&text, &format!("L > 0: {model}"));
    assert!(
        (got - expected).abs() < 0.0015,
        "{got} against {expected}\n{text}"
    );
    assert!(
        text.contains(&format!("| L > 0: patients / events | {}/", dosed.len())),
        "{text}"
    );
}

#[test]
fn planning_ct_is_written_and_referenced_by_the_structures() {
    let out = tempfile::tempdir().expect("tmp");
    synth::generate_cohort(
        out.path(),
        &[(Hospital::preset("hospital3"), 1)],
        11,
        0.7,
        true,
    )
    .expect("generate");
    let dir = out.path().join("H3-0001");
    let cts: Vec<PathBuf> = files(&dir)
        .into_iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ct_"))
        })
        .collect();
    assert!(cts.len() > 50, "{} CT slices", cts.len());
    let s = study::load(std::slice::from_ref(&dir), &DoseOptions::default()).expect("load");
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.ct_images, cts.len());
    let ct_uids: Vec<String> = cts
        .iter()
        .map(|f| {
            esorisk::send::DicomFile::read(f)
                .expect("ct")
                .sop_instance_uid
        })
        .collect();
    let ss = s.structures.as_ref().expect("structures");
    assert_eq!(
        ss.contour_image_uids.len(),
        cts.len(),
        "every slice listed in the referenced series"
    );
    assert!(ss.contour_image_uids.iter().all(|u| ct_uids.contains(u)));
    for f in [&cts[cts.len() / 2], &dir.join("rtstruct.dcm")] {
        let errors = dciodvfy_errors(f);
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
}
