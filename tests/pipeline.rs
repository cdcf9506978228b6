//! From push to answer, with real peers: DCMTK storescu pushes a synthetic
//! study, the node scores it with a small trained model, and a DCMTK
//! storescp receives the SR and RT Structure Set, which dciodvfy and
//! dsrdump check. Also: unscorable studies fail with their reason, an
//! unreachable destination ends as a dead delivery, and a node killed
//! mid-job finishes the job once after a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{count, dcmtk, query, storescu, text, TestNode};

/// A tiny model trained for one epoch on a small synthetic cohort (shared
/// by the tests; training it is part of what is tested).
fn tiny_model() -> &'static PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("esorisk-test-model-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let cohort = dir.join("cohort");
        run(
            &[
                "synth",
                "--out",
                cohort.to_str().unwrap_or_default(),
                "--patients",
                "14",
                "--seed",
                "3",
            ],
            &[],
        );
        let cfg = dir.join("tiny.toml");
        std::fs::write(&cfg, TINY).expect("config");
        let model = dir.join("model");
        run(
            &[
                "--config",
                cfg.to_str().unwrap_or_default(),
                "train",
                "--cohort",
                cohort.to_str().unwrap_or_default(),
                "--out",
                model.to_str().unwrap_or_default(),
                "--device",
                "cpu",
            ],
            &[],
        );
        assert!(model.join("model.safetensors").exists() && model.join("card.json").exists());
        model
    })
}

const TINY: &str = r#"
[train]
epochs = 1
batch_size = 4
[train.net]
width = 2
blocks = [1, 1, 1, 1]
proj_dim = 8
fusion_hidden = 8
groups = 1
[train.input]
size = [8, 16, 16]
spacing_mm = [32.0, 12.5, 12.5]
"#;

