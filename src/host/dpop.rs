//! What DPoP and certificate binding need from the proxy-wasm host: the secret every VM
//! shares (nonces, replay-store keys) and the replay store's slots, both in shared data, and
//! the connection's client certificate, from Envoy's properties.

use super::abi::{self, Status};
use crate::binding::Peer;
use crate::dpop::replay::Slots;
use std::hash::BuildHasher;

/// The shared-data key of the secret.
const SECRET_KEY: &str = "oauth_filter.dpop.secret";

/// How often a slot update is tried again when another VM changed the slot in between.
const CAS_TRIES: usize = 16;

/// The secret every VM of this Envoy uses: the first VM to configure draws it (WASI's
/// `random_get`, through `RandomState`) and stores it; the others read it. VMs that start at the
/// same instant can both find none and both store one: each then reads back what stayed.
pub fn shared_secret(random: &impl BuildHasher) -> [u8; 32] {
    if let Some(secret) = stored_secret() {
        return secret;
    }
    let mut drawn = [0u8; 32];
    for (i, chunk) in drawn.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&random.hash_one(0x5ec2e7u64 + i as u64).to_le_bytes());
    }
    let _ = abi::set_shared_data(SECRET_KEY, &drawn, None);
    stored_secret().unwrap_or_else(|| {
        log::warn!("oauth-filter: shared data refused the DPoP secret; this VM uses its own");
        drawn
    })
}

fn stored_secret() -> Option<[u8; 32]> {
    match abi::get_shared_data(SECRET_KEY) {
        Ok((Some(bytes), _)) => bytes.try_into().ok(),
        _ => None,
    }
}

/// The replay store's slots in shared data, one key each, changed by compare-and-swap.
pub struct SharedSlots;

impl Slots for SharedSlots {
    fn update(&self, slot: usize, change: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> bool {
        let key = format!("oauth_filter.dpop.replay.{slot}");
        for _ in 0..CAS_TRIES {
            let Ok((bytes, cas)) = abi::get_shared_data(&key) else {
                return false;
            };
            let Some(new) = change(bytes.as_deref().unwrap_or_default()) else {
                return true;
            };
            match abi::set_shared_data(&key, &new, cas) {
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
