//! `flatnet-cni`: Flatnet as a CNI plugin. Reads the command from the environment and the
//! network config from stdin, translates them into the core's attach / detach / check, and
//! prints the CNI result or error object.

mod cli;
mod rootless;

use std::env;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flatnet::users::is_rootless;
use flatnet::{AttachRequest, Network};
use flatnet_cni::protocol::{self, code, CniArgs, CniError, NetConf};
use serde_json::Value;

fn main() -> ExitCode {
    if cli::answer_person() {
        return ExitCode::SUCCESS;
    }
    // A runtime always sets CNI_COMMAND; without it this is a person, who gets the "about"
    // line the CNI library's plugins print, rather than a plugin waiting on stdin.
    if env::var_os("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        eprintln!("{}", cli::about());
        return ExitCode::SUCCESS;
    }
    flatnet::logging::init_plugin();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(
            "1.1.0",
            CniError::new(code::IO_FAILURE, format!("reading stdin: {e}")),
        );
    }
    let version = reply_version(&stdin);
    match run(&stdin) {
        Ok(Some(output)) => print_json(&output),
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => fail(&version, err),
    }
}

/// Dispatches on CNI_COMMAND. Returns what to print on success, if anything.
fn run(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = required_env("CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(protocol::version_result(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    if is_rootless() {
        return rootless::run(&command, &conf);
    }
    let network = Network::open(conf.flatnet_config()?);
    match command.as_str() {
        "ADD" => add(&conf, &network).map(Some),
        "DEL" => del(&network).map(|()| None),
        "CHECK" => check(&conf, &network).map(|()| None),
        "STATUS" => status(&network).map(|()| None),
        "GC" => gc(&conf, &network).map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    }
}

fn add(conf: &NetConf, network: &Network) -> Result<Value, CniError> {
    flatnet::killpoint::here("cni.add");
    let container_id = required_env("CNI_CONTAINERID")?;
    let netns = required_env("CNI_NETNS")?;
    let ifname = required_env("CNI_IFNAME")?;
    let args = CniArgs::parse(&env::var("CNI_ARGS").unwrap_or_default())?;
    let names: Vec<String> = args.name.into_iter().chain(conf.aliases()).collect();
    let attachment = network.attach(&AttachRequest {
        container_id: &container_id,
        netns: Path::new(&netns),
        ifname: &ifname,
        static_ips: &args.ips,
        names: &names,
        ports: &conf.port_mappings()?,
        owner: None,
    })?;
    let ours = protocol::add_result(&conf.cni_version, &attachment, &netns);
    Ok(protocol::chain_result(ours, conf.prev_result.as_ref()))
}

/// DEL must succeed whatever is already gone: the namespace (CNI_NETNS may be empty), the
/// interface, the lease, or the result of an ADD that failed.
fn del(network: &Network) -> Result<(), CniError> {
    flatnet::killpoint::here("cni.del");
    let container_id = required_env("CNI_CONTAINERID")?;
    let ifname = required_env("CNI_IFNAME")?;
    let netns = env::var_os("CNI_NETNS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    network.detach(&container_id, netns.as_deref(), &ifname)?;
    Ok(())
}

fn check(conf: &NetConf, network: &Network) -> Result<(), CniError> {
    let container_id = required_env("CNI_CONTAINERID")?;
    let netns = required_env("CNI_NETNS")?;
    let ifname = required_env("CNI_IFNAME")?;
    let attachment = network.check(&container_id, Path::new(&netns), &ifname)?;
    match &conf.prev_result {
        Some(prev) => attachment.addresses.iter().try_for_each(|address| {
            protocol::check_prev_result(prev, &ifname, &address.to_string())
        }),
        None => Ok(()),
    }
}

/// STATUS: ready when an ADD could be served: state readable and writable, daemon binary,
/// TUN, lighthouse and host key usable. Nothing is made. Not ready is code 50, or 51 when the
/// containers already attached have no data plane either.
fn status(network: &Network) -> Result<(), CniError> {
    network.readiness().map_err(|e| {
        let code = match network.containers_cut_off() {
            true => code::NOT_AVAILABLE_CONTAINERS_AFFECTED,
            false => code::NOT_AVAILABLE,
        };
        CniError::new(code, e.to_string())
    })
}

/// GC: everything of the network not in `cni.dev/valid-attachments` is stale. The spec makes
/// the list required; without it nothing is known to be stale, so nothing is removed.
fn gc(conf: &NetConf, network: &Network) -> Result<(), CniError> {
    let Some(valid) = conf.valid_attachments.as_deref() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (the attachments still in use); refusing to guess",
        ));
    };
    let keep: Vec<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    network.collect_garbage(&keep)?;
    Ok(())
}

pub(crate) fn required_env(name: &str) -> Result<String, CniError> {
    match env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!("environment variable {name} is missing or empty"),
        )),
    }
}

/// Errors are written in the version the config asked for when it is one we speak.
fn reply_version(stdin: &[u8]) -> String {
    protocol::version_result(stdin)["cniVersion"]
        .as_str()
        .unwrap_or("1.1.0")
        .to_string()
}

fn print_json(value: &Value) -> ExitCode {
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, value).is_ok() && writeln!(out).is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(version: &str, err: CniError) -> ExitCode {
    print_json(&err.to_json(version));
    ExitCode::FAILURE
}
