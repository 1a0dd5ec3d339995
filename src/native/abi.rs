//! The part of Envoy's dynamic-module ABI (`v0.2.0`, Envoy 1.40) the native shell uses: the
//! types, the callbacks Envoy exports, and thin safe wrappers. Declarations written from the ABI
//! header's documented signatures; Envoy resolves the callbacks when it loads the `.so`.

use crate::headers::Pairs;
use std::ffi::c_void;
use std::ptr::null;

/// The ABI version this module is built for, NUL-terminated.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Envoy's `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    /// The bytes, valid while Envoy keeps them (within the hook that gave them).
    ///
    /// # Safety
    /// `ptr` must be null or point to `length` readable bytes for the returned lifetime.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr, self.length)
        }
    }
}

/// `envoy_dynamic_module_type_module_buffer`: bytes the module owns, read during the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// The null buffer (for `set_header`: remove the header).
    pub fn none() -> ModuleBuffer {
        ModuleBuffer {
            ptr: null(),
            length: 0,
        }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`: a header of one of Envoy's maps.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_module_http_header`: a header the module hands Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// `headers` as Envoy reads them (borrowing the strings: keep them alive for the call).
fn module_headers(headers: &[(&str, &str)]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(k, v)| ModuleHeader {
            key_ptr: k.as_ptr(),
            key_length: k.len(),
            value_ptr: v.as_ptr(),
            value_length: v.len(),
        })
        .collect()
}

/// `envoy_dynamic_module_type_attribute_id_ConnectionTlsVersion` (`connection.tls_version`).
pub const ATTRIBUTE_TLS_VERSION: u32 = 31;
/// `…_attribute_id_ConnectionSha256PeerCertificateDigest`
/// (`connection.sha256_peer_certificate_digest`).
pub const ATTRIBUTE_PEER_DIGEST: u32 = 38;

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `…_http_header_type_ResponseHeader`.
const RESPONSE_HEADER: u32 = 2;

/// Header-hook statuses (`…_request_headers_status`).
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;

/// Log levels (`envoy_dynamic_module_type_log_level`).
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, kind: u32)
        -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        kind: u32,
        out: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        kind: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *const ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// Logs `message` at `level` (Envoy's `dynamic_modules` logger), if that level is enabled.
pub fn log(level: u32, message: impl FnOnce() -> String) {
    // SAFETY: plain calls; the message buffer is read during the call only.
    unsafe {
        if envoy_dynamic_module_callback_log_enabled(level) {
            let text = message();
            envoy_dynamic_module_callback_log(level, ModuleBuffer::of(text.as_bytes()));
        }
    }
}

/// The core's `log` records go to Envoy's log, at the levels Envoy has enabled.
struct EnvoyLogger;

fn envoy_level(level: log::Level) -> u32 {
    match level {
        log::Level::Error => LOG_ERROR,
        log::Level::Warn => LOG_WARN,
        log::Level::Info => LOG_INFO,
        log::Level::Debug | log::Level::Trace => LOG_DEBUG,
    }
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // SAFETY: a plain call.
        unsafe { envoy_dynamic_module_callback_log_enabled(envoy_level(metadata.level())) }
    }

    fn log(&self, record: &log::Record<'_>) {
        log(envoy_level(record.level()), || record.args().to_string());
    }

    fn flush(&self) {}
}

/// Sends the `log` crate's records to Envoy (once, at program init).
pub fn install_logger() {
    static LOGGER: EnvoyLogger = EnvoyLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

/// Every request header of the stream, in Envoy's order, borrowed from Envoy for the hook, into
/// `out` (filled in place: the list is a kilobyte on the stack, not worth a copy).
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its hooks; the result must
/// not outlive the hook, nor a change of the request's headers.
pub unsafe fn request_headers<'a>(filter: *mut c_void, out: &mut Pairs<'a>) {
    headers(filter, REQUEST_HEADER, out)
}

