//! The returned objects on a synthetic study with CT: the RT Structure Set
//! with the learned ROI and the risk SR, checked with dciodvfy and dsrdump
//! and read back with esorisk's own structure set reader.

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use esorisk::receive::sop;
use esorisk::report::rtstruct::{learned_roi_rtstruct, DEFAULT_ROI_NAME, LEARNED_ROI_NUMBER};
use esorisk::report::sr::{not_scored_sr, risk_sr, RiskReport, CODING_SCHEME};
use esorisk::report::ReportInputs;
use esorisk::rt::attr;
use esorisk::rt::names::{self, Organ};
use esorisk::rt::{structure, study};

/// Whether the DICOM validators are installed; says so when they are not.
fn validators() -> bool {
    let missing: Vec<&str> = ["dciodvfy", "dsrdump"]
        .into_iter()
        .filter(|t| Command::new(t).arg("--version").output().is_err())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: {} not installed (packages dicom3tools, dcmtk)",
            missing.join(", ")
        );
    }
    missing.is_empty()
}

/// dciodvfy's output for a file (printed), and its lines that say Error.
fn dciodvfy(f: &Path) -> Vec<String> {
    let o = Command::new("dciodvfy").arg(f).output().expect("dciodvfy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("dciodvfy {}:\n{text}", f.display());
    text.lines()
        .filter(|l| l.contains("Error"))
        .map(String::from)
        .collect()
}

/// dsrdump's output, with all codes, long values and referenced UIDs;
/// fails the test unless it exits 0.
fn dsrdump(f: &Path) -> String {
    let o = Command::new("dsrdump")
        .args(["+Pc", "+Pl", "+Pu"])
        .arg(f)
        .output()
        .expect("dsrdump");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "dsrdump {}:\n{text}", f.display());
    text
}

fn write(obj: &FileDicomObject<InMemDicomObject>, path: &Path) -> PathBuf {
    obj.write_to_file(path).expect("write");
    path.to_path_buf()
}

fn uid(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    attr::string(obj, tag).expect("uid")
}

