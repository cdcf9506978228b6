//! The node against real DICOM peers: DCMTK's storescu/echoscu and a Rust
//! client built on dicom-ul, with real files and a real SQLite index.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use esorisk::dimse::{status, Command};
use esorisk::send::{self, DicomFile};
use esorisk::store::ts;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const RT_DOSE: &str = "1.2.840.10008.5.1.4.1.1.481.2";

/// Assert that `sent` is stored byte-equal in its data set, and indexed.
fn assert_stored(node: &TestNode, sent: &Path) {
    let u = uids(sent);
    let stored = node.store_path(&u.study, &u.series, &u.sop);
    assert!(
        stored.is_file(),
        "{} not stored at {}",
        sent.display(),
        stored.display()
    );
    assert_eq!(uids(&stored).ts, u.ts, "transfer syntax kept");
    assert!(
        data_set(&stored) == data_set(sent),
        "data set of {} differs from what was sent",
        sent.display()
    );
    let rows = query(
        &node.db_path(),
        &format!(
            "SELECT sop_class_uid, transfer_syntax_uid, file_path, study_instance_uid, size_bytes, calling_ae
             FROM instances WHERE sop_instance_uid = '{}'",
            u.sop
        ),
    );
    assert_eq!(rows.len(), 1, "one row for {}", u.sop);
    let r = &rows[0];
    assert_eq!(r[0].as_deref(), Some(u.sop_class.as_str()));
    assert_eq!(r[1].as_deref(), Some(u.ts.as_str()));
    assert_eq!(
        r[2].as_deref(),
        Some(format!("store/{}/{}/{}.dcm", u.study, u.series, u.sop).as_str())
    );
    assert_eq!(r[3].as_deref(), Some(u.study.as_str()));
    let size: u64 = r[4].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert_eq!(
        size,
        std::fs::metadata(&stored).map(|m| m.len()).unwrap_or(1)
    );
    assert!(r[5].is_some(), "calling AE recorded");
}

fn convert(tool: &str, args: &[&str], src: &Path, dst: &Path) {
    let mut all: Vec<&str> = args.to_vec();
    let (s, d) = (src.display().to_string(), dst.display().to_string());
    all.push(&s);
    all.push(&d);
    let out = dcmtk(tool, &all);
    assert!(out.status.success(), "{tool} failed: {}", text(&out));
}

/// A CT slice re-encapsulated as JPEG 2000 (the fragment is opaque to the
/// node, which stores encapsulated data as received).
fn jpeg2000_file(src: &Path, dst: &Path) {
    let file = dicom_object::open_file(src).expect("open");
    let sop_class = file.meta().media_storage_sop_class_uid().to_string();
    let sop = file.meta().media_storage_sop_instance_uid().to_string();
    let mut obj = file.into_inner();
    let fragment = vec![0xFF, 0x4F, 0xFF, 0x51, 1, 2, 3, 4, 5, 6, 0xFF, 0xD9];
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![fragment])),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class.trim_end_matches('\0'))
        .media_storage_sop_instance_uid(sop.trim_end_matches('\0'))
        .transfer_syntax(ts::JPEG_2000_LOSSLESS)
        .implementation_class_uid(esorisk::uid::IMPLEMENTATION_CLASS_UID);
    obj.with_meta(meta)
        .expect("meta")
        .write_to_file(dst)
        .expect("write j2k");
}

#[test]
fn echo_and_every_transfer_syntax_stored_byte_for_byte() {
    let node = TestNode::start(&[]);
    let out = dcmtk(
        "echoscu",
        &["-aec", AE, "127.0.0.1", &node.port.to_string()],
    );
    assert!(out.status.success(), "echoscu: {}", text(&out));

    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    let files = synthetic_study(&src, 1, 128, 1, 7);
    let ct = files
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "ct_0000.dcm"))
        .expect("ct")
        .clone();
    let dose = src.join("rtdose.dcm");
    let rt: Vec<PathBuf> = ["rtstruct.dcm", "rtplan.dcm", "rtdose.dcm"]
        .iter()
        .map(|n| src.join(n))
        .collect();

    // Native syntaxes: every RT object and the CT, converted with dcmconv.
    for (name, conv, propose) in [
        ("explicit-le", "+te", "-xe"),
        ("implicit-le", "+ti", "-xi"),
        ("explicit-be", "+tb", "-xb"),
        ("deflated", "+td", "-xd"),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut sent = Vec::new();
        for f in rt.iter().chain(std::iter::once(&ct)) {
            let dst = dir.join(f.file_name().expect("name"));
            convert("dcmconv", &[conv], f, &dst);
            sent.push(dst);
        }
        let refs: Vec<&Path> = sent.iter().map(PathBuf::as_path).collect();
        let out = storescu(&node, &[propose], &refs);
        assert!(out.status.success(), "storescu {name}: {}", text(&out));
        for f in &sent {
            assert_stored(&node, f);
        }
    }

    // Encapsulated syntaxes, stored as received.
    let enc = tmp.path().join("encapsulated");
    std::fs::create_dir_all(&enc).expect("mkdir");
    let cases: Vec<(PathBuf, &str)> = {
        let rle_dose = enc.join("dose_rle.dcm");
        convert("dcmcrle", &[], &dose, &rle_dose);
        let rle_ct = enc.join("ct_rle.dcm");
        convert("dcmcrle", &[], &ct, &rle_ct);
        let jpeg = enc.join("ct_jpeg.dcm");
        convert("dcmcjpeg", &[], &ct, &jpeg);
        let jls = enc.join("ct_jls.dcm");
        convert("dcmcjpls", &[], &ct, &jls);
        let j2k = enc.join("ct_j2k.dcm");
        jpeg2000_file(&ct, &j2k);
        vec![
            (rle_dose, "-xr"),
            (rle_ct, "-xr"),
            (jpeg, "-xs"),
            (jls, "-xt"),
            (j2k, "-xv"),
        ]
    };
    for (file, propose) in &cases {
        let out = storescu(&node, &[propose], &[file]);
        assert!(
            out.status.success(),
            "storescu {}: {}",
            file.display(),
            text(&out)
        );
        assert_stored(&node, file);
        let u = uids(file);
        assert_ne!(u.ts, ts::EXPLICIT_VR_LE);
    }

    // Re-sending replaced files atomically and kept one row per instance.
    let u = uids(&ct);
    let rows = query(
        &node.db_path(),
        &format!(
            "SELECT receive_count FROM instances WHERE sop_instance_uid = '{}'",
            u.sop
        ),
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0][0].as_deref(),
        Some("8"),
        "CT sent in 4 native and 4 encapsulated syntaxes"
    );
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 4);
    assert_eq!(node.stored_files().len(), 4);
    assert_eq!(node.tmp_files(), 0);

    // `esorisk studies` shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("studies")
        .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
        .output()
        .expect("studies");
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    assert!(listing.contains(&u.study), "{listing}");
    assert!(listing.contains("CT,RTDOSE,RTPLAN,RTSTRUCT"), "{listing}");
    assert!(listing.contains("instances 4"), "{listing}");
    assert!(listing.contains("    scoring: "), "{listing}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .args(["studies", "--json"])
        .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
        .output()
        .expect("studies --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["study_instance_uid"], u.study.as_str(), "{v}");
    assert_eq!(v[0]["instances"], 4, "{v}");
    assert_eq!(v[0]["modalities"], "CT,RTDOSE,RTPLAN,RTSTRUCT", "{v}");
    assert!(v[0]["latest_job"].is_null(), "no job yet: {v}");
}

#[test]
fn ct_series_and_several_senders_at_once() {
    let node = TestNode::start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    // A 120-slice CT series from one sender.
    let ct_dir = tmp.path().join("ct");
    let slices = esorisk::testgen::write_set(&ct_dir, "ct", 120, 256, 1, 3).expect("ct");
    normalize(&slices);
    let refs: Vec<&Path> = slices.iter().map(PathBuf::as_path).collect();
    let out = storescu(&node, &[], &refs);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        count(
            &node.db_path(),
            "SELECT count(*) FROM instances WHERE modality = 'CT'"
        ),
        120
    );
    for s in slices.iter().step_by(17) {
        assert_stored(&node, s);
    }

    // Eight senders, eight studies, at the same time: instances from many
    // associations share index commits.
    let studies: Vec<Vec<PathBuf>> = (0..8)
        .map(|k| synthetic_study(&tmp.path().join(format!("s{k}")), 20, 128, 2, 100 + k))
        .collect();
    let handles: Vec<_> = studies
        .iter()
        .cloned()
        .map(|files| {
            let port = node.port;
            std::thread::spawn(move || {
                let mut args = vec![
                    "-aec".to_string(),
                    AE.into(),
                    "127.0.0.1".into(),
                    port.to_string(),
                ];
                args.extend(files.iter().map(|p| p.display().to_string()));
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                dcmtk("storescu", &refs)
            })
        })
        .collect();
    for h in handles {
        let out = h.join().expect("thread");
        assert!(out.status.success(), "{}", text(&out));
    }
    for files in &studies {
        for f in files {
            assert_stored(&node, f);
        }
    }
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM studies"), 9);
    assert_eq!(
        count(&node.db_path(), "SELECT count(*) FROM instances"),
        120 + 8 * 23
    );
    // An association's row is closed just after the sender hears the release.
    wait_for(|| {
        count(
            &node.db_path(),
            "SELECT count(*) FROM associations WHERE outcome = 'released' AND instances_stored > 0",
        ) == 9
    });
    assert!(!node.log().contains("not indexed"), "{}", node.log());

    // `esorisk studies` lists the newest, or those of one patient or study.
    let studies_cmd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
            .arg("studies")
            .args(args)
            .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
            .output()
            .expect("studies");
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let listed = |listing: &str| listing.lines().filter(|l| l.contains("  patient ")).count();
    let newest = studies_cmd(&["--limit", "3"]);
    assert_eq!(listed(&newest), 3, "{newest}");
    assert!(
        newest.contains("… 6 more (older); --limit 0 lists all"),
        "{newest}"
    );
    assert_eq!(listed(&studies_cmd(&[])), 9);
    let one = common::uids(&studies[2][0]).study;
    let patient = query(
        &node.db_path(),
        &format!(
            "SELECT p.patient_id FROM studies s JOIN patients p ON p.id = s.patient_pk \
             WHERE s.study_instance_uid = '{one}'"
        ),
    )[0][0]
        .clone()
        .unwrap_or_default();
    for args in [["--study", one.as_str()], ["--patient", patient.as_str()]] {
        let listing = studies_cmd(&args);
        assert_eq!(listed(&listing), 1, "{args:?}: {listing}");
        assert!(listing.contains(&one), "{listing}");
    }
    assert!(studies_cmd(&["--patient", "NOBODY"]).contains("no study matches"));
}

fn rt_dose_file(dir: &Path) -> PathBuf {
    let files = synthetic_study(dir, 0, 64, 1, 11);
    files
        .into_iter()
        .find(|p| p.ends_with("rtdose.dcm"))
        .expect("dose")
}

