//! A real etcd cluster for the multi-host tests: Debian's etcd 3.4, its members in the wire
//! namespace on addresses of the underlay bridge (192.0.2.201...), TLS everywhere with client
//! certificates from a CA the test makes with openssl, and authentication on: each host is the
//! etcd user its certificate names, with the role `docs/security.md` gives it (write under its
//! own prefix, read the rest). Members can be killed and started
//! again on their data; every process is stopped by its PID when the cluster is dropped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flatnet_test_support::TestNetns;

/// Short, so that a dead host's entries go within seconds in the tests.
pub const LEASE_TTL_S: u32 = 5;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

pub struct Etcd {
    wire: String,
    certs: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    name: String,
    ip: Ipv4Addr,
    /// On tmpfs: etcd syncs every write, which costs seconds on a slow disk.
    data: tempfile::TempDir,
    process: Option<Child>,
}

/// A client certificate and its key, for one host (its common name is `host-<i>`).
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Etcd {
    pub fn start(wire: &TestNetns, members: usize) -> Etcd {
        let ips: Vec<Ipv4Addr> = (0..members)
            .map(|i| Ipv4Addr::new(192, 0, 2, 201 + i as u8))
            .collect();
        for ip in &ips {
            wire.ip(&["addr", "add", &format!("{ip}/24"), "dev", "br0"]);
        }
        // Members talk to each other through the namespace's local routes.
        wire.ip(&["link", "set", "lo", "up"]);
        let certs = tempfile::Builder::new()
            .prefix("flatnet-etcd-pki-")
            .tempdir()
            .unwrap();
        make_ca(certs.path());
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        issue(
            certs.path(),
            "member",
            "etcd-member",
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n",
                sans.join(",")
            ),
        );
        let mut etcd = Etcd {
            wire: wire.name.clone(),
            certs,
            members: ips
                .iter()
                .enumerate()
                .map(|(i, ip)| Member {
                    name: format!("m{i}"),
                    ip: *ip,
                    data: tempfile::Builder::new()
                        .prefix("flatnet-etcd-")
                        .tempdir_in("/dev/shm")
                        .unwrap(),
                    process: None,
                })
                .collect(),
        };
        for i in 0..members {
            etcd.start_member(i);
        }
        etcd.wait_healthy(&(0..members).collect::<Vec<_>>());
        etcd.enable_auth();
        etcd
    }

    /// The administrator is `root`, by its certificate's common name.
    fn enable_auth(&self) {
        let password = format!("root:{:x}", rand_serial());
        self.admin(&["user", "add", &password]);
        // etcd 3.4 may or may not have given root its role already.
        let _ = self.etcdctl(&self.endpoints(), &["user", "grant-role", "root", "root"]);
        self.admin(&["auth", "enable"]);
    }

    /// etcdctl as root, which must succeed.
    fn admin(&self, args: &[&str]) {
        let out = self.etcdctl(&self.endpoints(), args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Host `host`'s etcd user and role: its own prefix and its part of each of `networks`
    /// to write, everything of Flatnet to read.
    fn add_host_user(&self, name: &str, networks: &[&str]) {
        let mut grants = vec![
            ("readwrite", format!("/flatnet/v1/hosts/{name}/")),
            ("read", "/flatnet/v1/".to_string()),
        ];
        for network in networks {
            grants.push((
                "readwrite",
                format!("/flatnet/v1/entries/{network}/{name}/"),
            ));
        }
        self.admin(&["role", "add", name]);
        for (permission, prefix) in &grants {
            self.admin(&[
                "role",
                "grant-permission",
                "--prefix",
                name,
                permission,
                prefix,
            ]);
        }
        // The password is never used: the client certificate names the user.
        let user = format!("{name}:{:x}", rand_serial());
        self.admin(&["user", "add", &user]);
        self.admin(&["user", "grant-role", name, name]);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("https://{}:{CLIENT_PORT}", m.ip))
            .collect()
    }

    /// The endpoints of the members running now.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.process.is_some())
            .map(|m| format!("https://{}:{CLIENT_PORT}", m.ip))
            .collect()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.certs.path().join("ca.pem")
    }

    /// Host `host`'s client certificate and etcd user, made on first use (without a network
    /// to write entries on: see [`Etcd::host_client`]).
    pub fn client(&self, host: usize) -> ClientCert {
        self.host_client(host, &[])
    }

    /// Host `host`'s client certificate and etcd user, made on first use with the right to
    /// write its entries on `networks`.
    pub fn host_client(&self, host: usize, networks: &[&str]) -> ClientCert {
        let name = format!("host-{host}");
        let (cert, made) = self.identity(&name);
        if made {
            self.add_host_user(&name, networks);
        }
        cert
    }

    /// A client certificate whose common name is `name` (the etcd user it logs in as, which
    /// the caller makes), made on first use.
    pub fn certificate(&self, name: &str) -> ClientCert {
        self.identity(name).0
    }

    /// The administrator's (`root`) client certificate.
    pub fn root(&self) -> ClientCert {
        self.certificate("root")
    }

    /// A client certificate whose common name is `name`, and whether it was made now.
    fn identity(&self, name: &str) -> (ClientCert, bool) {
        let cert = self.certs.path().join(format!("{name}.pem"));
        let made = !cert.exists();
        if made {
            issue(
                self.certs.path(),
                name,
                name,
                "extendedKeyUsage=clientAuth\n",
            );
        }
        let key = self.certs.path().join(format!("{name}.key"));
        (ClientCert { cert, key }, made)
    }

    /// SIGKILL, and reaped: the member is gone when this returns.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a member again on its data and waits until these members answer as healthy.
    pub fn restart_members(&mut self, members: &[usize]) {
        for &i in members {
            self.start_member(i);
        }
        let all: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].process.is_some())
            .collect();
        self.wait_healthy(&all);
    }

    fn start_member(&mut self, i: usize) {
        let pki = self.certs.path();
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=https://{}:{PEER_PORT}", m.name, m.ip))
            .collect();
        let member = &self.members[i];
        let client_url = format!("https://{}:{CLIENT_PORT}", member.ip);
        let peer_url = format!("https://{}:{PEER_PORT}", member.ip);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(member.data.path().join("etcd.log"))
            .unwrap();
        let path = |name: &str| pki.join(name).display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.wire, "etcd"])
            .args(["--name", &member.name])
            .arg(format!(
                "--data-dir={}",
                member.data.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "flatnet-test"])
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", path("ca.pem")))
            .arg(format!("--cert-file={}", path("member.pem")))
            .arg(format!("--key-file={}", path("member.key")))
            .arg("--peer-client-cert-auth")
            .arg(format!("--peer-trusted-ca-file={}", path("ca.pem")))
            .arg(format!("--peer-cert-file={}", path("member.pem")))
            .arg(format!("--peer-key-file={}", path("member.key")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd runs (apt-get install etcd-server)");
        self.members[i].process = Some(child);
    }

    /// etcdctl as the administrator (root), in the wire namespace.
    pub fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> std::process::Output {
        let (root, _) = self.identity("root");
        self.etcdctl_with(&root, endpoints, args)
    }

    /// etcdctl with host `host`'s credentials, as a host taken over could use them.
    pub fn etcdctl_as(&self, host: usize, args: &[&str]) -> std::process::Output {
        self.etcdctl_with(&self.client(host), &self.endpoints(), args)
    }

    fn etcdctl_with(
        &self,
        admin: &ClientCert,
        endpoints: &[String],
        args: &[&str],
    ) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.wire, "etcdctl"])
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", self.ca_file().display()))
            .arg(format!("--cert={}", admin.cert.display()))
            .arg(format!("--key={}", admin.key.display()))
            .args(["--dial-timeout=2s", "--command-timeout=3s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap()
    }

    fn wait_healthy(&self, members: &[usize]) {
        let endpoints: Vec<String> = members
            .iter()
            .map(|&i| format!("https://{}:{CLIENT_PORT}", self.members[i].ip))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.etcdctl(&endpoints, &["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd members {members:?} not healthy: {}{}\nlog: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(members[0])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The member that leads now.
    pub fn leader(&self) -> usize {
        self.leader_now().expect("a member leads")
    }

    /// The member that leads now, if one does (none during an election).
    pub fn leader_now(&self) -> Option<usize> {
        let out = self.etcdctl(
            &self.live_endpoints(),
            &["endpoint", "status", "-w", "json"],
        );
        if !out.status.success() {
            return None;
        }
        let members: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let members = members.as_array()?;
        let leader = &members.first()?["Status"]["leader"];
        let at = members
            .iter()
            .find(|m| m["Status"]["header"]["member_id"] == *leader)?["Endpoint"]
            .as_str()?
            .to_string();
        self.endpoints().iter().position(|e| *e == at)
    }

    /// The cluster's revision now.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&self.live_endpoints(), &["get", "/", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        read["header"]["revision"].as_i64().unwrap()
    }

    /// Forgets every revision before `revision`, as etcd's auto-compaction does.
    pub fn compact(&self, revision: i64) {
        let out = self.etcdctl(
            &self.live_endpoints(),
            &["compaction", &revision.to_string()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The members' addresses on the underlay.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.members.iter().map(|m| m.ip).collect()
    }

    fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.members[i].data.path().join("etcd.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` with a new P-256 key, unencrypted: the start of every key this harness makes.
const NEW_EC_KEY: [&str; 6] = [
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn make_ca(dir: &Path) {
    let ca = [
        "-x509",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flatnet test etcd CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    openssl(dir, &[NEW_EC_KEY.as_slice(), &ca].concat());
}

/// `<name>.pem` and `<name>.key`, signed by the CA, with the given extensions.
fn issue(dir: &Path, name: &str, common_name: &str, extensions: &str) {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{extensions}"),
    )
    .unwrap();
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subject = format!("/CN={common_name}");
    let request = ["-keyout", &key, "-out", &csr, "-subj", &subject];
    openssl(dir, &[NEW_EC_KEY.as_slice(), &request].concat());
    let serial = format!("0x{:x}", rand_serial());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext.display().to_string(),
        ],
    );
}

/// Unique enough for certificates that live as long as one test.
fn rand_serial() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos as u64 ^ u64::from(std::process::id()) << 40) >> 1
}
