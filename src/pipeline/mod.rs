//! From a stored study to the objects sent back: notice when a study is
//! complete and stable, queue a job, score it on a worker thread, write the
//! SR and RT Structure Set under `out/`, and deliver them.
//!
//! All state lives in SQLite (`migrations/…_jobs.sql`), so a restart in the
//! middle of a push or a job loses nothing: stability is judged from the
//! arrival times in the index, a killed worker's lease runs out and its job
//! is retried, and deliveries resume where they stopped.

pub mod deliver;
pub mod jobs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use sqlx::{Row, SqlitePool};
use tracing::{error, info, warn};

use crate::config::{Destination, PipelineSettings};
use crate::index::{at_offset, now};
use crate::model::infer::RiskModel;
use crate::receive::receiving::{Receipt, Receiving};
use crate::report::sr::RiskReport;
use crate::report::{self, ReportInputs};
use crate::rt::analysis;
use crate::rt::names::Organ;
use jobs::{Job, Outcome};

/// Name of the learned ROI in the returned RT Structure Set.
pub const ROI_NAME: &str = "ESORISK_ROI";

/// What the pipeline's tasks share.
pub struct Context {
    pub pool: SqlitePool,
    pub data_dir: PathBuf,
    pub settings: PipelineSettings,
    /// The calling AE title used for deliveries.
    pub ae_title: String,
    pub fsync: bool,
    pub model: Option<Arc<RiskModel>>,
    pub model_version: String,
    /// Why no model was loaded (`model` is `None`).
    pub model_error: Option<String>,
    /// For destinations over TLS (`pipeline.tls`); `None` when none is.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The receiver's record of the studies open associations store into
    /// ([`crate::receive::Node::receiving`]): such a study is not stable.
    /// `None`: a pipeline without a receiver in the same process.
    pub receiving: Option<Arc<Receiving>>,
}

/// The TLS configuration for deliveries (`pipeline.tls`) when `needed`
/// (a destination uses TLS). Unreadable files are an error at start-up,
/// not a failure of every delivery later.
pub fn client_tls(
    t: &crate::config::ClientTlsSettings,
    needed: bool,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !needed {
        return Ok(None);
    }
    crate::tls::client_config(&t.ca_certificates, &t.certificate, &t.private_key)
        .map(Some)
        .map_err(|e| format!("pipeline.tls: {e}"))
}

/// The pipeline's context from the settings: the model is loaded once here
/// (a missing or unreadable model is logged; studies then wait queued).
/// `receiving` is the node's record of the studies being received.
pub fn context(
    settings: &crate::config::Settings,
    pool: SqlitePool,
    tls: Option<Arc<rustls::ClientConfig>>,
    receiving: Option<Arc<Receiving>>,
) -> Context {
    let model = crate::model::train::device(&settings.model.device)
        .and_then(|dev| RiskModel::load_or_builtin(&settings.model.path, &dev));
    let (model, model_error) = match model {
        Ok(m) => (Some(Arc::new(m)), None),
        Err(e) => {
            warn!("no risk model: {e}");
            (None, Some(e))
        }
    };
    let model_version = model
        .as_ref()
        .map(|m| m.version.clone())
        .unwrap_or_else(|| "none".into());
    Context {
        pool,
        data_dir: settings.storage.data_dir.clone(),
        settings: settings.pipeline.clone(),
        ae_title: settings.dicom.ae_title.clone(),
        fsync: settings.storage.fsync,
        model,
        model_version,
        model_error,
        tls,
        receiving,
    }
}

/// Record what this node started with in the `node` row that `esorisk
/// status` reads: its process, its version and the model it scores with,
/// or why it scores nothing (`ctx` is `None` when the pipeline is off).
/// A node without a model queues every study and scores none; its log
/// says so once, at start, and the row lets a monitoring check say it for
/// as long as it lasts.
pub async fn record_start(pool: &SqlitePool, ctx: Option<&Context>) -> sqlx::Result<()> {
    let model = ctx.and_then(|c| c.model.as_ref().map(|_| c.model_version.clone()));
    // A new model re-scores nothing by itself (no study changed): say so
    // where an admin who just installed one will look.
    let before: Option<Option<String>> =
        sqlx::query_scalar("SELECT model_version FROM node WHERE id = 1")
            .fetch_optional(pool)
            .await?;
    if let (Some(Some(old)), Some(new)) = (&before, &model) {
        if old != new {
            info!(
                previous = %old,
                model = %new,
                "the model changed since the last start; stored studies are not scored again by themselves (esorisk rescore)"
            );
        }
    }
    sqlx::query(
        "INSERT OR REPLACE INTO node (id, pid, started_at, version, pipeline_enabled, model_version, model_error) \
         VALUES (1, ?, ?, ?, ?, ?, ?)",
    )
    .bind(std::process::id())
    .bind(now())
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(ctx.is_some())
    .bind(model)
    .bind(ctx.and_then(|c| c.model_error.clone()))
    .execute(pool)
    .await
    .map(|_| ())
}

