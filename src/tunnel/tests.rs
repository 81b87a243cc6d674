//! Tunnel tests with two (or three) managers wired together in memory.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

struct Host {
    tm: TunnelManager,
    addr: SocketAddr,
}

type Wire = VecDeque<(Vec<u8>, SocketAddr, SocketAddr)>; // (datagram, from, to)

fn host(n: u8, limits: Limits) -> Host {
    Host {
        tm: TunnelManager::new(StaticKeys::generate().unwrap(), limits),
        addr: SocketAddr::from(([192, 0, 2, n], 4800)),
    }
}

fn anyone(_: &PublicKey) -> bool {
    true
}

impl Host {
    fn send_packet(&mut self, to: &Host, packet: &[u8], wire: &mut Wire, now: Instant) {
        let from = self.addr;
        let mut out = vec![0u8; MAX_DATAGRAM];
        let key = *to.tm.public_key();
        self.tm
            .encrypt_packet(&key, to.addr, packet, &mut out, now, &mut |d, dst| {
                wire.push_back((d.to_vec(), from, dst))
            })
            .unwrap();
    }

    fn receive(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        wire: &mut Wire,
        now: Instant,
    ) -> (Received, Vec<u8>) {
        let me = self.addr;
        let mut out = vec![0u8; MAX_DATAGRAM];
        let r =
            self.tm
                .decrypt_packet(datagram, from, &mut out, now, &mut anyone, &mut |d, dst| {
                    wire.push_back((d.to_vec(), me, dst))
                });
        let data = match r {
            Received::Data { len, .. } => out[..len].to_vec(),
            _ => Vec::new(),
        };
        (r, data)
    }
}

/// Delivers everything on the wire until it is quiet; returns the packets each side got.
fn pump(a: &mut Host, b: &mut Host, wire: &mut Wire, now: Instant) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while let Some((d, from, to)) = wire.pop_front() {
        let (host, got) = if to == a.addr {
            (&mut *a, &mut got_a)
        } else {
            (&mut *b, &mut got_b)
        };
        if let (Received::Data { .. }, data) = host.receive(&d, from, wire, now) {
            got.push(data);
        }
    }
    (got_a, got_b)
}

#[test]
fn round_trip_through_a_handshake() {
    let (mut a, mut b, mut wire, now) = sending(b"first, queued during the handshake");
    assert_eq!(
        wire.len(),
        1,
        "only the initiation goes out before the handshake"
    );
    let (_, got_b) = pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(got_b, vec![b"first, queued during the handshake".to_vec()]);

    // The responder may send once the initiator's packet confirmed the session.
    b.send_packet(&a, b"reply", &mut wire, now);
    let (got_a, _) = pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(got_a, vec![b"reply".to_vec()]);
    assert_eq!(a.tm.status(now)[0].stats.handshakes_completed, 1);
}

#[test]
fn the_wire_carries_no_plaintext() {
    let (mut a, mut b, mut wire, now) = sending(b"warmup");
    pump(&mut a, &mut b, &mut wire, now);
    let marker = b"FLATNET-MARKER-0123456789";
    a.send_packet(&b, marker, &mut wire, now);
    let (d, _, _) = wire.front().unwrap();
    assert!(!d.windows(marker.len()).any(|w| w == marker));
}

fn established() -> (Host, Host, Wire, Instant) {
    established_with(Limits::default())
}

/// Two hosts with a session, after "hello" went from a to b.
fn established_with(limits: Limits) -> (Host, Host, Wire, Instant) {
    let (mut a, mut b, mut wire, now) = sending_with(limits, b"hello");
    pump(&mut a, &mut b, &mut wire, now);
    (a, b, wire, now)
}

/// Two hosts without a session, a's `first` packet to b queued and its initiation on the wire.
fn sending(first: &[u8]) -> (Host, Host, Wire, Instant) {
    sending_with(Limits::default(), first)
}

fn sending_with(limits: Limits, first: &[u8]) -> (Host, Host, Wire, Instant) {
    let now = Instant::now();
    let (mut a, b) = (host(1, limits.clone()), host(2, limits));
    let mut wire = Wire::new();
    a.send_packet(&b, first, &mut wire, now);
    (a, b, wire, now)
}

#[test]
fn tampered_and_replayed_messages_are_rejected() {
    let (mut a, mut b, mut wire, now) = established();
    a.send_packet(&b, b"payload", &mut wire, now);
    let (datagram, from, _) = wire.pop_front().unwrap();

    for at in [0, 5, 12, 20, datagram.len() - 1] {
        let mut tampered = datagram.clone();
        tampered[at] ^= 0x01;
        let (r, _) = b.receive(&tampered, from, &mut wire, now);
        assert!(matches!(r, Received::Dropped(_)), "byte {at}: {r:?}");
    }
    let (r, data) = b.receive(&datagram, from, &mut wire, now);
    assert!(matches!(r, Received::Data { .. }));
    assert_eq!(data, b"payload");
    let (r, _) = b.receive(&datagram, from, &mut wire, now);
    assert_eq!(r, Received::Dropped(DropReason::Replay));
    let (r, _) = b.receive(&datagram[..20], from, &mut wire, now);
    assert_eq!(r, Received::Dropped(DropReason::Malformed));
}

/// Opens `datagram` as an opening worker would: on another thread, with the key b issued.
fn open_elsewhere(
    b: &Host,
    datagram: &[u8],
    now: Instant,
) -> (OpenKey, Result<usize, DropReason>, Vec<u8>) {
    let (key, ciphertext) =
        b.tm.open_key(datagram, now)
            .expect("a live session's datagram");
    let ciphertext = ciphertext.to_vec();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut out = vec![0u8; MAX_DATAGRAM];
            let opened = key.open(&ciphertext, &mut out);
            (key, opened, out)
        })
        .join()
        .unwrap()
    })
}

fn receive_opened(
    b: &mut Host,
    datagram: &[u8],
    from: SocketAddr,
    (key, opened, mut out): (OpenKey, Result<usize, DropReason>, Vec<u8>),
    now: Instant,
) -> (Received, Vec<u8>) {
    let mut ignore = |_: &[u8], _: SocketAddr| {};
    let r = b.tm.receive_opened(
        datagram,
        &key,
        opened,
        from,
        &mut out,
        now,
        &mut anyone,
        &mut ignore,
    );
    let data = match r {
        Received::Data { len, .. } => out[..len].to_vec(),
        _ => Vec::new(),
    };
    (r, data)
}

