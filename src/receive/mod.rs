//! The DICOM service provider: listening, admission, and association tasks.
//!
//! Each accepted connection becomes its own task. A semaphore caps how many
//! run at once; a connection beyond the cap still gets a proper answer, an
//! A-ASSOCIATE-RJ (transient, local limit exceeded), so a sender can retry
//! later instead of hanging on a silent socket.

pub mod access;
pub mod association;
pub mod receiving;
pub mod sop;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, Pdu,
};
use dicom_ul::ServerAssociationOptions;
use futures_util::FutureExt;
use snafu::{ResultExt, Snafu};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::{ConfigError, Settings};
use crate::index::{Index, IndexError, InstanceRecord};
use crate::store::{self, Store};
use access::{PeerAccess, Policy};
use association::Context;

#[derive(Debug, Snafu)]
pub enum NodeError {
    #[snafu(display("cannot prepare the data directory {path}: {source}"))]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[snafu(display("{source}"))]
    Index { source: IndexError },
    #[snafu(display("{source}"))]
    Config { source: ConfigError },
    #[snafu(display("cannot listen on {addr}: {source}"))]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[snafu(display("TLS set-up failed: {message}"))]
    Tls { message: String },
}

/// A started node: storage and index open, socket bound, not yet serving.
pub struct Node {
    settings: Settings,
    ctx: Arc<Context>,
    listener: TcpListener,
    policy: Arc<Policy>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Node {
    /// Open the store and index, recover from any crash, and bind the port.
    pub async fn start(settings: Settings) -> Result<Node, NodeError> {
        // What can fail for a setting (an allowed caller's host, a TLS
        // file, a port in use) fails first, before the data directory is
        // touched: a start that stops there must not cost the next one its
        // clean-shutdown mark (and a reconciliation of the whole store).
        let policy = Arc::new(Policy {
            require_called_ae_title: settings.dicom.require_called_ae_title,
            allowed_callers: settings.resolve_allowed_callers().context(ConfigSnafu)?,
        });
        let tls = if settings.dicom.tls.enabled {
            Some(tls_config(&settings)?)
        } else {
            None
        };
        let addr = format!("{}:{}", settings.dicom.bind, settings.dicom.port);
        let listener = TcpListener::bind(&addr)
            .await
            .context(BindSnafu { addr: addr.clone() })?;
        let data_dir = settings.storage.data_dir.clone();
        let store = Store::open(
            &data_dir,
            settings.storage.fsync,
            settings.storage.min_free_mb,
        )
        .context(DataDirSnafu {
            path: data_dir.display().to_string(),
        })?;
        let removed = store.clean_tmp().context(DataDirSnafu {
            path: data_dir.display().to_string(),
        })?;
        let free_mb = store.free_bytes().map(|b| b / (1024 * 1024));
        if let Some(mb) = free_mb.filter(|mb| *mb < settings.storage.min_free_mb) {
            warn!(
                free_mb = mb,
                min_free_mb = settings.storage.min_free_mb,
                data_dir = %data_dir.display(),
                "free space is under storage.min_free_mb: every instance will be refused (A700) until space is freed"
            );
        }
        if removed > 0 {
            info!(
                removed,
                "removed partial files of instances that were never acknowledged"
            );
        }
        let new_database = !settings.database_path().exists();
        let index = Index::open(&settings.database_path())
            .await
            .context(IndexSnafu)?;
        let clean = store.take_clean_marker().context(DataDirSnafu {
            path: data_dir.display().to_string(),
        })?;
        // First the removals a crash interrupted between the rows and the
        // files: reconciling would index those files again.
        if let Err(e) = crate::retention::finish_interrupted(&index, &data_dir).await {
            error!(error = %e, "cannot finish the removals a crash interrupted");
        }
        // And the old files of instances re-sent to another study or series.
        match index.finish_superseded(&data_dir).await {
            Ok(0) => {}
            Ok(n) => info!(
                files = n,
                "removed the old files of re-sent instances that moved to another study or series"
            ),
            Err(e) => error!(error = %e, "cannot remove the old files of moved instances"),
        }
        let store_empty = std::fs::read_dir(store.store_dir())
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        if new_database && store_empty {
            info!(data_dir = %data_dir.display(), "new data directory");
        } else if new_database {
            info!("no index yet for an existing store; indexing every stored instance");
            reconcile(&store, &index).await;
        } else if clean {
            info!("last shutdown was clean; index and store agree");
        } else {
            info!("no record of a clean shutdown; reconciling the index with the store");
            reconcile(&store, &index).await;
        }

        let ctx = Arc::new(Context {
            store,
            index,
            ae_title: settings.dicom.ae_title.clone(),
            read_timeout: Duration::from_secs(settings.dicom.read_timeout_secs.max(1)),
            fault: settings.dicom.fault.clone(),
            gate: (settings.storage.retention_days > 0).then(Default::default),
            receiving: Arc::new(receiving::Receiving::new(Duration::from_secs(
                settings.pipeline.stable_seconds,
            ))),
        });
        Ok(Node {
            settings,
            ctx,
            listener,
            policy,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn index(&self) -> &Index {
        &self.ctx.index
    }

    /// The studies open associations store into, for the pipeline's
    /// watcher ([`crate::pipeline::context`]).
    pub fn receiving(&self) -> Arc<receiving::Receiving> {
        self.ctx.receiving.clone()
    }

    /// Serve until `shutdown` completes, then stop accepting, let running
    /// instances finish (within the grace period), and close the database.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        self.serve(shutdown).await?.close().await;
        Ok(())
    }

    /// Serve until `shutdown` completes, then stop accepting and let running
    /// instances finish (within the grace period). The index stays open
    /// for whatever else uses it (the scoring pipeline) until
    /// [`Stopped::close`].
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<Stopped, NodeError> {
        let Node {
            settings,
            ctx,
            listener,
            policy,
            tls,
        } = self;
        let limit = Arc::new(Semaphore::new(settings.dicom.max_associations));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let options = Arc::new(OptionsTemplate::new(&settings, tls.clone()));
        let (retention_stop, retention_rx) = watch::channel(false);
        let retention = ctx.gate.clone().map(|gate| {
            tokio::spawn(crate::retention::run(
                ctx.index.clone(),
                gate,
                ctx.store.data_dir().to_path_buf(),
                settings.storage.retention_days,
                settings.pipeline.enabled,
                Duration::from_secs(settings.storage.retention_check_secs.max(1)),
                retention_rx,
            ))
        });
        let log_pruning = (settings.storage.association_log_days > 0).then(|| {
            tokio::spawn(crate::retention::prune_association_log(
                ctx.index.clone(),
                settings.storage.association_log_days,
                Duration::from_secs(settings.storage.retention_check_secs.max(1)),
                retention_stop.subscribe(),
            ))
        });
        tokio::pin!(shutdown);
        info!(
            ae_title = %settings.dicom.ae_title,
            address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = tls.is_some(),
            max_associations = settings.dicom.max_associations,
            "listening"
        );
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Without TCP_NODELAY each response waits on Nagle's
                    // algorithm and delayed ACKs: tens of ms per instance.
                    let _ = socket.set_nodelay(true);
                    let permit = limit.clone().try_acquire_owned().ok();
                    let ctx = ctx.clone();
                    let options = options.clone();
                    let policy = policy.clone();
                    let stop = stop_rx.clone();
                    // A connection over the limit gets a short leash to send its request.
                    let timeout = Duration::from_secs(settings.dicom.read_timeout_secs.clamp(1, 10));
                    tasks.spawn(async move {
                        match permit {
                            Some(_permit) => handle_connection(socket, peer, ctx, options, policy, stop).await,
                            None => reject_busy(socket, peer, ctx, options.tls.clone(), timeout).await,
                        }
                    });
                }
            }
        }
        info!("shutting down: no new associations; finishing instances in progress");
        drop(listener);
        let grace = Duration::from_secs(settings.server.shutdown_grace_secs);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!("grace period over; aborting idle associations");
            let _ = stop_tx.send(true);
            // Associations stop at the next instance boundary.
            while tasks.join_next().await.is_some() {}
        }
        Ok(Stopped {
            ctx,
            retention_stop,
            housekeeping: retention.into_iter().chain(log_pruning).collect(),
        })
    }
}