/// The running pipeline; `stop` ends its tasks.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    /// Start the watcher, the workers and the sender. Call from within the
    /// tokio runtime.
    pub async fn start(ctx: Context) -> Pipeline {
        let ctx = Arc::new(ctx);
        if let Err(e) = jobs::void_leases(&ctx.pool).await {
            error!("cannot take back the jobs of the previous run: {e}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let sent_to: Vec<String> = ctx
            .settings
            .destinations
            .iter()
            .map(|d| match d.objects.is_empty() {
                true => d.key(),
                false => format!("{} ({})", d.key(), d.objects.join(", ")),
            })
            .collect();
        match (sent_to.is_empty(), ctx.settings.send_back_port) {
            (true, 0) => warn!("no destinations: results are written under out/ and not sent (pipeline.destinations)"),
            _ => info!(
                destinations = %sent_to.join("; "),
                send_back_port = ctx.settings.send_back_port,
                "results go to the destinations"
            ),
        }
        let c = ctx.clone();
        let s = stop.clone();
        tasks.push(tokio::spawn(async move { watch(c, s).await }));
        let c = ctx.clone();
        let s = stop.clone();
        tasks.push(tokio::spawn(async move { deliver::run(c, s).await }));
        let mut workers = Vec::new();
        match &ctx.model {
            Some(m) => {
                info!(model = %ctx.model_version, workers = ctx.settings.workers, variant = m.card.variant.label(), "scoring pipeline started");
                let handle = tokio::runtime::Handle::current();
                for n in 0..ctx.settings.workers {
                    let c = ctx.clone();
                    let s = stop.clone();
                    let h = handle.clone();
                    let name = format!("worker-{}-{n}", std::process::id());
                    let spawned = std::thread::Builder::new()
                        .name(name.clone())
                        .spawn(move || work(c, s, h, name));
                    match spawned {
                        Ok(t) => workers.push(t),
                        Err(e) => error!("cannot start a scoring worker: {e}"),
                    }
                }
            }
            None => warn!(
                "no risk model loaded: studies are queued but not scored until a model is installed (model.path)"
            ),
        }
        Pipeline {
            stop,
            tasks,
            workers,
        }
    }

    /// Stop: workers finish the job in hand (or leave it to lease expiry).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
    }
}

