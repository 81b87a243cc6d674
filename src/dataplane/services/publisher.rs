//! Publishes this host's candidate endpoints through the lighthouse, on a thread of its own (a
//! call to etcd may take seconds when it is out of reach). What the packet thread hands over
//! is what its peers see this host at; the thread adds its local addresses when the daemon
//! listens on all of them, looks at them again every few seconds (a new DHCP lease, a moved
//! laptop), and publishes whenever the list changed, again after a failure.

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lighthouse::{Candidates, Lighthouse, MAX_CANDIDATES};

/// How often local addresses are looked at again, and a failed publication retried.
const RESCAN_EVERY: Duration = Duration::from_secs(2);

pub struct Publisher {
    observed: Sender<Vec<SocketAddr>>,
    last_handed: Vec<SocketAddr>,
    published: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Publisher {
    /// Starts the thread. `listen` is the daemon's underlay address, which its entries carry;
    /// `relay`: the host relays for others, and says so.
    pub fn spawn(
        lighthouse: Arc<dyn Lighthouse>,
        public_key: String,
        listen: SocketAddr,
        relay: bool,
    ) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let published = Arc::new(Mutex::new(Vec::new()));
        let shared = published.clone();
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let host = Advertised {
                    public_key,
                    listen,
                    relay,
                };
                run(lighthouse.as_ref(), &host, rx, &shared)
            })
            .map_err(|e| Error::io("spawning the publisher thread", e))?;
        Ok(Publisher {
            observed: tx,
            last_handed: Vec::new(),
            published,
        })
    }

    /// What the lighthouse holds of this host's candidates, as far as this daemon knows.
    pub fn published(&self) -> Vec<SocketAddr> {
        self.published.lock().unwrap().clone()
    }

    /// Where peers see this host now, newest first; passed on only when it changed.
    pub fn observed(&mut self, endpoints: Vec<SocketAddr>) {
        if endpoints != self.last_handed {
            self.last_handed = endpoints.clone();
            let _ = self.observed.send(endpoints);
        }
    }
}

/// What the thread publishes of the host besides what its peers see.
struct Advertised {
    public_key: String,
    listen: SocketAddr,
    relay: bool,
}

fn run(
    lighthouse: &dyn Lighthouse,
    host: &Advertised,
    observed: Receiver<Vec<SocketAddr>>,
    shared: &Mutex<Vec<SocketAddr>>,
) {
    let listen = host.listen;
    let mut seen = Vec::new();
    let mut published: Option<Vec<SocketAddr>> = None;
    let mut last_error = String::new();
    loop {
        let endpoints = candidate_list(listen, &seen, &local_addresses(listen), host.relay);
        if published.as_ref() != Some(&endpoints) {
            let candidates = Candidates {
                public_key: host.public_key.clone(),
                endpoints,
                relay: host.relay,
            };
            match lighthouse.publish_candidates(&candidates) {
                Ok(()) => {
                    tracing::info!("published candidate endpoints {:?}", candidates.endpoints);
                    shared.lock().unwrap().clone_from(&candidates.endpoints);
                    published = Some(candidates.endpoints);
                    last_error.clear();
                }
                Err(e) => {
                    let text = e.to_string();
                    if text != last_error {
                        tracing::warn!("publishing candidate endpoints: {text}");
                        last_error = text;
                    }
                }
            }
        }
        match observed.recv_timeout(RESCAN_EVERY) {
            Ok(endpoints) => seen = observed.try_iter().last().unwrap_or(endpoints),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return, // the data plane is gone
        }
    }
}

/// What a host publishes: where its peers see it (newest first), then, when it listens on all
/// addresses, its own addresses with its port; never what its entries carry already (but a
/// relay, which may serve no container, its own endpoint first), at most [`MAX_CANDIDATES`].
pub fn candidate_list(
    listen: SocketAddr,
    observed: &[SocketAddr],
    local: &[IpAddr],
    relay: bool,
) -> Vec<SocketAddr> {
    let own = local
        .iter()
        .filter(|_| listen.ip().is_unspecified())
        .map(|&ip| SocketAddr::new(ip, listen.port()));
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    if relay && !listen.ip().is_unspecified() {
        endpoints.push(listen);
    }
    for endpoint in observed.iter().copied().chain(own) {
        if endpoint != listen && !endpoints.contains(&endpoint) {
            endpoints.push(endpoint);
        }
    }
    endpoints.truncate(MAX_CANDIDATES);
    endpoints
}

