// The reference modules of `make bench`: what a proxy-wasm filter costs in Envoy before it does
// any work of its own. Built for wasm32 by `make floor` (which `make bench` runs); it is not a
// filter anyone should deploy.
//
// Its plugin configuration picks what it does on each request:
// - `noop`: nothing. Envoy enters the VM once (`on_request_headers`, the only stream callback
//   exported) and the request goes on: the least any Wasm filter costs.
// - `bearer`: the least a bearer-token filter must do through the ABI, with no validation at
//   all: read the `authorization` header, and when it holds a Bearer token remove it and add
//   `x-user` (what Envoy's `jwt_authn` does in the bench's setups, and the filter on these
//   requests, which have no `x-user` of their own); otherwise answer 401.
// - `bearer+`: as `bearer`, plus the host calls the filter makes on a cached token besides its
//   header work: read the clock, bump two counters.
//
// Envoy skips every callback a module does not export, so this exports only what it needs;
// examples/floor_callbacks.rs is the same module with two more (empty) request callbacks.

use std::cell::Cell;
use std::ptr::null_mut;

extern "C" {
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

const REQUEST_HEADERS: u32 = 0;
const PLUGIN_CONFIGURATION: u32 = 7;

thread_local! {
    /// Whether the configuration is `bearer` (or `bearer+`).
    static BEARER: Cell<bool> = const { Cell::new(false) };
    /// With `bearer+`: a counter to bump twice and a clock to read on each request.
    static EXTRA: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host filled `size` bytes of a block of capacity `size` (at least 1) that
    // `proxy_on_memory_allocate` leaked from a Vec<u8>.
    unsafe { Vec::from_raw_parts(data, size, size.max(1)) }
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut block = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size.max(1)));
    block.as_mut_ptr()
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root_id: u32, size: usize) -> u32 {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: out-pointers to locals; the host writes a block it allocated through us.
    let code =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) };
    let config = if code == 0 {
        take(data, len)
    } else {
        Vec::new()
    };
    match config.as_slice() {
        b"noop" => BEARER.with(|b| b.set(false)),
        b"bearer" => BEARER.with(|b| b.set(true)),
        b"bearer+" => {
            BEARER.with(|b| b.set(true));
            let name = "floor.requests";
            let mut id = 0;
            // SAFETY: a live string and an out-pointer to a local.
            if unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) } == 0 {
                EXTRA.with(|e| e.set(Some(id)));
            }
        }
        _ => return 0,
    }
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _eos: u32) -> u32 {
    if !BEARER.with(Cell::get) {
        return 0;
    }
    let name = "authorization";
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as in `proxy_on_configure`.
    let code = unsafe {
        proxy_get_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut len,
        )
    };
    let value = if code == 0 {
        take(data, len)
    } else {
        Vec::new()
    };
    if let Some(id) = EXTRA.with(Cell::get) {
        let mut now = 0u64;
        // SAFETY: an out-pointer to a local.
        unsafe {
            proxy_get_current_time_nanoseconds(&mut now);
            proxy_increment_metric(id, 1);
            proxy_increment_metric(id, 1);
        }
    }
    if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
        let (user, who) = ("x-user", "bench");
        // SAFETY: pointers and lengths of live strings.
        unsafe {
            proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len());
            proxy_add_header_map_value(
                REQUEST_HEADERS,
                user.as_ptr(),
                user.len(),
                who.as_ptr(),
                who.len(),
            );
        }
        return 0;
    }
    let empty = "".as_ptr();
    // SAFETY: empty details, body and headers; the host copies what it needs.
    unsafe { proxy_send_local_response(401, empty, 0, empty, 0, empty, 0, -1) };
    1
}