#[test]
fn datagrams_opened_on_another_thread_are_taken_like_any_other() {
    let (mut a, mut b, mut wire, now) = established();
    for payload in [&b"one"[..], b"two", b"three"] {
        a.send_packet(&b, payload, &mut wire, now);
    }
    let (one, from, _) = wire.pop_front().unwrap();
    let (two, _, _) = wire.pop_front().unwrap();
    let (three, _, _) = wire.pop_front().unwrap();

    let opened = open_elsewhere(&b, &one, now);
    assert_eq!(receive_opened(&mut b, &one, from, opened, now).1, b"one");
    assert!(
        b.tm.open_key(&one, now).is_none(),
        "a taken counter is issued again"
    );

    // Two keys for one datagram, issued before either was taken: the second is a replay.
    let (first, second) = (open_elsewhere(&b, &two, now), open_elsewhere(&b, &two, now));
    assert_eq!(receive_opened(&mut b, &two, from, first, now).1, b"two");
    let (r, _) = receive_opened(&mut b, &two, from, second, now);
    assert_eq!(r, Received::Dropped(DropReason::Replay));

    // A forgery fails to open and leaves its counter to the genuine datagram.
    let mut forged = three.clone();
    *forged.last_mut().unwrap() ^= 1;
    let opened = open_elsewhere(&b, &forged, now);
    assert_eq!(opened.1, Err(DropReason::BadTag));
    let (r, _) = receive_opened(&mut b, &forged, from, opened, now);
    assert_eq!(r, Received::Dropped(DropReason::BadTag));
    let opened = open_elsewhere(&b, &three, now);
    assert_eq!(
        receive_opened(&mut b, &three, from, opened, now).1,
        b"three"
    );
}

#[test]
fn a_key_another_session_issued_is_not_trusted() {
    let (mut a, mut b, mut wire, now) = established();
    let (mut c, d, mut other_wire, _) = established();
    a.send_packet(&b, b"for b", &mut wire, now);
    c.send_packet(&d, b"for d", &mut other_wire, now);
    let (for_b, from, _) = wire.pop_front().unwrap();
    let (for_d, _, _) = other_wire.pop_front().unwrap();
    // d's key and a claimed success over garbage: b opens its datagram itself instead.
    let (key, _, _) = open_elsewhere(&d, &for_d, now);
    let claimed = (key, Ok(5), vec![0xee; MAX_DATAGRAM]);
    let (r, data) = receive_opened(&mut b, &for_b, from, claimed, now);
    assert!(matches!(r, Received::Data { .. }), "{r:?}");
    assert_eq!(data, b"for b");
}

#[test]
fn wrongly_keyed_messages_are_rejected() {
    let (mut a, mut b, mut wire, now) = established();
    // A third host that knows B's index but not the keys: its ciphertext does not verify.
    let mut c = host(3, Limits::default());
    let mut wire_c = Wire::new();
    c.send_packet(&b, b"x", &mut wire_c, now);
    pump(&mut c, &mut b, &mut wire_c, now);
    a.send_packet(&b, b"genuine", &mut wire, now);
    let (genuine, from, _) = wire.pop_front().unwrap();
    c.send_packet(&b, b"forged!", &mut wire_c, now);
    let (forged, _, _) = wire_c.pop_front().unwrap();
    let mut mixed = genuine[..16].to_vec(); // A's header (B's index for A's session)
    mixed.extend_from_slice(&forged[16..]); // C's ciphertext
    let (r, _) = b.receive(&mixed, from, &mut wire, now);
    assert_eq!(r, Received::Dropped(DropReason::BadTag));

    // A handshake from a key the lighthouse does not list is refused.
    let mut d = host(4, Limits::default());
    let mut wire_d = Wire::new();
    d.send_packet(&b, b"let me in", &mut wire_d, now);
    let (init, from, _) = wire_d.pop_front().unwrap();
    let mut out = vec![0u8; MAX_DATAGRAM];
    let only_a = *a.tm.public_key();
    let r = b.tm.decrypt_packet(
        &init,
        from,
        &mut out,
        now,
        &mut |k: &PublicKey| *k == only_a,
        &mut |_, _| panic!("nothing may be sent to an unknown key"),
    );
    assert_eq!(r, Received::Dropped(DropReason::UnknownKey));
}

#[test]
fn replayed_initiation_is_refused() {
    let (mut a, mut b, mut wire, now) = sending(b"x");
    let (init, from, _) = wire.front().cloned().unwrap();
    pump(&mut a, &mut b, &mut wire, now);
    let (r, _) = b.receive(&init, from, &mut wire, now);
    assert_eq!(r, Received::Dropped(DropReason::StaleHandshake));
}

#[test]
fn a_forged_response_does_not_kill_the_pending_handshake() {
    let (mut a, mut b, mut wire, now) = sending(b"waiting for the handshake");
    let (init, from_a, _) = wire.pop_front().unwrap();
    b.receive(&init, from_a, &mut wire, now);
    let (response, from_b, _) = wire.pop_front().unwrap();

    // Whoever saw the initiation knows its index, and A's public key is no secret: a response
    // with that index, a made-up body and a valid MAC.
    let mut forged = response.clone();
    for byte in &mut forged[12..] {
        *byte ^= 0x5a;
    }
    mac::MacKey::for_receiver(a.tm.public_key()).seal(&mut forged);
    let attacker = SocketAddr::from(([198, 51, 100, 66], 4800));
    let (r, _) = a.receive(&forged, attacker, &mut wire, now);
    assert_eq!(r, Received::Dropped(DropReason::BadHandshake));
    assert!(wire.is_empty(), "nothing goes to the forger");

    // The genuine answer still completes the handshake, and the waiting packet goes through.
    a.receive(&response, from_b, &mut wire, now);
    let (_, got_b) = pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(got_b, vec![b"waiting for the handshake".to_vec()]);
    assert_eq!(a.tm.status(now)[0].endpoint, b.addr);
}

#[test]
fn a_captured_initiation_stays_stale_across_a_restart_of_the_responder() {
    let (mut a, mut b, mut wire, now) = sending(b"x");
    let (init, from, _) = wire.front().cloned().unwrap();
    pump(&mut a, &mut b, &mut wire, now);
    let kept =
        b.tm.changed_init_timestamps()
            .expect("the accepted timestamp");
    assert_eq!(b.tm.changed_init_timestamps(), None, "nothing new since");

    // B restarts: a new manager with the same key. Without what was kept, the capture passes.
    let restart = |b: &Host| Host {
        tm: TunnelManager::new(
            StaticKeys {
                private: b.tm.keys.private,
                public: b.tm.keys.public,
            },
            Limits::default(),
        ),
        addr: b.addr,
    };
    let mut forgetful = restart(&b);
    let (r, _) = forgetful.receive(&init, from, &mut wire, now);
    assert_ne!(r, Received::Dropped(DropReason::StaleHandshake));
    wire.clear();

    let mut restarted = restart(&b);
    restarted.tm.remember_init_timestamps(kept);
    let (r, _) = restarted.receive(&init, from, &mut wire, now);
    assert_eq!(r, Received::Dropped(DropReason::StaleHandshake));
    assert!(wire.is_empty(), "no response to a replay");
}

