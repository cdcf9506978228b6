//! The job queue in SQLite: enqueue, atomic claim with a lease, heartbeat,
//! finish, retry with exponential back-off, lease expiry, and the
//! append-only event log. Every state change writes an event.

use serde::Serialize;
use sqlx::{Row, SqlitePool};

use crate::index::{at_offset, now};

/// The claim a worker's updates of its job are guarded by (a macro, so
/// that the statements stay literal).
macro_rules! ours {
    () => {
        " WHERE id = ? AND worker = ? AND attempts = ? AND state = 'running'"
    };
}

async fn set_end(
    tx: &mut sqlx::SqliteConnection,
    j: &Job,
    worker: &str,
    state: &str,
    error: &str,
    n: &str,
) -> sqlx::Result<u64> {
    let r = sqlx::query(concat!(
        "UPDATE jobs SET state = ?, finished_at = ?, error = ?, lease_expires_at = NULL",
        ours!()
    ))
    .bind(state)
    .bind(n)
    .bind(error)
    .bind(j.id)
    .bind(worker)
    .bind(j.attempts)
    .execute(&mut *tx)
    .await?;
    Ok(r.rows_affected())
}

/// A job as `esorisk jobs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub study_instance_uid: String,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub model_version: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub risk: Option<f64>,
    pub sr_uid: Option<String>,
    pub rtstruct_uid: Option<String>,
    pub input_uids: String,
    /// `<files>-<model>`: hashes of the input files the job was queued for
    /// and of the model version that queued it (with `:superseded:<id>` or
    /// `:removed:<id>` when the job gave the key up).
    pub input_key: String,
    pub worker: Option<String>,
}

fn job(r: &sqlx::sqlite::SqliteRow) -> Job {
    Job {
        id: r.get("id"),
        study_instance_uid: r.get("study_instance_uid"),
        state: r.get("state"),
        attempts: r.get("attempts"),
        max_attempts: r.get("max_attempts"),
        model_version: r.get("model_version"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        error: r.get("error"),
        risk: r.get("risk"),
        sr_uid: r.get("sr_uid"),
        rtstruct_uid: r.get("rtstruct_uid"),
        input_key: r.get("input_key"),
        input_uids: r.get("input_uids"),
        worker: r.get("worker"),
    }
}

/// Append to the event log.
pub async fn event<'e, E>(ex: E, job_id: i64, ev: &str, detail: &str) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query("INSERT INTO job_events (job_id, at, event, detail) VALUES (?, ?, ?, ?)")
        .bind(job_id)
        .bind(now())
        .bind(ev)
        .bind(detail)
        .execute(ex)
        .await?;
    Ok(())
}

