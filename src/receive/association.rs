//! One accepted association: C-ECHO and C-STORE until release or abort.
//!
//! PDUs come from [`super::wire`], which reads data set fragments into one
//! buffer; they are appended to the instance's temporary file as they
//! arrive, so memory per association stays at one chunk whatever the size
//! of the instance. Appending only copies into the page cache; the slow
//! part, the fsync and rename, runs once per instance, side by side with
//! the commit of the instance's index row. The response is sent only after
//! both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dicom_ul::association::{AsyncAssociation, AsyncServerAssociation};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, Pdu, PresentationContextResultReason,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::sop;
use super::wire::{self, Event, WireError};
use crate::config::wire_ae_title;
use crate::dimse::{self, status, Command};
use crate::index::{self, Index, Indexed, InstanceRecord};
use crate::store::{Checked, Expected, Incoming, Spare, Store, StoreError, Stored};
use crate::uid;

/// What the association task shares with the node.
pub struct Context {
    pub store: Store,
    pub index: Index,
    pub ae_title: String,
    /// How long one read may wait for the peer (ARTIM).
    pub read_timeout: std::time::Duration,
    /// `dicom.fault`: a panic injected for tests, or empty.
    pub fault: String,
    /// Shared with the removal of old studies; `None` when the node removes
    /// none (`storage.retention_days = 0`), so the receive path skips it.
    pub gate: Option<Arc<crate::retention::Gate>>,
    /// Shared with the pipeline's watcher: the studies open associations
    /// store into.
    pub receiving: Arc<super::receiving::Receiving>,
}

/// Totals for the association log.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub stored: u64,
    pub failed: u64,
    pub bytes: u64,
    pub outcome: String,
    /// The studies this association began to store instances of, each
    /// counted once in [`Context::receiving`] until the association ends.
    pub studies: std::collections::HashSet<String>,
}

/// Where the data set of the current C-STORE goes.
enum Sink {
    /// Streaming into a temporary file; `failed` holds the first write error,
    /// after which the rest of the data set is read and dropped.
    Writer {
        incoming: Box<Incoming>,
        failed: Option<StoreError>,
    },
    /// Refused before any byte was written; the data set is read and dropped.
    Discard { status: u16, comment: String },
    /// The data set of a request other than C-STORE: read and dropped, then
    /// answered with this response.
    Unsupported(Box<Command>),
}

struct InFlight {
    rq: Command,
    pc_id: u8,
    sink: Sink,
    /// When the request arrived, for the latency in the log.
    started: std::time::Instant,
}

/// Send a response in PDUs that fit what the caller said it can take.
async fn respond<S>(
    assoc: &mut AsyncServerAssociation<S>,
    rsp: &Command,
    pc_id: u8,
) -> Result<(), dicom_ul::association::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    for pdu in rsp.to_pdus(pc_id, assoc.requestor_max_pdu_length()) {
        assoc.send(&pdu).await?;
    }
    Ok(())
}