#[test]
fn a_captured_initiation_stays_stale_after_the_peer_is_forgotten() {
    let (mut a, mut b, mut wire, now) = sending(b"x");
    let (init, from, _) = wire.front().cloned().unwrap();
    pump(&mut a, &mut b, &mut wire, now);

    // B forgets A: idle for longer than the idle timeout (a fake clock), then all tunnels
    // closed as when the last container detaches.
    let later = now + Limits::default().idle_timeout + Duration::from_secs(1);
    b.tm.tick(later, &mut |_, _| {});
    assert_eq!(b.tm.peer_count(), 0, "the idle peer is forgotten");
    b.tm.close_all();

    // The captured initiation, from anywhere, is refused and moves nothing.
    let attacker = SocketAddr::from(([198, 51, 100, 66], 4800));
    for source in [from, attacker] {
        let (r, _) = b.receive(&init, source, &mut wire, later);
        assert_eq!(r, Received::Dropped(DropReason::StaleHandshake));
    }
    assert!(wire.is_empty(), "no response to a replay");
    assert_eq!(b.tm.peer_count(), 0);

    // A's next, newer initiation is welcome.
    a.tm.close_all();
    a.send_packet(&b, b"fresh", &mut wire, later);
    let (_, got) = pump(&mut a, &mut b, &mut wire, later);
    assert_eq!(got, vec![b"fresh".to_vec()]);
}

#[test]
fn out_of_order_inside_the_window_is_accepted() {
    let (mut a, mut b, mut wire, now) = established();
    // Payloads start with a network id, never 0 (that marks a control message).
    for i in 1..=50u8 {
        a.send_packet(&b, &[i; 20], &mut wire, now);
    }
    let mut datagrams: Vec<_> = wire.drain(..).collect();
    datagrams.reverse();
    let mut got = Vec::new();
    for (d, from, _) in datagrams {
        if let (Received::Data { .. }, data) = b.receive(&d, from, &mut wire, now) {
            got.push(data[0]);
        }
    }
    got.sort();
    assert_eq!(got, (1..=50).collect::<Vec<u8>>());
}

#[test]
fn rekey_keeps_traffic_flowing() {
    let limits = Limits {
        rekey_after_messages: 10,
        reject_after_messages: 15,
        ..Limits::default()
    };
    let now = Instant::now();
    let (mut a, mut b) = (host(1, limits.clone()), host(2, limits));
    let mut wire = Wire::new();
    let mut delivered = 0;
    for i in 0..100u32 {
        a.send_packet(&b, &i.to_le_bytes(), &mut wire, now);
        delivered += pump(&mut a, &mut b, &mut wire, now).1.len();
    }
    assert_eq!(delivered, 100);
    let completed = a.tm.status(now)[0].stats.handshakes_completed;
    assert!(
        completed >= 7,
        "only {completed} handshakes for 100 packets at 10 per session"
    );
    assert!(
        b.tm.session_count() <= 3,
        "old sessions pile up: {}",
        b.tm.session_count()
    );

    // Time-based renewal: sessions past their lifetime are renewed on use.
    let later = now + Duration::from_secs(200);
    a.send_packet(&b, b"after a long pause", &mut wire, later);
    let (_, got) = pump(&mut a, &mut b, &mut wire, later);
    assert_eq!(got, vec![b"after a long pause".to_vec()]);
}

#[test]
fn lost_handshakes_back_off_and_idle_peers_are_forgotten() {
    let now = Instant::now();
    let (mut a, b) = (host(1, Limits::default()), host(2, Limits::default()));
    let mut wire = Wire::new();
    a.send_packet(&b, b"into the void", &mut wire, now);
    wire.clear(); // the peer is gone
    let mut sent_at = Vec::new();
    let mut t = now;
    while t < now + Duration::from_secs(30) {
        t += Duration::from_millis(50);
        a.tm.tick(t, &mut |_, _| sent_at.push(t));
    }
    // 250 ms, 500 ms, 1 s, 2 s, 4 s, then every 5 s: about 10 attempts in 30 s, not 600.
    assert!(
        (6..=12).contains(&sent_at.len()),
        "{} retries",
        sent_at.len()
    );
    let gaps: Vec<_> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "backoff must not shrink: {gaps:?}"
    );

    a.tm.tick(now + Duration::from_secs(400), &mut |_, _| {});
    assert_eq!(a.tm.peer_count(), 0);
    assert_eq!(a.tm.session_count(), 0);
}

#[test]
fn a_host_can_tunnel_to_itself() {
    let now = Instant::now();
    let mut a = host(1, Limits::default());
    let key = *a.tm.public_key();
    let mut wire = Wire::new();
    let mut out = vec![0u8; MAX_DATAGRAM];
    let addr = a.addr;
    a.tm.encrypt_packet(&key, addr, b"to myself", &mut out, now, &mut |d, to| {
        wire.push_back((d.to_vec(), addr, to))
    })
    .unwrap();
    let mut got = Vec::new();
    while let Some((d, from, _)) = wire.pop_front() {
        if let (Received::Data { .. }, data) = a.receive(&d, from, &mut wire, now) {
            got.push(data);
        }
    }
    assert_eq!(got, vec![b"to myself".to_vec()]);
}

/// An initiation with a valid header and a random body, as a flood would send.
fn random_initiation() -> Vec<u8> {
    let mut datagram = vec![0u8; INIT_LEN];
    getrandom::fill(&mut datagram).unwrap();
    wire::write_init_header(&mut datagram, 7);
    datagram
}

#[test]
fn random_initiations_are_dropped_by_the_mac_before_any_key_work() {
    let (mut a, mut b, mut wire, now) = established();
    let flooder = SocketAddr::from(([198, 51, 100, 66], 4800));
    for _ in 0..10_000 {
        let (r, _) = b.receive(&random_initiation(), flooder, &mut wire, now);
        assert_eq!(r, Received::Dropped(DropReason::BadMac));
    }
    assert!(wire.is_empty(), "nothing answers a flood");
    assert_eq!(b.tm.peer_count(), 1);
    // The tunnel is untouched.
    a.send_packet(&b, b"still here", &mut wire, now);
    let (_, got) = pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(got, vec![b"still here".to_vec()]);
}

#[test]
fn handshakes_that_know_our_key_are_rate_limited_per_source() {
    let now = Instant::now();
    let mut b = host(2, Limits::default());
    let flooder = SocketAddr::from(([198, 51, 100, 66], 4800));
    let mut wire = Wire::new();
    let mut outcomes: HashMap<String, u32> = HashMap::new();
    // Fresh keys that know B's public key pass the MAC; each costs B a Diffie-Hellman.
    for _ in 0..200 {
        let mut c = host(3, Limits::default());
        c.addr = flooder;
        c.send_packet(&b, b"x", &mut wire, now);
        let (init, _, _) = wire.pop_front().unwrap();
        let (r, _) = b.receive(&init, flooder, &mut wire, now);
        wire.clear();
        *outcomes.entry(format!("{r:?}")).or_insert(0) += 1;
    }
    let answered = outcomes.get("Handled").copied().unwrap_or(0);
    let limited = outcomes["Dropped(RateLimited)"];
    assert_eq!(answered + limited, 200, "{outcomes:?}");
    assert!(
        answered <= 20,
        "{answered} handshakes answered from one source at once"
    );

    // Another source still gets its handshake answered at that very moment.
    let mut a = host(1, Limits::default());
    wire.clear();
    a.send_packet(&b, b"from elsewhere", &mut wire, now);
    let (_, got) = pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(got, vec![b"from elsewhere".to_vec()]);
}

