//! Discovery documents, shared key-fetch records and the host verifier's answers (see
//! `oauth_filter_fuzz::host_answers`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::host_answers(data));
