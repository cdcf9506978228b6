//! Reading RT objects: RT Dose to a dose grid, RT Structure Set to masks on
//! a grid, RT Plan to prescription and fractionation, and DVH metrics.
//!
//! Everything is put on one convention ([`grid::Grid`]: patient coordinates
//! in mm, axes ascending), so later stages (dosiomics, the model, the
//! report) never deal with orientation or pixel encodings.

pub mod analysis;
pub mod attr;
pub mod dose;
pub mod dvh;
pub mod grid;
pub mod names;
pub mod phantom;
pub mod plan;
pub mod rle;
pub mod structure;
pub mod study;
pub mod write;

use std::path::Path;

use dicom_object::{FileDicomObject, InMemDicomObject};
use snafu::Snafu;

/// Why RT objects could not be read or used, in a physicist's words.
#[derive(Debug, Snafu)]
pub enum RtError {
    #[snafu(display("cannot read {path}: {message}"))]
    Open { path: String, message: String },
    #[snafu(display("RT Dose {sop}: {what}"))]
    Dose { sop: String, what: String },
    #[snafu(display("{what}"))]
    Study { what: String },
}

/// Open a DICOM file. A bare data set without file meta information (some
/// exporters write those) is read as implicit, then explicit VR little
/// endian, and given a meta group.
pub fn open(path: &Path) -> Result<FileDicomObject<InMemDicomObject>, RtError> {
    let fail = |message: String| RtError::Open {
        path: path.display().to_string(),
        message,
    };
    let first = match dicom_object::open_file(path) {
        Ok(obj) => return Ok(obj),
        Err(e) => e.to_string(),
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    use dicom_encoding::TransferSyntaxIndex;
    let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let encodings = [
        (
            crate::store::ts::IMPLICIT_VR_LE,
            crate::store::Encoding::IMPLICIT_LE,
        ),
        (
            crate::store::ts::EXPLICIT_VR_LE,
            crate::store::Encoding::EXPLICIT_LE,
        ),
    ];
    for (ts_uid, encoding) in encodings {
        // The structural walk checks every length against the file size
        // first, so a file that is not a data set is not parsed further.
        if crate::store::scan::scan_bytes(&bytes, encoding).is_err() {
            continue;
        }
        let Some(ts) = registry.get(ts_uid) else {
            continue;
        };
        let Ok(obj) = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts) else {
            continue;
        };
        let (Some(class), Some(sop)) = (
            attr::string(&obj, dicom_dictionary_std::tags::SOP_CLASS_UID),
            attr::string(&obj, dicom_dictionary_std::tags::SOP_INSTANCE_UID),
        ) else {
            continue;
        };
        let meta = dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(class)
            .media_storage_sop_instance_uid(sop)
            .transfer_syntax(ts_uid)
            .implementation_class_uid(crate::uid::IMPLEMENTATION_CLASS_UID);
        if let Ok(file) = obj.with_meta(meta) {
            return Ok(file);
        }
    }
    Err(fail(first))
}