/// Queue a job unless one with the same inputs and model exists. Returns
/// the new job's id.
pub async fn enqueue(
    pool: &SqlitePool,
    study: &str,
    input_key: &str,
    input_uids: &[String],
    model_version: &str,
    max_attempts: u32,
) -> sqlx::Result<Option<i64>> {
    let uids = serde_json::to_string(input_uids).unwrap_or_else(|_| "[]".into());
    // The job and its first event together: no job without its history.
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (study_instance_uid, input_key, input_uids, model_version, state, \
         max_attempts, created_at) VALUES (?, ?, ?, ?, 'queued', ?, ?) \
         ON CONFLICT(input_key) DO NOTHING RETURNING id",
    )
    .bind(study)
    .bind(input_key)
    .bind(uids)
    .bind(model_version)
    .bind(i64::from(max_attempts))
    .bind(now())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        event(
            &mut *tx,
            id,
            "queued",
            &format!("{} input instances", input_uids.len()),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// When the job holding `key` ended with results (succeeded, or unchanged)
/// but is not the study's latest such job, the study's files went back to
/// inputs scored before, after others were scored: the results last sent
/// describe the others. The old job gives up the key, so that the inputs
/// are queued, and scored, again. Returns whether it did.
pub async fn release_if_not_current(
    pool: &SqlitePool,
    study: &str,
    key: &str,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET input_key = input_key || ':superseded:' || id \
         WHERE input_key = ?1 AND study_instance_uid = ?2 AND state IN ('succeeded', 'unchanged') \
         AND id <> (SELECT max(id) FROM jobs WHERE study_instance_uid = ?2 \
                    AND state IN ('succeeded', 'unchanged'))",
    )
    .bind(key)
    .bind(study)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The job (id, state) holding an input key, if any.
pub async fn with_input_key(
    pool: &SqlitePool,
    input_key: &str,
) -> sqlx::Result<Option<(i64, String)>> {
    let row = sqlx::query("SELECT id, state FROM jobs WHERE input_key = ?")
        .bind(input_key)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Claim the oldest due queued job for `worker`, atomically (one UPDATE
/// with RETURNING: two workers never get the same job). The job records
/// `model_version`, the model that scores it: a job queued by a node
/// without a model, or before the model was replaced, names the one that
/// scored it, as its SR does.
pub async fn claim(
    pool: &SqlitePool,
    worker: &str,
    lease_secs: u64,
    model_version: &str,
) -> sqlx::Result<Option<Job>> {
    let n = now();
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "UPDATE jobs SET state = 'running', worker = ?, attempts = attempts + 1, \
         lease_expires_at = ?, heartbeat_at = ?, started_at = ?, model_version = ? \
         WHERE id = (SELECT id FROM jobs WHERE state = 'queued' \
                     AND (not_before IS NULL OR not_before <= ?) ORDER BY id LIMIT 1) \
         RETURNING *",
    )
    .bind(worker)
    .bind(at_offset(lease_secs as f64))
    .bind(&n)
    .bind(&n)
    .bind(model_version)
    .bind(&n)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let j = job(&row);
    event(
        &mut *tx,
        j.id,
        "claimed",
        &format!("{worker}, attempt {}", j.attempts),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(j))
}

/// Extend a running job's lease; false when the job is no longer ours.
pub async fn heartbeat(
    pool: &SqlitePool,
    id: i64,
    worker: &str,
    lease_secs: u64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET lease_expires_at = ?, heartbeat_at = ? \
         WHERE id = ? AND state = 'running' AND worker = ?",
    )
    .bind(at_offset(lease_secs as f64))
    .bind(now())
    .bind(id)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The states a job can be in.
pub const STATES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "unchanged",
    "failed",
    "dead",
];

/// What a scoring used and gave, to tell a result already sent from a new
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored {
    /// The SOP Instance UIDs of the inputs the scoring used (the RT
    /// Dose(s), RT Plan(s), RT Structure Set and CT slices), sorted, as a
    /// JSON array.
    pub used_uids: String,
    /// SHA-256 (hex) of the result: the risk's bits, the learned ROI and
    /// the values the SR reports.
    pub result_digest: String,
}

/// How a job ended.
pub enum Outcome {
    Succeeded {
        risk: f64,
        sr_uid: String,
        rtstruct_uid: String,
        predecessor: Option<String>,
        scored: Scored,
    },
    /// Scored, with the same inputs, model and result as job `same_as`,
    /// whose outputs were the study's last: nothing written or sent.
    Unchanged {
        risk: f64,
        same_as: i64,
        scored: Scored,
    },
    /// The study cannot be scored: not retried.
    Failed(String),
    /// Something that may pass on a retry (disk, database, ...).
    Transient(String),
}

/// The wait before the next try after failed try number `attempt` (from
/// 1): `base` doubled at each try, at most `cap`.
pub fn backoff_seconds(base: u64, attempt: i64, cap: u64) -> f64 {
    let doublings = attempt.clamp(1, 64) - 1;
    (base as f64 * 2f64.powi(doublings as i32)).min(cap as f64)
}

/// Record the end of a claimed job, in a transaction of its own.
pub async fn finish(
    pool: &SqlitePool,
    j: &Job,
    worker: &str,
    outcome: &Outcome,
    retry_base_secs: u64,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let ours = finish_in(&mut tx, j, worker, outcome, retry_base_secs).await?;
    tx.commit().await?;
    Ok(ours)
}

/// Record the end of a claimed job inside the caller's transaction (the
/// one that stores the job's outputs, so that outputs and the job's end
/// are committed together or not at all), only while the job is still
/// this worker's attempt: a lease that lapsed (a stalled disk, a paused
/// process) may have given it to another worker, whose end is the one
/// that counts. False, and nothing written, when it is no longer ours.
pub async fn finish_in(
    tx: &mut sqlx::SqliteConnection,
    j: &Job,
    worker: &str,
    outcome: &Outcome,
    retry_base_secs: u64,
) -> sqlx::Result<bool> {
    let n = now();
    let (updated, ev, detail) = match outcome {
        Outcome::Succeeded {
            risk,
            sr_uid,
            rtstruct_uid,
            predecessor,
            scored,
        } => {
            let r = sqlx::query(concat!(
                "UPDATE jobs SET state = 'succeeded', finished_at = ?, risk = ?, sr_uid = ?, \
                 rtstruct_uid = ?, predecessor_sr_uid = ?, used_uids = ?, result_digest = ?, \
                 error = NULL, lease_expires_at = NULL",
                ours!()
            ))
            .bind(&n)
            .bind(risk)
            .bind(sr_uid)
            .bind(rtstruct_uid)
            .bind(predecessor)
            .bind(&scored.used_uids)
            .bind(&scored.result_digest)
            .bind(j.id)
            .bind(worker)
            .bind(j.attempts)
            .execute(&mut *tx)
            .await?;
            (
                r.rows_affected(),
                "succeeded",
                format!("risk {risk:.3}; SR {sr_uid}"),
            )
        }
        // The risk stays in the event; the job's row keeps the reason, so
        // that `esorisk jobs` and `esorisk studies` say why nothing went.
        Outcome::Unchanged {
            risk,
            same_as,
            scored,
        } => {
            let why = unchanged_reason(*same_as);
            let r = sqlx::query(concat!(
                "UPDATE jobs SET state = 'unchanged', finished_at = ?, error = ?, used_uids = ?, \
                 result_digest = ?, lease_expires_at = NULL",
                ours!()
            ))
            .bind(&n)
            .bind(&why)
            .bind(&scored.used_uids)
            .bind(&scored.result_digest)
            .bind(j.id)
            .bind(worker)
            .bind(j.attempts)
            .execute(&mut *tx)
            .await?;
            (
                r.rows_affected(),
                "unchanged",
                format!("risk {risk:.3}; {why}"),
            )
        }
        Outcome::Failed(reason) => {
            let r = set_end(tx, j, worker, "failed", reason, &n).await?;
            (r, "failed", reason.clone())
        }
        Outcome::Transient(reason) if j.attempts >= j.max_attempts => {
            let why = format!("gave up after {} attempts: {reason}", j.attempts);
            let r = set_end(tx, j, worker, "dead", &why, &n).await?;
            (r, "dead", why)
        }
        Outcome::Transient(reason) => {
            let delay = backoff_seconds(retry_base_secs, j.attempts, u64::MAX);
            let r = sqlx::query(concat!(
                "UPDATE jobs SET state = 'queued', error = ?, not_before = ?, worker = NULL, \
                 lease_expires_at = NULL",
                ours!()
            ))
            .bind(reason)
            .bind(at_offset(delay))
            .bind(j.id)
            .bind(worker)
            .bind(j.attempts)
            .execute(&mut *tx)
            .await?;
            (
                r.rows_affected(),
                "retry",
                format!("in {delay:.0} s: {reason}"),
            )
        }
    };
    if updated == 0 {
        return Ok(false);
    }
    event(&mut *tx, j.id, ev, &detail).await?;
    Ok(true)
}

/// Why an unchanged job sent nothing.
pub fn unchanged_reason(same_as: i64) -> String {
    format!(
        "same inputs and result as job {same_as}: nothing sent (its results stand; esorisk retry {same_as} --resend sends them again)"
    )
}

/// Begin the end of a claimed job in `tx`: take the database's write lock
/// for the rest of the transaction (so that what it reads next, the
/// study's last result, cannot change before it commits) and check that
/// the job is still this attempt's. False when it is not.
pub async fn hold(tx: &mut sqlx::SqliteConnection, j: &Job, worker: &str) -> sqlx::Result<bool> {
    let r = sqlx::query(concat!("UPDATE jobs SET heartbeat_at = ?", ours!()))
        .bind(now())
        .bind(j.id)
        .bind(worker)
        .bind(j.attempts)
        .execute(&mut *tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The job whose outputs were the study's last written (by when it ended),
/// if it succeeded with the same model, used the same inputs and gave the
/// same result as `scored`: then `j` has nothing new to send. A study whose
/// last outputs were an SR saying it could not be scored, or the results
/// of another model, gets new ones; so does a study removed (retention,
/// purge: its jobs' keys are marked `:removed:`, and their output files
/// are gone) and sent again.
pub async fn same_as_last_sent(
    tx: &mut sqlx::SqliteConnection,
    j: &Job,
    scored: &Scored,
) -> sqlx::Result<Option<i64>> {
    let last = sqlx::query(
        "SELECT id, state, model_version, used_uids, result_digest FROM jobs WHERE study_instance_uid = ? \
         AND id <> ? AND id IN (SELECT job_id FROM outputs WHERE study_instance_uid = ?) \
         AND input_key NOT LIKE '%:removed:%' \
         ORDER BY finished_at DESC, id DESC LIMIT 1",
    )
    .bind(&j.study_instance_uid)
    .bind(j.id)
    .bind(&j.study_instance_uid)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(last
        .filter(|r| {
            r.get::<String, _>(1) == "succeeded"
                && r.get::<String, _>(2) == j.model_version
                && r.get::<Option<String>, _>(3).as_deref() == Some(scored.used_uids.as_str())
                && r.get::<Option<String>, _>(4).as_deref() == Some(scored.result_digest.as_str())
        })
        .map(|r| r.get(0)))
}

/// Take back running jobs whose lease expired (their worker crashed or the
/// node was killed): requeued, or dead when out of attempts.
pub async fn expire_leases(pool: &SqlitePool) -> sqlx::Result<usize> {
    let n = now();
    let rows = sqlx::query(
        "SELECT id, attempts, max_attempts, worker FROM jobs WHERE state = 'running' AND lease_expires_at < ?",
    )
    .bind(&n)
    .fetch_all(pool)
    .await?;
    let mut taken = 0;
    for r in &rows {
        let (id, attempts, max): (i64, i64, i64) =
            (r.get("id"), r.get("attempts"), r.get("max_attempts"));
        let worker: Option<String> = r.get("worker");
        let worker = worker.unwrap_or_default();
        // The lease is checked again in the update: the worker may have
        // renewed it, or ended the job, since it was read.
        let mut tx = pool.begin().await?;
        let (updated, ev, why) = if attempts >= max {
            let why = format!("worker {worker} stopped during attempt {attempts} of {max}");
            let r = sqlx::query("UPDATE jobs SET state = 'dead', finished_at = ?, error = ?, lease_expires_at = NULL \
                 WHERE id = ? AND attempts = ? AND state = 'running' AND lease_expires_at < ?")
                .bind(&n)
                .bind(&why)
                .bind(id)
                .bind(attempts)
                .bind(&n)
                .execute(&mut *tx)
                .await?;
            (r.rows_affected(), "dead", why)
        } else {
            let r = sqlx::query("UPDATE jobs SET state = 'queued', worker = NULL, lease_expires_at = NULL, not_before = NULL \
                 WHERE id = ? AND attempts = ? AND state = 'running' AND lease_expires_at < ?")
                .bind(id)
                .bind(attempts)
                .bind(&n)
                .execute(&mut *tx)
                .await?;
            (
                r.rows_affected(),
                "heartbeat-lost",
                format!("worker {worker} stopped; requeued"),
            )
        };
        if updated == 1 {
            event(&mut *tx, id, ev, &why).await?;
            taken += 1;
        }
        tx.commit().await?;
    }
    Ok(taken)
}

/// At start-up every running job belongs to a worker of a previous run:
/// their leases are void now.
pub async fn void_leases(pool: &SqlitePool) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET lease_expires_at = ? WHERE state = 'running'")
        .bind(at_offset(-1.0))
        .execute(pool)
        .await?;
    expire_leases(pool).await.map(|_| ())
}

/// What `esorisk retry` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Retried {
    /// A dead or failed job queued again (its dead deliveries too).
    Job,
    /// A succeeded job's dead (with `resend`: and sent) deliveries given
    /// another round.
    Deliveries(u64),
    /// Nothing to retry.
    Nothing,
    /// No job has that number.
    NoSuchJob,
    /// Only dead deliveries no longer wanted, dropped.
    Dropped(u64),
}

/// `esorisk retry`: requeue a dead or failed job, or send a succeeded
/// job's dead deliveries again (a destination that was down for long, or
/// that now accepts a SOP class it refused); with `resend`, its sent
/// deliveries too (a planning system that lost the import).
pub async fn retry(
    pool: &SqlitePool,
    id: i64,
    resend: bool,
    wanted: &dyn Fn(&str, &str) -> bool,
) -> sqlx::Result<Retried> {
    // One transaction: the job, its deliveries and the event together.
    let mut tx = pool.begin().await?;
    // Dead deliveries the destination no longer wants (`wanted(destination,
    // output kind)` is false: it left pipeline.destinations, or its objects
    // changed) are dropped, not sent again.
    let unwanted: Vec<i64> = sqlx::query(
        "SELECT d.id, d.destination, o.kind FROM deliveries d \
         JOIN outputs o ON o.sop_instance_uid = d.sop_instance_uid \
         WHERE d.job_id = ? AND d.state = 'dead'",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .filter(|r| !wanted(&r.get::<String, _>(1), &r.get::<String, _>(2)))
    .map(|r| r.get(0))
    .collect();
    for d in &unwanted {
        sqlx::query(
            "UPDATE deliveries SET state = 'dropped', last_error = \
             'dropped by esorisk retry: the destination no longer takes this object (pipeline.destinations)' \
             WHERE id = ?",
        )
        .bind(d)
        .execute(&mut *tx)
        .await?;
    }
    if !unwanted.is_empty() {
        event(
            &mut *tx,
            id,
            "dropped",
            &format!(
                "{} dead deliveries no longer wanted by their destination, by esorisk retry",
                unwanted.len()
            ),
        )
        .await?;
    }
    let r = sqlx::query(
        "UPDATE jobs SET state = 'queued', attempts = 0, not_before = NULL, error = NULL, worker = NULL \
         WHERE id = ? AND state IN ('dead', 'failed')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let requeued = r.rows_affected() == 1;
    let d = sqlx::query(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?1 \
         WHERE job_id = ?2 AND (state = 'dead' OR (?3 AND state = 'sent'))",
    )
    .bind(now())
    .bind(id)
    .bind(resend)
    .execute(&mut *tx)
    .await?;
    if requeued {
        event(&mut *tx, id, "requeued", "by esorisk retry").await?;
        tx.commit().await?;
        Ok(Retried::Job)
    } else if d.rows_affected() > 0 {
        let n = d.rows_affected();
        event(
            &mut *tx,
            id,
            "requeued",
            &match resend {
                true => format!("{n} deliveries, by esorisk retry --resend"),
                false => format!("{n} dead deliveries, by esorisk retry"),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Retried::Deliveries(n))
    } else if !unwanted.is_empty() {
        tx.commit().await?;
        Ok(Retried::Dropped(unwanted.len() as u64))
    } else {
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        Ok(match exists {
            Some(_) => Retried::Nothing,
            None => Retried::NoSuchJob,
        })
    }
}

/// Deliveries counted per destination and state, with the last error of
/// each group (`esorisk jobs`).
#[derive(Debug, Clone, Serialize)]
pub struct DeliverySummary {
    pub destination: String,
    pub state: String,
    pub count: i64,
    /// The last error; for sent deliveries, the last warning.
    pub last_error: Option<String>,
    /// The jobs whose deliveries these are (not listed for sent ones): what
    /// `esorisk retry` takes.
    pub jobs: Vec<i64>,
}

pub async fn delivery_summary(
    pool: &SqlitePool,
    study: Option<&str>,
) -> sqlx::Result<Vec<DeliverySummary>> {
    // Deliveries of the jobs of `study` (all when `None`).
    const OF_STUDY: &str =
        "(?1 IS NULL OR job_id IN (SELECT id FROM jobs WHERE study_instance_uid = ?1))";
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT destination, state, count(*), \
         (SELECT last_error FROM deliveries e WHERE e.destination = d.destination \
          AND e.state = d.state AND e.last_error IS NOT NULL AND {OF_STUDY} ORDER BY e.id DESC LIMIT 1), \
         CASE WHEN state = 'sent' THEN '' ELSE group_concat(DISTINCT job_id) END \
         FROM deliveries d WHERE {OF_STUDY} GROUP BY destination, state ORDER BY destination, state"
    )))
    .bind(study)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| DeliverySummary {
            destination: r.get(0),
            state: r.get(1),
            count: r.get(2),
            last_error: r.get(3),
            jobs: {
                let ids: Option<String> = r.get(4);
                let mut ids: Vec<i64> = ids
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|i| i.trim().parse().ok())
                    .collect();
                ids.sort_unstable();
                ids
            },
        })
        .collect())
}

