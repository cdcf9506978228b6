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

use common::{count, dcmtk, execute, query, storescu, text, Pki, TestNode};

/// A tiny model trained for one epoch on a small synthetic cohort (shared
/// by the tests; training it is part of what is tested).
fn tiny_model() -> &'static PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        // Under cargo's scratch directory for tests, replaced on every run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-test-model");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let cohort = dir.join("cohort");
        synth_cohort(&cohort, 14, 3);
        let model = dir.join("model");
        train(TINY, &cohort, &model, &[]);
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
        Receiver::with_options(dir, &[])
    }

    /// storescp with more options (TLS, transfer syntaxes).
    fn with_options(dir: &Path, options: &[&str]) -> Receiver {
        Receiver::on_port(dir, free_port(), options)
    }

    fn on_port(dir: &Path, port: u16, options: &[&str]) -> Receiver {
        std::fs::create_dir_all(dir).expect("dir");
        let child = Command::new("storescp")
            .args(["-aet", "TPS"])
            .args(options)
            .arg("-od")
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
    TestNode::start(&env_refs(env))
}

/// A node on an existing data directory (a restart).
fn restart_node(data_dir: &Path, env: &[(String, String)]) -> TestNode {
    TestNode::start_in(data_dir, &env_refs(env))
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
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

/// `esorisk train` with the settings `config` (TOML) on the CPU; its
/// output (the progress log goes to standard error).
fn train(config: &str, cohort: &Path, out: &Path, extra: &[&str]) -> String {
    let cfg = out.with_extension("toml");
    std::fs::write(&cfg, config).expect("config");
    let o = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("--config")
        .arg(&cfg)
        .arg("train")
        .arg("--cohort")
        .arg(cohort)
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu"])
        .args(extra)
        .output()
        .expect("esorisk runs");
    let log = text(&o);
    assert!(o.status.success(), "esorisk train: {log}");
    log
}

/// dciodvfy reports no errors on `f`.
fn assert_valid(f: &Path) {
    let v = Command::new("dciodvfy").arg(f).output().expect("dciodvfy");
    let t = text(&v);
    assert!(
        !t.lines().any(|l| l.starts_with("Error")),
        "{}: {t}",
        f.display()
    );
}

/// An `esorisk` command on a running node's data directory (its output).
fn on_node(node: &TestNode, args: &[&str]) -> String {
    run(
        args,
        &[(
            "ESORISK__STORAGE__DATA_DIR",
            node.data_dir.to_str().unwrap_or_default(),
        )],
    )
}

/// An `esorisk` command on a running node's data directory that must
/// fail (a monitoring check finding a problem, a refused request): its
/// output, standard error included.
fn on_node_fails(node: &TestNode, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(args)
        .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
        .output()
        .expect("esorisk runs");
    assert!(!out.status.success(), "esorisk {args:?}: {}", text(&out));
    text(&out)
}

/// `esorisk synth` of `patients` hospital-1 patients.
fn synth_cohort(dir: &Path, patients: u32, seed: u32) {
    let dir = dir.to_str().unwrap_or_default();
    run(
        &[
            "synth",
            "--out",
            dir,
            "--patients",
            &patients.to_string(),
            "--seed",
            &seed.to_string(),
        ],
        &[],
    );
}

/// `esorisk predict --json` on a study directory: the risk.
fn predict_risk(model: &Path, study: &Path) -> f64 {
    let v: serde_json::Value = serde_json::from_str(&run(
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
    v["score"]["risk"].as_f64().expect("risk")
}

/// Rewrite one DICOM file in place.
fn edit(path: &Path, f: impl FnOnce(&mut dicom_object::DefaultDicomObject)) {
    let mut obj = dicom_object::open_file(path).expect("open");
    f(&mut obj);
    obj.write_to_file(path).expect("write");
}

fn put_str(
    obj: &mut dicom_object::DefaultDicomObject,
    tag: dicom_core::Tag,
    vr: dicom_core::VR,
    v: &str,
) {
    obj.put(dicom_core::DataElement::new(
        tag,
        vr,
        dicom_core::PrimitiveValue::from(v),
    ));
}

fn get_str(obj: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The SOP Instance UIDs named in an SR's PredecessorDocumentsSequence.
fn predecessors(sr: &Path) -> Vec<String> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(sr).expect("SR");
    let mut out = Vec::new();
    let items = |o: &dicom_object::InMemDicomObject, t| -> Vec<dicom_object::InMemDicomObject> {
        o.element(t)
            .ok()
            .and_then(|e| e.items().map(|i| i.to_vec()))
            .unwrap_or_default()
    };
    for study in items(&obj, tags::PREDECESSOR_DOCUMENTS_SEQUENCE) {
        for series in items(&study, tags::REFERENCED_SERIES_SEQUENCE) {
            for sop in items(&series, tags::REFERENCED_SOP_SEQUENCE) {
                if let Ok(e) = sop.element(tags::REFERENCED_SOP_INSTANCE_UID) {
                    out.push(e.to_str().map(|s| s.trim().to_string()).unwrap_or_default());
                }
            }
        }
    }
    out
}

#[test]
fn a_pushed_study_comes_back_as_sr_and_rtstruct() {
    use dicom_dictionary_std::tags;
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "11", true);
    // A planning system writing Latin-1: the name must come back as the
    // same letters (in the UTF-8 the outputs declare).
    for f in std::fs::read_dir(&study).expect("study").flatten() {
        let path = f.path();
        edit(&path, |o| {
            put_str(
                o,
                tags::SPECIFIC_CHARACTER_SET,
                dicom_core::VR::CS,
                "ISO_IR 100",
            );
            put_str(o, tags::PATIENT_NAME, dicom_core::VR::PN, "Müller^Jörg");
        });
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            bytes.windows(6).any(|w| w == b"M\xfcller"),
            "{}: not Latin-1",
            path.display()
        );
    }
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
        assert_valid(f);
        let obj = dicom_object::open_file(f).expect("open");
        let text_of = |tag| {
            obj.element(tag)
                .ok()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_string())
        };
        assert_eq!(
            text_of(tags::SPECIFIC_CHARACTER_SET).as_deref(),
            Some("ISO_IR 192")
        );
        assert_eq!(text_of(tags::PATIENT_NAME).as_deref(), Some("Müller^Jörg"));
        let bytes = std::fs::read(f).expect("read");
        assert!(
            bytes.windows(7).any(|w| w == "Müller".as_bytes()),
            "{}: the name is not in UTF-8",
            f.display()
        );
    }
    let dump = dcmtk("dsrdump", &["+Pc", "+Pl", sr.to_str().unwrap_or_default()]);
    assert!(dump.status.success(), "{}", text(&dump));
    let dump = text(&dump);
    // The risk in the SR equals `esorisk predict` on the same files.
    let risk = predict_risk(model, &study);
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
    // The SR lists every fused feature, in the model's order.
    let listed: Vec<String> = dump
        .lines()
        .filter(|l| l.contains("ESR0002"))
        .filter_map(|l| l.split("=\"").nth(1))
        .filter_map(|v| v.split(" = ").next())
        .map(str::to_string)
        .collect();
    let fused: Vec<String> = score.dosiomics.iter().map(|(n, _)| n.clone()).collect();
    assert!(!fused.is_empty());
    assert_eq!(listed, fused, "{dump}");
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
    // The job is recorded as succeeded, once, and both deliveries as sent
    // (recorded once the destination's response is in, a moment after the
    // files land there).
    let db = node.db_path();
    wait_until("both deliveries recorded as sent", 30, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'") == 2
    });
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        1
    );
    // Pushing the same files again scores nothing new.
    push(&node, &study);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 1);
    // Nor does the returned RT Structure Set forwarded back by a PACS (it
    // would start a loop of jobs), nor a copy of it under a new SOP
    // Instance UID, which only its Manufacturer tells apart.
    let echoed = tmp.path().join("echoed");
    std::fs::create_dir_all(&echoed).expect("mkdir");
    std::fs::copy(&rs, echoed.join("rs.dcm")).expect("copy");
    let renamed = echoed.join("rs-copy.dcm");
    std::fs::copy(&rs, &renamed).expect("copy");
    edit(&renamed, |o| {
        let u = esorisk::uid::generate();
        put_str(o, tags::SOP_INSTANCE_UID, dicom_core::VR::UI, &u);
        o.meta_mut().media_storage_sop_instance_uid = u;
    });
    push(&node, &echoed);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM instances WHERE modality = 'RTSTRUCT'"
        ),
        3,
        "the echoes are stored"
    );
    let study_uid = common::uids(&study.join("rtdose.dcm")).study;
    wait_until("the echoed study looked at again", 30, || {
        query(
            &db,
            &format!(
                "SELECT c.outcome FROM study_checks c JOIN studies s USING (study_instance_uid) \
                 WHERE s.study_instance_uid = '{study_uid}' AND c.last_received_at = s.last_received_at"
            ),
        )
        .first()
        .and_then(|r| r[0].clone())
        .is_some_and(|o| o.starts_with("unchanged: job 1"))
    });
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 1);
    let jobs = on_node(&node, &["jobs"]);
    assert!(
        jobs.contains("succeeded") && jobs.contains("risk"),
        "{jobs}"
    );
    let of_study = on_node(&node, &["jobs", "--study", &study_uid]);
    assert!(
        of_study.contains("job    1  succeeded") && of_study.contains(": 2 sent"),
        "{of_study}"
    );
    let of_other = on_node(&node, &["jobs", "--study", "1.2.3"]);
    assert_eq!(of_other.trim(), "no job matches", "{of_other}");
    let of_state = on_node(&node, &["jobs", "--state", "dead"]);
    assert!(of_state.starts_with("no job matches\n"), "{of_state}");
    // `esorisk studies` says where the study stands: looked at since its
    // last instance (the echoes above), and its job.
    let listing = on_node(&node, &["studies"]);
    assert!(
        listing.contains("scoring: unchanged: job 1 (succeeded)")
            && listing.contains("; job 1 succeeded (risk "),
        "{listing}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["studies", "--json"])).expect("JSON");
    assert_eq!(v[0]["latest_job"]["state"], "succeeded", "{v}");
    assert!(
        v[0]["checked"]
            .as_str()
            .is_some_and(|c| c.starts_with("unchanged: job 1")),
        "{v}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["jobs", "--json"])).expect("JSON");
    assert_eq!(v["jobs"][0]["state"], "succeeded", "{v}");
    assert!(
        v["jobs"][0]["risk"]
            .as_f64()
            .is_some_and(|r| (0.0..=1.0).contains(&r)),
        "{v}"
    );
    assert_eq!(v["deliveries"][0]["state"], "sent", "{v}");
    assert_eq!(v["deliveries"][0]["count"], 2, "{v}");
    // `esorisk status`: the running node, and the counts by state.
    let said = on_node(&node, &["status"]);
    assert!(
        said.contains(&format!("node: running (process {}, esorisk ", node.pid())),
        "{said}"
    );
    assert!(said.contains("scoring: model "), "{said}");
    assert!(
        said.contains(
            "jobs: 0 queued, 0 running, 1 succeeded, 0 unchanged, 0 failed, 0 dead; the last finished 20"
        ),
        "{said}"
    );
    assert!(
        said.contains("deliveries: 0 pending, 2 sent, 0 dead"),
        "{said}"
    );
    assert!(said.contains("problems: none"), "{said}");
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["status", "--json"])).expect("JSON");
    assert_eq!(v["node_running"], true, "{v}");
    assert_eq!(v["studies"], 1, "{v}");
    assert_eq!(v["jobs"]["succeeded"], 1, "{v}");
    assert!(v["free_mb"].as_u64().is_some_and(|mb| mb > 0), "{v}");
    // The planning system lost the import: `retry` has nothing dead to
    // send and says so; `retry --resend` sends both results again.
    let nothing = on_node_fails(&node, &["retry", "1"]);
    assert!(
        nothing.contains("--resend sends what was sent again"),
        "{nothing}"
    );
    let said = on_node(&node, &["retry", "1", "--resend"]);
    assert!(said.contains("job 1: 2 deliveries queued again"), "{said}");
    wait_until("the results sent again", 60, || {
        count(
            &db,
            "SELECT count(*) FROM job_events WHERE job_id = 1 AND event = 'sent'",
        ) == 4
    });
    assert_eq!(
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'"),
        2
    );
    // A replaced input (the planner re-sends the dose, rescaled) is scored
    // again, and the new SR names the first one as its predecessor.
    let first_sr = common::uids(&sr).sop;
    let dose = study.join("rtdose.dcm");
    edit(&dose, |o| {
        let t = dicom_dictionary_std::tags::DOSE_GRID_SCALING;
        let k: f64 = get_str(o, t).parse().expect("scaling");
        put_str(o, t, dicom_core::VR::DS, &format!("{:.6e}", k * 1.1));
    });
    let out = storescu(&node, &[], &[&dose]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the second SR and RTSTRUCT", 180, || rx.files().len() >= 4);
    std::thread::sleep(Duration::from_secs(2));
    let new_srs: Vec<PathBuf> = rx
        .files()
        .into_iter()
        .filter(|f| !files.contains(f))
        .filter(|f| common::uids(f).sop_class == "1.2.840.10008.5.1.4.1.1.88.33")
        .collect();
    assert_eq!(new_srs.len(), 1, "{:?}", rx.files());
    assert_eq!(predecessors(&new_srs[0]), vec![first_sr.clone()]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        2
    );
    let pred = query(
        &db,
        "SELECT predecessor_sr_uid FROM jobs ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(pred[0][0].as_deref(), Some(first_sr.as_str()));
    assert_valid(&new_srs[0]);
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
    let jobs = on_node(&node, &["jobs"]);
    assert!(jobs.contains("dead"), "{jobs}");
    // A monitoring check sees them.
    let check = on_node_fails(&node, &["status", "--check"]);
    assert!(check.contains("problem: 2 dead deliveries"), "{check}");
}

/// storescp as a TLS destination that requires a client certificate.
fn tls_receiver(dir: &Path, key: &str, cert: &str, trusted_ca: &str) -> Receiver {
    Receiver::with_options(dir, &["+B", "+tls", key, cert, "+cf", trusted_ca, "-rc"])
}

/// The same attributes with the same values, sequences item by item,
/// whatever the transfer syntax each was read from.
fn same_data_set(a: &dicom_object::InMemDicomObject, b: &dicom_object::InMemDicomObject) {
    use dicom_core::header::Header;
    use dicom_core::value::Value;
    let tags = |o: &dicom_object::InMemDicomObject| o.iter().map(|e| e.tag()).collect::<Vec<_>>();
    assert_eq!(tags(a), tags(b));
    for (x, y) in a.iter().zip(b.iter()) {
        assert_eq!(x.vr(), y.vr(), "{}", x.tag());
        match (x.value(), y.value()) {
            (Value::Sequence(p), Value::Sequence(q)) => {
                assert_eq!(p.items().len(), q.items().len(), "{}", x.tag());
                for (i, j) in p.items().iter().zip(q.items()) {
                    same_data_set(i, j);
                }
            }
            (Value::Primitive(p), Value::Primitive(q)) => assert_eq!(p, q, "{}", x.tag()),
            _ => panic!("{}: different kinds of value", x.tag()),
        }
    }
}

/// A DCMTK association profile that accepts RT Structure Set Storage only,
/// as a planning system that cannot import an SR.
const RT_ONLY: &str = "[[TransferSyntaxes]]\n[Uncompressed]\n\
TransferSyntax1 = LocalEndianExplicit\nTransferSyntax2 = LittleEndianImplicit\n\n\
[[PresentationContexts]]\n[RTOnly]\nPresentationContext1 = RTStructureSetStorage\\Uncompressed\n\n\
[[Profiles]]\n[RT]\nPresentationContexts = RTOnly\n";

#[test]
fn each_destination_gets_the_objects_it_wants_and_a_refused_class_ends_at_once() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let profile = tmp.path().join("rt-only.cfg");
    std::fs::write(&profile, RT_ONLY).expect("profile");
    let profile = profile.display().to_string();
    let pacs = Receiver::start(&tmp.path().join("pacs"));
    let tps = Receiver::with_options(&tmp.path().join("tps"), &["-xf", &profile, "RT"]);
    let old = Receiver::with_options(&tmp.path().join("old"), &["-xf", &profile, "RT"]);
    let config = tmp.path().join("site.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ndestinations = [\n\
             {{ ae_title = \"PACS\", host = \"127.0.0.1\", port = {} }},\n\
             {{ ae_title = \"TPS\", host = \"127.0.0.1\", port = {}, objects = [\"rtstruct\"] }},\n\
             {{ ae_title = \"OLDTPS\", host = \"127.0.0.1\", port = {} }},\n]\n",
            pacs.port, tps.port, old.port
        ),
    )
    .expect("config");
    let env: Vec<(String, String)> = node_env(model, 0)
        .into_iter()
        .filter(|(k, _)| k != "ESORISK__PIPELINE__DESTINATIONS")
        .collect();
    let refs = env_refs(&env);
    let node = TestNode::start_with_args(&["--config", config.to_str().expect("utf8")], &refs);
    // The log says where results go, and what each destination gets.
    wait_until("the pipeline started", 30, || {
        node.log().contains("results go to")
    });
    node.assert_logged(&[
        "results go to the destinations",
        &format!("TPS@127.0.0.1:{} (rtstruct)", tps.port),
    ]);
    push(&node, &patient(&tmp.path().join("in"), "33", false));
    let db = node.db_path();
    wait_until("every delivery ended", 120, || {
        count(&db, "SELECT count(*) FROM deliveries") == 5
            && count(
                &db,
                "SELECT count(*) FROM deliveries WHERE state = 'pending'",
            ) == 0
    });
    let names = |r: &Receiver| -> Vec<String> {
        r.files()
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy()[..2].to_string()))
            .collect()
    };
    assert_eq!(names(&pacs), ["RS", "SR"]);
    assert_eq!(
        names(&tps),
        ["RS"],
        "the TPS asked for the RT Structure Set only"
    );
    assert_eq!(names(&old), ["RS"]);
    let dead = query(
        &db,
        "SELECT destination, attempts, last_error FROM deliveries WHERE state = 'dead'",
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (dest, attempts, error) = (
        dead[0][0].clone().unwrap_or_default(),
        dead[0][1].clone().unwrap_or_default(),
        dead[0][2].clone().unwrap_or_default(),
    );
    assert_eq!(dest, format!("OLDTPS@127.0.0.1:{}", old.port));
    assert_eq!(attempts, "1", "refused classes are not tried again");
    assert!(
        error.contains("OLDTPS does not accept Comprehensive SR Storage"),
        "{error}"
    );
    // Once the old planning system accepts SRs, `esorisk retry` sends it.
    let port = old.port;
    drop(old);
    let old = Receiver::on_port(&tmp.path().join("old"), port, &[]);
    let job = query(&db, "SELECT job_id FROM deliveries WHERE state = 'dead'")[0][0]
        .clone()
        .unwrap_or_default();
    let said = on_node(&node, &["retry", &job]);
    assert!(said.contains("1 dead delivery queued again"), "{said}");
    wait_until("the SR at the old planning system", 60, || {
        names(&old) == ["RS", "SR"]
    });
}

