//! The `esorisk` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use esorisk::config::{Destination, Settings};
use esorisk::index::Index;
use esorisk::receive::Node;

/// esorisk: scores the risk of radiation esophagitis for lung RT plans
/// received over DICOM. Research tool, not a medical device.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Settings file (TOML) overriding the embedded defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DICOM node (C-ECHO and C-STORE service provider).
    Serve,
    /// The node at a glance: running or not, free space, studies, jobs and
    /// deliveries by state (for admins and monitoring).
    Status {
        /// One JSON document.
        #[arg(long)]
        json: bool,
        /// Exit with status 1 when there is a problem (no node running,
        /// free space under the floor, dead jobs or deliveries), for a
        /// monitoring check.
        #[arg(long)]
        check: bool,
    },
    /// List the studies received, newest first.
    Studies {
        /// Only this patient's studies (Patient ID, exactly).
        #[arg(long)]
        patient: Option<String>,
        /// Only this study (Study Instance UID).
        #[arg(long)]
        study: Option<String>,
        /// At most this many studies, the newest; 0: all.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON document (for scripts and monitoring).
        #[arg(long)]
        json: bool,
    },
    /// Show the scoring jobs and their deliveries; --follow tails the job
    /// events.
    Jobs {
        /// Only jobs in this state: queued, running, succeeded, unchanged,
        /// failed, dead (and only their deliveries).
        #[arg(long)]
        state: Option<String>,
        /// Only the jobs of this study (Study Instance UID), and their
        /// deliveries.
        #[arg(long)]
        study: Option<String>,
        /// Then print the job events as they are appended, until Ctrl-C.
        #[arg(long, conflicts_with = "json")]
        follow: bool,
        /// At most this many jobs, the newest; 0: all. The deliveries
        /// listed are those of every job --state and --study select.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON document, `{"jobs": [...], "deliveries": [...]}` (for
        /// scripts and monitoring; docs/OPERATIONS.md describes it).
        #[arg(long)]
        json: bool,
    },
    /// Have the pipeline look at studies again (after installing a new
    /// model): each is scored again if its inputs or the model differ from
    /// its last job's. Name the studies, or give --received-within-days
    /// (one or the other).
    #[command(group(
        clap::ArgGroup::new("which")
            .required(true)
            .args(["studies", "received_within_days"])
    ))]
    Rescore {
        /// Study Instance UIDs (or --received-within-days instead).
        #[arg(value_name = "STUDY_UID")]
        studies: Vec<String>,
        /// Instead of UIDs: every study whose last instance arrived within
        /// this many days.
        #[arg(long, value_name = "DAYS")]
        received_within_days: Option<f64>,
    },
    /// Queue a dead or failed job again (its dead deliveries too), or send
    /// a succeeded job's dead deliveries again.
    Retry {
        job: i64,
        /// Also send again what was sent (a destination that lost it).
        #[arg(long)]
        resend: bool,
    },
    /// Check that destinations answer: associate as the node would (over
    /// TLS where marked) and send a C-ECHO. Without arguments, every
    /// configured destination (`pipeline.destinations`).
    Echo {
        /// AE@host:port, with +tls for TLS.
        destinations: Vec<String>,
    },
    /// Remove the studies whose last instance arrived more than DAYS ago
    /// and that have nothing left to do (as `storage.retention_days` does
    /// in a running node). Refused while a node has the data directory
    /// open, except with --dry-run.
    Purge {
        #[arg(long, value_name = "DAYS")]
        older_than: f64,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the effective settings (defaults, file and environment merged) as a TOML settings file.
    Settings,
    /// Generate a synthetic lung RT cohort ("phantom hospital") as DICOM,
    /// with labels.csv, cohort.json and the true risk regions.
    Synth {
        #[arg(long)]
        out: PathBuf,
        /// hospital1, hospital2, hospital3 (or any name: hospital 1's habits).
        #[arg(long, default_value = "hospital1")]
        hospital: String,
        #[arg(long, default_value_t = 20)]
        patients: usize,
        #[arg(long, default_value_t = 20260101)]
        seed: u64,
        /// "paper": hospital 1 with 336 patients (235 train / 101 internal
        /// validation), hospitals 2 and 3 with 57 and 95 (external).
        #[arg(long)]
        preset: Option<String>,
        /// Also write a planning CT series that the structures reference.
        #[arg(long)]
        ct: bool,
    },
    /// Show a study's RT objects: how they link, the dose grid, the
    /// structures matched, prescription, and DVH metrics.
    Inspect {
        /// Files or directories holding the study's RT Dose, RT Plan,
        /// RT Structure Set (and CT).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also draw the cumulative DVH curves to this PNG file.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// α/β (Gy) for EQD2.
        #[arg(long, default_value_t = 10.0)]
        alpha_beta: f64,
        /// Gy that a RELATIVE dose of 1.0 stands for (RELATIVE doses are
        /// refused without it).
        #[arg(long, value_name = "GY")]
        relative_dose_gy: Option<f64>,
        /// DVH for every ROI with contours, not only the recognised organs.
        #[arg(long)]
        all_rois: bool,
    },
    /// Print the IBSI dosiomic features of one region of a study: a
    /// structure (by name) or a candidate ROI (esophagus, esophagus_5mm,
    /// esophagus_ge50gy_eqd2, ...), in Gy on isotropic voxels of
    /// dosiomics.resample_mm (2.5 mm; 0: the dose grid).
    Features {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Structure name or candidate ROI name.
        #[arg(long)]
        roi: String,
        /// Bin width in Gy (default: dosiomics.bin_width_gy).
        #[arg(long, value_name = "GY")]
        bin_width: Option<f64>,
        /// Dose the features read: physical or eqd2 (default: dosiomics.dose).
        #[arg(long)]
        dose: Option<String>,
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
        #[arg(long, value_name = "GY")]
        relative_dose_gy: Option<f64>,
    },
    /// Rank the candidate ROIs of a synthetic cohort by cross-validated AUC
    /// of a dosiomics-only model, and save the optimal ROI and its model.
    RoiSearch {
        /// Cohort directory written by `esorisk synth`.
        #[arg(long)]
        cohort: PathBuf,
        /// Where the table, chart and feature table go
        /// (default: COHORT/roi-search).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The model file to write (default: dosiomics.model).
        #[arg(long)]
        model_out: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        #[arg(long, default_value_t = 20261126)]
        seed: u64,
        /// Penalty chosen by inner CV: "min" (lowest deviance) or "1se"
        /// (sparser: within one standard error of it).
        #[arg(long, default_value = "min")]
        lambda_rule: esorisk::dosiomics::model::LambdaRule,
        /// Stability screen: also measure every training patient's
        /// features with the dose scaled by 1 ± this, and leave out the
        /// features that do not follow the dose smoothly (0: no screen).
        #[arg(long, default_value_t = 0.02)]
        stability_scale: f64,
        /// A feature whose mean second difference over the three scalings
        /// exceeds this share of its SD between patients is left out.
        #[arg(long, default_value_t = 0.05)]
        max_instability: f64,
    },
    /// Train the DGD model (and, with --ablations, its ablations) on a
    /// synthetic cohort; settings from the [train] section.
    Train {
        #[arg(long)]
        cohort: PathBuf,
        /// Model directory to write (model.safetensors, card.json).
        #[arg(long)]
        out: PathBuf,
        /// dl, dl-seg, dl-seg-con or dgd (default: train.variant).
        #[arg(long)]
        variant: Option<esorisk::model::train::Variant>,
        /// Also train the other variants into OUT/ablations/<variant>.
        #[arg(long)]
        ablations: bool,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Device: auto, cpu or cuda:N (default: model.device).
        #[arg(long)]
        device: Option<String>,
    },
    /// Evaluate a trained model (and its ablations) on a cohort: the
    /// paper-style table as Markdown and CSV, ROC and calibration plots.
    Evaluate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        cohort: PathBuf,
        /// Output directory (default: MODEL/evaluation-<cohort name>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        #[arg(long)]
        device: Option<String>,
        /// Further cohorts (e.g. larger draws of the validation hospitals
        /// with another seed), reported per hospital as extra groups.
        #[arg(long)]
        extra_cohort: Vec<PathBuf>,
    },
    /// Join models trained the same way with different seeds into one
    /// ensemble model (the mean of their logits); calibrate it afterwards.
    Ensemble {
        /// The ensemble's model directory (members go to OUT/members).
        #[arg(long)]
        out: PathBuf,
        /// The model directories to join (two or more).
        #[arg(required = true, num_args = 2..)]
        models: Vec<PathBuf>,
        /// Also join the ablations every model has (OUT/ablations/*).
        #[arg(long)]
        ablations: bool,
    },
    /// Fit a Platt recalibration of a trained model (and its ablations) on
    /// one split of a cohort (default: internal validation, the split early
    /// stopping already looks at) and store it in each model card.
    Calibrate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        cohort: PathBuf,
        #[arg(long, default_value = "internal")]
        split: String,
        #[arg(long)]
        device: Option<String>,
    },
    /// Score one study from files: the risk, the learned ROI and its dose.
    Predict {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Model directory (default: model.path).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        device: Option<String>,
    },
    /// Check that a device (a GPU) computes what the CPU computes for the
    /// network, and time forward passes and training steps on it.
    DeviceCheck {
        /// Device compared with the CPU and timed (default: model.device).
        #[arg(long)]
        device: Option<String>,
        /// Network width; 64 is the paper's ResNet34 (default: train.net.width).
        #[arg(long)]
        width: Option<usize>,
        /// Input grid D,H,W (default: train.input.size).
        #[arg(long, value_delimiter = ',')]
        size: Option<Vec<usize>>,
        /// Dosiomic features fused in the head (the shipped model: 9); the
        /// prescription scale follows train.net.prescription_scale.
        #[arg(long, default_value_t = 9)]
        dosiomics: usize,
        /// Samples compared between CPU and device.
        #[arg(long, default_value_t = 1)]
        compare_batch: usize,
        /// Samples per timed step.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Timed repetitions after one warm-up.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Largest relative error accepted; above it the exit status is 1.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f64,
    },
    /// Write synthetic CT / RT objects (valid structure, no realistic anatomy)
    /// for trying the receiver and for benchmarks. The node stores a
    /// `study` but does not score it (its dose barely meets its esophagus):
    /// `esorisk synth` writes studies that are scored.
    GenTestData {
        #[arg(long)]
        out: PathBuf,
        /// ct, rtdose, rtplan, rtstruct, study; or an analytic phantom
        /// study: sphere, cylinder, thorax
        #[arg(long)]
        kind: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// CT: rows and columns; RT Dose: frames are derived from --mbytes.
        #[arg(long, default_value_t = 512)]
        size: u16,
        /// RT Dose: approximate pixel data size in MB.
        #[arg(long, default_value_t = 1)]
        mbytes: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve) {
        // A report piped into `head` should end quietly, not panic on EPIPE.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("esorisk: {e}");
            return ExitCode::from(2);
        }
    };
    esorisk::logging::init(&settings.logging);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("esorisk: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `serve` says why it stopped in its log (a service's journal, JSON
    // lines for a log collector) unless its log is off; any other command
    // to the person who ran it. Each error once.
    let serving = matches!(cli.command, Command::Serve);
    let result = runtime.block_on(run(cli.command, settings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if serving && tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e}");
            } else {
                eprintln!("esorisk: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve => {
            let pipeline_settings = settings.clone();
            let pl = &pipeline_settings.pipeline;
            let tls = esorisk::pipeline::client_tls(&pl.tls, pl.uses_tls())?;
            let node = Node::start(settings).await?;
            let pool = node.index().pool().clone();
            let receiving = Some(node.receiving());
            let ctx = pipeline_settings.pipeline.enabled.then(|| {
                esorisk::pipeline::context(&pipeline_settings, pool.clone(), tls, receiving)
            });
            if let Err(e) = esorisk::pipeline::record_start(&pool, ctx.as_ref()).await {
                tracing::error!("cannot record the node's start for esorisk status: {e}");
            }
            let pipeline = match ctx {
                Some(ctx) => Some(esorisk::pipeline::Pipeline::start(ctx).await),
                None => None,
            };
            // The pipeline stops between the receiver and the index, so
            // that what it finishes during shutdown is still recorded.
            let stopped = node.serve(shutdown_signal()).await?;
            if let Some(p) = pipeline {
                p.stop().await;
            }
            stopped.close().await;
        }
        Command::Jobs {
            state,
            study,
            follow,
            limit,
            json,
        } => {
            use esorisk::pipeline::jobs;
            if let Some(s) = state.as_deref().filter(|s| !jobs::STATES.contains(s)) {
                return Err(format!("--state {s:?}: one of {}", jobs::STATES.join(", ")).into());
            }
            let index = Index::open_existing(&settings.database_path()).await?;
            let pool = index.pool();
            let listed = jobs::list(pool, state.as_deref(), study.as_deref(), limit).await?;
            let deliveries =
                esorisk::pipeline::deliver::summary(pool, state.as_deref(), study.as_deref())
                    .await?;
            if json {
                let doc =
                    serde_json::json!({ "jobs": jobs_json(&listed)?, "deliveries": deliveries });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                index.close().await;
                return Ok(());
            }
            if listed.is_empty() {
                match state.is_some() || study.is_some() {
                    true => println!("no job matches"),
                    false => println!("no jobs"),
                }
            }
            for j in listed.iter().rev() {
                println!(
                    "job {:>4}  {:<9}  study {}  attempts {}/{}  created {}  {}",
                    j.id,
                    j.state,
                    j.study_instance_uid,
                    j.attempts,
                    j.max_attempts,
                    j.created_at,
                    match (&j.risk, &j.error) {
                        (Some(r), _) => format!(
                            "risk {:.1}%  SR {}",
                            100.0 * r,
                            j.sr_uid.as_deref().unwrap_or("-")
                        ),
                        (None, Some(e)) => format!("reason: {e}"),
                        _ => String::new(),
                    }
                );
            }
            for d in deliveries {
                println!(
                    "deliveries to {}: {} {}{}",
                    d.destination,
                    d.count,
                    d.state,
                    {
                        let jobs = match d.jobs.as_slice() {
                            [] => String::new(),
                            [one] => format!("job {one}"),
                            many => format!(
                                "jobs {}",
                                many.iter()
                                    .map(i64::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        let last = match (d.state.as_str(), d.last_error) {
                            (_, None) => String::new(),
                            ("sent", Some(w)) => format!("last warning: {w}"),
                            (_, Some(e)) => format!("last error: {e}"),
                        };
                        match (jobs.is_empty(), last.is_empty()) {
                            (true, true) => String::new(),
                            (false, false) => format!(" ({jobs}; {last})"),
                            _ => format!(" ({jobs}{last})"),
                        }
                    }
                );
            }
            if follow {
                let mut last: i64 =
                    sqlx::query_scalar("SELECT COALESCE(max(id), 0) - 20 FROM job_events")
                        .fetch_one(pool)
                        .await?;
                loop {
                    for (id, job, at, ev, detail) in
                        jobs::events_after(pool, last, study.as_deref()).await?
                    {
                        println!(
                            "{at}  job {job:>4}  {ev:<15} {}",
                            detail.unwrap_or_default()
                        );
                        last = id;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        _ = shutdown_signal() => break,
                    }
                }
            }
            index.close().await;
        }
        Command::Retry { job, resend } => {
            use esorisk::pipeline::jobs::{retry, Retried};
            let index = Index::open_existing(&settings.database_path()).await?;
            // What the destinations take now: a dead delivery that its
            // destination no longer wants is dropped, not sent again.
            let pl = &settings.pipeline;
            // Settings without any destination (a shell without the
            // node's settings, most likely) drop nothing.
            let none = pl.destinations.is_empty() && pl.send_back_port == 0;
            let wanted =
                |dest: &str, kind: &str| match pl.destinations.iter().find(|d| d.key() == dest) {
                    _ if none => true,
                    Some(d) => d.wants(kind),
                    // The sender, when results go back to it.
                    None => {
                        pl.send_back_port != 0
                            && esorisk::config::Destination::parse(dest)
                                .is_some_and(|d| d.port == pl.send_back_port)
                    }
                };
            let done = retry(index.pool(), job, resend, &wanted).await;
            index.close().await;
            match done? {
                Retried::Job => println!("job {job} queued again"),
                Retried::Deliveries(n) => println!(
                    "job {job}: {} queued again",
                    if resend {
                        counted(n, "delivery", "deliveries")
                    } else {
                        counted(n, "dead delivery", "dead deliveries")
                    }
                ),
                Retried::NoSuchJob => return Err(format!("no job {job} (see esorisk jobs)").into()),
                Retried::Dropped(n) => println!(
                    "job {job}: {} dropped: {} (pipeline.destinations)",
                    counted(n, "dead delivery", "dead deliveries"),
                    if n == 1 {
                        "its destination no longer takes it"
                    } else {
                        "their destinations no longer take them"
                    }
                ),
                Retried::Nothing => {
                    return Err(format!(
                        "job {job} is not dead or failed and has no {} (see esorisk jobs)",
                        if resend {
                            "delivery"
                        } else {
                            "dead delivery; --resend sends what was sent again"
                        }
                    )
                    .into())
                }
            }
        }
        Command::Rescore {
            studies,
            received_within_days,
        } => {
            let index = Index::open_existing(&settings.database_path()).await?;
            let studies = match received_within_days {
                Some(days) if !(days.is_finite() && days >= 0.0) => {
                    return Err("--received-within-days takes a number of days, 0 or more".into())
                }
                Some(days) => {
                    sqlx::query_scalar(
                        "SELECT study_instance_uid FROM studies WHERE last_received_at >= ? \
                         ORDER BY last_received_at",
                    )
                    .bind(esorisk::index::at_offset(-days * 86400.0))
                    .fetch_all(index.pool())
                    .await?
                }
                None => studies,
            };
            if studies.is_empty() {
                println!("no study received in that time");
            }
            let result = esorisk::pipeline::rescore(index.pool(), &studies).await;
            index.close().await;
            let unknown = result?;
            for s in studies.iter().filter(|s| !unknown.contains(s)) {
                println!(
                    "study {s}: looked at again at the pipeline's next poll; scored again if its inputs or the model changed since its last job"
                );
            }
            if !unknown.is_empty() {
                return Err(format!("no such study: {}", unknown.join(", ")).into());
            }
        }
        Command::Echo { destinations } => {
            let mut dests = Vec::new();
            for text in &destinations {
                dests.push(Destination::parse(text).ok_or_else(|| {
                    format!("destination {text:?}: expected AE@host:port or AE@host:port+tls")
                })?);
            }
            if dests.is_empty() {
                dests = settings.pipeline.destinations.clone();
            }
            if dests.is_empty() {
                return Err(
                    "no destination: name one (AE@host:port) or set pipeline.destinations".into(),
                );
            }
            let tls =
                esorisk::pipeline::client_tls(&settings.pipeline.tls, dests.iter().any(|d| d.tls))?;
            let mut failed = 0;
            for d in &dests {
                match esorisk::pipeline::deliver::echo(d, tls.clone(), &settings.dicom.ae_title)
                    .await
                {
                    Ok(took) => println!(
                        "{}: C-ECHO answered with success in {} ms",
                        d.key(),
                        took.as_millis()
                    ),
                    Err(e) => {
                        failed += 1;
                        println!("{}: {e}", d.key());
                    }
                }
            }
            if failed > 0 {
                return Err(format!(
                    "{failed} of {} did not answer C-ECHO with success",
                    counted(dests.len() as u64, "destination", "destinations")
                )
                .into());
            }
        }
        Command::Purge {
            older_than,
            dry_run,
        } => {
            if !(older_than.is_finite() && older_than >= 0.0) {
                return Err("--older-than takes a number of days, 0 or more".into());
            }
            // Before the data directory is locked (which would create it).
            let db = settings.database_path();
            if !db.is_file() {
                return Err(esorisk::index::IndexError::Missing {
                    path: db.display().to_string(),
                }
                .into());
            }
            // The node's receiver and this removal must not meet on a study;
            // holding the data directory keeps the node away.
            let store = if dry_run {
                None
            } else {
                let s = &settings.storage;
                Some(
                    esorisk::store::Store::open(&s.data_dir, s.fsync, s.min_free_mb).map_err(|e| {
                        format!("{e} (a running node removes old studies itself when storage.retention_days is set)")
                    })?,
                )
            };
            let index = Index::open_existing(&settings.database_path()).await?;
            let rule =
                esorisk::index::RemovalRule::older_than(older_than, settings.pipeline.enabled);
            let removable = index.removable_studies(&rule).await?;
            for (study, instances, bytes) in &removable {
                println!(
                    "{} {study}  instances {instances}  {:.1} MB",
                    if dry_run { "would remove" } else { "removing" },
                    *bytes as f64 / 1e6
                );
            }
            if store.is_some() {
                let gate = esorisk::retention::Gate::default();
                let r = esorisk::retention::remove_old(
                    &index,
                    &gate,
                    &settings.storage.data_dir,
                    &rule,
                    || true,
                )
                .await?;
                println!(
                    "removed {}, {}, {:.1} MB",
                    counted(r.studies as u64, "study", "studies"),
                    counted(r.instances as u64, "instance", "instances"),
                    r.bytes as f64 / 1e6
                );
            } else {
                println!(
                    "{} would be removed",
                    counted(removable.len() as u64, "study", "studies")
                );
            }
            index.close().await;
        }
        Command::Status { json, check } => {
            let doc = status(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print_status(&doc);
            }
            let problems = doc["problems"].as_array().map_or(0, Vec::len);
            if check && problems > 0 {
                return Err(format!(
                    "{} (see esorisk status)",
                    counted(problems as u64, "problem", "problems")
                )
                .into());
            }
        }
        Command::Studies {
            patient,
            study,
            limit,
            json,
        } => {
            let index = Index::open_existing(&settings.database_path()).await?;
            let filter = esorisk::index::StudyFilter {
                patient_id: patient,
                study_instance_uid: study,
            };
            let filtered = filter.patient_id.is_some() || filter.study_instance_uid.is_some();
            let (studies, total) = index.studies(&filter, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&studies)?);
                index.close().await;
                return Ok(());
            }
            match (studies.is_empty(), filtered) {
                (true, true) => println!("no study matches"),
                (true, false) => println!("no studies received"),
                _ => {}
            }
            for s in &studies {
                println!(
                    "{}  patient {} ({})  {}  series {}  instances {}  {:.1} MB  last received {}",
                    s.study_instance_uid,
                    if s.patient_id.is_empty() {
                        "-"
                    } else {
                        &s.patient_id
                    },
                    s.patient_name.as_deref().unwrap_or("-"),
                    if s.modalities.is_empty() {
                        "-"
                    } else {
                        &s.modalities
                    },
                    s.series,
                    s.instances,
                    s.bytes as f64 / 1e6,
                    s.last_received_at,
                );
                let checked = s
                    .checked
                    .as_deref()
                    .unwrap_or("not looked at since its last instance");
                let job = match &s.latest_job {
                    None => String::new(),
                    Some(j) => match (j.risk, &j.error) {
                        (Some(r), _) => {
                            format!("; job {} {} (risk {:.1}%)", j.id, j.state, r * 100.0)
                        }
                        (None, Some(e)) => format!("; job {} {}: {e}", j.id, j.state),
                        (None, None) => format!("; job {} {}", j.id, j.state),
                    },
                };
                println!("    scoring: {checked}{job}");
            }
            if total > studies.len() as i64 {
                println!(
                    "… {} more (older); --limit 0 lists all",
                    total - studies.len() as i64
                );
            }
            index.close().await;
        }
        Command::Settings => {
            println!(
                "# esorisk's effective settings: the embedded defaults, then --config, then\n\
                 # ESORISK__* variables (config/default.toml documents every key). This is\n\
                 # a settings file: `esorisk --config FILE` reads it back to the same settings.\n"
            );
            print!("{}", settings.to_toml()?);
        }
        Command::Synth {
            out,
            hospital,
            patients,
            seed,
            preset,
            ct,
        } => {
            let hospitals = match preset.as_deref() {
                Some("paper") => esorisk::synth::paper_preset(),
                Some(other) => return Err(format!("unknown preset {other:?} (paper)").into()),
                None => vec![(esorisk::synth::Hospital::preset(&hospital), patients)],
            };
            let started = std::time::Instant::now();
            let summary =
                esorisk::synth::generate_cohort(&out, &hospitals, seed, 235.0 / 336.0, ct)?;
            print!("{}", summary.text());
            println!(
                "written to {} in {:.1} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Inspect {
            paths,
            json,
            png,
            alpha_beta,
            relative_dose_gy,
            all_rois,
        } => {
            let options = esorisk::rt::dose::DoseOptions {
                relative_normalisation_gy: relative_dose_gy,
            };
            let study = esorisk::rt::study::load(&paths, &options)?;
            let analysis = esorisk::rt::analysis::analyse(
                &study,
                &esorisk::rt::analysis::Options {
                    alpha_beta,
                    all_rois,
                    ..Default::default()
                },
            );
            if json {
                let report = esorisk::inspect::report(&study, &analysis);
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", esorisk::inspect::text(&study, &analysis));
            }
            if let Some(png) = png {
                esorisk::inspect::png(&analysis, &png)?;
                if !json {
                    println!("\nDVH plot written to {}", png.display());
                }
            }
        }
        Command::Features {
            paths,
            roi,
            bin_width,
            dose,
            format,
            relative_dose_gy,
        } => {
            let dose = match dose.as_deref() {
                None => settings.dosiomics.dose,
                Some("physical") => esorisk::dosiomics::roi::DoseKind::Physical,
                Some("eqd2") => esorisk::dosiomics::roi::DoseKind::Eqd2,
                Some(o) => return Err(format!("--dose {o:?}: physical or eqd2").into()),
            };
            let width = bin_width.unwrap_or(settings.dosiomics.bin_width_gy);
            if !(width.is_finite() && width > 0.0) {
                return Err("--bin-width must be a positive number of Gy".into());
            }
            let study = esorisk::rt::study::load(
                &paths,
                &esorisk::rt::dose::DoseOptions {
                    relative_normalisation_gy: relative_dose_gy,
                },
            )?;
            let f = esorisk::dosiomics::region_features(
                &study,
                &roi,
                dose,
                width,
                settings.dosiomics.alpha_beta_gy,
                settings.dosiomics.resample(),
            )?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&f)?),
                "csv" => {
                    println!("feature,value,ibsi_name");
                    for x in &f.features {
                        let ibsi = esorisk::dosiomics::ibsi_name(&x.name)
                            .map(|(_, n)| n)
                            .unwrap_or("");
                        println!(
                            "{},{},\"{}\"",
                            x.name,
                            x.value.map(|v| v.to_string()).unwrap_or_default(),
                            ibsi
                        );
                    }
                }
                o => return Err(format!("--format {o:?}: json or csv").into()),
            }
        }
        Command::RoiSearch {
            cohort,
            out,
            model_out,
            repeats,
            folds,
            bootstrap,
            seed,
            lambda_rule,
            stability_scale,
            max_instability,
        } => {
            use esorisk::dosiomics::search;
            let o = search::SearchOptions {
                bin_width_gy: settings.dosiomics.bin_width_gy,
                dose: settings.dosiomics.dose,
                alpha_beta: settings.dosiomics.alpha_beta_gy,
                resample_mm: settings.dosiomics.resample(),
                repeats,
                folds,
                bootstrap,
                seed,
                lambda_rule,
                stability_scale,
                max_instability,
                ..Default::default()
            };
            if !(0.0..0.5).contains(&stability_scale) {
                return Err(format!(
                    "--stability-scale {stability_scale}: a share of the dose from 0 (no screen) to below 0.5"
                )
                .into());
            }
            if max_instability.is_nan() || max_instability < 0.0 {
                return Err(format!(
                    "--max-instability {max_instability}: a share of a feature's SD, 0 or more"
                )
                .into());
            }
            let out = out.unwrap_or_else(|| cohort.join("roi-search"));
            std::fs::create_dir_all(&out)?;
            let model_out = model_out.unwrap_or_else(|| settings.dosiomics.model.clone());
            // As in `evaluate`: said at once, and everything but the chart
            // is written without a font.
            let font = esorisk::inspect::load_font();
            if let Err(e) = &font {
                eprintln!(
                    "esorisk: {e}: the tables and the model will be written, the chart will not"
                );
            }
            let started = std::time::Instant::now();
            let patients = search::read_labels(&cohort)?;
            let features = search::cohort_features(&cohort, &patients, &o);
            let t_features = started.elapsed().as_secs_f64();
            let [csv, png, eval_csv, features_csv, txt, stability_csv] = search::outputs(&out);
            search::write_features_csv(&features_csv, &patients, &features)?;
            let (report, model) = search::search(&patients, &features, &o, &cohort)?;
            let text = report.text();
            print!("{text}");
            std::fs::write(&txt, &text)?;
            std::fs::write(&csv, report.csv())?;
            std::fs::write(&eval_csv, report.evaluation_csv())?;
            std::fs::write(&stability_csv, report.stability_csv())?;
            model.save(&model_out)?;
            font.map_err(|e| {
                format!(
                    "tables and the model written ({}); no chart: {e}",
                    model_out.display()
                )
            })?;
            report.png(&png)?;
            println!(
                "\nfeatures {t_features:.1} s, search {:.1} s; wrote {}, {}, {}, {}, {}, {} and the model {}",
                started.elapsed().as_secs_f64() - t_features,
                txt.display(),
                csv.display(),
                png.display(),
                eval_csv.display(),
                features_csv.display(),
                stability_csv.display(),
                model_out.display()
            );
        }
        Command::Train {
            cohort,
            out,
            variant,
            ablations,
            epochs,
            seed,
            device,
        } => {
            use esorisk::model::{dataset::Dataset, infer, train};
            let dev = train::device(device.as_deref().unwrap_or(&settings.model.device))?;
            let mut cfg = settings.train.clone();
            if let Some(v) = variant {
                cfg.variant = v;
            }
            if let Some(e) = epochs {
                cfg.epochs = e;
            }
            if let Some(s) = seed {
                cfg.seed = s;
            }
            let dosio = esorisk::dosiomics::search::DosiomicsModelFile::load(
                &settings.dosiomics.model,
            )
            .map_err(|e| {
                format!("the dosiomics model (dosiomics.model, written by esorisk roi-search): {e}")
            })?;
            let threads = esorisk::par::threads();
            let ds = Dataset::cached(&cohort, &cfg.input, &dosio, threads)?;
            println!(
                "dataset: {} patients ({} train, {} internal), {} excluded",
                ds.len(),
                ds.indices("train", None).len(),
                ds.indices("internal", None).len(),
                ds.excluded.len()
            );
            let mut runs = vec![(cfg.variant, out.clone())];
            if ablations {
                for v in train::Variant::ALL {
                    if v != cfg.variant {
                        runs.push((v, out.join("ablations").join(v.name())));
                    }
                }
            }
            for (v, dir) in runs {
                std::fs::create_dir_all(&dir)?;
                let c = train::TrainConfig {
                    variant: v,
                    ..cfg.clone()
                };
                println!("training {} → {}", v.label(), dir.display());
                let source = train::FeatureSource {
                    cohort: &cohort,
                    model: &dosio,
                    threads,
                    min_roi_cc: c.min_fusion_roi_cc,
                };
                let t = train::train(&ds, &c, &dev, &dir.join("model.safetensors"), &source)?;
                let card = infer::card(&c, &t, &ds, &dosio, &cohort, &dir)?;
                std::fs::write(
                    dir.join("card.json"),
                    serde_json::to_string_pretty(&card)? + "\n",
                )?;
                println!(
                    "{}: best internal validation AUC {:.3} at epoch {}, {:.1} training samples/s",
                    v.label(),
                    t.best_validation_auc,
                    t.best_epoch,
                    t.samples_per_second
                );
            }
        }
        Command::Evaluate {
            model,
            cohort,
            out,
            bootstrap,
            device,
            extra_cohort,
        } => {
            use esorisk::model::{evaluate, infer::RiskModel, train};
            // Said at once rather than after the scoring; the tables do
            // not need a font and are written anyway.
            let font = esorisk::inspect::load_font();
            if let Err(e) = &font {
                eprintln!("esorisk: {e}: the tables will be written, the plots will not");
            }
            let dev = train::device(device.as_deref().unwrap_or(&settings.model.device))?;
            let main_model = RiskModel::load(&model, &dev)?;
            let dosio = main_model.card.dosiomics.clone();
            let mut models = Vec::new();
            for d in esorisk::model::calibrate::with_ablations(&model)
                .iter()
                .skip(1)
            {
                match RiskModel::load(d, &dev) {
                    Ok(m) => models.push((model_label(&m.card), m)),
                    Err(e) => eprintln!("ablation {} left out: {e}", d.display()),
                }
            }
            models.sort_by_key(|(_, m)| m.card.variant as u8);
            models.push((model_label(&main_model.card), main_model));
            let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
            let (mut patients, mut results) = evaluate::score_cohort(&cohort, &models, &dosio)?;
            for extra in &extra_cohort {
                let (mut p, r) = evaluate::score_cohort(extra, &models, &dosio)?;
                for x in &mut p {
                    x.split = evaluate::EXTRA.into();
                }
                patients.extend(p);
                results.extend(r);
            }
            let ev = evaluate::evaluate(&patients, &results, &names, bootstrap, 20261126);
            let cohort_name = cohort
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "cohort".into());
            let out = out.unwrap_or_else(|| model.join(format!("evaluation-{cohort_name}")));
            std::fs::create_dir_all(&out)?;
            let md = ev.markdown();
            print!("{md}");
            std::fs::write(out.join("evaluation.md"), &md)?;
            std::fs::write(out.join("evaluation.csv"), ev.csv())?;
            std::fs::write(out.join("predictions.csv"), ev.predictions_csv())?;
            font.map_err(|e| format!("tables written to {}; no plots: {e}", out.display()))?;
            ev.plots(&out.join("roc.png"), &out.join("calibration.png"))?;
            println!("\nwritten to {}", out.display());
        }
        Command::Ensemble {
            out,
            models,
            ablations,
        } => {
            for d in esorisk::model::ensemble::join(&out, &models, ablations)? {
                println!(
                    "{}: ensemble written; run esorisk calibrate on it",
                    d.display()
                );
            }
        }
        Command::Calibrate {
            model,
            cohort,
            split,
            device,
        } => {
            use esorisk::model::{calibrate, infer::RiskModel, train};
            let dev = train::device(device.as_deref().unwrap_or(&settings.model.device))?;
            let mut models = calibrate::with_ablations(&model)
                .iter()
                .map(|d| RiskModel::load(d, &dev))
                .collect::<Result<Vec<_>, _>>()?;
            for line in calibrate::calibrate(&mut models, &cohort, &split)? {
                println!("{line}");
            }
        }
        Command::Predict {
            paths,
            model,
            json,
            device,
        } => {
            use esorisk::model::{infer::RiskModel, train};
            let dev = train::device(device.as_deref().unwrap_or(&settings.model.device))?;
            let dir = model.unwrap_or_else(|| settings.model.path.clone());
            let m = RiskModel::load_or_builtin(&dir, &dev)?;
            let study = esorisk::rt::study::load(&paths, &Default::default())?;
            // What the node would refuse, `predict` refuses too.
            if let Some(p) = study.blocking_problem() {
                return Err(format!("{p}; not scored").into());
            }
            let started = std::time::Instant::now();
            let s = m.score(&study)?;
            if json {
                let j = serde_json::json!({
                    "study_instance_uid": study.study_instance_uid,
                    "patient_id": study.patient_id,
                    "model": m.card.name,
                    "model_version": m.version,
                    "score": s,
                    "problems": study.problems,
                    "disclaimer": esorisk::model::infer::INTENDED_USE,
                });
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                print!("{}", esorisk::model::infer::text(&m, &study, &s));
                for p in study.problems.iter().chain(&s.notes) {
                    println!("note: {p}");
                }
                println!("scored in {:.2} s", started.elapsed().as_secs_f64());
            }
        }
        Command::DeviceCheck {
            device,
            width,
            size,
            dosiomics,
            compare_batch,
            batch,
            reps,
            tolerance,
        } => {
            use esorisk::model::{devcheck, net::NetConfig, train};
            let dev = train::device(device.as_deref().unwrap_or(&settings.model.device))?;
            let t = &settings.train;
            let net = NetConfig {
                in_channels: t.input.channels(),
                width: width.unwrap_or(t.net.width),
                n_dosiomics: dosiomics,
                ..t.net.clone()
            };
            let size = match size.as_deref() {
                None => t.input.size,
                Some(&[d, h, w]) if d * h * w > 0 => [d, h, w],
                Some(other) => return Err(format!("--size {other:?}: give D,H,W").into()),
            };
            let cfg = devcheck::CheckConfig {
                net,
                size,
                compare_batch,
                batch,
                reps,
                seed: t.seed,
            };
            let r = devcheck::check(&cfg, &dev)?;
            print!("{}", devcheck::table(&cfg, &r));
            if r.worst().is_nan() || r.worst() > tolerance {
                eprintln!(
                    "device-check: relative error {:.2e} above the tolerance {tolerance:.0e}",
                    r.worst()
                );
                std::process::exit(1);
            }
        }
        Command::GenTestData {
            out,
            kind,
            count,
            size,
            mbytes,
            seed,
        } => {
            let paths = match kind.as_str() {
                "sphere" => {
                    esorisk::rt::phantom::write(&esorisk::rt::phantom::sphere_linear(), &out)?
                }
                "cylinder" => esorisk::rt::phantom::write(
                    &esorisk::rt::phantom::hollow_cylinder_radial(),
                    &out,
                )?,
                "thorax" => esorisk::rt::phantom::write(&esorisk::rt::phantom::thorax(), &out)?,
                _ => esorisk::testgen::write_set(&out, &kind, count, size, mbytes, seed)?,
            };
            println!(
                "wrote {} to {}",
                counted(paths.len() as u64, "file", "files"),
                out.display()
            );
        }
    }
    Ok(())
}