/// A node that no longer receives, its index still open.
pub struct Stopped {
    ctx: Arc<Context>,
    retention_stop: watch::Sender<bool>,
    /// Old studies' removal and the association log's pruning.
    housekeeping: Vec<tokio::task::JoinHandle<()>>,
}

impl Stopped {
    /// Stop removing old studies and old log rows, close the index and
    /// record the clean shutdown.
    pub async fn close(self) {
        let _ = self.retention_stop.send(true);
        for task in self.housekeeping {
            let _ = task.await;
        }
        self.ctx.index.close().await;
        if let Err(e) = self.ctx.store.mark_clean() {
            warn!(error = %e, "cannot record the clean shutdown; the next start will reconcile");
        }
        info!("stopped");
    }
}

/// What every association's negotiation shares; options are built per
/// connection because access control depends on the peer address.
struct OptionsTemplate {
    ae_title: String,
    abstract_syntaxes: Vec<&'static str>,
    transfer_syntaxes: Vec<&'static str>,
    max_pdu: u32,
    read_timeout: Duration,
    write_timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl OptionsTemplate {
    fn new(settings: &Settings, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let mut abstract_syntaxes = vec![sop::VERIFICATION];
        abstract_syntaxes.extend(sop::STORAGE.iter().map(|(u, _)| *u));
        let mut transfer_syntaxes: Vec<&'static str> = store::ts::NATIVE.to_vec();
        if settings.dicom.accept_encapsulated {
            transfer_syntaxes.extend_from_slice(store::ts::ENCAPSULATED);
        }
        OptionsTemplate {
            ae_title: settings.dicom.ae_title.clone(),
            abstract_syntaxes,
            transfer_syntaxes,
            max_pdu: settings.dicom.max_pdu,
            read_timeout: Duration::from_secs(settings.dicom.read_timeout_secs.max(1)),
            write_timeout: Duration::from_secs(settings.dicom.write_timeout_secs.max(1)),
            tls,
        }
    }

    fn build(
        &self,
        access: PeerAccess,
    ) -> ServerAssociationOptions<
        'static,
        PeerAccess,
        dicom_ul::association::server::DefaultNegotiation,
    > {
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(access)
            .ae_title(self.ae_title.clone())
            .max_pdu_length(self.max_pdu)
            .read_timeout(self.read_timeout)
            .write_timeout(self.write_timeout)
            .strict(false);
        for a in &self.abstract_syntaxes {
            options = options.with_abstract_syntax(*a);
        }
        for t in &self.transfer_syntaxes {
            options = options.with_transfer_syntax(*t);
        }
        if let Some(tls) = &self.tls {
            options = options.tls_config(tls.clone());
        }
        options
    }
}

async fn handle_connection(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    template: Arc<OptionsTemplate>,
    policy: Arc<Policy>,
    stop: watch::Receiver<bool>,
) {
    let options = template.build(PeerAccess { policy, peer });
    let peer_s = peer.to_string();
    if template.tls.is_some() {
        // dicom-ul's read timeout starts after the TLS handshake: a caller
        // that connects and says nothing would hold its slot for ever.
        let limit = template.read_timeout;
        let established = tokio::time::timeout(limit, options.establish_tls_async(socket)).await;
        let Ok(established) = established else {
            let why = format!(
                "rejected: no TLS handshake and association request within {} s",
                limit.as_secs()
            );
            return record_refused(&ctx, &peer_s, why).await;
        };
        match established {
            Ok(mut assoc) => {
                // Who the caller is beyond its AE title, with mutual TLS.
                let client = assoc
                    .inner_stream()
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| TlsClient {
                        fingerprint: crate::tls::fingerprint(cert),
                        subject: crate::tls::subject(cert),
                    });
                run_association(assoc, peer, ctx, stop, client).await
            }
            Err(e) => log_refused(&ctx, &peer_s, &e).await,
        }
    } else {
        match options.establish_async(socket).await {
            Ok(assoc) => run_association(assoc, peer, ctx, stop, None).await,
            Err(e) => log_refused(&ctx, &peer_s, &e).await,
        }
    }
}