/// Initiations with a valid mac1 and a random body (an attacker who read `b`'s public key),
/// one from each of `sources` spoofed addresses in 198.18.0.0/15; the outcomes by kind.
fn mac1_flood(b: &mut Host, sources: u32, wire: &mut Wire, now: Instant) -> HashMap<String, u32> {
    let key = mac::MacKey::for_receiver(b.tm.public_key());
    let mut outcomes = HashMap::new();
    for i in 0..sources {
        let mut init = random_initiation();
        key.seal(&mut init[..wire::INIT_MAC1_END]);
        let from = SocketAddr::from((std::net::Ipv4Addr::from(0xc612_0000 + i), 4800));
        let (r, _) = b.receive(&init, from, wire, now);
        *outcomes.entry(format!("{r:?}")).or_insert(0) += 1;
    }
    outcomes
}

#[test]
fn under_a_spoofed_flood_only_initiators_that_prove_their_address_are_answered() {
    let (mut a, mut b, mut wire, now) = established();
    let outcomes = mac1_flood(&mut b, 2000, &mut wire, now);
    let count = |kind: &str| outcomes.get(kind).copied().unwrap_or(0);
    let (cookies, tried) = (count("Dropped(UnderLoad)"), count("Dropped(BadHandshake)"));
    assert_eq!(cookies + tried, 2000, "{outcomes:?}");
    // Until the load is seen, an initiation costs a Diffie-Hellman; after, only a cookie.
    assert!(tried <= 500 && cookies >= 1500, "{outcomes:?}");
    let replies: Vec<_> = wire.drain(..).collect();
    assert_eq!(replies.len(), cookies as usize);
    assert!(replies
        .iter()
        .all(|(d, _, to)| d.len() == wire::COOKIE_REPLY_LEN && to.ip() != a.addr.ip()));

    // A host that comes up now is answered at once: a cookie, the initiation again with its
    // mac2, the response.
    let mut c = host(3, Limits::default());
    c.send_packet(&b, b"new host", &mut wire, now);
    let (_, got) = pump(&mut c, &mut b, &mut wire, now);
    assert_eq!(got, vec![b"new host".to_vec()]);
    let stats = &c.tm.status(now)[0].stats;
    assert_eq!(
        (
            stats.cookies_received,
            stats.handshakes_completed,
            stats.handshakes_failed
        ),
        (1, 1, 0)
    );

    // The established tunnel rekeys while the flood goes on.
    let later = now + Duration::from_secs(121);
    mac1_flood(&mut b, 2000, &mut wire, later);
    wire.clear();
    a.send_packet(&b, b"rekeyed", &mut wire, later);
    let (_, got) = pump(&mut a, &mut b, &mut wire, later);
    assert_eq!(got, vec![b"rekeyed".to_vec()]);
    let stats = &a.tm.status(later)[0].stats;
    assert_eq!((stats.cookies_received, stats.handshakes_completed), (1, 2));
}

/// `c` sends `packet` to `b` while `b` is flooded; what `b` got.
fn send_while_flooded(
    c: &mut Host,
    b: &mut Host,
    packet: &[u8],
    wire: &mut Wire,
    at: Instant,
) -> Vec<Vec<u8>> {
    mac1_flood(b, 2000, wire, at);
    wire.clear();
    c.send_packet(b, packet, wire, at);
    pump(c, b, wire, at).1
}

#[test]
fn a_stale_cookie_is_replaced_and_the_retry_timer_sends_the_next_initiation() {
    let now = Instant::now();
    let rekeying = Limits::default().rekeying_after(Duration::from_secs(20));
    let (mut c, mut b) = (host(3, rekeying), host(2, Limits::default()));
    let mut wire = Wire::new();
    let first = now + Duration::from_secs(100);
    let got = send_while_flooded(&mut c, &mut b, b"first", &mut wire, first);
    assert_eq!(got, vec![b"first".to_vec()]);

    // B has drawn a new secret (every 120 s) while C still uses its cookie (for 110 s): C's
    // rekey gets a new cookie, and no second initiation at once.
    let second = now + Duration::from_secs(125);
    let got = send_while_flooded(&mut c, &mut b, b"second", &mut wire, second);
    assert_eq!(got, vec![b"second".to_vec()]);
    let stats = c.tm.status(second)[0].stats.clone();
    assert_eq!((stats.cookies_received, stats.handshakes_completed), (2, 1));

    // The retry timer sends it, with the new cookie, and it is answered under load.
    let retry = second + Duration::from_millis(300);
    let c_addr = c.addr;
    c.tm.tick(retry, &mut |d, to| wire.push_back((d.to_vec(), c_addr, to)));
    pump(&mut c, &mut b, &mut wire, retry);
    assert_eq!(c.tm.status(retry)[0].stats.handshakes_completed, 2);
}

#[test]
fn without_load_no_cookie_is_asked_for() {
    let (mut a, mut b, mut wire, now) = sending(b"calm");
    let (_, got) = pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(got, vec![b"calm".to_vec()]);
    assert_eq!(a.tm.status(now)[0].stats.cookies_received, 0);
}

#[test]
fn a_quiet_receiver_sends_a_keepalive_and_both_see_it() {
    let (mut a, mut b, mut wire, now) = established();
    // The session's first exchange ended with b's control message; now data alone.
    a.send_packet(&b, b"data", &mut wire, now);
    pump(&mut a, &mut b, &mut wire, now);
    let limits = Limits::default();
    let mut sent = Vec::new();
    b.tm.tick(now + limits.keepalive_after / 2, &mut |d, to| {
        sent.push((d.to_vec(), to))
    });
    assert!(sent.is_empty(), "no keepalive before it is due");
    let later = now + limits.keepalive_after;
    b.tm.tick(later, &mut |d, to| sent.push((d.to_vec(), to)));
    assert_eq!(sent.len(), 1, "one keepalive when due");
    let (keepalive, to) = sent.pop().unwrap();
    assert_eq!(to, a.addr);
    assert_eq!(
        keepalive.len(),
        wire::TRANSPORT_HEADER_LEN + wire::AEAD_TAG_LEN
    );
    let (r, _) = a.receive(&keepalive, b.addr, &mut wire, later);
    assert_eq!(r, Received::Handled);
    assert_eq!(a.tm.status(later)[0].last_received_ms, Some(0));
    assert_eq!(b.tm.status(later)[0].stats.keepalives_sent, 1);
    // One keepalive per data received, not one per tick.
    b.tm.tick(later + limits.keepalive_after, &mut |d, to| {
        sent.push((d.to_vec(), to))
    });
    assert!(sent.is_empty());
}

