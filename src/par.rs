//! Cohort-wide work spread over threads: the one "take the next index"
//! loop that synthesis, dosiomic features, the ROI search, datasets,
//! re-measuring features and scoring share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The machine's cores (at least one).
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `f(i)` for every `i` in `0..n` on `threads` scoped threads, the results
/// in index order; `done(k)` runs after each item with the number finished
/// so far (for progress lines). Items are handed out one at a time, so
/// slow items do not hold up a thread's share.
pub fn map<T: Send>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
    done: impl Fn(usize) + Sync,
) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                if let Ok(mut v) = slots.lock() {
                    v[i] = Some(r);
                }
                done(finished.fetch_add(1, Ordering::Relaxed) + 1);
            });
        }
    });
    // A panicking worker re-panics at the end of the scope, so every slot
    // is filled here.
    slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_back_in_order_whatever_the_threads() {
        for threads in [1, 2, 7] {
            let count = std::sync::atomic::AtomicUsize::new(0);
            let v = super::map(
                100,
                threads,
                |i| i * i,
                |_| {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                },
            );
            assert_eq!(v, (0..100).map(|i| i * i).collect::<Vec<_>>());
            assert_eq!(count.into_inner(), 100);
        }
        assert!(super::map(0, 4, |i| i, |_| {}).is_empty());
    }
}
