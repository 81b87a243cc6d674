//! `flatnetd`: runs a host's data plane (`run`), starts one in the background (`start`), stops
//! it (`stop`), shows what it does (`status`) and checks a host and a network config (`check`).

mod check;
mod man_pages;
mod status;

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use flatnet::config::{DEFAULT_STATE_DIR, DEFAULT_TUNNEL_PORT};
use flatnet::control::{self, DaemonSettings, Request};
use flatnet::dataplane::{self, DaemonConfig, MetricsAddress, SameHost};
use flatnet::lighthouse::{LighthouseInput, LighthouseSettings};
use flatnet::logging::{self, DaemonLog};

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
        settings: Settings,
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
        settings: Settings,
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
    },
    /// Check this host's readiness and, if given, a network's configuration; exit 1 on a fault.
    Check(check::CheckArgs),
    /// Write the manual pages (roff) into a directory and exit.
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

#[derive(clap::Args)]
struct Settings {
    /// The lighthouse: a file's path, or `etcd` with the --etcd-* flags
    /// [default: <state-dir>/lighthouse.json, or the last run's]
    #[arg(long)]
    lighthouse: Option<String>,
    /// The etcd members, comma-separated https://host:port
    #[arg(long, value_name = "URLS")]
    etcd_endpoints: Option<String>,
    /// The CA certificate that signed the etcd members' certificates (PEM)
    #[arg(long, value_name = "FILE")]
    etcd_ca_file: Option<String>,
    /// This host's etcd client certificate (PEM)
    #[arg(long, value_name = "FILE")]
    etcd_cert_file: Option<String>,
    /// This host's etcd client key (PEM)
    #[arg(long, value_name = "FILE")]
    etcd_key_file: Option<String>,
    /// Seconds this host's entries outlive it after its last keepalive to etcd [default: 10]
    #[arg(long, value_name = "SECS")]
    lease_ttl: Option<String>,
    /// The network CA's certificate, which every host's certificate must be signed by (etcd)
    #[arg(long, value_name = "FILE")]
    network_ca_file: Option<String>,
    /// This host's certificate from `flatnet-cert sign`: its name, key and blocks (etcd)
    #[arg(long, value_name = "FILE")]
    host_cert_file: Option<String>,
    /// UDP address to listen on, which is also the endpoint other hosts are told
    /// [default: 127.0.0.1:4800, or the last run's]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// After sending, poll this many µs for the answer before sleeping; 0 never polls
    /// (lowest CPU use, higher latency on virtual machines) [default: 50, or the last run's]
    #[arg(long)]
    poll_us: Option<u32>,
    /// Serve Prometheus metrics at GET /metrics on this loopback ip:port or unix:/path
    /// [default: off, or the last run's]
    #[arg(long)]
    metrics: Option<MetricsAddress>,
    /// Send a keepalive on every tunnel at least every SECS seconds and keep idle tunnels
    /// open, for peers behind NAT; 0 turns it off [default: off, or the last run's]
    #[arg(long, value_name = "SECS")]
    persistent_keepalive: Option<u32>,
    /// How containers of this host reach each other: `fast` (straight from one TUN device to
    /// the other, never leaving the host's memory) or `encrypted` (through the host's tunnel
    /// to itself, so every packet between containers is encrypted) [default: fast, or the
    /// last run's]
    #[arg(long, value_name = "fast|encrypted")]
    same_host: Option<SameHost>,
    /// Threads that seal packets for other hosts beside the packet thread, each flow always
    /// on the same one; 0: the packet thread seals them itself [default: one per CPU beyond
    /// two, at most 4, or the last run's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=dataplane::MAX_WORKERS as i64))]
    workers: Option<u8>,
}

impl Settings {
    /// Explicit flags, else what the last daemon of this state directory used, else defaults.
    fn resolve(self, state_dir: PathBuf) -> flatnet::Result<DaemonConfig> {
        let last = DaemonConfig::load(&state_dir).ok();
        let input = LighthouseInput {
            lighthouse: self.lighthouse,
            etcd_endpoints: self.etcd_endpoints,
            etcd_ca_file: self.etcd_ca_file,
            etcd_cert_file: self.etcd_cert_file,
            etcd_key_file: self.etcd_key_file,
            lease_ttl: self.lease_ttl,
            network_ca_file: self.network_ca_file,
            host_cert_file: self.host_cert_file,
        };
        let lighthouse = match (&input.lighthouse, &last) {
            (None, Some(last)) if !input.etcd_options_given() => last.lighthouse.clone(),
            _ => LighthouseSettings::from_input(&input, &state_dir.join("lighthouse.json"))?,
        };
        Ok(DaemonConfig {
            lighthouse,
            listen: self
                .listen
                .or_else(|| last.as_ref().map(|c| c.listen))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_TUNNEL_PORT))),
            poll_us: self
                .poll_us
                .or_else(|| last.as_ref().map(|c| c.poll_us))
                .unwrap_or(dataplane::DEFAULT_POLL_US),
            metrics: self
                .metrics
                .or_else(|| last.as_ref().and_then(|c| c.metrics.clone())),
            persistent_keepalive_s: match self.persistent_keepalive {
                Some(0) => None,
                Some(s) => Some(s),
                None => last.as_ref().and_then(|c| c.persistent_keepalive_s),
            },
            same_host: self
                .same_host
                .or_else(|| last.as_ref().map(|c| c.same_host))
                .unwrap_or_default(),
            workers: self
                .workers
                .map(usize::from)
                .or_else(|| last.as_ref().and_then(|c| c.workers)),
            state_dir,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            let config = settings.resolve(cli.state_dir);
            match (config, ready_fd.map(ready_file).transpose()) {
                (Ok(config), Ok(ready)) => dataplane::run(config, ready),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Cmd::Start { settings } => settings.resolve(cli.state_dir).and_then(|config| {
            control::ensure_running(&DaemonSettings {
                state_dir: config.state_dir,
                lighthouse: config.lighthouse,
                listen: config.listen,
                poll_us: Some(config.poll_us),
                metrics: config.metrics,
                persistent_keepalive_s: Some(config.persistent_keepalive_s.unwrap_or(0)),
                same_host: Some(config.same_host),
                workers: config.workers,
            })
        }),
        Cmd::Stop => match control::is_running(&cli.state_dir) {
            true => control::call(&cli.state_dir, &Request::Shutdown).map(drop),
            false => Ok(()),
        },
        Cmd::Status { json } => status::show(&cli.state_dir, json),
        Cmd::Key => print_key(&cli.state_dir),
        Cmd::Check(args) => return check::run(&cli.state_dir, &args),
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

fn print_key(state_dir: &Path) -> flatnet::Result<()> {
    flatnet::state::create_private_dir(state_dir)?;
    let keys = flatnet::tunnel::StaticKeys::load_or_generate(&state_dir.join("host.key"))?;
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