/// A dose data set with one attribute replaced (explicit VR LE).
fn with_attribute(file: &Path, tag: dicom_core::Tag, vr: VR, value: &str) -> Vec<u8> {
    let mut obj = dicom_object::open_file(file).expect("open").into_inner();
    obj.put(DataElement::new(
        tag,
        vr,
        dicom_core::PrimitiveValue::from(value),
    ));
    let mut out = Vec::new();
    let reg = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    use dicom_encoding::TransferSyntaxIndex;
    let ts = reg.get(ts::EXPLICIT_VR_LE).expect("ts");
    obj.write_dataset_with_ts(&mut out, ts).expect("write");
    out
}

#[test]
fn rust_client_and_bad_data_sets() {
    let node = TestNode::start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dose_path = rt_dose_file(tmp.path());
    let dose = DicomFile::read(&dose_path).expect("read");
    let rt = runtime();
    rt.block_on(async {
        let contexts = vec![
            (
                esorisk::dimse::VERIFICATION_SOP_CLASS,
                vec![ts::IMPLICIT_VR_LE],
            ),
            (RT_DOSE, vec![ts::EXPLICIT_VR_LE]),
            (CT, vec![ts::EXPLICIT_VR_LE]),
        ];
        let mut assoc = send::associate(&node.addr(), "RUSTSCU", AE, &contexts)
            .await
            .expect("associate");
        assert_eq!(
            send::echo(&mut assoc, 1).await.expect("echo"),
            status::SUCCESS
        );
        // Nothing is stored yet, so nothing is prepared on disk either.
        assert_eq!(node.tmp_files(), 0);

        // A good instance.
        let rsp = send::store(&mut assoc, 2, &dose).await.expect("store");
        assert_eq!(rsp.status, Some(status::SUCCESS), "{rsp:?}");
        assert_eq!(rsp.message_id_being_responded_to, Some(2));
        assert_eq!(
            rsp.affected_sop_instance_uid.as_deref(),
            Some(dose.sop_instance_uid.as_str())
        );
        assert_stored(&node, &dose_path);

        let pc_dose = send::context_id(&assoc, RT_DOSE, ts::EXPLICIT_VR_LE).expect("pc");
        let pc_ct = send::context_id(&assoc, CT, ts::EXPLICIT_VR_LE).expect("pc");
        let cases: Vec<(&str, u8, Command, Vec<u8>, u16)> = vec![
            (
                "malformed data set",
                pc_dose,
                Command::store_request(3, RT_DOSE, "1.2.3.4.5.6"),
                {
                    let mut junk = dose.data_set[..400].to_vec();
                    junk.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 0xFF, 0x7F, b'x']);
                    junk
                },
                status::CANNOT_UNDERSTAND,
            ),
            (
                "path traversal in StudyInstanceUID",
                pc_dose,
                Command::store_request(4, RT_DOSE, &dose.sop_instance_uid),
                with_attribute(&dose_path, tags::STUDY_INSTANCE_UID, VR::UI, "../../etc"),
                status::INVALID_UID,
            ),
            (
                "path traversal in the request's SOP instance UID",
                pc_dose,
                Command::store_request(5, RT_DOSE, "../../etc/passwd"),
                dose.data_set.clone(),
                status::INVALID_UID,
            ),
            (
                "data set of another SOP class",
                pc_ct,
                Command::store_request(6, CT, &dose.sop_instance_uid),
                dose.data_set.clone(),
                status::DATA_SET_MISMATCH,
            ),
            (
                "request SOP class differs from the negotiated one",
                pc_ct,
                Command::store_request(7, RT_DOSE, &dose.sop_instance_uid),
                dose.data_set.clone(),
                status::SOP_CLASS_NOT_SUPPORTED,
            ),
        ];
        for (what, pc, rq, data, expected) in cases {
            send::send_message(&mut assoc, pc, &rq, Some(&data))
                .await
                .expect("send");
            let rsp = send::receive_command(&mut assoc).await.expect("response");
            assert_eq!(rsp.status, Some(expected), "{what}: {rsp:?}");
            assert!(
                rsp.error_comment.as_deref().is_some_and(|c| !c.is_empty()),
                "{what}: comment"
            );
        }

        // Re-sent into another series: the instance moves, its old file goes,
        // and it keeps one row.
        let moved_series = "1.2.826.0.1.3680043.10.1.77";
        let moved = DicomFile {
            data_set: with_attribute(&dose_path, tags::SERIES_INSTANCE_UID, VR::UI, moved_series),
            ..dose.clone()
        };
        let rsp = send::store(&mut assoc, 8, &moved).await.expect("store moved");
        assert_eq!(rsp.status, Some(status::SUCCESS), "{rsp:?}");
        let u = uids(&dose_path);
        assert!(!node.store_path(&u.study, &u.series, &u.sop).exists(), "old file removed");
        let new_path = node.store_path(&u.study, moved_series, &u.sop);
        assert!(DicomFile::read(&new_path).expect("moved file").data_set == moved.data_set);
        let rows = query(
            &node.db_path(),
            &format!("SELECT series_instance_uid, receive_count FROM instances WHERE sop_instance_uid = '{}'", u.sop),
        );
        assert_eq!(rows, vec![vec![Some(moved_series.to_string()), Some("2".to_string())]]);
        // Listed until a start has removed it for good.
        assert_eq!(count(&node.db_path(), "SELECT count(*) FROM superseded_files"), 1);

        // Re-sent into a third series whose directory cannot be made: refused,
        // and the row describes the file still in the store.
        let blocked_series = "1.2.826.0.1.3680043.10.1.78";
        let blocked = node.store_path(&u.study, blocked_series, &u.sop);
        let blocked_dir = blocked.parent().expect("series dir");
        std::fs::write(blocked_dir, b"in the way").expect("blocker");
        let again = DicomFile {
            data_set: with_attribute(&dose_path, tags::SERIES_INSTANCE_UID, VR::UI, blocked_series),
            ..dose.clone()
        };
        let rsp = send::store(&mut assoc, 9, &again).await.expect("store blocked");
        assert_eq!(rsp.status, Some(status::OUT_OF_RESOURCES), "{rsp:?}");
        assert!(new_path.is_file(), "the stored file stays");
        let rows = query(
            &node.db_path(),
            &format!("SELECT file_path FROM instances WHERE sop_instance_uid = '{}'", u.sop),
        );
        assert_eq!(
            rows,
            vec![vec![Some(format!("store/{}/{moved_series}/{}.dcm", u.study, u.sop))]]
        );
        assert_eq!(
            count(
                &node.db_path(),
                &format!("SELECT count(*) FROM series WHERE series_instance_uid = '{blocked_series}'")
            ),
            0
        );
        std::fs::remove_file(blocked_dir).expect("remove blocker");
        assoc.release().await.expect("release");
        // The log names who echoed from where, and whom an association
        // called; an instance's line gives the time it waited for the index
        // apart from the time making its file durable.
        node.assert_logged(&["C-ECHO", "calling_ae=\"RUSTSCU\"", "called_ae=\"ESORISK\"", "peer=127.0.0.1:"]);
        node.assert_logged(&["association ended", "calling_ae=\"RUSTSCU\"", "called_ae=\"ESORISK\"", "outcome=released"]);
        node.assert_logged(&["instance stored", "replaced=true", "store_ms=", "index_wait_ms="]);
        assert!(!node.log().contains(" index_ms="), "{}", node.log());

        // Dropped in the middle of a data set: nothing kept.
        let mut assoc = send::associate(&node.addr(), "RUSTSCU", AE, &contexts)
            .await
            .expect("associate");
        let sop = dose.sop_instance_uid.replacen("2.25.", "2.26.", 1);
        let data = replace_uid(&dose.data_set, &dose.sop_instance_uid, &sop);
        let rq = Command::store_request(1, RT_DOSE, &sop);
        let pc = send::context_id(&assoc, RT_DOSE, ts::EXPLICIT_VR_LE).expect("pc");
        send::send_message(&mut assoc, pc, &rq, None)
            .await
            .expect("command");
        use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Data,
                    is_last: false,
                    data: data[..100_000].to_vec(),
                }],
            })
            .await
            .expect("half");
        drop(assoc); // TCP connection closed, no release
        wait_for(|| node.log().contains("association ended during a data set"));
        assert_eq!(
            count(
                &node.db_path(),
                &format!("SELECT count(*) FROM instances WHERE sop_instance_uid = '{sop}'")
            ),
            0
        );
    });
    // Only the one good instance is on disk and in the index; nothing in tmp.
    assert_eq!(node.stored_files().len(), 1);
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 1);
    assert_eq!(node.tmp_files(), 0);
    assert!(!node.data_dir.join("etc").exists());
    let log = node.log();
    assert!(log.contains("instance refused"), "{log}");
}

/// Replace a UID string inside encoded bytes (same length required).
fn replace_uid(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let f = from.as_bytes();
    let mut i = 0;
    while i + f.len() <= out.len() {
        if &out[i..i + f.len()] == f {
            out[i..i + f.len()].copy_from_slice(to.as_bytes());
            i += f.len();
        } else {
            i += 1;
        }
    }
    out
}

fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("condition not met in 10 s");
}

#[test]
fn access_control_and_unsupported_sop_class() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("site.toml");
    std::fs::write(
        &cfg,
        "[dicom]\nallowed_callers = [ { ae_title = \"TPS\", host = \"127.0.0.1\" }, { ae_title = \"FARAWAY\", host = \"192.0.2.1\" } ]\n",
    )
    .expect("cfg");
    let node = TestNode::start_with_args(&["--config", &cfg.display().to_string()], &[]);
    let port = node.port.to_string();

    let ok = dcmtk("echoscu", &["-aet", "TPS", "-aec", AE, "127.0.0.1", &port]);
    assert!(ok.status.success(), "{}", text(&ok));

    let stranger = dcmtk(
        "echoscu",
        &["-aet", "STRANGER", "-aec", AE, "127.0.0.1", &port],
    );
    assert!(!stranger.status.success());
    assert!(
        text(&stranger).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&stranger)
    );

    let wrong_host = dcmtk(
        "echoscu",
        &["-aet", "FARAWAY", "-aec", AE, "127.0.0.1", &port],
    );
    assert!(
        !wrong_host.status.success(),
        "host pinned: {}",
        text(&wrong_host)
    );

    let wrong_called = dcmtk(
        "echoscu",
        &["-aet", "TPS", "-aec", "NOTUS", "127.0.0.1", &port],
    );
    assert!(!wrong_called.status.success());
    assert!(
        text(&wrong_called).contains("Called AE Title Not Recognized"),
        "{}",
        text(&wrong_called)
    );

    wait_for(|| node.log().matches("association rejected").count() >= 3);
    let log = node.log();
    assert!(log.contains("calling_ae=\"STRANGER\""), "{log}");
    // The row is written just after the log line.
    wait_for(|| {
        count(
            &node.db_path(),
            "SELECT count(*) FROM associations WHERE outcome LIKE 'rejected:%'",
        ) == 3
    });

    // An SOP class we do not store (MR Image) is refused at negotiation.
    let ct = esorisk::testgen::write_set(&tmp.path().join("ct"), "ct", 1, 64, 1, 1).expect("ct");
    let mr = tmp.path().join("mr.dcm");
    let mut obj = dicom_object::open_file(&ct[0]).expect("open").into_inner();
    let mr_class = "1.2.840.10008.5.1.4.1.1.4";
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        dicom_core::PrimitiveValue::from(mr_class),
    ));
    obj.put(DataElement::new(
        tags::MODALITY,
        VR::CS,
        dicom_core::PrimitiveValue::from("MR"),
    ));
    let sop = uids(&ct[0]).sop;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(mr_class)
        .media_storage_sop_instance_uid(sop.as_str())
        .transfer_syntax(ts::EXPLICIT_VR_LE)
        .implementation_class_uid(esorisk::uid::IMPLEMENTATION_CLASS_UID);
    obj.with_meta(meta)
        .expect("meta")
        .write_to_file(&mr)
        .expect("write");
    let out = dcmtk(
        "storescu",
        &[
            "-aet",
            "TPS",
            "-aec",
            AE,
            "-R",
            "127.0.0.1",
            &port,
            &mr.display().to_string(),
        ],
    );
    assert!(!out.status.success(), "MR must be refused: {}", text(&out));
    assert!(
        text(&out).contains("No Acceptable Presentation Contexts"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 0);
}