#[test]
fn a_peer_that_roamed_and_fell_silent_is_looked_for_at_its_lighthouse_endpoint() {
    let (mut a, mut b, mut wire, now) = established();
    let limits = Limits::default();
    // B moves to a new address (its packets are authentic, so A follows it)...
    let home = b.addr;
    b.addr = SocketAddr::from(([192, 0, 2, 99], 4800));
    b.send_packet(&a, b"from my new address", &mut wire, now);
    pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(a.tm.status(now)[0].endpoint, b.addr);
    // ...and falls silent there. A keeps sending (into the void); the lighthouse still says
    // B is at home.
    let t = now + Duration::from_secs(1);
    b.addr = home;
    a.send_packet(&b, b"anyone?", &mut wire, t);
    wire.clear();
    let mut sent = Vec::new();
    a.tm.tick(
        t + limits.dead_after - Duration::from_millis(1),
        &mut |d, to| sent.push((d.to_vec(), to)),
    );
    assert!(sent.is_empty(), "not presumed dead early");
    let dead = t + limits.dead_after;
    a.tm.tick(dead, &mut |d, to| sent.push((d.to_vec(), to)));
    assert_eq!(sent.len(), 1, "a new handshake");
    let (init, to) = sent.pop().unwrap();
    assert_eq!(init.len(), INIT_LEN);
    assert_eq!(to, home, "sent where the lighthouse says B is");
    assert_eq!(a.tm.status(dead)[0].stats.presumed_dead, 1);
    // B is back home and answers; traffic flows there again.
    wire.push_back((init, a.addr, home));
    pump(&mut a, &mut b, &mut wire, dead);
    a.send_packet(&b, b"found you", &mut wire, dead);
    let (_, got) = pump(&mut a, &mut b, &mut wire, dead);
    assert_eq!(got, vec![b"found you".to_vec()]);
    assert_eq!(a.tm.status(dead)[0].endpoint, home);
}

#[test]
fn a_dead_peer_is_given_up_and_costs_nothing_after() {
    let (mut a, b, mut wire, now) = established();
    let limits = Limits::default();
    a.send_packet(&b, b"are you there", &mut wire, now);
    wire.clear(); // B is gone for good
    let mut attempts = 0;
    let mut t = now;
    let end = now + limits.dead_after + limits.give_up_after + Duration::from_secs(60);
    let mut given_up_at = None;
    while t < end {
        t += Duration::from_millis(100);
        a.tm.tick(t, &mut |_, _| attempts += 1);
        if given_up_at.is_none() && a.tm.status(t)[0].stats.given_up == 1 {
            given_up_at = Some(t);
        }
    }
    let given_up_at = given_up_at.expect("the peer was never given up");
    let after = given_up_at.duration_since(now);
    assert!(
        after >= limits.dead_after + limits.give_up_after
            && after <= limits.dead_after + limits.give_up_after + limits.handshake_retry_max,
        "given up after {after:?}"
    );
    assert!(attempts < 30, "{attempts} handshakes to a dead peer");
    let status = &a.tm.status(t)[0];
    assert_eq!((status.sessions, status.queued), (0, 0));
    assert!(!status.handshake_in_flight);
    assert_eq!(a.tm.session_count(), 0);
}

#[test]
fn persistent_keepalive_keeps_an_idle_tunnel_open() {
    let every = Duration::from_secs(25);
    let limits = Limits {
        persistent_keepalive: Some(every),
        ..Limits::default()
    };
    let now = Instant::now();
    let (mut a, mut b) = (host(1, limits.clone()), host(2, Limits::default()));
    let mut wire = Wire::new();
    a.send_packet(&b, b"hello", &mut wire, now);
    pump(&mut a, &mut b, &mut wire, now);
    let mut t = now;
    let from = a.addr;
    while t < now + limits.idle_timeout * 2 {
        t += Duration::from_secs(1);
        a.tm.tick(t, &mut |d, to| wire.push_back((d.to_vec(), from, to)));
        pump(&mut a, &mut b, &mut wire, t);
    }
    // One every 25 s, and the tunnel is still there on both sides, with no packet sent.
    let expected = (limits.idle_timeout * 2).as_secs() / every.as_secs();
    let keepalives = a.tm.status(t)[0].stats.keepalives_sent;
    assert!(
        (expected..=expected + 1).contains(&keepalives),
        "{keepalives} keepalives"
    );
    assert_eq!((a.tm.peer_count(), b.tm.peer_count()), (1, 1));
    // Without it, the same quiet tunnel goes idle.
    let (mut a, _, _, now) = established();
    a.tm.tick(now + Limits::default().idle_timeout, &mut |_, _| {});
    assert_eq!(a.tm.peer_count(), 0);
}

#[test]
fn spoofed_datagrams_start_at_most_one_handshake_a_second() {
    let now = Instant::now();
    let (mut a, b) = (host(1, Limits::default()), host(2, Limits::default()));
    let key = *b.tm.public_key();
    let mut initiations = 0;
    // A datagram for an unknown session "from B" every millisecond for 3 s; B never answers
    // (the datagrams are spoofed), and A's own timers run as usual.
    let mut t = now;
    for i in 0..3000u32 {
        t = now + Duration::from_millis(i.into());
        a.tm.restart_from_outside(&key, b.addr, t, &mut |_, _| initiations += 1);
        if i % 100 == 0 {
            a.tm.tick(t, &mut |_, _| initiations += 1);
        }
    }
    // The backoff alone allows 250 ms, 500 ms, 1 s: five attempts in 3 s.
    assert!(
        initiations <= 5,
        "{initiations} handshakes in {:?}",
        t - now
    );
    assert!(initiations >= 1);
}

/// A train sealed through one [`Sealer`] arrives whole and in order; a session whose message
/// budget runs out mid-train refuses the rest, and says at the end of the train that it is due
/// for renewal.
#[test]
fn a_train_is_sealed_through_one_lookup_and_renewed_after() {
    let (mut a, mut b, mut wire, now) = established_with(Limits {
        rekey_after_messages: 5,
        reject_after_messages: 8,
        ..Limits::default()
    });

    let key = *b.tm.public_key();
    let mut sealer =
        a.tm.sealer(&key, b.addr, now)
            .expect("an established session");
    assert_eq!(sealer.endpoint(), b.addr);
    let mut sealed = Vec::new();
    for i in 0..10u32 {
        let packet = (i + 1).to_le_bytes().repeat(10);
        let mut out = vec![0u8; sealed_len(packet.len())];
        match sealer.seal(&packet, &mut out) {
            Some(len) => {
                assert_eq!(len, out.len());
                sealed.push(out);
            }
            None => break,
        }
    }
    // "hello" and the control message saying where b is seen used two of the eight.
    assert_eq!(sealed.len(), 6, "the session's budget ends the train");
    assert!(sealer.finish(), "the spent session is due for renewal");
    let handshakes = a.tm.status(now)[0].stats.handshakes_sent;
    a.tm.renew(&key, now, &mut |d, to| {
        wire.push_back((d.to_vec(), a.addr, to))
    });
    assert_eq!(a.tm.status(now)[0].stats.handshakes_sent, handshakes + 1);
    for datagram in sealed {
        wire.push_back((datagram, a.addr, b.addr));
    }
    let (_, got) = pump(&mut a, &mut b, &mut wire, now);
    let expected: Vec<Vec<u8>> = (1..=6u32).map(|i| i.to_le_bytes().repeat(10)).collect();
    assert_eq!(got, expected);
}

