//! Storage-path micro-benchmark: how long the structural check of a data set
//! and a full begin/write/commit take, without the network.
//!
//!     cargo bench --bench store
//!
//! Prints median times over repeated runs; fsync is measured both ways so the
//! disk's share is visible.

use std::time::Instant;

use esorisk::store::{scan, ts, Encoding, Expected, Store};
use esorisk::testgen;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn data_set_of(obj: &dicom_object::FileDicomObject<dicom_object::InMemDicomObject>) -> Vec<u8> {
    use dicom_encoding::TransferSyntaxIndex;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts::EXPLICIT_VR_LE)
        .expect("explicit VR LE");
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts).expect("encode");
    out
}

fn main() {
    let h = testgen::study_header(1);
    let ct = testgen::ct_slice(&h, "1.2.3", 0, 512, 1);
    let dose = testgen::rt_dose(&h, "1.2.5", 50, 1);
    let cases = [("CT 512x512", ct, 200), ("RT Dose 50 MB", dose, 10)];
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, obj, reps) in cases {
        let bytes = data_set_of(&obj);
        let sop_class = obj
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string();
        let sop = obj
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let mb = bytes.len() as f64 / 1e6;

        let t: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                scan::scan_bytes(&bytes, Encoding::EXPLICIT_LE).expect("scan");
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!(
            "{name:14} scan                 {:8.3} ms  ({mb:.1} MB data set)",
            median(t)
        );

        for fsync in [false, true] {
            let store = Store::open(&dir.path().join(format!("{fsync}")), fsync, 0).expect("store");
            let t: Vec<f64> = (0..reps)
                .map(|_| {
                    let t0 = Instant::now();
                    let mut inc = store
                        .begin(Expected {
                            sop_class_uid: sop_class.clone(),
                            sop_instance_uid: sop.clone(),
                            transfer_syntax_uid: ts::EXPLICIT_VR_LE.into(),
                            calling_ae: "BENCH".into(),
                            called_ae: "ESORISK".into(),
                        })
                        .expect("begin");
                    for chunk in bytes.chunks(131_072) {
                        inc.write(chunk).expect("write");
                    }
                    inc.commit().expect("commit");
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let m = median(t);
            println!(
                "{name:14} write+commit fsync={fsync:<5} {m:8.3} ms  ({:.0} MB/s, {:.0} inst/s)",
                mb / (m / 1e3),
                1e3 / m
            );
        }
    }
}
