//! The request counters both shells keep, named once: what happened to each request the filter
//! saw. Each shell defines them with its host (Envoy shows the Wasm ones with its `wasmcustom.`
//! prefix) and bumps the one [`passed`], [`denied`] or [`metadata`] names.

use crate::challenge::DenyReason;
use crate::decision::Passed;

/// The counters, by index.
pub const REQUEST_COUNTERS: [&str; 16] = [
    "oauth_filter.allowed",
    "oauth_filter.anonymous",
    "oauth_filter.cors_preflight",
    "oauth_filter.public",
    "oauth_filter.no_rule",
    "oauth_filter.denied.missing_token",
    "oauth_filter.denied.invalid_request",
    "oauth_filter.denied.invalid_token",
    "oauth_filter.denied.insufficient_scope",
    "oauth_filter.denied.insufficient_user_authentication",
    "oauth_filter.denied.temporarily_unavailable",
    "oauth_filter.metadata.served",
    "oauth_filter.metadata.refused",
    "oauth_filter.denied.invalid_dpop_proof",
    "oauth_filter.denied.use_dpop_nonce",
    "oauth_filter.dpop.replays",
];

/// The counter of a proof refused by the replay store (also counted under `denied`).
pub const DPOP_REPLAYS: usize = 15;

/// Requests whose token was found in the verified-token cache.
pub const JWT_CACHE_HITS: &str = "oauth_filter.jwt.cache_hits";

/// The counter of a request let through.
pub fn passed(passed: Passed) -> usize {
    match passed {
        Passed::Authenticated => 0,
        Passed::Anonymous => 1,
        Passed::Preflight => 2,
        Passed::Public => 3,
        Passed::NoRule => 4,
    }
}

/// The counter of a request refused for `reason`.
pub fn denied(reason: DenyReason) -> usize {
    match reason {
        DenyReason::MissingToken => 5,
        DenyReason::InvalidRequest => 6,
        DenyReason::InvalidToken => 7,
        DenyReason::InsufficientScope => 8,
        DenyReason::InsufficientUserAuthentication => 9,
        DenyReason::Unavailable => 10,
        DenyReason::InvalidDpopProof => 13,
        DenyReason::UseDpopNonce => 14,
    }
}

/// The counter of the filter's own answer under the well-known path: a document (`served`), a
/// 404 or 405 (`refused`); a preflight answer counts as neither.
pub fn metadata(served: bool, refused: bool) -> Option<usize> {
    if served {
        Some(11)
    } else {
        refused.then_some(12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter() {
        for reason in DenyReason::ALL {
            let name = REQUEST_COUNTERS[denied(reason)];
            assert_eq!(name, format!("oauth_filter.denied.{}", reason.name()));
        }
        let passes = [
            Passed::Authenticated,
            Passed::Anonymous,
            Passed::Preflight,
            Passed::Public,
            Passed::NoRule,
        ];
        let mut all: Vec<usize> = passes.into_iter().map(passed).collect();
        all.extend(DenyReason::ALL.map(denied));
        all.extend(
            [metadata(true, false), metadata(false, true)]
                .into_iter()
                .flatten(),
        );
        all.push(DPOP_REPLAYS);
        all.sort_unstable();
        assert_eq!(all, (0..REQUEST_COUNTERS.len()).collect::<Vec<_>>());
        assert_eq!(metadata(false, false), None);
    }
}
