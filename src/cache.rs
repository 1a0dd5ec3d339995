//! Bounded time-to-live caches keyed by a hash of the token (never the token itself).
//!
//! Bounded in entries and in bytes: when an insert would exceed either, expired entries go
//! first, then the oldest. Time is passed in (milliseconds); the cache never reads a clock.
//!
//! Two kinds of key:
//! - [`Key`], SHA-256 of provider and token: the same in every VM, for answers shared through
//!   Envoy's shared data (introspection);
//! - [`TokenKey`], keyed SipHash-2-4 with 128-bit output under a secret drawn at random by each
//!   VM: for the per-VM verified-token cache, whose lookups are on every request's path. A JWT
//!   is several hundred bytes, and SHA-256 of it in Wasm cost about 25,000 instructions per
//!   request (callgrind); SipHash costs a tenth of that. Without the secret nobody can aim a
//!   token at another token's key, and 128 bits make accidental collisions negligible.

use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// A cache key shared across VMs: SHA-256 of the provider name and the token.
pub type Key = [u8; 32];

/// A per-VM cache key: keyed SipHash-2-4-128 of the provider name and the token.
pub type TokenKey = u128;

/// Hashes a [`TokenKey`] for the cache's table by folding its words: the key is a keyed MAC
/// already, uniform and unknown outside the process, so hashing it again (SipHash-1-3, the
/// standard table's default) cost each lookup about 150 instructions for nothing. Only for
/// secret keys: [`Key`], an unkeyed SHA-256 anyone can compute, keeps the default hasher.
#[derive(Debug, Clone, Copy, Default)]
pub struct MacHasher(u64);

impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for a u128; any other input still gets every byte folded in.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(29);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 ^= (key as u64) ^ ((key >> 64) as u64);
    }
}

/// The secret of a VM's [`TokenKey`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secret(pub u64, pub u64);

impl Secret {
    /// The key of `token` for `provider`.
    pub fn key(self, provider: &str, token: &str) -> TokenKey {
        let mut h = SipHasher24::new_with_keys(self.0, self.1);
        h.write(provider.as_bytes());
        h.write(&[0]);
        h.write(token.as_bytes());
        h.finish128().as_u128()
    }
}

/// The key of `token` for `provider`.
pub fn key(provider: &str, token: &str) -> Key {
    let mut h = Sha256::new();
    h.update(provider.as_bytes());
    h.update([0u8]);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// The bytes a cached set of claims accounts for: a fixed overhead plus, for every value, its
/// strings and a fixed cost (what it holds in memory, roughly; never less than its JSON text
/// without escapes). Computed without serializing: it runs for every token verified.
pub fn json_size(claims: &serde_json::Map<String, serde_json::Value>) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        use serde_json::Value::{Array, Object, String};
        16 + match v {
            String(s) => s.len(),
            Array(items) => items.iter().map(value).sum(),
            Object(members) => members.iter().map(|(k, v)| 16 + k.len() + value(v)).sum(),
            _ => 8,
        }
    }
    64 + claims
        .iter()
        .map(|(k, v)| 16 + k.len() + value(v))
        .sum::<usize>()
}

/// Lower-case hex of a key (for shared-data entries).
pub fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

struct Entry<V> {
    value: V,
    expires_at: u64,
    size: usize,
    seq: u64,
}

/// The most verified tokens a shell remembers (per VM in Wasm, per configuration natively), and
/// their bytes.
pub const VERIFIED_ENTRIES: usize = 10_000;
pub const VERIFIED_BYTES: usize = 16 * 1024 * 1024;

pub struct TtlCache<V, K = Key, S = RandomState> {
    entries: HashMap<K, Entry<V>, S>,
    /// Insertion order, for eviction; stale rows (re-inserted keys) are skipped.
    order: VecDeque<(K, u64)>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    seq: u64,
    /// When expired entries may next be swept out (ms).
    next_sweep: u64,
}

/// The least time between two sweeps of expired entries.
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// The verified-token cache: claims by [`TokenKey`].
pub type VerifiedCache<V> = TtlCache<V, TokenKey, BuildHasherDefault<MacHasher>>;