/// Every response header of the stream (inside its response-headers hook), as
/// [`request_headers`].
///
/// # Safety
/// As [`request_headers`], inside the response-headers hook.
pub unsafe fn response_headers<'a>(filter: *mut c_void, out: &mut Pairs<'a>) {
    headers(filter, RESPONSE_HEADER, out)
}

unsafe fn headers<'a>(filter: *mut c_void, kind: u32, out: &mut Pairs<'a>) {
    let size = envoy_dynamic_module_callback_http_get_headers_size(filter, kind);
    let empty = EnvoyHeader {
        key_ptr: null(),
        key_length: 0,
        value_ptr: null(),
        value_length: 0,
    };
    // Requests seldom have more than a few dozen headers: no allocation for Envoy's array then.
    let mut stack = [empty; 32];
    let mut heap = Vec::new();
    let raw: &mut [EnvoyHeader] = match stack.get_mut(..size) {
        Some(few) => few,
        None => {
            heap.resize(size, empty);
            &mut heap
        }
    };
    if size == 0 || !envoy_dynamic_module_callback_http_get_headers(filter, kind, raw.as_mut_ptr())
    {
        return;
    }
    // Sized once: collected from a filter, the list would grow (and move) twice or three times.
    out.reserve(size);
    out.extend(raw.iter().filter_map(|h| {
        let key = EnvoyBuffer {
            ptr: h.key_ptr,
            length: h.key_length,
        };
        let value = EnvoyBuffer {
            ptr: h.value_ptr,
            length: h.value_length,
        };
        // Envoy's header names are ASCII: a name that is not UTF-8 cannot be one the core
        // reads, and is left out.
        Some((header_name(key.bytes())?, value.bytes()))
    }));
}

/// A header name as text: ASCII, as every name Envoy's codecs accept, is checked with the
/// cheaper test (this runs for every header of every request).
fn header_name(name: &[u8]) -> Option<&str> {
    if name.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(name) })
    } else {
        std::str::from_utf8(name).ok()
    }
}

/// Sets (`Some`) or removes (`None`) a request header.
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its hooks.
pub unsafe fn set_request_header(filter: *mut c_void, name: &str, value: Option<&[u8]>) {
    let value = value.map_or(ModuleBuffer::none(), ModuleBuffer::of);
    let _ = envoy_dynamic_module_callback_http_set_header(
        filter,
        REQUEST_HEADER,
        ModuleBuffer::of(name.as_bytes()),
        value,
    );
}

/// Adds a value of a request header (Envoy adds nothing for an empty value).
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its hooks.
pub unsafe fn add_request_header(filter: *mut c_void, name: &str, value: &[u8]) {
    let _ = envoy_dynamic_module_callback_http_add_header(
        filter,
        REQUEST_HEADER,
        ModuleBuffer::of(name.as_bytes()),
        ModuleBuffer::of(value),
    );
}

/// Answers the stream with a local reply.
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its hooks.
pub unsafe fn send_response(
    filter: *mut c_void,
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let headers = module_headers(headers);
    envoy_dynamic_module_callback_http_send_response(
        filter,
        status,
        headers.as_ptr(),
        headers.len(),
        ModuleBuffer::of(body),
        ModuleBuffer::of(b"oauth_filter"),
    );
}

/// Sets filter state `key` (as given: Envoy adds no prefix) to `value`.
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its hooks.
pub unsafe fn set_filter_state(filter: *mut c_void, key: &str, value: &[u8]) {
    let _ = envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter,
        ModuleBuffer::of(key.as_bytes()),
        ModuleBuffer::of(value),
    );
}