fn run(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("esorisk runs");
    assert!(out.status.success(), "esorisk {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A DCMTK storescp writing what it receives into `dir`.
struct Receiver {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        std::fs::create_dir_all(dir).expect("dir");
        let port = free_port();
        let child = Command::new("storescp")
            .args(["-aet", "TPS", "-od"])
            .arg(dir)
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp (run scripts/test to install DCMTK)");
        std::thread::sleep(Duration::from_millis(300));
        Receiver {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn node_env(model: &Path, dest_port: u16) -> Vec<(String, String)> {
    vec![
        ("ESORISK__PIPELINE__ENABLED".into(), "true".into()),
        ("ESORISK__PIPELINE__STABLE_SECONDS".into(), "1".into()),
        ("ESORISK__PIPELINE__POLL_SECONDS".into(), "1".into()),
        ("ESORISK__PIPELINE__RETRY_BASE_SECONDS".into(), "1".into()),
        (
            "ESORISK__PIPELINE__DELIVERY_RETRY_BASE_SECONDS".into(),
            "1".into(),
        ),
        (
            "ESORISK__PIPELINE__DELIVERY_MAX_ATTEMPTS".into(),
            "3".into(),
        ),
        (
            "ESORISK__PIPELINE__DESTINATIONS".into(),
            format!("TPS@127.0.0.1:{dest_port}"),
        ),
        ("ESORISK__MODEL__PATH".into(), model.display().to_string()),
        ("ESORISK__MODEL__DEVICE".into(), "cpu".into()),
    ]
}

fn start_node(env: &[(String, String)]) -> TestNode {
    let refs: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    TestNode::start(&refs)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn push(node: &TestNode, dir: &Path) {
    let out = storescu(node, &["+sd", "+r"], &[dir]);
    assert!(out.status.success(), "{}", text(&out));
}

fn patient(dir: &Path, seed: &str, ct: bool) -> PathBuf {
    let mut args = vec![
        "synth",
        "--out",
        dir.to_str().unwrap_or_default(),
        "--patients",
        "1",
        "--seed",
        seed,
    ];
    if ct {
        args.push("--ct");
    }
    run(&args, &[]);
    dir.join("H1-0001")
}

#[test]
fn a_pushed_study_comes_back_as_sr_and_rtstruct() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "11", true);
    let rx = Receiver::start(&tmp.path().join("tps"));
    let node = start_node(&node_env(model, rx.port));
    push(&node, &study);
    wait_until("the SR and RTSTRUCT at the destination", 180, || {
        rx.files().len() >= 2
    });
    let files = rx.files();
    assert_eq!(files.len(), 2, "{files:?}");
    let (mut sr, mut rs) = (None, None);
    for f in &files {
        let class = common::uids(f).sop_class;
        if class == "1.2.840.10008.5.1.4.1.1.88.33" {
            sr = Some(f.clone());
        } else if class == "1.2.840.10008.5.1.4.1.1.481.3" {
            rs = Some(f.clone());
        }
    }
    let (sr, rs) = (sr.expect("an SR"), rs.expect("an RT Structure Set"));
    for f in [&sr, &rs] {
        let v = Command::new("dciodvfy").arg(f).output().expect("dciodvfy");
        let t = text(&v);
        assert!(
            !t.lines().any(|l| l.starts_with("Error")),
            "{}: {t}",
            f.display()
        );
    }
    let dump = dcmtk("dsrdump", &["+Pc", "+Pl", sr.to_str().unwrap_or_default()]);
    assert!(dump.status.success(), "{}", text(&dump));
    let dump = text(&dump);
    // The risk in the SR equals `esorisk predict` on the same files.
    let pred: serde_json::Value = serde_json::from_str(&run(
        &[
            "predict",
            "--json",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap_or_default(),
            study.to_str().unwrap_or_default(),
        ],
        &[],
    ))
    .expect("json");
    let risk = pred["score"]["risk"].as_f64().expect("risk");
    let shown = dump
        .lines()
        .find(|l| l.contains("ESR0001"))
        .and_then(|l| l.split("=\"").nth(1))
        .and_then(|v| v.split('"').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("risk item in the SR: {dump}"));
    let in_sr: f64 = shown.parse().expect("number");
    assert!((in_sr - risk).abs() < 1e-3, "SR {in_sr} vs predict {risk}");
    assert!(dump.contains("synthetic"), "{dump}");
    // The returned contours give back the model's ROI.
    let dev = candle_core::Device::Cpu;
    let m = esorisk::model::infer::RiskModel::load(model, &dev).expect("model");
    let s =
        esorisk::rt::study::load(std::slice::from_ref(&study), &Default::default()).expect("study");
    let score = m.score(&s).expect("scorable");
    let ss = esorisk::rt::structure::read(&rs).expect("RTSTRUCT reads");
    let roi = ss
        .rois
        .iter()
        .find(|r| r.info.name == "ESORISK_ROI")
        .expect("ESORISK_ROI");
    let back = roi
        .rasterize(&score.prepared_grid, 1)
        .centre_mask(&score.prepared_grid);
    let dice = esorisk::dosiomics::roi::dice(&back, &score.roi);
    assert!(dice >= 0.95, "Dice {dice}");
    // The job is recorded as succeeded, once.
    let db = node.db_path();
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'"),
        2
    );
    // Pushing the same files again scores nothing new.
    push(&node, &study);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 1);
    let jobs = run(
        &["jobs"],
        &[(
            "ESORISK__STORAGE__DATA_DIR",
            node.data_dir.to_str().unwrap_or_default(),
        )],
    );
    assert!(
        jobs.contains("succeeded") && jobs.contains("risk"),
        "{jobs}"
    );
}

#[test]
fn unscorable_studies_fail_with_their_reason_and_send_nothing() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "12", false);
    // Rename the esophagus: no ROI is recognised as the esophagus.
    let ss_path = study.join("rtstruct.dcm");
    let mut obj = dicom_object::open_file(&ss_path).expect("rtstruct");
    use dicom_dictionary_std::tags;
    let mut items = obj
        .element(tags::STRUCTURE_SET_ROI_SEQUENCE)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .expect("ROIs");
    for it in &mut items {
        let name = it
            .element(tags::ROI_NAME)
            .ok()
            .and_then(|e| e.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if name.to_lowercase().contains("esoph") {
            it.put(dicom_core::DataElement::new(
                tags::ROI_NAME,
                dicom_core::VR::LO,
                dicom_core::PrimitiveValue::from("Liver"),
            ));
        }
    }
    obj.put(dicom_core::DataElement::new(
        tags::STRUCTURE_SET_ROI_SEQUENCE,
        dicom_core::VR::SQ,
        dicom_core::value::DataSetSequence::from(items),
    ));
    obj.write_to_file(&ss_path).expect("write");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let node = start_node(&node_env(model, rx.port));
    push(&node, &study);
    let db = node.db_path();
    wait_until("the job to fail", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'failed'") == 1
    });
    let err = query(&db, "SELECT error FROM jobs");
    let reason = err[0][0].clone().unwrap_or_default();
    assert!(
        reason.contains("esophagus") && reason.contains("Liver"),
        "{reason}"
    );
    assert!(node.log().contains("not scorable"), "{}", node.log());
    std::thread::sleep(Duration::from_secs(2));
    assert!(rx.files().is_empty());
}

#[test]
fn a_destination_that_never_answers_ends_as_a_dead_delivery() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "13", false);
    let node = start_node(&node_env(model, free_port()));
    push(&node, &study);
    let db = node.db_path();
    wait_until("the deliveries to die", 180, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'dead'") == 2
    });
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        1
    );
    let e = query(&db, "SELECT last_error FROM deliveries");
    assert!(
        e[0][0]
            .clone()
            .unwrap_or_default()
            .contains("gave up after 3 attempts"),
        "{e:?}"
    );
    let jobs = run(
        &["jobs"],
        &[(
            "ESORISK__STORAGE__DATA_DIR",
            node.data_dir.to_str().unwrap_or_default(),
        )],
    );
    assert!(jobs.contains("dead"), "{jobs}");
}

