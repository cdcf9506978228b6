//! Shared helpers for the integration tests: a node process on an ephemeral
//! port with its own data directory, DCMTK peers, and database look-ups.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Row;

pub const AE: &str = "ESORISK";

/// A running `esorisk serve` with a private data directory.
pub struct TestNode {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// Start a node in a fresh temporary directory.
    pub fn start(env: &[(&str, &str)]) -> TestNode {
        TestNode::start_with_args(&[], env)
    }

    /// Start a node in a fresh temporary directory with extra arguments
    /// before `serve` (e.g. `--config FILE`).
    pub fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> TestNode {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("var");
        let mut node = TestNode::launch(&dir, args, env);
        node._tmp = Some(tmp);
        node
    }

    /// Start a node on an existing data directory (restarts).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> TestNode {
        TestNode::launch(data_dir, &[], env)
    }

    fn launch(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> TestNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_esorisk"));
        cmd.args(args)
            .arg("serve")
            .env("ESORISK__DICOM__PORT", "0")
            .env("ESORISK__DICOM__BIND", "127.0.0.1")
            .env("ESORISK__STORAGE__DATA_DIR", data_dir)
            .env("ESORISK__STORAGE__MIN_FREE_MB", "1")
            .env("ESORISK__SERVER__SHUTDOWN_GRACE_SECS", "5")
            // Scoring is tested in tests/pipeline.rs, which turns it on.
            .env("ESORISK__PIPELINE__ENABLED", "false")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn esorisk");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    // "address=127.0.0.1:PORT" in text logs,
                    // "\"address\":\"127.0.0.1:PORT\"" in JSON logs.
                    if let Some(port) = line
                        .split([' ', ','])
                        .find_map(|w| {
                            w.strip_prefix("address=")
                                .or_else(|| w.strip_prefix("\"address\":"))
                        })
                        .map(|a| a.trim_matches('"'))
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                    {
                        let _ = tx.send(port);
                    }
                }
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "node did not start: {}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        TestNode {
            child: Some(child),
            port,
            data_dir: data_dir.to_path_buf(),
            log,
            _tmp: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Assert that one log line holds all of `parts` (e.g. a message and
    /// the study UID it names); the whole log is shown when none does. The
    /// log is read from the node's stderr by a thread, so a line written
    /// just before a response may arrive a moment after it: this waits up
    /// to 10 s for it.
    pub fn assert_logged(&self, parts: &[&str]) {
        let holds = |log: &str| log.lines().any(|l| parts.iter().all(|p| l.contains(p)));
        for _ in 0..200 {
            if holds(&self.log()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let log = self.log();
        assert!(holds(&log), "no log line holds {parts:?}:\n{log}");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => {
                unsafe_kill(c.id(), 15);
                for _ in 0..300 {
                    if let Ok(Some(status)) = c.try_wait() {
                        return status.success();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
                false
            }
            None => false,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("esorisk.db")
    }

    pub fn store_path(&self, study: &str, series: &str, sop: &str) -> PathBuf {
        self.data_dir
            .join(format!("store/{study}/{series}/{sop}.dcm"))
    }

    /// Files left in tmp/.
    pub fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Every .dcm file under store/.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.data_dir.join("store"), &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run a DCMTK tool; TCP_NODELAY=1 so that DCMTK does not wait on Nagle.
pub fn dcmtk(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .env("TCP_NODELAY", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (run scripts/test to install DCMTK): {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// storescu to the node with our called AE title.
pub fn storescu(node: &TestNode, extra: &[&str], files: &[&Path]) -> Output {
    let port = node.port.to_string();
    let mut args: Vec<String> = vec!["-aec".into(), AE.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("127.0.0.1".into());
    args.push(port);
    args.extend(files.iter().map(|p| p.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    dcmtk("storescu", &refs)
}

/// Run `f` with a connection pool on the database, on a thread of its own
/// so that it also works from inside async tests.
fn with_db<T, F>(options: sqlx::sqlite::SqliteConnectOptions, f: F) -> T
where
    T: Send + 'static,
    F: AsyncFnOnce(&sqlx::SqlitePool) -> T + Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let pool = sqlx::SqlitePool::connect_with(options)
                .await
                .expect("open db");
            let out = f(&pool).await;
            pool.close().await;
            out
        })
    })
    .join()
    .expect("database thread")
}

/// Run a query with one row of text columns per result row.
pub fn query(db: &Path, sql: &str) -> Vec<Vec<Option<String>>> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    let sql = sql.to_string();
    with_db(options, async move |pool| {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .expect("query");
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<Option<String>, _>(i)
                            .ok()
                            .flatten()
                            .or_else(|| {
                                r.try_get::<Option<i64>, _>(i)
                                    .ok()
                                    .flatten()
                                    .map(|v| v.to_string())
                            })
                    })
                    .collect()
            })
            .collect()
    })
}

/// Change the database of a running node, as an admin with `sqlite3` would
/// (waiting for the node's writer when it holds the lock).
pub fn execute(db: &Path, sql: &str) {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(10));
    let sql = sql.to_string();
    with_db(options, async move |pool| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .expect("execute");
    })
}

