//! What every shell does with a decision on one request, written once over [`RequestHost`]: the
//! few host operations a shell implements (the proxy-wasm shell with its host calls, the native
//! Envoy dynamic module with its callbacks). The decision itself is the core's
//! ([`crate::decision`]); this is only how its answer reaches the host, in the order that keeps
//! host calls few.

use crate::challenge::{self, Challenge};
use crate::config::Config;
use crate::decision::{self, Forward};
use crate::dpop::replay::{self, Recorded, Slots};
use crate::resource::Reply;

/// The request-side operations of a host, on the request being decided.
pub trait RequestHost {
    /// Removes every value of request header `name`.
    fn remove_header(&mut self, name: &str);
    /// Sets request header `name` to `value`, replacing every value it had (`:path` included).
    fn set_header(&mut self, name: &str, value: &[u8]);
    /// Adds a value of request header `name`, which the request does not have.
    fn add_header(&mut self, name: &str, value: &[u8]);
    /// Sets the filter state `key` (as configured; the shell adds Envoy's `wasm.` prefix where
    /// the host does not) to a plain value.
    fn set_filter_state(&mut self, key: &str, value: &[u8]);
    /// Answers the request itself with this status, these headers and this body.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
}

/// Applies an allowed request's changes: removals (of headers not about to be set: setting
/// replaces every value, and each change costs a host call and a route-cache clear), the
/// headers set (added where the request has none: [`Forward::fresh`]), the new `:path`, the
/// filter state.
pub fn apply(host: &mut impl RequestHost, forward: &Forward) {
    for name in &forward.remove {
        if !forward.set.iter().any(|(set, _)| set == name) {
            host.remove_header(name);
        }
    }
    for (i, (name, value)) in forward.set.iter().enumerate() {
        if i < 64 && forward.fresh & (1 << i) != 0 {
            host.add_header(name, value.as_bytes());
        } else {
            host.set_header(name, value.as_bytes());
        }
    }
    if let Some(path) = &forward.path {
        host.set_header(":path", path.as_bytes());
    }
    for (key, value) in &forward.filter_state {
        host.set_filter_state(key, value.as_bytes());
    }
}

/// Records an allowed request's DPoP proofs in the replay store every worker shares (`now` in
/// seconds). The answer to send instead, when a proof was there already (`true`: a replay,
/// answered with [`decision::replayed`] under `secret`) or cannot be recorded (the store is
/// full: no proof is let through unrecorded).
pub fn replay_refusal(
    slots: &dyn Slots,
    config: &Config,
    forward: &Forward,
    secret: &[u8; 32],
    now: u64,
) -> Option<(Challenge, bool)> {
    if forward.proofs.is_empty() {
        return None;
    }
    match replay::first_use(slots, &forward.proofs, now) {
        Recorded::First => None,
        Recorded::Replayed => Some((decision::replayed(config, forward, secret, now), true)),
        Recorded::Full => Some((challenge::unavailable(replay::FULL), false)),
    }
}

/// Answers the request with `challenge` (RFC 6750, or a 503).
pub fn deny(host: &mut impl RequestHost, challenge: &Challenge) {
    host.send_response(
        challenge.status,
        &challenge.headers(),
        challenge.body.as_bytes(),
    );
}

/// Answers the request with the filter's own reply under the protected resources' well-known
/// path.
pub fn serve(host: &mut impl RequestHost, reply: &Reply) {
    host.send_response(reply.status, &reply.headers, reply.body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::{self, Hints};
    use crate::decision::Passed;
    use smallvec::smallvec;

    /// Records what the shell asked of the host.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl RequestHost for Recorder {
        fn remove_header(&mut self, name: &str) {
            self.0.push(format!("remove {name}"));
        }
        fn set_header(&mut self, name: &str, value: &[u8]) {
            self.0
                .push(format!("set {name}={}", String::from_utf8_lossy(value)));
        }
        fn add_header(&mut self, name: &str, value: &[u8]) {
            self.0
                .push(format!("add {name}={}", String::from_utf8_lossy(value)));
        }
        fn set_filter_state(&mut self, key: &str, value: &[u8]) {
            self.0
                .push(format!("state {key}={}", String::from_utf8_lossy(value)));
        }
        fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
            let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
            let body = String::from_utf8_lossy(body);
            self.0.push(format!("send {status} {names:?} {body}"));
        }
    }

    #[test]
    fn allowed_changes_in_order_without_needless_removals() {
        let forward = Forward {
            passed: Passed::Authenticated,
            remove: smallvec!["authorization", "x-user"],
            set: smallvec![("x-user", "alice".into())],
            path: Some("/orders".into()),
            filter_state: vec![("oauth.sub", "alice".into())],
            verified: Vec::new(),
            injected: None,
            ..Forward::default()
        };
        let mut host = Recorder::default();
        apply(&mut host, &forward);
        assert_eq!(
            host.0,
            [
                "remove authorization",
                "set x-user=alice",
                "set :path=/orders",
                "state oauth.sub=alice"
            ]
        );
    }

    #[test]
    fn fresh_headers_are_added() {
        let forward = Forward {
            set: smallvec![("x-user", "alice".into()), ("x-org", "a".into())],
            fresh: 0b10,
            ..Forward::default()
        };
        let mut host = Recorder::default();
        apply(&mut host, &forward);
        assert_eq!(host.0, ["set x-user=alice", "add x-org=a"]);
    }

    #[test]
    fn answers_are_sent_whole() {
        let mut host = Recorder::default();
        deny(&mut host, &challenge::missing_token(&Hints::realm("api")));
        let reply = Reply {
            status: 404,
            headers: vec![("content-type", "application/json")],
            body: "{}".into(),
            served: false,
        };
        serve(&mut host, &reply);
        assert_eq!(
            host.0,
            [
                "send 401 [\"www-authenticate\", \"content-type\", \"cache-control\"] {\"error\":\"missing_token\",\"error_description\":\"A bearer token is required\"}",
                "send 404 [\"content-type\"] {}"
            ]
        );
    }
}
