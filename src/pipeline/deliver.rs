//! Delivery of the outputs: C-STORE to each destination, retried with
//! exponential back-off, ending as sent or dead (with the reason), never a
//! loop. One destination's trouble (down, slow, hung after the handshake)
//! does not hold up another's, nor new jobs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tracing::{error, info, warn};

use super::{jobs, pause, Context};
use crate::config::Destination;
use crate::index::{at_offset, now};
use crate::send::{self, DicomFile};

/// A pending delivery that is due.
#[derive(Clone)]
struct Due {
    id: i64,
    job_id: i64,
    sop: String,
    /// The study the output belongs to, and what it is (`outputs.kind`),
    /// for the log lines: an admin looks for a study, or a kind of object
    /// a destination refuses.
    study: String,
    kind: String,
    path: PathBuf,
    attempts: i64,
}

impl Due {
    /// The kind of object, as the log names it.
    fn object(&self) -> &'static str {
        match self.kind.as_str() {
            "rtstruct" => "RT Structure Set",
            "sr-not-scored" => "SR (not scored)",
            _ => "SR",
        }
    }
}

/// An association in flight to one destination, with the deliveries it
/// carries.
struct Sending {
    due: Vec<Due>,
    task: tokio::task::JoinHandle<Vec<Result<Option<String>, Failure>>>,
}

/// Deliver until stopped. Each destination has at most one association in
/// flight, and each is recorded when it ends: a destination that is slow or
/// hangs holds up only its own deliveries, not the others' nor new jobs'.
pub async fn run(ctx: Arc<Context>, stop: Arc<AtomicBool>) {
    let mut busy: HashMap<String, Sending> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        record_finished(&ctx, &mut busy, false).await;
        if let Err(e) = start_due(&ctx, &mut busy).await {
            warn!("delivery check failed: {e}");
        }
        pause(&stop, ctx.settings.poll_seconds).await;
    }
    // Stopping: give the associations in flight a moment, then leave the
    // rest pending for the next start (a peer may get an object twice).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while busy.values().any(|s| !s.task.is_finished()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    record_finished(&ctx, &mut busy, true).await;
}

/// Start an association to each destination that has due deliveries and
/// none in flight.
async fn start_due(ctx: &Context, busy: &mut HashMap<String, Sending>) -> Result<(), String> {
    let rows = sqlx::query(
        "SELECT d.id, d.job_id, d.sop_instance_uid, d.destination, d.attempts, o.file_path, \
         o.study_instance_uid, o.kind FROM deliveries d \
         JOIN outputs o ON o.sop_instance_uid = d.sop_instance_uid \
         WHERE d.state = 'pending' AND d.next_attempt_at <= ? ORDER BY d.id",
    )
    .bind(now())
    .fetch_all(&ctx.pool)
    .await
    .map_err(|e| e.to_string())?;
    let mut by_dest: BTreeMap<String, Vec<Due>> = BTreeMap::new();
    for r in rows {
        let dest: String = r.get(3);
        if busy.contains_key(&dest) {
            continue;
        }
        by_dest.entry(dest).or_default().push(Due {
            id: r.get(0),
            job_id: r.get(1),
            sop: r.get(2),
            attempts: r.get(4),
            path: ctx.data_dir.join(r.get::<String, _>(5)),
            study: r.get(6),
            kind: r.get(7),
        });
    }
    let fault = ctx.settings.fault == "panic-in-delivery";
    let backoff = (
        ctx.settings.delivery_retry_base_seconds,
        ctx.settings.delivery_retry_max_seconds,
    );
    for (dest, due) in by_dest {
        let due = match claim(&ctx.pool, due, backoff).await {
            Ok(due) if due.is_empty() => continue,
            Ok(due) => due,
            Err(e) => {
                warn!(destination = %dest, "cannot record a delivery attempt, so nothing is sent: {e}");
                continue;
            }
        };
        let (d, ae, files) = (dest.clone(), ctx.ae_title.clone(), due.clone());
        let tls = ctx.tls.clone();
        let wait = Duration::from_secs(ctx.settings.delivery_response_seconds.max(1));
        let task = tokio::spawn(async move {
            if fault {
                panic!("fault injected by pipeline.fault");
            }
            send_all(&d, &ae, tls, wait, &files).await
        });
        busy.insert(dest, Sending { due, task });
    }
    Ok(())
}