/// The signature Envoy's `…_config_define_{counter,gauge,histogram}` share.
type Define =
    unsafe extern "C" fn(*mut c_void, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> u32;

/// Defines metric `name` (no labels) with `define`; its id.
///
/// # Safety
/// As [`define_counter`].
unsafe fn define(config: *mut c_void, name: &str, define: Define) -> Option<usize> {
    let mut id = 0usize;
    let result = define(
        config,
        ModuleBuffer::of(name.as_bytes()),
        null(),
        0,
        &mut id,
    );
    (result == METRICS_SUCCESS).then_some(id)
}

/// Defines counter `name` on the filter configuration; its id. Only while the configuration is
/// being created (Envoy freezes its stats afterwards).
///
/// # Safety
/// `config` must be the Envoy configuration pointer given to `on_http_filter_config_new`, inside
/// that hook.
pub unsafe fn define_counter(config: *mut c_void, name: &str) -> Option<usize> {
    define(
        config,
        name,
        envoy_dynamic_module_callback_http_filter_config_define_counter,
    )
}

/// Adds `by` to counter `id` from within a stream's hook.
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its hooks; `id` one its
/// configuration defined.
pub unsafe fn increment_counter(filter: *mut c_void, id: usize, by: u64) {
    let _ = envoy_dynamic_module_callback_http_filter_increment_counter(filter, id, null(), 0, by);
}

/// A pointer Envoy gave that the module may hand between threads (Envoy documents which calls
/// are safe from which thread; each use below says why it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ptr(pub *mut c_void);

// SAFETY: a `Ptr` is only an address; every dereference goes through Envoy's callbacks, called
// from the threads the ABI allows for them.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
const CALLOUT_STARTED: u32 = 0;

/// Defines gauge `name` on the filter configuration (inside `on_http_filter_config_new`).
///
/// # Safety
/// As [`define_counter`].
pub unsafe fn define_gauge(config: *mut c_void, name: &str) -> Option<usize> {
    define(
        config,
        name,
        envoy_dynamic_module_callback_http_filter_config_define_gauge,
    )
}

/// Adds `by` to counter `id`, outside any stream (the main thread).
///
/// # Safety
/// `config` must be the Envoy configuration pointer that defined `id`, still alive.
pub unsafe fn config_increment_counter(config: Ptr, id: usize, by: u64) {
    let _ = envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config.0,
        id,
        null(),
        0,
        by,
    );
}

/// Sets gauge `id` outside any stream (the main thread).
///
/// # Safety
/// As [`config_increment_counter`].
pub unsafe fn config_set_gauge(config: Ptr, id: usize, value: u64) {
    let _ =
        envoy_dynamic_module_callback_http_filter_config_set_gauge(config.0, id, null(), 0, value);
}

/// Resumes a request a hook stopped.
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its hooks.
pub unsafe fn continue_decoding(filter: *mut c_void) {
    envoy_dynamic_module_callback_http_filter_continue_decoding(filter);
}

/// A scheduler that posts `on_http_filter_scheduled` to the stream's worker; delete it once.
///
/// # Safety
/// `filter` must be the stream's Envoy filter pointer, inside one of its request hooks.
pub unsafe fn filter_scheduler(filter: *mut c_void) -> Ptr {
    Ptr(envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter,
    ))
}

/// Posts event `event` to the scheduler's stream (from any thread).
///
/// # Safety
/// `scheduler` must come from [`filter_scheduler`] and not be deleted yet.
pub unsafe fn filter_schedule(scheduler: Ptr, event: u64) {
    envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler.0, event);
}

/// # Safety
/// `scheduler` must come from [`filter_scheduler`], deleted once.
pub unsafe fn filter_scheduler_delete(scheduler: Ptr) {
    envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler.0);
}

/// A scheduler that posts `on_http_filter_config_scheduled` to the main thread.
///
/// # Safety
/// `config` must be the Envoy configuration pointer, inside `on_http_filter_config_new`.
pub unsafe fn config_scheduler(config: *mut c_void) -> Ptr {
    Ptr(envoy_dynamic_module_callback_http_filter_config_scheduler_new(config))
}

/// Posts event `event` to the main thread (from any thread).
///
/// # Safety
/// `scheduler` must come from [`config_scheduler`] and not be deleted yet.
pub unsafe fn config_schedule(scheduler: Ptr, event: u64) {
    envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler.0, event);
}

