//! Helpers shared by the integration tests of every workspace package (a dev-dependency of
//! each). Tests that need root skip outside CI and fail inside it: CI runs as root, so a skip
//! there would hide a broken test. [`needs_root!`] and [`needs_podman!`] are the preambles.

pub mod podman;
pub mod rootless;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The first line of a test that needs root: returns from it (outside CI) unless it runs as
/// root.
#[macro_export]
macro_rules! needs_root {
    () => {
        if !$crate::root_or_skip(&$crate::current_test()) {
            return;
        }
    };
}

/// The first line of a test that needs Podman: `let _serial = needs_podman!();` holds the
/// Podman tests' lock for the rest of the test, or returns from it (outside CI).
#[macro_export]
macro_rules! needs_podman {
    () => {
        match $crate::podman::e2e_enabled(&$crate::current_test()) {
            Some(serial) => serial,
            None => return,
        }
    };
}

/// The running test's name: libtest names the thread of each test after it.
pub fn current_test() -> String {
    let thread = std::thread::current();
    thread.name().unwrap_or("this test").to_string()
}

/// True when the test may go on as root. Outside CI a non-root run skips with a message.
pub fn root_or_skip(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI runs as root: refusing to skip");
    }
    eprintln!("skipping {test}: needs root");
    false
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct TestNetns {
    pub name: String,
    pub path: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestNetns {
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("fnt-{prefix}-{}-{n}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        TestNetns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// `ip -n <ns> <args>`, stdout as text.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    pub fn has_link(&self, ifname: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", ifname])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Deletes the namespace now (a container that died before its DEL).
    pub fn delete(&self) {
        if self.path.exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        self.delete();
    }
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a plugin binary with environment, arguments and stdin.
pub fn run_plugin(bin: &str, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // A plugin may exit before reading its input (bad arguments): that is not the test's error.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
        _ => {}
    }
    child.wait_with_output().unwrap()
}

pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?} / stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Files under `dir` (recursively) whose names are addresses, attachment records or held
/// namespaces: what a
/// leak would leave. Lock files and the round-robin cursor are bookkeeping, not leaks.
pub fn leaked_state(state_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(state_dir, &mut found);
    found.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        let in_attachments = p.parent().is_some_and(|d| d.ends_with("attachments"));
        // A rootless container's namespace, held by flatnetd.
        let pinned = p.components().any(|c| c.as_os_str() == "user-netns");
        name.parse::<std::net::IpAddr>().is_ok() || in_attachments || pinned
    });
    found.extend(lighthouse_entries(state_dir).into_iter().map(PathBuf::from));
    found
}

/// "network/ip" for every entry of the file lighthouse in `state_dir`.
pub fn lighthouse_entries(state_dir: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(state_dir.join("lighthouse.json")) else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut entries = Vec::new();
    for (net, ips) in doc["networks"].as_object().unwrap() {
        for ip in ips.as_object().unwrap().keys() {
            entries.push(format!("lighthouse:{net}/{ip}"));
        }
    }
    entries
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, found);
        } else {
            found.push(path);
        }
    }
}

/// A fresh state directory for one test, with a UDP port of its own for the data plane the
/// plugins start in it, and a host namespace of its own for the plugins to run in (the host
/// member, its routes and the nft table land there, not in the machine's own namespace).
/// Dropping it stops that daemon (by its control socket) and deletes the namespace.
pub struct TestState {
    dir: tempfile::TempDir,
    pub port: u16,
    pub host: TestNetns,
}

static PORTS: AtomicUsize = AtomicUsize::new(0);

impl TestState {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a plugin binary in this test's host namespace, as a runtime on that host would.
    pub fn plugin(&self, bin: &str, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
        let mut full = vec!["netns", "exec", &self.host.name, bin];
        full.extend_from_slice(args);
        run_plugin("ip", &full, env, stdin)
    }

    /// Host members and Flatnet nft tables left in this test's host namespace.
    /// Asserts that the test left nothing: no state file (lease, record, lock holder) and no
    /// interface or nftables table of its own on the host.
    pub fn assert_nothing_left(&self) {
        assert_eq!(leaked_state(self.path()), Vec::<PathBuf>::new());
        assert_eq!(self.host_leftovers(), Vec::<String>::new());
    }

    pub fn host_leftovers(&self) -> Vec<String> {
        host_leftovers(&["ip", "netns", "exec", &self.host.name])
    }

    pub fn state_dir(&self) -> flatnet::state::StateDir {
        flatnet::state::StateDir::new(self.path())
    }

    pub fn stop_daemon(&self) {
        use flatnet::control::{self, DataPlaneRequest};
        let state = self.state_dir();
        if control::is_running(&state) {
            let _ = control::request(&state, &DataPlaneRequest::Shutdown.into());
        }
    }
}

impl Drop for TestState {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

pub fn state_dir(test: &str) -> TestState {
    let dir = tempfile::Builder::new()
        .prefix(&format!("flatnet-{test}-"))
        .tempdir()
        .unwrap();
    // Distinct per process and per test, clear of the defaults (4800, 4801).
    let n = PORTS.fetch_add(1, Ordering::Relaxed);
    let port = 20000 + (std::process::id() % 400) as u16 * 100 + n as u16 % 100;
    let host = TestNetns::new("h");
    host.ip(&["link", "set", "lo", "up"]);
    TestState { dir, port, host }
}

/// Host-member interfaces (`fn-*`) and Flatnet nft tables (`inet flatnet-*`) visible to a
/// command run with `prefix` (empty: this process's namespace).
pub fn host_leftovers(prefix: &[&str]) -> Vec<String> {
    let run = |args: &[&str]| {
        let full: Vec<&str> = prefix.iter().chain(args).copied().collect();
        run_ok(full[0], &full[1..])
    };
    let links = run(&["ip", "-o", "link", "show"]);
    let tables = run(&["nft", "list", "tables"]);
    links
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(str::trim))
        .filter(|name| name.starts_with("fn-"))
        .map(|name| format!("interface {name}"))
        .chain(
            tables
                .lines()
                .filter(|l| l.contains("flatnet-"))
                .map(str::to_string),
        )
        .collect()
}

/// Runs a program with stdin open and never written, as a person at a terminal would leave it:
/// a `--help` that read stdin would hang here, so it fails after 10 s instead.
pub fn run_with_open_stdin(binary: &str, args: &[&str]) -> Output {
    let mut child = Command::new(binary)
        .args(args)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} waited on stdin");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

/// The manual page `page` (e.g. `flatnet.8`) that `binary --generate-man DIR` writes, read back.
pub fn generated_manual(binary: &str, page: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_open_stdin(binary, &["--generate-man", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.path().join(page)).unwrap()
}

/// Asserts that a manual page sets each of `terms` in bold, as it documents a key or option.
pub fn assert_documented(page: &str, terms: &[&str]) {
    for term in terms {
        assert!(
            page.contains(&format!("\\fB{term}\\fR")),
            "{term} is not documented"
        );
    }
}

/// A size a long run takes from the environment (`make` targets set it), else `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `ready` (a readiness check: a file appears, a port answers) until it holds; fails the
/// test after `limit`.
pub fn wait_until(limit: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "not ready after {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    /// A skipped test's message names it: the name comes from the test's own thread.
    #[test]
    fn the_current_test_is_named_after_its_function() {
        let name = super::current_test();
        assert!(
            name.ends_with("the_current_test_is_named_after_its_function"),
            "{name}"
        );
    }
}
