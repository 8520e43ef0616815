//! Log lines of a failure that repeats (a master that cannot be reached, a peer of another
//! cluster): said the first time, again at once when the failure changes, and otherwise
//! once every `REPEAT_EVERY` with how many times it happened meanwhile, not at every retry.
//! Pure: the time is passed in.

use std::time::{Duration, Instant};

/// How often an unchanged failure is said again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Repeats {
    /// The failure last said, and when.
    said: Option<(String, Instant)>,
    /// Times it happened since it was last said.
    since: u64,
}

impl Repeats {
    /// The failure `line` happened at `now`: the line to log, if any.
    pub fn note(&mut self, line: &str, now: Instant) -> Option<String> {
        match &self.said {
            Some((said, at)) if said == line && now.duration_since(*at) < REPEAT_EVERY => {
                self.since += 1;
                None
            }
            Some((said, _)) if said == line => {
                let text = format!("{line} (again {} times since)", self.since + 1);
                self.said = Some((line.to_owned(), now));
                self.since = 0;
                Some(text)
            }
            _ => {
                self.said = Some((line.to_owned(), now));
                self.since = 0;
                Some(line.to_owned())
            }
        }
    }

    /// It worked: the next failure is said at once.
    pub fn clear(&mut self) {
        *self = Repeats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_said_once_per_period_and_a_new_one_at_once() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut repeats = Repeats::default();
        assert_eq!(repeats.note("refused", at(0)).as_deref(), Some("refused"));
        for second in 1..30 {
            assert_eq!(repeats.note("refused", at(second)), None);
        }
        assert_eq!(
            repeats.note("refused", at(30)).as_deref(),
            Some("refused (again 30 times since)")
        );
        assert_eq!(repeats.note("refused", at(31)), None);
        assert_eq!(repeats.note("other cluster", at(32)).as_deref(), Some("other cluster"));
        repeats.clear();
        assert_eq!(repeats.note("other cluster", at(33)).as_deref(), Some("other cluster"));
    }
}