#[test]
fn associations_over_the_limit_are_rejected_not_left_hanging() {
    let node = TestNode::start(&[("ESORISK__DICOM__MAX_ASSOCIATIONS", "2")]);
    let rt = runtime();
    rt.block_on(async {
        let contexts = verification_contexts();
        let a = send::associate(&node.addr(), "HOLD1", AE, &contexts)
            .await
            .expect("first");
        let b = send::associate(&node.addr(), "HOLD2", AE, &contexts)
            .await
            .expect("second");

        // The third gets an A-ASSOCIATE-RJ, promptly.
        let started = std::time::Instant::now();
        let third = send::associate(&node.addr(), "THIRD", AE, &contexts).await;
        let err = third.expect_err("third must be rejected").to_string();
        assert!(err.to_lowercase().contains("reject"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let port = node.port.to_string();
        let out = tokio::task::spawn_blocking(move || {
            dcmtk("echoscu", &["-aec", AE, "127.0.0.1", &port])
        })
        .await
        .expect("echoscu");
        assert!(!out.status.success());
        assert!(
            text(&out).contains("Local Limit Exceeded"),
            "{}",
            text(&out)
        );

        // Freeing a slot lets the next one in.
        a.release().await.expect("release");
        let mut c = None;
        for _ in 0..50 {
            if let Ok(assoc) = send::associate(&node.addr(), "THIRD", AE, &contexts).await {
                c = Some(assoc);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut c = c.expect("a slot frees up after a release");
        assert_eq!(send::echo(&mut c, 1).await.expect("echo"), status::SUCCESS);
        c.release().await.expect("release");
        b.release().await.expect("release");
    });
    let log = node.log();
    assert!(log.contains("too many associations"), "{log}");
    // Each row is written just after its log line.
    wait_for(|| {
        count(
            &node.db_path(),
            "SELECT count(*) FROM associations WHERE outcome = 'rejected: local limit exceeded'",
        ) >= 2
    });
}

/// Pairs (file, status) from `storescu -v` output: which sends were acknowledged.
fn acknowledged(output: &str) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut current: Option<PathBuf> = None;
    for line in output.lines() {
        if let Some(rest) = line.split("Sending file: ").nth(1) {
            current = Some(PathBuf::from(rest.trim()));
        } else if line.contains("Received Store Response") {
            if let Some(f) = current.take() {
                out.push((f, line.contains("(Success)")));
            }
        }
    }
    out
}

#[test]
fn sigkill_while_pushing_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    let mut senders = Vec::new();
    for k in 0..3u64 {
        let dir = tmp.path().join(format!("s{k}"));
        let files = synthetic_study(&dir, 150, 256, 4, 500 + k);
        let port = node.port;
        senders.push(std::thread::spawn(move || {
            let mut args = vec![
                "-v".to_string(),
                "-nh".into(),
                "-aec".into(),
                AE.into(),
                "127.0.0.1".into(),
                port.to_string(),
            ];
            args.extend(files.iter().map(|p| p.display().to_string()));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            text(&dcmtk("storescu", &refs))
        }));
    }
    // Let some instances through, then pull the plug.
    wait_for(|| node.log().matches("instance stored").count() >= 40);
    node.kill();
    let outputs: Vec<String> = senders
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    let acked: Vec<PathBuf> = outputs
        .iter()
        .flat_map(|o| acknowledged(o))
        .filter(|(_, ok)| *ok)
        .map(|(f, _)| f)
        .collect();
    assert!(
        acked.len() >= 40,
        "acknowledged before the kill: {}",
        acked.len()
    );
    assert!(acked.len() < 3 * 153, "the kill came before the end");

    let node = TestNode::start_in(&data_dir, &[]);
    for f in &acked {
        let u = uids(f);
        let stored = node.store_path(&u.study, &u.series, &u.sop);
        let obj = dicom_object::open_file(&stored).unwrap_or_else(|e| {
            panic!(
                "acknowledged {} unreadable after restart: {e}",
                stored.display()
            )
        });
        assert_eq!(
            obj.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0'),
            u.sop
        );
        assert!(data_set(&stored) == data_set(f));
        assert_eq!(
            count(
                &node.db_path(),
                &format!(
                    "SELECT count(*) FROM instances WHERE sop_instance_uid = '{}'",
                    u.sop
                )
            ),
            1
        );
    }
    // No partial file survives and nothing indexed points outside the store.
    assert_eq!(node.tmp_files(), 0);
    assert_eq!(
        count(
            &node.db_path(),
            "SELECT count(*) FROM instances WHERE file_path NOT LIKE 'store/%'"
        ),
        0
    );
    // Every file in the store is indexed and every row has its file.
    let files = node.stored_files();
    assert_eq!(
        files.len() as i64,
        count(&node.db_path(), "SELECT count(*) FROM instances")
    );
    for row in query(&node.db_path(), "SELECT file_path FROM instances") {
        let p = node.data_dir.join(row[0].as_deref().unwrap_or(""));
        assert!(p.is_file(), "{} indexed but missing", p.display());
    }
}

#[test]
fn sigterm_finishes_and_exits_cleanly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    push_study(&node, &tmp.path().join("s"), 2, 9);
    assert!(node.terminate(), "clean exit on SIGTERM: {}", node.log());
    let log = node.log();
    assert!(
        log.contains("SIGTERM received") && log.contains("stopped"),
        "{log}"
    );
    // The database was closed cleanly and the data is all there on restart.
    assert!(data_dir.join("clean-shutdown").is_file());
    let node = TestNode::start_in(&data_dir, &[]);
    assert!(
        node.log().contains("last shutdown was clean"),
        "{}",
        node.log()
    );
    assert!(
        !data_dir.join("clean-shutdown").exists(),
        "marker consumed at start"
    );
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 5);
    let studies = count(
        &node.db_path(),
        "SELECT count(*) FROM studies WHERE last_received_at IS NOT NULL",
    );
    assert_eq!(studies, 1);
}

#[test]
fn refuses_with_out_of_resources_below_the_free_space_floor() {
    let node = TestNode::start(&[("ESORISK__STORAGE__MIN_FREE_MB", "1000000000")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let files = synthetic_study(&tmp.path().join("s"), 0, 64, 1, 5);
    let out = storescu(&node, &["-v", "-nh"], &[&files[0]]);
    let t = text(&out);
    assert!(
        t.contains("Received Store Response (Refused: OutOfResources)"),
        "{t}"
    );
    node.assert_logged(&["not enough free disk space"]);
    // Said at start, before any sender meets it.
    node.assert_logged(&["free space is under storage.min_free_mb"]);
    assert_eq!(node.stored_files().len(), 0);
    assert_eq!(node.tmp_files(), 0);
}

/// A start that fails on a setting (here its port, in use) stops before the
/// data directory is touched: the next start still finds the clean
/// shutdown recorded and reconciles nothing.
#[test]
fn a_start_that_fails_on_its_port_keeps_the_clean_shutdown_mark() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    assert!(node.terminate());
    assert!(data_dir.join("clean-shutdown").exists());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("serve")
        .env("ESORISK__DICOM__PORT", &port)
        .env("ESORISK__DICOM__BIND", "127.0.0.1")
        .env("ESORISK__STORAGE__DATA_DIR", &data_dir)
        .env("ESORISK__PIPELINE__ENABLED", "false")
        .output()
        .expect("esorisk");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(data_dir.join("clean-shutdown").exists(), "{}", text(&out));
    let mut node = TestNode::start_in(&data_dir, &[]);
    node.assert_logged(&["last shutdown was clean"]);
    assert!(node.terminate());
}

/// A disk that fills up in the middle of an instance: that instance is
/// refused with A700 and the reason, nothing of it stays (no file, no row,
/// no temporary file), and the node goes on storing what fits. The disk is
/// a 3 MiB tmpfs, so the test needs the right to mount one (root, as
/// scripts/test runs in CI); elsewhere it says so and checks nothing.
#[test]
fn a_disk_that_fills_up_mid_instance_refuses_that_instance_and_goes_on() {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let disk = tmp.path().join("small-disk");
    std::fs::create_dir_all(&disk).expect("dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&disk)
        .output();
    if !mounted.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Unmount(disk.clone());
    let mut node = TestNode::start_in(&disk.join("var"), &[]);
    let files = synthetic_study(&tmp.path().join("s"), 1, 64, 4, 9);
    let dose = files
        .iter()
        .find(|p| p.ends_with("rtdose.dcm"))
        .expect("dose");
    let ct = files
        .iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ct"))
        })
        .expect("ct");
    assert!(std::fs::metadata(dose).expect("size").len() > 3 << 20);
    let out = storescu(&node, &["-v", "-nh"], &[dose]);
    let t = text(&out);
    assert!(
        t.contains("Received Store Response (Refused: OutOfResources)"),
        "{t}"
    );
    let sop = uids(dose).sop;
    node.assert_logged(&["No space left on device", &sop]);
    assert_eq!(node.stored_files().len(), 0);
    assert_eq!(node.tmp_files(), 0);
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 0);
    // The space the refused instance took is free again.
    let out = storescu(&node, &[], &[ct]);
    assert!(out.status.success(), "{}", text(&out));
    assert_stored(&node, ct);
    assert!(node.terminate(), "a clean exit");
}

/// A second node on a data directory that a running node has open is
/// refused at start-up, naming the running one; the first goes on serving.
#[test]
fn a_second_node_on_the_same_data_directory_is_refused() {
    let node = TestNode::start(&[]);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("serve")
        .env("ESORISK__DICOM__PORT", "0")
        .env("ESORISK__DICOM__BIND", "127.0.0.1")
        .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
        .env("ESORISK__PIPELINE__ENABLED", "false")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run a second node");
    // It must stop by itself; one that serves is killed and fails the test.
    for _ in 0..300 {
        if second.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if second.try_wait().expect("wait").is_none() {
        let _ = second.kill();
    }
    let out = second.wait_with_output().expect("output");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!("another esorisk process (process {})", node.pid())),
        "{t}"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let files = synthetic_study(&tmp.path().join("s"), 0, 64, 1, 45);
    let out = storescu(&node, &[], &[&files[0]]);
    assert!(out.status.success(), "{}", text(&out));
    assert_stored(&node, &files[0]);
}