#[test]
fn results_reach_a_destination_that_takes_only_implicit_vr_little_endian() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::with_options(&tmp.path().join("tps"), &["+xi", "+B"]);
    let node = start_node(&node_env(model, rx.port));
    push(&node, &patient(&tmp.path().join("in"), "32", false));
    let db = node.db_path();
    // Recorded as sent once storescp answered, after writing the file.
    wait_until("the SR and RT Structure Set", 120, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'") == 2
    });
    for f in rx.files() {
        let got = common::uids(&f);
        assert_eq!(got.ts, "1.2.840.10008.1.2", "{}", f.display());
        let ours = query(
            &db,
            &format!(
                "SELECT file_path FROM outputs WHERE sop_instance_uid = '{}'",
                got.sop
            ),
        );
        let ours = node.data_dir.join(ours[0][0].clone().unwrap_or_default());
        assert_eq!(common::uids(&ours).ts, "1.2.840.10008.1.2.1");
        let (a, b) = (
            dicom_object::open_file(&ours).expect("ours"),
            dicom_object::open_file(&f).expect("received"),
        );
        same_data_set(&a, &b);
    }
}

#[test]
fn results_go_over_tls_to_a_destination_that_requires_it() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&tmp.path().join("pki"), "hospital");
    let (tps_key, tps_cert) = pki.issue("hospital", "tps");
    let (node_key, node_cert) = pki.issue("hospital", "esorisk");
    let rx = tls_receiver(
        &tmp.path().join("tps"),
        &tps_key,
        &tps_cert,
        &pki.ca("hospital"),
    );
    // A second destination whose certificate comes from a CA the node does
    // not trust.
    let other = Pki::new(&tmp.path().join("other"), "other");
    let (bad_key, bad_cert) = other.issue("other", "impostor");
    let bad = tls_receiver(
        &tmp.path().join("bad"),
        &bad_key,
        &bad_cert,
        &pki.ca("hospital"),
    );

    let mut env = node_env(model, rx.port);
    let tls_env = [
        (
            "ESORISK__PIPELINE__DESTINATIONS",
            format!(
                "TPS@127.0.0.1:{}+tls,TPS@localhost:{}+tls",
                rx.port, bad.port
            ),
        ),
        (
            "ESORISK__PIPELINE__TLS__CA_CERTIFICATES",
            pki.ca("hospital"),
        ),
        ("ESORISK__PIPELINE__TLS__CERTIFICATE", node_cert),
        ("ESORISK__PIPELINE__TLS__PRIVATE_KEY", node_key),
        ("ESORISK__PIPELINE__DELIVERY_MAX_ATTEMPTS", "1".into()),
        // And back to the sender (storescu calls as STORESCU), over TLS.
        ("ESORISK__PIPELINE__SEND_BACK_PORT", rx.port.to_string()),
        ("ESORISK__PIPELINE__SEND_BACK_TLS", "true".into()),
    ];
    env.extend(tls_env.into_iter().map(|(k, v)| (k.to_string(), v)));
    let node = start_node(&env);
    let study = patient(&tmp.path().join("in"), "31", false);
    push(&node, &study);
    wait_until("the SR and RT Structure Set over TLS", 120, || {
        rx.files().len() >= 2
    });
    let db = node.db_path();
    wait_until("the deliveries recorded", 60, || {
        count(
            &db,
            "SELECT count(*) FROM deliveries WHERE state <> 'pending'",
        ) == 6
    });
    let good = format!("TPS@127.0.0.1:{}+tls", rx.port);
    let back = format!("STORESCU@127.0.0.1:{}+tls", rx.port);
    let rows = query(
        &db,
        "SELECT destination, state, last_error FROM deliveries ORDER BY destination, id",
    );
    for row in &rows {
        let (dest, state, error) = (
            row[0].clone().unwrap_or_default(),
            row[1].clone().unwrap_or_default(),
            row[2].clone().unwrap_or_default(),
        );
        if dest == good || dest == back {
            assert_eq!(state, "sent", "{row:?}");
        } else {
            assert_eq!(dest, format!("TPS@localhost:{}+tls", bad.port));
            assert_eq!(state, "dead", "{row:?}");
            assert!(error.contains("certificate"), "{error}");
        }
    }
    assert!(bad.files().is_empty());
    // `esorisk echo` checks the configured destinations the same way.
    let echo = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("echo")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("esorisk echo");
    let said = text(&echo);
    assert!(!echo.status.success(), "{said}");
    assert!(
        said.contains(&format!("{good}: C-ECHO answered with success")),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "TPS@localhost:{}+tls: association with localhost:{} failed",
            bad.port, bad.port
        )) && said.contains("UnknownIssuer"),
        "{said}"
    );
    assert!(
        said.contains("1 of 2 destinations did not answer"),
        "{said}"
    );
    // One named on the command line, plain TCP, where nothing listens.
    let nobody = format!("TPS@127.0.0.1:{}", free_port());
    let echo = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["echo", &nobody])
        .output()
        .expect("esorisk echo");
    assert!(!echo.status.success());
    assert!(
        text(&echo).contains(&format!("{nobody}: association with")),
        "{}",
        text(&echo)
    );
    let echo = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["echo", &good])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("esorisk echo");
    assert!(echo.status.success(), "{}", text(&echo));
    // What arrived over TLS is what the node wrote.
    for f in rx.files() {
        let sop = common::uids(&f).sop;
        let ours = query(
            &db,
            &format!("SELECT file_path FROM outputs WHERE sop_instance_uid = '{sop}'"),
        );
        let path = node.data_dir.join(ours[0][0].clone().unwrap_or_default());
        assert_eq!(common::data_set(&f), common::data_set(&path));
    }
}

#[test]
fn a_tls_destination_needs_the_ca_certificates() {
    let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("serve")
        .env("ESORISK__PIPELINE__DESTINATIONS", "TPS@127.0.0.1:104+tls")
        .env("ESORISK__STORAGE__DATA_DIR", "/nonexistent/never-created")
        .output()
        .expect("esorisk");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("pipeline.tls.ca_certificates"),
        "{}",
        text(&out)
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("serve")
        .env("ESORISK__PIPELINE__DESTINATIONS", "TPS@127.0.0.1:104+tls")
        .env(
            "ESORISK__PIPELINE__TLS__CA_CERTIFICATES",
            tmp.path().join("none.pem"),
        )
        .env("ESORISK__STORAGE__DATA_DIR", tmp.path().join("var"))
        .output()
        .expect("esorisk");
    assert!(!out.status.success());
    assert!(text(&out).contains("none.pem"), "{}", text(&out));
    assert!(
        !tmp.path().join("var").exists(),
        "refused before the node starts"
    );
}

/// A peer that accepts associations (any storage class) and then never
/// answers: a planning system hung after the handshake.
/// A destination on a free port whose connections `serve` handles, one
/// after another, on a thread of its own.
fn fake_destination(mut serve: impl FnMut(std::net::TcpStream) + Send + 'static) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            serve(socket);
        }
    });
    port
}

/// Accept an association as a destination taking the SR and RT Structure
/// Set would.
fn take_results(
    socket: std::net::TcpStream,
) -> Option<dicom_ul::ServerAssociation<std::net::TcpStream>> {
    dicom_ul::ServerAssociationOptions::new()
        .accept_any()
        .promiscuous(true)
        .with_abstract_syntax("1.2.840.10008.5.1.4.1.1.88.33")
        .with_abstract_syntax("1.2.840.10008.5.1.4.1.1.481.3")
        .establish(socket)
        .ok()
}

fn hung_peer() -> u16 {
    let mut held = Vec::new();
    fake_destination(move |socket| {
        if let Some(assoc) = take_results(socket) {
            held.push(assoc);
        }
    })
}

/// A destination that answers every C-STORE with `status` (and an Error
/// Comment), and every release.
fn peer_answering(status: u16) -> u16 {
    use dicom_ul::pdu::{PDataValueType, Pdu};
    fake_destination(move |socket| {
        let Some(mut assoc) = take_results(socket) else {
            return;
        };
        let mut command = Vec::new();
        let mut rq: Option<(u8, esorisk::dimse::Command)> = None;
        loop {
            match assoc.receive() {
                Ok(Pdu::PData { data }) => {
                    for pdv in data {
                        if pdv.value_type == PDataValueType::Command {
                            command.extend_from_slice(&pdv.data);
                            if pdv.is_last {
                                let c = esorisk::dimse::Command::decode(&command).expect("command");
                                command.clear();
                                rq = Some((pdv.presentation_context_id, c));
                            }
                        } else if pdv.is_last {
                            if let Some((pc, c)) = rq.take() {
                                let rsp = esorisk::dimse::Command::store_response(
                                    &c,
                                    status,
                                    Some("as configured".into()),
                                );
                                for pdu in rsp.to_pdus(pc, 16384) {
                                    assoc.send(&pdu).expect("send");
                                }
                            }
                        }
                    }
                }
                Ok(Pdu::ReleaseRQ) => {
                    let _ = assoc.send(&Pdu::ReleaseRP);
                    break;
                }
                _ => break,
            }
        }
    })
}