#[test]
fn returned_objects_validate_and_read_back() {
    if !validators() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("cohort");
    esorisk::synth::generate_cohort(
        &data,
        &[(esorisk::synth::Hospital::preset("hospital1"), 1)],
        7,
        1.0,
        true,
    )
    .expect("synth");
    let patient = std::fs::read_dir(&data)
        .expect("cohort dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.ends_with("truth"))
        .expect("patient dir");
    let s = study::load(std::slice::from_ref(&patient), &Default::default()).expect("load");
    let objects: Vec<FileDicomObject<InMemDicomObject>> = s
        .objects
        .iter()
        .map(|o| esorisk::rt::open(&o.path).expect("open"))
        .collect();
    let input = ReportInputs::from_objects(&objects).expect("inputs");
    let ct_uids: Vec<String> = objects
        .iter()
        .filter(|o| attr::string(o, tags::SOP_CLASS_UID).as_deref() == Some(sop::CT_IMAGE))
        .map(|o| uid(o, tags::SOP_INSTANCE_UID))
        .collect();
    assert!(!ct_uids.is_empty(), "the synthetic study has CT");
    assert_eq!(input.ct_slices.len(), ct_uids.len());
    assert_eq!(input.evidence.len(), objects.len());
    let dose_for = s
        .dose
        .info
        .frame_of_reference_uid
        .clone()
        .expect("dose FoR");
    assert_eq!(
        input.frame_of_reference_uid.as_deref(),
        Some(dose_for.as_str())
    );

    // The esophagus on the dose grid, with holes punched into it so that
    // planes carry outer contours and holes.
    let grid = &s.dose.grid;
    let ss = s.structures.as_ref().expect("structures");
    let eso = names::match_organ(Organ::Esophagus, &ss.rois).expect("esophagus");
    let roi = ss
        .rois
        .iter()
        .find(|r| r.info.number == eso.roi_number)
        .expect("roi");
    let mut mask = roi.rasterize(grid, 1).centre_mask(grid);
    let full = mask.clone();
    let mut holes = 0;
    for k in 0..grid.nz() {
        for j in 1..grid.ny - 1 {
            for i in 1..grid.nx - 1 {
                let interior = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
                    .iter()
                    .all(|(a, b)| full[grid.index(*a, *b, k)]);
                if interior && full[grid.index(i, j, k)] && (i + j + k) % 4 == 0 {
                    mask[grid.index(i, j, k)] = false;
                    holes += 1;
                }
            }
        }
    }
    let voxels = mask.iter().filter(|v| **v).count();
    assert!(voxels > 100 && holes > 0, "{voxels} voxels, {holes} holes");

    // The RT Structure Set.
    let rs = learned_roi_rtstruct(&input, grid, &mask, DEFAULT_ROI_NAME).expect("rtstruct");
    let rs_path = write(&rs, &tmp.path().join("learned_roi.dcm"));
    let errors = dciodvfy(&rs_path);
    assert!(errors.is_empty(), "RTSTRUCT: {errors:#?}");
    assert_eq!(
        uid(&rs, tags::STUDY_INSTANCE_UID),
        input.study_instance_uid,
        "joins the input study"
    );
    assert_eq!(uid(&rs, tags::FRAME_OF_REFERENCE_UID), dose_for);
    assert_eq!(
        attr::string(&rs, tags::PATIENT_ID),
        attr::string(&objects[0], tags::PATIENT_ID)
    );
    let back = structure::read(&rs_path).expect("read back");
    assert_eq!(back.frame_of_reference_uids, vec![dose_for.clone()]);
    assert_eq!(back.rois.len(), 1);
    assert_eq!(back.rois[0].info.number, LEARNED_ROI_NUMBER);
    assert_eq!(back.rois[0].info.name, DEFAULT_ROI_NAME);
    let again = back.rois[0].rasterize(grid, 1).centre_mask(grid);
    let both = mask.iter().zip(&again).filter(|(a, b)| **a && **b).count();
    let dice = 2.0 * both as f64 / (voxels + again.iter().filter(|v| **v).count()) as f64;
    eprintln!("learned ROI: {voxels} voxels, {holes} holes punched, Dice after round trip {dice}");
    assert!(dice >= 0.99, "Dice {dice}");
    assert!(again == mask, "the round trip gives back the mask exactly");
    // Contours reference CT slices that were received, on their own plane.
    assert!(!back.contour_image_uids.is_empty());
    assert!(back.contour_image_uids.iter().all(|u| ct_uids.contains(u)));
    let mut linked = 0;
    for rc in attr::items(&rs, tags::ROI_CONTOUR_SEQUENCE) {
        for c in attr::items(rc, tags::CONTOUR_SEQUENCE) {
            let z = attr::floats(c, tags::CONTOUR_DATA).expect("data")[2];
            for img in attr::items(c, tags::CONTOUR_IMAGE_SEQUENCE) {
                let u = uid(img, tags::REFERENCED_SOP_INSTANCE_UID);
                let slice = input
                    .ct_slices
                    .iter()
                    .find(|s| s.sop_instance_uid == u)
                    .expect("a received CT slice");
                assert!((slice.z - z).abs() < 1.25 + 1e-6, "{} vs {z}", slice.z);
                linked += 1;
            }
        }
    }
    assert!(linked > 0, "no contour references a CT slice");

    // An empty mask gives an ROI without contours, still valid.
    let empty = learned_roi_rtstruct(&input, grid, &vec![false; grid.len()], DEFAULT_ROI_NAME)
        .expect("empty rtstruct");
    let empty_path = write(&empty, &tmp.path().join("empty_roi.dcm"));
    let errors = dciodvfy(&empty_path);
    assert!(errors.is_empty(), "empty RTSTRUCT: {errors:#?}");
    let back = structure::read(&empty_path).expect("read empty");
    assert_eq!(back.rois.len(), 1);
    assert!(back.rois[0].planes.is_empty());
    assert!(learned_roi_rtstruct(&input, grid, &mask[1..], "X").is_err());

    // The risk SR, referencing the structure set.
    let result = RiskReport {
        risk: 0.2345,
        model_name: "esorisk dosiomics".into(),
        model_version: "dosiomics-v2".into(),
        esophagus_dmean_gy: Some(23.45678),
        esophagus_v35_pct: Some(31.5),
        esophagus_v50_pct: Some(12.25),
        esophagus_v60_pct: Some(0.0),
        esophagus_v70_pct: Some(0.0),
        esophagus_lkb_ntcp: Some(0.1875),
        roi_volume_cc: Some(4.321),
        roi_mean_gy: Some(41.75),
        features: vec![
            ("glcm_joint_entropy".into(), 5.4321),
            ("firstorder_p90_gy".into(), 57.125),
        ],
        rtstruct_ref: Some((
            uid(&rs, tags::SERIES_INSTANCE_UID),
            uid(&rs, tags::SOP_INSTANCE_UID),
        )),
        predecessor: None,
        notes: vec!["2 RT Plans with their own doses: \"A\" (20250101000000), \"B\" (20250301000000); the latest, \"B\", is scored".into()],
    };
    let sr = risk_sr(&input, &result).expect("sr");
    let sr_path = write(&sr, &tmp.path().join("risk_sr.dcm"));
    let errors = dciodvfy(&sr_path);
    assert!(errors.is_empty(), "SR: {errors:#?}");
    let dump = dsrdump(&sr_path);
    eprintln!("dsrdump:\n{dump}");
    for needle in [
        "0.2345",
        "Imaging Measurement Report",
        "en-US",
        "Esophagitis",
        "Esophagus",
        CODING_SCHEME,
        "23.45678",
        "(ESR0016,99ESORISK,\"Esophagus V70Gy\")=\"0\"",
        "(ESR0017,99ESORISK,\"Esophagus LKB NTCP\")=\"0.1875\"",
        "glcm_joint_entropy = 5.4321",
        "Research result from a model trained on synthetic data",
        "(ESR0001,99ESORISK,\"Probability of grade >= 2 radiation esophagitis\")=\"0.2345\"",
        "(130488,DCM,\"Region in Space\")",
        "(ESR0004,99ESORISK,\"Note on the inputs\")=\"2 RT Plans with their own doses",
        &uid(&rs, tags::SOP_INSTANCE_UID),
    ] {
        assert!(dump.contains(needle), "dsrdump lacks {needle:?}");
    }
    assert_eq!(uid(&sr, tags::STUDY_INSTANCE_UID), input.study_instance_uid);
    assert!(
        sr.meta()
            .implementation_version_name
            .as_deref()
            .map_or(0, |v| v.trim_end().len())
            <= 16
    );
    // Evidence: every input instance, and the structure set as other evidence.
    let listed: Vec<String> = attr::items(&sr, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .iter()
        .flat_map(|st| attr::items(st, tags::REFERENCED_SERIES_SEQUENCE))
        .flat_map(|se| attr::items(se, tags::REFERENCED_SOP_SEQUENCE))
        .map(|r| uid(r, tags::REFERENCED_SOP_INSTANCE_UID))
        .collect();
    assert_eq!(listed.len(), objects.len());
    for o in &objects {
        assert!(listed.contains(&uid(o, tags::SOP_INSTANCE_UID)));
    }
    assert_eq!(
        attr::items(&sr, tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE).len(),
        1
    );

    // A later SR names the first as its predecessor.
    let second = risk_sr(
        &input,
        &RiskReport {
            predecessor: Some((
                uid(&sr, tags::SERIES_INSTANCE_UID),
                uid(&sr, tags::SOP_INSTANCE_UID),
            )),
            rtstruct_ref: None,
            ..result.clone()
        },
    )
    .expect("second sr");
    let second_path = write(&second, &tmp.path().join("risk_sr_2.dcm"));
    let errors = dciodvfy(&second_path);
    assert!(errors.is_empty(), "second SR: {errors:#?}");
    dsrdump(&second_path);
    let pred = attr::items(&second, tags::PREDECESSOR_DOCUMENTS_SEQUENCE);
    assert_eq!(pred.len(), 1);

    // Values that are not numbers are refused.
    assert!(risk_sr(
        &input,
        &RiskReport {
            risk: 1.5,
            ..result.clone()
        }
    )
    .is_err());
    assert!(risk_sr(
        &input,
        &RiskReport {
            esophagus_dmean_gy: Some(f64::NAN),
            ..result.clone()
        }
    )
    .is_err());

    // Not scored.
    let reason = "no esophagus contour in the RT Structure Set";
    let ns = not_scored_sr(&input, reason);
    let ns_path = write(&ns, &tmp.path().join("not_scored.dcm"));
    let errors = dciodvfy(&ns_path);
    assert!(errors.is_empty(), "not-scored SR: {errors:#?}");
    let dump = dsrdump(&ns_path);
    assert!(dump.contains(reason), "{dump}");
}

/// An RT Dose header (no pixel data) with Specific Character Set `charset`
/// and Patient Name the bytes `name` as they would be received, plus
/// `extra` text attributes; written to `dir` and read back as the
/// pipeline reads its inputs.
fn received_dose(
    dir: &Path,
    charset: &str,
    name: &[u8],
    extra: &[(dicom_core::Tag, dicom_core::VR, &str)],
) -> FileDicomObject<InMemDicomObject> {
    use dicom_core::VR;
    use esorisk::rt::write::{put_str, with_meta};
    let mut padded = name.to_vec();
    if padded.len() % 2 == 1 {
        padded.push(b' ');
    }
    // Written as a placeholder, then replaced by the bytes themselves:
    // dicom-rs would encode a Rust string in a character set of its own.
    let placeholder = "Q".repeat(padded.len());
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, charset);
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, sop::RT_DOSE);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, "2.25.7001");
    put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, "2.25.7002");
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, "2.25.7003");
    put_str(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, "2.25.7004");
    put_str(&mut o, tags::MODALITY, VR::CS, "RTDOSE");
    put_str(&mut o, tags::PATIENT_ID, VR::LO, "CS-1");
    put_str(&mut o, tags::PATIENT_NAME, VR::PN, &placeholder);
    for (tag, vr, v) in extra {
        put_str(&mut o, *tag, *vr, v);
    }
    let file = with_meta(
        o,
        sop::RT_DOSE,
        "2.25.7001",
        esorisk::store::ts::EXPLICIT_VR_LE,
    );
    let path = dir.join("received_dose.dcm");
    file.write_to_file(&path).expect("write input");
    let mut bytes = std::fs::read(&path).expect("read input");
    let at: Vec<usize> = bytes
        .windows(padded.len())
        .enumerate()
        .filter(|(_, w)| *w == placeholder.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the placeholder is written once");
    bytes[at[0]..at[0] + padded.len()].copy_from_slice(&padded);
    std::fs::write(&path, bytes).expect("patch input");
    dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&path)
        .expect("read back input")
}

