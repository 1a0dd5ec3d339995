//! DPoP nonces (RFC 9449 §8) that every worker can check without shared state per nonce: a
//! nonce is the number of its time window and an HMAC-SHA256 of that number under a secret all
//! workers share. It is good in the window it was issued in and the next one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The length of a nonce window, in seconds: a nonce lives between one and two windows.
pub const WINDOW_SECONDS: u64 = 120;

/// The bytes of the MAC kept in a nonce.
const MAC_BYTES: usize = 16;

/// The MAC of a window (HMAC takes keys of every length: `None` cannot happen).
fn mac(secret: &[u8; 32], window: u64) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"oauth-filter dpop nonce\0");
    mac.update(&window.to_be_bytes());
    Some(mac)
}

/// The nonce to hand out at `now` (seconds since the epoch).
pub fn issue(secret: &[u8; 32], now: u64) -> String {
    let window = now / WINDOW_SECONDS;
    let Some(mac) = mac(secret, window) else {
        return String::new();
    };
    let tag = mac.finalize().into_bytes();
    let mut bytes = window.to_be_bytes().to_vec();
    bytes.extend_from_slice(&tag[..MAC_BYTES]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `nonce` was issued with `secret` in the current window or the one before.
pub fn valid(secret: &[u8; 32], nonce: &str, now: u64) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
        return false;
    };
    let Some((window, tag)) = bytes.split_first_chunk::<8>() else {
        return false;
    };
    let window = u64::from_be_bytes(*window);
    let current = now / WINDOW_SECONDS;
    if tag.len() != MAC_BYTES || !(window == current || window.saturating_add(1) == current) {
        return false;
    }
    mac(secret, window).is_some_and(|mac| mac.verify_truncated_left(tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_last_one_to_two_windows_and_need_the_secret() {
        let secret = [7u8; 32];
        let now = 1_800_000_000;
        let nonce = issue(&secret, now);
        assert!(valid(&secret, &nonce, now));
        assert!(valid(&secret, &nonce, now + WINDOW_SECONDS));
        assert!(!valid(&secret, &nonce, now + 2 * WINDOW_SECONDS + 1));
        assert!(!valid(&secret, &nonce, now - WINDOW_SECONDS - 1));
        assert!(!valid(&[8u8; 32], &nonce, now));
        let mut forged = nonce.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(!valid(&secret, &String::from_utf8(forged).unwrap(), now));
        assert!(!valid(&secret, "", now));
        assert!(!valid(&secret, "not base64!", now));
    }
}
