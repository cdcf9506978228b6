//! The SQLite index of received instances.
//!
//! All writes of instance rows go through one writer task that commits them
//! in groups: under load, many associations finish an instance at nearly the
//! same moment, and one transaction acknowledges all of them. The database
//! runs in WAL mode, so readers (the `studies` command, later the job
//! scheduler) never block the receiver, with `synchronous = NORMAL`: a commit
//! is safe from a process crash at once, and from a power cut after the next
//! checkpoint. The store, where every file is fsynced before it is
//! acknowledged, is the source of truth; after any unclean stop the node
//! reconciles the index with it (see `receive::reconcile`), so no
//! acknowledged instance is ever missing from the index for long. The row of
//! a new instance is committed while its file is being made durable, so for
//! a millisecond a row may name a file not yet in place; if the file never
//! gets there the receiver takes the row back ([`Index::forget`]), and after
//! a crash the reconciliation drops it.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use snafu::{ResultExt, Snafu};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Executor, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::store::Stored;

#[derive(Debug, Snafu)]
pub enum IndexError {
    #[snafu(display("cannot open the database {path}: {source}"))]
    Open { path: String, source: sqlx::Error },
    #[snafu(display("cannot apply database migrations: {source}"))]
    Migrate { source: sqlx::migrate::MigrateError },
    #[snafu(display("database error: {source}"))]
    Db { source: sqlx::Error },
    #[snafu(display("the index writer has stopped"))]
    WriterGone,
    #[snafu(display(
        "no esorisk database at {path}: is storage.data_dir (ESORISK__STORAGE__DATA_DIR, or --config) the node's data directory?"
    ))]
    Missing { path: String },
}

/// One instance to index, with where it came from.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub stored: Stored,
    pub calling_ae: Option<String>,
    pub called_ae: Option<String>,
    pub peer_address: Option<String>,
    pub received_at: String,
}

impl InstanceRecord {
    /// A file found in the store (after a crash, or kept when a re-sent
    /// instance failed): no association to name.
    pub fn from_store(stored: Stored) -> InstanceRecord {
        InstanceRecord {
            stored,
            calling_ae: None,
            called_ae: None,
            peer_address: None,
            received_at: now(),
        }
    }
}

/// What indexing changed.
#[derive(Debug, Clone, Default)]
pub struct Indexed {
    /// The earlier file of a re-sent instance when it lived elsewhere (the
    /// instance moved to another study or series); the caller removes it.
    pub stale_path: Option<String>,
    pub replaced: bool,
}

type Reply = oneshot::Sender<Result<Indexed, String>>;

/// What the writer task is asked to do.
enum Job {
    Record(Box<InstanceRecord>, Reply),
    /// Take back a row (see [`Index::forget`]).
    Forget {
        sop_instance_uid: String,
        file_path: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Remove a study's rows (see [`Index::remove_study`]).
    RemoveStudy {
        study_instance_uid: String,
        rule: RemovalRule,
        reply: oneshot::Sender<Result<Option<RemovedStudy>, String>>,
    },
}

/// Which studies a removal may take: those whose last instance arrived
/// before `received_before` (as [`at_offset`] writes it) and that have
/// nothing left to do.
#[derive(Debug, Clone)]
pub struct RemovalRule {
    pub received_before: String,
    /// The node scores studies (`pipeline.enabled`): a study also waits
    /// until the pipeline has looked at it since its last instance, so
    /// that one received just before a long stop is scored before it can
    /// go.
    pub pipeline_first: bool,
}

impl RemovalRule {
    /// Studies last received more than `days` ago (from now).
    pub fn older_than(days: f64, pipeline_first: bool) -> RemovalRule {
        RemovalRule {
            received_before: at_offset(-days * 86_400.0),
            pipeline_first,
        }
    }
}

/// The rows a study removal took away: the files are the caller's to delete.
#[derive(Debug, Clone, Default)]
pub struct RemovedStudy {
    /// Instance files, relative to the data directory.
    pub instance_files: Vec<String>,
    /// Files of the SRs and RT Structure Sets written for the study.
    pub output_files: Vec<String>,
    pub bytes: u64,
}

/// A study whose last instance arrived before a time, with nothing of it
/// still to do: no job queued or running, no result waiting to be sent.
macro_rules! removable_study {
    () => {
        "
    SELECT s.study_instance_uid FROM studies s
    WHERE s.last_received_at < ?1
      AND (?2 = 0 OR EXISTS (SELECT 1 FROM study_checks c WHERE c.study_instance_uid = s.study_instance_uid
                             AND c.last_received_at = s.last_received_at AND c.waiting = 0))
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_instance_uid = s.study_instance_uid
                      AND j.state IN ('queued', 'running'))
      AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN outputs o ON o.sop_instance_uid = d.sop_instance_uid
                      WHERE o.study_instance_uid = s.study_instance_uid AND d.state = 'pending')"
    };
}

/// An instance handed to the writer by [`Index::submit`].
pub struct Pending(oneshot::Receiver<Result<Indexed, String>>);