/// # Safety
/// `scheduler` must come from [`config_scheduler`], deleted once.
pub unsafe fn config_scheduler_delete(scheduler: Ptr) {
    envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler.0);
}

/// Starts a call to `cluster` owned by the configuration (its answer comes to
/// `on_http_filter_config_http_callout_done`); its id, or `Err` with Envoy's refusal code.
///
/// # Safety
/// `config` must be the Envoy configuration pointer, on the main thread.
pub unsafe fn config_callout(
    config: Ptr,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u64, u32> {
    let headers = module_headers(headers);
    let mut id = 0u64;
    let result = envoy_dynamic_module_callback_http_filter_config_http_callout(
        config.0,
        &mut id,
        ModuleBuffer::of(cluster.as_bytes()),
        headers.as_ptr(),
        headers.len(),
        ModuleBuffer::of(body),
        timeout_ms,
    );
    if result == CALLOUT_STARTED {
        Ok(id)
    } else {
        Err(result)
    }
}

/// Sends `call` (a form POST the core built: introspection, a token request) as a call owned by
/// the configuration; its id, or why it could not be sent.
///
/// # Safety
/// As [`config_callout`].
pub unsafe fn config_post(config: Ptr, call: &crate::introspection::Call) -> Result<u64, String> {
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    config_callout(
        config,
        &call.cluster,
        &headers,
        call.body.as_bytes(),
        call.timeout_ms,
    )
    .map_err(|code| format!("cannot call cluster {} (refused: {code})", call.cluster))
}

/// The `:status` and body (at most `limit + 1` bytes) of a call's answer, as Envoy hands them
/// to the done hook.
///
/// # Safety
/// The arrays must be the done hook's, inside it (null with size 0 for none).
pub unsafe fn call_answer(
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
    limit: usize,
) -> (Option<String>, Vec<u8>) {
    let headers = if headers.is_null() {
        &[][..]
    } else {
        std::slice::from_raw_parts(headers, headers_size)
    };
    let status = headers.iter().find_map(|h| {
        let key = EnvoyBuffer {
            ptr: h.key_ptr,
            length: h.key_length,
        }
        .bytes();
        let value = EnvoyBuffer {
            ptr: h.value_ptr,
            length: h.value_length,
        }
        .bytes();
        (key == b":status").then(|| String::from_utf8_lossy(value).into_owned())
    });
    let chunks = if chunks.is_null() {
        &[][..]
    } else {
        std::slice::from_raw_parts(chunks, chunks_size)
    };
    let mut body = Vec::new();
    for chunk in chunks {
        let room = (limit + 1).saturating_sub(body.len());
        let bytes = chunk.bytes();
        body.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    (status, body)
}

/// Defines histogram `name` on the filter configuration (inside `on_http_filter_config_new`).
///
/// # Safety
/// As [`define_counter`].
pub unsafe fn define_histogram(config: *mut c_void, name: &str) -> Option<usize> {
    define(
        config,
        name,
        envoy_dynamic_module_callback_http_filter_config_define_histogram,
    )
}

/// Records `value` in histogram `id` outside any stream (the main thread).
///
/// # Safety
/// As [`config_increment_counter`].
pub unsafe fn config_record_histogram(config: Ptr, id: usize, value: u64) {
    let _ = envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config.0,
        id,
        null(),
        0,
        value,
    );
}

/// String attribute `attribute` of the stream (`None`: absent or empty), copied.
///
/// # Safety
/// `filter` must be the Envoy filter of the current hook.
pub unsafe fn attribute_string(filter: *mut c_void, attribute: u32) -> Option<Vec<u8>> {
    let mut result = EnvoyBuffer {
        ptr: null(),
        length: 0,
    };
    if !envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter,
        attribute,
        &mut result,
    ) {
        return None;
    }
    let bytes = result.bytes();
    (!bytes.is_empty()).then(|| bytes.to_vec())
}