/// Jobs, newest first, optionally of one state or one study.
pub async fn list(
    pool: &SqlitePool,
    state: Option<&str>,
    study: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<Job>> {
    let rows = sqlx::query(
        "SELECT * FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR study_instance_uid = ?2) \
         ORDER BY id DESC LIMIT ?3",
    )
    .bind(state)
    .bind(study)
    // 0 (or less): all of them, as `studies --limit 0` lists all.
    .bind(if limit > 0 { limit } else { -1 })
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(job).collect())
}

/// Events after `after_id`, oldest first, optionally of one study's jobs:
/// (id, job, at, event, detail).
pub async fn events_after(
    pool: &SqlitePool,
    after_id: i64,
    study: Option<&str>,
) -> sqlx::Result<Vec<(i64, i64, String, String, Option<String>)>> {
    let rows = sqlx::query(
        "SELECT e.id, e.job_id, e.at, e.event, e.detail FROM job_events e JOIN jobs j ON j.id = e.job_id \
         WHERE e.id > ?1 AND (?2 IS NULL OR j.study_instance_uid = ?2) ORDER BY e.id",
    )
    .bind(after_id)
    .bind(study)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get("id"),
                r.get("job_id"),
                r.get("at"),
                r.get("event"),
                r.get("detail"),
            )
        })
        .collect())
}

