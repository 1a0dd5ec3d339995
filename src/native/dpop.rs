//! What DPoP and certificate binding need in the native build: one secret and one replay store
//! for the whole process (every worker shares the module's memory), and the connection's client
//! certificate from Envoy's attributes.

use super::abi;
use crate::binding::Peer;
use crate::dpop::replay::{Slots, SLOTS};
use std::collections::hash_map::RandomState;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

/// The secret of DPoP nonces and replay keys, drawn once per process.
pub fn shared_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| crate::dpop::new_secret(&RandomState::new()))
}

/// The replay store's slots, each behind its own lock.
pub struct ProcessSlots;

fn slots() -> &'static [Mutex<Vec<u8>>] {
    static STORE: OnceLock<Vec<Mutex<Vec<u8>>>> = OnceLock::new();
    STORE.get_or_init(|| (0..SLOTS).map(|_| Mutex::new(Vec::new())).collect())
}

impl Slots for ProcessSlots {
    fn update(&self, slot: usize, change: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> bool {
        let Some(slot) = slots().get(slot) else {
            return false;
        };
        let mut bytes = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(new) = change(&bytes) {
            *bytes = new;
        }
        true
    }
}

/// The client certificate of the stream's downstream connection.
///
/// # Safety
/// `filter` must be the Envoy filter of the current hook.
pub unsafe fn client_certificate(filter: *mut c_void) -> Peer {
    match abi::attribute_string(filter, abi::ATTRIBUTE_PEER_DIGEST) {
        Some(hex) => Peer::Digest(String::from_utf8_lossy(&hex).into_owned()),
        None if abi::attribute_string(filter, abi::ATTRIBUTE_TLS_VERSION).is_some() => {
            Peer::NoCertificate
        }
        None => Peer::Plain,
    }
}