/// Trains handed off to other threads are sealed under counters no other packet gets: two
/// keys sealed on two threads, interleaved with a packet sealed in place, all arrive once in
/// whatever order the threads finish; a hand-off beyond the session's budget is refused.
#[test]
fn trains_handed_off_to_other_threads_never_share_a_counter() {
    let (mut a, mut b, mut wire, now) = established_with(Limits {
        reject_after_messages: 12,
        ..Limits::default()
    });

    let key = *b.tm.public_key();
    let mut sealer = a.tm.sealer(&key, b.addr, now).unwrap();
    let first = sealer.hand_off(4, 40).expect("within the budget");
    let second = sealer.hand_off(4, 40).expect("within the budget");
    let mut inline = vec![0u8; sealed_len(5)];
    sealer.seal(b"after", &mut inline).unwrap();
    assert!(sealer.hand_off(3, 30).is_none(), "1 + 4 + 4 + 1 of 12 used");
    sealer.finish();
    assert_eq!(a.tm.status(now)[0].stats.tx_packets, 1 + 4 + 4 + 1);

    let seal_on_a_thread = |mut key: SealKey, train: u8| {
        std::thread::spawn(move || {
            let mut sealed: Vec<Vec<u8>> = (0..4u8)
                .map(|i| {
                    let mut out = vec![0u8; sealed_len(10)];
                    key.seal(&[train * 10 + i; 10], &mut out).unwrap();
                    out
                })
                .collect();
            let mut spare = vec![0u8; sealed_len(10)];
            assert_eq!(key.seal(&[0; 10], &mut spare), None, "four counters only");
            // Finish in reverse, as a slow thread might.
            sealed.reverse();
            sealed
        })
    };
    let (one, two) = (seal_on_a_thread(first, 1), seal_on_a_thread(second, 2));
    let mut datagrams = two.join().unwrap();
    datagrams.push(inline);
    datagrams.extend(one.join().unwrap());
    for datagram in &datagrams {
        wire.push_back((datagram.clone(), a.addr, b.addr));
    }
    let (_, mut got) = pump(&mut a, &mut b, &mut wire, now);
    got.sort();
    let mut expected: Vec<Vec<u8>> = [1u8, 2]
        .iter()
        .flat_map(|t| (0..4u8).map(move |i| vec![t * 10 + i; 10]))
        .collect();
    expected.push(b"after".to_vec());
    expected.sort();
    assert_eq!(got, expected, "each once, whatever the order");
    for datagram in datagrams {
        wire.push_back((datagram, a.addr, b.addr));
    }
    let (_, replayed) = pump(&mut a, &mut b, &mut wire, now);
    assert!(replayed.is_empty(), "each counter is accepted once");
}

#[test]
fn each_side_learns_where_the_other_sees_it_through_a_nat() {
    let (mut a, mut b, mut wire, now) = sending(b"through the nat");
    // A is behind a NAT: what it sends reaches B from `outside`, what B sends there reaches A.
    let outside = SocketAddr::from(([203, 0, 113, 9], 61000));
    let mut got_b = Vec::new();
    while let Some((d, from, to)) = wire.pop_front() {
        if to == b.addr {
            let from = if from == a.addr { outside } else { from };
            if let (Received::Data { .. }, data) = b.receive(&d, from, &mut wire, now) {
                got_b.push(data);
            }
        } else {
            assert_eq!(to, outside, "B answers where A's datagrams came from");
            let (received, _) = a.receive(&d, b.addr, &mut wire, now);
            assert!(!matches!(received, Received::Data { .. }), "A got no data");
        }
    }
    assert_eq!(
        got_b,
        vec![b"through the nat".to_vec()],
        "control is not data"
    );
    assert_eq!(a.tm.status(now)[0].seen_as, Some(outside));
    assert_eq!(b.tm.status(now)[0].seen_as, Some(b.addr));
}

#[test]
fn the_peer_is_told_once_per_session_and_again_when_it_moves() {
    let (mut a, mut b, mut wire, now) = established();
    assert_eq!(b.tm.status(now)[0].seen_as, Some(b.addr));
    let heard_from_b = |a: &Host| a.tm.status(now)[0].stats.rx_packets;
    let before = heard_from_b(&a);
    for _ in 0..3 {
        a.send_packet(&b, b"more", &mut wire, now);
    }
    pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(heard_from_b(&a), before, "B had nothing new to tell");

    // B roams; its authentic packet moves A's idea of it, and A says so.
    b.addr = SocketAddr::from(([192, 0, 2, 99], 4800));
    b.send_packet(&a, b"from elsewhere", &mut wire, now);
    pump(&mut a, &mut b, &mut wire, now);
    assert_eq!(b.tm.status(now)[0].seen_as, Some(b.addr));
}

#[test]
fn a_host_seen_through_nat_keeps_the_mapping_open_and_the_other_does_not() {
    let (mut a, mut b, mut wire, now) = sending(b"through the nat");
    a.tm.set_published_endpoint(a.addr);
    b.tm.set_published_endpoint(b.addr);
    let outside = SocketAddr::from(([203, 0, 113, 9], 61000));
    let mut t = now;
    // A is behind a NAT (its datagrams reach B from `outside`); both stay idle for 100 s.
    let end = now + Duration::from_secs(100);
    while t < end {
        while let Some((d, from, to)) = wire.pop_front() {
            if to == b.addr {
                let from = if from == a.addr { outside } else { from };
                b.receive(&d, from, &mut wire, t);
            } else {
                a.receive(&d, b.addr, &mut wire, t);
            }
        }
        t += Duration::from_secs(1);
        let (from_a, from_b) = (a.addr, b.addr);
        a.tm.tick(t, &mut |d, to| wire.push_back((d.to_vec(), from_a, to)));
        b.tm.tick(t, &mut |d, to| wire.push_back((d.to_vec(), from_b, to)));
    }
    assert_eq!(a.tm.status(t)[0].seen_as, Some(outside));
    let keepalives = |h: &Host| h.tm.status(t)[0].stats.keepalives_sent;
    // Every 25 s from A; B sends none of its own (the tunnel stays open on both sides).
    assert!(
        (4..=5).contains(&keepalives(&a)),
        "{} from A",
        keepalives(&a)
    );
    assert!(keepalives(&b) <= 1, "{} from B", keepalives(&b));
    assert_eq!((a.tm.peer_count(), b.tm.peer_count()), (1, 1));

    // With the keepalive for NAT off (an operator's own setting), the same tunnel goes idle.
    let limits = Limits {
        nat_keepalive: None,
        ..Limits::default()
    };
    let (mut a, _, _, now) = established_with(limits);
    a.tm.set_published_endpoint(SocketAddr::from(([198, 51, 100, 1], 4800)));
    a.tm.tick(now + Limits::default().idle_timeout, &mut |_, _| {});
    assert_eq!(a.tm.peer_count(), 0);
}