/// Sleep `secs` in short steps, returning early when stopping.
async fn pause(stop: &AtomicBool, secs: u64) {
    let steps = (secs * 10).max(1);
    for _ in 0..steps {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watch for stable studies and expired leases.
async fn watch(ctx: Arc<Context>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = jobs::expire_leases(&ctx.pool).await {
            warn!("lease check failed: {e}");
        }
        if let Err(e) = check_studies(&ctx).await {
            warn!("stable-study check failed: {e}");
        }
        pause(&stop, ctx.settings.poll_seconds).await;
    }
}

/// An RT instance of a study as the index knows it.
#[derive(Debug, Clone)]
pub struct Input {
    pub sop_instance_uid: String,
    pub modality: String,
    pub path: PathBuf,
    /// How often the instance was received: a file replaced by a re-send
    /// counts one more.
    pub receive_count: i64,
}

/// What the watcher concluded about a study, recorded in `study_checks`
/// (`esorisk studies` shows it) and logged once per change.
enum Conclusion {
    /// An association that stored instances of it is open, or ended less
    /// than the stable time ago: looked at again at every poll
    /// (`study_checks.waiting`) until it is stable.
    Receiving {
        open: bool,
    },
    /// It lacks these modalities.
    Incomplete(Vec<&'static str>),
    /// Its inputs cannot be read (a file removed by hand): recorded, so that
    /// it is looked at again when it changes, not at every poll.
    Unreadable(String),
    Queued(i64),
    /// A job (id and state, when still known) has these inputs and model.
    Unchanged(Option<(i64, String)>),
}

impl Conclusion {
    /// The `study_checks` outcome.
    fn outcome(&self) -> String {
        match self {
            Conclusion::Receiving { open: true } => {
                "still being received: an association that stored instances of it is open".into()
            }
            Conclusion::Receiving { open: false } => {
                "still being received: the association that stored instances of it ended less than pipeline.stable_seconds ago".into()
            }
            Conclusion::Incomplete(missing) => format!("incomplete: no {}", missing.join(", ")),
            Conclusion::Unreadable(e) => format!("cannot read the inputs: {e}"),
            Conclusion::Queued(id) => format!("queued job {id}"),
            Conclusion::Unchanged(Some((id, state))) => {
                format!("unchanged: job {id} ({state}) has these inputs and this model")
            }
            Conclusion::Unchanged(None) => "unchanged: a job has these inputs and this model".into(),
        }
    }

    /// One line for the admin, naming the study.
    fn log(&self, study: &str) {
        match self {
            Conclusion::Receiving { open: true } => info!(
                study = %study,
                "study still being received: an association that stored instances of it is open; looked at once it has ended and pipeline.stable_seconds have passed"
            ),
            Conclusion::Receiving { open: false } => info!(
                study = %study,
                "study still being received: the association that stored instances of it ended less than pipeline.stable_seconds ago"
            ),
            Conclusion::Incomplete(missing) => info!(
                study = %study,
                missing = %missing.join(", "),
                "study stable but incomplete: scored once it holds an RT Dose, an RT Plan and an RT Structure Set"
            ),
            // Logged as a warning where it is found.
            Conclusion::Unreadable(_) => {}
            Conclusion::Queued(id) => {
                info!(study = %study, job = id, "study complete and stable: job queued")
            }
            Conclusion::Unchanged(job) => info!(
                study = %study,
                job = job.as_ref().map(|j| j.0),
                "study stable and unchanged: a job has these inputs and this model; not queued again"
            ),
        }
    }
}

/// Queue a job for every study that changed, is stable, and holds an RT
/// Dose, an RT Plan and an RT Structure Set. A study that an open
/// association stores into is left alone, and its stable time counts from
/// the end of that association.
pub async fn check_studies(ctx: &Context) -> Result<(), String> {
    let rows = sqlx::query(
        "SELECT s.study_instance_uid, s.last_received_at, c.last_received_at, c.outcome FROM studies s \
         LEFT JOIN study_checks c ON c.study_instance_uid = s.study_instance_uid \
         WHERE s.last_received_at <= ? AND (c.last_received_at IS NULL \
         OR c.last_received_at <> s.last_received_at OR c.waiting = 1)",
    )
    .bind(at_offset(-(ctx.settings.stable_seconds as f64)))
    .fetch_all(&ctx.pool)
    .await
    .map_err(|e| e.to_string())?;
    for r in rows {
        let study: String = r.get(0);
        let last: String = r.get(1);
        let before: (Option<String>, Option<String>) = (r.get(2), r.get(3));
        let conclusion = match ctx.receiving.as_ref().map(|rc| rc.receipt(&study)) {
            Some(Receipt::Open) => Conclusion::Receiving { open: true },
            Some(Receipt::Ended(_)) => Conclusion::Receiving { open: false },
            Some(Receipt::Idle) | None => conclude(ctx, &study).await?,
        };
        let outcome = conclusion.outcome();
        // Once per change: a study waiting for its association is looked
        // at every poll, and logged when what is concluded changes.
        if before.0.as_deref() != Some(last.as_str()) || before.1.as_deref() != Some(&outcome) {
            conclusion.log(&study);
        }
        let waiting = matches!(conclusion, Conclusion::Receiving { .. });
        sqlx::query(
            "INSERT INTO study_checks (study_instance_uid, last_received_at, checked_at, outcome, waiting) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT(study_instance_uid) DO UPDATE SET last_received_at = excluded.last_received_at, \
             checked_at = excluded.checked_at, outcome = excluded.outcome, waiting = excluded.waiting",
        )
        .bind(&study)
        .bind(&last)
        .bind(now())
        .bind(&outcome)
        .bind(waiting)
        .execute(&ctx.pool)
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Look at a stable study that no association is storing into: queue a job
/// when it is complete and its inputs are new.
async fn conclude(ctx: &Context, study: &str) -> Result<Conclusion, String> {
    let inputs = study_inputs(ctx, study).await?;
    let inputs = tokio::task::spawn_blocking(move || without_own_structure_sets(inputs))
        .await
        .map_err(|e| e.to_string())?;
    let has = |m: &str| inputs.iter().any(|i| i.modality == m);
    let missing: Vec<&'static str> = ["RTDOSE", "RTPLAN", "RTSTRUCT"]
        .into_iter()
        .filter(|m| !has(m))
        .collect();
    if !missing.is_empty() {
        return Ok(Conclusion::Incomplete(missing));
    }
    let rt: Vec<Input> = inputs.into_iter().filter(|i| i.modality != "CT").collect();
    let version = ctx.model_version.clone();
    let rt2 = rt.clone();
    let key = tokio::task::spawn_blocking(move || input_key(&version, &rt2))
        .await
        .map_err(|e| e.to_string())?;
    match key {
        Err(e) => {
            warn!(study = %study, "cannot read the inputs: {e}");
            Ok(Conclusion::Unreadable(e.to_string()))
        }
        Ok(key) => queue(ctx, study, &key, &rt).await,
    }
}

/// esorisk's own RT Structure Sets, sent back by a PACS that forwards the
/// whole study, are stored but are no inputs: counted, each would be a new
/// job and a new one, for ever.
fn without_own_structure_sets(inputs: Vec<Input>) -> Vec<Input> {
    inputs
        .into_iter()
        .filter(|i| i.modality != "RTSTRUCT" || !written_by_esorisk(&i.path))
        .collect()
}

/// Whether the study's RT inputs are still the files a job was queued for
/// (its `input_key`, computed as [`conclude`] does). The same SOP Instance
/// sent again with other content, or an RT instance added, after the job
/// was queued makes the job stand for files it would not score: scored,
/// its key would then say that the queued files were scored, and when
/// they came back they would never be.
fn still_queued_inputs(job: &Job, inputs: &[Input]) -> std::io::Result<bool> {
    let rt: Vec<Input> = without_own_structure_sets(inputs.to_vec())
        .into_iter()
        .filter(|i| i.modality != "CT")
        .collect();
    Ok(job.input_key.split('-').next() == Some(files_key(&rt)?.as_str()))
}

/// Each RT input's SOP Instance UID and how often it was received: what
/// changes when a file is replaced or an instance added.
fn receipts(inputs: &[Input]) -> Vec<(&str, i64)> {
    inputs
        .iter()
        .filter(|i| i.modality != "CT")
        .map(|i| (i.sop_instance_uid.as_str(), i.receive_count))
        .collect()
}

/// End a job whose study's files changed after it was queued (see
/// [`still_queued_inputs`]): nothing is scored or sent, the watcher queues
/// the files as they are now, and the job gives up its key so that the
/// files it was queued for are scored again if they come back.
fn superseded(ctx: &Context, rt: &tokio::runtime::Handle, job: &Job) -> Outcome {
    let released = rt.block_on(
        sqlx::query(
            "UPDATE jobs SET input_key = input_key || ':superseded:' || id \
             WHERE id = ? AND worker = ? AND attempts = ?",
        )
        .bind(job.id)
        .bind(&job.worker)
        .bind(job.attempts)
        .execute(&ctx.pool),
    );
    if let Err(e) = released {
        return Outcome::Transient(e.to_string());
    }
    Outcome::Failed(
        "the study's files changed after this job was queued (an instance sent again with \
         other content, or a new one): nothing is scored for the files it was queued for; \
         the job queued for the files as they are now scores them"
            .into(),
    )
}

/// `esorisk rescore`: forget what the watcher concluded about `studies`,
/// so that it looks at them again (a study is otherwise looked at once
/// per change, and installing a new model changes no study). Returns the
/// UIDs that name no stored study.
pub async fn rescore(pool: &SqlitePool, studies: &[String]) -> sqlx::Result<Vec<String>> {
    let mut unknown = Vec::new();
    for s in studies {
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM studies WHERE study_instance_uid = ?")
                .bind(s)
                .fetch_optional(pool)
                .await?;
        if known.is_none() {
            unknown.push(s.clone());
            continue;
        }
        sqlx::query("DELETE FROM study_checks WHERE study_instance_uid = ?")
            .bind(s)
            .execute(pool)
            .await?;
    }
    Ok(unknown)
}

/// Queue a job for a complete study's RT inputs (`key` their hash) unless
/// one has them already.
async fn queue(ctx: &Context, study: &str, key: &str, rt: &[Input]) -> Result<Conclusion, String> {
    let uids: Vec<String> = rt.iter().map(|i| i.sop_instance_uid.clone()).collect();
    // Files scored before, then replaced and scored, and now back (A, B,
    // A): the results the destinations hold are B's, so A is scored again.
    jobs::release_if_not_current(&ctx.pool, study, key)
        .await
        .map_err(|e| e.to_string())?;
    let queued = jobs::enqueue(
        &ctx.pool,
        study,
        key,
        &uids,
        &ctx.model_version,
        ctx.settings.max_attempts,
    )
    .await
    .map_err(|e| e.to_string())?;
    match queued {
        Some(id) => Ok(Conclusion::Queued(id)),
        None => jobs::with_input_key(&ctx.pool, key)
            .await
            .map(Conclusion::Unchanged)
            .map_err(|e| e.to_string()),
    }
}

/// The study's RT and CT instances from the index, less the objects this
/// node wrote itself (an output sent back to it).
pub async fn study_inputs(ctx: &Context, study: &str) -> Result<Vec<Input>, String> {
    let rows = sqlx::query(
        "SELECT sop_instance_uid, COALESCE(modality, ''), file_path, receive_count FROM instances \
         WHERE study_instance_uid = ? AND modality IN ('RTDOSE', 'RTPLAN', 'RTSTRUCT', 'CT') \
         AND sop_instance_uid NOT IN (SELECT sop_instance_uid FROM outputs) ORDER BY sop_instance_uid",
    )
    .bind(study)
    .fetch_all(&ctx.pool)
    .await
    .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| Input {
            sop_instance_uid: r.get(0),
            modality: r.get(1),
            path: ctx.data_dir.join(r.get::<String, _>(2)),
            receive_count: r.get(3),
        })
        .collect())
}

/// Model version and the RT inputs' contents, hashed: re-sending the same
/// files does not score again, a changed file does. Removing a study
/// releases its jobs' keys ([`crate::index::Index::remove_study`]).
fn input_key(model_version: &str, inputs: &[Input]) -> std::io::Result<String> {
    let mut h = crate::hash::Fnv::default();
    h.update(model_version.as_bytes());
    Ok(format!("{}-{:016x}", files_key(inputs)?, h.finish()))
}

/// The files' part of an input key: a hash of each input's SOP Instance UID
/// and file. Kept apart from the model's part because a job takes the
/// version of the model that claims it (one queued by a node without a
/// model, or before the model was replaced), while its files stay those it
/// was queued for.
fn files_key(inputs: &[Input]) -> std::io::Result<String> {
    let mut h = crate::hash::Fnv::default();
    for i in inputs {
        h.update(i.sop_instance_uid.as_bytes());
        h.update_file(&i.path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", i.path.display())))?;
    }
    Ok(format!("{:016x}", h.finish()))
}

/// A worker thread: claim, score with a heartbeat, record.
fn work(ctx: Arc<Context>, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle, name: String) {
    while !stop.load(Ordering::Relaxed) {
        let job = match rt.block_on(jobs::claim(
            &ctx.pool,
            &name,
            ctx.settings.lease_seconds,
            &ctx.model_version,
        )) {
            Ok(Some(j)) => j,
            Ok(None) => {
                std::thread::sleep(Duration::from_millis(
                    250.max(ctx.settings.poll_seconds * 250),
                ));
                continue;
            }
            Err(e) => {
                warn!("cannot claim a job: {e}");
                std::thread::sleep(Duration::from_secs(ctx.settings.poll_seconds.max(1)));
                continue;
            }
        };
        info!(job = job.id, study = %job.study_instance_uid, attempt = job.attempts, "scoring");
        let beat = {
            let (ctx, name, id) = (ctx.clone(), name.clone(), job.id);
            let done = Arc::new(AtomicBool::new(false));
            let d = done.clone();
            let task = rt.spawn(async move {
                let every = (ctx.settings.lease_seconds / 3).max(1);
                while !d.load(Ordering::Relaxed) {
                    pause(&d, every).await;
                    if d.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(false) =
                        jobs::heartbeat(&ctx.pool, id, &name, ctx.settings.lease_seconds).await
                    {
                        break;
                    }
                }
            });
            (done, task)
        };
        if ctx.settings.hold_claimed_seconds > 0 {
            // Fault injection (tests): hold the claimed job, heartbeating,
            // so that a crash can be placed inside a job.
            let until =
                std::time::Instant::now() + Duration::from_secs(ctx.settings.hold_claimed_seconds);
            while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // A panic is a defect in esorisk, not a property of the study: it
        // fails this job with the message instead of killing the worker,
        // whose heartbeat would otherwise hold the job's lease for ever.
        let mut recorded = false;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if ctx.settings.fault == "panic-in-scoring" {
                panic!("fault injected by pipeline.fault");
            }
            score_job(&ctx, &rt, &job, &mut recorded)
        }))
        .unwrap_or_else(|payload| {
            let what = crate::panic_message(payload.as_ref());
            error!(job = job.id, study = %job.study_instance_uid, "internal error while scoring: {what}");
            Outcome::Failed(format!(
                "internal error in esorisk while scoring ({what}); not scored — please report it with this study"
            ))
        });
        beat.0.store(true, Ordering::Relaxed);
        let _ = rt.block_on(beat.1);
        match &outcome {
            Outcome::Succeeded { risk, .. } => {
                info!(job = job.id, study = %job.study_instance_uid, risk, "scored")
            }
            Outcome::Unchanged { risk, same_as, .. } => info!(
                job = job.id,
                study = %job.study_instance_uid,
                risk,
                same_as,
                "scored: same inputs and result as job {same_as}: nothing sent"
            ),
            Outcome::Failed(e) => {
                warn!(job = job.id, study = %job.study_instance_uid, "not scorable: {e}")
            }
            Outcome::Transient(e) => {
                warn!(job = job.id, study = %job.study_instance_uid, "attempt failed: {e}")
            }
        }
        if recorded {
            continue;
        }
        match rt.block_on(jobs::finish(
            &ctx.pool,
            &job,
            &name,
            &outcome,
            ctx.settings.retry_base_seconds,
        )) {
            Ok(true) => {}
            Ok(false) => warn!(
                job = job.id,
                study = %job.study_instance_uid,
                "the job is no longer this attempt's (its lease lapsed and another worker took it); this attempt's end is not recorded"
            ),
            Err(e) => error!(job = job.id, "cannot record the job's end: {e}"),
        }
    }
}

/// Whether the file was written by esorisk (this node before its index was
/// rebuilt, or another esorisk node): Manufacturer and Manufacturer's Model
/// Name both "esorisk", as the outputs set them. Only the first elements
/// are read. A file that cannot be read is not taken for one; reading it
/// for the job key says what is wrong with it.
fn written_by_esorisk(path: &Path) -> bool {
    OpenFileOptions::new()
        .read_until(dicom_core::Tag(0x0008, 0x1091))
        .open_file(path)
        .is_ok_and(|o| crate::rt::attr::written_by_esorisk(&o))
}

/// Open a file without its pixel data (enough for references).
fn open_header(path: &Path) -> Result<FileDicomObject<InMemDicomObject>, String> {
    OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Score one job: an error a physicist can act on fails it; an I/O or
/// database error is transient.
/// Score a claimed job. Its outputs are stored in the same transaction
/// that records its end; `recorded` says when that happened, so that the
/// end is not recorded twice.
fn score_job(
    ctx: &Context,
    rt: &tokio::runtime::Handle,
    job: &Job,
    recorded: &mut bool,
) -> Outcome {
    let Some(model) = &ctx.model else {
        return Outcome::Transient("no risk model loaded".into());
    };
    let inputs = match rt.block_on(study_inputs(ctx, &job.study_instance_uid)) {
        Ok(i) => i,
        Err(e) => return Outcome::Transient(e),
    };
    let t0 = std::time::Instant::now();
    let wanted: Vec<String> = serde_json::from_str(&job.input_uids).unwrap_or_default();
    let rt_paths: Vec<PathBuf> = inputs
        .iter()
        .filter(|i| wanted.contains(&i.sop_instance_uid))
        .map(|i| i.path.clone())
        .collect();
    let doses: Vec<String> = inputs
        .iter()
        .filter(|i| i.modality == "RTDOSE" && wanted.contains(&i.sop_instance_uid))
        .map(|i| i.sop_instance_uid.clone())
        .collect();
    if inputs.is_empty() {
        return Outcome::Failed(
            "the study is no longer stored (removed by storage.retention_days or esorisk purge); send it again to score it".into(),
        );
    }
    if rt_paths.len() != wanted.len() {
        return Outcome::Failed(
            "input instances of this job were replaced or removed; a newer job covers them".into(),
        );
    }
    match still_queued_inputs(job, &inputs) {
        Ok(true) => {}
        Ok(false) => return superseded(ctx, rt, job),
        Err(e) => return Outcome::Transient(format!("cannot read the inputs: {e}")),
    }
    let checked = receipts(&inputs);
    let ct_paths: Vec<PathBuf> = inputs
        .iter()
        .filter(|i| i.modality == "CT")
        .map(|i| i.path.clone())
        .collect();
    // A study that cannot be scored ends the job (with an SR saying why,
    // when set).
    let mut fail = |reason: String| {
        fail_with_optional_sr(ctx, rt, job, recorded, &rt_paths, &ct_paths, &reason)
    };
    let study = match crate::rt::study::load(&rt_paths, &Default::default()) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    if let Some(p) = study.blocking_problem() {
        return fail(format!("{p}; not scored"));
    }
    let t_load = t0.elapsed();
    let score = match model.score(&study) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let t_model = t0.elapsed();
    let a = analysis::analyse(
        &study,
        &analysis::Options {
            organs: Some(vec![Organ::Esophagus]),
            ..Default::default()
        },
    );
    let eso = a
        .structures
        .iter()
        .find(|s| s.organ == Some(Organ::Esophagus));
    let t_dvh = t0.elapsed();
    // The evidence lists what the score used: the other plans and doses
    // the study holds are not.
    let used = used_rt_uids(&study, &doses);
    let mut objects = Vec::new();
    for (p, rt_object) in rt_paths
        .iter()
        .map(|p| (p, true))
        .chain(ct_paths.iter().map(|p| (p, false)))
    {
        match open_header(p) {
            Ok(o)
                if rt_object
                    && !used.contains(&attr(&o, dicom_dictionary_std::tags::SOP_INSTANCE_UID)) => {}
            Ok(o) => objects.push(o),
            Err(e) => return Outcome::Transient(e),
        }
    }
    let inputs = match ReportInputs::from_objects(&objects) {
        Ok(i) => i,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // The same inputs and result as the SR last sent for the study (the
    // study sent again in another transfer syntax, a revised plan without
    // its dose, a file replaced before an earlier job ran): nothing to
    // write or send.
    let scored = scored(&study, &score, eso, &inputs, &doses);
    match rt.block_on(end_if_unchanged(ctx, job, score.risk, &scored)) {
        Ok(Some(same_as)) => {
            *recorded = true;
            return Outcome::Unchanged {
                risk: score.risk,
                same_as,
                scored,
            };
        }
        Ok(None) => {}
        Err(e) => return Outcome::Transient(e),
    }
    let rtstruct = match report::rtstruct::learned_roi_rtstruct(
        &inputs,
        &score.prepared_grid,
        &score.roi,
        ROI_NAME,
    ) {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("the learned ROI cannot be written: {e}")),
    };
    let rs_series = attr(&rtstruct, dicom_dictionary_std::tags::SERIES_INSTANCE_UID);
    let rs_uid = attr(&rtstruct, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
    let predecessor = rt
        .block_on(jobs::latest_sr(&ctx.pool, &job.study_instance_uid))
        .ok()
        .flatten();
    let report = RiskReport {
        risk: score.risk,
        model_name: model.card.name.clone(),
        model_version: ctx.model_version.clone(),
        esophagus_dmean_gy: eso.map(|s| s.physical.mean_gy),
        esophagus_v35_pct: eso.map(|s| s.physical.v35_pct),
        esophagus_v50_pct: eso.map(|s| s.physical.v50_pct),
        esophagus_v60_pct: eso.map(|s| s.physical.v60_pct),
        esophagus_v70_pct: eso.map(|s| s.physical.v70_pct),
        esophagus_lkb_ntcp: eso.and_then(|s| s.lkb.as_ref()).map(|l| l.ntcp),
        roi_volume_cc: Some(score.roi_volume_cc),
        roi_mean_gy: score.roi_mean_gy,
        features: reported_features(&score.dosiomics),
        rtstruct_ref: Some((rs_series.clone(), rs_uid.clone())),
        predecessor: predecessor.clone(),
        notes: study.problems.iter().chain(&score.notes).cloned().collect(),
    };
    let sr = match report::sr::risk_sr(&inputs, &report) {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("the SR cannot be written: {e}")),
    };
    let sr_uid = attr(&sr, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
    let t_report = t0.elapsed();
    let outputs = [(sr, "sr"), (rtstruct, "rtstruct")];
    let outcome = Outcome::Succeeded {
        risk: score.risk,
        sr_uid,
        rtstruct_uid: rs_uid,
        predecessor: predecessor.map(|p| p.1),
        scored: scored.clone(),
    };
    // A file replaced, or an instance added, while the job read them: the
    // next attempt finds out. The index says so without reading the files
    // again (a re-send is counted in the instance's row).
    match rt.block_on(study_inputs(ctx, &job.study_instance_uid)) {
        Ok(now) if receipts(&now) == checked => {}
        Ok(_) => {
            return Outcome::Transient("the study's files changed while this job read them".into())
        }
        Err(e) => return Outcome::Transient(format!("cannot read the inputs: {e}")),
    }
    let dose = Some(study.dose.info.sop_instance_uid.as_str());
    match store_outputs(ctx, rt, job, &outputs, dose, &outcome) {
        Ok(None) => {}
        // Another job sent this result while this one was writing.
        Ok(Some(same_as)) => {
            *recorded = true;
            return Outcome::Unchanged {
                risk: score.risk,
                same_as,
                scored,
            };
        }
        Err(e) => return Outcome::Transient(e),
    }
    *recorded = true;
    let ms = |d: Duration| d.as_millis() as u64;
    info!(
        job = job.id,
        study = %job.study_instance_uid,
        read_ms = ms(t_load),
        model_ms = ms(t_model - t_load),
        dvh_ms = ms(t_dvh - t_model),
        report_ms = ms(t_report - t_dvh),
        store_ms = ms(t0.elapsed() - t_report),
        "job timings"
    );
    outcome
}

/// The fused dosiomic features as the SR lists them: every feature of the
/// model, in the model's order (docs/CONFORMANCE.md, section 8.2). One that
/// could not be measured in the learned ROI (the model used its training
/// median) is listed too, as not a number, so that the list always names
/// what the model read.
fn reported_features(features: &[(String, Option<f64>)]) -> Vec<(String, f64)> {
    features
        .iter()
        .map(|(n, v)| (n.clone(), v.unwrap_or(f64::NAN)))
        .collect()
}

/// A failed scoring; with `pipeline.not_scored_sr` an SR saying why is
/// written and delivered too.
fn fail_with_optional_sr(
    ctx: &Context,
    rt: &tokio::runtime::Handle,
    job: &Job,
    recorded: &mut bool,
    rt_paths: &[PathBuf],
    ct_paths: &[PathBuf],
    reason: &str,
) -> Outcome {
    if ctx.settings.not_scored_sr {
        let objects: Vec<_> = rt_paths
            .iter()
            .chain(ct_paths)
            .filter_map(|p| open_header(p).ok())
            .collect();
        if let Ok(inputs) = ReportInputs::from_objects(&objects) {
            let sr = report::sr::not_scored_sr(&inputs, reason);
            let outcome = Outcome::Failed(reason.to_string());
            match store_outputs(ctx, rt, job, &[(sr, "sr-not-scored")], None, &outcome) {
                Ok(_) => *recorded = true,
                Err(e) => warn!(job = job.id, "cannot store the not-scored SR: {e}"),
            }
            return outcome;
        }
    }
    Outcome::Failed(reason.to_string())
}

fn attr(o: &FileDicomObject<InMemDicomObject>, tag: dicom_core::Tag) -> String {
    crate::rt::attr::string(o, tag).unwrap_or_default()
}

/// Write outputs under `out/<study>/`, fsynced, then index them and queue
/// their deliveries in one transaction with the job's end. `dose`: the SOP
/// Instance UID of the RT Dose scored, whose sender gets the results back
/// (`pipeline.send_back_port`). A success whose result another job sent
/// meanwhile (two workers, the same result) ends unchanged instead, its
/// files removed: `Some(that job)`.
fn store_outputs(
    ctx: &Context,
    rt: &tokio::runtime::Handle,
    job: &Job,
    outputs: &[(FileDicomObject<InMemDicomObject>, &str)],
    dose: Option<&str>,
    end: &Outcome,
) -> Result<Option<i64>, String> {
    crate::uid::validate(&job.study_instance_uid).map_err(|e| e.to_string())?;
    let rel_dir = Path::new("out").join(&job.study_instance_uid);
    let dir = ctx.data_dir.join(&rel_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rows = Vec::new();
    for (obj, kind) in outputs {
        let sop = attr(obj, dicom_dictionary_std::tags::SOP_INSTANCE_UID);
        crate::uid::validate(&sop).map_err(|e| e.to_string())?;
        let tmp = dir.join(format!("{sop}.part"));
        obj.write_to_file(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        if ctx.fsync {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        let path = dir.join(format!("{sop}.dcm"));
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        rows.push((
            sop,
            attr(obj, dicom_dictionary_std::tags::SERIES_INSTANCE_UID),
            attr(obj, dicom_dictionary_std::tags::SOP_CLASS_UID),
            kind.to_string(),
            rel_dir.join(format!(
                "{}.dcm",
                attr(obj, dicom_dictionary_std::tags::SOP_INSTANCE_UID)
            )),
        ));
    }
    if ctx.fsync {
        std::fs::File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let destinations = destinations(ctx, rt, job, dose);
    let worker = job.worker.as_deref().unwrap_or_default();
    let ended = rt.block_on(async {
        let mut tx = ctx.pool.begin().await?;
        if !jobs::hold(&mut tx, job, worker).await? {
            return Ok(Ended::NotOurs);
        }
        if let Outcome::Succeeded { risk, scored, .. } = end {
            if let Some(same_as) = jobs::same_as_last_sent(&mut tx, job, scored).await? {
                let unchanged = Outcome::Unchanged {
                    risk: *risk,
                    same_as,
                    scored: scored.clone(),
                };
                jobs::finish_in(&mut tx, job, worker, &unchanged, ctx.settings.retry_base_seconds)
                    .await?;
                tx.commit().await?;
                return Ok(Ended::Unchanged(same_as));
            }
        }
        let n = now();
        for (sop, series, class, kind, path) in &rows {
            sqlx::query(
                "INSERT OR REPLACE INTO outputs (sop_instance_uid, job_id, study_instance_uid, series_instance_uid, \
                 sop_class_uid, kind, file_path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(sop)
            .bind(job.id)
            .bind(&job.study_instance_uid)
            .bind(series)
            .bind(class)
            .bind(kind)
            .bind(path.to_string_lossy().to_string())
            .bind(&n)
            .execute(&mut *tx)
            .await?;
            for d in destinations.iter().filter(|d| d.wants(kind)) {
                sqlx::query(
                    "INSERT OR IGNORE INTO deliveries (job_id, sop_instance_uid, destination, state, next_attempt_at) \
                     VALUES (?, ?, ?, 'pending', ?)",
                )
                .bind(job.id)
                .bind(sop)
                .bind(d.key())
                .bind(&n)
                .execute(&mut *tx)
                .await?;
            }
        }
        // The job's end goes in with its outputs: a crash between the two
        // would otherwise score the job again and send a second SR. And
        // only while the job is still this attempt's (checked by `hold`
        // above, under the write lock): after a lapsed lease another worker
        // may hold it, and its outputs are the ones.
        match jobs::finish_in(&mut tx, job, worker, end, ctx.settings.retry_base_seconds).await? {
            true => {
                tx.commit().await?;
                Ok::<Ended, sqlx::Error>(Ended::Stored)
            }
            false => Ok(Ended::NotOurs),
        }
    });
    let discard = || {
        for (_, _, _, _, path) in &rows {
            let _ = std::fs::remove_file(ctx.data_dir.join(path));
        }
    };
    match ended {
        Ok(Ended::Stored) => Ok(None),
        Ok(Ended::Unchanged(same_as)) => {
            discard();
            Ok(Some(same_as))
        }
        Ok(Ended::NotOurs) => {
            discard();
            Err(NOT_OURS.into())
        }
        Err(e) => {
            discard();
            Err(e.to_string())
        }
    }
}

/// How [`store_outputs`] ended.
enum Ended {
    Stored,
    /// Another job has the same inputs and result, and its outputs were the
    /// study's last.
    Unchanged(i64),
    /// The job is no longer this attempt's.
    NotOurs,
}

/// Why an attempt records nothing after its lease lapsed.
const NOT_OURS: &str = "the job is no longer this attempt's (its lease lapsed and another worker took it); its outputs were discarded";

/// End `job` as unchanged, in one transaction under its guard, if its
/// result is the one last sent for its study: `Some(that job)`. Nothing is
/// written when it is not.
async fn end_if_unchanged(
    ctx: &Context,
    job: &Job,
    risk: f64,
    scored: &jobs::Scored,
) -> Result<Option<i64>, String> {
    let worker = job.worker.as_deref().unwrap_or_default();
    let run = async {
        let mut tx = ctx.pool.begin().await?;
        if !jobs::hold(&mut tx, job, worker).await? {
            return Ok(Err(NOT_OURS.to_string()));
        }
        let Some(same_as) = jobs::same_as_last_sent(&mut tx, job, scored).await? else {
            tx.rollback().await?;
            return Ok(Ok(None));
        };
        let end = Outcome::Unchanged {
            risk,
            same_as,
            scored: scored.clone(),
        };
        if !jobs::finish_in(&mut tx, job, worker, &end, ctx.settings.retry_base_seconds).await? {
            return Ok(Err(NOT_OURS.to_string()));
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(Ok(Some(same_as)))
    };
    run.await.map_err(|e| e.to_string())?
}

/// The SOP Instance UIDs of the RT objects a study's score used: the dose
/// (or the beam doses it sums, which its notes name), its plan(s) and the
/// structure set; not the other plans and doses the study holds.
fn used_rt_uids(study: &crate::rt::study::Study, doses: &[String]) -> Vec<String> {
    let info = &study.dose.info;
    let named = |uid: &str| {
        info.notes.iter().any(|n| {
            n.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .any(|t| t == uid)
        })
    };
    let mut used: Vec<String> = doses
        .iter()
        .filter(|u| **u == info.sop_instance_uid || named(u))
        .cloned()
        .collect();
    used.push(info.sop_instance_uid.clone());
    used.extend(info.referenced_plan_uids.iter().cloned());
    used.extend(study.plan.iter().map(|p| p.sop_instance_uid.clone()));
    used.extend(study.structures.iter().map(|s| s.sop_instance_uid.clone()));
    used
}

/// What a scoring used and gave ([`jobs::Scored`]). Used: the RT Dose
/// scored (with the beam doses summed into it: its notes name them, of
/// `doses`, the job's RT Doses), the RT Plan and the plans the dose names
/// (a course's sum), the RT Structure Set, and the CT slices the returned
/// contours are linked to. Given: the risk (its bits), the learned ROI on
/// its grid, the fused features and the esophagus dose metrics the SR
/// reports.
fn scored(
    study: &crate::rt::study::Study,
    score: &crate::model::infer::Score,
    eso: Option<&analysis::StructureDvh>,
    report: &ReportInputs,
    doses: &[String],
) -> jobs::Scored {
    let mut used = used_rt_uids(study, doses);
    used.extend(report.ct_slices.iter().map(|c| c.sop_instance_uid.clone()));
    used.sort();
    used.dedup();

    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut num = |v: f64| h.update(v.to_bits().to_le_bytes());
    num(score.risk);
    let g = &score.prepared_grid;
    for v in [g.x0, g.y0, g.dx, g.dy, g.nx as f64, g.ny as f64] {
        num(v);
    }
    for z in &g.z {
        num(*z);
    }
    num(score.roi_volume_cc);
    num(score.roi_mean_gy.unwrap_or(f64::NAN));
    for (_, v) in &score.dosiomics {
        num(v.unwrap_or(f64::NAN));
    }
    if let Some(s) = eso {
        let p = &s.physical;
        for v in [p.mean_gy, p.v35_pct, p.v50_pct, p.v60_pct, p.v70_pct] {
            num(v);
        }
    }
    for (n, _) in &score.dosiomics {
        h.update(n.as_bytes());
        h.update([0]);
    }
    h.update((score.roi.len() as u64).to_le_bytes());
    let mut bits = vec![0u8; score.roi.len().div_ceil(8)];
    for (i, _) in score.roi.iter().enumerate().filter(|(_, &m)| m) {
        bits[i / 8] |= 1 << (i % 8);
    }
    h.update(&bits);
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    jobs::Scored {
        used_uids: serde_json::to_string(&used).unwrap_or_else(|_| "[]".into()),
        result_digest: digest,
    }
}

/// The configured destinations, plus, when `send_back_port` is set, the
/// sender of the RT Dose scored (`dose`; for a study not scored, the
/// latest received of the job's RT Doses): its calling AE title at the
/// address it connected from. Not the sender of the study's latest
/// instance, which may be a CT simulator or a PACS forwarding the
/// returned RT Structure Set. A dose whose sender is unknown (indexed
/// from the store after a crash) sends nothing back.
fn destinations(
    ctx: &Context,
    rt: &tokio::runtime::Handle,
    job: &Job,
    dose: Option<&str>,
) -> Vec<Destination> {
    let mut out = ctx.settings.destinations.clone();
    if ctx.settings.send_back_port != 0 {
        let row = rt.block_on(
            sqlx::query(
                "SELECT calling_ae, peer_address FROM instances WHERE study_instance_uid = ?1 \
                 AND modality = 'RTDOSE' AND calling_ae IS NOT NULL \
                 AND sop_instance_uid IN (SELECT value FROM json_each(?2)) \
                 ORDER BY sop_instance_uid = ?3 DESC, received_at DESC LIMIT 1",
            )
            .bind(&job.study_instance_uid)
            .bind(&job.input_uids)
            .bind(dose.unwrap_or_default())
            .fetch_optional(&ctx.pool),
        );
        match row {
            Ok(Some(r)) => {
                let ae: String = r.get(0);
                let peer: Option<String> = r.get(1);
                let host = peer.as_deref().map(|p| {
                    p.parse::<std::net::SocketAddr>()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_else(|_| p.to_string())
                });
                if let Some(host) = host {
                    let d = Destination {
                        ae_title: crate::config::wire_ae_title(&ae).to_string(),
                        host,
                        port: ctx.settings.send_back_port,
                        tls: ctx.settings.send_back_tls,
                        objects: Vec::new(),
                    };
                    if !out.iter().any(|o| o.key() == d.key()) {
                        out.push(d);
                    }
                }
            }
            Ok(None) => warn!(
                job = job.id,
                study = %job.study_instance_uid,
                "the sender of the RT Dose is not known (indexed from the store after a crash): the results are not sent back (pipeline.send_back_port)"
            ),
            Err(e) => warn!(
                job = job.id,
                "cannot look up the sender of the RT Dose: {e}"
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SR lists every feature the model read, in the model's order,
    /// one that could not be measured included (as not a number), not the
    /// first few measured ones.
    #[test]
    fn the_sr_lists_every_fused_feature_in_the_models_order() {
        let features: Vec<(String, Option<f64>)> = (0..8)
            .map(|i| (format!("f{i}"), (i != 2).then_some(i as f64)))
            .collect();
        let listed = reported_features(&features);
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]);
        assert!(listed[2].1.is_nan());
        assert_eq!(listed[7].1, 7.0);
    }
}
