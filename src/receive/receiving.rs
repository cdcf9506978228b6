//! Which studies open associations are storing into, shared between the
//! receiver and the scoring pipeline's watcher.
//!
//! A sender that takes its time between instances (a planning system that
//! exports the plan, then computes and sends the dose over the same
//! association) would otherwise see its study judged stable, and scored
//! without its dose, once `pipeline.stable_seconds` have passed since the
//! last instance. The watcher leaves a study alone while an association
//! that stored an instance of it is open, and counts the stable time from
//! the end of the last such association. Kept in memory only: after a
//! restart no association is open, and the arrival times in the index are
//! what is left to judge by.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a study stands with the associations storing into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// An association that stored an instance of it is still open.
    Open,
    /// The last such association ended this long ago (less than the
    /// tracker's `keep`).
    Ended(Duration),
    /// None of it is known (none, or ended longer than `keep` ago).
    Idle,
}

#[derive(Debug)]
struct Entry {
    /// Associations open that stored (or began to store) an instance of it.
    open: usize,
    /// When the last of them ended, once none is open.
    ended: Option<Instant>,
}

/// The studies being received; one per node.
#[derive(Debug)]
pub struct Receiving {
    studies: Mutex<HashMap<String, Entry>>,
    /// How long an ended association is remembered: the stable time, after
    /// which it no longer matters.
    keep: Duration,
}

impl Receiving {
    pub fn new(keep: Duration) -> Receiving {
        Receiving {
            studies: Mutex::new(HashMap::new()),
            keep,
        }
    }

    /// The map, also after a panic elsewhere while it was held (its
    /// entries are single counters, consistent at every point).
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.studies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An association stores its first instance of `study`.
    pub fn opened(&self, study: &str) {
        let mut map = self.map();
        let e = map.entry(study.to_string()).or_insert(Entry {
            open: 0,
            ended: None,
        });
        e.open += 1;
        e.ended = None;
    }

    /// An association that stored instances of `studies` (each named once,
    /// as given to [`opened`](Self::opened)) ended. Entries that ended
    /// longer than `keep` ago are forgotten on the way.
    pub fn ended(&self, studies: &HashSet<String>) {
        let now = Instant::now();
        let mut map = self.map();
        for s in studies {
            if let Some(e) = map.get_mut(s) {
                e.open = e.open.saturating_sub(1);
                if e.open == 0 {
                    e.ended = Some(now);
                }
            }
        }
        let keep = self.keep;
        map.retain(|_, e| e.open > 0 || e.ended.is_some_and(|t| now - t < keep));
    }

    /// Where `study` stands.
    pub fn receipt(&self, study: &str) -> Receipt {
        match self.map().get(study) {
            Some(e) if e.open > 0 => Receipt::Open,
            Some(Entry { ended: Some(t), .. }) if t.elapsed() < self.keep => {
                Receipt::Ended(t.elapsed())
            }
            _ => Receipt::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_study_is_open_until_its_last_association_ends_then_remembered_for_keep() {
        let r = Receiving::new(Duration::from_millis(200));
        let one: HashSet<String> = ["1.2.3".to_string()].into();
        assert_eq!(r.receipt("1.2.3"), Receipt::Idle);
        r.opened("1.2.3");
        r.opened("1.2.3");
        assert_eq!(r.receipt("1.2.3"), Receipt::Open);
        r.ended(&one);
        assert_eq!(r.receipt("1.2.3"), Receipt::Open, "another is still open");
        r.ended(&one);
        assert!(matches!(r.receipt("1.2.3"), Receipt::Ended(_)));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(r.receipt("1.2.3"), Receipt::Idle);
        // Forgotten when another association ends.
        r.ended(&HashSet::new());
        assert!(r.map().is_empty());
    }
}
