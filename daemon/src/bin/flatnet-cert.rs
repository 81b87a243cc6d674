//! `flatnet-cert`: the network CA's tool, in the spirit of nebula-cert. Run it where the CA key
//! lives (not on the hosts): `ca` makes the CA, `sign` grants a host's key its address blocks
//! on the networks it names, `print` and `verify` read a certificate.

#[path = "../man_pages.rs"]
mod man_pages;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use flatnet::cert::{self, CaCert, CaKey, Grant, HostCert, NetworkRegistry, RevocationList};
use ipnet::IpNet;

#[derive(Parser)]
#[command(
    name = "flatnet-cert",
    version,
    about = "Flatnet's network CA: grants each host's key the address blocks it may serve, \
             on the networks it names",
    long_about = "A Flatnet network on etcd trusts a lighthouse entry only if the certificate \
                  of the host that published it was signed by the network's CA, names the \
                  entry's key, grants the entry's address and names the entry's network with \
                  the identifier the CA allotted it. Keep the CA's directory off the hosts; \
                  give each host the CA's ca.crt and its own certificate."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a CA: DIR/ca.key (secret, 0600) and DIR/ca.crt (for every host).
    Ca {
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The CA this one replaces: its network identifiers and its record of issued
        /// certificates carry over, so networks keep their identifiers and blocks stay disjoint.
        #[arg(long, value_name = "OLD_DIR")]
        replacing: Option<PathBuf>,
    },
    /// Write the trust bundle for a CA rotation: every CA certificate given, as one file to
    /// install as each host's network CA file (names must differ).
    Bundle {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(required = true, value_name = "CA_CRT")]
        cas: Vec<PathBuf>,
    },
    /// Grant a host's key address blocks on networks; refuses blocks that overlap another
    /// host's.
    #[command(group = clap::ArgGroup::new("served").required(true).multiple(true))]
    Sign {
        /// The CA's directory (ca.key, ca.crt, and issued/ with every certificate signed).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The host's name (also its etcd user).
        #[arg(long)]
        name: String,
        /// The host's public key, as `flatnetd key` prints it on that host.
        #[arg(long)]
        public_key: String,
        /// An IPv4 or IPv6 block the host may serve (repeat for more).
        #[arg(long = "block", value_name = "CIDR", required = true)]
        blocks: Vec<IpNet>,
        /// A network the host may serve (repeat for more); the CA allots its identifier once,
        /// in DIR/networks.json.
        #[arg(long = "network", value_name = "NAME", group = "served")]
        networks: Vec<String>,
        /// Let the host serve every network, besides those named: weaker (a network it is not
        /// meant for believes it), so only when asked for.
        #[arg(long, group = "served")]
        any_network: bool,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Seconds the certificate is valid, instead of --days (short-lived certificates).
        #[arg(long, value_name = "SECONDS", conflicts_with = "days")]
        valid_seconds: Option<u64>,
        /// Where to write it [default: DIR/issued/NAME.crt]
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a host's key: sign a new revocation list, DIR/revocations.json, to publish
    /// (etcdctl put /flatnet/v1/revocations/CA_NAME "$(cat DIR/revocations.json)").
    #[command(group = clap::ArgGroup::new("whom").required(true))]
    Revoke {
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The host whose current certificate's key is revoked.
        #[arg(long, group = "whom")]
        name: Option<String>,
        /// A host key to revoke.
        #[arg(long, group = "whom")]
        public_key: Option<String>,
    },
    /// Show a certificate.
    Print { cert: PathBuf },
    /// Check a host certificate against a CA certificate; exit 1 if it is not valid now.
    Verify {
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        cert: PathBuf,
    },
    /// Write the manual page (roff) into a directory and exit.
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

const SEE_ALSO: &str = "\n.SH \"SEE ALSO\"\n\\fBflatnetd\\fR(8), \\fBflatnet\\fR(7); \
                        docs/security.md and docs/operation.md (\"On etcd\")\n";

/// flatnet-cert(8) and a page for each subcommand, from the definitions above.
fn write_manual(dir: &Path) -> flatnet::Result<()> {
    man_pages::write_pages(dir, Cli::command(), SEE_ALSO, SEE_ALSO)
        .map_err(flatnet::Error::InvalidRequest)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Ca {
            name,
            out_dir,
            replacing,
        } => make_ca(&name, &out_dir, replacing.as_deref()),
        Cmd::Bundle { out, cas } => bundle(&out, &cas),
        Cmd::Sign {
            ca_dir,
            name,
            public_key,
            blocks,
            networks,
            any_network,
            days,
            valid_seconds,
            out,
        } => {
            let request = SignRequest {
                name,
                public_key,
                blocks,
                networks,
                any_network,
                valid_for: valid_seconds.unwrap_or(days * 86_400),
            };
            sign(&ca_dir, request, out)
        }
        Cmd::Revoke {
            ca_dir,
            name,
            public_key,
        } => revoke_host(&ca_dir, name.as_deref(), public_key),
        Cmd::Print { cert } => cert::load::<serde_json::Value>(&cert).map(|value| {
            println!("{}", serde_json::to_string_pretty(&value).unwrap());
        }),
        Cmd::Verify { ca, cert } => verify(&ca, &cert),
        Cmd::GenerateMan { dir } => write_manual(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flatnet-cert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make_ca(name: &str, dir: &Path, replacing: Option<&Path>) -> flatnet::Result<()> {
    let (key, cert) = CaKey::generate(name)?;
    if let Some(old) = replacing {
        let old_ca: CaCert = cert::load(&old.join("ca.crt"))?;
        if old_ca.name == name {
            return Err(flatnet::Error::InvalidRequest(format!(
                "the new CA needs a name other than {name:?}: hosts trust both for a while"
            )));
        }
    }
    flatnet::state::create_private_dir(dir)?;
    let key_path = dir.join("ca.key");
    let written = flatnet::state::create_exclusive(&key_path, &to_json(&key))?;
    if !written {
        return Err(flatnet::Error::InvalidRequest(format!(
            "{} exists: a CA is made once",
            key_path.display()
        )));
    }
    write_public(&dir.join("ca.crt"), &to_json(&cert))?;
    if let Some(old) = replacing {
        carry_over(old, dir)?;
    }
    println!("{}", dir.join("ca.crt").display());
    Ok(())
}

/// What a replacing CA takes from the old one: network identifiers and issued certificates.
fn carry_over(old: &Path, new: &Path) -> flatnet::Result<()> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| flatnet::Error::InvalidConfig(format!("{path}: {e}"))
    };
    let registry = old.join("networks.json");
    if registry.exists() {
        std::fs::copy(&registry, new.join("networks.json")).map_err(io(&registry))?;
    }
    let issued = new.join("issued");
    flatnet::state::create_private_dir(&issued)?;
    if let Ok(entries) = std::fs::read_dir(old.join("issued")) {
        for entry in entries.flatten() {
            std::fs::copy(entry.path(), issued.join(entry.file_name()))
                .map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

fn bundle(out: &Path, cas: &[PathBuf]) -> flatnet::Result<()> {
    let cas = cas
        .iter()
        .map(|path| cert::load::<CaCert>(path))
        .collect::<flatnet::Result<Vec<_>>>()?;
    let bundle = cert::TrustBundle::new(cas)?;
    write_public(out, &to_json(&bundle.cas()))?;
    println!("{}", out.display());
    Ok(())
}

struct SignRequest {
    name: String,
    public_key: String,
    blocks: Vec<IpNet>,
    networks: Vec<String>,
    any_network: bool,
    /// Seconds from now.
    valid_for: u64,
}

fn sign(dir: &Path, request: SignRequest, out: Option<PathBuf>) -> flatnet::Result<()> {
    let key: CaKey = cert::load(&dir.join("ca.key"))?;
    let issued = dir.join("issued");
    flatnet::state::create_private_dir(&issued)?;
    let name = request.name.as_str();
    refuse_overlaps(&issued, name, &request.blocks)?;
    let previous = cert::load::<HostCert>(&issued.join(format!("{name}.crt"))).ok();
    let grant = Grant {
        blocks: request.blocks,
        networks: allot_networks(dir, &request.networks)?,
        any_network: request.any_network,
        not_after: cert::now_unix() + request.valid_for,
    };
    let host = key.sign(name, &request.public_key, grant)?;
    // A host with a new key: its old certificate must not stay valid beside the new one.
    if let Some(old) = previous.filter(|old| old.public_key != host.public_key) {
        let list = revoke(dir, &key, &old.public_key)?;
        eprintln!(
            "{name} had key {}: revoked (list {}); publish {}",
            old.public_key,
            list.serial,
            dir.join("revocations.json").display()
        );
    }
    let bytes = to_json(&host);
    // The CA's record of what it granted, against which later grants are checked.
    flatnet::state::write_atomic(&issued.join(format!("{name}.crt")), &bytes)?;
    let out = out.unwrap_or_else(|| issued.join(format!("{name}.crt")));
    write_public(&out, &bytes)?;
    println!("{}", out.display());
    Ok(())
}

fn revoke_host(dir: &Path, name: Option<&str>, public_key: Option<String>) -> flatnet::Result<()> {
    let key: CaKey = cert::load(&dir.join("ca.key"))?;
    let public_key = match (name, public_key) {
        (_, Some(public_key)) => public_key,
        (Some(name), None) => {
            cert::load::<HostCert>(&dir.join("issued").join(format!("{name}.crt")))?.public_key
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let list = revoke(dir, &key, &public_key)?;
    println!(
        "{} (serial {}, {} keys revoked)",
        dir.join("revocations.json").display(),
        list.serial,
        list.revoked.len()
    );
    Ok(())
}

/// Adds `public_key` to the CA's revocation list and signs it anew under the next serial.
fn revoke(dir: &Path, key: &CaKey, public_key: &str) -> flatnet::Result<RevocationList> {
    if flatnet::tunnel::decode_key(public_key).is_none() {
        return Err(flatnet::Error::InvalidRequest(format!(
            "{public_key:?} is not a host's public key"
        )));
    }
    let path = dir.join("revocations.json");
    let (serial, mut revoked) = match cert::load::<RevocationList>(&path) {
        Ok(list) => (list.serial, list.revoked),
        Err(_) if !path.exists() => (0, Vec::new()),
        Err(e) => return Err(e),
    };
    revoked.push(public_key.to_string());
    let list = key.sign_revocations(serial + 1, revoked)?;
    write_public(&path, &to_json(&list))?;
    Ok(list)
}

/// The identifiers of `names`, from the CA's registry (new names are allotted and recorded):
/// every certificate gives a network the same identifier, and no two networks one.
fn allot_networks(dir: &Path, names: &[String]) -> flatnet::Result<Vec<cert::CertNetwork>> {
    let path = dir.join("networks.json");
    let mut registry: NetworkRegistry = if path.exists() {
        cert::load(&path)?
    } else {
        NetworkRegistry::default()
    };
    let networks = names
        .iter()
        .map(|name| registry.allot(name))
        .collect::<flatnet::Result<Vec<_>>>()?;
    flatnet::state::write_atomic(&path, &to_json(&registry))?;
    Ok(networks)
}

/// Two hosts granted one address would both be believed: never sign that.
fn refuse_overlaps(issued: &Path, name: &str, blocks: &[IpNet]) -> flatnet::Result<()> {
    let entries = std::fs::read_dir(issued)
        .map_err(|e| flatnet::Error::InvalidConfig(format!("{}: {e}", issued.display())))?;
    for entry in entries.flatten() {
        let Ok(other) = cert::load::<HostCert>(&entry.path()) else {
            continue;
        };
        if other.name == name || cert::now_unix() > other.not_after {
            continue;
        }
        for block in blocks {
            if let Some(taken) = other.blocks.iter().find(|b| overlap(b, block)) {
                return Err(flatnet::Error::InvalidRequest(format!(
                    "{block} overlaps {taken}, granted to {}",
                    other.name
                )));
            }
        }
    }
    Ok(())
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn verify(ca: &Path, host: &Path) -> flatnet::Result<()> {
    let trust = cert::TrustBundle::load(ca)?;
    let host: HostCert = cert::load(host)?;
    trust
        .verify(&host, cert::now_unix())
        .map_err(|e| flatnet::Error::InvalidConfig(format!("{}: {e}", host.name)))?;
    let blocks: Vec<String> = host.blocks.iter().map(ToString::to_string).collect();
    let mut networks: Vec<String> = host.networks.iter().map(|n| n.name.clone()).collect();
    if host.any_network {
        networks.push("any network".into());
    }
    println!(
        "{}: valid, {} on {}",
        host.name,
        blocks.join(", "),
        networks.join(", ")
    );
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("certificates serialise");
    bytes.push(b'\n');
    bytes
}

/// Certificates are public: 0644.
fn write_public(path: &Path, bytes: &[u8]) -> flatnet::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    flatnet::state::write_atomic(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| flatnet::Error::InvalidConfig(format!("{}: {e}", path.display())))
}
