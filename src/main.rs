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
    /// Write synthetic CT / RT objects (valid structure, no realistic anatomy)
    /// for trying the node and for benchmarks.
    GenTestData {
        #[arg(long)]
        out: PathBuf,
        /// ct, rtdose, rtplan, rtstruct
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
        Command::GenTestData {
            out,
            kind,
            count,
            size,
            mbytes,
            seed,
        } => {
            let paths = esorisk::testgen::write_set(&out, &kind, count, size, mbytes, seed)?;
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
