//! Rootless Podman for the end-to-end tests: Podman 5 in the trixie chroot run by the users
//! `scripts/setup-rootless.sh` made (real uids with subordinate ranges), against a root
//! flatnetd that serves a user socket with the test's grants.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::leaked_state;
use crate::podman::{chroot_dir, in_chroot, IMAGE};

/// Where a user's Podman runs: Podman 5 (netavark) in the chroot, or the host's Podman 4.3
/// (CNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Chroot,
    Host,
}

impl Machine {
    fn command(self, program: &str) -> Command {
        match self {
            Machine::Chroot => in_chroot(program),
            Machine::Host => {
                let mut cmd = Command::new(program);
                cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
                cmd
            }
        }
    }

    /// A path of this machine as the test process sees it.
    pub fn path(self, inside: &str) -> PathBuf {
        match self {
            Machine::Chroot => chroot_dir().join(inside.trim_start_matches('/')),
            Machine::Host => PathBuf::from(inside),
        }
    }
}

/// A rootless user (made by scripts/setup-rootless.sh).
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub machine: Machine,
}

pub const ALICE: User = User {
    name: "flatnet-alice",
    uid: 2101,
    machine: Machine::Chroot,
};
pub const BOB: User = User {
    name: "flatnet-bob",
    uid: 2102,
    machine: Machine::Chroot,
};
/// Alice on the host, with its Podman 4.3 and CNI.
pub const HOST_ALICE: User = User {
    machine: Machine::Host,
    ..ALICE
};

impl User {
    /// `program` run as this user, with their runtime directory and home.
    pub fn command(&self, program: &str) -> Command {
        self.command_env(program, &[])
    }

    /// `program` run as this user with `env` besides their runtime directory and home.
    pub fn command_env(&self, program: &str, env: &[(&str, &str)]) -> Command {
        let home = format!("/home/{}", self.name);
        let mut cmd = self.machine.command("runuser");
        cmd.args(["-u", self.name, "--", "env", "-C", &home])
            .arg(format!("XDG_RUNTIME_DIR=/run/user/{}", self.uid))
            .arg(format!("HOME={home}"))
            .args(env.iter().map(|(key, value)| format!("{key}={value}")))
            .arg(program);
        cmd
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        self.podman_env(args, &[])
    }

    pub fn podman_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command_env("podman", env).args(args).output().unwrap()
    }

    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "{} podman {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A podman command that must fail: what it said on stderr.
    pub fn podman_refused(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            !out.status.success(),
            "{} podman {args:?} succeeded",
            self.name
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a detached container of the test image that sleeps, on `network`.
    pub fn run_detached(&self, name: &str, network: &str, extra: &[&str]) {
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "600"]);
        self.podman_ok(&args);
    }

    /// Removes every container and every network of this user's (what a test made).
    pub fn clean(&self) {
        let _ = self.podman(&["rm", "-f", "-a", "-t", "0"]);
        let networks = self.podman_ok(&["network", "ls", "--format", "{{.Name}}"]);
        for network in networks.lines().filter(|n| *n != "podman") {
            let _ = self.podman(&["network", "rm", "-f", network]);
        }
    }

    /// Writes a file the user owns, as the machine sees `path`.
    pub fn write_file(&self, path: &str, text: &str) {
        let file = self.machine.path(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        let home = self.machine.path(&format!("/home/{}", self.name));
        let mut dir = file.as_path();
        while dir.starts_with(&home) && dir != home {
            std::os::unix::fs::chown(dir, Some(self.uid), Some(self.uid)).unwrap();
            dir = dir.parent().unwrap();
        }
    }
}

/// A root flatnetd in the chroot serving a user socket, with grants the test writes.
pub struct RootDaemon {
    pub machine: Machine,
    /// The flatnetd binary, as the machine sees it.
    program: String,
    /// The state directory as the machine sees it.
    pub state_dir: String,
    /// The user socket as the chroot sees it.
    pub socket: String,
    grants: PathBuf,
}

