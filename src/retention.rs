//! Retention: studies whose last instance arrived more than
//! `storage.retention_days` ago are removed, files and rows, so that a node
//! that receives every plan of a department does not fill its disk.
//!
//! A study goes only when nothing of it is left to do (no job queued or
//! running, no result waiting to be sent). Its jobs, their events and the
//! record of what was sent stay in the database. While a study is being
//! removed the receiver refuses new instances of it with a transient
//! failure (A700, "send it again"), and a study is not removed while one of
//! its instances is being stored: the [`Gate`] between the two is what
//! keeps an instance acknowledged during a removal from being deleted with
//! the study.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

use crate::index::{Index, IndexError, RemovalRule, RemovedStudy};

/// Instances being stored, per study, and studies being removed.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    storing: HashMap<String, usize>,
    removing: HashSet<String>,
}

/// An instance of a study being stored; the study cannot be removed until
/// this is dropped.
pub struct Pass {
    gate: Arc<Gate>,
    study: String,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        if let Some(n) = s.storing.get_mut(&self.study) {
            *n -= 1;
            if *n == 0 {
                s.storing.remove(&self.study);
            }
        }
    }
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is a pair of counters: still right after a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let an instance of `study` be stored; `None` while the study is
    /// being removed.
    pub fn enter(self: &Arc<Self>, study: &str) -> Option<Pass> {
        let mut s = self.lock();
        if s.removing.contains(study) {
            return None;
        }
        *s.storing.entry(study.to_string()).or_default() += 1;
        Some(Pass {
            gate: self.clone(),
            study: study.to_string(),
        })
    }

    /// Close `study` to new instances and wait (up to `patience`) until
    /// none is being stored. `None`, and the study open again, if one still
    /// is; otherwise it stays closed until the guard is dropped.
    pub(crate) async fn close<'a>(
        &'a self,
        study: &'a str,
        patience: Duration,
    ) -> Option<Closed<'a>> {
        self.lock().removing.insert(study.to_string());
        let closed = Closed { gate: self, study };
        let start = std::time::Instant::now();
        while self.lock().storing.contains_key(study) {
            if start.elapsed() > patience {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(closed)
    }
}

/// A study closed to new instances while it is removed; open again when
/// dropped, whatever way the removal ends.
pub(crate) struct Closed<'a> {
    gate: &'a Gate,
    study: &'a str,
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.gate.lock().removing.remove(self.study);
    }
}

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removal {
    pub studies: usize,
    pub instances: usize,
    pub bytes: u64,
}

/// Remove every study whose last instance arrived more than `days` ago
/// and that has nothing left to do, while `keep_going` says so (checked
/// between studies). A study that is busy (an instance being stored, a job
/// claimed meanwhile) is left for the next pass.
pub async fn remove_old(
    index: &Index,
    gate: &Gate,
    data_dir: &Path,
    rule: &RemovalRule,
    keep_going: impl Fn() -> bool,
) -> Result<Removal, IndexError> {
    let mut total = Removal::default();
    for (study, _, _) in index.removable_studies(rule).await? {
        if !keep_going() {
            break;
        }
        let Some(_closed) = gate.close(&study, Duration::from_secs(30)).await else {
            info!(study_uid = %study, "old study still receiving; kept until the next check");
            continue;
        };
        let Some(removed) = index.remove_study(&study, rule).await? else {
            continue;
        };
        let (instances, outputs, bytes) = (
            removed.instance_files.len(),
            removed.output_files.len(),
            removed.bytes,
        );
        // The rows are gone; now the files, off the receiver's threads.
        let (dir, uid) = (data_dir.to_path_buf(), study.clone());
        match tokio::task::spawn_blocking(move || delete_files(&dir, &uid, &removed)).await {
            Ok(()) => index.removal_done(&study).await?,
            Err(e) => {
                warn!(study_uid = %study, error = %e, "removing the files of an old study stopped")
            }
        }
        info!(
            study_uid = %study,
            instances,
            outputs,
            bytes,
            "study removed: its last instance is older than the retention period"
        );
        total.studies += 1;
        total.instances += instances;
        total.bytes += bytes;
    }
    Ok(total)
}