/// `n` and the noun in its number: "1 study", "2 studies".
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The jobs as `jobs --json` prints them: each job's row, with its input
/// UIDs as a JSON array (the database keeps them as JSON text).
fn jobs_json(
    listed: &[esorisk::pipeline::jobs::Job],
) -> Result<serde_json::Value, serde_json::Error> {
    let mut out = Vec::with_capacity(listed.len());
    for job in listed {
        let mut v = serde_json::to_value(job)?;
        let uids: Vec<String> = serde_json::from_str(&job.input_uids).unwrap_or_default();
        v["input_uids"] = uids.into();
        out.push(v);
    }
    Ok(out.into())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// A model's row name in the evaluation table: its variant, and for the
/// full model where its fused dosiomic features are measured.
fn model_label(card: &esorisk::model::infer::ModelCard) -> String {
    use esorisk::model::infer::FusionRoi;
    match (card.variant.fusion(), card.fusion_roi) {
        (true, FusionRoi::Rule) => format!(
            "{} (dosiomics in the rule-defined ROI)",
            card.variant.label()
        ),
        (true, FusionRoi::Predicted) => {
            format!("{} (dosiomics in the predicted ROI)", card.variant.label())
        }
        _ => card.variant.label().to_string(),
    }
}

/// What `esorisk status` reports, read from the data directory and the
/// index without disturbing a running node.
async fn status(settings: &Settings) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use sqlx::Row;
    let data_dir = &settings.storage.data_dir;
    let node = esorisk::store::holder(data_dir);
    // A number for monitoring; null when no node runs (or, in a lock file
    // damaged by hand, when it holds no process id).
    let node_pid: Option<i64> = node.as_deref().and_then(|p| p.parse().ok());
    let free_mb = esorisk::store::free_bytes(data_dir).map(|b| b / (1024 * 1024));
    let mut doc = serde_json::json!({
        "data_dir": data_dir.display().to_string(),
        "node_running": node.is_some(),
        "node_pid": node_pid,
        "free_mb": free_mb,
        "min_free_mb": settings.storage.min_free_mb,
        "retention_days": settings.storage.retention_days,
    });
    let mut problems = Vec::new();
    if node.is_none() {
        problems.push("no node is running on this data directory".to_string());
    }
    if free_mb.is_some_and(|mb| mb < settings.storage.min_free_mb) {
        problems.push(format!(
            "free space is under storage.min_free_mb ({} MiB): instances are refused",
            settings.storage.min_free_mb
        ));
    }
    let db = settings.database_path();
    if !db.exists() {
        problems.push(
            esorisk::index::IndexError::Missing {
                path: db.display().to_string(),
            }
            .to_string(),
        );
        doc["problems"] = problems.into();
        return Ok(doc);
    }
    doc["problems"] = problems.clone().into();
    let index = Index::open(&db).await?;
    let pool = index.pool();
    let studies = sqlx::query(
        "SELECT (SELECT count(*) FROM studies), count(*), COALESCE(sum(size_bytes), 0), \
         max(received_at) FROM instances",
    )
    .fetch_one(pool)
    .await?;
    // Every state, 0 included: a monitoring check reads `deliveries.dead`
    // as a number whether or not any delivery ever died.
    let mut jobs = serde_json::Map::new();
    for s in esorisk::pipeline::jobs::STATES {
        jobs.insert(s.into(), 0.into());
    }
    for r in sqlx::query("SELECT state, count(*) FROM jobs GROUP BY state")
        .fetch_all(pool)
        .await?
    {
        jobs.insert(r.get(0), r.get::<i64, _>(1).into());
    }
    let mut deliveries = serde_json::Map::new();
    for s in DELIVERY_STATES {
        deliveries.insert(s.into(), 0.into());
    }
    for r in sqlx::query("SELECT state, count(*) FROM deliveries GROUP BY state")
        .fetch_all(pool)
        .await?
    {
        deliveries.insert(r.get(0), r.get::<i64, _>(1).into());
    }
    doc["studies"] = studies.get::<i64, _>(0).into();
    doc["instances"] = studies.get::<i64, _>(1).into();
    doc["stored_mb"] = (studies.get::<i64, _>(2) / (1024 * 1024)).into();
    doc["last_received_at"] = studies.get::<Option<String>, _>(3).into();
    for (what, counts) in [("jobs", &jobs), ("deliveries", &deliveries)] {
        if let Some(n) = counts
            .get("dead")
            .and_then(|n| n.as_i64())
            .filter(|n| *n > 0)
        {
            problems.push(match what {
                "jobs" => format!(
                    "{} (esorisk jobs --state dead; esorisk retry JOB)",
                    counted(n as u64, "dead job", "dead jobs")
                ),
                _ => format!(
                    "{} (esorisk jobs names {}; esorisk retry JOB)",
                    counted(n as u64, "dead delivery", "dead deliveries"),
                    if n == 1 { "its job" } else { "their jobs" }
                ),
            });
        }
    }
    // What the running node scores with, from the row it wrote at start.
    let started = sqlx::query(
        "SELECT pid, started_at, version, pipeline_enabled, model_version, model_error FROM node",
    )
    .fetch_optional(pool)
    .await?
    .filter(|r| Some(r.get::<i64, _>(0)) == node_pid);
    if let Some(r) = started {
        let enabled: bool = r.get(3);
        let model: Option<String> = r.get(4);
        let error: Option<String> = r.get(5);
        doc["started_at"] = r.get::<String, _>(1).into();
        doc["node_version"] = r.get::<String, _>(2).into();
        doc["scoring"] = match (enabled, &model) {
            (false, _) => "off",
            (true, Some(_)) => "on",
            (true, None) => "no model",
        }
        .into();
        if enabled && model.is_none() {
            let queued = jobs.get("queued").and_then(|n| n.as_i64()).unwrap_or(0);
            problems.push(format!(
                "the node scores nothing: no risk model ({}); {} queued. Install the model at model.path and restart the node",
                error.as_deref().unwrap_or("not loaded"),
                if queued == 1 {
                    "1 job waits".to_string()
                } else {
                    format!("{queued} jobs wait")
                }
            ));
        }
        if model.is_some() {
            // Jobs due for this long with a model loaded: the workers are
            // stuck or far behind, which no other line would show.
            let waiting = sqlx::query(
                "SELECT count(*), min(COALESCE(not_before, created_at)) FROM jobs \
                 WHERE state = 'queued' AND COALESCE(not_before, created_at) <= ?",
            )
            .bind(esorisk::index::at_offset(
                -(STALE_QUEUE_MINUTES as f64) * 60.0,
            ))
            .fetch_one(pool)
            .await?;
            let n: i64 = waiting.get(0);
            if n > 0 {
                let since = waiting.get::<Option<String>, _>(1).unwrap_or_default();
                problems.push(format!(
                    "{} been due for more than {STALE_QUEUE_MINUTES} minutes ({}since {since}): the scoring workers are stuck or far behind; see the node's log",
                    if n == 1 {
                        "1 queued job has".to_string()
                    } else {
                        format!("{n} queued jobs have")
                    },
                    if n == 1 { "" } else { "the oldest " }
                ));
            }
        }
        doc["model"] = model.into();
        doc["model_error"] = error.into();
    }
    doc["last_job_finished_at"] = sqlx::query_scalar::<_, Option<String>>(
        "SELECT max(finished_at) FROM jobs WHERE state IN ('succeeded', 'failed')",
    )
    .fetch_one(pool)
    .await?
    .into();
    doc["jobs"] = jobs.into();
    doc["deliveries"] = deliveries.into();
    doc["problems"] = problems.into();
    index.close().await;
    Ok(doc)
}

