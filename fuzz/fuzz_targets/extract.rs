//! Token extraction (RFC 6750 §2) from arbitrary headers and query strings: sources spec, path
//! and headers, one per line (see `oauth_filter_fuzz::extract`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::extract(data));
