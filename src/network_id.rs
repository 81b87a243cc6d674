//! Network identifiers: the number each tunnelled packet carries to say which network it
//! belongs to (networks may share a subnet on one host, so the address alone does not tell).
//!
//! A name is not enough: hashing names into 32 bits merges two networks whose names collide.
//! Each network name is therefore allotted an identifier once, checking that no other name
//! holds it, and every host uses the allotted one: the file lighthouse allots them in its file
//! (one trust domain), the network CA in the certificates it signs (on etcd, where hosts do not
//! trust each other). The first candidate is the name's FNV-1a hash, so a network keeps the tag
//! it had before identifiers were allotted; on a collision the next free number is taken.

/// A network's identifier on the wire (never 0: 0 marks a record written before identifiers).
pub type NetworkId = u32;

/// FNV-1a, 32 bits: a short, stable hash of a name.
pub fn fnv1a(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The identifiers to try for a name, in order: its hash, then the numbers after it.
pub fn candidates(name: &str) -> impl Iterator<Item = NetworkId> {
    let first = fnv1a(name);
    (0..=u32::MAX)
        .map(move |step| first.wrapping_add(step))
        .filter(|&id| id != 0)
}

/// The identifier a name has without an allotment: its hash (never 0).
pub fn derived(name: &str) -> NetworkId {
    fnv1a(name).max(1)
}

/// The identifier of a record that carries none (written by a Flatnet that did not allot
/// them): the hash every host used then.
pub fn or_legacy(id: NetworkId, name: &str) -> NetworkId {
    if id != 0 {
        id
    } else {
        derived(name)
    }
}

/// How many taken candidates an allotment steps over before giving up: collisions are rare,
/// a long run of them means something writes identifiers it should not.
pub const MAX_PROBES: usize = 64;

/// Two names whose FNV-1a hashes collide, found by searching: what the tests use to show that
/// colliding names still get identifiers of their own.
pub fn colliding_names(prefix: &str) -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0u64.. {
        let name = format!("{prefix}{i:x}");
        if let Some(other) = seen.insert(fnv1a(&name), name.clone()) {
            return (other, name);
        }
    }
    unreachable!("a 32-bit hash collides within 2^32 + 1 names")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_candidate_is_the_names_hash_and_zero_is_skipped() {
        assert_eq!(candidates("flatnet").next(), Some(fnv1a("flatnet")));
        let (a, b) = colliding_names("net-");
        assert_ne!(a, b);
        assert_eq!(fnv1a(&a), fnv1a(&b));
        assert!(candidates(&a).take(1000).all(|id| id != 0));
        assert_eq!(or_legacy(7, &a), 7);
        assert_eq!(or_legacy(0, &a), fnv1a(&a));
    }
}