/// A destination whose AE title is not the one esorisk calls: it rejects
/// every association (A-ASSOCIATE-RJ, rejected-permanent).
fn peer_named_otherwise() -> u16 {
    fake_destination(|socket| {
        let _ = dicom_ul::ServerAssociationOptions::new()
            .accept_called_ae_title()
            .ae_title("OTHER")
            .with_abstract_syntax("1.2.840.10008.5.1.4.1.1.88.33")
            .with_abstract_syntax("1.2.840.10008.5.1.4.1.1.481.3")
            .establish(socket);
    })
}

/// A destination that stores the results with a warning status (here
/// 0107, attribute list error; B000 and the like alike) has them: the
/// deliveries are sent, not retried, and the warning is kept. One that
/// refuses them (A700) is retried and its dead deliveries name their job.
#[test]
fn warning_statuses_are_deliveries_and_dead_ones_name_their_job() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let (warns, refuses) = (peer_answering(0x0107), peer_answering(0xA700));
    let (not_understood, renamed) = (peer_answering(0xC000), peer_named_otherwise());
    let env: Vec<(String, String)> = node_env(model, 0)
        .into_iter()
        .filter(|(k, _)| k != "ESORISK__PIPELINE__DESTINATIONS")
        .chain([
            (
                "ESORISK__PIPELINE__DESTINATIONS".to_string(),
                format!(
                    "WARNS@127.0.0.1:{warns},FULL@127.0.0.1:{refuses},\
                     PICKY@127.0.0.1:{not_understood},RENAMED@127.0.0.1:{renamed}"
                ),
            ),
            (
                "ESORISK__PIPELINE__DELIVERY_MAX_ATTEMPTS".into(),
                "2".into(),
            ),
            (
                "ESORISK__PIPELINE__DELIVERY_RETRY_BASE_SECONDS".into(),
                "1".into(),
            ),
        ])
        .collect();
    let node = start_node(&env);
    push(&node, &patient(&tmp.path().join("in"), "35", false));
    let db = node.db_path();
    wait_until("the deliveries ended", 120, || {
        count(
            &db,
            "SELECT count(*) FROM deliveries WHERE state IN ('sent', 'dead')",
        ) == 8
    });
    let rows = query(
        &db,
        "SELECT destination, state, attempts, last_error FROM deliveries ORDER BY destination",
    );
    // Refused for what the object is, or by a permanent rejection: dead
    // after one attempt, saying why.
    let once = |dest: &str, says: &str| {
        count(
            &db,
            &format!(
                "SELECT count(*) FROM deliveries WHERE destination LIKE '{dest}@%' \
                 AND state = 'dead' AND attempts = 1 AND last_error LIKE '%{says}%'"
            ),
        )
    };
    assert_eq!(
        once("PICKY", "status C000%object itself is refused"),
        2,
        "{rows:?}"
    );
    assert_eq!(
        once("RENAMED", "rejected the association permanently"),
        2,
        "{rows:?}"
    );
    for r in &rows {
        let (dest, state, attempts, error) = (
            r[0].clone().unwrap_or_default(),
            r[1].clone().unwrap_or_default(),
            r[2].clone().unwrap_or_default(),
            r[3].clone().unwrap_or_default(),
        );
        if dest.starts_with("WARNS") {
            assert_eq!(
                (state.as_str(), attempts.as_str()),
                ("sent", "1"),
                "{rows:?}"
            );
            assert!(error.contains("warning status 0107"), "{rows:?}");
        } else if dest.starts_with("FULL") {
            assert_eq!(state, "dead", "{rows:?}");
            assert!(error.contains("status A700"), "{rows:?}");
        }
    }
    let jobs = on_node(&node, &["jobs"]);
    assert!(
        jobs.lines()
            .any(|l| l.contains("FULL@") && l.contains("2 dead (job 1; last error")),
        "{jobs}"
    );
    assert!(
        jobs.lines()
            .any(|l| l.contains("WARNS@") && l.contains("last warning")),
        "{jobs}"
    );
    let status = on_node(&node, &["status"]);
    assert!(
        status.contains("6 dead deliveries (esorisk jobs names their jobs"),
        "{status}"
    );
    // PICKY and RENAMED taken out of the destinations: their dead
    // deliveries are dropped by retry, not sent again. FULL's outputs are
    // gone (their study removed): its round ends at once, saying why,
    // without an association.
    std::fs::remove_dir_all(node.data_dir.join("out")).expect("rm out");
    let data_dir = node.data_dir.to_str().unwrap_or_default().to_string();
    let said = run(
        &["retry", "1"],
        &[
            ("ESORISK__STORAGE__DATA_DIR", &data_dir),
            (
                "ESORISK__PIPELINE__DESTINATIONS",
                &format!("WARNS@127.0.0.1:{warns},FULL@127.0.0.1:{refuses}"),
            ),
        ],
    );
    assert!(said.contains("2 dead deliveries queued again"), "{said}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM deliveries WHERE state = 'dropped' \
             AND (destination LIKE 'PICKY@%' OR destination LIKE 'RENAMED@%')"
        ),
        4
    );
    wait_until("the retried deliveries ended", 60, || {
        count(
            &db,
            "SELECT count(*) FROM deliveries WHERE state = 'dead' AND attempts = 1 \
             AND last_error LIKE '%cannot be read%was its study removed%'",
        ) == 2
    });
}

/// A destination that hangs after the handshake holds up only its own
/// deliveries: the results of the next study reach the other destination
/// while the hung one still waits for its first C-STORE response.
#[test]
fn a_hung_destination_does_not_hold_up_the_others() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let hung = hung_peer();
    let mut env = node_env(model, rx.port);
    env.push((
        "ESORISK__PIPELINE__DESTINATIONS".into(),
        format!("TPS@127.0.0.1:{},HUNG@127.0.0.1:{hung}", rx.port),
    ));
    env.push((
        "ESORISK__PIPELINE__DELIVERY_RESPONSE_SECONDS".into(),
        "30".into(),
    ));
    let node = start_node(&env);
    push(&node, &patient(&tmp.path().join("a"), "34", false));
    wait_until("the first study's results", 120, || rx.files().len() >= 2);
    // The hung destination now holds an association waiting 30 s for its
    // first response. A second study is scored and sent meanwhile.
    push(&node, &patient(&tmp.path().join("b"), "35", false));
    wait_until("the second study's results", 120, || rx.files().len() >= 4);
    let db = node.db_path();
    let hung_rows = format!("FROM deliveries WHERE destination = 'HUNG@127.0.0.1:{hung}'");
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) {hung_rows} AND last_error IS NOT NULL")
        ),
        0,
        "the second study's results went out while the hung destination still waited"
    );
    // The attempt in flight was counted when it started, so a result that
    // cannot be recorded is not sent again at every poll.
    assert!(
        count(
            &db,
            &format!("SELECT count(*) {hung_rows} AND attempts = 1")
        ) >= 1
    );
    // Its attempt times out and is aborted, not left waiting for a release
    // that never comes: both deliveries it carried are recorded with the
    // reason and wait for their retry.
    wait_until("the hung destination's first attempt to end", 120, || {
        count(
            &db,
            &format!("SELECT count(*) {hung_rows} AND attempts = 1 AND last_error IS NOT NULL"),
        ) >= 2
    });
    let errors: Vec<String> = query(
        &db,
        &format!("SELECT last_error {hung_rows} AND attempts = 1 ORDER BY id LIMIT 2"),
    )
    .into_iter()
    .filter_map(|r| r[0].clone())
    .collect();
    assert!(
        errors[0].starts_with("no C-STORE response from"),
        "{errors:?}"
    );
    assert!(errors[0].ends_with("within 30 s"), "{errors:?}");
    assert!(
        errors[1].starts_with("not sent: no C-STORE response"),
        "{errors:?}"
    );
    // SIGTERM while the retry hangs: the node stops within its grace, and
    // says that the delivery waits for the next start.
    wait_until("the retry in flight", 60, || {
        node.log().contains("delivery failed, retry in")
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut node = node;
    assert!(node.terminate(), "a clean exit:\n{}", node.log());
    wait_until("the shutdown logged", 10, || {
        node.log().contains("delivery interrupted by shutdown")
    });
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
    // The node records a delivery as sent once the destination's response
    // is in, a moment after the file lands there.
    wait_until("both deliveries recorded as sent", 30, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'") == 2
    });
    assert_eq!(rx.files().len(), 2);
    let _ = &mut rx;
}

/// SIGTERM while a worker holds a job: the node stops the pipeline before
/// it closes the database, so the job the worker finishes on the way out
/// is recorded, with its outputs, and the node exits cleanly.
#[test]
fn a_node_stopped_while_scoring_records_the_job() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut env = node_env(model, free_port());
    env.push((
        "ESORISK__PIPELINE__HOLD_CLAIMED_SECONDS".into(),
        "600".into(),
    ));
    let mut node = start_node(&env);
    push(&node, &patient(&tmp.path().join("in"), "36", false));
    let db = node.db_path();
    wait_until("the job to be claimed", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'running'") == 1
    });
    assert!(node.terminate(), "a clean exit:\n{}", node.log());
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        1,
        "{}",
        node.log()
    );
    assert_eq!(count(&db, "SELECT count(*) FROM outputs"), 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM deliveries WHERE state = 'pending'"
        ),
        2,
        "queued for the next start"
    );
}

/// A node started without its model (a wrong `model.path`) queues
/// studies and scores none: `esorisk status` calls that a problem for as
/// long as it lasts, and after a restart with the model the queued job is
/// scored and names that model. Jobs left due for minutes by a hung node
/// are a problem too.
#[test]
fn a_node_without_a_model_is_a_problem_until_it_has_one() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    let with_model = env.clone();
    for (k, v) in env.iter_mut() {
        if k == "ESORISK__MODEL__PATH" {
            *v = tmp.path().join("no-model").display().to_string();
        }
    }
    let mut node = start_node(&env);
    push(&node, &patient(&tmp.path().join("in"), "37", false));
    let db = node.db_path();
    wait_until("the job to be queued", 60, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'queued'") == 1
    });
    let said = on_node_fails(&node, &["status", "--check"]);
    assert!(
        said.contains("scoring: none, no risk model (")
            && said.contains("problem: the node scores nothing: no risk model (")
            && said.contains("no-model")
            && said.contains("1 job waits queued"),
        "{said}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["status", "--json"])).expect("JSON");
    assert_eq!(v["scoring"], "no model", "{v}");
    assert!(v["model"].is_null(), "{v}");

    // Restarted with the model: the job is scored, and says by which model.
    let data_dir = node.data_dir.clone();
    assert!(node.terminate());
    let mut node = restart_node(&data_dir, &with_model);
    wait_until("the queued job to be scored", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == 1
    });
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["status", "--json"])).expect("JSON");
    assert_eq!(v["scoring"], "on", "{v}");
    let version = v["model"].as_str().unwrap_or_default().to_string();
    assert!(!version.is_empty() && version != "none", "{v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    let scored_by = query(&db, "SELECT model_version FROM jobs")[0][0].clone();
    assert_eq!(scored_by.as_deref(), Some(version.as_str()));

    // A hung node: a job due for 20 minutes that no worker takes.
    let stop = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &node.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    stop("-STOP");
    execute(
        &db,
        "INSERT INTO jobs (study_instance_uid, input_key, input_uids, model_version, state, max_attempts, created_at) \
         VALUES ('1.2.3', 'stuck', '[]', 'x', 'queued', 3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-20 minutes'))",
    );
    let said = on_node_fails(&node, &["status", "--check"]);
    stop("-CONT");
    assert!(
        said.contains("problem: 1 queued job has been due for more than 10 minutes (since "),
        "{said}"
    );
    assert!(node.terminate());
}

/// A new model scores no stored study by itself (no study changed);
/// `esorisk rescore` has the pipeline look at one again: with the same
/// model nothing is scored twice, with a new one the study is scored again
/// and the new SR names the first.
#[test]
fn rescore_scores_a_study_again_with_a_new_model() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    // The same network under another name: another model version.
    let other = tmp.path().join("model-b");
    std::fs::create_dir_all(&other).expect("dir");
    for f in std::fs::read_dir(model).expect("model").flatten() {
        if f.path().is_file() {
            std::fs::copy(f.path(), other.join(f.file_name())).expect("copy");
        }
    }
    let card = other.join("card.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&card).expect("card")).expect("JSON");
    v["name"] = "model-b".into();
    std::fs::write(&card, serde_json::to_vec(&v).expect("JSON")).expect("write");

    let rx = Receiver::start(&tmp.path().join("tps"));
    let env = node_env(model, rx.port);
    let mut node = start_node(&env);
    let study = patient(&tmp.path().join("in"), "38", false);
    push(&node, &study);
    let db = node.db_path();
    let uid = common::uids(&study.join("rtdose.dcm")).study;
    wait_until("job 1", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == 1
    });
    let checked = |db: &Path| {
        query(db, "SELECT outcome FROM study_checks")
            .first()
            .and_then(|r| r[0].clone())
            .unwrap_or_default()
    };
    let said = on_node(&node, &["rescore", &uid]);
    assert!(said.contains("looked at again"), "{said}");
    wait_until("the study looked at again", 30, || {
        checked(&db).starts_with("unchanged: job 1")
    });
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 1);

    let data_dir = node.data_dir.clone();
    assert!(node.terminate());
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "ESORISK__MODEL__PATH" => (k, other.display().to_string()),
            _ => (k, v),
        })
        .collect();
    let mut node = restart_node(&data_dir, &env);
    node.assert_logged(&["the model changed since the last start", "esorisk rescore"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs"),
        1,
        "no study changed"
    );
    // By age instead of UID: every study received in the last day.
    let said = on_node(&node, &["rescore", "--received-within-days", "1"]);
    assert!(
        said.contains(&format!("study {uid}: looked at again")),
        "{said}"
    );
    wait_until("job 2", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == 2
    });
    let rows = query(
        &db,
        "SELECT model_version, predecessor_sr_uid, (SELECT sr_uid FROM jobs WHERE id = 1) FROM jobs WHERE id = 2",
    );
    assert!(
        rows[0][0]
            .as_deref()
            .is_some_and(|m| m.starts_with("model-b ")),
        "{rows:?}"
    );
    assert_eq!(rows[0][1], rows[0][2], "the new SR names the first");
    let unknown = on_node_fails(&node, &["rescore", "1.2.3"]);
    assert!(unknown.contains("no such study: 1.2.3"), "{unknown}");
    assert!(node.terminate());
}