async fn log_refused(ctx: &Context, peer: &str, e: &dicom_ul::association::Error) {
    record_refused(ctx, peer, format!("rejected: {}", refusal_reason(e))).await
}

/// Why an association was not established, in one short line. dicom-ul's
/// own message for a first PDU that is not an A-ASSOCIATE-RQ prints that
/// whole PDU as a list of numbers (16 KiB of P-DATA became a 60 kB log line
/// and `associations` row); the PDU's kind is what an admin needs.
fn refusal_reason(e: &dicom_ul::association::Error) -> String {
    use dicom_ul::association::Error;
    match e {
        Error::UnexpectedPdu { pdu, .. } | Error::UnknownPdu { pdu, .. } => {
            let got = match pdu.as_ref() {
                Pdu::Unknown { pdu_type, .. } => format!("a PDU of unknown type 0x{pdu_type:02x}"),
                other => association::pdu_name(other).to_string(),
            };
            format!("expected an A-ASSOCIATE-RQ, received {got}")
        }
        other => clipped(crate::with_causes(other), 512),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn clipped(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

async fn record_refused(ctx: &Context, peer: &str, outcome: String) {
    info!(%peer, outcome, "association not established");
    if let Err(err) = ctx
        .index
        .association_started(None, None, peer, None, None, Some(&outcome))
        .await
    {
        warn!(error = %err, "cannot log association");
    }
}

/// The certificate a caller presented with mutual TLS.
struct TlsClient {
    /// SHA-256, as `openssl x509 -fingerprint -sha256` prints it.
    fingerprint: String,
    /// `CN=…, O=…`, when the certificate's subject reads.
    subject: Option<String>,
}

async fn run_association<S>(
    mut assoc: dicom_ul::association::AsyncServerAssociation<S>,
    peer: SocketAddr,
    ctx: Arc<Context>,
    stop: watch::Receiver<bool>,
    tls_client: Option<TlsClient>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let calling_ae =
        crate::config::wire_ae_title(dicom_ul::association::Association::peer_ae_title(&assoc))
            .to_string();
    let called_ae = crate::config::wire_ae_title(assoc.called_ae_title()).to_string();
    let contexts: Vec<String> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
        .map(|pc| {
            format!(
                "{}@{}",
                sop::name(crate::uid::trim(&pc.abstract_syntax)),
                crate::uid::trim(&pc.transfer_syntax)
            )
        })
        .collect();
    let client = tls_client.as_ref().map(|c| c.fingerprint.as_str());
    let subject = tls_client.as_ref().and_then(|c| c.subject.as_deref());
    info!(
        calling_ae,
        called_ae,
        %peer,
        tls_client = client.unwrap_or(""),
        tls_subject = subject.unwrap_or(""),
        accepted = ?contexts,
        "association accepted"
    );
    let row = ctx
        .index
        .association_started(
            Some(&calling_ae),
            Some(&called_ae),
            &peer.to_string(),
            client,
            subject,
            None,
        )
        .await
        .map_err(|e| warn!(error = %e, "cannot log association"))
        .ok();
    // A panic ends this association with a reason in the log and the index
    // (not only a message on stderr), keeping the counts so far, and an
    // A-ABORT to the peer. The instance in flight, if any, is dropped with
    // its temporary file.
    let mut summary = association::Summary::default();
    let served = AssertUnwindSafe(association::serve(
        &mut assoc,
        ctx.clone(),
        peer,
        stop,
        &mut summary,
    ))
    .catch_unwind()
    .await;
    if let Err(payload) = served {
        let what = crate::panic_message(payload.as_ref());
        error!(calling_ae, %peer, "internal error in the association: {what}");
        summary.outcome = format!("aborted: internal error in esorisk: {what}");
        let abort = Pdu::AbortRQ {
            source: dicom_ul::pdu::AbortRQSource::ServiceProvider(
                dicom_ul::pdu::AbortRQServiceProviderReason::ReasonNotSpecified,
            ),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), assoc.send(&abort)).await;
    }
    // The studies it stored into start counting their stable time now.
    ctx.receiving.ended(&summary.studies);
    info!(
        calling_ae, called_ae, %peer, stored = summary.stored, failed = summary.failed,
        bytes = summary.bytes, outcome = %summary.outcome, "association ended"
    );
    if let Some(id) = row {
        if let Err(e) = ctx
            .index
            .association_ended(
                id,
                &summary.outcome,
                summary.stored,
                summary.failed,
                summary.bytes,
            )
            .await
        {
            warn!(error = %e, "cannot log association end");
        }
    }
}

/// Answer a connection over the limit with A-ASSOCIATE-RJ (transient,
/// local limit exceeded) after reading its request.
async fn reject_busy(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    tls: Option<Arc<rustls::ServerConfig>>,
    timeout: Duration,
) {
    let result = match tls {
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => send_busy_reject(stream, timeout).await,
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("TLS handshake timed out".into()),
            }
        }
        None => send_busy_reject(socket, timeout).await,
    };
    let (calling, called) = match &result {
        Ok(titles) => titles.clone(),
        Err(_) => (None, None),
    };
    warn!(
        %peer,
        calling_ae = calling.as_deref().unwrap_or(""),
        error = result.as_ref().err().map(String::as_str).unwrap_or(""),
        "association rejected: too many associations (dicom.max_associations)"
    );
    let _ = ctx
        .index
        .association_started(
            calling.as_deref(),
            called.as_deref(),
            &peer.to_string(),
            None,
            None,
            Some("rejected: local limit exceeded"),
        )
        .await;
}

