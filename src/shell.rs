//! What every shell does with a decision on one request, written once over [`RequestHost`] and
//! [`StreamHost`]: the few host operations a shell implements (the proxy-wasm shell with its
//! host calls, the native Envoy dynamic module with its callbacks). The decision itself is the
//! core's ([`crate::decision`]); this is how its answer reaches the host ([`act`]: let go,
//! answer, or pause until what the request waits for arrives), in the order that keeps host
//! calls few.

use crate::challenge::{self, Challenge};
use crate::config::Config;
use crate::decision::{self, Decision, Forward, Verified};
use crate::dpop::replay::{self, Recorded, Slots};
use crate::metrics;
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

/// The stream-side operations of a host beyond the request's own: its counters, what it keeps,
/// and pausing. Each shell implements them for one request in one of its hooks.
pub trait StreamHost: RequestHost {
    /// Bumps request counter `index` of [`metrics::REQUEST_COUNTERS`].
    fn count(&mut self, index: usize);
    /// A debug line (never with a token or secret in it).
    fn debug(&mut self, line: std::fmt::Arguments);
    /// Whether the request's DPoP proofs were seen before: [`replay_refusal`] with the host's
    /// replay store and secret (`now` in seconds).
    fn replay_refusal(&mut self, forward: &Forward, now: u64) -> Option<(Challenge, bool)>;
    /// Keeps the claims of tokens verified just now (`now` in ms).
    fn remember(&mut self, verified: Vec<Verified>, now: u64);
    /// The request goes upstream with client `client`'s token.
    fn sent_with(&mut self, client: usize);
    /// Lets the request go on (after a pause, the host resumes it; else nothing to do).
    fn let_go(&mut self);
    /// Pauses the request until provider `provider`'s keys change, or its fetch could have
    /// finished (`refetch`: a token named a key the set lacks).
    fn wait_for_keys(&mut self, provider: usize, refetch: bool, now: u64);
    /// Pauses the request until client `client`'s token request settles.
    fn wait_for_credential(&mut self, client: usize, now: u64);
    /// The request needs `token` introspected at `provider`: the host pauses it until the
    /// answer ([`Step::Stop`]), or has the answer at hand and decides again at once (what
    /// that decision came to).
    fn introspect(&mut self, provider: usize, token: String, now: u64) -> Step;
}

/// Where a request stands after [`act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Let go upstream (and resumed, if it had paused).
    Continue,
    /// Answered by the filter, or paused.
    Stop,
}

/// Carries out `decision` on the request (`now` in ms): lets it go with its changes, answers
/// it, or pauses it until what it waits for arrives (the host decides it again then).
pub fn act(host: &mut impl StreamHost, decision: Decision, now: u64) -> Step {
    match decision {
        Decision::Allow(forward) => allow(host, forward, now),
        Decision::Deny(refusal) => refuse(host, &refusal),
        Decision::Serve(reply) => {
            if let Some(index) = metrics::metadata(reply.served, reply.status >= 400) {
                host.count(index);
            }
            serve(host, &reply);
            Step::Stop
        }
        Decision::Wait { provider, refetch } => {
            host.wait_for_keys(provider, refetch, now);
            Step::Stop
        }
        Decision::Introspect { provider, token } => host.introspect(provider, token, now),
        Decision::AwaitCredential { client, verified } => {
            host.remember(verified, now);
            host.wait_for_credential(client, now);
            Step::Stop
        }
    }
}

/// Lets an allowed request go, unless one of its DPoP proofs is a replay (or cannot be
/// recorded).
fn allow(host: &mut impl StreamHost, mut forward: Forward, now: u64) -> Step {
    if let Some((answer, replayed)) = host.replay_refusal(&forward, now / 1000) {
        if replayed {
            host.count(metrics::DPOP_REPLAYS);
        }
        return refuse(host, &answer);
    }
    apply(host, &forward);
    host.count(metrics::passed(forward.passed));
    if let Some(client) = forward.injected {
        host.sent_with(client);
    }
    host.remember(std::mem::take(&mut forward.verified), now);
    host.let_go();
    Step::Continue
}

