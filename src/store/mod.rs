//! Durable storage of received instances.
//!
//! An instance is streamed into `tmp/<random>.part` as a complete DICOM file
//! (preamble, file meta information, then the data set bytes exactly as they
//! arrived), checked, fsynced, and renamed into
//! `store/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`. The
//! rename is atomic, so a reader sees either the old file or the new one,
//! never a partial one; and the directory is fsynced so the rename itself
//! survives a power cut. Only then may the caller acknowledge it.
//!
//! The two halves are separate ([`Incoming::check`], [`Checked::persist`])
//! so that the receiver can hand the index row of a checked instance to the
//! database while the file is being made durable.

pub mod scan;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use dicom_object::meta::FileMetaTableBuilder;
use snafu::Snafu;

use crate::uid;
pub use scan::{Encoding, Header, ScanError};

/// Transfer syntaxes and how their data sets are encoded.
pub mod ts {
    pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
    pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
    pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
    pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
    pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
    pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
    pub const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
    pub const JPEG_LOSSLESS_NH: &str = "1.2.840.10008.1.2.4.57";
    pub const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
    pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
    pub const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";
    pub const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
    pub const JPEG_2000: &str = "1.2.840.10008.1.2.4.91";

    /// Native (uncompressed) syntaxes, in our order of preference.
    pub const NATIVE: &[&str] = &[
        EXPLICIT_VR_LE,
        IMPLICIT_VR_LE,
        DEFLATED_EXPLICIT_VR_LE,
        EXPLICIT_VR_BE,
    ];

    /// Encapsulated syntaxes stored as received.
    pub const ENCAPSULATED: &[&str] = &[
        RLE_LOSSLESS,
        JPEG_BASELINE,
        JPEG_EXTENDED,
        JPEG_LOSSLESS_NH,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG_LS_NEAR_LOSSLESS,
        JPEG_2000_LOSSLESS,
        JPEG_2000,
    ];

    /// Encoding of the data set and whether it is deflated; `None` if the
    /// transfer syntax is not one we accept.
    pub fn encoding(uid: &str) -> Option<(super::Encoding, bool)> {
        use super::Encoding;
        match uid {
            IMPLICIT_VR_LE => Some((Encoding::IMPLICIT_LE, false)),
            EXPLICIT_VR_BE => Some((Encoding::EXPLICIT_BE, false)),
            DEFLATED_EXPLICIT_VR_LE => Some((Encoding::EXPLICIT_LE, true)),
            u if u == EXPLICIT_VR_LE || ENCAPSULATED.contains(&u) => {
                Some((Encoding::EXPLICIT_LE, false))
            }
            _ => None,
        }
    }
}

/// What the data set is expected to be, from the C-STORE request.
#[derive(Debug, Clone)]
pub struct Expected {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub calling_ae: String,
    pub called_ae: String,
}

/// Why an instance could not be stored. Each maps to one DIMSE status.
#[derive(Debug, Snafu)]
pub enum StoreError {
    #[snafu(display("storage failure: {source}"))]
    Io { source: io::Error },
    #[snafu(display("not enough free disk space ({free_mb} MiB free, {min_mb} MiB required)"))]
    DiskFull { free_mb: u64, min_mb: u64 },
    #[snafu(display("{source}"))]
    Malformed { source: ScanError },
    #[snafu(display("{attribute} missing"))]
    Missing { attribute: &'static str },
    #[snafu(display("{attribute} {value:?} is not a valid UID: {reason}"))]
    InvalidUid {
        attribute: &'static str,
        value: String,
        reason: uid::UidError,
    },
    #[snafu(display(
        "{attribute} in the data set ({found}) differs from the request ({expected})"
    ))]
    Mismatch {
        attribute: &'static str,
        expected: String,
        found: String,
    },
    #[snafu(display("transfer syntax {uid} is not supported"))]
    UnsupportedTransferSyntax { uid: String },
}

impl StoreError {
    pub fn is_out_of_resources(&self) -> bool {
        matches!(self, StoreError::Io { .. } | StoreError::DiskFull { .. })
    }
}

impl From<io::Error> for StoreError {
    fn from(source: io::Error) -> Self {
        StoreError::Io { source }
    }
}

