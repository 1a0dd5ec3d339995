//! JWKS parsing, and verification with every key it yields (see `oauth_filter_fuzz::jwks`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::jwks(data));
