//! DPoP proof parsing and checking (see `oauth_filter_fuzz::dpop_proof`). Use `-max_len=10000`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::dpop_proof(data));