impl Pending {
    /// Wait until the row is committed.
    pub async fn wait(self) -> Result<Indexed, IndexError> {
        writer_reply(self.0).await
    }
}

/// The writer's answer: its error text, or nothing if it stopped.
async fn writer_reply<T>(rx: oneshot::Receiver<Result<T, String>>) -> Result<T, IndexError> {
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(msg)) => Err(IndexError::Db {
            source: sqlx::Error::Protocol(msg),
        }),
        Err(_) => Err(IndexError::WriterGone),
    }
}

/// Handle to the database: a reader pool and the group-commit writer.
#[derive(Clone)]
pub struct Index {
    pool: SqlitePool,
    writer: mpsc::Sender<Job>,
}

/// Current UTC time as RFC 3339 with milliseconds.
pub fn now() -> String {
    at_offset(0.0)
}

/// UTC time `seconds` from now (negative: in the past), formatted as
/// [`now`] formats it, so the two compare as text.
pub fn at_offset(seconds: f64) -> String {
    // Within ±100 years: a time that far is "never" or "ever" alike, and
    // beyond a few thousand years the date cannot be written.
    const CENTURY: f64 = 100.0 * 365.25 * 86_400.0;
    let seconds = if seconds.is_nan() {
        0.0
    } else {
        seconds.clamp(-CENTURY, CENTURY)
    };
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds_f64(seconds);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl Index {
    /// Open the database of an existing data directory (the admin
    /// commands): a path that holds none is a mistyped or missing setting,
    /// not an empty node, and no database is created there.
    pub async fn open_existing(path: &Path) -> Result<Index, IndexError> {
        if !path.is_file() {
            return Err(IndexError::Missing {
                path: path.display().to_string(),
            });
        }
        Index::open(path).await
    }

    /// Open (creating if needed) the database and apply migrations.
    pub async fn open(path: &Path) -> Result<Index, IndexError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let display = path.display().to_string();
        let options = SqliteConnectOptions::from_str("sqlite:")
            .context(OpenSnafu {
                path: display.clone(),
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_release(|conn, _| Box::pin(async move { Ok(out_of_transaction(conn).await) }))
            .connect_with(options.clone())
            .await
            .context(OpenSnafu {
                path: display.clone(),
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context(MigrateSnafu)?;
        let writer = SqliteConnection::connect_with(&options)
            .await
            .context(OpenSnafu { path: display })?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(writer_task(writer, options, rx));
        Ok(Index { pool, writer: tx })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Index an instance; returns once the row is committed.
    pub async fn record(&self, record: InstanceRecord) -> Result<Indexed, IndexError> {
        self.submit(record).await?.wait().await
    }

    /// Hand an instance to the writer and return at once; the commit runs
    /// on the writer's thread while the caller does something else (the
    /// receiver makes the file durable meanwhile).
    pub async fn submit(&self, record: InstanceRecord) -> Result<Pending, IndexError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job::Record(Box::new(record), tx))
            .await
            .map_err(|_| IndexError::WriterGone)?;
        Ok(Pending(rx))
    }

    /// Take back the row of an instance whose file could not be stored
    /// after all; only the row with that path goes, and with it a series,
    /// study and patient that it alone had brought in. It runs on the
    /// writer's connection, in order with the rows being committed.
    pub async fn forget(&self, sop_instance_uid: &str, file_path: &str) -> Result<(), IndexError> {
        self.ask_writer(|reply| Job::Forget {
            sop_instance_uid: sop_instance_uid.to_string(),
            file_path: file_path.to_string(),
            reply,
        })
        .await
    }

    /// Hand the writer a job that answers on `reply`, and wait for it.
    async fn ask_writer<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Job,
    ) -> Result<T, IndexError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(job(reply))
            .await
            .map_err(|_| IndexError::WriterGone)?;
        writer_reply(rx).await
    }

    /// The studies `rule` lets go, oldest first, with their instance count
    /// and bytes.
    pub async fn removable_studies(
        &self,
        rule: &RemovalRule,
    ) -> Result<Vec<(String, i64, i64)>, IndexError> {
        const SQL: &str = concat!(
            "SELECT r.study_instance_uid, count(i.sop_instance_uid), coalesce(sum(i.size_bytes), 0)
             FROM (",
            removable_study!(),
            ") r
             JOIN studies s ON s.study_instance_uid = r.study_instance_uid
             LEFT JOIN instances i ON i.study_instance_uid = r.study_instance_uid
             GROUP BY r.study_instance_uid ORDER BY s.last_received_at"
        );
        let rows = sqlx::query(SQL)
            .bind(&rule.received_before)
            .bind(rule.pipeline_first)
            .fetch_all(&self.pool)
            .await
            .context(DbSnafu)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Remove a study's instance, series and study rows (and its patient's,
    /// if it was the patient's last study), provided it is still removable
    /// (checked again inside the transaction); `None` when it is not. Jobs,
    /// their events and outputs stay as the record of what was scored and
    /// sent. It runs on the writer's connection, in order with the rows
    /// being committed.
    pub async fn remove_study(
        &self,
        study_instance_uid: &str,
        rule: &RemovalRule,
    ) -> Result<Option<RemovedStudy>, IndexError> {
        self.ask_writer(|reply| Job::RemoveStudy {
            study_instance_uid: study_instance_uid.to_string(),
            rule: rule.clone(),
            reply,
        })
        .await
    }

    /// Removals whose files may not all be deleted yet (a crash came in
    /// between): (study, files relative to the data directory).
    pub async fn pending_removals(&self) -> Result<Vec<(String, Vec<String>)>, IndexError> {
        let rows = sqlx::query("SELECT study_instance_uid, files FROM removals")
            .fetch_all(&self.pool)
            .await
            .context(DbSnafu)?;
        Ok(rows
            .iter()
            .map(|r| {
                let files: String = r.get(1);
                (r.get(0), serde_json::from_str(&files).unwrap_or_default())
            })
            .collect())
    }

    /// A removal's files are deleted.
    pub async fn removal_done(&self, study_instance_uid: &str) -> Result<(), IndexError> {
        sqlx::query("DELETE FROM removals WHERE study_instance_uid = ?")
            .bind(study_instance_uid)
            .execute(&self.pool)
            .await
            .context(DbSnafu)?;
        Ok(())
    }

    /// All file paths currently indexed (for start-up reconciliation).
    pub async fn indexed_paths(&self) -> Result<std::collections::HashSet<String>, IndexError> {
        let rows = sqlx::query("SELECT file_path FROM instances")
            .fetch_all(&self.pool)
            .await
            .context(DbSnafu)?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// The old files of instances that moved to another study or series,
    /// which a start has not yet seen removed: never indexed again.
    pub async fn superseded_paths(&self) -> Result<Vec<String>, IndexError> {
        let rows = sqlx::query("SELECT file_path FROM superseded_files")
            .fetch_all(&self.pool)
            .await
            .context(DbSnafu)?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// At start: remove, durably, the old files of instances that moved
    /// (the receiver removed most already, but an unlink is not durable
    /// without its directory's fsync, and a crash may have come first),
    /// then forget them. A path that an instance row holds again (the
    /// instance was sent back where it was) is only forgotten. A file that
    /// cannot be removed stays listed, and is not indexed again. Returns
    /// how many files were removed here.
    pub async fn finish_superseded(&self, data_dir: &Path) -> Result<usize, IndexError> {
        let rows = sqlx::query(
            "SELECT rowid, file_path, EXISTS (SELECT 1 FROM instances i WHERE i.file_path = s.file_path) \
             FROM superseded_files s",
        )
        .fetch_all(&self.pool)
        .await
        .context(DbSnafu)?;
        let mut removed = 0;
        for r in rows {
            let (rowid, rel, held): (i64, String, bool) = (r.get(0), r.get(1), r.get(2));
            let path = data_dir.join(&rel);
            if !held && crate::retention::inside_data_dir(&rel) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        removed += 1;
                        if let Some(dir) = path.parent() {
                            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove the file a re-sent instance moved away from; it stays listed and is not indexed");
                        continue;
                    }
                }
            }
            sqlx::query("DELETE FROM superseded_files WHERE rowid = ?")
                .bind(rowid)
                .execute(&self.pool)
                .await
                .context(DbSnafu)?;
        }
        Ok(removed)
    }

    /// Drop instance rows whose file no longer exists, and the series,
    /// study and patient rows left without instances; returns how many
    /// instances.
    pub async fn forget_missing(&self, data_dir: &Path) -> Result<u64, IndexError> {
        let rows = sqlx::query("SELECT sop_instance_uid, file_path FROM instances")
            .fetch_all(&self.pool)
            .await
            .context(DbSnafu)?;
        let mut gone = 0;
        for r in rows {
            let (sop, path): (String, String) = (r.get(0), r.get(1));
            if !data_dir.join(&path).is_file() {
                tracing::warn!(
                    sop_instance_uid = %sop,
                    path,
                    "indexed file missing (an instance cut off by a crash before it was acknowledged, or a file removed by hand); row dropped"
                );
                let mut conn = self.pool.acquire().await.context(DbSnafu)?;
                forget_row(&mut conn, &sop, &path).await.context(DbSnafu)?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// Record a new association; returns its row id.
    pub async fn association_started(
        &self,
        calling_ae: Option<&str>,
        called_ae: Option<&str>,
        peer: &str,
        tls_client: Option<&str>,
        tls_subject: Option<&str>,
        outcome: Option<&str>,
    ) -> Result<i64, IndexError> {
        let now = now();
        let ended = outcome.map(|_| now.clone());
        let row = sqlx::query(
            "INSERT INTO associations (calling_ae, called_ae, peer_address, tls_client, tls_subject, started_at, ended_at, outcome)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(calling_ae)
        .bind(called_ae)
        .bind(peer)
        .bind(tls_client)
        .bind(tls_subject)
        .bind(&now)
        .bind(ended)
        .bind(outcome)
        // All rows: see `instance_upsert` (a commit that fails at the end of
        // the statement is reported only there).
        .fetch_all(&self.pool)
        .await
        .context(DbSnafu)?;
        Ok(row.first().map_or(0, |r| r.get(0)))
    }

    /// Delete the association log rows that started before `before` (a
    /// time as [`now`] writes it), a few thousand at a time so that the
    /// receiver's own inserts wait for no long transaction. Returns how
    /// many went.
    pub async fn prune_associations(&self, before: &str) -> Result<u64, IndexError> {
        const BATCH: u64 = 5_000;
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM associations WHERE id IN
                   (SELECT id FROM associations WHERE started_at < ? LIMIT ?)",
            )
            .bind(before)
            .bind(BATCH as i64)
            .execute(&self.pool)
            .await
            .context(DbSnafu)?
            .rows_affected();
            total += n;
            if n < BATCH {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Close an association row with its outcome and counts.
    pub async fn association_ended(
        &self,
        id: i64,
        outcome: &str,
        stored: u64,
        failed: u64,
        bytes: u64,
    ) -> Result<(), IndexError> {
        sqlx::query(
            "UPDATE associations SET ended_at = ?, outcome = ?, instances_stored = ?,
             instances_failed = ?, bytes_stored = ? WHERE id = ?",
        )
        .bind(now())
        .bind(outcome)
        .bind(stored as i64)
        .bind(failed as i64)
        .bind(bytes as i64)
        .bind(id)
        .execute(&self.pool)
        .await
        .context(DbSnafu)?;
        Ok(())
    }

    /// Study overview for `esorisk studies`: the studies that match
    /// `filter`, newest first, at most `limit` of them (0: all), and how
    /// many match.
    pub async fn studies(
        &self,
        filter: &StudyFilter,
        limit: i64,
    ) -> Result<(Vec<StudySummary>, i64), IndexError> {
        const MATCHES: &str =
            "(?1 IS NULL OR p.patient_id = ?1) AND (?2 IS NULL OR s.study_instance_uid = ?2)";
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM studies s JOIN patients p ON p.id = s.patient_pk WHERE {MATCHES}"
        )))
        .bind(&filter.patient_id)
        .bind(&filter.study_instance_uid)
        .fetch_one(&self.pool)
        .await
        .context(DbSnafu)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT s.study_instance_uid, p.patient_id, p.patient_name, s.study_date,
                    s.description, s.last_received_at,
                    (SELECT group_concat(m, ',') FROM
                        (SELECT DISTINCT modality AS m FROM series se
                         WHERE se.study_instance_uid = s.study_instance_uid ORDER BY m)) AS modalities,
                    (SELECT count(*) FROM series se WHERE se.study_instance_uid = s.study_instance_uid),
                    (SELECT count(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid),
                    (SELECT coalesce(sum(size_bytes), 0) FROM instances i
                     WHERE i.study_instance_uid = s.study_instance_uid),
                    (SELECT c.outcome FROM study_checks c
                     WHERE c.study_instance_uid = s.study_instance_uid
                       AND c.last_received_at = s.last_received_at),
                    j.id, j.state, j.risk, j.error
             FROM studies s JOIN patients p ON p.id = s.patient_pk
             LEFT JOIN jobs j ON j.id =
                 (SELECT max(id) FROM jobs WHERE study_instance_uid = s.study_instance_uid)
             WHERE {MATCHES}
             ORDER BY s.last_received_at DESC LIMIT ?3",
        )))
        .bind(&filter.patient_id)
        .bind(&filter.study_instance_uid)
        .bind(if limit > 0 { limit } else { -1 })
        .fetch_all(&self.pool)
        .await
        .context(DbSnafu)?;
        let studies = rows
            .iter()
            .map(|r| StudySummary {
                study_instance_uid: r.get(0),
                patient_id: r.get(1),
                patient_name: r.get(2),
                study_date: r.get(3),
                description: r.get(4),
                last_received_at: r.get(5),
                modalities: r.get::<Option<String>, _>(6).unwrap_or_default(),
                series: r.get(7),
                instances: r.get(8),
                bytes: r.get(9),
                checked: r.get(10),
                latest_job: r.get::<Option<i64>, _>(11).map(|id| JobSummary {
                    id,
                    state: r.get(12),
                    risk: r.get(13),
                    error: r.get(14),
                }),
            })
            .collect();
        Ok((studies, total))
    }

    /// Flush and close every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Which studies `esorisk studies` lists (`None`: any).
#[derive(Debug, Clone, Default)]
pub struct StudyFilter {
    pub patient_id: Option<String>,
    pub study_instance_uid: Option<String>,
}

/// One row of `esorisk studies`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StudySummary {
    pub study_instance_uid: String,
    pub patient_id: String,
    pub patient_name: Option<String>,
    pub study_date: Option<String>,
    pub description: Option<String>,
    pub last_received_at: String,
    pub modalities: String,
    pub series: i64,
    pub instances: i64,
    pub bytes: i64,
    /// What the scoring pipeline concluded about the study as it is now
    /// (`queued job N`, `incomplete: no RTSTRUCT`, …); `None` when it has
    /// not looked at it since its last instance (not yet stable, or the
    /// pipeline is off).
    pub checked: Option<String>,
    /// The study's most recent scoring job.
    pub latest_job: Option<JobSummary>,
}

/// A job as `esorisk studies` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobSummary {
    pub id: i64,
    pub state: String,
    pub risk: Option<f64>,
    pub error: Option<String>,
}

/// Whether a connection is back in autocommit mode, with no transaction
/// open, so that it can be used again. A transaction whose COMMIT failed
/// (SQLITE_FULL on a full disk) may have been rolled back by SQLite itself,
/// and the ROLLBACK sent after it then fails: sqlx still counts the
/// transaction open and turns the next BEGIN into a SAVEPOINT, whose
/// rollback leaves a real transaction open. A connection left so would hold
/// the write lock (every other writer gets "database is locked") and show
/// its uncommitted rows to whoever used it next, so it is closed instead
/// (closing rolls back). `BEGIN` fails inside a transaction: that is the
/// probe SQLite offers to SQL.
async fn out_of_transaction(conn: &mut SqliteConnection) -> bool {
    if conn.is_in_transaction() {
        tracing::warn!("an index connection was left in a transaction: closing it");
        return false;
    }
    match conn.execute("BEGIN").await {
        Ok(_) => conn.execute("ROLLBACK").await.is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "an index connection was left in a transaction: closing it");
            false
        }
    }
}