/// A study whose stored file is gone (removed by hand) is recorded as
/// such, once: not queued, not looked at again at every poll.
#[test]
fn a_study_with_a_missing_file_is_recorded_once() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut env = node_env(model, free_port());
    env.push(("ESORISK__PIPELINE__STABLE_SECONDS".into(), "3".into()));
    let node = start_node(&env);
    push(&node, &patient(&tmp.path().join("in"), "37", false));
    let db = node.db_path();
    let plan = query(
        &db,
        "SELECT file_path FROM instances WHERE modality = 'RTPLAN'",
    )[0][0]
        .clone()
        .unwrap_or_default();
    std::fs::remove_file(node.data_dir.join(&plan)).expect("remove the plan");
    wait_until("the study checked", 60, || {
        count(&db, "SELECT count(*) FROM study_checks") == 1
    });
    let outcome = query(&db, "SELECT outcome FROM study_checks")[0][0]
        .clone()
        .unwrap_or_default();
    assert!(outcome.starts_with("cannot read the inputs: "), "{outcome}");
    assert!(outcome.contains(&plan), "{outcome}");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        node.log().matches("cannot read the inputs").count(),
        1,
        "{}",
        node.log()
    );
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 0);
}

#[test]
fn a_node_killed_while_scoring_finishes_the_job_once() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "15", false);
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    env.push(("ESORISK__PIPELINE__LEASE_SECONDS".into(), "3".into()));
    // The first node holds the claimed job (heartbeating) long enough for
    // the kill to land inside it.
    let mut first = env.clone();
    first.push((
        "ESORISK__PIPELINE__HOLD_CLAIMED_SECONDS".into(),
        "600".into(),
    ));
    let mut node = start_node(&first);
    push(&node, &study);
    let db = node.db_path();
    wait_until("the job to be claimed", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'running'") == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'running'"),
        1
    );
    // The receiver answers while a worker holds a job.
    let echo = dcmtk(
        "echoscu",
        &["-aec", common::AE, "127.0.0.1", &node.port.to_string()],
    );
    assert!(echo.status.success(), "{}", text(&echo));
    node.kill();
    assert_eq!(count(&db, "SELECT count(*) FROM outputs"), 0);
    assert!(rx.files().is_empty());
    let data = node.data_dir.clone();
    let node2 = restart_node(&data, &env);
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
    // Two claims of the one job: the killed one and the one that finished.
    assert_eq!(
        count(
            &node2.db_path(),
            "SELECT count(*) FROM job_events WHERE event = 'claimed'"
        ),
        2
    );
}

/// `esorisk device-check`, the command a GPU machine runs
/// (scripts/gpu-check), here comparing the CPU with itself: identical
/// outputs, a timed training step, and a clear refusal of a bad grid.
#[test]
fn the_device_check_compares_outputs_and_times_a_step() {
    let out = run(
        &[
            "device-check",
            "--device",
            "cpu",
            "--width",
            "2",
            "--size",
            "8,16,16",
            "--reps",
            "1",
            "--batch",
            "1",
        ],
        &[],
    );
    assert!(
        out.contains("| segmentation logits | 2048 | 0.00e0 |"),
        "{out}"
    );
    assert!(out.contains("| training step on the device | 1 |"), "{out}");
    let bad = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["device-check", "--device", "cpu", "--size", "8,16"])
        .output()
        .expect("esorisk runs");
    assert!(!bad.status.success());
    assert!(text(&bad).contains("give D,H,W"), "{}", text(&bad));
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cohort = tmp.path().join("cohort");
    synth_cohort(&cohort, 12, 4);
    let mut weights = Vec::new();
    for name in ["a", "b"] {
        let out = tmp.path().join(name);
        train(TINY, &cohort, &out, &["--seed", "9"]);
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

/// Rename the ROIs of a structure set for which `rename` gives a new name.
fn rename_rois(rtstruct: &Path, rename: impl Fn(&str) -> Option<&'static str>) {
    use dicom_dictionary_std::tags;
    edit(rtstruct, |obj| {
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
            if let Some(new) = rename(&name) {
                it.put(dicom_core::DataElement::new(
                    tags::ROI_NAME,
                    dicom_core::VR::LO,
                    dicom_core::PrimitiveValue::from(new),
                ));
            }
        }
        obj.put(dicom_core::DataElement::new(
            tags::STRUCTURE_SET_ROI_SEQUENCE,
            dicom_core::VR::SQ,
            dicom_core::value::DataSetSequence::from(items),
        ));
    });
}

/// Ways a study can be unscorable, each made from a good synthetic study:
/// what the physicist must fix, and its marker in the job's error.
fn broken_studies(root: &Path) -> Vec<(PathBuf, &'static [&'static str])> {
    use dicom_dictionary_std::tags;
    let mut v: Vec<(PathBuf, &'static [&'static str])> = Vec::new();
    // No ROI recognised as the esophagus (it is named "Liver").
    let s = patient(&root.join("no-esophagus"), "12", false);
    rename_rois(&s.join("rtstruct.dcm"), |n| {
        n.to_lowercase().contains("esoph").then_some("Liver")
    });
    v.push((s, &["esophagus", "Liver"]));
    // A relative dose (no absolute Gy).
    let s = patient(&root.join("relative"), "16", false);
    edit(&s.join("rtdose.dcm"), |o| {
        put_str(o, tags::DOSE_UNITS, dicom_core::VR::CS, "RELATIVE")
    });
    v.push((s, &["RELATIVE"]));
    // A dose grid moved 40 cm towards the feet: it misses the esophagus.
    let s = patient(&root.join("off-esophagus"), "17", false);
    edit(&s.join("rtdose.dcm"), |o| {
        let p: Vec<f64> = get_str(o, tags::IMAGE_POSITION_PATIENT)
            .split('\\')
            .map(|x| x.trim().parse().expect("number"))
            .collect();
        let moved = format!("{}\\{}\\{}", p[0], p[1], p[2] - 400.0);
        put_str(o, tags::IMAGE_POSITION_PATIENT, dicom_core::VR::DS, &moved);
    });
    v.push((s, &["dose grid", "esophagus"]));
    // The dose in another frame of reference than plan and structures.
    let s = patient(&root.join("other-frame"), "18", false);
    edit(&s.join("rtdose.dcm"), |o| {
        put_str(
            o,
            tags::FRAME_OF_REFERENCE_UID,
            dicom_core::VR::UI,
            "2.25.123456789012345678901234567890",
        )
    });
    v.push((s, &["frame of reference", "not scored"]));
    // Two ROIs named alike: which one is the esophagus cannot be told.
    let s = patient(&root.join("two-esophagi"), "19", false);
    rename_rois(&s.join("rtstruct.dcm"), |n| {
        (n == "Heart").then_some("Esophagus")
    });
    v.push((s, &["2 ROIs match the esophagus equally well", "rename"]));
    // A structure set of another patient under the same study.
    let s = patient(&root.join("two-patients"), "20", false);
    edit(&s.join("rtstruct.dcm"), |o| {
        put_str(o, tags::PATIENT_ID, dicom_core::VR::LO, "SOMEONE-ELSE")
    });
    v.push((
        s,
        &["different patients", "\"SOMEONE-ELSE\" (RT Structure Set)"],
    ));
    v
}

#[test]
fn bad_studies_fail_with_their_reason_and_send_nothing() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let studies = broken_studies(tmp.path());
    let rx = Receiver::start(&tmp.path().join("tps"));
    let node = start_node(&node_env(model, rx.port));
    for (s, _) in &studies {
        push(&node, s);
    }
    let db = node.db_path();
    wait_until("every study failed", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'failed'") == studies.len() as i64
    });
    for (s, markers) in &studies {
        let study_uid = common::uids(&s.join("rtdose.dcm")).study;
        let row = query(
            &db,
            &format!("SELECT error, attempts FROM jobs WHERE study_instance_uid = '{study_uid}'"),
        );
        assert_eq!(row.len(), 1, "{}", s.display());
        let reason = row[0][0].clone().unwrap_or_default();
        for m in *markers {
            assert!(
                reason.contains(m),
                "{}: {reason:?} lacks {m:?}",
                s.display()
            );
        }
        // Failed, not retried: the inputs will not change by themselves.
        assert_eq!(row[0][1].as_deref(), Some("1"));
        // The log names the study with the reason.
        node.assert_logged(&["not scorable", &study_uid]);
    }
    let jobs = on_node(&node, &["jobs", "--state", "failed"]);
    assert!(
        jobs.contains("frame of reference") && jobs.contains("RELATIVE"),
        "{jobs}"
    );
    // `predict` refuses what the node refuses, with the same reason.
    for (s, markers) in &studies {
        let o = Command::new(env!("CARGO_BIN_EXE_esorisk"))
            .args(["predict", "--device", "cpu", "--model"])
            .arg(model)
            .arg(s)
            .output()
            .expect("esorisk runs");
        let said = text(&o);
        assert!(!o.status.success(), "{}: {said}", s.display());
        for m in *markers {
            assert!(said.contains(m), "{}: {said:?} lacks {m:?}", s.display());
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(rx.files().is_empty(), "{:?}", rx.files());
    assert_eq!(count(&db, "SELECT count(*) FROM outputs"), 0);
}

/// A panic while scoring (injected with `pipeline.fault`) fails
/// its job with the message, is logged with the study, and the one worker
/// goes on to the next job instead of dying with the job's lease held.
#[test]
fn a_panic_while_scoring_fails_the_job_and_the_worker_goes_on() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    env.push(("ESORISK__PIPELINE__WORKERS".into(), "1".into()));
    env.push(("ESORISK__PIPELINE__FAULT".into(), "panic-in-scoring".into()));
    let node = start_node(&env);
    let studies = [
        patient(&tmp.path().join("a"), "31", false),
        patient(&tmp.path().join("b"), "32", false),
    ];
    for s in &studies {
        push(&node, s);
    }
    let db = node.db_path();
    wait_until("both jobs failed", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'failed'") == 2
    });
    for s in &studies {
        let study_uid = common::uids(&s.join("rtdose.dcm")).study;
        let row = query(
            &db,
            &format!("SELECT error, attempts FROM jobs WHERE study_instance_uid = '{study_uid}'"),
        );
        let reason = row[0][0].clone().unwrap_or_default();
        assert!(
            reason.contains("internal error") && reason.contains("fault injected"),
            "{reason}"
        );
        assert_eq!(row[0][1].as_deref(), Some("1"));
        node.assert_logged(&["internal error while scoring", &study_uid]);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(rx.files().is_empty(), "{:?}", rx.files());
}

/// A panic while sending (injected with `pipeline.fault`) fails that attempt
/// of each delivery: they back off and end dead with the message, and the
/// job stays scored.
#[test]
fn a_panic_while_sending_ends_the_deliveries_dead_with_the_reason() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    env.push((
        "ESORISK__PIPELINE__FAULT".into(),
        "panic-in-delivery".into(),
    ));
    let node = start_node(&env);
    push(&node, &patient(&tmp.path().join("a"), "33", false));
    let db = node.db_path();
    wait_until("two dead deliveries", 120, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'dead'") == 2
    });
    for row in query(&db, "SELECT last_error, attempts FROM deliveries") {
        let why = row[0].clone().unwrap_or_default();
        assert!(
            why.contains("gave up after 3 attempts") && why.contains("internal error"),
            "{why}"
        );
        assert_eq!(row[1].as_deref(), Some("3"));
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        1
    );
    node.assert_logged(&["internal error while sending"]);
    assert!(rx.files().is_empty(), "{:?}", rx.files());
}

#[test]
fn a_not_scored_sr_says_why() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let studies = broken_studies(tmp.path());
    let (study, markers) = &studies[2];
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    env.push(("ESORISK__PIPELINE__NOT_SCORED_SR".into(), "true".into()));
    let node = start_node(&env);
    push(&node, study);
    let db = node.db_path();
    wait_until("the not-scored SR at the destination", 120, || {
        !rx.files().is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    let files = rx.files();
    assert_eq!(files.len(), 1, "only an SR, no RTSTRUCT: {files:?}");
    let ids = common::uids(&files[0]);
    assert_eq!(ids.sop_class, "1.2.840.10008.5.1.4.1.1.88.33");
    assert_eq!(ids.study, common::uids(&study.join("rtdose.dcm")).study);
    assert_valid(&files[0]);
    let dump = dcmtk(
        "dsrdump",
        &["+Pc", "+Pl", files[0].to_str().unwrap_or_default()],
    );
    assert!(dump.status.success(), "{}", text(&dump));
    let dump = text(&dump);
    assert!(dump.to_lowercase().contains("not scored"), "{dump}");
    for m in *markers {
        assert!(dump.contains(m), "{dump} lacks {m:?}");
    }
    assert!(
        !dump.contains("ESR0001"),
        "no risk in a not-scored SR: {dump}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'failed'"),
        1
    );
}

/// Background commands of a shell session, each in its own process group,
/// stopped (with their children) when the session ends.
struct Session(Vec<Child>, String);

impl Session {
    fn spawn(&mut self, cwd: &Path, cmd: &str, stdout: Stdio) -> &mut Child {
        use std::os::unix::process::CommandExt;
        let child = Command::new("bash")
            .args(["-c", cmd])
            .current_dir(cwd)
            .stdout(stdout)
            .stderr(Stdio::null())
            .env("ESORISK__DICOM__PORT", &self.1)
            .process_group(0)
            .spawn()
            .expect("bash");
        self.0.push(child);
        self.0.last_mut().expect("child")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let group = format!("-{}", c.id());
            let kill = |sig: &str| {
                let _ = Command::new("kill")
                    .args([sig, "--", &group])
                    .stderr(Stdio::null())
                    .status();
            };
            kill("-TERM");
            let t0 = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            kill("-KILL");
            let _ = c.wait();
        }
    }
}

