//! The cipher's own ceiling: how fast the AEAD that carries Flatnet's packets seals and opens
//! on one core, at the sizes the data plane seals (a 1,408-byte packet under the default MTU,
//! and snow's largest message). Every byte across a tunnel is sealed once on one host and
//! opened once on the other, so the cipher alone allows
//! `1 / (1 / seal + 1 / open)` Gbit per CPU-second; `make bench-anchors` prints the tunnels'
//! Gbit per CPU-second as a share of that.
//!
//! Measured through snow's transport state as the data plane uses it (`write_message` /
//! `read_message` with an explicit counter, snow's default resolver: ring's ChaCha20-Poly1305
//! where the crate has it), and, beside it, RustCrypto's `chacha20poly1305` in place.
//!
//! `cargo bench --bench cipher_ceiling [-- --json]`: a table, or one JSON object per line.

use std::hint::black_box;

#[path = "rate.rs"]
mod rate;
use rate::rate;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const SIZES: [usize; 2] = [1408, 65_535 - 16];
const TAG: usize = 16;

struct Figure {
    implementation: &'static str,
    size: usize,
    seal_gbps: f64,
    open_gbps: f64,
}

impl Figure {
    /// Gbit of plaintext per CPU-second when each byte is sealed once and opened once.
    fn ceiling(&self) -> f64 {
        1.0 / (1.0 / self.seal_gbps + 1.0 / self.open_gbps)
    }
}

/// Two ends of a session in stateless transport mode, as the tunnels hold them.
fn snow_pair() -> (snow::StatelessTransportState, snow::StatelessTransportState) {
    let params: snow::params::NoiseParams = "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
    let mut initiator = snow::Builder::new(params.clone())
        .build_initiator()
        .unwrap();
    let mut responder = snow::Builder::new(params).build_responder().unwrap();
    let mut message = [0u8; 128];
    let mut payload = [0u8; 128];
    let len = initiator.write_message(&[], &mut message).unwrap();
    responder
        .read_message(&message[..len], &mut payload)
        .unwrap();
    let len = responder.write_message(&[], &mut message).unwrap();
    initiator
        .read_message(&message[..len], &mut payload)
        .unwrap();
    (
        initiator.into_stateless_transport_mode().unwrap(),
        responder.into_stateless_transport_mode().unwrap(),
    )
}

fn snow_figure(size: usize) -> Figure {
    let (sender, receiver) = snow_pair();
    let plaintext = vec![0x5a; size];
    let mut sealed = vec![0u8; size + TAG];
    let seal_gbps = rate(size, |counter| {
        let len = sender
            .write_message(counter, &plaintext, &mut sealed)
            .unwrap();
        black_box(len);
    });
    // One datagram opened over and over: the counter check is the tunnel's, not snow's.
    sender.write_message(7, &plaintext, &mut sealed).unwrap();
    let mut opened = vec![0u8; size];
    let open_gbps = rate(size, |_| {
        let len = receiver.read_message(7, &sealed, &mut opened).unwrap();
        black_box(len);
    });
    Figure {
        implementation: "snow (ring)",
        size,
        seal_gbps,
        open_gbps,
    }
}

fn rustcrypto_figure(size: usize) -> Figure {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32]));
    let nonce_of = |counter: u64| {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        nonce
    };
    let mut buffer = vec![0x5a; size];
    let seal_gbps = rate(size, |counter| {
        let nonce = nonce_of(counter);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut buffer)
            .unwrap();
        black_box(tag);
    });
    let plaintext = vec![0x5a; size];
    let mut sealed = plaintext.clone();
    let nonce = nonce_of(7);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut sealed)
        .unwrap();
    let mut opened = sealed.clone();
    let open_gbps = rate(size, |_| {
        // Decrypting in place consumes the ciphertext: start each time from the sealed copy.
        opened.copy_from_slice(&sealed);
        cipher
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut opened, &tag)
            .unwrap();
    });
    assert_eq!(opened, plaintext);
    Figure {
        implementation: "RustCrypto chacha20poly1305",
        size,
        seal_gbps,
        open_gbps,
    }
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    if !json {
        println!(
            "{:<30} {:>8} {:>12} {:>12} {:>22}",
            "implementation", "bytes", "seal Gbit/s", "open Gbit/s", "ceiling Gbit per CPU-s"
        );
    }
    for size in SIZES {
        for figure in [snow_figure(size), rustcrypto_figure(size)] {
            if json {
                println!(
                    "{{\"implementation\": \"{}\", \"size\": {}, \"seal_gbps\": {:.3}, \
                     \"open_gbps\": {:.3}, \"ceiling_gbit_per_cpu_s\": {:.3}}}",
                    figure.implementation,
                    figure.size,
                    figure.seal_gbps,
                    figure.open_gbps,
                    figure.ceiling()
                );
            } else {
                println!(
                    "{:<30} {:>8} {:>12.2} {:>12.2} {:>22.2}",
                    figure.implementation,
                    figure.size,
                    figure.seal_gbps,
                    figure.open_gbps,
                    figure.ceiling()
                );
            }
        }
    }
}
