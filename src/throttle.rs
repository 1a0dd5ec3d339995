//! Log throttling: while an authorization server is down, every request that needs it fails,
//! and one log line per failure would flood Envoy's log (`make soak` saw ~860 lines a second).
//! A [`Throttle`] lets one line through per window and counts the rest; the counters in
//! `/stats` still count every failure.

/// The default window: one line per provider every ten seconds at most.
pub const WINDOW_MS: u64 = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Throttle {
    /// When the last line went out (ms); `None`: never.
    last: Option<u64>,
    /// Lines held back since then.
    held: u64,
}

impl Throttle {
    /// Whether a line may go out at `now`: `Some(n)` with the number of lines held back since
    /// the last one (to say so in the line), or `None` to hold this one back.
    pub fn admit(&mut self, now: u64, window_ms: u64) -> Option<u64> {
        match self.last {
            // (A wall clock set back lets the next line out rather than holding lines.)
            Some(last) if now >= last && now < last.saturating_add(window_ms) => {
                self.held = self.held.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// The suffix for a line after `held` lines were held back.
pub fn held_note(held: u64) -> String {
    match held {
        0 => String::new(),
        1 => " (1 more like it since the last line)".to_string(),
        n => format!(" ({n} more like it since the last line)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_and_a_count_of_the_rest() {
        let mut t = Throttle::default();
        assert_eq!(t.admit(1_000, 10_000), Some(0));
        for now in (1_001..11_000).step_by(10) {
            assert_eq!(t.admit(now, 10_000), None);
        }
        assert_eq!(t.admit(11_000, 10_000), Some(1000));
        assert_eq!(t.admit(11_001, 10_000), None);
        assert_eq!(t.admit(30_000, 10_000), Some(1));
        assert_eq!(t.admit(40_000, 10_000), Some(0));
        // A clock set back does not hold lines until it catches up.
        let mut t = Throttle::default();
        assert_eq!(t.admit(50_000, 10_000), Some(0));
        assert_eq!(t.admit(1_000, 10_000), Some(0));
        assert_eq!(t.admit(1_001, 10_000), None);
        assert_eq!(held_note(0), "");
        assert_eq!(held_note(1), " (1 more like it since the last line)");
        assert_eq!(held_note(7), " (7 more like it since the last line)");
    }
}