/// With `storage.retention_days` the node removes a study whose last
/// instance is older than that, files and rows, once nothing of it is left
/// to do; a study with a job still queued waits. `esorisk purge` does the
/// same by hand, and not while a node has the data directory open.
#[test]
fn old_studies_are_removed_when_nothing_is_left_to_do() {
    let mut node = TestNode::start(&[
        ("ESORISK__STORAGE__RETENTION_DAYS", "30"),
        ("ESORISK__STORAGE__RETENTION_CHECK_SECS", "1"),
    ]);
    let db = node.db_path();
    let tmp = tempfile::tempdir().expect("tmp");
    let old = synthetic_study(&tmp.path().join("old"), 0, 64, 1, 46);
    let waiting = synthetic_study(&tmp.path().join("waiting"), 0, 64, 1, 47);
    let recent = synthetic_study(&tmp.path().join("recent"), 0, 64, 1, 48);
    for files in [&old, &waiting, &recent] {
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let out = storescu(&node, &[], &refs);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (old_uid, waiting_uid) = (uids(&old[0]).study, uids(&waiting[0]).study);
    let study_dir = |files: &[PathBuf]| {
        let u = uids(&files[0]);
        node.store_path(&u.study, &u.series, &u.sop)
            .parent()
            .and_then(Path::parent)
            .expect("study dir")
            .to_path_buf()
    };
    let (old_dir, waiting_dir) = (study_dir(&old), study_dir(&waiting));
    // Two studies last received in 2020, one of them with a job queued.
    execute(
        &db,
        &format!(
            "UPDATE studies SET last_received_at = '2020-01-01T00:00:00.000Z' \
             WHERE study_instance_uid IN ('{old_uid}', '{waiting_uid}'); \
             INSERT INTO jobs (study_instance_uid, input_key, input_uids, model_version, state, \
             max_attempts, created_at) VALUES ('{waiting_uid}', 'k1', '[]', 'test', 'queued', 3, \
             '2020-01-01T00:00:00.000Z');"
        ),
    );
    let rows_of = |uid: &str| {
        count(
            &db,
            &format!("SELECT count(*) FROM instances WHERE study_instance_uid = '{uid}'"),
        )
    };
    // The log line comes last, after the rows and the files.
    let removed = |uid: &str| {
        node.log()
            .lines()
            .any(|l| l.contains("study removed") && l.contains(uid))
    };
    wait_for(|| removed(&old_uid));
    assert_eq!(rows_of(&old_uid), 0);
    assert!(!old_dir.exists(), "{}", old_dir.display());
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM studies WHERE study_instance_uid = '{old_uid}'")
        ),
        0
    );
    for f in waiting.iter().chain(&recent) {
        assert_stored(&node, f);
    }
    // The removed study sent again is a new study like any other.
    let out = storescu(&node, &[], &[&old[0]]);
    assert!(out.status.success(), "{}", text(&out));
    assert_stored(&node, &old[0]);

    // Its job done, the waiting study goes at a later check.
    execute(
        &db,
        "UPDATE jobs SET state = 'succeeded' WHERE input_key = 'k1'",
    );
    wait_for(|| removed(&waiting_uid));
    assert_eq!(rows_of(&waiting_uid), 0);
    assert!(!waiting_dir.exists());
    assert_eq!(node.stored_files().len(), recent.len() + 1);

    // By hand: not while the node runs; then all that is older than 0 days.
    let data_dir = node.data_dir.clone();
    // With the node's settings: it scores nothing (pipeline.enabled = false).
    let purge_as = |pipeline: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
            .arg("purge")
            .args(args)
            .env("ESORISK__STORAGE__DATA_DIR", &data_dir)
            .env("ESORISK__PIPELINE__ENABLED", pipeline)
            .output()
            .expect("purge");
        (out.status.success(), text(&out))
    };
    let purge = |args: &[&str]| purge_as("false", args);
    let (ok, t) = purge(&["--older-than", "0"]);
    assert!(!ok && t.contains("another esorisk process"), "{t}");
    let (ok, t) = purge(&["--older-than", "0", "--dry-run"]);
    assert!(ok && t.contains("2 studies would be removed"), "{t}");
    // A node that scores keeps a study until its pipeline has looked at it
    // since its last instance; these two never were.
    let (ok, t) = purge_as("true", &["--older-than", "0", "--dry-run"]);
    assert!(ok && t.contains("0 studies would be removed"), "{t}");
    assert!(node.terminate());
    let (ok, t) = purge(&["--older-than", "0"]);
    assert!(ok && t.contains("removed 2 studies, 4 instances"), "{t}");
    assert_eq!(node.stored_files().len(), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM instances"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM patients"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM jobs"), 1, "jobs stay");
    assert_eq!(count(&db, "SELECT count(*) FROM removals"), 0);
}

/// A crash between a removal's rows and its files leaves the files and a
/// `removals` row; the next start finishes the removal instead of indexing
/// the files again as a study.
#[test]
fn a_removal_a_crash_interrupted_is_finished_at_the_next_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    let files = push_study(&node, &tmp.path().join("s"), 2, 41);
    let study = uids(&files[0]).study;
    let db = node.db_path();
    let paths: Vec<String> = query(&db, "SELECT file_path FROM instances")
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    assert_eq!(paths.len(), files.len());
    assert!(node.terminate());
    // What the crash leaves: the rows gone with the removal's own row in
    // the same transaction, the files still there, no clean-shutdown mark.
    for sql in [
        "DELETE FROM instances",
        "DELETE FROM series",
        "DELETE FROM studies",
        "DELETE FROM patients",
    ] {
        execute(&db, sql);
    }
    let list = serde_json::to_string(&paths).expect("json");
    execute(
        &db,
        &format!(
            "INSERT INTO removals (study_instance_uid, started_at, files) \
             VALUES ('{study}', '2026-01-01T00:00:00.000Z', '{list}')"
        ),
    );
    std::fs::remove_file(data_dir.join("clean-shutdown")).expect("no clean mark");
    let node = TestNode::start_in(&data_dir, &[]);
    node.assert_logged(&["finished removing a study", &study]);
    assert!(
        !node
            .log()
            .contains("indexed an instance stored just before a crash"),
        "{}",
        node.log()
    );
    for p in &paths {
        assert!(!data_dir.join(p).exists(), "{p}");
    }
    assert!(!data_dir.join("store").join(&study).exists());
    assert_eq!(count(&db, "SELECT count(*) FROM instances"), 0);
    assert_eq!(count(&db, "SELECT count(*) FROM removals"), 0);
}

/// The shipped systemd unit is one systemd accepts (`systemd-analyze
/// verify`, with the unit's binary path pointed at the one just built), and
/// it stops the node with SIGTERM and waits longer than the grace period.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/esorisk.service"),
    )
    .expect("config/esorisk.service");
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec");
    let grace = esorisk::config::Settings::load(None)
        .expect("defaults")
        .server
        .shutdown_grace_secs;
    assert!(stop > grace, "TimeoutStopSec {stop} <= grace {grace}");
    assert!(unit.contains("KillSignal=SIGTERM") && unit.contains(" serve\n"));
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("esorisk.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/esorisk", env!("CARGO_BIN_EXE_esorisk")),
    )
    .expect("write unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (run scripts/test to install systemd)");
    let t = text(&out);
    assert!(
        out.status.success() && !t.contains("esorisk.service:"),
        "{t}"
    );
}

/// A panic while reading a data set (injected with `dicom.fault`) refuses
/// that instance with a processing failure and the reason; the association
/// and the node go on, and nothing of the instance is left behind.
#[test]
fn a_panic_reading_a_data_set_refuses_that_instance_only() {
    let node = TestNode::start(&[("ESORISK__DICOM__FAULT", "panic-reading-data-set")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let files = synthetic_study(&tmp.path().join("s"), 0, 64, 2, 43);
    let out = storescu(
        &node,
        &["-v", "-nh", "-aet", "PANICTPS"],
        &[&files[0], &files[1]],
    );
    let t = text(&out);
    assert_eq!(
        t.matches("Received Store Response (Error: CannotUnderstand)")
            .count(),
        2,
        "both instances refused in one association: {t}"
    );
    assert!(t.contains("Releasing Association"), "{t}");
    node.assert_logged(&[
        "internal error while reading the data set",
        &uids(&files[1]).sop,
    ]);
    node.assert_logged(&["status=\"0xc000\""]);
    assert_eq!(node.stored_files().len(), 0);
    assert_eq!(node.tmp_files(), 0);
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 0);
    wait_for(|| {
        count(
            &node.db_path(),
            "SELECT count(*) FROM associations WHERE calling_ae = 'PANICTPS' \
             AND outcome = 'released' AND instances_failed = 2",
        ) == 1
    });
    let port = node.port.to_string();
    let echo = dcmtk("echoscu", &["-aec", AE, "127.0.0.1", &port]);
    assert!(echo.status.success(), "{}", text(&echo));
}

/// A panic anywhere else in an association (injected with `dicom.fault` at
/// its first command) ends that association with the reason in the log and
/// in the index; the node keeps serving the next ones.
#[test]
fn a_panic_in_an_association_ends_it_with_a_reason() {
    let node = TestNode::start(&[("ESORISK__DICOM__FAULT", "panic-in-association")]);
    let port = node.port.to_string();
    let tmp = tempfile::tempdir().expect("tmp");
    let files = synthetic_study(&tmp.path().join("s"), 0, 64, 1, 44);
    for round in 0..2 {
        let echo = dcmtk(
            "echoscu",
            &["-aet", "ECHOTPS", "-aec", AE, "127.0.0.1", &port],
        );
        let out = storescu(&node, &["-aet", "STORETPS"], &[&files[0]]);
        // No response: "Echo Failed" or "Store Failed".
        for t in [text(&echo), text(&out)] {
            assert!(t.contains(" Failed"), "round {round}: {t}");
        }
    }
    // The peer hears a proper A-ABORT, not only a closed connection (which
    // DCMTK reports in the same words).
    let answer = runtime().block_on(async {
        let mut assoc = send::associate(&node.addr(), "RUSTSCU", AE, &verification_contexts())
            .await
            .expect("associate");
        send::echo(&mut assoc, 1).await
    });
    match answer {
        Err(e) => assert!(e.to_string().contains("AbortRQ"), "{e}"),
        Ok(status) => panic!("an answer after a panic: {status:#06x}"),
    }
    for ae in ["ECHOTPS", "STORETPS"] {
        node.assert_logged(&["internal error in the association", ae]);
        wait_for(|| {
            count(
                &node.db_path(),
                &format!(
                    "SELECT count(*) FROM associations WHERE calling_ae = '{ae}' AND \
                     outcome = 'aborted: internal error in esorisk: fault injected by dicom.fault' \
                     AND ended_at IS NOT NULL"
                ),
            ) == 2
        });
    }
    assert_eq!(node.stored_files().len(), 0);
    assert_eq!(node.tmp_files(), 0);
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 0);
}

