//! Paused requests and what wakes them, written once for both shells: the requests parked until
//! a provider's keys or an upstream client's token change ([`Parked`]), and the introspection
//! calls under way with the requests waiting for each ([`Calls`]: one call per token however
//! many wait). A waiter `W` is whatever the shell wakes a request by: a context id in Wasm, a
//! stream's scheduler natively. No host calls here: the shell takes the waiters out and wakes
//! them.

use crate::cache::Key;
use std::collections::HashMap;

/// What a paused request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// A change of provider `p`'s keys.
    Keys(usize),
    /// A change of upstream client `c`'s token.
    Credential(usize),
}

/// No deadline: the request is woken by a change only (the shell's calls have timeouts).
pub const NEVER: u64 = u64::MAX;

/// Requests paused until what they wait for changes, or their deadline passes.
#[derive(Debug)]
pub struct Parked<W> {
    waiting: Vec<(Awaited, W, u64)>,
}

impl<W> Default for Parked<W> {
    fn default() -> Self {
        Parked {
            waiting: Vec::new(),
        }
    }
}

impl<W: PartialEq> Parked<W> {
    /// Parks `waiter` until `awaited` changes or `deadline` (ms, or [`NEVER`]).
    pub fn park(&mut self, awaited: Awaited, waiter: W, deadline: u64) {
        self.waiting.push((awaited, waiter, deadline));
    }

    /// Parks `waiter` unless what it waits for changed since its decision: `seen` is the
    /// generation the decision read, `now` the current one. `Err(waiter)`: it changed, wake the
    /// request at once. Under the same lock as [`Parked::take`], whose caller bumps the
    /// generation first, no change is missed.
    pub fn park_unless_changed(
        &mut self,
        awaited: Awaited,
        waiter: W,
        seen: u64,
        now: u64,
    ) -> Result<(), W> {
        if seen != now {
            return Err(waiter);
        }
        self.park(awaited, waiter, NEVER);
        Ok(())
    }

    /// `awaited` changed: the requests waiting for it, in the order they parked.
    pub fn take(&mut self, awaited: Awaited) -> Vec<W> {
        self.drain(|a, _| *a == awaited)
            .into_iter()
            .map(|(_, w)| w)
            .collect()
    }

    /// The requests whose deadline is `now` or earlier, with what they waited for.
    pub fn expired(&mut self, now: u64) -> Vec<(Awaited, W)> {
        self.drain(|_, deadline| deadline <= now)
    }

    /// Forgets `waiter` (its request went away: nothing may wake it now).
    pub fn forget(&mut self, waiter: &W) {
        self.waiting.retain(|(_, w, _)| w != waiter);
    }

    /// How many requests are parked.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn drain(&mut self, out: impl Fn(&Awaited, u64) -> bool) -> Vec<(Awaited, W)> {
        let mut taken = Vec::new();
        let mut kept = Vec::with_capacity(self.waiting.len());
        for (awaited, waiter, deadline) in self.waiting.drain(..) {
            if out(&awaited, deadline) {
                taken.push((awaited, waiter));
            } else {
                kept.push((awaited, waiter, deadline));
            }
        }
        self.waiting = kept;
        taken
    }
}

/// An introspection call for one token, and the requests waiting for its answer.
#[derive(Debug)]
pub struct Call<W> {
    /// The provider (index into `Config::providers`).
    pub provider: usize,
    /// The token, until the call is sent.
    pub token: String,
    pub waiters: Vec<W>,
    /// When it was asked for, and when its waiters give up (ms, or [`NEVER`]).
    pub started: u64,
    pub deadline: u64,
    /// The host's id of the call, once sent.
    pub id: Option<u64>,
}

/// The introspection calls under way, by token hash.
#[derive(Debug)]
pub struct Calls<W> {
    pending: HashMap<Key, Call<W>>,
    by_id: HashMap<u64, Key>,
}

impl<W> Default for Calls<W> {
    fn default() -> Self {
        Calls {
            pending: HashMap::new(),
            by_id: HashMap::new(),
        }
    }
}

/// How a request joined the calls: it made the call (the shell sends it), or waits behind one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    First,
    Behind,
}

impl<W> Calls<W> {
    /// `call`'s waiters need the answer for `key`: they join the call under way, or `call` is
    /// the one to make.
    pub fn join(&mut self, key: Key, call: Call<W>) -> Joined {
        if let Some(under_way) = self.pending.get_mut(&key) {
            under_way.waiters.extend(call.waiters);
            return Joined::Behind;
        }
        self.pending.insert(key, call);
        Joined::First
    }

    /// The call for `key` was sent as `id`; its token is no longer kept.
    pub fn sent(&mut self, key: &Key, id: u64) {
        if let Some(call) = self.pending.get_mut(key) {
            call.id = Some(id);
            call.token = String::new();
            self.by_id.insert(id, *key);
        }
    }

    /// The calls not sent yet: their keys.
    pub fn unsent(&self) -> Vec<Key> {
        let unsent = self.pending.iter().filter(|(_, c)| c.id.is_none());
        unsent.map(|(key, _)| *key).collect()
    }

