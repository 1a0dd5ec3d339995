// The bench's reference module (examples/floor_filter.rs) with two more request callbacks
// exported, both empty: `on_context_create` and `on_response_headers`, the two the filter exports
// beyond `on_request_headers`. With `bearer+` it makes every host call the filter makes on a
// cached token, and does none of the filter's own work.

include!("floor_filter.rs");

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _eos: u32) -> u32 {
    0
}