/// The store: directories under the data directory.
#[derive(Debug, Clone)]
pub struct Store {
    data_dir: PathBuf,
    store_dir: PathBuf,
    tmp_dir: PathBuf,
    fsync: bool,
    min_free_bytes: u64,
    /// `esorisk.lock`, locked for as long as this store is open: a second
    /// node on the same data directory would delete the first one's
    /// instances in flight (`clean_tmp`) and reconcile under its feet.
    _lock: std::sync::Arc<File>,
}

/// A stored, durable instance ready to be indexed.
#[derive(Debug, Clone)]
pub struct Stored {
    pub header: Header,
    /// Path relative to the data directory, e.g. `store/1.2/1.3/1.4.dcm`.
    pub relative_path: String,
    pub size_bytes: u64,
    pub transfer_syntax_uid: String,
    /// True when the rename replaced an existing file at the same path.
    pub replaced: bool,
}

impl Store {
    /// Open the data directory for this process alone; refused while
    /// another process has it open.
    pub fn open(data_dir: &Path, fsync: bool, min_free_mb: u64) -> io::Result<Store> {
        let store_dir = data_dir.join("store");
        let tmp_dir = data_dir.join("tmp");
        fs::create_dir_all(&store_dir)?;
        fs::create_dir_all(&tmp_dir)?;
        let lock = lock_data_dir(data_dir)?;
        Ok(Store {
            _lock: std::sync::Arc::new(lock),
            data_dir: data_dir.to_path_buf(),
            store_dir,
            tmp_dir,
            fsync,
            min_free_bytes: min_free_mb.saturating_mul(1024 * 1024),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Remove partial files left by a crash. They were never acknowledged.
    pub fn clean_tmp(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.tmp_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "part") {
                fs::remove_file(&path)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn clean_marker(&self) -> PathBuf {
        self.data_dir.join("clean-shutdown")
    }

    /// Whether the last run ended with a clean shutdown. The marker is
    /// removed, durably, so that a crash during this run is noticed at the
    /// next start.
    pub fn take_clean_marker(&self) -> io::Result<bool> {
        match fs::remove_file(self.clean_marker()) {
            Ok(()) => {
                sync_dir(&self.data_dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Record a clean shutdown: every acknowledged instance is in the index.
    pub fn mark_clean(&self) -> io::Result<()> {
        let f = File::create(self.clean_marker())?;
        f.sync_all()?;
        sync_dir(&self.data_dir)
    }

    /// Free bytes on the file system of the data directory.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.data_dir)
    }

    /// Refuse when free space is below the configured floor.
    pub fn check_space(&self) -> Result<(), StoreError> {
        match self.free_bytes() {
            Some(free) if free < self.min_free_bytes => DiskFullSnafu {
                free_mb: free / (1024 * 1024),
                min_mb: self.min_free_bytes / (1024 * 1024),
            }
            .fail(),
            _ => Ok(()),
        }
    }

    /// Where an instance lives, relative to the data directory. All three
    /// UIDs must already be validated.
    pub fn relative_path(study: &str, series: &str, sop: &str) -> String {
        format!("store/{study}/{series}/{sop}.dcm")
    }

    /// Create an empty temporary file ahead of need. Creating a file updates
    /// a directory and takes a few tenths of a millisecond; an association
    /// makes its next one while the sender prepares the next instance, so
    /// that time is not spent between request and response.
    pub fn spare(&self) -> io::Result<Spare> {
        let path = self.tmp_dir.join(format!("{}.part", uid::generate()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)?;
        Ok(Spare {
            file: Some(file),
            path,
        })
    }

    /// Start receiving an instance: a temporary file with the file meta
    /// information already written.
    pub fn begin(&self, expected: Expected) -> Result<Incoming, StoreError> {
        self.begin_with(expected, None)
    }

    /// As [`Store::begin`], into `spare` when one was made beforehand.
    pub fn begin_with(
        &self,
        expected: Expected,
        spare: Option<Spare>,
    ) -> Result<Incoming, StoreError> {
        let (encoding, deflated) =
            ts::encoding(&expected.transfer_syntax_uid).ok_or_else(|| {
                StoreError::UnsupportedTransferSyntax {
                    uid: expected.transfer_syntax_uid.clone(),
                }
            })?;
        let mut spare = match spare {
            Some(spare) => spare,
            None => self.spare()?,
        };
        let file = spare
            .file
            .take()
            .ok_or_else(|| io::Error::other("temporary file already used"))?;
        let tmp_path = std::mem::take(&mut spare.path);
        let mut incoming = Incoming {
            store: self.clone(),
            // Small enough that whole PDUs bypass the buffer and go straight to the file.
            writer: Some(BufWriter::with_capacity(64 * 1024, file)),
            tmp_path,
            data_offset: 0,
            encoding,
            deflated,
            expected,
            done: false,
            written: 0,
            flushed: 0,
        };
        incoming.write_preamble_and_meta()?;
        Ok(incoming)
    }
}

/// An empty temporary file made by [`Store::spare`]; dropping it unused
/// removes it.
pub struct Spare {
    file: Option<File>,
    path: PathBuf,
}

impl Drop for Spare {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// An instance being received into a temporary file. Dropping it without
/// [`Incoming::commit`] (or [`Checked::persist`]) removes the temporary file.
pub struct Incoming {
    store: Store,
    writer: Option<BufWriter<File>>,
    tmp_path: PathBuf,
    data_offset: u64,
    encoding: Encoding,
    deflated: bool,
    expected: Expected,
    done: bool,
    written: u64,
    flushed: u64,
}

/// Bytes written before disk write-back of a large instance is started.
const WRITEBACK_CHUNK: u64 = 256 * 1024;

impl Incoming {
    fn write_preamble_and_meta(&mut self) -> Result<(), StoreError> {
        let e = &self.expected;
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(e.sop_class_uid.as_str())
            .media_storage_sop_instance_uid(e.sop_instance_uid.as_str())
            .transfer_syntax(e.transfer_syntax_uid.as_str())
            .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME)
            .source_application_entity_title(crate::config::wire_ae_title(&e.called_ae))
            .sending_application_entity_title(crate::config::wire_ae_title(&e.calling_ae))
            .receiving_application_entity_title(crate::config::wire_ae_title(&e.called_ae))
            .build()
            .map_err(|err| StoreError::Io {
                source: io::Error::other(format!("file meta information: {err}")),
            })?;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(&[0u8; 128]);
        head.extend_from_slice(b"DICM");
        meta.write(&mut head).map_err(|err| StoreError::Io {
            source: io::Error::other(format!("file meta information: {err}")),
        })?;
        self.data_offset = head.len() as u64;
        self.write(&head)
    }

    /// Append data set bytes as they arrive.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.append(bytes, false)
    }

    /// Append the last bytes of the data set. No write-back is started for
    /// them: the fdatasync that follows does that in the same request.
    pub fn write_last(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.append(bytes, true)
    }

    fn append(&mut self, bytes: &[u8], last: bool) -> Result<(), StoreError> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("instance already closed"))?;
        w.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.store.fsync && !last && self.written - self.flushed >= WRITEBACK_CHUNK {
            // Start writing this chunk to disk now, without waiting, so the
            // fsync at the end of a large instance has little left to do and
            // the disk works while the network delivers the rest.
            use std::os::fd::AsRawFd;
            w.flush()?;
            let fd = w.get_ref().as_raw_fd();
            // SAFETY: `fd` is an open file descriptor owned by `w`.
            unsafe {
                libc::sync_file_range(
                    fd,
                    self.flushed as libc::off64_t,
                    (self.written - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Check the data set, make it durable and move it into place.
    pub fn commit(self) -> Result<Stored, StoreError> {
        self.check()?.persist()
    }

    /// Check the complete data set: it parses, it is the announced instance,
    /// and its UIDs may name a path. Nothing is durable yet.
    pub fn check(mut self) -> Result<Checked, StoreError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("instance already closed"))?;
        let mut file = writer.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        let header = scan::scan_file(&mut file, self.data_offset, self.encoding, self.deflated)
            .map_err(|source| match source {
                ScanError::Io(source) => StoreError::Io { source },
                other => StoreError::Malformed { source: other },
            })?;
        let (study, series) = self.check_header(&header)?;
        let size_bytes = file.metadata()?.len();
        let relative_path = Store::relative_path(&study, &series, &self.expected.sop_instance_uid);
        let final_path = self.store.data_dir.join(&relative_path);
        let stored = Stored {
            header,
            relative_path,
            size_bytes,
            transfer_syntax_uid: self.expected.transfer_syntax_uid.clone(),
            replaced: final_path.exists(),
        };
        Ok(Checked {
            incoming: self,
            file,
            final_path,
            stored,
        })
    }

    /// The data set must be the instance the request announced, and every
    /// UID that names a path must be valid.
    fn check_header(&self, h: &Header) -> Result<(String, String), StoreError> {
        let e = &self.expected;
        let sop_class = h.sop_class_uid.as_deref().ok_or(StoreError::Missing {
            attribute: "SOPClassUID (0008,0016)",
        })?;
        if sop_class != e.sop_class_uid {
            return MismatchSnafu {
                attribute: "SOPClassUID",
                expected: e.sop_class_uid.clone(),
                found: sop_class.to_string(),
            }
            .fail();
        }
        let sop_instance = h.sop_instance_uid.as_deref().ok_or(StoreError::Missing {
            attribute: "SOPInstanceUID (0008,0018)",
        })?;
        if sop_instance != e.sop_instance_uid {
            return MismatchSnafu {
                attribute: "SOPInstanceUID",
                expected: e.sop_instance_uid.clone(),
                found: sop_instance.to_string(),
            }
            .fail();
        }
        let study = required_uid(
            h.study_instance_uid.as_deref(),
            "StudyInstanceUID (0020,000D)",
        )?;
        let series = required_uid(
            h.series_instance_uid.as_deref(),
            "SeriesInstanceUID (0020,000E)",
        )?;
        Ok((study, series))
    }
}

/// A checked instance, still in its temporary file. Dropping it without
/// [`Checked::persist`] removes the temporary file.
pub struct Checked {
    incoming: Incoming,
    file: File,
    final_path: PathBuf,
    stored: Stored,
}

impl Checked {
    /// What the instance will be once persisted.
    pub fn stored(&self) -> &Stored {
        &self.stored
    }

    /// Make the file durable and move it into place: fdatasync, rename,
    /// fsync of the directory (and of any directory created for it).
    pub fn persist(self) -> Result<Stored, StoreError> {
        let Checked {
            mut incoming,
            file,
            final_path,
            stored,
        } = self;
        let fsync = incoming.store.fsync;
        if fsync {
            file.sync_data()?;
        }
        drop(file);
        let series_dir = final_path
            .parent()
            .ok_or_else(|| io::Error::other("store path has no parent"))?;
        if !series_dir.is_dir() {
            fs::create_dir_all(series_dir)?;
            if fsync {
                // New directories must reach the disk too, up to the store root.
                if let Some(study_dir) = series_dir.parent() {
                    sync_dir(study_dir)?;
                }
                sync_dir(&incoming.store.store_dir)?;
            }
        }
        fs::rename(&incoming.tmp_path, &final_path)?;
        incoming.done = true;
        if fsync {
            sync_dir(series_dir)?;
        }
        Ok(stored)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.done {
            self.writer = None;
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

fn required_uid(value: Option<&str>, attribute: &'static str) -> Result<String, StoreError> {
    let value = value.ok_or(StoreError::Missing { attribute })?;
    uid::validate(value).map_err(|reason| StoreError::InvalidUid {
        attribute,
        value: value.to_string(),
        reason,
    })?;
    Ok(value.to_string())
}

/// Lock `esorisk.lock` in the data directory (an advisory lock the kernel
/// drops when the process ends, however it ends) and write our process id
/// in it for the message another process gets.
fn lock_data_dir(data_dir: &Path) -> io::Result<File> {
    let path = data_dir.join("esorisk.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // `esorisk status` probes the lock with a shared lock held for a
    // moment: a node starting in that moment waits it out instead of
    // taking the probe for another node.
    let mut attempt = 0;
    let locked = loop {
        match file.try_lock() {
            Err(fs::TryLockError::WouldBlock) if attempt < 20 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => break other,
        }
    };
    match locked {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let pid = if holder.is_empty() {
                String::new()
            } else {
                format!(" (process {holder})")
            };
            return Err(io::Error::other(format!(
                "another esorisk process{pid} has this data directory open; stop it, or give each node its own storage.data_dir"
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    file.write_all(std::process::id().to_string().as_bytes())?;
    Ok(file)
}

/// The process id of the node that has `data_dir` open, if one has
/// (`esorisk status`): its lock is held. The probe holds the lock for a
/// moment only when no node does.
pub fn holder(data_dir: &Path) -> Option<String> {
    let mut file = File::open(data_dir.join("esorisk.lock")).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Some(pid.trim().to_string())
        }
    }
}

/// fsync a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Free bytes available to this process on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node starting while `esorisk status` probes the lock waits for
    /// the probe; a node holding it keeps it.
    #[test]
    fn the_status_probe_does_not_keep_a_node_from_starting() {
        let dir = tempfile::tempdir().expect("tmp");
        let probe = File::create(dir.path().join("esorisk.lock")).expect("create");
        probe.lock_shared().expect("shared lock");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(probe);
        });
        let lock = lock_data_dir(dir.path()).expect("locked once the probe is gone");
        release.join().expect("thread");
        assert_eq!(holder(dir.path()), Some(std::process::id().to_string()));
        let err = lock_data_dir(dir.path()).expect_err("held");
        assert!(err.to_string().contains("another esorisk process"), "{err}");
        drop(lock);
    }

    fn expected(sop: &str) -> Expected {
        Expected {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.481.2".into(),
            sop_instance_uid: sop.into(),
            transfer_syntax_uid: ts::EXPLICIT_VR_LE.into(),
            calling_ae: "TPS".into(),
            called_ae: "ESORISK".into(),
        }
    }

    fn ui(out: &mut Vec<u8>, g: u16, e: u16, v: &str) {
        let mut val = v.as_bytes().to_vec();
        if val.len() % 2 == 1 {
            val.push(0);
        }
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(b"UI");
        out.extend_from_slice(&(val.len() as u16).to_le_bytes());
        out.extend_from_slice(&val);
    }

    fn data_set(sop: &str, study: &str) -> Vec<u8> {
        let mut d = Vec::new();
        ui(&mut d, 0x0008, 0x0016, "1.2.840.10008.5.1.4.1.1.481.2");
        ui(&mut d, 0x0008, 0x0018, sop);
        ui(&mut d, 0x0020, 0x000D, study);
        ui(&mut d, 0x0020, 0x000E, "1.2.3.5");
        d
    }

    #[test]
    fn commit_places_a_readable_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), true, 0).expect("store");
        let mut inc = store.begin(expected("1.2.3.6")).expect("begin");
        let ds = data_set("1.2.3.6", "1.2.3.4");
        inc.write(&ds).expect("write");
        let stored = inc.commit().expect("commit");
        assert_eq!(stored.relative_path, "store/1.2.3.4/1.2.3.5/1.2.3.6.dcm");
        let path = dir.path().join(&stored.relative_path);
        let obj = dicom_object::open_file(&path).expect("dicom-object reads it");
        assert_eq!(obj.meta().media_storage_sop_instance_uid(), "1.2.3.6");
        let bytes = fs::read(&path).expect("read");
        assert!(bytes.ends_with(&ds), "data set stored byte for byte");
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn path_traversal_uid_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, 0).expect("store");
        let mut inc = store.begin(expected("1.2.3.6")).expect("begin");
        inc.write(&data_set("1.2.3.6", "../../etc")).expect("write");
        let err = inc.commit().expect_err("refused");
        assert!(matches!(err, StoreError::InvalidUid { .. }), "{err}");
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
        assert_eq!(
            fs::read_dir(dir.path().join("store"))
                .expect("store")
                .count(),
            0
        );
    }

    #[test]
    fn mismatched_instance_is_refused_and_drop_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, 0).expect("store");
        let mut inc = store.begin(expected("1.2.3.7")).expect("begin");
        inc.write(&data_set("1.2.3.6", "1.2.3.4")).expect("write");
        assert!(matches!(inc.commit(), Err(StoreError::Mismatch { .. })));
        let inc = store.begin(expected("1.2.3.8")).expect("begin");
        drop(inc);
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn free_space_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, u64::MAX / (1024 * 1024 * 2)).expect("store");
        assert!(matches!(
            store.check_space(),
            Err(StoreError::DiskFull { .. })
        ));
    }
}
