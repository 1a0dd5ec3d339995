//! JWT parsing and signature verification against a fixed RSA / EC P-256 / HMAC key set, and
//! the whole decision on the token (see `oauth_filter_fuzz::jwt`). Use `-max_len=20000`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::jwt(data));