impl RootDaemon {
    /// Starts a daemon in the chroot listening on `listen` (ip:port), with `grants`.
    pub fn start(name: &str, listen: &str, grants: &str) -> RootDaemon {
        Self::start_on(Machine::Chroot, name, listen, grants)
    }

    pub fn start_on(machine: Machine, name: &str, listen: &str, grants: &str) -> RootDaemon {
        Self::launch(machine, "flatnetd", name, listen, grants, &[])
    }

    /// Starts `program` (a flatnetd binary) on `machine` as [`RootDaemon::start_on`] does,
    /// with more flags.
    pub fn launch(
        machine: Machine,
        program: &str,
        name: &str,
        listen: &str,
        grants: &str,
        flags: &[&str],
    ) -> RootDaemon {
        let daemon = RootDaemon {
            machine,
            program: program.to_string(),
            state_dir: format!("/run/flatnet-{name}"),
            socket: format!("/var/lib/flatnet/{name}.sock"),
            grants: machine.path(&format!("/etc/flatnet/{name}.json")),
        };
        daemon.stop();
        let _ = std::fs::remove_dir_all(daemon.host_path(&daemon.state_dir));
        daemon.set_grants(grants);
        let listen = format!("--listen={listen}");
        let user_socket = format!("--user-socket={}", daemon.socket);
        let users = format!("--users=/etc/flatnet/{name}.json");
        let lighthouse = format!("--lighthouse={}/lighthouse.json", daemon.state_dir);
        let mut settings = vec![listen.as_str(), &user_socket, &users, &lighthouse];
        settings.extend_from_slice(flags);
        daemon.start_with(&settings, &[]);
        daemon
    }

    /// Starts the daemon again with its last settings (after it was stopped or killed):
    /// `flatnetd start` waits until the old one is gone and the new one serves.
    pub fn restart(&self) {
        self.start_with(&[], &[]);
    }

    /// Stops the daemon and starts it again with `flags` changed and `env` in its environment.
    pub fn restart_with(&self, flags: &[&str], env: &[(&str, &str)]) {
        self.stop();
        self.start_with(flags, env);
    }

    fn start_with(&self, settings: &[&str], env: &[(&str, &str)]) {
        let out = self
            .flatnetd()
            .envs(env.iter().copied())
            .arg("start")
            .args(settings)
            .output()
            .unwrap();
        assert!(out.status.success(), "flatnetd start: {out:?}");
    }

    /// The daemon's binary with its state directory.
    fn flatnetd(&self) -> Command {
        let mut command = self.machine.command(&self.program);
        command.args(["--state-dir", &self.state_dir]);
        command
    }

    pub fn set_grants(&self, grants: &str) {
        std::fs::create_dir_all(self.grants.parent().unwrap()).unwrap();
        std::fs::write(&self.grants, grants).unwrap();
    }

    /// A path of the daemon's machine as this process sees it.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.machine.path(inside)
    }

    /// The daemon's full status, as root sees it.
    pub fn status(&self) -> serde_json::Value {
        let out = self.flatnetd().args(["status", "--json"]).output().unwrap();
        assert!(out.status.success(), "flatnetd status: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).unwrap()
    }

    /// Leases, records, lighthouse entries and held namespaces left in the state directory.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        leaked_state(&self.host_path(&self.state_dir))
    }

    pub fn stop(&self) {
        let _ = self.flatnetd().arg("stop").output();
    }
}

impl Drop for RootDaemon {
    /// The users' containers go first, while the daemon can still take them away.
    fn drop(&mut self) {
        let users = [ALICE, BOB, HOST_ALICE];
        for user in users.iter().filter(|u| u.machine == self.machine) {
            user.clean();
        }
        self.stop();
        let _ = std::fs::remove_file(&self.grants);
        let _ = std::fs::remove_dir_all(self.host_path(&self.state_dir));
    }
}
