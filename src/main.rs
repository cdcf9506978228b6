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
    /// Print the IBSI dosiomic features of one region of a study: a
    /// structure (by name) or a candidate ROI (esophagus, esophagus_5mm,
    /// esophagus_ge50gy_eqd2, ...), on the dose grid in Gy.
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
        } => {
            use esorisk::dosiomics::search;
            let o = search::SearchOptions {
                bin_width_gy: settings.dosiomics.bin_width_gy,
                dose: settings.dosiomics.dose,
                alpha_beta: settings.dosiomics.alpha_beta_gy,
                repeats,
                folds,
                bootstrap,
                seed,
                lambda_rule,
                ..Default::default()
            };
            let out = out.unwrap_or_else(|| cohort.join("roi-search"));
            std::fs::create_dir_all(&out)?;
            let model_out = model_out.unwrap_or_else(|| settings.dosiomics.model.clone());
            let started = std::time::Instant::now();
            let patients = search::read_labels(&cohort)?;
            let features = search::cohort_features(&cohort, &patients, &o);
            let t_features = started.elapsed().as_secs_f64();
            let [csv, png, eval_csv, features_csv, txt] = search::outputs(&out);
            search::write_features_csv(&features_csv, &patients, &features)?;
            let (report, model) = search::search(&patients, &features, &o, &cohort)?;
            let text = report.text();
            print!("{text}");
            std::fs::write(&txt, &text)?;
            std::fs::write(&csv, report.csv())?;
            std::fs::write(&eval_csv, report.evaluation_csv())?;
            report.png(&png)?;
            model.save(&model_out)?;
            println!(
                "\nfeatures {t_features:.1} s, search {:.1} s; wrote {}, {}, {}, {}, {} and the model {}",
                started.elapsed().as_secs_f64() - t_features,
                txt.display(),
                csv.display(),
                png.display(),
                eval_csv.display(),
                features_csv.display(),
                model_out.display()
            );
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
