//! The hooks Envoy 1.40 looks up in a dynamic module (`on_program_init` and every
//! `on_http_filter_*`; a missing one makes Envoy refuse the module). Each catches unwinding: a
//! panic crossing into Envoy would take down every worker. A request whose hook panicked is
//! answered 503, never let through.

use super::abi::{self, EnvoyBuffer, EnvoyHeader, CONTINUE, STOP_ITERATION};
use super::filter::{now_ms, Filter, FilterConfig, Stream};
use crate::challenge;
use crate::jwt::keys::MAX_JWKS_BYTES;
use crate::shell;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null;

/// Runs `f`; `fallback` if it panicked (logged, with where).
fn guarded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        abi::log(abi::LOG_ERROR, || "oauth-filter: a hook panicked".into());
        fallback
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    super::install_panic_hook();
    abi::install_logger();
    abi::ABI_VERSION.as_ptr().cast()
}

/// # Safety
/// Called by Envoy with its configuration pointer and buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded(null(), || match FilterConfig::new(envoy, config.bytes()) {
        Ok(built) => Box::into_raw(Box::new(built)).cast_const().cast(),
        Err(why) => {
            // One line naming the field; Envoy then refuses the configuration.
            abi::log(abi::LOG_ERROR, || {
                format!("oauth-filter: configuration refused: {why}")
            });
            null()
        }
    })
}

/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned, given back once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded((), || {
        if !config.is_null() {
            let config = Box::from_raw(config.cast_mut().cast::<FilterConfig>());
            config.close();
        }
    })
}

/// Per-route configuration is not supported (a rule's `match` does that work): refused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    abi::log(abi::LOG_ERROR, || {
        "oauth-filter: per-route configuration is not supported; use rules".into()
    });
    null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned, alive while its streams are.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: *mut c_void,
) -> *const c_void {
    guarded(null(), || {
        let filter = Filter::new(config.cast::<FilterConfig>());
        Box::into_raw(Box::new(filter)).cast_const().cast()
    })
}

/// # Safety
/// `filter` is a pointer `on_http_filter_new` returned, given back once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guarded((), || {
        if !filter.is_null() {
            drop(Box::from_raw(filter.cast_mut().cast::<Filter>()));
        }
    })
}

/// # Safety
/// Called by Envoy on the stream's worker with its pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    deciding(envoy, || {
        match filter.cast_mut().cast::<Filter>().as_mut() {
            Some(filter) => filter.on_request_headers(envoy),
            None => unavailable(envoy),
        }
    })
}

/// Runs `f`, which decides the stream's request; if it panicked, the request is answered 503
/// (never let through) and STOP_ITERATION returned.
unsafe fn deciding(envoy: *mut c_void, f: impl FnOnce() -> u32) -> u32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        abi::log(abi::LOG_ERROR, || "oauth-filter: a hook panicked".into());
        guarded(STOP_ITERATION, || unavailable(envoy))
    })
}

/// Fails the request closed: 503.
unsafe fn unavailable(envoy: *mut c_void) -> u32 {
    shell::deny(
        &mut Stream(envoy),
        &challenge::unavailable("The filter failed"),
    );
    STOP_ITERATION
}

// The hooks below have nothing to do for this filter; Envoy requires them all.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: *mut c_void,
    _filter: *const c_void,
) -> u32 {
    CONTINUE
}

/// The upstream's response headers: a refused upstream token is dropped.
///
/// # Safety
/// Called by Envoy on the stream's worker with its pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guarded(CONTINUE, || {
        if let Some(filter) = filter.cast_mut().cast::<Filter>().as_mut() {
            filter.on_response_headers(envoy);
        }
        CONTINUE
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: *mut c_void,
    _filter: *const c_void,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _status: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _callout: u64,
    _result: u32,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _body: *const EnvoyBuffer,
    _body_size: usize,
) {
}

/// A paused request is woken (on its worker).
///
/// # Safety
/// Called by Envoy on the stream's worker with its pointers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy: *mut c_void,
    filter: *const c_void,
    event: u64,
) {
    deciding(envoy, || {
        if let Some(filter) = filter.cast_mut().cast::<Filter>().as_mut() {
            filter.on_scheduled(envoy, event);
        }
        CONTINUE
    });
}

/// The configuration's event on the main thread: start the key fetches and calls that are due.
///
/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned, alive.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _envoy: *mut c_void,
    config: *const c_void,
    event: u64,
) {
    guarded((), || {
        if let Some(config) = config.cast::<FilterConfig>().as_ref() {
            config.on_scheduled(event, now_ms());
        }
    })
}

/// The answer to one of the configuration's calls (on the main thread).
///
/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned, alive; the arrays are Envoy's,
/// valid during the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy: *mut c_void,
    config: *const c_void,
    callout: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    guarded((), || {
        let Some(config) = config.cast::<FilterConfig>().as_ref() else {
            return;
        };
        // Enough for the largest answer any call reads (a JWKS), plus one byte.
        let (status, body) =
            abi::call_answer(headers, headers_size, body, body_size, MAX_JWKS_BYTES);
        config.on_answer(callout, status.as_deref(), body, now_ms());
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}

/// The hooks of streamed callouts (which this filter does not start), per stream and per
/// configuration: same signatures but for the first two pointers' meaning.
macro_rules! stream_hooks {
    ($headers:ident, $data:ident, $trailers:ident, $complete:ident, $reset:ident) => {
        #[no_mangle]
        pub extern "C" fn $headers(
            _envoy: *mut c_void,
            _module: *const c_void,
            _stream: u64,
            _headers: *const EnvoyHeader,
            _size: usize,
            _end_stream: bool,
        ) {
        }

        #[no_mangle]
        pub extern "C" fn $data(
            _envoy: *mut c_void,
            _module: *const c_void,
            _stream: u64,
            _data: *const EnvoyBuffer,
            _count: usize,
            _end_stream: bool,
        ) {
        }

        #[no_mangle]
        pub extern "C" fn $trailers(
            _envoy: *mut c_void,
            _module: *const c_void,
            _stream: u64,
            _trailers: *const EnvoyHeader,
            _size: usize,
        ) {
        }

        #[no_mangle]
        pub extern "C" fn $complete(_envoy: *mut c_void, _module: *const c_void, _stream: u64) {}

        #[no_mangle]
        pub extern "C" fn $reset(
            _envoy: *mut c_void,
            _module: *const c_void,
            _stream: u64,
            _reason: u32,
        ) {
        }
    };
}

stream_hooks!(
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset
);

stream_hooks!(
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset
);