/// Serve one association until it ends. Returns the summary for the log.
pub async fn serve<S>(
    assoc: &mut AsyncServerAssociation<S>,
    ctx: Arc<Context>,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    summary: &mut Summary,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let calling_ae =
        wire_ae_title(dicom_ul::association::Association::peer_ae_title(&*assoc)).to_string();
    let called_ae = wire_ae_title(assoc.called_ae_title()).to_string();
    let contexts: HashMap<u8, (String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                (
                    uid::trim(&pc.abstract_syntax).to_string(),
                    uid::trim(&pc.transfer_syntax).to_string(),
                ),
            )
        })
        .collect();
    let mut command_bytes: Vec<u8> = Vec::new();
    let mut command_pc: Option<u8> = None;
    let mut current: Option<InFlight> = None;
    // The temporary file for the next instance, made after each response
    // while the sender prepares its next instance. The first is made when
    // the first C-STORE arrives: an association that only echoes (a PACS
    // checking that the node is up) touches no file.
    let mut spare: Option<Spare> = None;

    let mut reader =
        wire::PduReader::new(assoc.acceptor_max_pdu_length() as usize, ctx.read_timeout);

    // The reason of the A-ABORT sent when the node ends the association.
    let mut abort_reason = AbortRQServiceProviderReason::ReasonNotSpecified;
    let outcome = 'assoc: loop {
        // Between instances a shutdown ends the association; during one, the
        // instance is finished first.
        let (socket, pending) = AsyncAssociation::get_mut(assoc);
        let event = if current.is_none() && command_pc.is_none() {
            tokio::select! {
                event = reader.next(socket, pending) => event,
                _ = shutdown.wait_for(|s| *s) => {
                    break 'assoc "aborted: node shutting down".to_string();
                }
            }
        } else {
            reader.next(socket, pending).await
        };
        let event = match event {
            Ok(event) => event,
            // Silence past the read timeout (ARTIM): abort, as PS3.8 asks.
            Err(WireError::Timeout) => {
                break 'assoc "aborted: no data within the read timeout (dicom.read_timeout_secs)"
                    .to_string();
            }
            Err(WireError::Closed) => {
                break 'assoc "failed: connection closed by peer without release".to_string();
            }
            Err(e @ WireError::Protocol { .. }) => break 'assoc format!("aborted: {e}"),
            Err(e) => break 'assoc format!("failed: {e}"),
        };
        match event {
            Event::Data {
                pc_id,
                command,
                last: is_last,
                bytes: data,
            } => {
                if !contexts.contains_key(&pc_id) {
                    break 'assoc format!(
                        "aborted: P-DATA on unaccepted presentation context {pc_id}"
                    );
                }
                if command {
                    if current.is_some() {
                        break 'assoc "aborted: command received while a data set was expected"
                            .to_string();
                    }
                    if command_pc.is_some_and(|p| p != pc_id) {
                        break 'assoc "aborted: command fragments on two presentation contexts"
                            .to_string();
                    }
                    command_pc = Some(pc_id);
                    command_bytes.extend_from_slice(data);
                    if command_bytes.len() > 64 * 1024 {
                        break 'assoc "aborted: command set larger than 64 KiB".to_string();
                    }
                    if !is_last {
                        continue;
                    }
                    command_pc = None;
                    let cmd = match Command::decode(&std::mem::take(&mut command_bytes)) {
                        Ok(cmd) => cmd,
                        Err(e) => break 'assoc format!("aborted: {e}"),
                    };
                    let (abstract_syntax, ts) = &contexts[&pc_id];
                    match handle_command(
                        &ctx,
                        cmd,
                        pc_id,
                        abstract_syntax,
                        ts,
                        (&calling_ae, &called_ae, peer),
                        &mut spare,
                    ) {
                        Action::Respond(rsp) => {
                            if let Err(e) = respond(assoc, &rsp, pc_id).await {
                                break 'assoc format!("failed: sending response: {e}");
                            }
                        }
                        Action::ReceiveDataSet(inflight) => current = Some(inflight),
                        Action::Nothing => {}
                    }
                } else {
                    let Some(inflight) = current.as_mut() else {
                        break 'assoc "aborted: data set without a command".to_string();
                    };
                    if inflight.pc_id != pc_id {
                        break 'assoc "aborted: data set on another presentation context"
                            .to_string();
                    }
                    if let Sink::Writer { incoming, failed } = &mut inflight.sink {
                        if failed.is_none() {
                            let written = if is_last {
                                incoming.write_last(data)
                            } else {
                                incoming.write(data)
                            };
                            if let Err(e) = written {
                                debug!(error = %e, "write failed; draining the data set");
                                *failed = Some(e);
                            }
                        }
                    }
                    if is_last {
                        let Some(inflight) = current.take() else {
                            continue;
                        };
                        let (rsp, instance) = match inflight.sink {
                            Sink::Unsupported(rsp) => (*rsp, false),
                            _ => (
                                finish_instance(
                                    &ctx,
                                    inflight,
                                    &calling_ae,
                                    &called_ae,
                                    peer,
                                    summary,
                                )
                                .await,
                                true,
                            ),
                        };
                        if let Err(e) = respond(assoc, &rsp, pc_id).await {
                            break 'assoc format!("failed: sending response: {e}");
                        }
                        if instance && spare.is_none() {
                            spare = ctx.store.spare().ok();
                        }
                    }
                }
            }
            Event::Pdu(pdu) => match pdu {
                Pdu::ReleaseRQ => {
                    if current.is_some() {
                        warn!(calling_ae, %peer, "release requested in the middle of a data set; the instance is dropped");
                    }
                    // The spare goes before the peer hears the release, so a
                    // finished association leaves nothing in `tmp/`.
                    drop(spare.take());
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    break 'assoc "released".to_string();
                }
                Pdu::AbortRQ { source } => break 'assoc format!("aborted by peer: {source:?}"),
                other => {
                    abort_reason = match other {
                        Pdu::Unknown { .. } => AbortRQServiceProviderReason::UnrecognizedPdu,
                        _ => AbortRQServiceProviderReason::UnexpectedPdu,
                    };
                    break 'assoc format!("aborted: unexpected PDU {}", pdu_name(&other));
                }
            },
        }
    };

    // An instance cut short is dropped; dropping its `Incoming` deletes the
    // temporary file.
    if let Some(inflight) = current
        .take()
        .filter(|i| !matches!(i.sink, Sink::Unsupported(_)))
    {
        summary.failed += 1;
        warn!(
            calling_ae,
            %peer,
            sop_instance_uid = inflight.rq.affected_sop_instance_uid.as_deref().unwrap_or(""),
            "association ended during a data set; nothing was stored"
        );
    }
    if outcome.starts_with("aborted:") && !outcome.starts_with("aborted by peer") {
        let _ = assoc
            .send(&Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(abort_reason),
            })
            .await;
    }
    summary.outcome = outcome;
}

