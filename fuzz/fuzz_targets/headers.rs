//! The proxy-wasm header-map buffer parser (`headers::parse_pairs`), round trips, and the
//! decision on the request it describes (see `oauth_filter_fuzz::headers`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::headers(data));