/// Hosts on an underlay where some sit behind a cone NAT as a Linux router with nftables
/// `masquerade` and a firewall makes one: one outside endpoint for all of the inside host's
/// datagrams, and only answers let in (from endpoints the host has written to); the rest is
/// dropped without a trace.
struct Underlay {
    hosts: Vec<Host>,
    /// Per host: its NAT's outside endpoint and whom the host has written to.
    nats: Vec<Option<(SocketAddr, std::collections::HashSet<SocketAddr>)>>,
    wire: Wire,
    dropped_by_nat: usize,
    /// Pairs of hosts between which a firewall drops everything (either way).
    walls: std::collections::HashSet<(usize, usize)>,
}

impl Underlay {
    fn new() -> Self {
        Underlay {
            hosts: Vec::new(),
            nats: Vec::new(),
            wire: Wire::new(),
            dropped_by_nat: 0,
            walls: Default::default(),
        }
    }

    /// A host, behind a NAT with this outside endpoint if `nat` is given.
    fn add(&mut self, nat: Option<SocketAddr>) -> usize {
        let n = self.hosts.len() as u8 + 1;
        self.hosts.push(host(n, Limits::default()));
        self.nats
            .push(nat.map(|outside| (outside, Default::default())));
        self.hosts.len() - 1
    }

    /// Where others reach host `i`.
    fn outside(&self, i: usize) -> SocketAddr {
        self.nats[i]
            .as_ref()
            .map_or(self.hosts[i].addr, |(o, _)| *o)
    }

    fn key(&self, i: usize) -> PublicKey {
        *self.hosts[i].tm.public_key()
    }

    /// Host `from` sends `packet` to host `to`, addressed as its entries say (its own address).
    fn send(&mut self, from: usize, to: usize, packet: &[u8], now: Instant) {
        let (key, endpoint) = (self.key(to), self.hosts[to].addr);
        let source = self.hosts[from].addr;
        let wire = &mut self.wire;
        let mut out = vec![0u8; MAX_DATAGRAM];
        self.hosts[from]
            .tm
            .encrypt_packet(&key, endpoint, packet, &mut out, now, &mut |d, dst| {
                wire.push_back((d.to_vec(), source, dst))
            })
            .unwrap();
    }

    /// Runs every host's timers at `now`.
    fn tick(&mut self, now: Instant) {
        for host in &mut self.hosts {
            let (wire, from) = (&mut self.wire, host.addr);
            host.tm
                .tick(now, &mut |d, to| wire.push_back((d.to_vec(), from, to)));
        }
    }

    /// Delivers until the wire is quiet; returns the packets each host got.
    fn pump(&mut self, now: Instant) -> Vec<Vec<Vec<u8>>> {
        let mut got = vec![Vec::new(); self.hosts.len()];
        while let Some((d, from, to)) = self.wire.pop_front() {
            let sender = self.hosts.iter().position(|h| h.addr == from).unwrap();
            if let Some((_, written_to)) = &mut self.nats[sender] {
                written_to.insert(to);
            }
            let from = self.outside(sender);
            let Some(receiver) = (0..self.hosts.len()).find(|&i| self.outside(i) == to) else {
                continue; // a private endpoint: unreachable from outside
            };
            let answer = self.nats[receiver]
                .as_ref()
                .is_none_or(|(_, written_to)| written_to.contains(&from));
            let walled = self
                .walls
                .contains(&(sender.min(receiver), sender.max(receiver)));
            if !answer || walled {
                self.dropped_by_nat += 1;
                continue;
            }
            let (received, data) = self.hosts[receiver].receive(&d, from, &mut self.wire, now);
            if let Received::Data { .. } = received {
                got[receiver].push(data);
            }
        }
        got
    }
}

#[test]
fn two_hosts_behind_cone_nats_meet_at_their_candidates_when_both_write() {
    let now = Instant::now();
    let mut net = Underlay::new();
    let a = net.add(Some(SocketAddr::from(([198, 51, 100, 1], 40001))));
    let b = net.add(Some(SocketAddr::from(([198, 51, 100, 2], 40002))));
    // Both are published at private endpoints nobody reaches; their NATs' are candidates.
    let (key_a, key_b) = (net.key(a), net.key(b));
    let (outside_a, outside_b) = (net.outside(a), net.outside(b));
    net.hosts[a]
        .tm
        .set_candidates(key_b, vec![outside_b], false);
    net.hosts[b]
        .tm
        .set_candidates(key_a, vec![outside_a], false);
    net.send(a, b, b"from a", now);
    assert_eq!(
        net.wire.iter().map(|(_, _, to)| *to).collect::<Vec<_>>(),
        [net.hosts[b].addr, outside_b],
        "one initiation, to the published endpoint and to each candidate"
    );
    // B writes to A at about the same time (its own traffic, or asked to).
    net.send(b, a, b"from b", now);
    let got = net.pump(now);
    assert!(
        net.dropped_by_nat >= 1,
        "the first initiation finds no mapping"
    );
    assert_eq!(got[b], [b"from a".to_vec()]);
    assert_eq!(got[a], [b"from b".to_vec()]);
    assert_eq!(net.hosts[a].tm.endpoint_of(&key_b), Some(outside_b));
    assert_eq!(net.hosts[b].tm.endpoint_of(&key_a), Some(outside_a));
}

#[test]
fn a_host_both_reach_introduces_two_hosts_behind_nat_and_they_punch_through() {
    let now = Instant::now();
    let mut net = Underlay::new();
    let public = net.add(None);
    let b = net.add(Some(SocketAddr::from(([198, 51, 100, 2], 40002))));
    let c = net.add(Some(SocketAddr::from(([198, 51, 100, 3], 40003))));
    // B and C each have a tunnel with the public host (they wrote first, through their NATs).
    net.send(b, public, b"b is up", now);
    net.send(c, public, b"c is up", now);
    net.pump(now);
    let (key_b, key_c) = (net.key(b), net.key(c));
    let (outside_b, outside_c) = (net.outside(b), net.outside(c));
    net.hosts[b]
        .tm
        .set_candidates(key_c, vec![outside_c], false);
    net.hosts[c]
        .tm
        .set_candidates(key_b, vec![outside_b], false);

    // Only B has something to send; C learns of it through the public host.
    net.send(b, c, b"punched", now);
    let got = net.pump(now);
    assert!(
        net.dropped_by_nat >= 1,
        "B's first initiation finds no mapping"
    );
    assert_eq!(got[c], [b"punched".to_vec()]);
    assert_eq!(net.hosts[b].tm.endpoint_of(&key_c), Some(outside_c));
    assert_eq!(net.hosts[c].tm.endpoint_of(&key_b), Some(outside_b));

    // A knock for a host that may not open tunnels here is ignored.
    let mut sent = Vec::new();
    let stranger = SocketAddr::from(([192, 0, 2, 99], 4800));
    net.hosts[c]
        .tm
        .on_knock([9; 32], stranger, now, &mut |_| false, &mut |_, to| {
            sent.push(to)
        });
    assert!(sent.is_empty(), "C wrote to {sent:?} for an unlisted host");
}