/// The README's "Try it" block, as written: comments dropped, continuation
/// lines joined.
fn readme_quick_start() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let block = readme
        .split("## Try it")
        .nth(1)
        .and_then(|r| r.split("```sh").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("a sh block under ## Try it");
    let (mut cmds, mut cur) = (Vec::new(), String::new());
    for line in block.lines() {
        let code = line.find("  #").map_or(line, |i| &line[..i]).trim_end();
        if let Some(c) = code.strip_suffix('\\') {
            cur.push_str(c);
            continue;
        }
        cur.push_str(code);
        if !cur.trim().is_empty() {
            cmds.push(cur.trim().to_string());
        }
        cur.clear();
    }
    cmds
}

/// A new user's first ten minutes: every command of the README's quick start
/// runs as written (in a fresh directory, with the shipped model; the only
/// changes are free ports for 11112/11113, given to the node as
/// `ESORISK__DICOM__PORT`, and the built binary for `cargo run --release --`).
#[test]
fn the_readme_quick_start_works_as_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cwd = tmp.path();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/models"),
        cwd.join("models"),
    )
    .expect("models link");
    let (node_port, dest_port) = (free_port(), free_port());
    let exe = env!("CARGO_BIN_EXE_esorisk");
    let cmds = readme_quick_start();
    assert!(cmds.len() >= 8, "{cmds:?}");
    // The node's port: 11112 in the README, a free one here (environment).
    let mut session = Session(Vec::new(), node_port.to_string());
    let mut seen = Vec::new();
    for raw in &cmds {
        let cmd = raw
            .replace("cargo run --release --", exe)
            .replace("11112", &node_port.to_string())
            .replace("11113", &dest_port.to_string());
        if let Some(bg) = cmd.strip_suffix('&') {
            session.spawn(cwd, bg.trim(), Stdio::null());
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        if cmd.contains(" jobs --follow") {
            // Watch the events until both results are sent, then stop it.
            let child = session.spawn(cwd, &cmd, Stdio::piped());
            let out = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let (t0, mut lines) = (Instant::now(), Vec::<String>::new());
            while lines.iter().filter(|l| l.contains(" sent ")).count() < 2 {
                assert!(
                    t0.elapsed() < Duration::from_secs(180),
                    "jobs --follow: {lines:?}"
                );
                if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                    lines.push(l);
                }
            }
            assert!(lines.iter().any(|l| l.contains("succeeded")), "{lines:?}");
            seen.push(lines.join("\n"));
            continue;
        }
        // The node may still be starting when the first command reaches it.
        let t0 = Instant::now();
        let out = loop {
            let out = Command::new("bash")
                .args(["-c", &cmd])
                .current_dir(cwd)
                .env("ESORISK__DICOM__PORT", node_port.to_string())
                .output()
                .expect("bash");
            if out.status.success() || !cmd.starts_with("echoscu") || t0.elapsed().as_secs() > 20 {
                break out;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(out.status.success(), "{raw}: {}", text(&out));
        seen.push(text(&out));
    }
    let all = seen.join("\n");
    // dsrdump shows the risk; the returned RTSTRUCT holds the learned ROI
    // (which inspect reads); predict and features answer.
    assert!(all.contains("ESR0001"), "{all}");
    let rs: Vec<PathBuf> = std::fs::read_dir(cwd.join("results"))
        .expect("results")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("RS"))
        })
        .collect();
    assert_eq!(rs.len(), 1, "{rs:?}");
    let ss = esorisk::rt::structure::read(&rs[0]).expect("RTSTRUCT reads");
    assert!(ss.rois.iter().any(|r| r.info.name == "ESORISK_ROI"));
    assert!(all.contains("learned ROI"), "{all}");
    assert!(
        all.contains("original_firstorder_Mean") || all.contains("firstorder"),
        "{all}"
    );
    assert!(cwd.join("var/out").is_dir());
}

#[test]
fn a_job_that_keeps_failing_backs_off_dies_and_retry_brings_it_back() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "19", false);
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    env.push(("ESORISK__PIPELINE__MAX_ATTEMPTS".into(), "3".into()));
    let mut node = start_node(&env);
    // A file where the output directory belongs: every attempt to store
    // the results fails (a stand-in for a broken disk).
    let out = node.data_dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::write(&out, b"not a directory").expect("blocker");
    push(&node, &study);
    let db = node.db_path();
    wait_until("the job to die", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'dead'") == 1
    });
    let row = query(&db, "SELECT id, attempts, error FROM jobs");
    let (id, attempts, error) = (
        row[0][0].clone().unwrap_or_default(),
        row[0][1].clone().unwrap_or_default(),
        row[0][2].clone().unwrap_or_default(),
    );
    assert_eq!(attempts, "3");
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    // Backed off exponentially: 1 s, then 2 s.
    let retries = query(
        &db,
        "SELECT detail FROM job_events WHERE event = 'retry' ORDER BY id",
    );
    let details: Vec<String> = retries.iter().filter_map(|r| r[0].clone()).collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(
        details[0].starts_with("in 1 s") && details[1].starts_with("in 2 s"),
        "{details:?}"
    );
    assert!(rx.files().is_empty());
    // The admin fixes the disk and requeues the job.
    std::fs::remove_file(&out).expect("unblock");
    let data = (
        "ESORISK__STORAGE__DATA_DIR",
        node.data_dir.to_str().unwrap_or_default(),
    );
    let said = run(&["retry", &id], &[data]);
    assert!(said.contains("queued again"), "{said}");
    wait_until("the results after the retry, recorded", 120, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'") == 2
    });
    assert_eq!(
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"),
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM job_events WHERE event = 'requeued'"
        ),
        1
    );
    // A job that is not dead or failed is not requeued.
    let again = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["retry", &id])
        .env(data.0, data.1)
        .output()
        .expect("esorisk");
    assert!(!text(&again).contains("queued again"), "{}", text(&again));

    // The study removed by hand (node stopped), a job requeued for it fails
    // with a reason, not as "replaced by a newer job".
    let data_dir = node.data_dir.clone();
    assert!(node.terminate());
    let data = (
        "ESORISK__STORAGE__DATA_DIR",
        data_dir.to_str().unwrap_or_default(),
    );
    let said = run(&["status"], &[data]);
    assert!(said.contains("node: not running"), "{said}");
    assert!(said.contains("problem: no node is running"), "{said}");
    let said = run(&["purge", "--older-than", "0"], &[data]);
    assert!(said.contains("removed 1 study,"), "{said}");
    assert!(rx.files().len() >= 2, "what was sent is not touched");
    execute(&db, "UPDATE jobs SET state = 'failed'");
    let said = run(&["retry", &id], &[data]);
    assert!(said.contains("queued again"), "{said}");
    let node = restart_node(&data_dir, &env);
    wait_until("the requeued job to fail", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'failed'") == 1
    });
    let error = query(&db, "SELECT error FROM jobs")[0][0]
        .clone()
        .unwrap_or_default();
    assert!(error.contains("no longer stored"), "{error}");
    // As the reason says, the same files sent again are scored again: the
    // removal released the old job's claim on them.
    let sent_before = rx.files().len();
    push(&node, &study);
    wait_until("a new job for the study sent again", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == 1
    });
    wait_until("its results", 120, || rx.files().len() >= sent_before + 2);
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 2);
    let outcome = query(&db, "SELECT outcome FROM study_checks")[0][0]
        .clone()
        .unwrap_or_default();
    assert!(outcome.starts_with("queued job"), "{outcome}");
    // Sent once more, unchanged, it is not scored a third time, and the
    // check says which job has those inputs.
    push(&node, &study);
    wait_until("the study checked again", 120, || {
        query(&db, "SELECT outcome FROM study_checks")[0][0]
            .clone()
            .unwrap_or_default()
            .starts_with("unchanged")
    });
    let outcome = query(&db, "SELECT outcome FROM study_checks")[0][0]
        .clone()
        .unwrap_or_default();
    let new_job = query(&db, "SELECT max(id) FROM jobs")[0][0]
        .clone()
        .unwrap_or_default();
    assert_eq!(
        outcome,
        format!("unchanged: job {new_job} (succeeded) has these inputs and this model")
    );
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 2);
}

#[test]
fn the_fusion_head_trains_on_predicted_roi_features_and_calibrates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cohort = tmp.path().join("cohort");
    synth_cohort(&cohort, 12, 5);
    let model = tmp.path().join("model");
    let config = TINY
        .replace("[train]\n", "[train]\nfusion_features = \"predicted\"\n")
        .replace("epochs = 1", "epochs = 2");
    let log = train(&config, &cohort, &model, &[]);
    // Re-measured after each of the two epochs, for train + internal.
    let n = log
        .matches("features re-measured in the predicted ROI of")
        .count();
    assert_eq!(n, 2, "{log}");
    // The embedded minimum for the learned ROI holds in training (said
    // with every re-measuring) and goes into the card for inference.
    assert_eq!(
        log.matches("under 3 cc read in the target ROI").count(),
        2,
        "{log}"
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("card.json")).expect("card"))
            .expect("json");
    assert_eq!(card["min_fusion_roi_cc"], 3.0);
    assert_eq!(card["fusion_roi"], "predicted");
    assert_eq!(card["train"]["fusion_features"], "predicted");
    // Training picked the ROI threshold the head's features were measured at.
    let trained = card["roi_threshold"].as_f64().expect("trained threshold");
    // The model scores a study, reading its features in the predicted ROI.
    let risk = predict_risk(&model, &cohort.join("H1-0001"));
    assert!((0.0..=1.0).contains(&risk), "{risk}");
    // Platt recalibration on the internal split: stored in the card, and
    // scoring applies it to the network's log-odds.
    let said = run(
        &[
            "calibrate",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap_or_default(),
            "--cohort",
            cohort.to_str().unwrap_or_default(),
        ],
        &[],
    );
    assert!(said.contains("calibration error"), "{said}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("card.json")).expect("card"))
            .expect("json");
    let c = &card["calibration"];
    assert!(
        c["fitted_on"]
            .as_str()
            .unwrap_or_default()
            .contains("internal"),
        "{card}"
    );
    let (a, b) = (c["a"].as_f64().expect("a"), c["b"].as_f64().expect("b"));
    // The learned ROI's threshold stays the one the head was trained at
    // (its features depend on it); the risk it gives before recalibration
    // comes from a copy of the model whose card keeps the threshold and
    // drops the recalibration.
    let t = card["roi_threshold"].as_f64().expect("roi_threshold");
    assert_eq!(t, trained, "{said}");
    assert!(said.contains("learned-ROI threshold"), "{said}");
    assert!(said.contains("as trained"), "{said}");
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).expect("dir");
    std::fs::copy(
        model.join("model.safetensors"),
        plain.join("model.safetensors"),
    )
    .expect("copy");
    let mut uncal = card.clone();
    uncal.as_object_mut().expect("object").remove("calibration");
    std::fs::write(plain.join("card.json"), uncal.to_string()).expect("card");
    let risk = predict_risk(&plain, &cohort.join("H1-0001"));
    let after = predict_risk(&model, &cohort.join("H1-0001"));
    let z = (risk / (1.0 - risk)).ln();
    let expected = 1.0 / (1.0 + (-(a * z + b)).exp());
    assert!((after - expected).abs() < 1e-6, "{after} vs {expected}");
}

#[test]
fn a_seed_ensemble_scores_the_mean_of_its_members_logits() {
    let tiny = tiny_model();
    let cohort = tiny.parent().expect("dir").join("cohort");
    let tmp = tempfile::tempdir().expect("tmp");
    let other = tmp.path().join("seed7");
    train(TINY, &cohort, &other, &["--seed", "7"]);
    let ens = tmp.path().join("ens");
    let path = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let said = run(
        &["ensemble", "--out", &path(&ens), &path(tiny), &path(&other)],
        &[],
    );
    assert!(said.contains("ensemble written"), "{said}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ens.join("card.json")).expect("card"))
            .expect("json");
    let members: Vec<&str> = card["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    assert_eq!(members, ["members/seed-20261126", "members/seed-7"]);
    for m in &members {
        assert!(ens.join(m).join("model.safetensors").is_file(), "{m}");
    }
    assert!(!ens.join("model.safetensors").exists());
    // Uncalibrated, each member's risk is σ of its prior-corrected logit,
    // and the ensemble's is σ of their mean.
    let study = cohort.join("H1-0002");
    let logit = |r: f64| (r / (1.0 - r)).ln();
    let (a, b) = (predict_risk(tiny, &study), predict_risk(&other, &study));
    let both = predict_risk(&ens, &study);
    let expected = 1.0 / (1.0 + (-(logit(a) + logit(b)) / 2.0).exp());
    assert!(
        (both - expected).abs() < 1e-9,
        "{both} vs {expected} ({a}, {b})"
    );
    assert!(a != b, "two seeds gave the same risk {a}");
    // Calibrating the ensemble writes its own card only; its returned ROI's
    // threshold is fitted (the members keep the ones their heads read).
    let member_card = std::fs::read(ens.join(members[1]).join("card.json")).expect("card");
    let said = run(
        &[
            "calibrate",
            "--device",
            "cpu",
            "--model",
            &path(&ens),
            "--cohort",
            &path(&cohort),
        ],
        &[],
    );
    assert!(said.contains("calibration error"), "{said}");
    assert!(!said.contains("as trained"), "{said}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ens.join("card.json")).expect("card"))
            .expect("json");
    assert!(card["calibration"]["a"].is_f64(), "{card}");
    assert!(card["roi_threshold"].is_f64(), "{card}");
    assert_eq!(
        std::fs::read(ens.join(members[1]).join("card.json")).expect("card"),
        member_card
    );
    // What cannot be joined is refused with the reason.
    let refused = |models: &[&Path], out: &Path| {
        let mut args = vec!["ensemble".to_string(), "--out".into(), path(out)];
        args.extend(models.iter().map(|m| path(m)));
        let o = Command::new(env!("CARGO_BIN_EXE_esorisk"))
            .args(&args)
            .output()
            .expect("esorisk runs");
        assert!(!o.status.success(), "{args:?} was accepted");
        text(&o)
    };
    let t = refused(&[tiny, tiny], &tmp.path().join("twice"));
    assert!(t.contains("already a member"), "{t}");
    let t = refused(&[tiny, &other], tiny);
    assert!(t.contains("holds a single model"), "{t}");
    let coarse = tmp.path().join("coarse");
    std::fs::create_dir_all(&coarse).expect("dir");
    std::fs::copy(
        other.join("model.safetensors"),
        coarse.join("model.safetensors"),
    )
    .expect("copy");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other.join("card.json")).expect("card"))
            .expect("json");
    c["input"]["spacing_mm"] = serde_json::json!([40.0, 12.5, 12.5]);
    std::fs::write(coarse.join("card.json"), c.to_string()).expect("card");
    let t = refused(&[tiny, &coarse], &tmp.path().join("mixed"));
    assert!(t.contains("the input differs"), "{t}");
}

/// A plan on a 4 mm dose grid: the features read it on the model's 2.5 mm
/// voxels, and the learned ROI goes back on the plan's own grid, whose
/// planes the planning system knows.
#[test]
fn the_learned_roi_of_a_coarser_plan_comes_back_on_its_own_grid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cohort = tmp.path().join("h3");
    run(
        &[
            "synth",
            "--out",
            cohort.to_str().unwrap_or_default(),
            "--hospital",
            "hospital3",
            "--patients",
            "2",
            "--seed",
            "11",
        ],
        &[],
    );
    let m = esorisk::model::infer::RiskModel::load(tiny_model(), &candle_core::Device::Cpu)
        .expect("model");
    assert_eq!(m.card.dosiomics.resample_mm, Some(2.5));
    let study =
        esorisk::rt::study::load(&[cohort.join("H3-0001")], &Default::default()).expect("study");
    let s = m.score(&study).expect("scored");
    let g = &s.prepared_grid;
    assert_eq!((g.dx, g.dy), (study.dose.grid.dx, study.dose.grid.dy));
    assert_eq!(g.dx, 4.0);
    assert_eq!(s.roi.len(), g.len());
    // Every plane of the returned ROI is a plane of the dose grid (which
    // the returned grid extends only where the esophagus leaves it).
    let planes = &study.dose.grid.z;
    for z in
        g.z.iter()
            .filter(|z| (planes[0]..=planes[planes.len() - 1]).contains(*z))
    {
        assert!(
            planes.iter().any(|p| (p - z).abs() < 1e-6),
            "plane {z} not on the dose grid"
        );
    }
}

