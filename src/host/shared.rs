//! Proxy-wasm shared data: one record and one [`Lease`] per remote provider (its key set) and per
//! upstream client (its token), shared by every VM with the same `vm_id` in this Envoy, updated
//! with compare-and-swap.

use super::abi::{self, Status};
use crate::remote::Lease;

/// A record kept in shared data.
pub trait Shared {
    fn to_bytes(&self) -> Vec<u8>;
    /// Anything unreadable reads as the empty record.
    fn from_bytes(bytes: &[u8]) -> Self;
}

impl Shared for crate::remote::Record {
    fn to_bytes(&self) -> Vec<u8> {
        crate::remote::Record::to_bytes(self)
    }
    fn from_bytes(bytes: &[u8]) -> Self {
        crate::remote::Record::from_bytes(bytes)
    }
}

impl Shared for crate::credentials::Record {
    fn to_bytes(&self) -> Vec<u8> {
        crate::credentials::Record::to_bytes(self)
    }
    fn from_bytes(bytes: &[u8]) -> Self {
        crate::credentials::Record::from_bytes(bytes)
    }
}

/// The shared-data keys of one record and its lease: `kind` (`jwks`, `upstream`), a name, and a
/// `tag` that tells apart entries of the same name in different filter configurations (it
/// hashes the URLs and client ids).
#[derive(Debug, Clone)]
pub struct Keys {
    record: String,
    lease: String,
}

impl Keys {
    pub fn new(kind: &str, name: &str, tag: u64) -> Keys {
        let record = format!("oauth_filter.{kind}.{name}.{tag:016x}");
        Keys {
            lease: format!("{record}.lease"),
            record,
        }
    }
}

/// FNV-1a, for `tag`s: stable across VMs and builds, no dependency.
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The record as all VMs see it now.
pub fn read_record<R: Shared>(keys: &Keys) -> (R, Option<u32>) {
    match abi::get_shared_data(&keys.record) {
        Ok((Some(bytes), cas)) => (R::from_bytes(&bytes), cas),
        Ok((None, cas)) => (R::from_bytes(b""), cas),
        Err(_) => (R::from_bytes(b""), None),
    }
}

/// Applies `change` to the shared record with compare-and-swap, retrying on a concurrent
/// write; the record as written.
pub fn update_record<R: Shared>(keys: &Keys, change: impl Fn(&R) -> R) -> R {
    for _ in 0..8 {
        let (current, cas) = read_record(keys);
        let next = change(&current);
        match abi::set_shared_data(&keys.record, &next.to_bytes(), cas) {
            Ok(()) => return next,
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                log::warn!("oauth-filter: cannot write shared key state: {status:?}");
                return next;
            }
        }
    }
    change(&read_record(keys).0)
}

/// Takes the fetch lease until `until` if no other VM holds a live one.
pub fn take_lease(keys: &Keys, me: u64, now: u64, until: u64) -> bool {
    let (current, cas) = match abi::get_shared_data(&keys.lease) {
        Ok((bytes, cas)) => (bytes.as_deref().and_then(Lease::from_bytes), cas),
        Err(_) => return false,
    };
    if !Lease::takeable(current, me, now) {
        return false;
    }
    let lease = Lease { owner: me, until };
    abi::set_shared_data(&keys.lease, &lease.to_bytes(), cas).is_ok()
}

/// Takes the lease, then reads the record again: another VM may have stored what it fetched
/// (and given the lease back) between this VM's last read and the lease. None when the lease is
/// not to be had; else the record as it is now and whether a fetch is still `due` for it (when
/// it is not, the lease is given back at once).
pub fn lease_if_due<R: Shared>(
    keys: &Keys,
    me: u64,
    now: u64,
    until: u64,
    due: impl Fn(&R) -> bool,
) -> Option<(R, bool)> {
    if !take_lease(keys, me, now, until) {
        return None;
    }
    let (record, _) = read_record(keys);
    let still = due(&record);
    if !still {
        release_lease(keys, me);
    }
    Some((record, still))
}

/// Gives the lease back early (after a fetch finished), if this VM still holds it.
pub fn release_lease(keys: &Keys, me: u64) {
    if let Ok((Some(bytes), cas)) = abi::get_shared_data(&keys.lease) {
        if Lease::from_bytes(&bytes).is_some_and(|l| l.owner == me) {
            let free = Lease { owner: 0, until: 0 };
            let _ = abi::set_shared_data(&keys.lease, &free.to_bytes(), cas);
        }
    }
}