/// The index row of a new instance is written while its file is made
/// durable; when the file cannot be put in place after all, the row is taken
/// back and the sender hears a failure.
#[test]
fn an_instance_that_cannot_be_put_in_place_leaves_no_row() {
    let node = TestNode::start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let files = synthetic_study(&tmp.path().join("s"), 0, 64, 2, 8);
    let u = uids(&files[0]);
    // A file where the study's directory has to go.
    let study_dir = node
        .store_path(&u.study, &u.series, &u.sop)
        .parent()
        .and_then(Path::parent)
        .expect("study dir")
        .to_path_buf();
    std::fs::create_dir_all(study_dir.parent().expect("store")).expect("store dir");
    std::fs::write(&study_dir, b"in the way").expect("blocker");
    let out = storescu(&node, &["-v", "-nh"], &[&files[0]]);
    let t = text(&out);
    assert!(
        t.contains("Received Store Response (Refused: OutOfResources)"),
        "{t}"
    );
    for table in ["instances", "series", "studies", "patients"] {
        assert_eq!(
            count(&node.db_path(), &format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    assert_eq!(node.tmp_files(), 0);
    node.assert_logged(&["instance refused"]);
    // Out of the way, the same instance is stored and indexed once.
    std::fs::remove_file(&study_dir).expect("remove blocker");
    let out = storescu(&node, &[], &[&files[0]]);
    assert!(out.status.success(), "{}", text(&out));
    assert_stored(&node, &files[0]);
    assert!(
        !node.log().contains("group commit failed"),
        "the writer knew its parent rows were gone: {}",
        node.log()
    );
}

#[test]
fn shared_pydicom_samples_are_stored_when_present() {
    let Some(dir) = shared_testdata() else {
        eprintln!("../shared/testdata/pydicom not present; skipped");
        return;
    };
    let node = TestNode::start(&[]);
    // Files DCMTK reads are pushed with storescu.
    for name in [
        "rtdose.dcm",
        "rtdose_1frame.dcm",
        "rtdose_expb.dcm",
        "rtdose_expb_1frame.dcm",
        "rtplan.dcm",
        "rtstruct.dcm",
    ] {
        let f = dir.join(name);
        let out = storescu(&node, &["-v", "-xb"], &[&f]);
        let t = text(&out);
        assert!(
            out.status.success() && t.contains("(Success)"),
            "{name}: {t}"
        );
    }
    // The RLE doses carry their UIDs with VR UN, which storescu cannot read;
    // the Rust client sends their bytes exactly as they are in the file.
    let rt = runtime();
    rt.block_on(async {
        for name in ["rtdose_rle.dcm", "rtdose_rle_1frame.dcm"] {
            let file = DicomFile::read(&dir.join(name)).expect("read");
            let contexts = vec![(file.sop_class_uid.as_str(), vec![file.transfer_syntax_uid.as_str()])];
            let mut assoc = send::associate(&node.addr(), "RUSTSCU", AE, &contexts).await.expect("associate");
            let rsp = send::store(&mut assoc, 1, &file).await.expect("store");
            assert_eq!(rsp.status, Some(status::SUCCESS), "{name}: {rsp:?}");
            assoc.release().await.expect("release");
            let row = query(
                &node.db_path(),
                &format!("SELECT file_path, transfer_syntax_uid FROM instances WHERE sop_instance_uid = '{}'", file.sop_instance_uid),
            );
            assert_eq!(row[0][1].as_deref(), Some(ts::RLE_LOSSLESS));
            let stored = node.data_dir.join(row[0][0].as_deref().unwrap_or(""));
            assert!(DicomFile::read(&stored).expect("stored").data_set == file.data_set, "{name} byte for byte");
        }
    });
    // Every row points at a readable file.
    let rows = query(&node.db_path(), "SELECT file_path FROM instances");
    assert!(rows.len() >= 3, "{rows:?}");
    for r in rows {
        let p = node.data_dir.join(r[0].as_deref().unwrap_or(""));
        dicom_object::open_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    // A truncated file never becomes an acknowledged instance.
    let trunc = dir.join("rtplan_truncated.dcm");
    let out = storescu(&node, &["-v"], &[&trunc]);
    let t = text(&out);
    assert!(!t.contains("(Success)"), "truncated plan acknowledged: {t}");
    assert_eq!(node.tmp_files(), 0);
}

#[test]
fn tls_associations_with_storescu() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&tmp.path().join("pki"), "hospital");
    let (key, cert) = pki.issue("hospital", "esorisk");
    let node = TestNode::start(&[
        ("ESORISK__DICOM__TLS__ENABLED", "true"),
        ("ESORISK__DICOM__TLS__CERTIFICATE", &cert),
        ("ESORISK__DICOM__TLS__PRIVATE_KEY", &key),
    ]);
    let files = synthetic_study(&tmp.path().join("s"), 1, 64, 1, 21);
    // The caller presents a certificate too; the node does not ask for
    // one unless client_ca_certificates is set.
    let (k, c) = pki.issue("hospital", "tps");
    let ca = pki.ca("hospital");
    let mut args = vec!["+tls", &k, &c, "+cf", &ca, "-aec", AE, "127.0.0.1"];
    let port = node.port.to_string();
    args.push(&port);
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = dcmtk("storescu", &args);
    assert!(out.status.success(), "TLS storescu: {}", text(&out));
    for f in &files {
        assert_stored(&node, f);
    }
    // Plain TCP is not spoken on a TLS port.
    let plain = dcmtk("echoscu", &["-aec", AE, "127.0.0.1", &port]);
    assert!(!plain.status.success());
}

/// Connections that open and then say nothing (no TLS handshake, no
/// association request) are closed after the read timeout, so they cannot
/// hold the association slots.
#[test]
fn silent_connections_do_not_hold_the_slots() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&tmp.path().join("pki"), "hospital");
    let (key, cert) = pki.issue("hospital", "esorisk");
    let ca = pki.ca("hospital");
    for tls in [false, true] {
        let mut env = vec![
            ("ESORISK__DICOM__MAX_ASSOCIATIONS", "2"),
            ("ESORISK__DICOM__READ_TIMEOUT_SECS", "2"),
        ];
        if tls {
            env.extend([
                ("ESORISK__DICOM__TLS__ENABLED", "true"),
                ("ESORISK__DICOM__TLS__CERTIFICATE", cert.as_str()),
                ("ESORISK__DICOM__TLS__PRIVATE_KEY", key.as_str()),
            ]);
        }
        let node = TestNode::start(&env);
        let silent: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(node.addr()).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_secs(4));
        let port = node.port.to_string();
        let mut args = vec!["-aec", AE, "127.0.0.1", port.as_str()];
        if tls {
            args = vec!["+tla", "+cf", &ca, "-aec", AE, "127.0.0.1", &port];
        }
        let echo = dcmtk("echoscu", &args);
        assert!(echo.status.success(), "tls {tls}: {}", text(&echo));
        let db = node.db_path();
        wait_for(|| {
            count(
                &db,
                "SELECT count(*) FROM associations WHERE outcome LIKE 'rejected:%'",
            ) == 2
        });
        if tls {
            assert_eq!(
                count(
                    &db,
                    "SELECT count(*) FROM associations WHERE outcome LIKE '%no TLS handshake%'"
                ),
                2
            );
        }
        drop(silent);
    }
}

/// An A-ASSOCIATE-RQ from `calling` for C-ECHO (context 1, implicit VR)
/// and RT Dose storage (context 3, explicit VR), for callers that write
/// their PDUs themselves.
fn echo_and_dose_request(calling: &str, max_pdu: u32) -> dicom_ul::pdu::Pdu {
    use dicom_ul::pdu::{AssociationRQ, Pdu, PresentationContextProposed, UserVariableItem};
    Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: AE.into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![
            PresentationContextProposed {
                id: 1,
                abstract_syntax: esorisk::dimse::VERIFICATION_SOP_CLASS.into(),
                transfer_syntaxes: vec![ts::IMPLICIT_VR_LE.into()],
            },
            PresentationContextProposed {
                id: 3,
                abstract_syntax: RT_DOSE.into(),
                transfer_syntaxes: vec![ts::EXPLICIT_VR_LE.into()],
            },
        ],
        user_variables: vec![
            UserVariableItem::MaxLength(max_pdu),
            UserVariableItem::ImplementationClassUID("1.2.3.4".into()),
        ],
    })
}

/// The next PDU from the node, and the length of its variable field.
fn next_pdu(socket: &mut std::net::TcpStream) -> (dicom_ul::pdu::Pdu, usize) {
    use std::io::Read;
    let mut header = [0u8; 6];
    socket.read_exact(&mut header).expect("PDU header");
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let mut whole = header.to_vec();
    whole.resize(6 + len, 0);
    socket.read_exact(&mut whole[6..]).expect("PDU body");
    let pdu = dicom_ul::pdu::read_pdu(&whole[..], 1 << 20, false)
        .expect("PDU")
        .expect("a whole PDU");
    (pdu, len)
}

/// Write PDUs to the node, encoded as they are.
fn send(socket: &mut std::net::TcpStream, pdus: Vec<dicom_ul::pdu::Pdu>) {
    use std::io::Write;
    let mut out = Vec::new();
    for pdu in &pdus {
        dicom_ul::pdu::write_pdu(&mut out, pdu).expect("encode");
    }
    socket.write_all(&out).expect("send");
}

