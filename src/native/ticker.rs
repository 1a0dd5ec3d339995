//! The native shell's clock: Envoy gives dynamic modules no timers, so a thread per
//! configuration posts the main thread a look at what is due (key refreshes and retries,
//! upstream tokens to renew) every [`TICK`], as the Wasm build's ticks do.

use super::abi::{self, Ptr};
use super::remote::FETCH;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often (the Wasm build ticks every 100 ms; a post to the main thread costs more).
const TICK: Duration = Duration::from_millis(200);

macro_rules! lock {
    ($e:expr) => {
        $e.unwrap_or_else(|poisoned| poisoned.into_inner())
    };
}

/// A thread that posts [`FETCH`] every [`TICK`] (Envoy gives dynamic modules no timers; the
/// scheduler may be committed from any thread), stopped and joined before the scheduler goes.
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl Ticker {
    pub fn start(scheduler: Ptr) -> Option<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("oauth-filter-tick".into())
            .spawn(move || loop {
                let (stopped, wake) = &*flag;
                let guard = lock!(stopped.lock());
                let (guard, _) = lock!(wake.wait_timeout(guard, TICK));
                if *guard {
                    return;
                }
                drop(guard);
                // SAFETY: the scheduler is deleted only after this thread is joined.
                unsafe { abi::config_schedule(scheduler, FETCH) }
            });
        match thread {
            Ok(thread) => Some(Ticker { stop, thread }),
            Err(e) => {
                abi::log(abi::LOG_WARN, || {
                    format!("oauth-filter: no ticker thread ({e}): keys refresh only with traffic")
                });
                None
            }
        }
    }

    pub fn stop(self) {
        let (stopped, wake) = &*self.stop;
        *lock!(stopped.lock()) = true;
        wake.notify_all();
        let _ = self.thread.join();
    }
}