/// Split a study's plan dose into one BEAM dose per treatment beam of its
/// plan (each 1/n of the dose, new SOP Instance UIDs) in `out`, copying the
/// plan and structure set; the first `keep` beam doses are written.
fn beam_doses(study: &Path, out: &Path, keep: Option<usize>) -> usize {
    use dicom_dictionary_std::tags;
    std::fs::create_dir_all(out).expect("dir");
    for f in ["rtplan.dcm", "rtstruct.dcm"] {
        std::fs::copy(study.join(f), out.join(f)).expect("copy");
    }
    let plan = dicom_object::open_file(study.join("rtplan.dcm")).expect("plan");
    let beams: Vec<String> = plan
        .element(tags::BEAM_SEQUENCE)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .unwrap_or_default()
        .iter()
        .filter_map(|b| {
            b.element(tags::BEAM_NUMBER)
                .ok()?
                .to_str()
                .ok()
                .map(|s| s.trim().to_string())
        })
        .collect();
    let n = beams.len();
    assert!(n >= 2, "a plan with {n} beams");
    let dose = dicom_object::open_file(study.join("rtdose.dcm")).expect("dose");
    let base = get_str(&dose, tags::SOP_INSTANCE_UID);
    let scaling: f64 = get_str(&dose, tags::DOSE_GRID_SCALING)
        .parse()
        .expect("scaling");
    for (k, number) in beams.iter().enumerate().take(keep.unwrap_or(n)) {
        let mut d = dose.clone();
        let uid = format!("{base}.{}", k + 1);
        put_str(&mut d, tags::SOP_INSTANCE_UID, dicom_core::VR::UI, &uid);
        d.update_meta(|m| m.media_storage_sop_instance_uid = uid.clone());
        put_str(
            &mut d,
            tags::DOSE_SUMMATION_TYPE,
            dicom_core::VR::CS,
            "BEAM",
        );
        put_str(
            &mut d,
            tags::DOSE_GRID_SCALING,
            dicom_core::VR::DS,
            &format!("{:.8e}", scaling / n as f64),
        );
        // Which beam: Referenced RT Plan > Fraction Group > Beam.
        let mut plan_ref = d
            .element(tags::REFERENCED_RT_PLAN_SEQUENCE)
            .ok()
            .and_then(|e| e.items().map(|i| i.to_vec()))
            .expect("referenced plan");
        let beam =
            dicom_object::InMemDicomObject::from_element_iter([dicom_core::DataElement::new(
                tags::REFERENCED_BEAM_NUMBER,
                dicom_core::VR::IS,
                dicom_core::PrimitiveValue::from(number.as_str()),
            )]);
        let fg = dicom_object::InMemDicomObject::from_element_iter([
            dicom_core::DataElement::new(
                tags::REFERENCED_FRACTION_GROUP_NUMBER,
                dicom_core::VR::IS,
                dicom_core::PrimitiveValue::from("1"),
            ),
            dicom_core::DataElement::new(
                tags::REFERENCED_BEAM_SEQUENCE,
                dicom_core::VR::SQ,
                dicom_core::value::DataSetSequence::from(vec![beam]),
            ),
        ]);
        plan_ref[0].put(dicom_core::DataElement::new(
            tags::REFERENCED_FRACTION_GROUP_SEQUENCE,
            dicom_core::VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![fg]),
        ));
        d.put(dicom_core::DataElement::new(
            tags::REFERENCED_RT_PLAN_SEQUENCE,
            dicom_core::VR::SQ,
            dicom_core::value::DataSetSequence::from(plan_ref),
        ));
        d.write_to_file(out.join(format!("rtdose-beam{}.dcm", k + 1)))
            .expect("write");
    }
    n
}

#[test]
fn beam_doses_are_scored_as_their_sum_and_an_incomplete_set_fails() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "20", false);
    let whole = tmp.path().join("beams");
    let n = beam_doses(&study, &whole, None);
    let rx = Receiver::start(&tmp.path().join("tps"));
    let node = start_node(&node_env(model, rx.port));
    push(&node, &whole);
    let db = node.db_path();
    wait_until("the beam-dose study to be scored", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == 1
    });
    let risk: f64 = query(&db, "SELECT CAST(risk AS TEXT) FROM jobs")[0][0]
        .clone()
        .unwrap_or_default()
        .parse()
        .expect("risk");
    let plan_dose = predict_risk(model, &study);
    assert!(
        (risk - plan_dose).abs() < 1e-3,
        "beams {risk} vs plan dose {plan_dose}"
    );
    let inputs = query(&db, "SELECT input_uids FROM jobs")[0][0]
        .clone()
        .unwrap_or_default();
    assert_eq!(inputs.matches('"').count() / 2, n + 2, "{inputs}");
    // One beam dose short: not scored, with the reason.
    let short = tmp.path().join("short");
    let other = patient(&tmp.path().join("in2"), "21", false);
    let beams = beam_doses(&other, &tmp.path().join("all-beams"), None);
    beam_doses(&other, &short, Some(beams - 1));
    push(&node, &short);
    wait_until("the incomplete study to fail", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'failed'") == 1
    });
    let reason = query(&db, "SELECT error FROM jobs WHERE state = 'failed'")[0][0]
        .clone()
        .unwrap_or_default();
    assert!(
        reason.contains("beam dose") && reason.contains("incomplete"),
        "{reason}"
    );
}

/// An SR and an RT Structure Set of study `study`, written under the data
/// directory's `out/` as the pipeline writes its outputs: (SOP Instance
/// UID, path relative to the data directory) of each.
fn write_outputs(data_dir: &Path, study: &str) -> [(String, String); 2] {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use esorisk::rt::write::{put_str, with_meta};
    let mut o = dicom_object::InMemDicomObject::new_empty();
    put_str(
        &mut o,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.481.2",
    );
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, "2.25.8001");
    put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, study);
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, "2.25.8002");
    put_str(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, "2.25.8003");
    put_str(&mut o, tags::PATIENT_ID, VR::LO, "LOG-1");
    let dose = with_meta(
        o,
        "1.2.840.10008.5.1.4.1.1.481.2",
        "2.25.8001",
        esorisk::store::ts::EXPLICIT_VR_LE,
    );
    let inputs = esorisk::report::ReportInputs::from_objects(&[dose]).expect("inputs");
    let grid = esorisk::rt::grid::Grid::uniform([0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [4, 4, 2]);
    let mut mask = vec![false; grid.len()];
    mask[grid.index(1, 1, 0)] = true;
    let objects = [
        esorisk::report::sr::not_scored_sr(&inputs, "test"),
        esorisk::report::rtstruct::learned_roi_rtstruct(&inputs, &grid, &mask, "ESORISK_ROI")
            .expect("rtstruct"),
    ];
    std::fs::create_dir_all(data_dir.join("out").join(study)).expect("out dir");
    objects.map(|o| {
        let sop = esorisk::rt::attr::string(&o, tags::SOP_INSTANCE_UID).unwrap_or_default();
        let rel = format!("out/{study}/{sop}.dcm");
        o.write_to_file(data_dir.join(&rel)).expect("write output");
        (sop, rel)
    })
}

/// Each delivery's log line names the study and the kind of object beside
/// the job, SOP Instance UID and destination: delivered, failed with a
/// retry, and dead.
#[test]
fn delivery_log_lines_name_the_study_and_the_object() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let down = free_port();
    let destinations = format!("TPS@127.0.0.1:{},DOWN@127.0.0.1:{down}", rx.port);
    let no_model = tmp.path().join("no-model").display().to_string();
    let node = TestNode::start(&[
        ("ESORISK__PIPELINE__ENABLED", "true"),
        ("ESORISK__PIPELINE__POLL_SECONDS", "1"),
        ("ESORISK__PIPELINE__DELIVERY_RETRY_BASE_SECONDS", "1"),
        ("ESORISK__PIPELINE__DELIVERY_MAX_ATTEMPTS", "2"),
        ("ESORISK__PIPELINE__DESTINATIONS", &destinations),
        ("ESORISK__MODEL__PATH", &no_model),
        ("ESORISK__MODEL__DEVICE", "cpu"),
    ]);
    let study = "1.2.826.0.1.7";
    let [(sr, sr_path), (rs, rs_path)] = write_outputs(&node.data_dir, study);
    let now = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";
    let mut sql = format!(
        "INSERT INTO jobs (id, study_instance_uid, input_key, input_uids, model_version, state, \
         attempts, max_attempts, created_at) VALUES (1, '{study}', 'k', '[]', 'm', 'succeeded', 1, 3, {now}); \
         INSERT INTO outputs (sop_instance_uid, job_id, study_instance_uid, series_instance_uid, \
         sop_class_uid, kind, file_path, created_at) VALUES \
         ('{sr}', 1, '{study}', '2.25.1', '1.2.840.10008.5.1.4.1.1.88.33', 'sr', '{sr_path}', {now}), \
         ('{rs}', 1, '{study}', '2.25.2', '1.2.840.10008.5.1.4.1.1.481.3', 'rtstruct', '{rs_path}', {now});"
    );
    for dest in destinations.split(',') {
        for sop in [&sr, &rs] {
            sql.push_str(&format!(
                "INSERT INTO deliveries (job_id, sop_instance_uid, destination, state, attempts, \
                 next_attempt_at) VALUES (1, '{sop}', '{dest}', 'pending', 0, {now});"
            ));
        }
    }
    execute(&node.db_path(), &sql);
    let study_field = format!("study={study}");
    node.assert_logged(&[
        " delivered ",
        &study_field,
        "object=\"RT Structure Set\"",
        &format!("sop={rs}"),
        "destination=\"TPS@",
    ]);
    node.assert_logged(&[
        " delivered ",
        &study_field,
        "object=\"SR\"",
        "destination=\"TPS@",
    ]);
    node.assert_logged(&[
        "delivery failed, retry in 1 s",
        &study_field,
        "object=\"SR\"",
        "destination=\"DOWN@",
    ]);
    wait_until("the deliveries to DOWN dead", 60, || {
        count(
            &node.db_path(),
            "SELECT count(*) FROM deliveries WHERE state = 'dead'",
        ) == 2
    });
    node.assert_logged(&[
        "delivery dead",
        &study_field,
        "object=\"RT Structure Set\"",
        "destination=\"DOWN@",
    ]);
}

