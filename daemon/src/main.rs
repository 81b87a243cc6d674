//! `flatnetd`: runs a host's data plane (`run`), starts one in the background (`start`), stops
//! it (`stop`), shows what it does (`status`) and checks a host and a network config (`check`).

mod check;
mod man_pages;
mod status;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use flatnet::config::DEFAULT_STATE_DIR;
use flatnet::control::{self, DaemonOptions};
use flatnet::dataplane;
use flatnet::logging::{self, DaemonLog};
use flatnet::state::StateDir;
use flatnet::users;

#[derive(Parser)]
#[command(
    name = "flatnetd",
    version,
    about = "Flatnet data plane daemon",
    long_about = "flatnetd carries the packets of a host's containers on Flatnet networks: it \
                  reads their TUN devices, encrypts what goes to other hosts in Noise tunnels \
                  over UDP, answers DNS for Flatnet names and serves the host member. The \
                  plugins (flatnet-cni, the netavark plugin flatnet) start it on first use; \
                  under systemd the flatnetd unit runs it instead."
)]
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
        settings: DaemonOptions,
        /// Write one byte to this file descriptor once serving (used by the plugins).
        #[arg(long)]
        ready_fd: Option<i32>,
        /// Log to this file (0600, rotated by size) instead of stderr or the journal.
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Start the data plane in the background unless it runs, and wait until it serves.
    Start {
        #[command(flatten)]
        settings: DaemonOptions,
    },
    /// Ask the data plane to stop.
    Stop,
    /// Print this host's public key (made now if there is none): what the network CA signs.
    Key,
    /// Show containers, peers, tunnels and drop counters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// As a rootless user: your own containers, through flatnetd's user socket (the
        /// default for a user other than root) [default: /var/lib/flatnet/user.sock]
        #[arg(long, value_name = "PATH")]
        user_socket: Option<PathBuf>,
    },
    /// Check this host's readiness and, if given, a network's configuration; exit 1 on a fault.
    Check(check::CheckArgs),
    /// Write the manual pages (roff) into a directory and exit.
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state_dir = StateDir::new(cli.state_dir);
    // `run` chooses its own log; the short-lived commands print warnings on stderr.
    if !matches!(cli.command, Cmd::Run { .. }) {
        logging::init_plugin();
    }
    let result = match cli.command {
        Cmd::Run {
            settings,
            ready_fd,
            log_file,
        } => {
            init_logging(log_file.as_deref());
            let config = settings.resolve(state_dir);
            match (config, ready_fd.map(ready_file).transpose()) {
                (Ok(config), Ok(ready)) => dataplane::run(config, ready),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Cmd::Start { settings } => settings
            .resolve(state_dir)
            .and_then(|config| control::ensure_running(&config)),
        Cmd::Stop => control::stop(&state_dir),
        Cmd::Status { json, user_socket } if user_socket.is_some() || users::is_rootless() => {
            status::show_user(user_socket.as_deref(), json)
        }
        Cmd::Status { json, .. } => status::show(&state_dir, json),
        Cmd::Key => print_key(&state_dir),
        Cmd::Check(args) => return check::run(&state_dir, &args),
        Cmd::GenerateMan { dir } => return write_manual(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flatnetd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_key(state_dir: &StateDir) -> flatnet::Result<()> {
    flatnet::state::create_private_dir(state_dir)?;
    let keys = flatnet::tunnel::StaticKeys::load_or_generate(&state_dir.host_key())?;
    println!("{}", flatnet::tunnel::encode_key(&keys.public));
    Ok(())
}

/// The descriptor `--ready-fd` names, which the parent left open for us: never stdin, stdout
/// or stderr (a byte written there would go to the wrong reader), and it must be open.
fn ready_file(fd: i32) -> flatnet::Result<File> {
    use nix::fcntl::{fcntl, FcntlArg};
    let refuse = |why: &str| flatnet::Error::InvalidConfig(format!("--ready-fd {fd}: {why}"));
    if fd < 3 {
        return Err(refuse(
            "must be 3 or above (0-2 are stdin, stdout and stderr)",
        ));
    }
    fcntl(fd, FcntlArg::F_GETFD).map_err(|e| refuse(&format!("not an open descriptor ({e})")))?;
    // SAFETY: the descriptor is open, not one of the standard ones, and ours from here on:
    // the parent handed it to us for exactly this.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn init_logging(log_file: Option<&std::path::Path>) {
    let log = log_file.map_or(DaemonLog::Stderr, DaemonLog::File);
    if let Err(e) = logging::init_daemon(log) {
        eprintln!("flatnetd: opening the log: {e}");
    }
}

/// The manual pages, flatnetd(8) and one per subcommand (flatnetd-check(8), ...), into `dir`.
fn write_manual(dir: &Path) -> ExitCode {
    let see_also = "\n.SH \"SEE ALSO\"\n\\fBflatnetd\\fR(8)\n";
    match man_pages::write_pages(dir, Cli::command(), include_str!("manual.roff"), see_also) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flatnetd: {e}");
            ExitCode::FAILURE
        }
    }
}