pub fn count(db: &Path, sql: &str) -> i64 {
    query(db, sql)
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// The data set bytes of a DICOM file (after the file meta group); a
/// deflated data set is inflated, since DCMTK deflates again when it sends.
pub fn data_set(path: &Path) -> Vec<u8> {
    let f = esorisk::send::DicomFile::read(path).unwrap_or_else(|e| panic!("{e}"));
    if f.transfer_syntax_uid == esorisk::store::ts::DEFLATED_EXPLICIT_VR_LE {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&f.data_set[..])
            .read_to_end(&mut out)
            .expect("inflate");
        out
    } else {
        f.data_set
    }
}

/// UIDs from a file's data set.
pub struct Uids {
    pub study: String,
    pub series: String,
    pub sop: String,
    pub sop_class: String,
    pub ts: String,
}

pub fn uids(path: &Path) -> Uids {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let get = |t| {
        obj.element(t)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    Uids {
        study: get(tags::STUDY_INSTANCE_UID),
        series: get(tags::SERIES_INSTANCE_UID),
        sop: get(tags::SOP_INSTANCE_UID),
        sop_class: get(tags::SOP_CLASS_UID),
        ts: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
            .to_string(),
    }
}

/// A directory with a synthetic study: RT Struct, Plan, Dose and CT slices.
///
/// The files are rewritten by DCMTK's `dcmconv` so that their encoding is the
/// one `storescu` puts on the wire (it re-encodes sequence lengths); the data
/// set stored by the node can then be compared byte for byte with the file.
pub fn synthetic_study(
    dir: &Path,
    ct_slices: usize,
    ct_size: u16,
    dose_mb: usize,
    seed: u64,
) -> Vec<PathBuf> {
    let files = esorisk::testgen::write_set(dir, "study", ct_slices, ct_size, dose_mb, seed)
        .expect("testgen");
    normalize(&files);
    files
}

/// Rewrite files in place with DCMTK's encoding (explicit VR little endian).
pub fn normalize(files: &[PathBuf]) {
    for chunk in files.chunks(64) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|f| {
                Command::new("dcmconv")
                    .arg("+te")
                    .arg(f)
                    .arg(f)
                    .spawn()
                    .expect("dcmconv (run scripts/test to install DCMTK)")
            })
            .collect();
        for mut h in handles {
            assert!(h.wait().expect("dcmconv").success(), "dcmconv failed");
        }
    }
}

/// The shared pydicom sample files, when that folder exists.
pub fn shared_testdata() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/pydicom");
    p.is_dir().then_some(p)
}

/// A current-thread runtime for tests that talk to the node from Rust.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Presentation contexts proposing only Verification.
pub fn verification_contexts() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![(
        esorisk::dimse::VERIFICATION_SOP_CLASS,
        vec![esorisk::store::ts::IMPLICIT_VR_LE],
    )]
}

/// Push a small synthetic study (RT objects and `ct` CT slices) to the node
/// with storescu, asserting success; returns the files sent.
pub fn push_study(node: &TestNode, dir: &Path, ct: usize, seed: u64) -> Vec<PathBuf> {
    let files = synthetic_study(dir, ct, 64, 1, seed);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = storescu(node, &[], &refs);
    assert!(out.status.success(), "{}", text(&out));
    files
}

/// A test certification authority and certificates it issued, as PEM files
/// written with `openssl`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA (`<name>-ca.pem`, `<name>-ca.key`) in `dir`.
    #[allow(dead_code)]
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        let (key, cert) = (pki.path(&format!("{name}-ca.key")), pki.ca(name));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &key,
            "-out",
            &cert,
        ]);
        pki
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The CA certificate of `name`.
    #[allow(dead_code)]
    pub fn ca(&self, name: &str) -> String {
        self.path(&format!("{name}-ca.pem"))
    }

    /// A certificate for `localhost` and 127.0.0.1, for servers and clients,
    /// issued by the CA `ca`: (key, certificate).
    #[allow(dead_code)]
    pub fn issue(&self, ca: &str, name: &str) -> (String, String) {
        let (key, csr, cert, ext) = (
            self.path(&format!("{name}.key")),
            self.path(&format!("{name}.csr")),
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.ext")),
        );
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
             basicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("extensions");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.ca(ca),
            "-CAkey",
            &self.path(&format!("{ca}-ca.key")),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        (key, cert)
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}