/// An admin command's error is printed once, as `esorisk: …` on standard
/// error (not also as a log line), with exit status 1; `serve` says why it
/// stopped once, in its log, where a service's journal keeps it.
#[test]
fn errors_are_printed_once() {
    let node = TestNode::start(&[]);
    for (args, says) in [
        (
            &["jobs", "--state", "bogus"][..],
            "--state \"bogus\": one of queued",
        ),
        (&["retry", "99"], "no job 99 (see esorisk jobs)"),
        (&["echo"], "no destination: name one"),
        (
            &[
                "roi-search",
                "--cohort",
                "nowhere",
                "--stability-scale",
                "0.7",
            ],
            "--stability-scale 0.7: a share of the dose",
        ),
        (
            &["roi-search", "--cohort", "nowhere", "--max-instability=-1"],
            "--max-instability -1: a share of a feature's SD",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_esorisk"))
            .args(args)
            .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
            .output()
            .expect("esorisk runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert_eq!(err.matches(says).count(), 1, "{args:?}: {err}");
        assert!(err.contains(&format!("esorisk: {says}")), "{args:?}: {err}");
        assert!(!err.contains("ERROR"), "{args:?}: {err}");
    }
    let second = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("serve")
        .env("ESORISK__DICOM__PORT", "0")
        .env("ESORISK__DICOM__BIND", "127.0.0.1")
        .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
        .env("ESORISK__PIPELINE__ENABLED", "false")
        .output()
        .expect("esorisk runs");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("another esorisk process"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("ERROR"), "a log line: {err}");
}

/// A data directory's jobs, outputs and deliveries written as the pipeline
/// writes them, for the admin commands to read without scoring anything:
/// job 1 of study 1.2.826.0.1.1 succeeded and sent its SR and RT Structure
/// Set to TPS; job 2 of study 1.2.826.0.1.2 failed, and its not-scored SR
/// is dead at PACS.
fn record_jobs(db: &Path) {
    execute(
        db,
        "INSERT INTO jobs (id, study_instance_uid, input_key, input_uids, model_version, state, \
         attempts, max_attempts, created_at, finished_at, error, risk) VALUES \
         (1, '1.2.826.0.1.1', 'k1', '[\"1.2.826.0.1.1.1\",\"1.2.826.0.1.1.2\"]', 'm', 'succeeded', \
          1, 3, strftime('%Y-%m-%dT%H:%M:%fZ','now'), strftime('%Y-%m-%dT%H:%M:%fZ','now'), NULL, 0.25), \
         (2, '1.2.826.0.1.2', 'k2', '[\"1.2.826.0.1.2.1\"]', 'm', 'failed', \
          1, 3, strftime('%Y-%m-%dT%H:%M:%fZ','now'), strftime('%Y-%m-%dT%H:%M:%fZ','now'), \
          'no ROI recognised as the esophagus', NULL); \
         INSERT INTO outputs (sop_instance_uid, job_id, study_instance_uid, series_instance_uid, \
         sop_class_uid, kind, file_path, created_at) VALUES \
         ('1.2.826.0.1.1.9', 1, '1.2.826.0.1.1', '1.2.826.0.1.1.8', '1.2.840.10008.5.1.4.1.1.88.33', 'sr', \
          'out/1.2.826.0.1.1/1.2.826.0.1.1.9.dcm', strftime('%Y-%m-%dT%H:%M:%fZ','now')), \
         ('1.2.826.0.1.1.10', 1, '1.2.826.0.1.1', '1.2.826.0.1.1.7', '1.2.840.10008.5.1.4.1.1.481.3', 'rtstruct', \
          'out/1.2.826.0.1.1/1.2.826.0.1.1.10.dcm', strftime('%Y-%m-%dT%H:%M:%fZ','now')), \
         ('1.2.826.0.1.2.9', 2, '1.2.826.0.1.2', '1.2.826.0.1.2.8', '1.2.840.10008.5.1.4.1.1.88.33', 'sr-not-scored', \
          'out/1.2.826.0.1.2/1.2.826.0.1.2.9.dcm', strftime('%Y-%m-%dT%H:%M:%fZ','now')); \
         INSERT INTO deliveries (job_id, sop_instance_uid, destination, state, attempts, \
         next_attempt_at, last_error, sent_at) VALUES \
         (1, '1.2.826.0.1.1.9', 'TPS@tps:104', 'sent', 1, strftime('%Y-%m-%dT%H:%M:%fZ','now'), NULL, \
          strftime('%Y-%m-%dT%H:%M:%fZ','now')), \
         (1, '1.2.826.0.1.1.10', 'TPS@tps:104', 'sent', 1, strftime('%Y-%m-%dT%H:%M:%fZ','now'), NULL, \
          strftime('%Y-%m-%dT%H:%M:%fZ','now')), \
         (2, '1.2.826.0.1.2.9', 'PACS@pacs:104', 'dead', 5, strftime('%Y-%m-%dT%H:%M:%fZ','now'), \
          'connection refused', NULL);",
    );
}

/// `esorisk jobs` lists the deliveries of the jobs its filters select
/// (`--state` as `--study`), and its JSON gives the input UIDs as an array.
#[test]
fn job_filters_apply_to_the_deliveries_listed() {
    let node = TestNode::start(&[]);
    record_jobs(&node.db_path());
    let failed = on_node(&node, &["jobs", "--state", "failed"]);
    assert!(
        failed.contains("job    2  failed")
            && failed.contains(
                "deliveries to PACS@pacs:104: 1 dead (job 2; last error: connection refused)"
            ),
        "{failed}"
    );
    assert!(
        !failed.contains("TPS@") && !failed.contains("job    1"),
        "the succeeded job's deliveries are not the failed jobs': {failed}"
    );
    let succeeded = on_node(&node, &["jobs", "--state", "succeeded"]);
    assert!(
        succeeded.contains("deliveries to TPS@tps:104: 2 sent") && !succeeded.contains("PACS@"),
        "{succeeded}"
    );
    let of_study = on_node(&node, &["jobs", "--study", "1.2.826.0.1.2"]);
    assert!(
        of_study.contains("PACS@") && !of_study.contains("TPS@"),
        "{of_study}"
    );
    let both = on_node(
        &node,
        &["jobs", "--state", "succeeded", "--study", "1.2.826.0.1.2"],
    );
    assert!(!both.contains("deliveries to"), "{both}");
    let all = on_node(&node, &["jobs"]);
    assert!(all.contains("TPS@") && all.contains("PACS@"), "{all}");

    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["jobs", "--state", "failed", "--json"]))
            .expect("JSON");
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        v["jobs"][0]["input_uids"],
        serde_json::json!(["1.2.826.0.1.2.1"]),
        "{v}"
    );
    assert_eq!(v["deliveries"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["deliveries"][0]["destination"], "PACS@pacs:104", "{v}");
    assert_eq!(v["deliveries"][0]["jobs"], serde_json::json!([2]), "{v}");
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["jobs", "--json"])).expect("JSON");
    assert_eq!(
        v["jobs"][1]["input_uids"],
        serde_json::json!(["1.2.826.0.1.1.1", "1.2.826.0.1.1.2"]),
        "{v}"
    );
}

/// `status --json` for a monitoring system: every job and delivery state
/// with its count, 0 included, and the node's process id as a number; the
/// text says "1 dead delivery", and `--check` names its 1 problem once.
#[test]
fn status_json_lists_every_state_and_the_pid_as_a_number() {
    let node = TestNode::start(&[]);
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["status", "--json"])).expect("JSON");
    assert_eq!(v["node_running"], true, "{v}");
    assert_eq!(v["node_pid"], serde_json::json!(node.pid()), "{v}");
    // Each state a job can be in, as a number.
    let job_counts = |v: &serde_json::Value, succeeded: i64, failed: i64| {
        let states = esorisk::pipeline::jobs::STATES;
        assert_eq!(
            v["jobs"].as_object().map(|o| o.len()),
            Some(states.len()),
            "{v}"
        );
        for s in states {
            let want = match s {
                "succeeded" => succeeded,
                "failed" => failed,
                _ => 0,
            };
            assert_eq!(v["jobs"][s].as_i64(), Some(want), "{s}: {v}");
        }
    };
    job_counts(&v, 0, 0);
    assert_eq!(
        v["deliveries"],
        serde_json::json!({"pending": 0, "sent": 0, "dead": 0, "dropped": 0}),
        "{v}"
    );
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    record_jobs(&node.db_path());
    let v: serde_json::Value =
        serde_json::from_str(&on_node(&node, &["status", "--json"])).expect("JSON");
    job_counts(&v, 1, 1);
    assert_eq!(
        v["deliveries"],
        serde_json::json!({"pending": 0, "sent": 2, "dead": 1, "dropped": 0}),
        "{v}"
    );
    let said = on_node(&node, &["status"]);
    assert!(
        said.contains(&format!("node: running (process {}, esorisk ", node.pid()))
            && said.contains("problem: 1 dead delivery (esorisk jobs names its job;"),
        "{said}"
    );
    let check = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["status", "--check"])
        .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
        .output()
        .expect("esorisk runs");
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert_eq!(
        err.matches("esorisk: 1 problem (see esorisk status)")
            .count(),
        1,
        "{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
}

/// Counts agree with their nouns ("1 study would be removed"), and
/// `rescore` without arguments names both ways of choosing studies.
#[test]
fn counts_agree_and_rescore_names_its_option() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ct = tmp.path().join("ct");
    let ct_dir = ct.to_str().unwrap_or_default();
    let said = run(
        &[
            "gen-test-data",
            "--kind",
            "ct",
            "--size",
            "64",
            "--out",
            ct_dir,
        ],
        &[],
    );
    assert!(said.contains("wrote 1 file to"), "{said}");
    let file = std::fs::read_dir(&ct)
        .expect("ct dir")
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a CT file");
    let node = TestNode::start(&[]);
    let out = storescu(&node, &[], &[&file]);
    assert!(out.status.success(), "{}", text(&out));
    let data_dir = node.data_dir.to_str().unwrap_or_default();
    let said = run(
        &["purge", "--older-than", "0", "--dry-run"],
        &[
            ("ESORISK__STORAGE__DATA_DIR", data_dir),
            ("ESORISK__PIPELINE__ENABLED", "false"),
        ],
    );
    assert!(said.contains("1 study would be removed"), "{said}");
    let said = on_node(&node, &["status"]);
    assert!(said.contains("studies: 1 (1 instance, "), "{said}");
    let usage = Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("rescore")
        .output()
        .expect("esorisk runs");
    let err = String::from_utf8_lossy(&usage.stderr);
    assert_eq!(usage.status.code(), Some(2), "{err}");
    assert!(
        err.contains("<STUDY_UID|--received-within-days <DAYS>>"),
        "{err}"
    );
}

/// Store `files` over one association that offers each SOP class in
/// transfer syntax `ts` only (the files must be in it).
fn send_only_in(node: &TestNode, files: &[PathBuf], ts: &str) {
    use esorisk::send::{self, DicomFile};
    let files: Vec<DicomFile> = files
        .iter()
        .map(|f| DicomFile::read(f).expect("read"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let contexts: Vec<(&str, Vec<&str>)> = files
            .iter()
            .map(|f| (f.sop_class_uid.as_str(), vec![ts]))
            .collect();
        let mut assoc = send::associate(&node.addr(), "BIGPACS", common::AE, &contexts)
            .await
            .expect("associate");
        for (id, f) in files.iter().enumerate() {
            assert_eq!(f.transfer_syntax_uid, ts);
            let rsp = send::store(&mut assoc, id as u16 + 1, f)
                .await
                .expect("store");
            assert_eq!(rsp.status, Some(0), "{rsp:?}");
        }
        assoc.release().await.expect("release");
    });
}

/// The state and error of job `id`, once it has ended.
fn job_end(db: &Path, id: i64) -> (String, String) {
    wait_until(&format!("job {id} ended"), 180, || {
        count(
            db,
            &format!(
                "SELECT count(*) FROM jobs WHERE id = {id} AND state NOT IN ('queued', 'running')"
            ),
        ) == 1
    });
    let row = query(
        db,
        &format!("SELECT state, error FROM jobs WHERE id = {id}"),
    );
    (
        row[0][0].clone().unwrap_or_default(),
        row[0][1].clone().unwrap_or_default(),
    )
}

/// A result already sent is not sent again: the same instances re-sent by
/// a PACS in another transfer syntax (other file bytes, so a new job), or a
/// revised RT Plan arriving without its dose (the old plan and dose are
/// still what is scored), give a job that scores the same inputs to the
/// same result and ends `unchanged`, saying so, with nothing written or
/// sent.
#[test]
fn the_same_inputs_and_result_are_not_sent_twice() {
    use dicom_dictionary_std::tags;
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "41", false);
    let rx = Receiver::start(&tmp.path().join("tps"));
    let node = start_node(&node_env(model, rx.port));
    let db = node.db_path();
    push(&node, &study);
    wait_until("the SR and RT Structure Set", 180, || rx.files().len() >= 2);
    wait_until("both deliveries sent", 60, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'") == 2
    });
    assert_eq!(job_end(&db, 1).0, "succeeded");
    let study_uid = common::uids(&study.join("rtdose.dcm")).study;
    let why = "same inputs and result as job 1: nothing sent";

    // The same instances from a PACS that sends Implicit VR Little Endian,
    // then from one that sends Explicit VR Big Endian: every file is
    // replaced by other bytes, and each time a new job scores them.
    let out = storescu(&node, &["+sd", "+r", "-xi"], &[&study]);
    assert!(out.status.success(), "{}", text(&out));
    let big = tmp.path().join("big-endian");
    std::fs::create_dir_all(&big).expect("dir");
    let converted: Vec<PathBuf> = ["rtplan.dcm", "rtstruct.dcm", "rtdose.dcm"]
        .iter()
        .map(|f| {
            let to = big.join(f);
            let from = study.join(f);
            let out = dcmtk(
                "dcmconv",
                &[
                    "+tb",
                    from.to_str().unwrap_or_default(),
                    to.to_str().unwrap_or_default(),
                ],
            );
            assert!(out.status.success(), "{}", text(&out));
            to
        })
        .collect();
    let mut jobs_ended = 1;
    for ts in ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2"] {
        if ts == "1.2.840.10008.1.2.2" {
            send_only_in(&node, &converted, ts);
        }
        let stored = query(&db, "SELECT modality, transfer_syntax_uid FROM instances");
        assert!(
            stored.iter().all(|r| r[1].as_deref() == Some(ts)),
            "{stored:?}"
        );
        jobs_ended += 1;
        let (state, error) = job_end(&db, jobs_ended);
        assert_eq!(state, "unchanged", "job {jobs_ended} ({ts}): {error}");
        assert!(error.starts_with(why), "{error}");
    }

    // A revised plan without its dose: the dose still names the first plan,
    // which is what is scored.
    let revised = tmp.path().join("revised");
    std::fs::create_dir_all(&revised).expect("dir");
    let plan = revised.join("rtplan.dcm");
    std::fs::copy(study.join("rtplan.dcm"), &plan).expect("copy");
    edit(&plan, |o| {
        let u = esorisk::uid::generate();
        put_str(o, tags::SOP_INSTANCE_UID, dicom_core::VR::UI, &u);
        o.meta_mut().media_storage_sop_instance_uid = u;
        put_str(o, tags::RT_PLAN_LABEL, dicom_core::VR::SH, "revised");
    });
    push(&node, &revised);
    let (state, error) = job_end(&db, 4);
    assert_eq!(state, "unchanged", "{error}");
    assert!(error.starts_with(why), "{error}");

    // Nothing more was written or sent, and every record says why.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.files().len(), 2, "{:?}", rx.files());
    assert_eq!(count(&db, "SELECT count(*) FROM outputs"), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM deliveries"), 2);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM job_events WHERE event = 'unchanged' AND detail LIKE '%{why}%'"
            )
        ),
        3
    );
    let listed = on_node(&node, &["jobs"]);
    assert!(
        listed.contains("job    2  unchanged") && listed.contains(&format!("reason: {why}")),
        "{listed}"
    );
    let unchanged = on_node(&node, &["jobs", "--state", "unchanged"]);
    assert_eq!(unchanged.matches("  unchanged  ").count(), 3, "{unchanged}");
    let studies = on_node(&node, &["studies", "--study", &study_uid]);
    assert!(
        studies.contains(&format!("; job 4 unchanged: {why}")),
        "{studies}"
    );
    node.assert_logged(&["nothing sent", "same_as=1", &study_uid]);

    // The revised plan's dose comes after all (with the plan, dated): the
    // revised plan is scored,
    // and the SR's evidence lists the objects the score used, not the first
    // plan and dose, which the study still holds.
    let revised_plan = common::uids(&plan).sop;
    let first_plan = common::uids(&study.join("rtplan.dcm")).sop;
    let first_dose = common::uids(&study.join("rtdose.dcm")).sop;
    let later = tmp.path().join("revised-dose");
    std::fs::create_dir_all(&later).expect("dir");
    let dose = later.join("rtdose.dcm");
    std::fs::copy(study.join("rtdose.dcm"), &dose).expect("copy");
    let new_dose = esorisk::uid::generate();
    edit(&dose, |o| {
        put_str(o, tags::SOP_INSTANCE_UID, dicom_core::VR::UI, &new_dose);
        o.meta_mut().media_storage_sop_instance_uid = new_dose.clone();
        let item = dicom_object::InMemDicomObject::from_element_iter([
            dicom_core::DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                dicom_core::VR::UI,
                dicom_core::PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.481.5"),
            ),
            dicom_core::DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                dicom_core::VR::UI,
                dicom_core::PrimitiveValue::from(revised_plan.as_str()),
            ),
        ]);
        o.put(dicom_core::DataElement::new(
            tags::REFERENCED_RT_PLAN_SEQUENCE,
            dicom_core::VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
    });
    // Dated after the first, as a revision is.
    let dated = later.join("rtplan.dcm");
    std::fs::copy(&plan, &dated).expect("copy");
    edit(&dated, |o| {
        put_str(o, tags::RT_PLAN_DATE, dicom_core::VR::DA, "20260102");
    });
    push(&node, &later);
    let (state, error) = job_end(&db, 5);
    assert_eq!(state, "succeeded", "{error}");
    wait_until("the revised plan's results", 120, || rx.files().len() >= 4);
    let sr = rx
        .files()
        .into_iter()
        .map(|f| dicom_object::open_file(&f).expect("output"))
        .find(|o| {
            get_str(o, tags::MODALITY) == "SR"
                && get_str(o, tags::SOP_INSTANCE_UID)
                    != query(&db, "SELECT sr_uid FROM jobs WHERE id = 1")[0][0]
                        .clone()
                        .unwrap_or_default()
        })
        .expect("the second SR");
    let listed: Vec<String> =
        esorisk::rt::attr::items(&sr, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
            .iter()
            .flat_map(|st| esorisk::rt::attr::items(st, tags::REFERENCED_SERIES_SEQUENCE))
            .flat_map(|se| esorisk::rt::attr::items(se, tags::REFERENCED_SOP_SEQUENCE))
            .filter_map(|r| esorisk::rt::attr::string(r, tags::REFERENCED_SOP_INSTANCE_UID))
            .collect();
    assert!(
        listed.contains(&revised_plan) && listed.contains(&new_dose),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&first_plan) && !listed.contains(&first_dose),
        "{listed:?}"
    );
}

