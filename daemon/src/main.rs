//! `flatnetd`: runs a host's data plane (`run`), starts one in the background (`start`), stops
//! it (`stop`) and shows what it does (`status`).

mod status;

use std::fs::File;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flatnet::config::{DEFAULT_STATE_DIR, DEFAULT_TUNNEL_PORT};
use flatnet::control::{self, DaemonSettings, Request};
use flatnet::dataplane::{self, DaemonConfig};

#[derive(Parser)]
#[command(name = "flatnetd", version, about = "Flatnet data plane daemon")]
struct Cli {
    /// The state directory the daemon serves (one daemon per state directory).
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the data plane in the foreground.
    Run {
        #[command(flatten)]
        settings: Settings,
        /// Write one byte to this file descriptor once serving (used by the plugins).
        #[arg(long)]
        ready_fd: Option<i32>,
    },
    /// Start the data plane in the background unless it runs, and wait until it serves.
    Start {
        #[command(flatten)]
        settings: Settings,
    },
    /// Ask the data plane to stop.
    Stop,
    /// Show containers, peers, tunnels and drop counters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct Settings {
    /// The file lighthouse [default: <state-dir>/lighthouse.json, or the last run's]
    #[arg(long)]
    lighthouse: Option<PathBuf>,
    /// UDP address to listen on, which is also the endpoint other hosts are told
    /// [default: 127.0.0.1:4800, or the last run's]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// After sending, poll this many µs for the answer before sleeping; 0 never polls
    /// (lowest CPU use, higher latency on virtual machines) [default: 50, or the last run's]
    #[arg(long)]
    poll_us: Option<u32>,
}

impl Settings {
    /// Explicit flags, else what the last daemon of this state directory used, else defaults.
    fn resolve(self, state_dir: PathBuf) -> DaemonConfig {
        let last = DaemonConfig::load(&state_dir).ok();
        DaemonConfig {
            lighthouse: self
                .lighthouse
                .or_else(|| last.as_ref().map(|c| c.lighthouse.clone()))
                .unwrap_or_else(|| state_dir.join("lighthouse.json")),
            listen: self
                .listen
                .or_else(|| last.as_ref().map(|c| c.listen))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_TUNNEL_PORT))),
            poll_us: self
                .poll_us
                .or_else(|| last.as_ref().map(|c| c.poll_us))
                .unwrap_or(dataplane::DEFAULT_POLL_US),
            state_dir,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLATNET_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run { settings, ready_fd } => {
            // SAFETY: the fd was handed to us for exactly this, by our parent.
            let ready = ready_fd.map(|fd| unsafe { File::from_raw_fd(fd) });
            dataplane::run(settings.resolve(cli.state_dir), ready)
        }
        Cmd::Start { settings } => {
            let config = settings.resolve(cli.state_dir);
            control::ensure_running(&DaemonSettings {
                state_dir: config.state_dir,
                lighthouse: config.lighthouse,
                listen: config.listen,
                poll_us: Some(config.poll_us),
            })
        }
        Cmd::Stop => match control::is_running(&cli.state_dir) {
            true => control::call(&cli.state_dir, &Request::Shutdown).map(drop),
            false => Ok(()),
        },
        Cmd::Status { json } => status::show(&cli.state_dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flatnetd: {e}");
            ExitCode::FAILURE
        }
    }
}
