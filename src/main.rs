//! The `esorisk` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use esorisk::config::Settings;
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
    /// List the studies received, newest first.
    Studies,
    /// Print the effective settings (defaults, file and environment merged).
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
    /// Write synthetic CT / RT objects (valid structure, no realistic anatomy)
    /// for trying the node and for benchmarks.
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
    let result = runtime.block_on(run(cli.command, settings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("esorisk: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve => {
            let node = Node::start(settings).await?;
            node.run(shutdown_signal()).await?;
        }
        Command::Studies => {
            let index = Index::open(&settings.database_path()).await?;
            let studies = index.studies().await?;
            if studies.is_empty() {
                println!("no studies received");
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
            }
            index.close().await;
        }
        Command::Settings => {
            println!("{settings:#?}");
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
            println!("wrote {} files to {}", paths.len(), out.display());
        }
    }
    Ok(())
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