/// Count the attempt of each delivery about to be sent and move its next try
/// back by the back-off, in one transaction, before anything is sent. A
/// result that then cannot be recorded (a full disk, a database that cannot
/// be written) leaves the delivery waiting out its back-off with the attempt
/// counted, instead of sent again at every poll for as long as that lasts,
/// and its attempts still run out. Deliveries changed since they were read
/// (`esorisk retry`, another start) are left out.
async fn claim(
    pool: &sqlx::SqlitePool,
    due: Vec<Due>,
    (base, cap): (u64, u64),
) -> sqlx::Result<Vec<Due>> {
    let mut tx = pool.begin().await?;
    let mut claimed = Vec::with_capacity(due.len());
    for d in due {
        let next = at_offset(jobs::backoff_seconds(base, d.attempts + 1, cap));
        let changed = sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ? \
             WHERE id = ? AND state = 'pending' AND attempts = ?",
        )
        .bind(next)
        .bind(d.id)
        .bind(d.attempts)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            claimed.push(d);
        }
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Record the results of the associations that ended. A panic in one (a
/// defect, or a peer's answer the code did not foresee) fails this attempt
/// of each of its deliveries, so they back off and end dead with the
/// message instead of being retried for ever. With `abort`, those still in
/// flight are stopped and their deliveries left as they were.
async fn record_finished(ctx: &Context, busy: &mut HashMap<String, Sending>, abort: bool) {
    let (max, base) = (
        i64::from(ctx.settings.delivery_max_attempts),
        (
            ctx.settings.delivery_retry_base_seconds,
            ctx.settings.delivery_retry_max_seconds,
        ),
    );
    let ended: Vec<String> = busy
        .iter()
        .filter(|(_, s)| s.task.is_finished() || abort)
        .map(|(d, _)| d.clone())
        .collect();
    for dest in ended {
        let Some(Sending { due, task }) = busy.remove(&dest) else {
            continue;
        };
        if !task.is_finished() {
            task.abort();
            warn!(destination = %dest, deliveries = due.len(), "delivery interrupted by shutdown; sent again at the next start");
            continue;
        }
        let results = match task.await {
            Ok(r) => r,
            Err(e) => {
                let what = match e.try_into_panic() {
                    Ok(payload) => crate::panic_message(payload.as_ref()),
                    Err(e) => e.to_string(),
                };
                error!(destination = %dest, "internal error while sending: {what}");
                let why = format!("internal error in esorisk while sending ({what})");
                due.iter()
                    .map(|_| Err(Failure::retry(why.clone())))
                    .collect()
            }
        };
        for (d, r) in due.iter().zip(results) {
            if let Err(e) = record(&ctx.pool, d, &dest, r, max, base).await {
                warn!(delivery = d.id, "cannot record the delivery: {e}");
            }
        }
    }
}

/// Why a delivery attempt failed.
struct Failure {
    message: String,
    /// Another attempt would fail the same way until someone changes the
    /// destination (it refused the object's SOP class): the delivery is
    /// dead at once, and `esorisk retry` gives it another round.
    permanent: bool,
}

impl Failure {
    fn retry(message: String) -> Failure {
        Failure {
            message,
            permanent: false,
        }
    }

    fn permanent(message: String) -> Failure {
        Failure {
            message,
            permanent: true,
        }
    }
}

/// C-STORE every file to `dest` over one association (over TLS for a
/// `+tls` destination); one result each.
async fn send_all(
    dest: &str,
    calling_ae: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    wait: Duration,
    due: &[Due],
) -> Vec<Result<Option<String>, Failure>> {
    let all = |e: String| due.iter().map(|_| Err(Failure::retry(e.clone()))).collect();
    let Some(d) = Destination::parse(dest) else {
        return all(format!("bad destination {dest:?}"));
    };
    let files: Vec<Result<DicomFile, String>> = due
        .iter()
        .map(|x| DicomFile::read(&x.path).map_err(|e| e.to_string()))
        .collect();
    // An output that cannot be read (removed with its study by retention,
    // or damaged) will not come back by trying again.
    let unreadable = |e: &str| {
        Failure::permanent(format!(
            "the output file cannot be read ({e}); was its study removed (storage.retention_days, esorisk purge)?"
        ))
    };
    if files.iter().all(Result::is_err) {
        return files
            .iter()
            .map(|f| Err(unreadable(f.as_ref().err().map_or("", String::as_str))))
            .collect();
    }
    // Each SOP class in the files' transfer syntax, and in Implicit VR
    // Little Endian, which every SCP must accept: `send::store` re-encodes
    // when the peer takes only that.
    let implicit = crate::store::ts::IMPLICIT_VR_LE;
    let mut contexts: Vec<(&str, Vec<&str>)> = Vec::new();
    for f in files.iter().flatten() {
        if !contexts.iter().any(|(a, _)| *a == f.sop_class_uid) {
            let mut ts = vec![f.transfer_syntax_uid.as_str()];
            if f.transfer_syntax_uid != implicit {
                ts.push(implicit);
            }
            contexts.push((&f.sop_class_uid, ts));
        }
    }
    let addr = format!("{}:{}", d.host, d.port);
    let assoc = tokio::time::timeout(
        Duration::from_secs(30),
        send::connect(&d, tls, calling_ae, &contexts),
    )
    .await;
    let mut assoc = match assoc {
        Ok(Ok(a)) => a,
        Ok(Err(e)) if e.refused_every_context() => {
            // dicom-ul keeps no reason for a refused context: the SOP class
            // or the transfer syntaxes, the message names both.
            let why = format!(
                "{} accepted none of the objects offered ({}, each in its own transfer syntax \
                 and in Implicit VR Little Endian): it does not take those SOP classes, or not in \
                 those transfer syntaxes: {e}; set this destination's objects, or have it accept \
                 them, then esorisk retry",
                d.ae_title,
                contexts
                    .iter()
                    .map(|(c, _)| crate::receive::sop::name(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return due
                .iter()
                .map(|_| Err(Failure::permanent(why.clone())))
                .collect();
        }
        Ok(Err(e)) => {
            if let Some(why) = e.rejected_permanently() {
                let why = format!(
                    "{} rejected the association permanently ({why}): check this destination's AE title, \
                     and that it admits esorisk's ({calling_ae}), then esorisk retry",
                    d.ae_title
                );
                return due
                    .iter()
                    .map(|_| Err(Failure::permanent(why.clone())))
                    .collect();
            }
            return all(e.to_string());
        }
        Err(_) => return all(format!("no answer from {addr} within 30 s")),
    };
    let mut out = Vec::new();
    // After a C-STORE without a response (or a broken connection) the
    // association cannot be trusted: the rest wait for the next attempt.
    let mut broken: Option<String> = None;
    for (i, f) in files.iter().enumerate() {
        if let Some(why) = &broken {
            out.push(Err(Failure::retry(format!("not sent: {why}"))));
            continue;
        }
        let r = match f {
            Err(e) => {
                out.push(Err(unreadable(e)));
                continue;
            }
            Ok(f) if !assoc.accepts(&f.sop_class_uid) => {
                out.push(Err(Failure::permanent(format!(
                    "{} does not accept {} (it refused the SOP class in the association \
                     negotiation): set this destination's objects, or have it accept the \
                     class, then esorisk retry",
                    d.ae_title,
                    crate::receive::sop::name(&f.sop_class_uid)
                ))));
                continue;
            }
            Ok(f) => match tokio::time::timeout(wait, assoc.store(i as u16 + 1, f)).await {
                Ok(Ok(rsp)) => match rsp.status {
                    Some(0) => Ok(None),
                    // Warnings (PS3.7 C.4.2.1.4, annex C): stored, with a
                    // remark worth keeping (B006: elements were discarded).
                    Some(s @ (0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF)) => Ok(Some(format!(
                        "{} stored it with warning status {s:04X}{}",
                        d.ae_title,
                        rsp.error_comment
                            .as_deref()
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default()
                    ))),
                    Some(s) => {
                        let why = format!(
                            "{} refused {} with status {s:04X}{}",
                            d.ae_title,
                            f.sop_instance_uid,
                            rsp.error_comment
                                .as_deref()
                                .map(|c| format!(" ({c})"))
                                .unwrap_or_default()
                        );
                        // Out of resources (A7xx) and the like may pass;
                        // an object refused for what it is (A9xx: does not
                        // match its class, Cxxx: cannot understand, 0122:
                        // class not supported) is refused again as it is.
                        if matches!(s, 0xA900..=0xA9FF | 0xC000..=0xCFFF | 0x0122) {
                            out.push(Err(Failure::permanent(format!(
                                "{why}: the object itself is refused, so it is not sent again; esorisk retry once the destination takes it"
                            ))));
                            continue;
                        }
                        Err(why)
                    }
                    None => Err("the C-STORE response has no status".into()),
                },
                Ok(Err(e)) => {
                    broken = Some(format!("the association with {addr} failed: {e}"));
                    Err(e.to_string())
                }
                Err(_) => {
                    let why = format!(
                        "no C-STORE response from {addr} within {} s",
                        wait.as_secs()
                    );
                    broken = Some(why.clone());
                    Err(why)
                }
            },
        };
        out.push(r.map_err(Failure::retry));
    }
    // A peer that stops answering must not keep this task (and its
    // destination's deliveries) waiting for a release either.
    let end = Duration::from_secs(10);
    if broken.is_some() {
        let _ = tokio::time::timeout(end, assoc.abort()).await;
    } else if tokio::time::timeout(end, assoc.release()).await.is_err() {
        warn!(destination = %dest, "no answer to the release within 10 s; connection closed");
    }
    out
}

/// Deliveries counted per destination and state, with the last error of
/// each group (`esorisk jobs`), of the jobs that `state` and `study` select
/// (all jobs when both are `None`): what `esorisk jobs --state failed`
/// lists beside the failed jobs is their deliveries, not those of every
/// job. The job list's `--limit` does not apply, so that every dead
/// delivery of the selected jobs is still named with its job.
pub async fn summary(
    pool: &sqlx::SqlitePool,
    state: Option<&str>,
    study: Option<&str>,
) -> sqlx::Result<Vec<jobs::DeliverySummary>> {
    const OF_JOBS: &str = "(SELECT id FROM jobs WHERE (?1 IS NULL OR state = ?1) \
                           AND (?2 IS NULL OR study_instance_uid = ?2))";
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT destination, state, count(*), \
         (SELECT last_error FROM deliveries e WHERE e.destination = d.destination \
          AND e.state = d.state AND e.last_error IS NOT NULL AND e.job_id IN {OF_JOBS} \
          ORDER BY e.id DESC LIMIT 1), \
         CASE WHEN state = 'sent' THEN '' ELSE group_concat(DISTINCT job_id) END \
         FROM deliveries d WHERE d.job_id IN {OF_JOBS} \
         GROUP BY destination, state ORDER BY destination, state"
    )))
    .bind(state)
    .bind(study)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ids: Option<String> = r.get(4);
            let mut ids: Vec<i64> = ids
                .unwrap_or_default()
                .split(',')
                .filter_map(|i| i.trim().parse().ok())
                .collect();
            ids.sort_unstable();
            jobs::DeliverySummary {
                destination: r.get(0),
                state: r.get(1),
                count: r.get(2),
                last_error: r.get(3),
                jobs: ids,
            }
        })
        .collect())
}