/// A study is not stable while an association that stored an instance of
/// it is open: a planning system that sends the plan, then takes its time
/// over the dose on the same association, does not get its study scored
/// (nor queued) without the dose, and the stable time counts from the end
/// of the association. `esorisk studies` and the log (once per change) say
/// that it is still being received.
#[test]
fn a_study_is_not_queued_while_an_association_storing_it_is_open() {
    use esorisk::send::{self, DicomFile};
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "43", false);
    // No model: the job, once queued, waits.
    let mut env = node_env(&tmp.path().join("no-model"), free_port());
    env.push(("ESORISK__PIPELINE__STABLE_SECONDS".into(), "2".into()));
    let node = start_node(&env);
    let db = node.db_path();
    assert_eq!(on_node(&node, &["jobs"]).trim(), "no jobs");
    let study_uid = common::uids(&study.join("rtdose.dcm")).study;
    let read = |name: &str| DicomFile::read(&study.join(name)).expect("read");
    let (plan, rs, dose) = (read("rtplan.dcm"), read("rtstruct.dcm"), read("rtdose.dcm"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let quiet = Duration::from_secs(5);
    // First the structure set alone: incomplete, said once.
    let out = storescu(&node, &[], &[&study.join("rtstruct.dcm")]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the study found incomplete", 30, || {
        query(&db, "SELECT outcome FROM study_checks")
            .first()
            .is_some_and(|r| r[0].as_deref() == Some("incomplete: no RTDOSE, RTPLAN"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let incomplete = |log: &str| {
        log.lines()
            .filter(|l| l.contains("study stable but incomplete") && l.contains(&study_uid))
            .filter(|l| l.contains("missing=RTDOSE, RTPLAN"))
            .count()
    };
    assert_eq!(incomplete(&node.log()), 1, "{}", node.log());
    let released = rt.block_on(async {
        let contexts: Vec<(&str, Vec<&str>)> = [&plan, &rs, &dose]
            .iter()
            .map(|f| {
                (
                    f.sop_class_uid.as_str(),
                    vec![f.transfer_syntax_uid.as_str()],
                )
            })
            .collect();
        let mut assoc = send::associate(&node.addr(), "SLOWTPS", common::AE, &contexts)
            .await
            .expect("associate");
        for (id, f) in [(1, &plan), (2, &rs)] {
            let rsp = send::store(&mut assoc, id, f).await.expect("store");
            assert_eq!(rsp.status, Some(0), "{rsp:?}");
        }
        tokio::time::sleep(quiet).await;
        let checked = query(&db, "SELECT outcome, waiting FROM study_checks");
        assert_eq!(
            checked[0][0].as_deref(),
            Some("still being received: an association that stored instances of it is open"),
            "{checked:?}"
        );
        assert_eq!(checked[0][1].as_deref(), Some("1"));
        let listed = on_node(&node, &["studies"]);
        assert!(
            listed.contains("scoring: still being received: an association"),
            "{listed}"
        );
        // The dose completes the study; the association stays open.
        let rsp = send::store(&mut assoc, 3, &dose).await.expect("store");
        assert_eq!(rsp.status, Some(0), "{rsp:?}");
        tokio::time::sleep(quiet).await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM jobs"),
            0,
            "queued while open"
        );
        assoc.release().await.expect("release");
        std::time::Instant::now()
    });
    wait_until("the job queued", 30, || {
        count(&db, "SELECT count(*) FROM jobs") == 1
    });
    let after = released.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "queued {after:?} after the association ended, within the stable time"
    );
    let checked = query(&db, "SELECT outcome, waiting FROM study_checks");
    assert_eq!(
        checked[0][0].as_deref(),
        Some("queued job 1"),
        "{checked:?}"
    );
    assert_eq!(checked[0][1].as_deref(), Some("0"));
    // One line per change, not one per poll: the plan and structure set,
    // then the dose.
    node.assert_logged(&["study complete and stable: job queued", &study_uid]);
    let open = node
        .log()
        .lines()
        .filter(|l| {
            l.contains("study still being received: an association") && l.contains(&study_uid)
        })
        .count();
    assert_eq!(open, 2, "{}", node.log());
}

/// Results go back to the sender of the RT Dose scored, not to whoever
/// sent the study's latest instance (here a CT simulator sending the CT
/// slices after the planning system sent the plan).
#[test]
fn results_go_back_to_the_sender_of_the_rt_dose() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let study = patient(&tmp.path().join("in"), "45", true);
    let rx = Receiver::start(&tmp.path().join("back"));
    let mut env = node_env(model, rx.port);
    env.push(("ESORISK__PIPELINE__DESTINATIONS".into(), String::new()));
    env.push((
        "ESORISK__PIPELINE__SEND_BACK_PORT".into(),
        rx.port.to_string(),
    ));
    env.push(("ESORISK__PIPELINE__STABLE_SECONDS".into(), "4".into()));
    let node = start_node(&env);
    let rt_files: Vec<PathBuf> = ["rtplan.dcm", "rtstruct.dcm", "rtdose.dcm"]
        .iter()
        .map(|f| study.join(f))
        .collect();
    let refs: Vec<&Path> = rt_files.iter().map(PathBuf::as_path).collect();
    let out = storescu(&node, &["-aet", "PLANNER"], &refs);
    assert!(out.status.success(), "{}", text(&out));
    let cts: Vec<PathBuf> = std::fs::read_dir(&study)
        .expect("study")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ct_"))
        })
        .collect();
    let refs: Vec<&Path> = cts.iter().map(PathBuf::as_path).collect();
    let out = storescu(&node, &["-aet", "CTSIM"], &refs);
    assert!(out.status.success(), "{}", text(&out));
    let db = node.db_path();
    let latest = query(
        &db,
        "SELECT calling_ae FROM instances ORDER BY received_at DESC LIMIT 1",
    );
    assert_eq!(latest[0][0].as_deref(), Some("CTSIM"));
    wait_until("the results sent back", 180, || rx.files().len() >= 2);
    wait_until("the deliveries recorded", 60, || {
        count(&db, "SELECT count(*) FROM deliveries WHERE state = 'sent'") == 2
    });
    let to = query(&db, "SELECT DISTINCT destination FROM deliveries");
    assert_eq!(
        to,
        vec![vec![Some(format!("PLANNER@127.0.0.1:{}", rx.port))]]
    );
}

/// A job whose study's files change after it was queued (the same RT Dose
/// sent again with other values) scores nothing for the files it was queued
/// for and gives up their key: the new files are scored by a job of their
/// own, and when the first files come back they are scored again, so the
/// newest SR always describes the files the study holds.
#[test]
fn a_job_whose_files_changed_after_it_was_queued_scores_nothing_and_releases_them() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let mut env = node_env(model, rx.port);
    env.push(("ESORISK__PIPELINE__HOLD_CLAIMED_SECONDS".into(), "6".into()));
    let node = start_node(&env);
    let first = patient(&tmp.path().join("a"), "41", false);
    // The same dose instance with 10 % more dose everywhere.
    let second = scaled_dose(&first, &tmp.path().join("b"), 1.1);
    let db = node.db_path();

    push(&node, &first);
    wait_until("the first job to be claimed", 120, || {
        count(&db, "SELECT count(*) FROM jobs WHERE state = 'running'") == 1
    });
    push(&node, &second);
    wait_until("the first job to end", 120, || {
        count(
            &db,
            "SELECT count(*) FROM jobs WHERE id = 1 AND state = 'failed'",
        ) == 1
    });
    let why = query(&db, "SELECT error, input_key FROM jobs WHERE id = 1");
    let error = why[0][0].clone().unwrap_or_default();
    assert!(
        error.contains("changed after this job was queued"),
        "{error}"
    );
    assert!(
        why[0][1]
            .as_deref()
            .unwrap_or_default()
            .ends_with(":superseded:1"),
        "{why:?}"
    );
    wait_until("the changed files scored", 120, || rx.files().len() >= 2);
    // The first files again: scored again, not "unchanged".
    push(&node, &first);
    wait_until("the first files scored again", 120, || {
        rx.files().len() >= 4
    });
    let jobs = query(
        &db,
        "SELECT id, state, CAST(risk AS TEXT) FROM jobs ORDER BY id",
    );
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert_eq!(jobs[1][1].as_deref(), Some("succeeded"), "{jobs:?}");
    assert_eq!(jobs[2][1].as_deref(), Some("succeeded"), "{jobs:?}");
    assert!(jobs[1][2].is_some(), "{jobs:?}");
    assert_ne!(jobs[1][2], jobs[2][2], "two doses, two risks: {jobs:?}");
}

/// Files scored, replaced by others that are scored, and then sent back
/// (A, B, A): the results the destination holds are B's, so A is scored
/// and sent again, not taken for unchanged.
#[test]
fn files_that_come_back_after_others_were_scored_are_scored_again() {
    let model = tiny_model();
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start(&tmp.path().join("tps"));
    let node = start_node(&node_env(model, rx.port));
    let first = patient(&tmp.path().join("a"), "44", false);
    // The same dose instance with 10 % more dose everywhere.
    let second = scaled_dose(&first, &tmp.path().join("b"), 1.1);
    let db = node.db_path();
    let ended = |n: i64| {
        wait_until(&format!("{n} jobs succeeded"), 120, || {
            count(&db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == n
        })
    };
    push(&node, &first);
    ended(1);
    push(&node, &second);
    ended(2);
    push(&node, &first);
    ended(3);
    wait_until("three SRs and structure sets", 60, || rx.files().len() >= 6);
    let risks = query(
        &db,
        "SELECT CAST(risk AS TEXT), input_key FROM jobs ORDER BY id",
    );
    assert_eq!(risks.len(), 3, "{risks:?}");
    assert_eq!(risks[0][0], risks[2][0], "A scored alike twice: {risks:?}");
    assert_ne!(risks[0][0], risks[1][0], "{risks:?}");
    assert!(
        risks[0][1]
            .as_deref()
            .unwrap_or_default()
            .ends_with(":superseded:1"),
        "{risks:?}"
    );
}

/// The RT Dose of `study` with every dose multiplied by `factor`, as the
/// same instance (same SOP Instance UID), alone in `dir`.
fn scaled_dose(study: &Path, dir: &Path, factor: f64) -> PathBuf {
    use dicom_dictionary_std::tags;
    std::fs::create_dir_all(dir).expect("dir");
    let mut dose = dicom_object::open_file(study.join("rtdose.dcm")).expect("dose");
    let scaling: f64 = get_str(&dose, tags::DOSE_GRID_SCALING)
        .parse()
        .expect("scaling");
    esorisk::rt::write::put_str(
        &mut dose,
        tags::DOSE_GRID_SCALING,
        dicom_core::VR::DS,
        &format!("{:.8e}", scaling * factor),
    );
    dose.write_to_file(dir.join("rtdose.dcm")).expect("write");
    dir.to_path_buf()
}