#[test]
fn a_destination_down_then_up_gets_the_results() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "14", false);
    let port = free_port();
    let mut env = node_env(model, port);
    env.push((
        "ESORISK__PIPELINE__DELIVERY_MAX_ATTEMPTS".into(),
        "8".into(),
    ));
    let node = start_node(&env);
    push(&node, &study);
    let db = node.db_path();
    wait_until("a failed delivery attempt", 120, || {
        count(
            &db,
            "SELECT count(*) FROM deliveries WHERE attempts >= 1 AND state = 'pending'",
        ) >= 1
    });
    // The destination comes up on the configured port.
    std::fs::create_dir_all(tmp.path().join("tps")).expect("dir");
    let child = Command::new("storescp")
        .args(["-aet", "TPS", "-od"])
        .arg(tmp.path().join("tps"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("storescp");
    let mut rx = Receiver {
        child,
        port,
        dir: tmp.path().join("tps"),
    };
    wait_until("the results after retries", 120, || rx.files().len() >= 2);
    assert_eq!(
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'"),
        2
    );
    let _ = &mut rx;
}

#[test]
fn a_node_killed_while_scoring_finishes_the_job_once() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "15", false);
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    env.push(("ESORISK__PIPELINE__LEASE_SECONDS".into(), "3".into()));
    let mut node = start_node(&env);
    push(&node, &study);
    let db = node.db_path();
    wait_until("the job to be claimed", 120, || {
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE state IN ('running', 'succeeded')",
        ) == 1
    });
    node.kill();
    let data = node.data_dir.clone();
    let refs: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let node2 = TestNode::start_in(&data, &refs);
    wait_until("the SR and RTSTRUCT after the restart", 180, || {
        rx.files().len() >= 2
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.files().len(), 2, "{:?}", rx.files());
    assert_eq!(
        count(
            &node2.db_path(),
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'"
        ),
        1
    );
    assert_eq!(
        count(
            &node2.db_path(),
            "SELECT count(*) FROM outputs WHERE kind = 'sr'"
        ),
        1
    );
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cohort = tmp.path().join("cohort");
    run(
        &[
            "synth",
            "--out",
            cohort.to_str().unwrap_or_default(),
            "--patients",
            "12",
            "--seed",
            "4",
        ],
        &[],
    );
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).expect("config");
    let mut weights = Vec::new();
    for name in ["a", "b"] {
        let out = tmp.path().join(name);
        run(
            &[
                "--config",
                cfg.to_str().unwrap_or_default(),
                "train",
                "--cohort",
                cohort.to_str().unwrap_or_default(),
                "--out",
                out.to_str().unwrap_or_default(),
                "--device",
                "cpu",
                "--seed",
                "9",
            ],
            &[],
        );
        let t = candle_core::safetensors::load(
            out.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .expect("weights");
        let mut named: Vec<(String, Vec<f32>)> = t
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.flatten_all()
                        .and_then(|x| x.to_vec1::<f32>())
                        .expect("f32"),
                )
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        weights.push(named);
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("card.json")).expect("card"))
                .expect("json");
        assert!(card["intended_use"]
            .as_str()
            .unwrap_or_default()
            .contains("synthetic"));
        assert_eq!(card["train"]["seed"], 9);
    }
    let mut worst = (0f32, String::new());
    for ((n, a), (_, b)) in weights[0].iter().zip(&weights[1]) {
        for (x, y) in a.iter().zip(b) {
            if (x - y).abs() > worst.0 {
                worst = ((x - y).abs(), n.clone());
            }
        }
    }
    assert!(worst.0 == 0.0, "same seed, different weights: {worst:?}");
}

#[test]
fn a_relative_dose_fails_with_its_reason() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "16", false);
    let dose_path = study.join("rtdose.dcm");
    let mut obj = dicom_object::open_file(&dose_path).expect("rtdose");
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::DOSE_UNITS,
        dicom_core::VR::CS,
        dicom_core::PrimitiveValue::from("RELATIVE"),
    ));
    obj.write_to_file(&dose_path).expect("write");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let node = start_node(&node_env(model, rx.port));
    push(&node, &study);
    let db = node.db_path();
    wait_until("the job to fail", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'failed'") == 1
    });
    let reason = query(&db, "SELECT error FROM jobs")[0][0]
        .clone()
        .unwrap_or_default();
    assert!(reason.to_uppercase().contains("RELATIVE"), "{reason}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(rx.files().is_empty());
}