    /// The call for `key`, if under way.
    pub fn get(&self, key: &Key) -> Option<&Call<W>> {
        self.pending.get(key)
    }

    /// Whether `id` is one of these calls.
    pub fn owns(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The token hash call `id` is for.
    pub fn key_of(&self, id: u64) -> Option<Key> {
        self.by_id.get(&id).copied()
    }

    /// The answer to call `id` arrived: the call, taken out (with its key).
    pub fn answered(&mut self, id: u64) -> Option<(Key, Call<W>)> {
        let key = self.by_id.remove(&id)?;
        self.finish(&key).map(|call| (key, call))
    }

    /// The call for `key` is over (answered, failed to send): taken out.
    pub fn finish(&mut self, key: &Key) -> Option<Call<W>> {
        let call = self.pending.remove(key)?;
        if let Some(id) = call.id {
            self.by_id.remove(&id);
        }
        Some(call)
    }

    /// The calls whose waiters waited until `now` or longer, taken out (an answer arriving
    /// later is not theirs any more).
    pub fn expired(&mut self, now: u64) -> Vec<(Key, Call<W>)> {
        let late: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(key, _)| *key)
            .collect();
        late.into_iter()
            .filter_map(|key| self.finish(&key).map(|call| (key, call)))
            .collect()
    }

    /// Forgets the waits of requests `gone` says went away.
    pub fn forget(&mut self, gone: impl Fn(&W) -> bool) {
        for call in self.pending.values_mut() {
            call.waiters.retain(|w| !gone(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        [n; 32]
    }

    fn call(waiter: u32, deadline: u64) -> Call<u32> {
        Call {
            provider: 0,
            token: "t".into(),
            waiters: vec![waiter],
            started: 10,
            deadline,
            id: None,
        }
    }

    #[test]
    fn a_change_wakes_only_its_own_waiters_in_order() {
        let mut parked = Parked::default();
        parked.park(Awaited::Keys(0), 1, NEVER);
        parked.park(Awaited::Credential(0), 2, NEVER);
        parked.park(Awaited::Keys(0), 3, NEVER);
        parked.park(Awaited::Keys(1), 4, NEVER);
        assert_eq!(parked.take(Awaited::Keys(0)), [1, 3]);
        assert_eq!(parked.take(Awaited::Keys(0)), Vec::<u32>::new());
        assert_eq!(parked.len(), 2);
        assert_eq!(parked.take(Awaited::Credential(0)), [2]);
    }

    #[test]
    fn deadlines_end_waits_and_gone_requests_are_never_woken() {
        let mut parked = Parked::default();
        parked.park(Awaited::Keys(0), 1, 100);
        parked.park(Awaited::Credential(1), 2, 200);
        parked.park(Awaited::Keys(0), 3, NEVER);
        parked.forget(&3);
        assert_eq!(parked.expired(99), []);
        assert_eq!(parked.expired(100), [(Awaited::Keys(0), 1)]);
        assert_eq!(parked.expired(u64::MAX - 1), [(Awaited::Credential(1), 2)]);
        assert!(parked.is_empty());
    }

    #[test]
    fn a_change_since_the_decision_wakes_at_once() {
        let mut parked = Parked::default();
        assert_eq!(
            parked.park_unless_changed(Awaited::Keys(0), 7, 1, 2),
            Err(7)
        );
        assert!(parked.is_empty());
        assert_eq!(
            parked.park_unless_changed(Awaited::Keys(0), 7, 2, 2),
            Ok(())
        );
        assert_eq!(parked.take(Awaited::Keys(0)), [7]);
    }

    #[test]
    fn one_call_per_token_however_many_wait() {
        let mut calls = Calls::default();
        assert_eq!(calls.join(key(1), call(1, NEVER)), Joined::First);
        assert_eq!(calls.join(key(1), call(2, NEVER)), Joined::Behind);
        assert_eq!(calls.join(key(2), call(3, NEVER)), Joined::First);
        let mut unsent = calls.unsent();
        unsent.sort();
        assert_eq!(unsent, [key(1), key(2)]);
        calls.sent(&key(1), 41);
        assert_eq!(calls.unsent(), [key(2)]);
        assert_eq!(calls.get(&key(1)).map(|c| c.token.as_str()), Some(""));
        assert!(calls.owns(41) && !calls.owns(42));
        let (k, answered) = calls.answered(41).unwrap();
        assert_eq!((k, answered.waiters), (key(1), vec![1, 2]));
        assert!(calls.answered(41).is_none() && !calls.owns(41));
        assert_eq!(calls.finish(&key(2)).map(|c| c.waiters), Some(vec![3]));
    }

    #[test]
    fn late_calls_are_taken_out_and_their_answers_ignored() {
        let mut calls = Calls::default();
        calls.join(key(1), call(1, 100));
        calls.join(key(2), call(2, 200));
        calls.sent(&key(1), 5);
        calls.forget(|w| *w == 2);
        let late = calls.expired(150);
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].0, &late[0].1.waiters), (key(1), &vec![1]));
        assert!(calls.answered(5).is_none());
        assert_eq!(calls.finish(&key(2)).map(|c| c.waiters), Some(vec![]));
    }
}