enum Action {
    Respond(Command),
    ReceiveDataSet(InFlight),
    Nothing,
}

/// `who`: the calling and called AE titles and the peer's address.
fn handle_command(
    ctx: &Context,
    cmd: Command,
    pc_id: u8,
    abstract_syntax: &str,
    transfer_syntax: &str,
    who: (&str, &str, SocketAddr),
    spare: &mut Option<Spare>,
) -> Action {
    let (calling_ae, called_ae, peer) = who;
    if ctx.fault == "panic-in-association" {
        panic!("fault injected by dicom.fault");
    }
    match cmd.command_field {
        dimse::C_ECHO_RQ => {
            info!(calling_ae, called_ae, %peer, "C-ECHO");
            Action::Respond(Command::echo_response(&cmd))
        }
        dimse::C_STORE_RQ => {
            let refuse = |status: u16, comment: String| Sink::Discard { status, comment };
            let sop_class = cmd
                .affected_sop_class_uid
                .as_deref()
                .map(uid::trim)
                .unwrap_or("");
            let sop_instance = cmd
                .affected_sop_instance_uid
                .as_deref()
                .map(uid::trim)
                .unwrap_or("");
            let sink = if !cmd.has_data_set() {
                // Nothing will follow: answer at once.
                return Action::Respond(Command::store_response(
                    &cmd,
                    status::CANNOT_UNDERSTAND,
                    Some("C-STORE request without a data set".into()),
                ));
            } else if sop_class != abstract_syntax || !sop::is_storage(sop_class) {
                refuse(
                    status::SOP_CLASS_NOT_SUPPORTED,
                    format!("SOP class {sop_class} differs from the negotiated {abstract_syntax}"),
                )
            } else if let Err(reason) = uid::validate(sop_instance) {
                refuse(
                    status::INVALID_UID,
                    format!("AffectedSOPInstanceUID invalid: {reason}"),
                )
            } else if let Err(e) = ctx.store.check_space() {
                refuse(status::OUT_OF_RESOURCES, e.to_string())
            } else {
                let expected = Expected {
                    sop_class_uid: sop_class.to_string(),
                    sop_instance_uid: sop_instance.to_string(),
                    transfer_syntax_uid: transfer_syntax.to_string(),
                    calling_ae: calling_ae.to_string(),
                    called_ae: called_ae.to_string(),
                };
                start_writer(&ctx.store, expected, spare.take())
            };
            Action::ReceiveDataSet(InFlight {
                rq: cmd,
                pc_id,
                sink,
                started: std::time::Instant::now(),
            })
        }
        dimse::C_CANCEL_RQ => Action::Nothing,
        field if cmd.is_request() => {
            warn!(
                calling_ae,
                command_field = format!("{field:#06x}"),
                "unsupported DIMSE operation"
            );
            let rsp = Command::unsupported_response(
                &cmd,
                format!("DIMSE operation {field:#06x} not supported: C-STORE and C-ECHO only"),
            );
            if cmd.has_data_set() {
                // Its data set is read and dropped, then answered; it is
                // not an instance.
                Action::ReceiveDataSet(InFlight {
                    rq: cmd,
                    pc_id,
                    started: std::time::Instant::now(),
                    sink: Sink::Unsupported(Box::new(rsp)),
                })
            } else {
                Action::Respond(rsp)
            }
        }
        _ => Action::Nothing,
    }
}

