//! What DPoP and certificate binding need from the proxy-wasm host: the secret every VM
//! shares (nonces, replay-store keys) and the replay store's slots, both in shared data, and
//! the connection's client certificate, from Envoy's properties.

use super::abi::{self, Status};
use crate::binding::Peer;
use crate::dpop::replay::{Slots, SLOTS};
use std::hash::BuildHasher;

/// The shared-data key of the secret.
const SECRET_KEY: &str = "oauth_filter.dpop.secret";

/// How often a slot update is tried again when another VM changed the slot in between.
const CAS_TRIES: usize = 16;

/// Makes the shared DPoP state of this Envoy exist before any request needs it: the secret (the
/// first VM to configure draws it, from WASI's `random_get` through `RandomState`) and every
/// slot of the replay store. Proxy-wasm shared data cannot create a key only if it is absent
/// (a write to a missing key ignores its compare-and-swap token), so keys are made here, when a
/// VM starts, and requests only ever change keys that exist. Returns the drawn secret, for a VM
/// whose host keeps no shared data.
pub fn prepare(random: &impl BuildHasher) -> [u8; 32] {
    let drawn = crate::dpop::new_secret(random);
    if stored_secret().is_none() {
        let _ = abi::set_shared_data(SECRET_KEY, &drawn, None);
    }
    for slot in 0..SLOTS {
        let key = slot_key(slot);
        if matches!(abi::get_shared_data(&key), Ok((None, None))) {
            let _ = abi::set_shared_data(&key, &[], None);
        }
    }
    drawn
}

/// The secret as shared data holds it, read when a VM first needs it (by then every VM that
/// started with this one has written what it would write); `None` if there is none.
pub fn stored_secret() -> Option<[u8; 32]> {
    match abi::get_shared_data(SECRET_KEY) {
        Ok((Some(bytes), _)) => bytes.try_into().ok(),
        _ => None,
    }
}

fn slot_key(slot: usize) -> String {
    format!("oauth_filter.dpop.replay.{slot}")
}

/// The replay store's slots in shared data, one key each, changed by compare-and-swap.
pub struct SharedSlots;

impl Slots for SharedSlots {
    fn update(&self, slot: usize, change: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> bool {
        let key = slot_key(slot);
        for _ in 0..CAS_TRIES {
            let Ok((bytes, Some(cas))) = abi::get_shared_data(&key) else {
                // A slot that does not exist cannot be changed safely (see `prepare`).
                return false;
            };
            let Some(new) = change(bytes.as_deref().unwrap_or_default()) else {
                return true;
            };
            match abi::set_shared_data(&key, &new, Some(cas)) {
                Ok(()) => return true,
                Err(Status::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }
}

/// The client certificate of the current request's downstream connection.
pub fn client_certificate() -> Peer {
    let digest = abi::get_property("connection\0sha256_peer_certificate_digest");
    match digest.filter(|d| !d.is_empty()) {
        Some(hex) => Peer::Digest(String::from_utf8_lossy(&hex).into_owned()),
        None => match abi::get_property("connection\0tls_version") {
            Some(version) if !version.is_empty() => Peer::NoCertificate,
            _ => Peer::Plain,
        },
    }
}
