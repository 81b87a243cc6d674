//! ChaCha20-Poly1305 from each maintained implementation available as a crate, sealing and
//! opening in place on one core at the sizes Flatnet seals (1,408 bytes, 64 KiB): ring (what
//! snow runs for the tunnels today), aws-lc-rs, the `openssl` crate over the system's OpenSSL,
//! and RustCrypto's `chacha20poly1305`. Each picks its code path by the CPU's features at run
//! time. One JSON object per line with `--json`, else a table.

use std::hint::black_box;

#[path = "../../rate.rs"]
mod rate;
use rate::rate;

const SIZES: [usize; 2] = [1408, 65_536];
const TAG: usize = 16;
const KEY: [u8; 32] = [7; 32];

/// One implementation: seals `data` in place under `counter` (returning the tag), and opens
/// `data` + `tag` in place, true when authentic.
trait Aead {
    fn name(&self) -> &'static str;
    fn seal(&self, counter: u64, data: &mut [u8]) -> [u8; TAG];
    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG]) -> bool;
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

struct Ring(ring::aead::LessSafeKey);

impl Aead for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }
    fn seal(&self, counter: u64, data: &mut [u8]) -> [u8; TAG] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), data);
        tag.unwrap().as_ref().try_into().unwrap()
    }
    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG]) -> bool {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce(counter));
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(nonce, ring::aead::Aad::empty(), tag, data, 0..)
            .is_ok()
    }
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl Aead for AwsLc {
    fn name(&self) -> &'static str {
        "aws-lc-rs"
    }
    fn seal(&self, counter: u64, data: &mut [u8]) -> [u8; TAG] {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), data);
        tag.unwrap().as_ref().try_into().unwrap()
    }
    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG]) -> bool {
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(counter));
        self.0
            .open_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::empty(), tag, data)
            .is_ok()
    }
}

/// One cipher context, keyed once and given each packet's nonce, as a data plane would hold it.
struct OpenSsl(std::cell::RefCell<openssl::cipher_ctx::CipherCtx>);

impl OpenSsl {
    fn new() -> OpenSsl {
        let mut ctx = openssl::cipher_ctx::CipherCtx::new().unwrap();
        let cipher = openssl::cipher::Cipher::chacha20_poly1305();
        ctx.encrypt_init(Some(cipher), Some(&KEY), None).unwrap();
        OpenSsl(std::cell::RefCell::new(ctx))
    }
}

impl Aead for OpenSsl {
    fn name(&self) -> &'static str {
        "openssl"
    }
    fn seal(&self, counter: u64, data: &mut [u8]) -> [u8; TAG] {
        let mut ctx = self.0.borrow_mut();
        ctx.encrypt_init(None, None, Some(&nonce(counter))).unwrap();
        let len = data.len();
        ctx.cipher_update_inplace(data, len).unwrap();
        ctx.cipher_final(&mut []).unwrap();
        let mut tag = [0u8; TAG];
        ctx.tag(&mut tag).unwrap();
        tag
    }
    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG]) -> bool {
        let mut ctx = self.0.borrow_mut();
        ctx.decrypt_init(None, None, Some(&nonce(counter))).unwrap();
        ctx.set_tag(tag).unwrap();
        let len = data.len();
        ctx.cipher_update_inplace(data, len).unwrap();
        ctx.cipher_final(&mut []).is_ok()
    }
}

struct RustCrypto(chacha20poly1305::ChaCha20Poly1305);

impl Aead for RustCrypto {
    fn name(&self) -> &'static str {
        "RustCrypto chacha20poly1305"
    }
    fn seal(&self, counter: u64, data: &mut [u8]) -> [u8; TAG] {
        use chacha20poly1305::aead::AeadInPlace;
        let nonce = nonce(counter);
        let tag = self.0.encrypt_in_place_detached((&nonce).into(), &[], data);
        tag.unwrap().into()
    }
    fn open(&self, counter: u64, data: &mut [u8], tag: &[u8; TAG]) -> bool {
        use chacha20poly1305::aead::AeadInPlace;
        let nonce = nonce(counter);
        self.0
            .decrypt_in_place_detached((&nonce).into(), &[], data, tag.into())
            .is_ok()
    }
}

/// Seal and open rates of `aead` at `size`; every open is checked against the plaintext once.
fn measure(aead: &dyn Aead, size: usize) -> (f64, f64) {
    let plaintext = vec![0x5a; size];
    let mut buffer = plaintext.clone();
    let seal = rate(size, |counter| {
        black_box(aead.seal(counter, &mut buffer));
    });
    // Opening in place consumes the ciphertext: each round opens a fresh copy, and the copy's
    // cost (a memcpy, tens of Gbit/s) is left in; the same for every implementation.
    let mut sealed = plaintext.clone();
    let tag = aead.seal(7, &mut sealed);
    let mut opened = sealed.clone();
    assert!(
        aead.open(7, &mut opened, &tag),
        "{} refused its own seal",
        aead.name()
    );
    assert_eq!(opened, plaintext, "{} opened something else", aead.name());
    let open = rate(size, |_| {
        opened.copy_from_slice(&sealed);
        assert!(aead.open(7, &mut opened, &tag));
    });
    (seal, open)
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let implementations: Vec<Box<dyn Aead>> = vec![
        Box::new(Ring(ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &KEY).unwrap(),
        ))),
        Box::new(AwsLc(aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::CHACHA20_POLY1305, &KEY).unwrap(),
        ))),
        Box::new(OpenSsl::new()),
        Box::new(RustCrypto(chacha20poly1305::KeyInit::new((&KEY).into()))),
    ];
    if !json {
        println!(
            "{:<30} {:>7} {:>12} {:>12} {:>24}",
            "implementation", "bytes", "seal Gbit/s", "open Gbit/s", "ceiling Gbit per CPU-s"
        );
    }
    for size in SIZES {
        for aead in &implementations {
            let (seal, open) = measure(aead.as_ref(), size);
            let ceiling = 1.0 / (1.0 / seal + 1.0 / open);
            if json {
                println!(
                    "{{\"implementation\": \"{}\", \"size\": {size}, \"seal_gbps\": {seal:.3}, \
                     \"open_gbps\": {open:.3}, \"ceiling_gbit_per_cpu_s\": {ceiling:.3}}}",
                    aead.name()
                );
            } else {
                println!(
                    "{:<30} {size:>7} {seal:>12.2} {open:>12.2} {ceiling:>24.2}",
                    aead.name()
                );
            }
        }
    }
}