async fn send_busy_reject<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> Result<(Option<String>, Option<String>), String> {
    let read = async {
        let mut head = [0u8; 6];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
        if head[0] != 0x01 || len > 64 * 1024 {
            return Err("not an A-ASSOCIATE-RQ".to_string());
        }
        let mut buf = head.to_vec();
        buf.resize(6 + len, 0);
        stream
            .read_exact(&mut buf[6..])
            .await
            .map_err(|e| e.to_string())?;
        match dicom_ul::read_pdu(&buf[..], 64 * 1024 + 6, false) {
            Ok(Some(Pdu::AssociationRQ(rq))) => Ok((
                Some(crate::config::wire_ae_title(&rq.calling_ae_title).to_string()),
                Some(crate::config::wire_ae_title(&rq.called_ae_title).to_string()),
            )),
            _ => Ok((None, None)),
        }
    };
    let titles = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "no A-ASSOCIATE-RQ in time".to_string())??;
    let mut out = Vec::new();
    dicom_ul::write_pdu(
        &mut out,
        &Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        }),
    )
    .map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let _ = stream.shutdown().await;
    Ok(titles)
}

/// After a crash, make the index and the store agree. The store is the
/// source of truth: every file in it was fsynced before it was indexed, and
/// index commits are not fsynced one by one (WAL, `synchronous = NORMAL`), so
/// a power cut can lose the last rows but never an acknowledged file.
/// - A complete file without a row (lost commit, or a crash between rename
///   and commit) is indexed.
/// - A row whose file is gone (removed by hand) is dropped, with a warning.
async fn reconcile(store: &Store, index: &Index) {
    match index.forget_missing(store.data_dir()).await {
        Ok(0) => {}
        Ok(n) => warn!(
            rows = n,
            "dropped index rows whose files are missing from the store"
        ),
        Err(e) => error!(error = %e, "cannot check index rows against the store"),
    }
    // Files the index holds, and old files of moved instances not removed
    // yet: neither is an instance to index again.
    let known = match (index.indexed_paths().await, index.superseded_paths().await) {
        (Ok(mut k), Ok(old)) => {
            k.extend(old);
            k
        }
        (Err(e), _) | (_, Err(e)) => {
            error!(error = %e, "cannot read the index for recovery");
            return;
        }
    };
    let data_dir = store.data_dir().to_path_buf();
    let store_dir = store.store_dir().to_path_buf();
    let found =
        tokio::task::spawn_blocking(move || recover::find_unindexed(&data_dir, &store_dir, &known))
            .await
            .unwrap_or_default();
    for (stored, path) in found {
        match index.record(InstanceRecord::from_store(stored)).await {
            Ok(_) => info!(path, "indexed an instance stored just before a crash"),
            Err(e) => warn!(path, error = %e, "cannot index a recovered instance"),
        }
    }
}

