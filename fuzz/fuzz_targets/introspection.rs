//! RFC 7662 introspection answers: status line then body, and the decision they lead to (see
//! `oauth_filter_fuzz::introspection`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::introspection(data));