/// The SR of the latest succeeded job of a study (for the predecessor).
pub async fn latest_sr(pool: &SqlitePool, study: &str) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT o.sop_instance_uid, o.series_instance_uid FROM jobs j JOIN outputs o ON o.sop_instance_uid = j.sr_uid \
         WHERE j.study_instance_uid = ? AND j.state = 'succeeded' ORDER BY j.id DESC LIMIT 1",
    )
    .bind(study)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.get(1), r.get(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job ends unchanged only against the study's last written outputs,
    /// and only when they are a success of the same model with the same
    /// inputs used and the same result; the end is recorded under the
    /// job's guard, with the reason for `esorisk jobs`.
    #[tokio::test]
    async fn a_job_is_unchanged_only_against_the_last_success_sent() {
        let tmp = tempfile::tempdir().expect("tmp");
        let index = crate::index::Index::open(&tmp.path().join("index.sqlite"))
            .await
            .expect("index");
        let pool = index.pool();
        let scored = |used: &str, digest: &str| Scored {
            used_uids: used.into(),
            result_digest: digest.into(),
        };
        // Queue, claim and end a job of study 1.2.3 with `end`, writing an
        // output for it unless it ends unchanged.
        let run = |key: &'static str, model: &'static str| async move {
            enqueue(pool, "1.2.3", key, &["1.2.3.4".into()], model, 3)
                .await
                .expect("enqueue")
                .expect("job");
            claim(pool, "w", 60, model)
                .await
                .expect("claim")
                .expect("job")
        };
        let write = |job: &Job, end: Outcome| {
            let job = job.clone();
            async move {
                let mut tx = pool.begin().await.expect("tx");
                assert!(hold(&mut tx, &job, "w").await.expect("hold"));
                if !matches!(end, Outcome::Unchanged { .. }) {
                    sqlx::query(
                        "INSERT INTO outputs VALUES (?, ?, '1.2.3', '1.2.3.6', '1.2', 'sr', 'out/x.dcm', 'now')",
                    )
                    .bind(format!("1.2.3.{}", 100 + job.id))
                    .bind(job.id)
                    .execute(&mut *tx)
                    .await
                    .expect("output");
                }
                assert!(finish_in(&mut tx, &job, "w", &end, 1).await.expect("end"));
                tx.commit().await.expect("commit");
            }
        };
        let same = |job: &Job, s: Scored| {
            let job = job.clone();
            async move {
                let mut tx = pool.begin().await.expect("tx");
                assert!(hold(&mut tx, &job, "w").await.expect("hold"));
                same_as_last_sent(&mut tx, &job, &s).await.expect("look")
            }
        };
        let success = |s: Scored| Outcome::Succeeded {
            risk: 0.25,
            sr_uid: "1.2.3.5".into(),
            rtstruct_uid: "1.2.3.9".into(),
            predecessor: None,
            scored: s,
        };
        let first = run("k1", "m").await;
        assert_eq!(
            same(&first, scored("[\"a\"]", "d")).await,
            None,
            "no result yet"
        );
        write(&first, success(scored("[\"a\"]", "d"))).await;

        let second = run("k2", "m").await;
        assert_eq!(same(&second, scored("[\"a\"]", "d")).await, Some(first.id));
        assert_eq!(
            same(&second, scored("[\"a\"]", "e")).await,
            None,
            "another result"
        );
        assert_eq!(
            same(&second, scored("[\"a\",\"b\"]", "d")).await,
            None,
            "other inputs"
        );
        let end = Outcome::Unchanged {
            risk: 0.25,
            same_as: first.id,
            scored: scored("[\"a\"]", "d"),
        };
        write(&second, end).await;
        let listed = list(pool, Some("unchanged"), None, 0).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].risk, None);
        assert!(
            listed[0]
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("same inputs and result as job 1: nothing sent")),
            "{:?}",
            listed[0].error
        );
        let events = all_events(pool, second.id).await;
        assert_eq!(events.last().map(String::as_str), Some("unchanged"));

        // Another model's result of the same inputs is new.
        let other_model = run("k3", "m2").await;
        assert_eq!(same(&other_model, scored("[\"a\"]", "d")).await, None);
        // So is any result after an SR saying the study was not scored.
        let not_scored = run("k4", "m").await;
        write(&not_scored, Outcome::Failed("no esophagus".into())).await;
        let after = run("k5", "m").await;
        assert_eq!(same(&after, scored("[\"a\"]", "d")).await, None);
        // A study removed and sent again gets its results again.
        write(&after, success(scored("[\"a\"]", "d"))).await;
        let again = run("k6", "m").await;
        assert_eq!(same(&again, scored("[\"a\"]", "d")).await, Some(after.id));
        sqlx::query("UPDATE jobs SET input_key = input_key || ':removed:' || id WHERE id <> ?")
            .bind(again.id)
            .execute(pool)
            .await
            .expect("removed");
        assert_eq!(same(&again, scored("[\"a\"]", "d")).await, None);
    }

    /// A database of the schema before `unchanged` jobs, with jobs that
    /// events, outputs and deliveries reference (foreign keys on, as the
    /// node opens it), keeps every row through the migration, and then
    /// takes unchanged jobs and refuses an unknown state or a dangling
    /// reference as before.
    #[tokio::test]
    async fn the_unchanged_state_migrates_a_database_with_jobs_and_their_references() {
        use sqlx::sqlite::SqliteConnectOptions;
        let tmp = tempfile::tempdir().expect("tmp");
        let earlier = tmp.path().join("migrations");
        std::fs::create_dir_all(&earlier).expect("dir");
        let all = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        for f in std::fs::read_dir(all).expect("migrations").flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.as_str() < "20261129000001" {
                std::fs::copy(f.path(), earlier.join(&name)).expect("copy");
            }
        }
        let db = tmp.path().join("esorisk.db");
        let options = SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.expect("db");
        sqlx::migrate::Migrator::new(earlier.as_path())
            .await
            .expect("earlier migrations")
            .run(&pool)
            .await
            .expect("earlier schema");
        let id = enqueue(&pool, "1.2.3", "key", &["1.2.3.4".into()], "m", 3)
            .await
            .expect("enqueue")
            .expect("job");
        for sql in [
            "UPDATE jobs SET state = 'succeeded', risk = 0.25, sr_uid = '1.2.3.5' WHERE id = 1",
            "INSERT INTO outputs VALUES ('1.2.3.5', 1, '1.2.3', '1.2.3.6', '1.2.840.10008.5.1.4.1.1.88.33', 'sr', 'out/1.2.3/1.2.3.5.dcm', 'now')",
            "INSERT INTO deliveries (job_id, sop_instance_uid, destination, state, next_attempt_at) VALUES (1, '1.2.3.5', 'TPS@h:104', 'sent', 'now')",
            "INSERT INTO study_checks VALUES ('1.2.3', 'then', 'now', 'queued job 1')",
        ] {
            sqlx::query(sql).execute(&pool).await.expect(sql);
        }
        pool.close().await;

        let index = crate::index::Index::open(&db).await.expect("migrated");
        let pool = index.pool();
        let row: (String, f64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT state, risk, (SELECT count(*) FROM job_events), (SELECT count(*) FROM outputs), \
             (SELECT count(*) FROM deliveries), (SELECT count(*) FROM study_checks) FROM jobs WHERE id = ?",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("rows");
        assert_eq!(row, ("succeeded".into(), 0.25, 1, 1, 1, 1));
        let second = enqueue(pool, "1.2.3", "key2", &["1.2.3.4".into()], "m", 3)
            .await
            .expect("enqueue")
            .expect("job");
        assert_eq!(second, 2);
        sqlx::query("UPDATE jobs SET state = 'unchanged' WHERE id = 2")
            .execute(pool)
            .await
            .expect("the new state");
        assert!(sqlx::query("UPDATE jobs SET state = 'other' WHERE id = 2")
            .execute(pool)
            .await
            .is_err());
        assert!(
            sqlx::query("INSERT INTO job_events (job_id, at, event) VALUES (99, 'now', 'x')")
                .execute(pool)
                .await
                .is_err()
        );
    }

    /// The delivery defaults keep trying a destination that is down for
    /// hours: 5 s doubling to 30 min, then every 30 min, the last try
    /// about a day after the first (config/default.toml).
    #[test]
    fn deliveries_back_off_to_the_cap_and_keep_trying_for_a_day() {
        let s = crate::config::Settings::load(None).expect("defaults");
        let pl = &s.pipeline;
        let (base, cap) = (
            pl.delivery_retry_base_seconds,
            pl.delivery_retry_max_seconds,
        );
        let waits: Vec<f64> = (1..i64::from(pl.delivery_max_attempts))
            .map(|a| backoff_seconds(base, a, cap))
            .collect();
        assert_eq!(&waits[..3], &[5.0, 10.0, 20.0]);
        assert!(waits.iter().all(|w| *w <= 1800.0), "{waits:?}");
        assert_eq!(waits.last().copied(), Some(1800.0));
        let window_h = waits.iter().sum::<f64>() / 3600.0;
        assert!((23.0..=26.0).contains(&window_h), "{window_h} h");
        // A job's retries have no cap.
        assert_eq!(backoff_seconds(5, 3, u64::MAX), 20.0);
        assert_eq!(backoff_seconds(5, 0, u64::MAX), 5.0);
        // A cap under the first wait is a mistake, refused at start.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cap.toml");
        std::fs::write(
            &path,
            "[pipeline]\ndelivery_retry_base_seconds = 60\ndelivery_retry_max_seconds = 30\n",
        )
        .expect("write");
        let err = crate::config::Settings::load(Some(&path)).expect_err("refused");
        assert!(
            err.to_string()
                .contains("pipeline.delivery_retry_max_seconds"),
            "{err}"
        );
    }

    async fn all_events(pool: &SqlitePool, id: i64) -> Vec<String> {
        sqlx::query("SELECT event FROM job_events WHERE job_id = ? ORDER BY id")
            .bind(id)
            .fetch_all(pool)
            .await
            .expect("events")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// A worker whose lease lapsed while it still scored (a stalled disk,
    /// a paused process) cannot end the job another worker now holds: its
    /// end writes nothing, the holder's end counts, and the log shows one
    /// success. Taking back a lease that was renewed meanwhile does nothing.
    #[tokio::test]
    async fn a_lapsed_attempt_cannot_end_the_job_another_worker_holds() {
        let tmp = tempfile::tempdir().expect("tmp");
        let index = crate::index::Index::open(&tmp.path().join("index.sqlite"))
            .await
            .expect("index");
        let pool = index.pool();
        let id = enqueue(pool, "1.2.3", "key", &["1.2.3.4".into()], "m", 3)
            .await
            .expect("enqueue")
            .expect("new job");
        let first = claim(pool, "worker-0", 60, "m")
            .await
            .expect("claim")
            .expect("job");
        // Its lease lapses; the job is taken back and claimed again.
        sqlx::query("UPDATE jobs SET lease_expires_at = ? WHERE id = ?")
            .bind(at_offset(-1.0))
            .bind(id)
            .execute(pool)
            .await
            .expect("lapse");
        assert_eq!(expire_leases(pool).await.expect("expire"), 1);
        let second = claim(pool, "worker-1", 60, "m")
            .await
            .expect("claim")
            .expect("job");
        assert_eq!(second.attempts, 2);
        // A lease renewed since it was read is not taken back.
        assert_eq!(expire_leases(pool).await.expect("expire"), 0);

        let done = |sr: &str| Outcome::Succeeded {
            risk: 0.5,
            sr_uid: sr.into(),
            rtstruct_uid: "1.2.3.9".into(),
            predecessor: None,
            scored: Scored {
                used_uids: "[]".into(),
                result_digest: String::new(),
            },
        };
        let late = finish(pool, &first, "worker-0", &done("1.2.3.5"), 1)
            .await
            .expect("finish");
        assert!(!late, "the lapsed attempt ended the job");
        // The same worker name in a later attempt is not the lapsed one.
        let mut renamed = first.clone();
        renamed.attempts = 1;
        assert!(!finish(pool, &renamed, "worker-1", &done("1.2.3.5"), 1)
            .await
            .expect("finish"));
        assert!(finish(pool, &second, "worker-1", &done("1.2.3.6"), 1)
            .await
            .expect("finish"));
        let (state, sr): (String, String) =
            sqlx::query_as("SELECT state, sr_uid FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("job");
        assert_eq!((state.as_str(), sr.as_str()), ("succeeded", "1.2.3.6"));
        assert_eq!(list(pool, None, None, 0).await.expect("list").len(), 1);
        let events = all_events(pool, id).await;
        assert_eq!(
            events.iter().filter(|e| *e == "succeeded").count(),
            1,
            "{events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| *e == "heartbeat-lost").count(),
            1,
            "{events:?}"
        );
    }
}