/// Open the temporary file for one instance.
fn start_writer(store: &Store, expected: Expected, spare: Option<Spare>) -> Sink {
    match store.begin_with(expected, spare) {
        Ok(incoming) => Sink::Writer {
            incoming: Box::new(incoming),
            failed: None,
        },
        Err(e) => Sink::Discard {
            status: store_error_status(&e),
            comment: e.to_string(),
        },
    }
}

/// The data set is complete: check it, make it durable, index it, and build
/// the response.
///
/// A new instance is handed to the index writer before its file is made
/// durable, and the two run side by side; the response waits for both. If
/// the file cannot be made durable after all, its row is taken back. (A
/// crash in between leaves a row without a file, which the reconciliation
/// at the next start drops.) A re-sent instance that replaces a file is
/// made durable first and indexed after, so its row never describes a file
/// that is not there.
async fn finish_instance(
    ctx: &Context,
    inflight: InFlight,
    calling_ae: &str,
    called_ae: &str,
    peer: SocketAddr,
    summary: &mut Summary,
) -> Command {
    let InFlight {
        rq, sink, started, ..
    } = inflight;
    let sop_class = rq.affected_sop_class_uid.clone().unwrap_or_default();
    let sop_instance = rq.affected_sop_instance_uid.clone().unwrap_or_default();
    let refuse = |summary: &mut Summary, status: u16, reason: String| {
        summary.failed += 1;
        warn!(
            calling_ae, %peer, sop_class = sop::name(&sop_class), sop_instance_uid = %sop_instance,
            status = format!("{status:#06x}"), reason = %reason, "instance refused"
        );
        Command::store_response(&rq, status, Some(reason))
    };
    let checked = match sink {
        Sink::Discard { status, comment } => return refuse(summary, status, comment),
        // Answered by the caller; never reaches here.
        Sink::Unsupported(rsp) => return *rsp,
        Sink::Writer {
            failed: Some(e), ..
        } => return refuse(summary, store_error_status(&e), e.to_string()),
        // Reads the element headers back from the page cache: quick. The
        // scan reads what the peer sent; should it panic all the same, the
        // instance is refused (its temporary file goes with `incoming`) and
        // the association goes on.
        Sink::Writer { incoming, .. } => {
            let fault = ctx.fault == "panic-reading-data-set";
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                if fault {
                    panic!("fault injected by dicom.fault");
                }
                incoming.check()
            }));
            match checked {
                Ok(Ok(checked)) => checked,
                Ok(Err(e)) => return refuse(summary, store_error_status(&e), e.to_string()),
                Err(payload) => {
                    let what = crate::panic_message(payload.as_ref());
                    error!(
                        calling_ae, %peer, sop_instance_uid = %sop_instance,
                        "internal error while reading the data set: {what}"
                    );
                    // Sending it again would fail the same way: a
                    // permanent failure, not "out of resources".
                    return refuse(
                        summary,
                        status::CANNOT_UNDERSTAND,
                        format!("internal error in esorisk reading the data set: {what}"),
                    );
                }
            }
        }
    };
    // Held until the response: the study is not removed meanwhile.
    let _pass = match &ctx.gate {
        Some(gate) => {
            let study = checked.stored().header.study_instance_uid.as_deref();
            match gate.enter(study.unwrap_or_default()) {
                Some(pass) => Some(pass),
                None => return refuse(
                    summary,
                    status::OUT_OF_RESOURCES,
                    "an old copy of this study is being removed (storage.retention_days); send it again in a minute".into(),
                ),
            }
        }
        None => None,
    };
    // From here on the study counts as being received until this
    // association ends, whatever becomes of this instance.
    if let Some(study) = checked.stored().header.study_instance_uid.as_deref() {
        if !summary.studies.contains(study) {
            summary.studies.insert(study.to_string());
            ctx.receiving.opened(study);
        }
    }
    let record = InstanceRecord {
        stored: checked.stored().clone(),
        calling_ae: Some(calling_ae.to_string()),
        called_ae: Some(called_ae.to_string()),
        peer_address: Some(peer.to_string()),
        received_at: index::now(),
    };
    let new_file = !checked.stored().replaced;
    let relative_path = checked.stored().relative_path.clone();
    // store_ms: making the file durable; index_wait_ms: what the response
    // waited for the index after that (a new file's row is committed
    // while the file is made durable, so this is usually near 0; a
    // replacing file's row is written after it).
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    let t_store = std::time::Instant::now();
    let (persisted, indexed, index_wait_ms) = if new_file {
        let pending = match ctx.index.submit(record).await {
            Ok(pending) => pending,
            Err(e) => {
                return refuse(
                    summary,
                    status::OUT_OF_RESOURCES,
                    format!("index failure: {e}"),
                )
            }
        };
        let persisted = persist(checked).await;
        let store_ms = ms(t_store);
        let t_index = std::time::Instant::now();
        let indexed = pending.wait().await;
        (persisted.map(|s| (s, store_ms)), indexed, ms(t_index))
    } else {
        match persist(checked).await {
            Ok(stored) => {
                let store_ms = ms(t_store);
                let t_index = std::time::Instant::now();
                let indexed = ctx.index.record(record).await;
                (Ok((stored, store_ms)), indexed, ms(t_index))
            }
            Err(e) => (Err(e), Ok(Default::default()), 0.0),
        }
    };
    let (stored, store_ms) = match persisted {
        Ok(p) => p,
        Err(e) => {
            if new_file {
                if let Ok(indexed) = &indexed {
                    take_back_row(ctx, &sop_instance, &relative_path, indexed).await;
                }
            }
            return refuse(summary, store_error_status(&e), e.to_string());
        }
    };
    let study_uid = stored.header.study_instance_uid.as_deref().unwrap_or("");
    let series_uid = stored.header.series_instance_uid.as_deref().unwrap_or("");
    match indexed {
        Ok(indexed) => {
            if let Some(stale) = indexed.stale_path {
                let _ = std::fs::remove_file(ctx.store.data_dir().join(stale));
            }
            summary.stored += 1;
            summary.bytes += stored.size_bytes;
            info!(
                calling_ae, %peer, sop_class = sop::name(&sop_class), sop_instance_uid = %sop_instance,
                study_uid = %study_uid, series_uid = %series_uid, bytes = stored.size_bytes,
                replaced = indexed.replaced, store_ms = format!("{store_ms:.2}"),
                index_wait_ms = format!("{index_wait_ms:.2}"),
                total_ms = format!("{:.2}", started.elapsed().as_secs_f64() * 1e3), "instance stored"
            );
            Command::store_response(&rq, status::SUCCESS, None)
        }
        Err(e) => {
            // Not acknowledged: take the new file away again unless it
            // replaced one that the index still describes.
            if !stored.replaced {
                let _ = std::fs::remove_file(ctx.store.data_dir().join(&stored.relative_path));
            }
            summary.failed += 1;
            warn!(
                calling_ae, %peer, sop_instance_uid = %sop_instance, study_uid = %study_uid,
                error = %e, "instance not indexed"
            );
            Command::store_response(
                &rq,
                status::OUT_OF_RESOURCES,
                Some(format!("index failure: {e}")),
            )
        }
    }
}