/// The returned SR and RT Structure Set for one received object, each
/// written and read back.
fn returned(dir: &Path, input: FileDicomObject<InMemDicomObject>) -> Vec<(String, Vec<u8>)> {
    use esorisk::rt::grid::Grid;
    let inputs = ReportInputs::from_objects(&[input]).expect("inputs");
    let grid = Grid::uniform([0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [4, 4, 2]);
    let mut mask = vec![false; grid.len()];
    mask[grid.index(1, 1, 0)] = true;
    let outputs = [
        ("sr", not_scored_sr(&inputs, "test")),
        (
            "rtstruct",
            learned_roi_rtstruct(&inputs, &grid, &mask, DEFAULT_ROI_NAME).expect("rtstruct"),
        ),
    ];
    outputs
        .iter()
        .map(|(kind, o)| {
            let path = dir.join(format!("{kind}.dcm"));
            o.write_to_file(&path).expect("write output");
            (kind.to_string(), std::fs::read(&path).expect("read output"))
        })
        .collect()
}

fn read_output(dir: &Path, kind: &str, bytes: &[u8]) -> FileDicomObject<InMemDicomObject> {
    let path = dir.join(format!("{kind}-back.dcm"));
    std::fs::write(&path, bytes).expect("write");
    dicom_object::open_file(&path).expect("read output back")
}

#[test]
fn copied_names_are_decoded_in_the_inputs_character_set() {
    const ESC: u8 = 0x1B;
    let jis = |s: &[u8]| [&[ESC, b'$', b'B'][..], s, &[ESC, b'(', b'B']].concat();
    // PS3.5 H.3.1.
    let yamada = [
        &b"Yamada^Tarou="[..],
        &jis(b";3ED"),
        b"^",
        &jis(b"B@O:"),
        b"=",
        &jis(b"$d$^$@"),
        b"^",
        &jis(b"$?$m$&"),
    ]
    .concat();
    // PS3.5 I.2.
    let ks = |s: &[u8]| [&[ESC, b'$', b')', b'C'][..], s].concat();
    let hong = [
        &b"Hong^Gildong="[..],
        &ks(&[0xFB, 0xF3]),
        b"^",
        &ks(&[0xD1, 0xCE, 0xD4, 0xD7]),
        b"=",
        &ks(&[0xC8, 0xAB]),
        b"^",
        &ks(&[0xB1, 0xE6, 0xB5, 0xBF]),
    ]
    .concat();
    // JIS X 0213 is not a DICOM character set: the alphabetic group stays.
    let x0213 = [&b"Yamada^Tarou="[..], &[ESC, b'$', b'(', b'Q'], b";3ED"].concat();
    // PS3.5 H.3.2: half-width katakana in G1, JIS X 0201 Romaji in G0.
    let jis_romaji = |s: &[u8]| [&[ESC, b'$', b'B'][..], s, &[ESC, b'(', b'J']].concat();
    let yamada_kana = [
        &[0xD4, 0xCF, 0xC0, 0xDE][..],
        b"^",
        &[0xC0, 0xDB, 0xB3],
        b"=",
        &jis_romaji(b";3ED"),
        b"^",
        &jis_romaji(b"B@O:"),
    ]
    .concat();
    let cases: [(&str, &[u8], &str); 8] = [
        (
            "ISO 2022 IR 13\\ISO 2022 IR 87",
            &yamada_kana,
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎",
        ),
        (
            "\\ISO 2022 IR 87",
            &yamada,
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
        ),
        (
            "ISO 2022 IR 6\\ISO 2022 IR 87",
            &yamada,
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
        ),
        ("\\ISO 2022 IR 149", &hong, "Hong^Gildong=洪^吉洞=홍^길동"),
        ("ISO_IR 148", b"\xD6zt\xFCrk^\xDEule", "Öztürk^Şule"),
        ("ISO_IR 100", b"M\xFCller^J\xFCrgen", "Müller^Jürgen"),
        ("ISO_IR 192", "Ελληνικό^Όνομα".as_bytes(), "Ελληνικό^Όνομα"),
        ("\\ISO 2022 IR 87", &x0213, "Yamada^Tarou"),
    ];
    for (charset, name, want) in cases {
        let tmp = tempfile::tempdir().expect("tmp");
        let input = received_dose(tmp.path(), charset, name, &[]);
        for (kind, bytes) in returned(tmp.path(), input) {
            let back = read_output(tmp.path(), &kind, &bytes);
            assert_eq!(
                attr::string(&back, tags::SPECIFIC_CHARACTER_SET).as_deref(),
                Some("ISO_IR 192")
            );
            assert_eq!(
                attr::string(&back, tags::PATIENT_NAME).as_deref(),
                Some(want),
                "{kind} for {charset:?}"
            );
            // The file holds the name in UTF-8, no escape sequence.
            assert!(
                bytes.windows(want.len()).any(|w| w == want.as_bytes()),
                "{kind} for {charset:?}: UTF-8 name"
            );
            assert!(!bytes.contains(&ESC), "{kind} for {charset:?}: escape");
        }
    }
}

#[test]
fn dates_and_times_keep_the_inputs_time_zone() {
    use dicom_core::VR;
    let tmp = tempfile::tempdir().expect("tmp");
    let study = [
        (tags::STUDY_DATE, VR::DA, "20250102"),
        (tags::STUDY_TIME, VR::TM, "120000"),
    ];
    let with_offset = [
        study[0],
        study[1],
        (tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0900"),
    ];
    let nine = time::UtcOffset::from_hms(9, 0, 0).expect("offset");
    for (extra, offset) in [(&with_offset[..], Some("+0900")), (&study[..], None)] {
        let before = time::OffsetDateTime::now_utc();
        let input = received_dose(tmp.path(), "ISO_IR 100", b"Doe^Jane", extra);
        for (kind, bytes) in returned(tmp.path(), input) {
            let back = read_output(tmp.path(), &kind, &bytes);
            assert_eq!(
                attr::string(&back, tags::TIMEZONE_OFFSET_FROM_UTC).as_deref(),
                offset,
                "{kind}"
            );
            assert_eq!(
                attr::string(&back, tags::STUDY_DATE).as_deref(),
                Some("20250102")
            );
            assert_eq!(
                attr::string(&back, tags::STUDY_TIME).as_deref(),
                Some("120000")
            );
            if offset.is_some() {
                // esorisk's own times are written in the input's offset.
                let date = attr::string(&back, tags::INSTANCE_CREATION_DATE).expect("date");
                let time = attr::string(&back, tags::INSTANCE_CREATION_TIME).expect("time");
                let t = before.to_offset(nine);
                let now = (
                    format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()),
                    format!("{:02}{:02}", t.hour(), t.minute()),
                );
                let later = before.to_offset(nine) + time::Duration::minutes(1);
                let next = (
                    format!(
                        "{:04}{:02}{:02}",
                        later.year(),
                        u8::from(later.month()),
                        later.day()
                    ),
                    format!("{:02}{:02}", later.hour(), later.minute()),
                );
                let got = (date, time[..4].to_string());
                assert!(got == now || got == next, "{kind}: {got:?}, not {now:?}");
            }
        }
    }
}

/// Every value of `obj` and its items as text, with its tag, leaving out
/// the top-level attributes in `copied`.
fn values(obj: &InMemDicomObject, copied: &[dicom_core::Tag]) -> Vec<(dicom_core::Tag, String)> {
    use dicom_core::header::Header;
    use dicom_core::value::Value;
    let mut out = Vec::new();
    for el in obj.iter().filter(|el| !copied.contains(&el.tag())) {
        match el.value() {
            Value::Sequence(seq) => {
                for item in seq.items() {
                    out.extend(values(item, &[]));
                }
            }
            Value::Primitive(p) => out.push((el.tag(), p.to_str().to_string())),
            _ => {}
        }
    }
    out
}

/// The returned objects declare UTF-8 for the names copied from the
/// inputs, but what esorisk words itself (descriptions, reasons, notes,
/// the ROI name) is plain ASCII, which planning systems that read text as
/// ASCII or Latin-1 show as written; a copied name keeps its characters.
#[test]
fn esorisk_s_own_text_in_the_returned_objects_is_ascii() {
    use esorisk::rt::grid::Grid;
    let tmp = tempfile::tempdir().expect("tmp");
    let input = received_dose(tmp.path(), "ISO_IR 100", b"M\xFCller^J\xFCrgen", &[]);
    let inputs = ReportInputs::from_objects(&[input]).expect("inputs");
    let copied: Vec<dicom_core::Tag> = {
        use dicom_core::header::Header;
        inputs.patient_study.iter().map(|e| e.tag()).collect()
    };
    let grid = Grid::uniform([0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [4, 4, 2]);
    let mut mask = vec![false; grid.len()];
    mask[grid.index(1, 1, 0)] = true;
    let rs = learned_roi_rtstruct(&inputs, &grid, &mask, DEFAULT_ROI_NAME).expect("rtstruct");
    let result = RiskReport {
        risk: 0.25,
        model_name: "DGD (dosiomics in the predicted ROI)".into(),
        model_version: "dgd-v2".into(),
        features: vec![("glcm_joint_entropy".into(), 5.25)],
        // Notes and reasons come worded from the rest of esorisk, with
        // its typographic characters.
        notes: vec![
            "RT Dose \u{2192} RT Plan \"A\"; fraction dose \u{d7} 30 planned fractions".into(),
        ],
        ..Default::default()
    };
    let sr = risk_sr(&inputs, &result).expect("sr");
    let not_scored = not_scored_sr(
        &inputs,
        "internal error in esorisk while scoring (boom); not scored \u{2014} please report it",
    );
    for (kind, o) in [
        ("RT Structure Set", &rs),
        ("SR", &sr),
        ("not-scored SR", &not_scored),
    ] {
        let description = attr::string(o, tags::SERIES_DESCRIPTION).unwrap_or_default();
        assert!(
            description.is_ascii()
                && description.ends_with("research use only, not for clinical use"),
            "{kind}: {description}"
        );
        let found: Vec<_> = values(o, &copied)
            .into_iter()
            .filter(|(_, v)| !v.is_ascii())
            .collect();
        assert!(found.is_empty(), "{kind}: {found:?}");
        assert_eq!(
            attr::string(o, tags::PATIENT_NAME).as_deref(),
            Some("M\u{fc}ller^J\u{fc}rgen"),
            "{kind}: the copied name keeps its characters"
        );
    }
    let structure_set = attr::string(&rs, tags::STRUCTURE_SET_DESCRIPTION).unwrap_or_default();
    assert!(structure_set.is_ascii(), "{structure_set}");
    let has_text = |o: &InMemDicomObject, want: &str| {
        values(o, &[])
            .iter()
            .any(|(t, v)| *t == tags::TEXT_VALUE && v.trim_end() == want)
    };
    assert!(has_text(
        &not_scored,
        "internal error in esorisk while scoring (boom); not scored - please report it"
    ));
    assert!(has_text(
        &sr,
        "RT Dose -> RT Plan \"A\"; fraction dose x 30 planned fractions"
    ));
}
