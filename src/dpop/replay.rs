//! The DPoP replay store (RFC 9449 §11.1): every proof's `jti` is remembered, across every
//! worker, until the proof is too old to be accepted anyway, so that no proof passes twice.
//!
//! The store is bounded: [`SLOTS`] slots of at most [`PER_SLOT`] entries, each entry a keyed
//! hash of the key's thumbprint and the `jti` with the second it may be forgotten. A shell keeps
//! the slots where all its workers see them (proxy-wasm shared data, process memory) and
//! implements [`Slots`]; what goes in a slot is decided here, once.

use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// The number of slots.
pub const SLOTS: usize = 1024;
/// The most entries a slot keeps: the store remembers at most `SLOTS * PER_SLOT` proofs (about
/// 262,000: some 2,000 DPoP requests a second under the default 60 s `max_age` and 60 s skew).
pub const PER_SLOT: usize = 256;
/// An entry: the key (8 bytes) and the second it expires (8 bytes), little-endian.
const ENTRY: usize = 16;

/// The description of the 503 when a proof cannot be recorded.
pub const FULL: &str = "The DPoP replay store cannot take the proof";

/// A proof to remember: its key and the second after which it may be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    pub key: u64,
    pub until: u64,
}

/// What recording a proof found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Never seen: it is remembered now.
    First,
    /// Seen before, and still remembered.
    Replayed,
    /// Its slot is full of proofs still remembered, or the store could not be written: the
    /// request cannot be shown to be no replay, so it is refused (503).
    Full,
}

/// The key of a proof: SipHash-2-4, keyed with the secret every worker shares, of the proof
/// key's thumbprint and the `jti` (two clients may pick the same `jti`).
pub fn key(secret: &[u8; 32], thumbprint: &str, jti: &str) -> u64 {
    let mut k = [0u8; 16];
    k.copy_from_slice(&secret[16..]);
    let mut h = SipHasher24::new_with_key(&k);
    h.write(thumbprint.as_bytes());
    h.write_u8(0);
    h.write(jti.as_bytes());
    h.finish()
}

/// The slot a key lives in.
pub fn slot_of(key: u64) -> usize {
    (key >> 32) as usize % SLOTS
}

/// A slot's bytes after recording `proof` at `now` (seconds): expired entries dropped, the
/// proof added; `None` (and what was found) when the slot is to stay as it is.
pub fn record(slot: &[u8], proof: Use, now: u64) -> (Recorded, Option<Vec<u8>>) {
    let mut kept = Vec::with_capacity(slot.len() + ENTRY);
    for entry in slot.chunks_exact(ENTRY) {
        let (key, until) = entry.split_at(8);
        let key = u64::from_le_bytes(key.try_into().unwrap_or_default());
        let until = u64::from_le_bytes(until.try_into().unwrap_or_default());
        if until < now {
            continue;
        }
        if key == proof.key {
            return (Recorded::Replayed, None);
        }
        kept.extend_from_slice(entry);
    }
    if kept.len() / ENTRY >= PER_SLOT {
        return (Recorded::Full, None);
    }
    kept.extend_from_slice(&proof.key.to_le_bytes());
    kept.extend_from_slice(&proof.until.to_le_bytes());
    (Recorded::First, Some(kept))
}

/// Where a shell keeps the slots.
pub trait Slots {
    /// Runs `change` on slot `slot`'s bytes (empty when new) and stores what it gives back, as
    /// one atomic step for every worker; false when the slot could not be read or written.
    fn update(&self, slot: usize, change: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> bool;
}

/// Records each of `proofs` in `slots` at `now`: [`Recorded::First`] only if every one is new
/// (one request's proofs are all recorded, or the request refused).
pub fn first_use(slots: &dyn Slots, proofs: &[Use], now: u64) -> Recorded {
    for proof in proofs {
        let mut found = Recorded::Full;
        let stored = slots.update(slot_of(proof.key), &mut |bytes| {
            let (outcome, new) = record(bytes, *proof, now);
            found = outcome;
            new
        });
        match (stored, found) {
            (true, Recorded::First) => {}
            (true, other) => return other,
            (false, _) => return Recorded::Full,
        }
    }
    Recorded::First
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Slots in a vector, as one worker would see them.
    struct Local(RefCell<Vec<Vec<u8>>>);

    impl Slots for Local {
        fn update(&self, slot: usize, change: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> bool {
            let mut slots = self.0.borrow_mut();
            if let Some(new) = change(&slots[slot]) {
                slots[slot] = new;
            }
            true
        }
    }

    #[test]
    fn a_proof_passes_once_until_it_expires() {
        let slots = Local(RefCell::new(vec![Vec::new(); SLOTS]));
        let secret = [3u8; 32];
        let a = Use {
            key: key(&secret, "thumb", "jti-1"),
            until: 1_000,
        };
        let b = Use {
            key: key(&secret, "other-thumb", "jti-1"),
            until: 1_000,
        };
        assert_ne!(a.key, b.key);
        assert_eq!(first_use(&slots, &[a], 900), Recorded::First);
        assert_eq!(first_use(&slots, &[a], 950), Recorded::Replayed);
        assert_eq!(first_use(&slots, &[b], 950), Recorded::First);
        // Past `until`, the entry is dropped (the proof is too old to pass anyway).
        assert_eq!(first_use(&slots, &[a], 1_001), Recorded::First);
    }

    #[test]
    fn a_full_slot_refuses_until_entries_expire() {
        let mut slot = Vec::new();
        for k in 0..PER_SLOT as u64 {
            let (outcome, new) = record(&slot, Use { key: k, until: 100 }, 50);
            assert_eq!(outcome, Recorded::First);
            slot = new.unwrap();
        }
        let next = Use {
            key: 9_999,
            until: 200,
        };
        assert_eq!(record(&slot, next, 60).0, Recorded::Full);
        let (outcome, new) = record(&slot, next, 101);
        assert_eq!(outcome, Recorded::First);
        assert_eq!(new.unwrap().len(), ENTRY);
        // Bytes of another shape are read as far as they go.
        assert_eq!(record(&[1, 2, 3], next, 0).0, Recorded::First);
    }
}