#[test]
fn observed_endpoints_are_distinct_and_newest_first() {
    let now = Instant::now();
    let mut net = Underlay::new();
    let first = SocketAddr::from(([198, 51, 100, 1], 40001));
    let a = net.add(Some(first));
    let (b, c) = (net.add(None), net.add(None));
    net.send(a, b, b"hello", now);
    net.send(a, c, b"hello", now);
    net.pump(now);
    assert_eq!(
        net.hosts[a].tm.observed_endpoints(),
        [first],
        "once, though two say so"
    );
    // A's NAT moves; C, heard from later, sees it at the new place, B still at the old.
    let moved = SocketAddr::from(([198, 51, 100, 9], 40999));
    net.nats[a].as_mut().unwrap().0 = moved;
    let later = now + Duration::from_secs(1);
    net.send(a, c, b"again", later);
    net.pump(later);
    assert_eq!(net.hosts[a].tm.observed_endpoints(), [moved, first]);
}

#[test]
fn hosts_that_cannot_reach_each_other_meet_through_a_relay_that_cannot_read_them() {
    let start = Instant::now();
    let (mut net, [relay, b, d]) = walled_off();
    net.hosts[relay].tm.serve_as_relay();
    let (key_r, key_b, key_d) = (net.key(relay), net.key(b), net.key(d));
    // Each keeps a session with the relay, unasked.
    net.tick(start);
    net.pump(start);
    assert_eq!(net.hosts[relay].tm.peer_count(), 2);

    net.send(b, d, b"through the relay", start);
    let mut t = start;
    let mut got = vec![Vec::new(); 3];
    while got[d].is_empty() && t < start + Duration::from_secs(5) {
        t += Duration::from_millis(100);
        net.tick(t);
        got = net.pump(t);
    }
    assert_eq!(got[d], [b"through the relay".to_vec()]);
    let via = |net: &Underlay, host: usize, peer: PublicKey| {
        let status = net.hosts[host].tm.status(start);
        let peer = status.iter().find(|p| p.public_key == encode_key(&peer));
        peer.and_then(|p| p.via.clone())
    };
    assert_eq!(via(&net, b, key_d), Some(encode_key(&key_r)));
    assert_eq!(via(&net, d, key_b), Some(encode_key(&key_r)));
    net.send(d, b, b"and back", t);
    assert_eq!(net.pump(t)[b], [b"and back".to_vec()]);

    // The relay passed datagrams both ways, and never had one to read.
    let passed = net.hosts[relay].tm.relayed_pairs();
    let count = |from: PublicKey, to: PublicKey| {
        passed
            .iter()
            .find(|p| p.from == encode_key(&from) && p.to == encode_key(&to))
            .map_or(0, |p| p.datagrams)
    };
    assert!(count(key_b, key_d) >= 2, "{passed:?}");
    assert!(count(key_d, key_b) >= 2, "{passed:?}");
    assert_eq!(
        net.hosts[relay].tm.peer_count(),
        2,
        "no session of its own with the pair"
    );
    assert!(got[relay].is_empty(), "the relay received no packet");
    let received: u64 = net.hosts[relay]
        .tm
        .status(t)
        .iter()
        .map(|p| p.stats.rx_bytes)
        .sum();
    let relayed: u64 = passed.iter().map(|p| p.bytes).sum();
    assert!(
        received < relayed,
        "what it passed on ({relayed} B) is not its peers' traffic to it ({received} B)"
    );

    // The firewall goes: within a probe interval the path is direct, in the same session.
    net.walls.clear();
    let handshakes = net.hosts[b]
        .tm
        .status(t)
        .iter()
        .map(|p| p.stats.handshakes_completed)
        .sum::<u64>();
    for _ in 0..2 {
        t += relay::DIRECT_PROBE_EVERY;
        net.tick(t);
        net.pump(t);
    }
    assert_eq!(via(&net, b, key_d), None);
    assert_eq!(via(&net, d, key_b), None);
    assert_eq!(net.hosts[b].tm.endpoint_of(&key_d), Some(net.outside(d)));
    let before = count_all(&net.hosts[relay].tm);
    net.send(b, d, b"direct", t);
    assert_eq!(net.pump(t)[d], [b"direct".to_vec()]);
    assert_eq!(
        count_all(&net.hosts[relay].tm),
        before,
        "nothing through the relay"
    );
    assert_eq!(
        net.hosts[b]
            .tm
            .status(t)
            .iter()
            .map(|p| p.stats.handshakes_completed)
            .sum::<u64>(),
        handshakes,
        "no new handshake"
    );
}

/// A public host and two hosts behind NATs of their own with a wall between them; B and D
/// know each other's NAT and believe the public host relays.
fn walled_off() -> (Underlay, [usize; 3]) {
    let mut net = Underlay::new();
    let public = net.add(None);
    let b = net.add(Some(SocketAddr::from(([198, 51, 100, 2], 40002))));
    let d = net.add(Some(SocketAddr::from(([198, 51, 100, 4], 40004))));
    net.walls.insert((b, d));
    let (key_r, relay_at) = (net.key(public), net.hosts[public].addr);
    for (host, other) in [(b, d), (d, b)] {
        let (key, outside) = (net.key(other), net.outside(other));
        let tm = &mut net.hosts[host].tm;
        tm.set_candidates(key_r, vec![relay_at], true);
        tm.set_candidates(key, vec![outside], false);
    }
    (net, [public, b, d])
}

fn count_all(relay: &TunnelManager) -> u64 {
    relay.relayed_pairs().iter().map(|p| p.datagrams).sum()
}

#[test]
fn only_a_relay_passes_datagrams_on_and_never_one_that_came_through_a_relay() {
    let start = Instant::now();
    // B and D believe the host relays; it does not serve as one.
    let (mut net, [not_a_relay, b, d]) = walled_off();
    net.tick(start);
    net.pump(start);
    net.send(b, d, b"nobody passes this on", start);
    let mut t = start;
    for _ in 0..30 {
        t += Duration::from_millis(100);
        net.tick(t);
        assert!(net.pump(t)[d].is_empty());
    }
    assert!(net.hosts[not_a_relay].tm.relayed_pairs().is_empty());
}