impl<V, K: Hash + Eq + Copy> TtlCache<V, K> {
    pub fn new(max_entries: usize, max_bytes: usize) -> TtlCache<V, K> {
        TtlCache::bounded(max_entries, max_bytes)
    }
}

impl<V, K: Hash + Eq + Copy, S: BuildHasher + Default> TtlCache<V, K, S> {
    /// An empty cache of at most `max_entries` entries and `max_bytes` bytes, with the table
    /// hasher `S`.
    pub fn bounded(max_entries: usize, max_bytes: usize) -> TtlCache<V, K, S> {
        TtlCache {
            entries: HashMap::default(),
            order: VecDeque::new(),
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
            seq: 0,
            next_sweep: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The live value of `key` at `now`; an expired entry is dropped.
    pub fn get(&mut self, key: &K, now: u64) -> Option<&V> {
        if self.entries.get(key).is_some_and(|e| e.expires_at <= now) {
            self.remove(key);
            return None;
        }
        self.entries.get(key).map(|e| &e.value)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// The live value of `key` at `now`, leaving expired entries for the next insert to drop.
    pub fn peek(&self, key: &K, now: u64) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| &e.value)
    }

    fn remove(&mut self, key: &K) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.size;
        }
    }

    /// Stores `value` (about `size` bytes) until `expires_at`; the number of entries evicted to
    /// make room (oldest first, after expired ones when a sweep is due). A value larger than the
    /// whole byte budget is not stored.
    pub fn insert(&mut self, key: K, value: V, size: usize, expires_at: u64, now: u64) -> usize {
        if expires_at <= now || size > self.max_bytes {
            return 0;
        }
        self.remove(&key);
        let mut evicted = 0;
        let full = self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes;
        // Dropping expired entries walks the whole cache: at most once a second, not on every
        // insert into a full cache (a stream of new tokens would pay for it every time).
        if full && now >= self.next_sweep {
            self.entries.retain(|_, e| e.expires_at > now);
            self.bytes = self.entries.values().map(|e| e.size).sum();
            self.next_sweep = now.saturating_add(SWEEP_INTERVAL_MS);
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.seq == seq) {
                self.remove(&old);
                evicted += 1;
            }
        }
        self.seq += 1;
        self.order.push_back((key, self.seq));
        // Keep the order queue from growing without bound under re-inserts.
        if self.order.len() > 2 * self.max_entries + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
        }
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                value,
                expires_at,
                size,
                seq: self.seq,
            },
        );
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> Key {
        [n; 32]
    }

    #[test]
    fn the_verified_cache_tells_keys_apart_by_all_their_bits() {
        let mut c: VerifiedCache<u8> = VerifiedCache::bounded(10, 1000);
        let keys = [1u128, 1 << 64, (1 << 64) | 1, u128::MAX, 0];
        for (i, k) in keys.iter().enumerate() {
            c.insert(*k, i as u8, 1, 100, 0);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(c.peek(k, 1), Some(&(i as u8)));
        }
        assert_eq!(c.peek(&2, 1), None);
    }

    #[test]
    fn expiry() {
        let mut c = TtlCache::new(10, 1000);
        c.insert(k(1), "a", 10, 100, 0);
        assert_eq!(c.get(&k(1), 99), Some(&"a"));
        assert_eq!(c.peek(&k(1), 99), Some(&"a"));
        assert_eq!(c.peek(&k(1), 100), None);
        assert_eq!(c.get(&k(1), 100), None);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert_eq!(
            c.insert(k(2), "b", 10, 50, 50),
            0,
            "already expired: not stored"
        );
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let mut c = TtlCache::new(3, 100);
        for i in 0..3 {
            assert_eq!(c.insert(k(i), i, 10, 1000, 0), 0);
        }
        assert_eq!(c.insert(k(3), 3, 10, 1000, 0), 1, "oldest evicted");
        assert_eq!(c.get(&k(0), 1), None);
        assert_eq!(c.get(&k(3), 1), Some(&3));
        assert_eq!(
            c.insert(k(4), 4, 90, 1000, 0),
            2,
            "bytes bound: 30 + 90 > 100"
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 100);
        assert_eq!(c.insert(k(5), 5, 101, 1000, 0), 0, "larger than the budget");
        assert_eq!(c.get(&k(5), 1), None);
        // Expired entries go before live ones.
        let mut c = TtlCache::new(2, 100);
        c.insert(k(1), 1, 10, 1000, 0);
        c.insert(k(2), 2, 10, 10, 0);
        assert_eq!(c.insert(k(3), 3, 10, 1000, 20), 0);
        assert_eq!(c.get(&k(1), 21), Some(&1));
    }

    #[test]
    fn expired_entries_are_swept_at_most_once_a_second() {
        let mut c = TtlCache::new(2, 1000);
        c.insert(k(1), 1, 10, 10_000, 0);
        c.insert(k(2), 2, 10, 50, 0);
        // Full at 100: the first sweep drops the expired k(2), so the live k(1) stays.
        assert_eq!(c.insert(k(3), 3, 10, 10_000, 100), 0);
        assert_eq!(c.peek(&k(1), 100), Some(&1));
        // Full again within the second: no sweep, the oldest (k(1)) goes.
        assert_eq!(c.insert(k(4), 4, 10, 150, 100), 1);
        assert_eq!(c.peek(&k(1), 100), None);
        // At 200 k(4) has expired but no sweep is due yet: the oldest live entry, k(3), goes.
        assert_eq!(c.insert(k(5), 5, 10, 10_000, 200), 1);
        assert_eq!(c.peek(&k(3), 200), None);
        // After the interval, the expired k(4) is swept instead of the live k(5).
        assert_eq!(c.insert(k(6), 6, 10, 10_000, 1_200), 0);
        assert_eq!(c.peek(&k(5), 1_200), Some(&5));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn reinserts_and_many_distinct_keys_stay_bounded() {
        let mut c = TtlCache::new(100, 10_000);
        for i in 0..100_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            c.insert(key, i, 50, u64::MAX, 0);
            c.insert(k(7), 0, 50, u64::MAX, 0);
            assert!(c.len() <= 100 && c.bytes() <= 10_000);
        }
        assert!(c.order.len() <= 2 * 100 + 16);
    }

    #[test]
    fn json_size_covers_the_text() {
        let serde_json::Value::Object(claims) = serde_json::json!({
            "sub": "alice", "n": 12345678901234567u64, "roles": ["a", "b"],
            "nested": {"k": [1, 2, {"deep": "x".repeat(100)}]}, "t": true, "z": null
        }) else {
            unreachable!()
        };
        let text = serde_json::to_vec(&claims).unwrap().len();
        assert!(
            json_size(&claims) >= text,
            "{} < {text}",
            json_size(&claims)
        );
        assert!(json_size(&serde_json::Map::new()) > 0);
    }

    #[test]
    fn keys_hash_provider_and_token() {
        assert_ne!(key("a", "tok"), key("b", "tok"));
        assert_ne!(key("a", "tok"), key("a", "tok2"));
        assert_eq!(hex(&key("a", "t")).len(), 64);
        let s = Secret(1, 2);
        assert_eq!(s.key("a", "tok"), s.key("a", "tok"));
        assert_ne!(s.key("a", "tok"), s.key("b", "tok"));
        assert_ne!(s.key("a", "tok"), s.key("a", "tok2"));
        // The separator keeps (provider, token) pairs apart.
        assert_ne!(s.key("ab", "c"), s.key("a", "bc"));
        assert_ne!(s.key("a", "tok"), Secret(1, 3).key("a", "tok"));
    }

    #[test]
    fn siphash_2_4_128_reference_vector() {
        // The SipHash reference implementation's first 128-bit vector: key 00..0f, no input.
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let expected = [
            0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
            0x02, 0x93,
        ];
        assert_eq!(
            SipHasher24::new_with_keys(k0, k1).finish128().as_bytes(),
            expected
        );
    }
}