/// Counts, logs and sends a refusal.
pub fn refuse(host: &mut impl StreamHost, refusal: &Challenge) -> Step {
    host.count(metrics::denied(refusal.reason));
    host.debug(format_args!(
        "oauth-filter: denied: {}",
        refusal.reason.name()
    ));
    deny(host, refusal);
    Step::Stop
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

    /// A stream host that records what [`act`] asked of it; `replay` is the replay store's
    /// verdict, `introspected` what deciding again after introspection comes to.
    #[derive(Default)]
    struct FakeStream {
        request: Recorder,
        replay: Option<(Challenge, bool)>,
        introspected: Option<Step>,
    }

    impl RequestHost for FakeStream {
        fn remove_header(&mut self, name: &str) {
            self.request.remove_header(name);
        }
        fn set_header(&mut self, name: &str, value: &[u8]) {
            self.request.set_header(name, value);
        }
        fn add_header(&mut self, name: &str, value: &[u8]) {
            self.request.add_header(name, value);
        }
        fn set_filter_state(&mut self, key: &str, value: &[u8]) {
            self.request.set_filter_state(key, value);
        }
        fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
            self.request.send_response(status, headers, body);
        }
    }

    impl StreamHost for FakeStream {
        fn count(&mut self, index: usize) {
            let name = metrics::REQUEST_COUNTERS[index];
            self.request.0.push(format!("count {name}"));
        }
        fn debug(&mut self, line: std::fmt::Arguments) {
            self.request.0.push(format!("debug {line}"));
        }
        fn replay_refusal(&mut self, forward: &Forward, now: u64) -> Option<(Challenge, bool)> {
            let proofs = forward.proofs.len();
            self.request.0.push(format!("replay? {proofs} at {now}"));
            self.replay.take()
        }
        fn remember(&mut self, verified: Vec<Verified>, now: u64) {
            self.request
                .0
                .push(format!("remember {} at {now}", verified.len()));
        }
        fn sent_with(&mut self, client: usize) {
            self.request.0.push(format!("sent with {client}"));
        }
        fn let_go(&mut self) {
            self.request.0.push("let go".into());
        }
        fn wait_for_keys(&mut self, provider: usize, refetch: bool, now: u64) {
            let line = format!("wait keys {provider} refetch={refetch} at {now}");
            self.request.0.push(line);
        }
        fn wait_for_credential(&mut self, client: usize, now: u64) {
            self.request
                .0
                .push(format!("wait credential {client} at {now}"));
        }
        fn introspect(&mut self, provider: usize, token: String, now: u64) -> Step {
            let line = format!("introspect {provider} {token} at {now}");
            self.request.0.push(line);
            self.introspected.unwrap_or(Step::Stop)
        }
    }

    fn verified() -> Verified {
        Verified {
            key: Default::default(),
            claims: serde_json::Map::new(),
            until: 9,
        }
    }

    #[test]
    fn an_allowed_request_is_changed_counted_remembered_and_let_go() {
        let forward = Forward {
            passed: Passed::Authenticated,
            set: smallvec![("authorization", "Bearer up".into())],
            fresh: 1,
            verified: vec![verified()],
            injected: Some(1),
            ..Forward::default()
        };
        let mut host = FakeStream::default();
        assert_eq!(
            act(&mut host, Decision::Allow(forward), 5_000),
            Step::Continue
        );
        assert_eq!(
            host.request.0,
            [
                "replay? 0 at 5",
                "add authorization=Bearer up",
                "count oauth_filter.allowed",
                "sent with 1",
                "remember 1 at 5000",
                "let go"
            ]
        );
    }

    #[test]
    fn a_replayed_proof_is_refused_and_the_request_never_let_go() {
        let refusal = challenge::unavailable("x");
        let mut host = FakeStream {
            replay: Some((refusal, true)),
            ..FakeStream::default()
        };
        let forward = Forward {
            set: smallvec![("x-user", "alice".into())],
            verified: vec![verified()],
            ..Forward::default()
        };
        assert_eq!(act(&mut host, Decision::Allow(forward), 7_000), Step::Stop);
        let lines = &host.request.0;
        assert_eq!(
            lines[1..4],
            [
                "count oauth_filter.dpop.replays",
                "count oauth_filter.denied.temporarily_unavailable",
                "debug oauth-filter: denied: temporarily_unavailable",
            ]
        );
        assert!(lines[4].starts_with("send 503"), "{lines:?}");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn refusals_and_replies_are_counted_and_sent() {
        let mut host = FakeStream::default();
        let refusal = challenge::missing_token(&Hints::realm("api"));
        assert_eq!(act(&mut host, Decision::Deny(refusal), 0), Step::Stop);
        let reply = Reply {
            status: 200,
            headers: vec![],
            body: "{}".into(),
            served: true,
        };
        assert_eq!(act(&mut host, Decision::Serve(reply), 0), Step::Stop);
        let lines = &host.request.0;
        assert_eq!(lines[0], "count oauth_filter.denied.missing_token");
        assert!(lines[2].starts_with("send 401"));
        assert_eq!(
            lines[3..],
            ["count oauth_filter.metadata.served", "send 200 [] {}"]
        );
    }

    #[test]
    fn waits_pause_the_request_with_what_it_waits_for() {
        let mut host = FakeStream::default();
        let wait = Decision::Wait {
            provider: 2,
            refetch: true,
        };
        assert_eq!(act(&mut host, wait, 10), Step::Stop);
        let credential = Decision::AwaitCredential {
            client: 0,
            verified: vec![verified()],
        };
        assert_eq!(act(&mut host, credential, 11), Step::Stop);
        let introspect = Decision::Introspect {
            provider: 1,
            token: "opaque".into(),
        };
        assert_eq!(act(&mut host, introspect, 12), Step::Stop);
        host.introspected = Some(Step::Continue);
        let again = Decision::Introspect {
            provider: 1,
            token: "cached".into(),
        };
        assert_eq!(act(&mut host, again, 13), Step::Continue);
        assert_eq!(
            host.request.0,
            [
                "wait keys 2 refetch=true at 10",
                "remember 1 at 11",
                "wait credential 0 at 11",
                "introspect 1 opaque at 12",
                "introspect 1 cached at 13",
            ]
        );
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