/// A connection to the node with an association established by the
/// request of [`echo_and_dose_request`] (Verification on context 1, RT
/// Dose in Explicit VR Little Endian on context 3).
fn raw_association(node: &TestNode, calling: &str) -> std::net::TcpStream {
    let mut socket = std::net::TcpStream::connect(node.addr()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    send(&mut socket, vec![echo_and_dose_request(calling, 16_384)]);
    let (ac, _) = next_pdu(&mut socket);
    assert!(matches!(ac, dicom_ul::pdu::Pdu::AssociationAC(_)), "{ac:?}");
    socket
}

/// The command set of the node's next response, its fragments joined.
fn raw_response(socket: &mut std::net::TcpStream) -> Command {
    let mut bytes = Vec::new();
    loop {
        let (pdu, _) = next_pdu(socket);
        let dicom_ul::pdu::Pdu::PData { data } = pdu else {
            panic!("expected P-DATA, got {pdu:?}")
        };
        for pdv in data {
            bytes.extend_from_slice(&pdv.data);
            if pdv.is_last {
                return Command::decode(&bytes).expect("command");
            }
        }
    }
}

/// A caller may announce a maximum PDU length smaller than a response
/// command set (PS3.8 sets no lower bound); the responses then come in
/// fragments that fit it. dicom-ul's client cannot be held to 64 bytes, so
/// this caller writes its PDUs itself.
#[test]
fn a_caller_with_a_tiny_maximum_pdu_gets_its_responses_in_fragments() {
    use dicom_ul::pdu::{PDataValueType, Pdu};
    const MAX: u32 = 64;

    /// The response to a request: its command set's fragments, joined.
    fn response(socket: &mut std::net::TcpStream) -> (Command, usize) {
        let mut bytes = Vec::new();
        let mut fragments = 0;
        loop {
            let (pdu, len) = next_pdu(socket);
            assert!(len <= MAX as usize, "a PDU of {len} bytes");
            let Pdu::PData { data } = pdu else {
                panic!("expected P-DATA, got {pdu:?}")
            };
            for pdv in data {
                assert_eq!(pdv.value_type, PDataValueType::Command);
                fragments += 1;
                bytes.extend_from_slice(&pdv.data);
                if pdv.is_last {
                    return (Command::decode(&bytes).expect("command"), fragments);
                }
            }
        }
    }
    let node = TestNode::start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dose_path = rt_dose_file(tmp.path());
    let dose = DicomFile::read(&dose_path).expect("read");
    let mut socket = std::net::TcpStream::connect(node.addr()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    send(&mut socket, vec![echo_and_dose_request("SMALLPDU", MAX)]);
    let (ac, _) = next_pdu(&mut socket);
    assert!(matches!(ac, Pdu::AssociationAC(_)), "{ac:?}");

    let echo = esorisk::dimse::Command::echo_request(1);
    send(&mut socket, echo.to_pdus(1, 16_384));
    let (rsp, fragments) = response(&mut socket);
    assert_eq!(rsp.status, Some(status::SUCCESS), "{rsp:?}");
    assert!(fragments > 1, "{fragments} fragment");

    let rq = Command::store_request(2, RT_DOSE, &dose.sop_instance_uid);
    let mut pdus = rq.to_pdus(3, 16_384);
    pdus.extend(esorisk::dimse::pdata_pdus(
        3,
        PDataValueType::Data,
        &dose.data_set,
        16_384,
    ));
    send(&mut socket, pdus);
    let (rsp, fragments) = response(&mut socket);
    assert_eq!(rsp.status, Some(status::SUCCESS), "{rsp:?}");
    assert_eq!(rsp.message_id_being_responded_to, Some(2));
    assert_eq!(
        rsp.affected_sop_instance_uid.as_deref(),
        Some(dose.sop_instance_uid.as_str())
    );
    assert!(fragments > 1, "{fragments} fragment");

    send(&mut socket, vec![Pdu::ReleaseRQ]);
    let (rp, _) = next_pdu(&mut socket);
    assert_eq!(rp, Pdu::ReleaseRP);
    assert_stored(&node, &dose_path);
    let db = node.db_path();
    wait_for(|| {
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome = 'released'",
        ) == 1
    });
}

/// A caller whose first PDU is not an A-ASSOCIATE-RQ is refused, and the
/// record says what it sent in a few words, not as a dump of the PDU.
#[test]
fn a_connection_that_starts_with_data_is_refused_in_a_few_words() {
    use std::io::{Read, Write};
    let node = TestNode::start(&[]);
    // A P-DATA-TF of 16 KiB: one presentation data value, command, last.
    let value_len = 16 * 1024u32;
    let mut pdu = vec![0x04, 0];
    pdu.extend((value_len + 6).to_be_bytes());
    pdu.extend((value_len + 2).to_be_bytes());
    pdu.extend([1, 0x03]);
    pdu.extend(std::iter::repeat_n(0x41u8, value_len as usize));
    let mut socket = std::net::TcpStream::connect(node.addr()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    socket.write_all(&pdu).expect("send");
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    let db = node.db_path();
    wait_for(|| count(&db, "SELECT count(*) FROM associations") == 1);
    let rows = query(&db, "SELECT outcome FROM associations");
    assert_eq!(
        rows[0][0].as_deref(),
        Some("rejected: expected an A-ASSOCIATE-RQ, received P-DATA-TF")
    );
    node.assert_logged(&["association not established", "received P-DATA-TF"]);
    assert!(
        node.log().lines().all(|l| l.len() < 2_000),
        "a log line of {} bytes",
        node.log().lines().map(str::len).max().unwrap_or(0)
    );
    let echo = dcmtk(
        "echoscu",
        &["-aec", AE, "127.0.0.1", &node.port.to_string()],
    );
    assert!(echo.status.success(), "{}", text(&echo));
}

/// With `dicom.tls.client_ca_certificates`, only callers with a
/// certificate of those CAs get through the handshake.
#[test]
fn mutual_tls_lets_in_only_callers_with_a_trusted_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&tmp.path().join("pki"), "hospital");
    let (node_key, node_cert) = pki.issue("hospital", "esorisk");
    let (tps_key, tps_cert) = pki.issue("hospital", "tps");
    let other = Pki::new(&tmp.path().join("other"), "other");
    let (bad_key, bad_cert) = other.issue("other", "impostor");
    let ca = pki.ca("hospital");
    let node = TestNode::start(&[
        ("ESORISK__DICOM__TLS__ENABLED", "true"),
        ("ESORISK__DICOM__TLS__CERTIFICATE", &node_cert),
        ("ESORISK__DICOM__TLS__PRIVATE_KEY", &node_key),
        ("ESORISK__DICOM__TLS__CLIENT_CA_CERTIFICATES", &ca),
    ]);
    let port = node.port.to_string();
    let files = synthetic_study(&tmp.path().join("s"), 1, 64, 1, 22);
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let push = |tls: &[&str]| {
        let mut args = tls.to_vec();
        args.extend(["+cf", &ca, "-aec", AE, "127.0.0.1", &port]);
        args.extend(names.iter().map(String::as_str));
        dcmtk("storescu", &args)
    };
    let out = push(&["+tls", &bad_key, &bad_cert]);
    assert!(
        !out.status.success(),
        "a certificate of another CA: {}",
        text(&out)
    );
    let out = push(&["+tla"]);
    assert!(!out.status.success(), "no certificate: {}", text(&out));
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 0);
    // Each refusal is on record with the reason.
    let db = node.db_path();
    wait_for(|| {
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome LIKE 'rejected:%certificate%'",
        ) == 2
    });
    let out = push(&["+tls", &tps_key, &tps_cert]);
    assert!(
        out.status.success(),
        "a hospital certificate: {}",
        text(&out)
    );
    for f in &files {
        assert_stored(&node, f);
    }
    // The association names the certificate: its SHA-256 fingerprint, as
    // openssl prints it.
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            &tps_cert,
        ])
        .output()
        .expect("openssl");
    let printed = text(&out);
    let expected = printed.trim().rsplit('=').next().unwrap_or_default();
    assert_eq!(expected.len(), 95, "{printed}");
    wait_for(|| {
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome = 'released'",
        ) == 1
    });
    let rows = query(
        &db,
        "SELECT tls_client, tls_subject FROM associations WHERE outcome = 'released'",
    );
    assert_eq!(
        rows,
        [[Some(expected.to_string()), Some("CN=tps".to_string())]]
    );
    node.assert_logged(&["association accepted", expected, "tls_subject=\"CN=tps\""]);
}

#[test]
fn restart_after_a_crash_reconciles_index_and_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    let files = push_study(&node, &tmp.path().join("s"), 3, 31);
    node.kill();

    // A file removed by hand, and a complete file that reached the store
    // without its row (the crash window between rename and commit).
    let removed = uids(&files[0]);
    std::fs::remove_file(node.store_path(&removed.study, &removed.series, &removed.sop))
        .expect("rm");
    let extra = esorisk::testgen::write_set(&tmp.path().join("x"), "ct", 1, 64, 1, 77).expect("ct");
    let e = uids(&extra[0]);
    let dest = node.store_path(&e.study, &e.series, &e.sop);
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    std::fs::copy(&extra[0], &dest).expect("copy");

    let mut node = TestNode::start_in(&data_dir, &[]);
    assert!(
        node.log().contains("reconciling the index with the store"),
        "{}",
        node.log()
    );
    let db = node.db_path();
    let q = |sop: &str| {
        count(
            &db,
            &format!("SELECT count(*) FROM instances WHERE sop_instance_uid = '{sop}'"),
        )
    };
    assert_eq!(q(&removed.sop), 0, "row of the missing file dropped");
    assert_eq!(q(&e.sop), 1, "unindexed file indexed");
    let row = query(
        &db,
        &format!(
            "SELECT calling_ae, file_path FROM instances WHERE sop_instance_uid = '{}'",
            e.sop
        ),
    );
    assert_eq!(row[0][0], None, "recovered rows have no calling AE");
    assert_eq!(
        count(&db, "SELECT count(*) FROM instances"),
        files.len() as i64
    );
    assert!(node.terminate());
}

#[test]
fn json_logs_and_idle_timeout() {
    let node = TestNode::start(&[
        ("ESORISK__LOGGING__FORMAT", "json"),
        ("ESORISK__DICOM__READ_TIMEOUT_SECS", "1"),
    ]);
    let tmp = tempfile::tempdir().expect("tmp");
    let files = synthetic_study(&tmp.path().join("s"), 0, 64, 1, 41);
    assert!(storescu(&node, &["-aet", "JSONTPS"], &[&files[0]])
        .status
        .success());
    // An association that goes quiet is closed after the read timeout.
    let rt = runtime();
    rt.block_on(async {
        let contexts = verification_contexts();
        let assoc = send::associate(&node.addr(), "SLEEPY", AE, &contexts)
            .await
            .expect("associate");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(assoc);
    });
    wait_for(|| node.log().contains("SLEEPY") && node.log().contains("association ended"));
    let mut stored = None;
    let mut sleepy = None;
    for line in node.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        if v["message"] == "instance stored" {
            stored = Some(v.clone());
        }
        if v["message"] == "association ended" && v["calling_ae"] == "SLEEPY" {
            sleepy = Some(v.clone());
        }
    }
    let stored = stored.expect("instance stored line");
    assert_eq!(stored["calling_ae"], "JSONTPS");
    assert_eq!(stored["sop_class"], "RT Structure Set Storage");
    assert!(stored["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    for field in ["sop_instance_uid", "study_uid", "series_uid"] {
        assert!(
            stored[field]
                .as_str()
                .is_some_and(|u| esorisk::uid::validate(u).is_ok()),
            "{field}"
        );
    }
    let sleepy = sleepy.expect("SLEEPY ended");
    assert!(
        sleepy["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("read timeout")),
        "{sleepy}"
    );
}

#[test]
fn a_deleted_index_is_rebuilt_from_the_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    assert!(node.log().contains("new data directory"), "{}", node.log());
    let files = push_study(&node, &tmp.path().join("s"), 2, 61);
    assert!(node.terminate());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data_dir.join(format!("esorisk.db{suffix}")));
    }
    let node = TestNode::start_in(&data_dir, &[]);
    assert!(
        node.log().contains("indexing every stored instance"),
        "{}",
        node.log()
    );
    assert_eq!(
        count(&node.db_path(), "SELECT count(*) FROM instances"),
        files.len() as i64
    );
    for f in &files {
        let u = uids(f);
        assert_eq!(
            count(
                &node.db_path(),
                &format!(
                    "SELECT count(*) FROM instances WHERE sop_instance_uid = '{}'",
                    u.sop
                )
            ),
            1
        );
    }
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM studies"), 1);
}