/// Finish the removals a crash interrupted between the rows and the files
/// (at start-up, before the store is reconciled with the index, which would
/// otherwise index those files again).
pub async fn finish_interrupted(index: &Index, data_dir: &Path) -> Result<usize, IndexError> {
    let pending = index.pending_removals().await?;
    // The study may have been sent again since its removal was logged (a
    // removal whose end was never recorded leaves the study open to new
    // instances, at the same paths): a file an instance row holds now is
    // an acknowledged instance, not a leftover.
    let held = if pending.is_empty() {
        Default::default()
    } else {
        index.indexed_paths().await?
    };
    for (study, files) in &pending {
        let removed = RemovedStudy {
            instance_files: files
                .iter()
                .filter(|f| !held.contains(*f))
                .cloned()
                .collect(),
            ..Default::default()
        };
        let (dir, uid) = (data_dir.to_path_buf(), study.clone());
        if let Err(e) =
            tokio::task::spawn_blocking(move || delete_files(&dir, &uid, &removed)).await
        {
            warn!(study_uid = %study, error = %e, "finishing an interrupted removal stopped");
            continue;
        }
        index.removal_done(study).await?;
        warn!(study_uid = %study, files = files.len(), "finished removing a study whose removal a crash interrupted");
    }
    Ok(pending.len())
}

/// Delete a removed study's files and then its directories below `store/`
/// and `out/` that are left empty. A file that cannot be removed is named in
/// the log (nothing refers to it any more).
fn delete_files(data_dir: &Path, study: &str, removed: &RemovedStudy) {
    let mut dirs = HashSet::new();
    for rel in removed.instance_files.iter().chain(&removed.output_files) {
        if !inside_data_dir(rel) {
            warn!(path = %rel, study_uid = %study, "a file path outside the data directory in the index; not removed");
            continue;
        }
        let path = data_dir.join(rel);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "cannot remove a file of an old study");
            }
        }
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| {
            d.strip_prefix(data_dir)
                .is_ok_and(|r| r.components().count() > 1)
        }) {
            dirs.insert(d.to_path_buf());
            dir = d.parent();
        }
    }
    // Deepest first; a directory holding anything else stays.
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// The paths in the index were made from validated UIDs, but the database
/// can be edited by hand: only a relative path that stays below the data
/// directory names a file to delete.
pub(crate) fn inside_data_dir(rel: &str) -> bool {
    let mut parts = Path::new(rel).components().peekable();
    parts.peek().is_some() && parts.all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Delete association log rows older than `days` now and then every
/// `every` until `stop` is set. The log grows by a row per connection, and
/// a monitoring system's C-ECHO every minute is half a million rows a year.
pub async fn prune_association_log(
    index: Index,
    days: u64,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let before = crate::index::at_offset(-(days as f64) * 86_400.0);
        match index.prune_associations(&before).await {
            Ok(0) => {}
            Ok(rows) => info!(
                rows,
                association_log_days = days,
                "association log rows older than storage.association_log_days deleted"
            ),
            Err(e) => {
                warn!(error = %e, "cannot prune the association log; trying again at the next check")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

/// Remove old studies now and then every `every` until `stop` is set;
/// with `pipeline_first`, only studies the scoring pipeline has looked at
/// since their last instance ([`RemovalRule`]).
pub async fn run(
    index: Index,
    gate: Arc<Gate>,
    data_dir: std::path::PathBuf,
    days: u64,
    pipeline_first: bool,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    info!(
        retention_days = days,
        "studies are removed when their last instance is older than storage.retention_days"
    );
    loop {
        let keep_going = || !*stop.borrow();
        let rule = RemovalRule::older_than(days as f64, pipeline_first);
        match remove_old(&index, &gate, &data_dir, &rule, keep_going).await {
            Ok(r) if r.studies > 0 => info!(
                studies = r.studies,
                instances = r.instances,
                bytes = r.bytes,
                "old studies removed"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot remove old studies; trying again at the next check")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_below_the_data_directory_are_removed() {
        assert!(inside_data_dir("store/1.2/1.3/1.4.dcm"));
        assert!(inside_data_dir("out/1.2/1.5.dcm"));
        for bad in [
            "",
            "/etc/passwd",
            "../outside.dcm",
            "store/../../x",
            "./store/a",
        ] {
            assert!(!inside_data_dir(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_study_is_not_removed_while_an_instance_of_it_is_being_stored() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter("1.2.3").expect("open study");
        // Another study is not held up.
        let closed = gate.close("1.2.4", Duration::from_millis(50)).await;
        assert!(closed.is_some());
        assert!(gate.enter("1.2.4").is_none(), "closed while being removed");
        drop(closed);
        assert!(gate.enter("1.2.4").is_some(), "open again when done");
        // The stored instance keeps its study: closing gives up and reopens.
        assert!(gate
            .close("1.2.3", Duration::from_millis(50))
            .await
            .is_none());
        let second = gate.enter("1.2.3").expect("open again after giving up");
        drop(pass);
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(
                async move { gate.close("1.2.3", Duration::from_secs(10)).await.is_some() },
            )
        };
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            gate.enter("1.2.3").is_none(),
            "no new instance while closing"
        );
        assert!(!waiting.is_finished(), "waits for the instance in progress");
        drop(second);
        assert!(waiting.await.expect("join"), "closed once it is stored");
    }
}
