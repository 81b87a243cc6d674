//! The Debian package as an operator meets it. `scripts/install.sh` (run by `scripts/test.sh`)
//! builds it with `make deb` and installs it with `dpkg -i` on this Debian 12 host and in the
//! trixie chroot, so every Podman test runs the packaged binaries; these tests check the
//! package itself: its files, that Podman finds the packaged plugins and no others, and its
//! remove and purge in a throwaway copy (an overlay) of the chroot.

use flatnet_test_support::{needs_podman, needs_root};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flatnet_test_support::podman::{chroot_dir, Backend, Net};

fn deb() -> PathBuf {
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/debian/flatnet_{version}-1_{}.deb",
        arch.trim()
    ));
    assert!(
        path.is_file(),
        "{} missing: run make deb (scripts/install.sh does)",
        path.display()
    );
    path
}

fn ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the package must hold (paths and modes).
const FILES: &[(&str, &str)] = &[
    ("usr/bin/flatnetd", "-rwxr-xr-x"),
    ("usr/bin/flatnet-cert", "-rwxr-xr-x"),
    ("usr/lib/cni/flatnet-cni", "-rwxr-xr-x"),
    ("usr/libexec/netavark/flatnet", "-rwxr-xr-x"),
    ("lib/systemd/system/flatnetd.service", "-rw-r--r--"),
    ("etc/default/flatnetd", "-rw-r--r--"),
    ("usr/share/man/man7/flatnet.7.gz", "-rw-r--r--"),
    ("usr/share/man/man8/flatnet.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/flatnet-cni.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/flatnet-cert.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/flatnetd.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/flatnetd-check.8.gz", "-rw-r--r--"),
    (
        "usr/share/doc/flatnet/examples/flatnet.conflist",
        "-rw-r--r--",
    ),
];

#[test]
fn the_package_holds_binaries_pages_unit_and_example() {
    let deb = deb();
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: BTreeSet<(String, String)> = listing
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            Some((words.last()?.to_string(), words.first()?.to_string()))
        })
        .collect();
    for (path, mode) in FILES {
        assert!(
            files.contains(&(path.to_string(), mode.to_string())),
            "{path} ({mode}) missing from the package:\n{listing}"
        );
    }
    let unit = ok(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xO lib/systemd/system/flatnetd.service",
        deb.display()
    )));
    assert!(unit.contains("ExecStart=/usr/bin/flatnetd run"), "{unit}");
    let depends = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends"));
    assert!(
        depends.contains("nftables"),
        "published ports need nft: {depends}"
    );
}

#[test]
fn podman_finds_the_packaged_plugins_and_no_other_copy() {
    let _serial = needs_podman!();
    for path in [
        "/usr/bin/flatnetd",
        "/usr/lib/cni/flatnet-cni",
        "/usr/libexec/netavark/flatnet",
    ] {
        let owner = ok(Command::new("dpkg").args(["-S", path]));
        assert!(owner.starts_with("flatnet:"), "{path} belongs to {owner}");
        let in_chroot = ok(Command::new("chroot")
            .arg(chroot_dir())
            .args(["dpkg", "-S", path]));
        assert!(
            in_chroot.starts_with("flatnet:"),
            "chroot {path}: {in_chroot}"
        );
        // The kill points of the test builds (src/killpoint.rs) are not in what ships.
        let binary = std::fs::read(path).unwrap();
        assert!(
            !binary.windows(15).any(|w| w == b"FLATNET_KILL_AT"),
            "{path} carries the kill points"
        );
    }
    // Directories Podman searches before the package's: a stale copy there would win.
    for earlier in [
        "/usr/local/libexec/cni",
        "/usr/libexec/cni",
        "/usr/local/lib/cni",
    ] {
        assert!(
            !Path::new(earlier).join("flatnet-cni").exists(),
            "stale plugin in {earlier}"
        );
    }
    let netavark_local = chroot_dir().join("usr/local/libexec/netavark/flatnet");
    assert!(
        !netavark_local.exists(),
        "stale {}",
        netavark_local.display()
    );

    // The operator's only step: a conflist or `podman network create`; then two containers talk.
    for (backend, subnet) in [
        (Backend::Cni, "10.96.0.0/24"),
        (Backend::Netavark, "10.96.1.0/24"),
    ] {
        let net = Net::create(backend, "fn-packaged", subnet);
        let (a, b) = (net.container(1), net.container(2));
        net.run_detached(&a, &["--cap-add", "NET_RAW"]);
        net.run_detached(&b, &["--cap-add", "NET_RAW"]);
        let to = net.inspect_ip(&b).to_string();
        let out = net.exec_ok(&a, &["ping", "-c", "2", "-W", "2", &to]);
        assert!(out.contains("2 packets received"), "{backend:?}: {out}");
    }
}

/// A copy-on-write copy of the trixie chroot, unmounted and thrown away on drop.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            chroot_dir().display(),
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        let root = dir.path().join("root");
        ok(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&root));
        Scratch { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(self.root())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap()
    }

    fn dpkg(&self, args: &[&str]) -> String {
        let mut full = vec!["dpkg"];
        full.extend_from_slice(args);
        let out = self.run(&full);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dpkg {args:?}: {text}");
        text
    }

    fn installed(&self) -> bool {
        let out = self.run(&["dpkg-query", "-W", "-f=${Status}", "flatnet"]);
        String::from_utf8_lossy(&out.stdout).contains("install ok installed")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root()).status();
    }
}