/// The backup of OPERATIONS.md, done while the node runs: the database
/// with SQLite's online backup, then the files. Restored into an empty
/// data directory, the node indexes what arrived between the two copies.
#[test]
fn a_backup_taken_while_running_restores_every_instance() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    let first = push_study(&node, &tmp.path().join("a"), 2, 62);
    let backup = tmp.path().join("backup");
    std::fs::create_dir_all(&backup).expect("dir");
    let out = std::process::Command::new("sqlite3")
        .arg(node.db_path())
        .arg(format!(".backup '{}'", backup.join("esorisk.db").display()))
        .output()
        .expect("sqlite3 (run scripts/test to install it)");
    assert!(out.status.success(), "{}", text(&out));
    let second = push_study(&node, &tmp.path().join("b"), 2, 63);
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(data_dir.join("store"))
        .arg(&backup)
        .status()
        .expect("cp");
    assert!(copied.success());
    assert!(node.terminate());

    let restored = tmp.path().join("restored");
    std::fs::rename(&backup, &restored).expect("restore");
    let node = TestNode::start_in(&restored, &[]);
    node.assert_logged(&["no record of a clean shutdown; reconciling"]);
    let db = node.db_path();
    assert_eq!(count(&db, "SELECT count(*) FROM studies"), 2);
    assert_eq!(
        count(&db, "SELECT count(*) FROM instances"),
        (first.len() + second.len()) as i64
    );
    for f in first.iter().chain(&second) {
        let u = uids(f);
        assert_eq!(
            data_set(&node.store_path(&u.study, &u.series, &u.sop)),
            data_set(f),
            "{}",
            f.display()
        );
    }
    // What the database copy knew keeps its arrival record; the rest is
    // indexed without the association's calling AE.
    let first_ae = query(
        &db,
        &format!(
            "SELECT calling_ae FROM instances WHERE sop_instance_uid = '{}'",
            uids(&first[0]).sop
        ),
    );
    assert_eq!(first_ae[0][0].as_deref(), Some("STORESCU"), "{first_ae:?}");
    // A node that only stores says so (the pipeline is off in these tests).
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
        .arg("status")
        .env("ESORISK__STORAGE__DATA_DIR", &node.data_dir)
        .output()
        .expect("status");
    assert!(
        text(&status).contains("scoring: off (pipeline.enabled = false)")
            && text(&status).contains("problems: none"),
        "{}",
        text(&status)
    );
}

/// Damaged sessions: a recorded-style session (association request, C-ECHO,
/// two C-STOREs, release) is mutated 400 times with a fixed seed — bits
/// flipped, lengths and values overwritten, PDUs dropped, doubled, swapped
/// or cut short — and played at the node. Afterwards the node still
/// answers, no temporary file is left, every stored file is indexed and
/// every row has its file, and no line of the log is a panic or a dump.
#[test]
fn damaged_sessions_leave_the_node_answering_and_consistent() {
    use dicom_ul::pdu::{write_pdu, PDataValueType, Pdu};
    use esorisk::synth::rng::Rng;
    use std::io::{Read, Write};

    let node = TestNode::start(&[("ESORISK__DICOM__READ_TIMEOUT_SECS", "2")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dose = DicomFile::read(&rt_dose_file(tmp.path())).expect("read");
    let mut pdus = vec![echo_and_dose_request("FUZZ", 16_384)];
    pdus.extend(Command::echo_request(1).to_pdus(1, 16_384));
    for id in [2, 3] {
        pdus.extend(Command::store_request(id, RT_DOSE, &dose.sop_instance_uid).to_pdus(3, 16_384));
        pdus.extend(esorisk::dimse::pdata_pdus(
            3,
            PDataValueType::Data,
            &dose.data_set,
            16_384,
        ));
    }
    pdus.push(Pdu::ReleaseRQ);
    let session: Vec<Vec<u8>> = pdus
        .iter()
        .map(|p| {
            let mut b = Vec::new();
            write_pdu(&mut b, p).expect("encode");
            b
        })
        .collect();

    let mut rng = Rng::new(20261127);
    let mut pick = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    for _ in 0..400 {
        let mut s = session.clone();
        // The association request and the commands are where the parsing is.
        let k = match pick(4) {
            0 | 1 => 0,
            2 => 1,
            _ => pick(s.len()),
        };
        match pick(8) {
            0 => {
                for _ in 0..=pick(8) {
                    let i = pick(s[k].len());
                    s[k][i] ^= 1 << pick(8);
                }
            }
            1 => {
                let v = [0u32, 1, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000][pick(5)].to_be_bytes();
                let i = pick(s[k].len());
                let end = (i + 4).min(s[k].len());
                s[k][i..end].copy_from_slice(&v[..end - i]);
            }
            2 => {
                let cut = pick(s[k].len());
                s[k].truncate(cut);
                s.truncate(k + 1);
            }
            3 => {
                s.remove(k);
            }
            4 => {
                let copy = s[k].clone();
                s.insert(k, copy);
            }
            5 => {
                let len = [0u32, 1, 4, 0xffff_ffff, pick(1 << 20) as u32][pick(5)];
                s[k][2..6].copy_from_slice(&len.to_be_bytes());
            }
            6 => {
                let j = pick(s.len());
                s.swap(k, j);
            }
            _ => {
                let i = pick(s[k].len());
                for b in s[k].iter_mut().skip(i).take(1 + pick(64)) {
                    *b = pick(256) as u8;
                }
            }
        }
        let bytes: Vec<u8> = s.concat();
        let Ok(mut socket) = std::net::TcpStream::connect(node.addr()) else {
            continue;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = socket.write_all(&bytes);
        let _ = socket.shutdown(std::net::Shutdown::Write);
        let _ = socket.read_to_end(&mut Vec::new());
    }

    let echo = dcmtk(
        "echoscu",
        &["-aec", AE, "127.0.0.1", &node.port.to_string()],
    );
    assert!(echo.status.success(), "{}", text(&echo));
    wait_for(|| node.tmp_files() == 0);
    let db = node.db_path();
    let indexed: Vec<String> = query(&db, "SELECT file_path FROM instances")
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    let stored = node.stored_files();
    assert_eq!(indexed.len(), stored.len(), "{indexed:?} vs {stored:?}");
    for p in &indexed {
        assert!(
            node.data_dir.join(p).is_file(),
            "{p} indexed without its file"
        );
    }
    let log = node.log();
    assert!(!log.contains("panicked"), "a panic in the log");
    assert!(
        log.lines().all(|l| l.len() < 4_000),
        "a log line of {} bytes",
        log.lines().map(str::len).max().unwrap_or(0)
    );
    // Something got through, and something was refused: the mutations reach
    // both sides.
    assert!(
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome = 'released'"
        ) > 0
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome LIKE 'rejected:%'"
        ) > 0
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome LIKE 'aborted:%'"
        ) > 0
    );
}

/// A deflated data set whose stream does not inflate, ends early, or is
/// followed by other bytes cannot be understood (C000): sending it again
/// would not help, so it is not "out of resources" (A700).
#[test]
fn deflate_streams_that_do_not_inflate_cleanly_are_not_understood() {
    use std::io::Write;
    let node = TestNode::start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dose = DicomFile::read(&rt_dose_file(tmp.path())).expect("read");
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&dose.data_set).expect("deflate");
    let z = z.finish().expect("deflate");
    let mut trailing = z.clone();
    trailing.extend_from_slice(b"trailing garbage");
    let mut corrupt = z.clone();
    for b in &mut corrupt[z.len() / 4..z.len() / 4 + 64] {
        *b = !*b;
    }
    let rt = runtime();
    rt.block_on(async {
        let contexts = vec![(RT_DOSE, vec![ts::DEFLATED_EXPLICIT_VR_LE])];
        let mut assoc = send::associate(&node.addr(), "RUSTSCU", AE, &contexts)
            .await
            .expect("associate");
        let pc = send::context_id(&assoc, RT_DOSE, ts::DEFLATED_EXPLICIT_VR_LE).expect("pc");
        let rq = Command::store_request(1, RT_DOSE, &dose.sop_instance_uid);
        for (what, data) in [
            ("cut in half", &z[..z.len() / 2]),
            ("corrupt", &corrupt[..]),
            ("trailing bytes", &trailing[..]),
            ("not deflated", &dose.data_set[..]),
        ] {
            send::send_message(&mut assoc, pc, &rq, Some(data))
                .await
                .expect("send");
            let rsp = send::receive_command(&mut assoc).await.expect("response");
            assert_eq!(
                rsp.status,
                Some(status::CANNOT_UNDERSTAND),
                "{what}: {rsp:?}"
            );
            assert!(
                rsp.error_comment.as_deref().is_some_and(|c| !c.is_empty()),
                "{what}: comment"
            );
        }
        assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 0);
        // The same stream, whole and alone, is stored.
        send::send_message(&mut assoc, pc, &rq, Some(&z))
            .await
            .expect("send");
        let rsp = send::receive_command(&mut assoc).await.expect("response");
        assert_eq!(rsp.status, Some(status::SUCCESS), "{rsp:?}");
        assoc.release().await.expect("release");
    });
    assert_eq!(count(&node.db_path(), "SELECT count(*) FROM instances"), 1);
    assert_eq!(node.tmp_files(), 0);
}

/// A calling AE title padded with NULs (as some older peers send it) is let
/// in by an allow-list that names it, and is recorded without the padding:
/// in the index, the association log and the stored file's Sending AE.
#[test]
fn a_nul_padded_calling_ae_title_is_admitted_and_recorded_without_padding() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("site.toml");
    std::fs::write(
        &cfg,
        "[dicom]\nallowed_callers = [ { ae_title = \"NULTPS\" } ]\n",
    )
    .expect("cfg");
    let node = TestNode::start_with_args(&["--config", &cfg.display().to_string()], &[]);
    let dose_path = rt_dose_file(tmp.path());
    let dose = DicomFile::read(&dose_path).expect("read");
    let mut socket = raw_association(&node, "NULTPS\0\0\0\0\0\0\0\0\0\0");
    let rq = Command::store_request(1, RT_DOSE, &dose.sop_instance_uid);
    let mut pdus = rq.to_pdus(3, 16_384);
    pdus.extend(esorisk::dimse::pdata_pdus(
        3,
        dicom_ul::pdu::PDataValueType::Data,
        &dose.data_set,
        16_384,
    ));
    send(&mut socket, pdus);
    let rsp = raw_response(&mut socket);
    assert_eq!(rsp.status, Some(status::SUCCESS), "{rsp:?}");
    send(&mut socket, vec![dicom_ul::pdu::Pdu::ReleaseRQ]);
    assert_eq!(next_pdu(&mut socket).0, dicom_ul::pdu::Pdu::ReleaseRP);

    let db = node.db_path();
    wait_for(|| {
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome = 'released'",
        ) == 1
    });
    assert_eq!(
        query(&db, "SELECT calling_ae FROM associations"),
        vec![vec![Some("NULTPS".to_string())]]
    );
    assert_eq!(
        query(&db, "SELECT calling_ae FROM instances"),
        vec![vec![Some("NULTPS".to_string())]]
    );
    let u = uids(&dose_path);
    let stored =
        dicom_object::open_file(node.store_path(&u.study, &u.series, &u.sop)).expect("stored file");
    assert_eq!(
        stored.meta().sending_application_entity_title(),
        Some("NULTPS")
    );
}

