//! The root context: loads the configuration and creates one HTTP context a request.

use super::http::Http;
use super::metrics::Metrics;
use crate::config::Config;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
    metrics: Rc<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.metrics = Rc::new(Metrics::define());
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "oauth-filter: configured {} provider(s), {} rule(s)",
                    config.providers.len(),
                    config.rules.len()
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                // One line naming the field; Envoy then refuses the configuration.
                log::error!("oauth-filter: configuration refused: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(
            self.config.clone(),
            self.metrics.clone(),
        )))
    }
}