/// Undo the row of an instance whose file could not be made durable. If the
/// row had moved the instance from an earlier file (another study or
/// series), that file is still in the store and is indexed again. A file
/// that is in place after all (renamed before the directory fsync failed,
/// or put there by another association sending the same instance) keeps
/// its row: the index describes what the store holds.
async fn take_back_row(ctx: &Context, sop_instance: &str, relative_path: &str, indexed: &Indexed) {
    if ctx.store.data_dir().join(relative_path).is_file() {
        // As on success, the file the row moved away from goes.
        if let Some(earlier) = indexed.stale_path.as_deref() {
            let _ = std::fs::remove_file(ctx.store.data_dir().join(earlier));
        }
        return;
    }
    if let Err(e) = ctx.index.forget(sop_instance, relative_path).await {
        // The reconciliation at the next start drops it: the file is not there.
        warn!(sop_instance_uid = %sop_instance, error = %e, "cannot take back the row of an instance not stored");
    }
    let Some(earlier) = indexed.stale_path.as_deref() else {
        return;
    };
    let path = ctx.store.data_dir().join(earlier);
    let Some(stored) = super::recover::read_stored(&path, earlier.to_string()) else {
        return;
    };
    if let Err(e) = ctx.index.record(InstanceRecord::from_store(stored)).await {
        warn!(sop_instance_uid = %sop_instance, path = earlier, error = %e, "cannot index the earlier file again");
    }
}