#[test]
fn remove_keeps_the_users_config_and_purge_keeps_state_a_container_uses() {
    needs_root!();
    assert!(
        chroot_dir().join("usr/bin").is_dir(),
        "no chroot: run scripts/setup-chroot.sh"
    );
    let deb = deb();
    let scratch = Scratch::new();
    std::fs::copy(&deb, scratch.path("/tmp/flatnet.deb")).unwrap();
    if scratch.installed() {
        scratch.dpkg(&["--purge", "flatnet"]);
    }

    // Install: working binaries where Podman looks.
    scratch.dpkg(&["-i", "/tmp/flatnet.deb"]);
    for binary in [
        "/usr/bin/flatnetd",
        "/usr/lib/cni/flatnet-cni",
        "/usr/libexec/netavark/flatnet",
    ] {
        let out = scratch.run(&[binary, "--version"]);
        assert!(
            out.status.success(),
            "{binary} --version in a fresh install"
        );
    }
    let listed = scratch.dpkg(&["-L", "flatnet"]);
    for (path, _) in FILES {
        assert!(
            listed.lines().any(|l| *l == format!("/{path}")),
            "dpkg -L lacks {path}"
        );
    }

    // Remove: the binaries go; the user's network and their edit of the defaults stay.
    let user_conflist = scratch.path("/etc/cni/net.d/mine.conflist");
    std::fs::create_dir_all(user_conflist.parent().unwrap()).unwrap();
    std::fs::write(&user_conflist, "{}").unwrap();
    std::fs::write(
        scratch.path("/etc/default/flatnetd"),
        "FLATNETD_OPTS=\"--metrics 127.0.0.1:9808\"\n",
    )
    .unwrap();
    scratch.dpkg(&["-r", "flatnet"]);
    for gone in [
        "/usr/bin/flatnetd",
        "/usr/lib/cni/flatnet-cni",
        "/usr/libexec/netavark/flatnet",
        "/lib/systemd/system/flatnetd.service",
    ] {
        assert!(!scratch.path(gone).exists(), "{gone} survived dpkg -r");
    }
    assert!(user_conflist.exists(), "dpkg -r took the user's network");
    let defaults = std::fs::read_to_string(scratch.path("/etc/default/flatnetd")).unwrap();
    assert!(
        defaults.contains("9808"),
        "dpkg -r took the user's settings"
    );

    // Purge with a container still attached: the state stays, and dpkg says why.
    scratch.dpkg(&["-i", "/tmp/flatnet.deb"]);
    let attachments = scratch.path("/run/flatnet/networks/n/attachments");
    std::fs::create_dir_all(&attachments).unwrap();
    std::fs::write(attachments.join("c1.json"), "{}").unwrap();
    let said = scratch.dpkg(&["--purge", "flatnet"]);
    assert!(
        said.contains("keeping /run/flatnet: 1 container(s) still attached"),
        "{said}"
    );
    assert!(attachments.join("c1.json").exists());
    assert!(user_conflist.exists(), "purge took the user's network");

    // Purge while a daemon holds the state: kept too.
    scratch.dpkg(&["-i", "/tmp/flatnet.deb"]);
    std::fs::remove_file(attachments.join("c1.json")).unwrap();
    let lock =
        flatnet::state::FileLock::acquire(&scratch.path("/run/flatnet/flatnetd.lock")).unwrap();
    let said = scratch.dpkg(&["--purge", "flatnet"]);
    assert!(said.contains("a flatnetd still serves it"), "{said}");
    drop(lock);

    // Nothing uses it: purge removes the state.
    scratch.dpkg(&["-i", "/tmp/flatnet.deb"]);
    scratch.dpkg(&["--purge", "flatnet"]);
    assert!(
        !scratch.path("/run/flatnet").exists(),
        "purge left /run/flatnet"
    );
    assert!(
        !scratch.path("/etc/default/flatnetd").exists(),
        "purge left the conffile"
    );
}

/// Every regular file under `root`, relative to it.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    found
}

#[test]
fn make_install_stages_into_destdir_and_uninstall_leaves_only_the_users_network() {
    let stage = tempfile::tempdir().unwrap();
    let destdir = format!("DESTDIR={}", stage.path().display());
    let conflist = stage.path().join("etc/cni/net.d/flatnet.conflist");
    std::fs::create_dir_all(conflist.parent().unwrap()).unwrap();
    std::fs::write(&conflist, "the user's own").unwrap();
    // `-o build`: the binaries are this test run's; make must not run cargo inside cargo.
    let make = |target: &str| {
        ok(Command::new("make")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "-s",
                "-o",
                "build",
                target,
                &destdir,
                "PREFIX=/usr",
                "SYSTEMD=yes",
            ]))
    };
    let said = make("install");
    assert!(said.contains("keeping"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&conflist).unwrap(),
        "the user's own"
    );
    let installed = files_under(stage.path());
    for path in [
        "usr/bin/flatnetd",
        "usr/bin/flatnet-cert",
        "usr/lib/cni/flatnet-cni",
        "usr/libexec/netavark/flatnet",
        "usr/lib/systemd/system/flatnetd.service",
        "usr/share/man/man7/flatnet.7.gz",
        "usr/share/man/man8/flatnetd-check.8.gz",
        "usr/share/man/man8/flatnet-cert.8.gz",
        "usr/share/doc/flatnet/examples/flatnet.conflist",
    ] {
        assert!(
            installed.contains(path),
            "make install did not stage {path}: {installed:?}"
        );
    }
    make("uninstall");
    let left = files_under(stage.path());
    assert_eq!(
        left,
        BTreeSet::from(["etc/cni/net.d/flatnet.conflist".to_string()]),
        "make uninstall left more than the user's network"
    );
}