/// Associate with `d` as a delivery would and send a C-ECHO: how long the
/// round took, or why it failed.
pub async fn echo(
    d: &Destination,
    tls: Option<Arc<rustls::ClientConfig>>,
    calling_ae: &str,
) -> Result<Duration, String> {
    let start = std::time::Instant::now();
    let contexts = [(
        crate::dimse::VERIFICATION_SOP_CLASS,
        vec![crate::store::ts::IMPLICIT_VR_LE],
    )];
    let round = async {
        let mut assoc = send::connect(d, tls, calling_ae, &contexts).await?;
        let status = assoc.echo(1).await;
        let _ = assoc.release().await;
        status
    };
    match tokio::time::timeout(Duration::from_secs(30), round).await {
        Ok(Ok(0)) => Ok(start.elapsed()),
        Ok(Ok(status)) => Err(format!("C-ECHO answered with status {status:04X}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from {}:{} within 30 s", d.host, d.port)),
    }
}

async fn record(
    pool: &sqlx::SqlitePool,
    d: &Due,
    dest: &str,
    r: Result<Option<String>, Failure>,
    max: i64,
    (base, cap): (u64, u64),
) -> sqlx::Result<()> {
    let attempts = d.attempts + 1;
    // The delivery's new state and the event that records it are one
    // transaction: the job's history never lacks a delivery's end.
    let mut tx = pool.begin().await?;
    // (message, whether the delivery ends dead now)
    let r = r.map_err(|f| (f.message, f.permanent || attempts >= max));
    match r {
        Ok(warning) => {
            // A warning stays in last_error of the sent delivery.
            sqlx::query("UPDATE deliveries SET state = 'sent', attempts = ?, sent_at = ?, last_error = ? WHERE id = ?")
                .bind(attempts)
                .bind(now())
                .bind(&warning)
                .bind(d.id)
                .execute(&mut *tx)
                .await?;
            let detail = match &warning {
                Some(w) => {
                    warn!(job = d.job_id, study = %d.study, object = d.object(), sop = %d.sop, destination = dest, "delivered with a warning: {w}");
                    format!("{} to {dest}; {w}", d.sop)
                }
                None => {
                    info!(job = d.job_id, study = %d.study, object = d.object(), sop = %d.sop, destination = dest, "delivered");
                    format!("{} to {dest}", d.sop)
                }
            };
            jobs::event(&mut *tx, d.job_id, "sent", &detail).await?;
        }
        Err((e, true)) => {
            let why = if attempts >= max {
                format!("gave up after {attempts} attempts: {e}")
            } else {
                e
            };
            sqlx::query(
                "UPDATE deliveries SET state = 'dead', attempts = ?, last_error = ? WHERE id = ?",
            )
            .bind(attempts)
            .bind(&why)
            .bind(d.id)
            .execute(&mut *tx)
            .await?;
            warn!(job = d.job_id, study = %d.study, object = d.object(), sop = %d.sop, destination = dest, "delivery dead: {why}");
            jobs::event(
                &mut *tx,
                d.job_id,
                "delivery-dead",
                &format!("{} to {dest}: {why}", d.sop),
            )
            .await?;
        }
        Err((e, false)) => {
            let delay = jobs::backoff_seconds(base, attempts, cap);
            sqlx::query("UPDATE deliveries SET attempts = ?, last_error = ?, next_attempt_at = ? WHERE id = ?")
                .bind(attempts)
                .bind(&e)
                .bind(at_offset(delay))
                .bind(d.id)
                .execute(&mut *tx)
                .await?;
            warn!(job = d.job_id, study = %d.study, object = d.object(), sop = %d.sop, destination = dest, "delivery failed, retry in {delay:.0} s: {e}");
            jobs::event(
                &mut *tx,
                d.job_id,
                "delivery-retry",
                &format!("{} to {dest} in {delay:.0} s: {e}", d.sop),
            )
            .await?;
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[tokio::test]
    async fn an_attempt_is_counted_before_it_is_sent_and_only_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let index = crate::index::Index::open(&dir.path().join("index.sqlite"))
            .await
            .expect("open");
        let pool = index.pool().clone();
        for sql in [
            "INSERT INTO jobs (id, study_instance_uid, input_key, input_uids, model_version, \
             state, max_attempts, created_at) VALUES (1, '1.2', 'k', '[]', 'm', 'succeeded', 3, 'then')",
            "INSERT INTO outputs VALUES ('1.2.3', 1, '1.2', '1.2.4', '1.2.840.10008.5.1.4.1.1.88.33', \
             'sr', 'out/1.2/1.2.3.dcm', 'then')",
            "INSERT INTO deliveries (id, job_id, sop_instance_uid, destination, state, attempts, \
             next_attempt_at) VALUES (7, 1, '1.2.3', 'TPS@127.0.0.1:104', 'pending', 2, '2000-01-01')",
        ] {
            sqlx::query(sql).execute(&pool).await.expect(sql);
        }
        let due = || Due {
            id: 7,
            job_id: 1,
            sop: "1.2.3".into(),
            study: "1.2".into(),
            kind: "sr".into(),
            path: PathBuf::from("out/1.2/1.2.3.dcm"),
            attempts: 2,
        };
        let claimed = claim(&pool, vec![due()], (5, 1800)).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        let (attempts, next): (i64, String) =
            sqlx::query_as("SELECT attempts, next_attempt_at FROM deliveries WHERE id = 7")
                .fetch_one(&pool)
                .await
                .expect("row");
        // The third attempt is counted, and the next waits out its back-off
        // (20 s) even if this one's result is never recorded.
        assert_eq!(attempts, 3);
        assert!(next > now(), "{next}");
        // A second claim from the same stale read takes nothing.
        assert!(claim(&pool, vec![due()], (5, 1800))
            .await
            .expect("claim")
            .is_empty());
        index.close().await;
    }
}
