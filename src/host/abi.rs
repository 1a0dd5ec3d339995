//! The proxy-wasm ABI (version 0.2.1) as this filter uses it: the host functions it imports,
//! with safe wrappers, and the logger. The callbacks the filter exports are in `exports.rs`.
//!
//! Why not the proxy-wasm SDK: the SDK exports every callback of the ABI, and Envoy enters the
//! VM for each one it finds exported (`on_response_headers`, `on_response_body`, `on_log`,
//! `on_done`, `on_delete`, ...), about seven entries per request for a filter that needs two.
//! Measured with callgrind on Envoy 1.40, an SDK no-op filter costs ~17k instructions per
//! request over Envoy alone, a module exporting only `on_request_headers` ~7k (README,
//! Performance). The SDK's exports cannot be left out while linking it, so the shell speaks the
//! ABI itself; the surface it needs is small.

use std::ptr::null_mut;
use std::time::Duration;

/// A host call's status (the ABI's `WasmResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    NotFound,
    BadArgument,
    Empty,
    CasMismatch,
    /// Any other code (serialization, parse, internal failure, unimplemented).
    Other(u32),
}

fn check(code: u32) -> Result<(), Status> {
    match code {
        0 => Ok(()),
        1 => Err(Status::NotFound),
        2 => Err(Status::BadArgument),
        7 => Err(Status::Empty),
        8 => Err(Status::CasMismatch),
        other => Err(Status::Other(other)),
    }
}

/// What a stream callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
#[allow(clippy::enum_variant_names)] // the ABI's own names
pub enum MapType {
    HttpRequestHeaders = 0,
    HttpResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum BufferType {
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

mod sys {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_http_call(
            cluster: *const u8,
            cluster_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            token: *mut u32,
        ) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_call_foreign_function(
            name: *const u8,
            name_size: usize,
            args: *const u8,
            args_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, size: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    }
}

/// Takes ownership of a buffer the host filled through `proxy_on_memory_allocate`.
fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host got `data` from `proxy_on_memory_allocate(size)`, which hands out the
    // buffer of a `Vec<u8>` with capacity `size`, and wrote `size` bytes into it.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The allocation the host asks for when it returns data to the module.
pub fn allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<u8> = Vec::with_capacity(size);
    let data = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    data
}

/// Writes one line to Envoy's log.
pub fn log(level: log::Level, message: &str) {
    // The ABI's levels: trace 0, debug 1, info 2, warn 3, error 4.
    let level = match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    };
    // SAFETY (here and below): every pointer passed to the host points into a live Rust value
    // of the size passed with it, and out-pointers point to locals.
    unsafe { sys::proxy_log(level, message.as_ptr(), message.len()) };
}

/// Milliseconds since the Unix epoch, by the host's clock.
pub fn now_ms() -> u64 {
    let mut nanos = 0u64;
    let _ = unsafe { sys::proxy_get_current_time_nanoseconds(&mut nanos) };
    nanos / 1_000_000
}

pub fn set_tick_period(period: Duration) {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    let _ = unsafe { sys::proxy_set_tick_period_milliseconds(ms) };
}

pub fn get_buffer(kind: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    let code =
        unsafe { sys::proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    check(code).ok()?;
    take(data, size)
}

/// A header map in the host's serialized form (see [`crate::headers::parse_pairs`]).
pub fn get_map_pairs(map: MapType) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    let code = unsafe { sys::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    check(code).ok()?;
    take(data, size)
}

pub fn get_map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    let code = unsafe {
        sys::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    check(code).ok()?;
    take(data, size)
}

/// Replaces every value of header `name` with `value`, or removes the header (`None`).
pub fn set_map_value(map: MapType, name: &str, value: Option<&[u8]>) -> Result<(), Status> {
    let code = match value {
        Some(v) => unsafe {
            sys::proxy_replace_header_map_value(
                map as u32,
                name.as_ptr(),
                name.len(),
                v.as_ptr(),
                v.len(),
            )
        },
        None => unsafe {
            sys::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len())
        },
    };
    check(code)
}

/// Adds a value of header `name`.
pub fn add_map_value(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: the pointers and lengths are of live slices, read by the host during the call.
    let code = unsafe {
        sys::proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check(code)
}

/// Shared data under `key`: its value (if any) and its compare-and-swap token.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0u32);
    let code = unsafe {
        sys::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    };
    match check(code) {
        Ok(()) => Ok((take(data, size), (cas > 0).then_some(cas))),
        Err(Status::NotFound) => Ok((None, None)),
        Err(status) => Err(status),
    }
}

pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    let code = unsafe {
        sys::proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    };
    check(code)
}

/// Lets the current (paused) request go on to the next filter.
pub fn resume_http_request() {
    let _ = unsafe { sys::proxy_continue_stream(0) };
}

/// Answers the current request directly with `status`, `headers` and `body`.
pub fn send_http_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    let headers = crate::headers::serialize_pairs(headers);
    let _ = unsafe {
        sys::proxy_send_local_response(
            status,
            null_mut(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
}

/// Sends a request to `cluster`; its answer comes to the current effective context's
/// `on_http_call_response` with the returned token.
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, Status> {
    let headers = crate::headers::serialize_pairs(headers);
    let trailers = crate::headers::serialize_pairs(&[]);
    let body = body.unwrap_or_default();
    let timeout = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0u32;
    let code = unsafe {
        sys::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout,
            &mut token,
        )
    };
    check(code).map(|()| token)
}

/// Makes `context_id` the context later host calls act on; an error if it no longer exists.
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    check(unsafe { sys::proxy_set_effective_context(context_id) })
}

pub fn call_foreign_function(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    let code = unsafe {
        sys::proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            args.as_ptr(),
            args.len(),
            &mut data,
            &mut size,
        )
    };
    check(code).map(|()| take(data, size))
}

/// Property `path` of the current stream (its steps joined with NUL bytes, as
/// `connection\0tls_version`); `None` when the host has no such property.
pub fn get_property(path: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    let code = unsafe { sys::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    check(code).ok().and_then(|()| take(data, size))
}

/// Sets property `name` of the current stream; Envoy keeps it as filter state `wasm.NAME`,
/// which later filters (RBAC's `filter_state` principal) and access logs read.
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // A one-step path: the name itself (steps of longer paths are separated by NUL bytes).
    check(unsafe {
        sys::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    let code = unsafe { sys::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    check(code).map(|()| id)
}

pub fn increment_metric(id: u32, offset: i64) {
    let _ = unsafe { sys::proxy_increment_metric(id, offset) };
}

pub fn record_metric(id: u32, value: u64) {
    let _ = unsafe { sys::proxy_record_metric(id, value) };
}

/// `log` records go to Envoy's log (Info and above: the filter's debug lines are only for
/// development builds that raise the level).
struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            log(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

pub fn install_logger() {
    static LOGGER: HostLogger = HostLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