mod recover {
    use std::collections::HashSet;
    use std::path::Path;

    use crate::store::{scan, ts, Stored};

    pub fn find_unindexed(
        data_dir: &Path,
        store_dir: &Path,
        known: &HashSet<String>,
    ) -> Vec<(Stored, String)> {
        let mut out = Vec::new();
        let Ok(studies) = std::fs::read_dir(store_dir) else {
            return out;
        };
        for study in studies.flatten() {
            let Ok(series) = std::fs::read_dir(study.path()) else {
                continue;
            };
            for s in series.flatten() {
                let Ok(files) = std::fs::read_dir(s.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let path = f.path();
                    let Ok(rel) = path.strip_prefix(data_dir) else {
                        continue;
                    };
                    let rel = rel.to_string_lossy().to_string();
                    if known.contains(&rel) || path.extension().is_none_or(|e| e != "dcm") {
                        continue;
                    }
                    match read_stored(&path, rel.clone()) {
                        Some(stored) => out.push((stored, rel)),
                        None => {
                            tracing::warn!(path = %path.display(), "unreadable file in the store left alone")
                        }
                    }
                }
            }
        }
        out
    }

    pub(super) fn read_stored(path: &Path, relative_path: String) -> Option<Stored> {
        let mut file = std::fs::File::open(path).ok()?;
        let size_bytes = file.metadata().ok()?.len();
        let meta = {
            use std::io::{Read, Seek};
            let mut pre = [0u8; 128];
            file.read_exact(&mut pre).ok()?;
            let meta = dicom_object::meta::FileMetaTable::from_reader(&mut file).ok()?;
            let offset = file.stream_position().ok()?;
            (meta, offset)
        };
        let ts_uid = crate::uid::trim(meta.0.transfer_syntax()).to_string();
        let (encoding, deflated) = ts::encoding(&ts_uid)?;
        let header = scan::scan_file(&mut file, meta.1, encoding, deflated).ok()?;
        header.sop_instance_uid.as_ref()?;
        Some(Stored {
            header,
            relative_path,
            size_bytes,
            transfer_syntax_uid: ts_uid,
            replaced: false,
        })
    }
}