/// fdatasync, rename and directory fsync block for a millisecond or more:
/// hand this worker's other tasks to another thread while they run here,
/// rather than paying a round trip to the blocking pool for every instance.
async fn persist(checked: Checked) -> Result<Stored, StoreError> {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            match tokio::task::spawn_blocking(move || checked.persist()).await {
                Ok(r) => r,
                Err(join) => Err(StoreError::Io {
                    source: std::io::Error::other(format!("storage task failed: {join}")),
                }),
            }
        }
        _ => tokio::task::block_in_place(move || checked.persist()),
    }
}

/// The DIMSE status for a storage failure.
pub fn store_error_status(e: &StoreError) -> u16 {
    match e {
        StoreError::Io { .. } | StoreError::DiskFull { .. } => status::OUT_OF_RESOURCES,
        StoreError::Malformed { .. } => status::CANNOT_UNDERSTAND,
        StoreError::Missing { .. } | StoreError::InvalidUid { .. } => status::INVALID_UID,
        StoreError::Mismatch { .. } => status::DATA_SET_MISMATCH,
        StoreError::UnsupportedTransferSyntax { .. } => status::CANNOT_UNDERSTAND,
    }
}

pub(crate) fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ { .. } => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC { .. } => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ { .. } => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
        Pdu::Unknown { .. } => "unknown",
    }
}
