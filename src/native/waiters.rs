//! Requests paused on any worker until what they wait for changes: a [`Parked`] list under a
//! lock, each request woken through its stream's own scheduler. The lock orders a wake against
//! a stream going away ([`Waiters::forget`] before its scheduler is deleted) and against a
//! change racing the park (the generation is read under it).

use super::abi::{self, Ptr};
use super::remote::WAKE;
use crate::park::{Awaited, Parked};
use std::sync::Mutex;

/// The requests paused for one configuration's keys or tokens.
#[derive(Default)]
pub struct Waiters(Mutex<Parked<Ptr>>);

impl Waiters {
    fn parked(&self) -> std::sync::MutexGuard<'_, Parked<Ptr>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parks the stream of `scheduler` until `awaited` changes. `seen`: the generation its
    /// decision read; `current` reads the generation now (bumped before [`Waiters::wake`]):
    /// if it moved on, the request is woken at once. Whether it parked.
    pub fn park(
        &self,
        awaited: Awaited,
        scheduler: Ptr,
        seen: u64,
        current: impl FnOnce() -> u64,
    ) -> bool {
        let mut parked = self.parked();
        match parked.park_unless_changed(awaited, scheduler, seen, current()) {
            Ok(()) => true,
            Err(scheduler) => {
                // SAFETY: the stream's own scheduler, alive in its hook.
                unsafe { abi::filter_schedule(scheduler, WAKE) };
                false
            }
        }
    }

    /// Wakes the requests parked for `awaited`.
    pub fn wake(&self, awaited: Awaited) {
        let mut parked = self.parked();
        for scheduler in parked.take(awaited) {
            // SAFETY: under the lock `forget` takes before a scheduler is deleted.
            unsafe { abi::filter_schedule(scheduler, WAKE) };
        }
    }

    /// Forgets a stream that is going away (before its scheduler is deleted).
    pub fn forget(&self, scheduler: Ptr) {
        self.parked().forget(&scheduler);
    }
}