/// Build the rustls server configuration from the `dicom.tls` settings.
fn tls_config(settings: &Settings) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    let tls = &settings.dicom.tls;
    crate::tls::server_config(
        &tls.certificate,
        &tls.private_key,
        &tls.client_ca_certificates,
    )
    .map_err(|message| NodeError::Tls { message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::{self, DicomFile};
    use dicom_dictionary_std::tags;

    /// The defaults, with data under `dir` and an ephemeral port on the
    /// loopback.
    fn local_settings(dir: &std::path::Path) -> Settings {
        let mut settings = Settings::load(None).expect("defaults");
        settings.storage.data_dir = dir.join("var");
        settings.storage.min_free_mb = 1;
        settings.dicom.bind = "127.0.0.1".into();
        settings.dicom.port = 0;
        settings
    }

    /// A node with retention on, serving on an ephemeral port, and one RT
    /// Dose file of a study to send it.
    struct GatedNode {
        _dir: tempfile::TempDir,
        addr: String,
        ctx: Arc<Context>,
        file: DicomFile,
        study: String,
        stop: tokio::sync::oneshot::Sender<()>,
        served: tokio::task::JoinHandle<Result<(), NodeError>>,
    }

    impl GatedNode {
        async fn start() -> GatedNode {
            let dir = tempfile::tempdir().expect("tmp");
            let mut settings = local_settings(dir.path());
            settings.storage.retention_days = 30;
            let node = Node::start(settings).await.expect("node");
            let addr = node.local_addr().expect("addr").to_string();
            let ctx = node.ctx.clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let served = tokio::spawn(node.run(async {
                let _ = stopped.await;
            }));
            let files = crate::testgen::write_set(&dir.path().join("in"), "rtdose", 1, 16, 1, 5)
                .expect("file");
            let study = dicom_object::open_file(&files[0])
                .expect("open")
                .element(tags::STUDY_INSTANCE_UID)
                .expect("study uid")
                .to_str()
                .expect("text")
                .trim_end_matches('\0')
                .to_string();
            let file = DicomFile::read(&files[0]).expect("read");
            GatedNode {
                _dir: dir,
                addr,
                ctx,
                file,
                study,
                stop,
                served,
            }
        }

        async fn associate(
            &self,
        ) -> dicom_ul::association::client::AsyncClientAssociation<tokio::net::TcpStream> {
            let contexts = [(
                self.file.sop_class_uid.as_str(),
                vec![self.file.transfer_syntax_uid.as_str()],
            )];
            send::associate(&self.addr, "GATETEST", "ESORISK", &contexts)
                .await
                .expect("associate")
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            self.served.await.expect("join").expect("node stops");
        }
    }

    /// The receiver's side of the retention gate: while a study is being
    /// removed, an instance of it is refused with A700 and the reason, and
    /// stored once the removal is over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_of_a_study_being_removed_is_refused_then_stored() {
        let node = GatedNode::start().await;
        let gate = node.ctx.gate.clone().expect("a gate with retention on");
        let store_dir = node.ctx.store.store_dir().to_path_buf();
        let (file, study) = (&node.file, &node.study);
        let mut assoc = node.associate().await;

        let closed = gate
            .close(study, Duration::from_secs(1))
            .await
            .expect("nothing in progress");
        let rsp = send::store(&mut assoc, 1, file).await.expect("response");
        assert_eq!(
            rsp.status,
            Some(crate::dimse::status::OUT_OF_RESOURCES),
            "{rsp:?}"
        );
        assert!(
            rsp.error_comment
                .as_deref()
                .unwrap_or("")
                .contains("being removed"),
            "{rsp:?}"
        );
        assert!(!store_dir.join(study).exists(), "nothing stored");
        drop(closed);
        let rsp = send::store(&mut assoc, 2, file).await.expect("response");
        assert_eq!(rsp.status, Some(crate::dimse::status::SUCCESS), "{rsp:?}");
        assert!(store_dir.join(study).is_dir());

        let _ = assoc.release().await;
        node.stop().await;
    }

    /// One instance sent again and again while its study is removed again
    /// and again, as fast as both go: every response is a success or the
    /// gate's A700, never a failure to put the file in place, and at the
    /// end the index and the store agree, with the instance present when
    /// its last success came after the last removal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn storing_and_removing_one_study_at_once_keep_index_and_store_in_step() {
        let node = GatedNode::start().await;
        let gate = node.ctx.gate.clone().expect("a gate with retention on");
        let index = node.ctx.index.clone();
        let data_dir = node.ctx.store.data_dir().to_path_buf();
        let mut assoc = node.associate().await;
        let file = node.file.clone();
        let sender = tokio::spawn(async move {
            let (mut stored, mut refused) = (0u32, 0u32);
            for id in 1..=200u16 {
                let rsp = send::store(&mut assoc, id, &file).await.expect("response");
                match rsp.status {
                    Some(crate::dimse::status::SUCCESS) => stored += 1,
                    Some(crate::dimse::status::OUT_OF_RESOURCES)
                        if rsp
                            .error_comment
                            .as_deref()
                            .is_some_and(|c| c.contains("being removed")) =>
                    {
                        refused += 1
                    }
                    _ => panic!("instance {id}: {rsp:?}"),
                }
            }
            let _ = assoc.release().await;
            (stored, refused)
        });
        // Everything stored counts as old (cut-off one day ahead); this node
        // scores nothing.
        let everything = crate::index::RemovalRule::older_than(-1.0, false);
        let mut removed = 0;
        while !sender.is_finished() {
            removed += crate::retention::remove_old(&index, &gate, &data_dir, &everything, || true)
                .await
                .expect("removal")
                .studies;
        }
        let (stored, refused) = sender.await.expect("sender");
        assert!(
            stored > 0 && removed > 0,
            "stored {stored}, removed {removed}"
        );
        eprintln!("{stored} stored, {refused} refused, {removed} removals");

        let indexed = index.indexed_paths().await.expect("paths");
        let mut on_disk = std::collections::HashSet::new();
        let mut dirs = vec![node.ctx.store.store_dir().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    let rel = p.strip_prefix(&data_dir).expect("inside");
                    on_disk.insert(rel.to_string_lossy().to_string());
                }
            }
        }
        assert_eq!(indexed, on_disk, "the index and the store agree");
        // One last removal, then one last success: it must be there.
        crate::retention::remove_old(&index, &gate, &data_dir, &everything, || true)
            .await
            .expect("removal");
        let mut assoc = node.associate().await;
        let rsp = send::store(&mut assoc, 1, &node.file)
            .await
            .expect("response");
        assert_eq!(rsp.status, Some(crate::dimse::status::SUCCESS), "{rsp:?}");
        let _ = assoc.release().await;
        let indexed = index.indexed_paths().await.expect("paths");
        assert_eq!(indexed.len(), 1, "{indexed:?}");
        for p in &indexed {
            assert!(data_dir.join(p).is_file(), "{p}");
        }
        node.stop().await;
    }

    /// Association log rows older than `storage.association_log_days` are
    /// deleted by the running node, in batches; younger ones stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_node_prunes_the_association_log() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut settings = local_settings(dir.path());
        settings.storage.association_log_days = 30;
        let index = Index::open(&settings.database_path()).await.expect("index");
        let old = crate::index::at_offset(-31.0 * 86_400.0);
        let young = crate::index::at_offset(-29.0 * 86_400.0);
        for (at, n) in [(&old, 12_001), (&young, 3)] {
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                 INSERT INTO associations (peer_address, started_at, outcome)
                 SELECT '192.0.2.1:104', ?, 'released' FROM n",
            )
            .bind(n)
            .bind(at)
            .execute(index.pool())
            .await
            .expect("rows");
        }
        index.close().await;

        let node = Node::start(settings).await.expect("node");
        let ctx = node.ctx.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM associations")
                .fetch_one(ctx.index.pool())
                .await
                .expect("count")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while count().await != 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} rows left",
                count().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: Vec<String> = sqlx::query_scalar("SELECT DISTINCT started_at FROM associations")
            .fetch_all(ctx.index.pool())
            .await
            .expect("rows");
        assert_eq!(left, vec![young.clone()]);
        let _ = stop.send(());
        served.await.expect("join").expect("served");
    }
}