/// The states of a delivery (the `deliveries.state` column), as `status`
/// counts them.
const DELIVERY_STATES: [&str; 4] = ["pending", "sent", "dead", "dropped"];

/// `esorisk status` calls queued jobs a problem once they have been due
/// this long: scoring takes seconds, so only stuck or swamped workers leave
/// a job waiting for minutes.
const STALE_QUEUE_MINUTES: u64 = 10;

fn print_status(doc: &serde_json::Value) {
    let text = |k: &str| match &doc[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        v => v.to_string(),
    };
    match doc["node_running"].as_bool() {
        Some(true) => println!(
            "node: running (process {}{})",
            text("node_pid"),
            match doc["started_at"].as_str() {
                Some(t) => format!(", esorisk {}, since {t}", text("node_version")),
                None => String::new(),
            }
        ),
        _ => println!("node: not running"),
    }
    match doc["scoring"].as_str() {
        Some("on") => println!("scoring: model {}", text("model")),
        Some("off") => println!("scoring: off (pipeline.enabled = false)"),
        Some(_) => println!("scoring: none, no risk model ({})", text("model_error")),
        None => {}
    }
    println!(
        "data directory: {} ({} MiB free; instances refused below {} MiB)",
        text("data_dir"),
        text("free_mb"),
        text("min_free_mb")
    );
    let problems: Vec<&str> = doc["problems"]
        .as_array()
        .map(|v| v.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    if problems.is_empty() {
        println!("problems: none");
    }
    for p in problems {
        println!("problem: {p}");
    }
    if doc.get("studies").is_none() {
        println!("nothing received yet (no index)");
        return;
    }
    println!(
        "studies: {} ({}, {} MiB); last instance received {}",
        text("studies"),
        counted(
            doc["instances"].as_u64().unwrap_or(0),
            "instance",
            "instances"
        ),
        text("stored_mb"),
        text("last_received_at")
    );
    let counts = |k: &str, states: &[&str]| {
        states
            .iter()
            .map(|s| format!("{} {s}", doc[k][s].as_i64().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "jobs: {}{}",
        counts("jobs", &esorisk::pipeline::jobs::STATES),
        match doc["last_job_finished_at"].as_str() {
            Some(t) => format!("; the last finished {t}"),
            None => String::new(),
        }
    );
    println!("deliveries: {}", counts("deliveries", &DELIVERY_STATES));
}