/// The host's addresses that another host could send to, when it listens on all of them.
fn local_addresses(listen: SocketAddr) -> Vec<IpAddr> {
    if !listen.ip().is_unspecified() {
        return Vec::new();
    }
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut addresses: Vec<IpAddr> = interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            is_underlay_address(&interface.interface_name, ip, listen).then_some(ip)
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Of a family `listen` receives (`[::]` receives both), not loopback or link-local, and not a
/// Flatnet address (a host member's interface): an underlay datagram sent there would enter
/// the overlay.
fn is_underlay_address(ifname: &str, ip: IpAddr, listen: SocketAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    (ip.is_ipv4() == listen.is_ipv4() || listen.is_ipv6())
        && !ip.is_loopback()
        && !link_local
        && !ifname.starts_with(crate::host_member::MEMBER_IFNAME_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lighthouse::Change;

    fn ep(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn observed_come_first_then_own_addresses_only_when_listening_on_all() {
        let observed = [ep("198.51.100.1:40001"), ep("192.0.2.5:4800")];
        let local: Vec<IpAddr> = vec!["192.0.2.5".parse().unwrap(), "10.9.0.1".parse().unwrap()];
        assert_eq!(
            candidate_list(ep("0.0.0.0:4800"), &observed, &local, false),
            [
                ep("198.51.100.1:40001"),
                ep("192.0.2.5:4800"),
                ep("10.9.0.1:4800")
            ]
        );
        assert_eq!(
            candidate_list(ep("192.0.2.5:4800"), &observed, &local, false),
            [ep("198.51.100.1:40001")],
            "the endpoint the entries carry is not repeated"
        );
        assert_eq!(
            candidate_list(ep("192.0.2.5:4800"), &observed, &local, true),
            [ep("192.0.2.5:4800"), ep("198.51.100.1:40001")],
            "but a relay's comes first"
        );
        let many: Vec<SocketAddr> = (1..=20)
            .map(|i| SocketAddr::from(([198, 51, 100, i], 4800)))
            .collect();
        assert_eq!(
            candidate_list(ep("192.0.2.5:4800"), &many, &[], true).len(),
            MAX_CANDIDATES
        );
    }

    #[test]
    fn flatnet_loopback_and_link_local_addresses_are_no_candidates() {
        let all = ep("0.0.0.0:4800");
        let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
        assert!(is_underlay_address("eth0", ip("192.0.2.5"), all));
        assert!(!is_underlay_address(
            "fn-1a2b3c4d",
            ip("10.77.255.254"),
            all
        ));
        assert!(!is_underlay_address("lo", ip("127.0.0.1"), all));
        assert!(!is_underlay_address("eth0", ip("169.254.1.1"), all));
        assert!(
            !is_underlay_address("eth0", ip("2001:db8::5"), all),
            "another family"
        );
        let both = ep("[::]:4800");
        assert!(is_underlay_address("eth0", ip("2001:db8::5"), both));
        assert!(
            is_underlay_address("eth0", ip("192.0.2.5"), both),
            "[::] receives IPv4 too"
        );
        assert!(!is_underlay_address("lo", ip("::1"), both));
    }

    /// A lighthouse whose first `failures` publications fail (etcd out of reach), then a file.
    struct Flaky {
        file: crate::lighthouse::FileLighthouse,
        failures: std::sync::atomic::AtomicUsize,
    }

    impl Lighthouse for Flaky {
        fn network_id(&self, network: &str) -> Result<crate::lighthouse::NetworkId> {
            self.file.network_id(network)
        }
        fn register(&self, entry: &crate::lighthouse::Entry) -> Result<()> {
            self.file.register(entry)
        }
        fn unregister(&self, network: &str, ip: std::net::IpAddr, id: &str) -> Result<()> {
            self.file.unregister(network, ip, id)
        }
        fn lookup(
            &self,
            network: &str,
            ip: std::net::IpAddr,
        ) -> Result<Option<crate::lighthouse::Entry>> {
            self.file.lookup(network, ip)
        }
        fn all_entries(&self) -> Result<Vec<crate::lighthouse::Entry>> {
            self.file.all_entries()
        }
        fn publish_candidates(&self, candidates: &Candidates) -> Result<()> {
            use std::sync::atomic::Ordering;
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Err(Error::LighthouseUnavailable("out of reach".into()));
            }
            self.file.publish_candidates(candidates)
        }
        fn follow(&self) -> Result<Box<dyn crate::lighthouse::Feed>> {
            self.file.follow()
        }
    }

    #[test]
    fn a_failed_publication_is_retried_until_the_lighthouse_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(Flaky {
            file: crate::lighthouse::FileLighthouse::new(dir.path().join("lh.json")),
            failures: 2.into(),
        });
        let mut publisher =
            Publisher::spawn(flaky.clone(), "KEY".into(), ep("192.0.2.5:4800"), false).unwrap();
        let seen = vec![ep("198.51.100.1:40001")];
        publisher.observed(seen.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while publisher.published() != seen {
            assert!(std::time::Instant::now() < deadline, "never published");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(flaky.failures.load(std::sync::atomic::Ordering::SeqCst), 0);
        let mut feed = flaky.file.follow().unwrap();
        let Change::Reset { candidates, .. } = &feed.changes(Duration::ZERO).unwrap()[0] else {
            panic!("a feed starts with everything");
        };
        assert_eq!(
            candidates[0].1.endpoints, seen,
            "the lighthouse holds what status says"
        );
    }
}
