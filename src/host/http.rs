//! One request: gather headers, ask the core, apply the answer.

use super::metrics::Metrics;
use crate::challenge::{self, Challenge};
use crate::config::Config;
use crate::decision::{self, Decision, Forward, Request};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

pub struct Http {
    config: Option<Rc<Config>>,
    metrics: Rc<Metrics>,
}

impl Http {
    pub fn new(config: Option<Rc<Config>>, metrics: Rc<Metrics>) -> Http {
        Http { config, metrics }
    }

    fn deny(&self, challenge: &Challenge) -> Action {
        self.metrics.denied(challenge.reason);
        log::debug!("oauth-filter: denied: {}", challenge.reason.name());
        self.send_http_response(
            challenge.status,
            challenge.headers(),
            Some(challenge.body.as_bytes()),
        );
        Action::Pause
    }

    fn forward(&self, forward: &Forward) -> Action {
        for name in &forward.remove {
            self.set_http_request_header(name, None);
        }
        for (name, value) in &forward.set {
            self.set_http_request_header(name, Some(value));
        }
        if let Some(path) = &forward.path {
            self.set_http_request_header(":path", Some(path));
        }
        self.metrics.passed(forward.passed);
        Action::Continue
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            // Fail closed: a filter without a configuration lets nothing through.
            return self.deny(&challenge::unavailable("The filter is not configured"));
        };
        let headers: Vec<(String, Vec<u8>)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        let path = headers
            .iter()
            .find(|(name, _)| name == ":path")
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .unwrap_or("/")
            .to_string();
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = Request {
            path: &path,
            headers: &headers,
            now,
        };
        match decision::decide(&config, request) {
            Decision::Allow(forward) => self.forward(&forward),
            Decision::Deny(challenge) => self.deny(&challenge),
        }
    }
}
