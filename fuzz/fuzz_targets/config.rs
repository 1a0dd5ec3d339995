//! The configuration parser, and decisions under any configuration it accepts (see
//! `oauth_filter_fuzz::config`). Use `-max_len=20000`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oauth_filter_fuzz::config(data));