/// Requests other than C-STORE and C-ECHO are answered with their own
/// response (the request's Command Field with bit 15 set), status 0211 and
/// an Error Comment, with or without a data set; the N- responses name the
/// instance with the Affected UIDs. None of them counts as an instance.
#[test]
fn unsupported_operations_get_their_own_failure_response() {
    use esorisk::dimse::DATA_SET_PRESENT;
    let node = TestNode::start(&[]);
    // A C-FIND identifier (and an N-SET modification list): one element.
    let mut data = vec![0x08, 0x00, 0x52, 0x00, b'C', b'S', 6, 0];
    data.extend_from_slice(b"STUDY ");
    let find = Command {
        command_field: 0x0020,
        message_id: Some(2),
        affected_sop_class_uid: Some(CT.into()),
        priority: Some(0),
        data_set_type: DATA_SET_PRESENT,
        ..Default::default()
    };
    let set = Command {
        command_field: 0x0120,
        message_id: Some(3),
        requested_sop_class_uid: Some(CT.into()),
        requested_sop_instance_uid: Some("1.2.3.4".into()),
        data_set_type: DATA_SET_PRESENT,
        ..Default::default()
    };
    let action = Command {
        command_field: 0x0130,
        message_id: Some(4),
        requested_sop_class_uid: Some(CT.into()),
        requested_sop_instance_uid: Some("1.2.3.5".into()),
        data_set_type: esorisk::dimse::NO_DATA_SET,
        ..Default::default()
    };
    let rt = runtime();
    rt.block_on(async {
        let contexts = vec![(CT, vec![ts::EXPLICIT_VR_LE])];
        let mut assoc = send::associate(&node.addr(), "RUSTSCU", AE, &contexts)
            .await
            .expect("associate");
        let pc = send::context_id(&assoc, CT, ts::EXPLICIT_VR_LE).expect("pc");
        for (rq, with_data, field, instance) in [
            (&find, true, 0x8020, None),
            (&set, true, 0x8120, Some("1.2.3.4")),
            (&action, false, 0x8130, Some("1.2.3.5")),
        ] {
            let data = with_data.then_some(&data[..]);
            send::send_message(&mut assoc, pc, rq, data)
                .await
                .expect("send");
            let rsp = send::receive_command(&mut assoc).await.expect("response");
            let what = format!("{:#06x}", rq.command_field);
            assert_eq!(rsp.command_field, field, "{what}: {rsp:?}");
            assert_eq!(rsp.status, Some(status::UNRECOGNIZED_OPERATION), "{what}");
            assert_eq!(rsp.message_id_being_responded_to, rq.message_id, "{what}");
            assert!(
                rsp.error_comment.as_deref().is_some_and(|c| !c.is_empty()),
                "{what}: comment"
            );
            assert_eq!(rsp.affected_sop_class_uid.as_deref(), Some(CT), "{what}");
            assert_eq!(rsp.affected_sop_instance_uid.as_deref(), instance, "{what}");
            assert!(!rsp.has_data_set(), "{what}");
        }
        assoc.release().await.expect("release");
    });
    let db = node.db_path();
    wait_for(|| {
        count(
            &db,
            "SELECT count(*) FROM associations WHERE outcome = 'released'",
        ) == 1
    });
    let rows = query(
        &db,
        "SELECT instances_stored, instances_failed FROM associations",
    );
    assert_eq!(rows, vec![vec![Some("0".into()), Some("0".into())]]);
    assert!(!node.log().contains("instance refused"), "{}", node.log());
    assert_eq!(node.tmp_files(), 0);
}

/// A request without a Message ID cannot be answered (the response must
/// name it): like any other malformed command set, it ends the association
/// with an A-ABORT, and nothing is stored. A-ABORTs for a PDU out of place
/// say so: unexpected PDU (2), or unrecognized PDU (1) for an unknown type.
#[test]
fn malformed_requests_and_stray_pdus_are_aborted_with_a_reason() {
    use dicom_ul::pdu::{AbortRQServiceProviderReason as Reason, AbortRQSource, Pdu};
    let node = TestNode::start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dose = DicomFile::read(&rt_dose_file(tmp.path())).expect("read");

    let mut socket = raw_association(&node, "NOMSGID");
    let mut rq = Command::store_request(1, RT_DOSE, &dose.sop_instance_uid);
    rq.message_id = None;
    let mut pdus = rq.to_pdus(3, 16_384);
    pdus.extend(esorisk::dimse::pdata_pdus(
        3,
        dicom_ul::pdu::PDataValueType::Data,
        &dose.data_set,
        16_384,
    ));
    send(&mut socket, pdus);
    let (pdu, _) = next_pdu(&mut socket);
    assert!(
        matches!(
            pdu,
            Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(_)
            }
        ),
        "{pdu:?}"
    );
    let db = node.db_path();
    wait_for(|| {
        count(
            &db,
            "SELECT count(*) FROM associations WHERE calling_ae = 'NOMSGID' AND outcome LIKE 'aborted:%MessageID%'",
        ) == 1
    });
    assert_eq!(count(&db, "SELECT count(*) FROM instances"), 0);

    // An A-ASSOCIATE-RQ within an association: unexpected.
    let mut socket = raw_association(&node, "STRAY");
    send(&mut socket, vec![echo_and_dose_request("STRAY", 16_384)]);
    assert_eq!(
        next_pdu(&mut socket).0,
        Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(Reason::UnexpectedPdu)
        }
    );
    // A PDU of a type PS3.8 does not define: unrecognized.
    let mut socket = raw_association(&node, "STRAY");
    {
        use std::io::Write;
        socket
            .write_all(&[0x0A, 0, 0, 0, 0, 4, 0, 0, 0, 0])
            .expect("send");
    }
    assert_eq!(
        next_pdu(&mut socket).0,
        Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(Reason::UnrecognizedPdu)
        }
    );
}

/// Where the last acknowledgement put an instance is where it stays:
/// an instance re-sent into another study keeps its new place through a
/// crash that brought its old file back (an unlink is not durable until
/// its directory is synced), and the series it left goes; a removal whose
/// end was never recorded does not delete an instance stored since at the
/// same path; and rows of files lost by hand go with their series.
#[test]
fn instances_stay_where_the_last_acknowledgement_put_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    let files = push_study(&node, &tmp.path().join("s"), 2, 53);
    let db = node.db_path();
    let plan = files
        .iter()
        .find(|f| f.ends_with("rtplan.dcm"))
        .expect("plan")
        .clone();
    let old = uids(&plan);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM instances WHERE series_instance_uid = '{}'",
                old.series
            ),
        ),
        1,
        "the plan is alone in its series"
    );
    // The plan sent again into another study and series.
    let mut obj = dicom_object::open_file(&plan).expect("open");
    for (tag, uid) in [
        (dicom_dictionary_std::tags::STUDY_INSTANCE_UID, "1.2.3.999"),
        (
            dicom_dictionary_std::tags::SERIES_INSTANCE_UID,
            "1.2.3.999.1",
        ),
    ] {
        obj.put(DataElement::new(
            tag,
            VR::UI,
            dicom_core::PrimitiveValue::from(uid),
        ));
    }
    let moved = tmp.path().join("moved.dcm");
    obj.write_to_file(&moved).expect("write");
    let out = storescu(&node, &[], &[moved.as_path()]);
    assert!(out.status.success(), "{}", text(&out));
    let old_path = node.store_path(&old.study, &old.series, &old.sop);
    assert!(!old_path.exists(), "the old file is removed at once");
    let where_ = || {
        query(
            &db,
            &format!(
                "SELECT study_instance_uid FROM instances WHERE sop_instance_uid = '{}'",
                old.sop
            ),
        )
    };
    assert_eq!(where_(), vec![vec![Some("1.2.3.999".to_string())]]);
    let series_rows = |uid: &str| {
        count(
            &db,
            &format!("SELECT count(*) FROM series WHERE series_instance_uid = '{uid}'"),
        )
    };
    assert_eq!(
        series_rows(&old.series),
        0,
        "the series it left went with it"
    );

    // A crash that brings the old file back.
    std::fs::copy(&plan, &old_path).expect("old file back");
    node.kill();
    let mut node = TestNode::start_in(&data_dir, &[]);
    node.assert_logged(&["removed the old files of re-sent instances"]);
    assert_eq!(where_(), vec![vec![Some("1.2.3.999".to_string())]]);
    assert!(!old_path.exists());
    assert_eq!(count(&db, "SELECT count(*) FROM superseded_files"), 0);

    // A removal of the study whose end was never recorded, listing a file
    // that an instance stored since holds.
    assert!(node.terminate());
    let ct = files
        .iter()
        .find(|f| uids(f).sop_class == "1.2.840.10008.5.1.4.1.1.2")
        .expect("ct");
    let c = uids(ct);
    let ct_rel: String = query(
        &db,
        &format!(
            "SELECT file_path FROM instances WHERE sop_instance_uid = '{}'",
            c.sop
        ),
    )[0][0]
        .clone()
        .expect("path");
    execute(
        &db,
        &format!(
            "INSERT INTO removals (study_instance_uid, started_at, files) \
             VALUES ('{}', '2026-01-01T00:00:00.000Z', '[\"{ct_rel}\"]')",
            c.study
        ),
    );
    let mut node = TestNode::start_in(&data_dir, &[]);
    assert!(
        data_dir.join(&ct_rel).is_file(),
        "an acknowledged file deleted"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM removals"), 0);

    // The CT series' files lost by hand while the node was down.
    node.kill();
    std::fs::remove_dir_all(data_dir.join(&ct_rel).parent().expect("series dir")).expect("rm");
    let mut node = TestNode::start_in(&data_dir, &[]);
    assert_eq!(
        series_rows(&c.series),
        0,
        "a series without instances listed"
    );
    assert!(node.terminate());
}

/// The admin commands pointed at a data directory without a database say
/// so, create nothing there, and exit non-zero; bad arguments are errors,
/// not panics; settings from the environment stay as typed.
#[test]
fn admin_commands_refuse_a_data_directory_without_a_database() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = |dir: &Path, args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_esorisk"))
            .args(args)
            .env("ESORISK__STORAGE__DATA_DIR", dir)
            .envs(env.iter().copied())
            .output()
            .expect("esorisk");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let nowhere = tmp.path().join("mistyped");
    for args in [
        &["studies"][..],
        &["jobs"],
        &["retry", "1"],
        &["rescore", "--received-within-days", "1"],
        &["purge", "--older-than", "30"],
    ] {
        let (code, out) = run(&nowhere, args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(out.contains("no esorisk database at"), "{args:?}: {out}");
        assert!(!nowhere.exists(), "{args:?} created the directory");
    }
    let (code, out) = run(&nowhere, &["status", "--check"], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("problem: no esorisk database at"), "{out}");

    // A node's data directory: arguments out of range are errors.
    let data_dir = tmp.path().join("var");
    let mut node = TestNode::start_in(&data_dir, &[]);
    assert!(node.terminate());
    for (args, says) in [
        (&["retry", "999"][..], "no job 999"),
        (&["jobs", "--state", "daed"], "one of queued"),
        (
            &["rescore", "--received-within-days", "nan"],
            "number of days",
        ),
    ] {
        let (code, out) = run(&data_dir, args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
    let (code, out) = run(
        &data_dir,
        &["purge", "--older-than", "1e15", "--dry-run"],
        &[],
    );
    assert_eq!(code, Some(0), "{out}");
    // An AE title of digits stays what was typed.
    let (code, out) = run(
        &data_dir,
        &["settings"],
        &[("ESORISK__DICOM__AE_TITLE", "00042")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ae_title = \"00042\""), "{out}");
}