/// Replace the writer connection when it was left inside a transaction.
async fn ensure_clean(
    conn: &mut SqliteConnection,
    options: &SqliteConnectOptions,
    known: &mut KnownSeries,
) {
    if out_of_transaction(conn).await {
        return;
    }
    match SqliteConnection::connect_with(options).await {
        Ok(fresh) => {
            let old = std::mem::replace(conn, fresh);
            let _ = old.close().await;
            // Rows the old connection wrote were rolled back with it.
            known.clear();
        }
        Err(e) => tracing::error!(error = %e, "cannot reopen the index's writer connection"),
    }
}

/// Commit pending records in groups on the one writer connection. A group
/// that fails is retried one record at a time so that one bad row cannot
/// fail its neighbours. A writer connection left inside a transaction by a
/// failed commit (see [`out_of_transaction`]) is replaced by a new one.
async fn writer_task(
    mut conn: SqliteConnection,
    options: SqliteConnectOptions,
    mut rx: mpsc::Receiver<Job>,
) {
    const MAX_GROUP: usize = 256;
    let mut known = KnownSeries::default();
    // A job taken from the queue that does not belong to the current group.
    let mut next: Option<Job> = None;
    // An operation failed since the connection was last known clean.
    let mut suspect = false;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        // Probed only after an error: the probe costs two statements, and
        // this loop is on every instance's way to its response.
        if suspect || conn.is_in_transaction() {
            ensure_clean(&mut conn, &options, &mut known).await;
            suspect = false;
        }
        let first = match first {
            Job::Record(record, reply) => (*record, reply),
            Job::Forget {
                sop_instance_uid,
                file_path,
                reply,
            } => {
                let res = forget_row(&mut conn, &sop_instance_uid, &file_path).await;
                suspect |= res.is_err();
                // Parent rows may be gone: write them again next time.
                known.clear();
                let _ = reply.send(res.map_err(|e| e.to_string()));
                continue;
            }
            Job::RemoveStudy {
                study_instance_uid,
                rule,
                reply,
            } => {
                let res = remove_study_rows(&mut conn, &study_instance_uid, &rule).await;
                suspect |= res.is_err();
                known.clear();
                let _ = reply.send(res.map_err(|e| e.to_string()));
                continue;
            }
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Job::Record(record, reply)) => group.push((*record, reply)),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let records: Vec<&InstanceRecord> = group.iter().map(|(r, _)| r).collect();
        match commit_group(&mut conn, &mut known, &records).await {
            Ok(results) => {
                for ((_, reply), res) in group.into_iter().zip(results) {
                    let _ = reply.send(Ok(res));
                }
            }
            Err(group_err) => {
                tracing::warn!(error = %group_err, size = group.len(), "group commit failed, retrying one by one");
                known.clear();
                suspect = true;
                for (record, reply) in group {
                    ensure_clean(&mut conn, &options, &mut known).await;
                    let res = commit_group(&mut conn, &mut known, &[&record])
                        .await
                        .map(|mut v| v.pop().unwrap_or_default())
                        .map_err(|e| e.to_string());
                    let _ = reply.send(res);
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// The rows of one removable study; see [`Index::remove_study`].
async fn remove_study_rows(
    conn: &mut SqliteConnection,
    study: &str,
    rule: &RemovalRule,
) -> Result<Option<RemovedStudy>, sqlx::Error> {
    // It reads before it writes: take the write lock up front.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let still = sqlx::query(concat!(
        removable_study!(),
        " AND s.study_instance_uid = ?3"
    ))
    .bind(&rule.received_before)
    .bind(rule.pipeline_first)
    .bind(study)
    .fetch_optional(&mut *tx)
    .await?;
    if still.is_none() {
        return Ok(None);
    }
    let mut removed = RemovedStudy::default();
    for r in sqlx::query(
        "DELETE FROM instances WHERE study_instance_uid = ? RETURNING file_path, size_bytes",
    )
    .bind(study)
    .fetch_all(&mut *tx)
    .await?
    {
        removed.instance_files.push(r.get(0));
        removed.bytes += r.get::<i64, _>(1).max(0) as u64;
    }
    removed.output_files =
        sqlx::query("SELECT file_path FROM outputs WHERE study_instance_uid = ?")
            .bind(study)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    for sql in [
        "DELETE FROM series WHERE study_instance_uid = ?",
        "DELETE FROM study_checks WHERE study_instance_uid = ?",
        // The jobs stay as the record, but no longer stand for stored
        // inputs: the same files sent again are scored again.
        "UPDATE jobs SET input_key = input_key || ':removed:' || id \
         WHERE study_instance_uid = ? AND input_key NOT LIKE '%:removed:%'",
    ] {
        sqlx::query(sql).bind(study).execute(&mut *tx).await?;
    }
    // The files are deleted after the commit: a crash in between leaves this
    // row, and the next start finishes the job (`pending_removals`).
    let files: Vec<&String> = removed
        .instance_files
        .iter()
        .chain(&removed.output_files)
        .collect();
    sqlx::query(
        "INSERT OR REPLACE INTO removals (study_instance_uid, started_at, files) VALUES (?, ?, ?)",
    )
    .bind(study)
    .bind(now())
    .bind(serde_json::to_string(&files).unwrap_or_else(|_| "[]".into()))
    .execute(&mut *tx)
    .await?;
    let patient: Option<i64> =
        sqlx::query("DELETE FROM studies WHERE study_instance_uid = ? RETURNING patient_pk")
            .bind(study)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
    forget_patient_without_studies(&mut tx, patient).await?;
    tx.commit().await?;
    Ok(Some(removed))
}

/// Delete the patient row of a study just deleted, if it has no study left.
async fn forget_patient_without_studies(
    conn: &mut SqliteConnection,
    patient: Option<i64>,
) -> Result<(), sqlx::Error> {
    if let Some(pk) = patient {
        sqlx::query(
            "DELETE FROM patients WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_pk = ?1)",
        )
        .bind(pk)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Delete an instance row and the parents it alone had brought in.
async fn forget_row(
    conn: &mut SqliteConnection,
    sop_instance_uid: &str,
    file_path: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let row = sqlx::query(
        "DELETE FROM instances WHERE sop_instance_uid = ? AND file_path = ?
         RETURNING series_instance_uid, study_instance_uid",
    )
    .bind(sop_instance_uid)
    .bind(file_path)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row {
        let (series, study): (String, String) = (row.get(0), row.get(1));
        forget_empty_parents(&mut tx, &series, &study).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Delete a series, study and patient row that no instance is left in.
async fn forget_empty_parents(
    conn: &mut SqliteConnection,
    series: &str,
    study: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM series WHERE series_instance_uid = ?1
         AND NOT EXISTS (SELECT 1 FROM instances WHERE series_instance_uid = ?1)",
    )
    .bind(series)
    .execute(&mut *conn)
    .await?;
    let patient: Option<i64> = sqlx::query(
        "DELETE FROM studies WHERE study_instance_uid = ?1
         AND NOT EXISTS (SELECT 1 FROM series WHERE study_instance_uid = ?1)
         AND NOT EXISTS (SELECT 1 FROM instances WHERE study_instance_uid = ?1)
         RETURNING patient_pk",
    )
    .bind(study)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.get(0));
    forget_patient_without_studies(conn, patient).await
}

/// Patient, study and series rows already written with the same values, so
/// that the instances of a series cost one upsert each. Cleared whenever a
/// commit fails, in case a row it remembers is gone.
#[derive(Default)]
struct KnownSeries {
    seen: std::collections::HashMap<String, u64>,
    pending: Vec<(String, u64)>,
}

impl KnownSeries {
    const MAX: usize = 10_000;

    fn clear(&mut self) {
        self.seen.clear();
        self.pending.clear();
    }

    fn fingerprint(h: &crate::store::Header) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut s = std::collections::hash_map::DefaultHasher::new();
        (
            &h.patient_id,
            &h.patient_name,
            &h.patient_birth_date,
            &h.patient_sex,
            &h.study_instance_uid,
            &h.study_date,
            &h.study_time,
            &h.accession_number,
            &h.study_id,
            &h.study_description,
        )
            .hash(&mut s);
        (
            &h.modality,
            &h.series_number,
            &h.series_description,
            &h.frame_of_reference_uid,
        )
            .hash(&mut s);
        s.finish()
    }

    /// Whether the parent rows need writing; remembers them until commit.
    fn needs_parents(&mut self, h: &crate::store::Header) -> bool {
        let series = h.series_instance_uid.clone().unwrap_or_default();
        let fp = Self::fingerprint(h);
        if self.seen.get(&series) == Some(&fp)
            || self.pending.iter().any(|(s, f)| *s == series && *f == fp)
        {
            return false;
        }
        self.pending.push((series, fp));
        true
    }

    fn committed(&mut self) {
        if self.seen.len() > Self::MAX {
            self.seen.clear();
        }
        self.seen.extend(self.pending.drain(..));
    }
}

async fn commit_group(
    conn: &mut SqliteConnection,
    known: &mut KnownSeries,
    records: &[&InstanceRecord],
) -> Result<Vec<Indexed>, sqlx::Error> {
    known.pending.clear();
    let parents: Vec<bool> = records
        .iter()
        .map(|r| known.needs_parents(&r.stored.header))
        .collect();
    // One instance of a known series is one statement: atomic on its own,
    // triggers included, and the cheapest commit there is.
    let single = records.len() == 1 && !parents[0];
    if !single {
        // IMMEDIATE takes the write lock up front (waiting out busy_timeout).
        // A deferred transaction that reads first and then writes fails at
        // once with SQLITE_BUSY when another connection committed between.
        conn.execute("BEGIN IMMEDIATE").await?;
    }
    let mut out = Vec::with_capacity(records.len());
    let mut result = Ok(());
    for (r, p) in records.iter().zip(&parents) {
        match upsert(conn, r, *p).await {
            Ok(indexed) => out.push(indexed),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if !single {
        match &result {
            Ok(()) => {
                if let Err(e) = conn.execute("COMMIT").await {
                    let _ = conn.execute("ROLLBACK").await;
                    return Err(e);
                }
            }
            Err(_) => {
                let _ = conn.execute("ROLLBACK").await;
            }
        }
    }
    result?;
    known.committed();
    Ok(out)
}

/// Index one instance. A re-sent instance that moved to another study or
/// series leaves its old path in `superseded_files` (by trigger), read back
/// only when the upsert reports a replacement.
async fn upsert(
    conn: &mut SqliteConnection,
    r: &InstanceRecord,
    parents: bool,
) -> Result<Indexed, sqlx::Error> {
    if parents {
        upsert_parents(conn, r).await?;
    }
    let receive_count = instance_upsert(conn, r).await?;
    if receive_count <= 1 {
        return Ok(Indexed::default());
    }
    let sop = r
        .stored
        .header
        .sop_instance_uid
        .as_deref()
        .unwrap_or_default();
    // The row stays until a start has removed the file for good (see
    // `Index::finish_superseded`): the receiver's unlink is not durable,
    // and a file that came back after a crash would be indexed again and
    // move the instance back.
    let moved = sqlx::query(
        "SELECT file_path, series_instance_uid, study_instance_uid FROM superseded_files \
         WHERE sop_instance_uid = ? AND file_path <> ? ORDER BY rowid DESC LIMIT 1",
    )
    .bind(sop)
    .bind(&r.stored.relative_path)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(moved) = moved else {
        return Ok(Indexed {
            replaced: true,
            stale_path: None,
        });
    };
    let (path, series, study): (String, Option<String>, Option<String>) =
        (moved.get(0), moved.get(1), moved.get(2));
    if let (Some(series), Some(study)) = (series, study) {
        forget_empty_parents(conn, &series, &study).await?;
    }
    Ok(Indexed {
        replaced: true,
        stale_path: Some(path),
    })
}

/// Patient, study and series rows for an instance.
async fn upsert_parents(
    conn: &mut SqliteConnection,
    r: &InstanceRecord,
) -> Result<(), sqlx::Error> {
    let h = &r.stored.header;
    let study = h.study_instance_uid.as_deref().unwrap_or_default();
    let series = h.series_instance_uid.as_deref().unwrap_or_default();
    let patient_pk: i64 = sqlx::query(
        "INSERT INTO patients (patient_id, patient_name, birth_date, sex, updated_at)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(patient_id) DO UPDATE SET
            patient_name = coalesce(excluded.patient_name, patient_name),
            birth_date = coalesce(excluded.birth_date, birth_date),
            sex = coalesce(excluded.sex, sex),
            updated_at = excluded.updated_at
         RETURNING id",
    )
    .bind(h.patient_id.as_deref().unwrap_or_default())
    .bind(h.patient_name.as_deref())
    .bind(h.patient_birth_date.as_deref())
    .bind(h.patient_sex.as_deref())
    .bind(&r.received_at)
    .fetch_one(&mut *conn)
    .await?
    .get(0);

    sqlx::query(
        "INSERT INTO studies (study_instance_uid, patient_pk, study_date, study_time, accession_number,
                              study_id, description, first_received_at, last_received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(study_instance_uid) DO UPDATE SET
            patient_pk = excluded.patient_pk,
            study_date = coalesce(excluded.study_date, study_date),
            study_time = coalesce(excluded.study_time, study_time),
            accession_number = coalesce(excluded.accession_number, accession_number),
            study_id = coalesce(excluded.study_id, study_id),
            description = coalesce(excluded.description, description),
            last_received_at = max(last_received_at, excluded.last_received_at)",
    )
    .bind(study)
    .bind(patient_pk)
    .bind(h.study_date.as_deref())
    .bind(h.study_time.as_deref())
    .bind(h.accession_number.as_deref())
    .bind(h.study_id.as_deref())
    .bind(h.study_description.as_deref())
    .bind(&r.received_at)
    .bind(&r.received_at)
    .execute(&mut *conn)
    .await?;

    sqlx::query(
        "INSERT INTO series (series_instance_uid, study_instance_uid, modality, series_number, description,
                             frame_of_reference_uid, first_received_at, last_received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(series_instance_uid) DO UPDATE SET
            study_instance_uid = excluded.study_instance_uid,
            modality = coalesce(excluded.modality, modality),
            series_number = coalesce(excluded.series_number, series_number),
            description = coalesce(excluded.description, description),
            frame_of_reference_uid = coalesce(excluded.frame_of_reference_uid, frame_of_reference_uid),
            last_received_at = max(last_received_at, excluded.last_received_at)",
    )
    .bind(series)
    .bind(study)
    .bind(h.modality.as_deref())
    .bind(h.series_number)
    .bind(h.series_description.as_deref())
    .bind(h.frame_of_reference_uid.as_deref())
    .bind(&r.received_at)
    .bind(&r.received_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn instance_upsert(
    conn: &mut SqliteConnection,
    r: &InstanceRecord,
) -> Result<i64, sqlx::Error> {
    let h = &r.stored.header;
    let sop = h.sop_instance_uid.as_deref().unwrap_or_default();
    let study = h.study_instance_uid.as_deref().unwrap_or_default();
    let series = h.series_instance_uid.as_deref().unwrap_or_default();
    let row = sqlx::query(
        "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid,
                                transfer_syntax_uid, modality, instance_number, frame_of_reference_uid,
                                size_bytes, file_path, calling_ae, called_ae, peer_address, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(sop_instance_uid) DO UPDATE SET
            series_instance_uid = excluded.series_instance_uid,
            study_instance_uid = excluded.study_instance_uid,
            sop_class_uid = excluded.sop_class_uid,
            transfer_syntax_uid = excluded.transfer_syntax_uid,
            modality = excluded.modality,
            instance_number = excluded.instance_number,
            frame_of_reference_uid = excluded.frame_of_reference_uid,
            size_bytes = excluded.size_bytes,
            file_path = excluded.file_path,
            calling_ae = excluded.calling_ae,
            called_ae = excluded.called_ae,
            peer_address = excluded.peer_address,
            received_at = excluded.received_at,
            receive_count = receive_count + 1
         RETURNING receive_count",
    )
    .bind(sop)
    .bind(series)
    .bind(study)
    .bind(h.sop_class_uid.as_deref().unwrap_or_default())
    .bind(&r.stored.transfer_syntax_uid)
    .bind(h.modality.as_deref())
    .bind(h.instance_number)
    .bind(h.frame_of_reference_uid.as_deref())
    .bind(r.stored.size_bytes as i64)
    .bind(&r.stored.relative_path)
    .bind(r.calling_ae.as_deref())
    .bind(r.called_ae.as_deref())
    .bind(r.peer_address.as_deref())
    .bind(&r.received_at)
    // All rows, not the first: outside a transaction SQLite commits the
    // statement when it is stepped to its end, and a commit that fails
    // there (a full disk) is reported only to whoever steps that far.
    // `fetch_one` stops at the first row and its drop discards that error,
    // so the instance would be acknowledged without its row.
    .fetch_all(&mut *conn)
    .await?;
    row.first()
        .map(|r| r.get(0))
        .ok_or(sqlx::Error::RowNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed COMMIT (SQLITE_FULL) can leave a connection inside a
    /// transaction that sqlx no longer tracks. Back in the pool it would keep
    /// the write lock and show its uncommitted rows to the next user.
    #[tokio::test]
    async fn a_connection_left_in_a_transaction_is_not_used_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("index.sqlite");
        let index = Index::open(&path).await.expect("open");
        {
            let mut c = index.pool().acquire().await.expect("acquire");
            c.execute("BEGIN IMMEDIATE").await.expect("begin");
            c.execute(
                "INSERT INTO node (id, pid, started_at, version, pipeline_enabled) \
                 VALUES (1, 1, 'then', 'x', 0)",
            )
            .await
            .expect("insert");
        }
        // Another writer gets the lock (within its busy timeout)...
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("options")
            .filename(&path)
            .busy_timeout(Duration::from_secs(5));
        let mut other = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        other
            .execute("BEGIN IMMEDIATE")
            .await
            .expect("the write lock was released");
        other.execute("ROLLBACK").await.expect("rollback");
        // ...and no pooled connection sees the row that was never committed.
        for _ in 0..4 {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM node")
                .fetch_one(index.pool())
                .await
                .expect("count");
            assert_eq!(n, 0);
        }
        index.close().await;
    }
}
