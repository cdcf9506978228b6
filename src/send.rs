//! The sending side of C-STORE and C-ECHO (service class user).
//!
//! Used to deliver results to configured destinations, and by the tests to
//! talk to the node the way a planning system would.

use std::path::Path;
use std::sync::Arc;

use dicom_ul::association::client::{AsyncClientAssociation, AsyncTlsStream};
use dicom_ul::pdu::{PDataValueType, Pdu, PresentationContextResultReason};
use dicom_ul::ClientAssociationOptions;
use snafu::{ResultExt, Snafu};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::Destination;
use crate::dimse::{Command, CommandError};

#[derive(Debug, Snafu)]
pub enum SendError {
    #[snafu(display("association with {addr} failed: {}", crate::with_causes(source.as_ref())))]
    Associate {
        addr: String,
        #[snafu(source(from(dicom_ul::association::Error, Box::new)))]
        source: Box<dicom_ul::association::Error>,
    },
    #[snafu(display("network error: {source}"))]
    Network {
        #[snafu(source(from(dicom_ul::association::Error, Box::new)))]
        source: Box<dicom_ul::association::Error>,
    },
    #[snafu(display("the peer accepted no presentation context for {abstract_syntax}"))]
    NoContext { abstract_syntax: String },
    #[snafu(display("unexpected answer from the peer: {what}"))]
    Protocol { what: String },
    #[snafu(display("{source}"))]
    Command { source: CommandError },
    #[snafu(display("cannot read {path}: {message}"))]
    File { path: String, message: String },
    #[snafu(display("{dest} needs TLS and pipeline.tls is not set"))]
    NoTlsSettings { dest: String },
    #[snafu(display("cannot re-encode the data set from {from} to {to}: {message}"))]
    Transcode {
        from: String,
        to: String,
        message: String,
    },
}

impl SendError {
    /// The peer accepted none of the presentation contexts proposed.
    /// The peer rejected the association permanently (A-ASSOCIATE-RJ
    /// "rejected-permanent": an unknown called AE title, a calling AE it
    /// does not admit), with its reason: trying again will not help until
    /// one side's settings change.
    pub fn rejected_permanently(&self) -> Option<String> {
        match self {
            SendError::Associate { source, .. } => match &**source {
                dicom_ul::association::Error::Rejected { association_rj, .. }
                    if association_rj.result == dicom_ul::pdu::AssociationRJResult::Permanent =>
                {
                    Some(format!("{}", association_rj.source))
                }
                _ => None,
            },
            _ => None,
        }
    }

    pub fn refused_every_context(&self) -> bool {
        matches!(self, SendError::Associate { source, .. }
            if matches!(**source, dicom_ul::association::Error::NoAcceptedPresentationContexts { .. }))
    }
}

/// A DICOM file split into what C-STORE needs.
#[derive(Debug, Clone)]
pub struct DicomFile {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    /// The data set exactly as encoded in the file, after the meta group.
    pub data_set: Vec<u8>,
}

impl DicomFile {
    pub fn read(path: &Path) -> Result<DicomFile, SendError> {
        let fail = |message: String| SendError::File {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        // Files normally have a 128-byte preamble; some writers omit it.
        let start = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
            128
        } else if bytes.starts_with(b"DICM") {
            0
        } else {
            return Err(fail("no DICOM file meta information".into()));
        };
        let mut cursor = &bytes[start..];
        let meta = dicom_object::meta::FileMetaTable::from_reader(&mut cursor)
            .map_err(|e| fail(e.to_string()))?;
        let offset = bytes.len() - cursor.len();
        Ok(DicomFile {
            sop_class_uid: crate::uid::trim(meta.media_storage_sop_class_uid()).to_string(),
            sop_instance_uid: crate::uid::trim(meta.media_storage_sop_instance_uid()).to_string(),
            transfer_syntax_uid: crate::uid::trim(meta.transfer_syntax()).to_string(),
            data_set: bytes[offset..].to_vec(),
        })
    }

    /// The data set re-encoded in another native (uncompressed, not
    /// deflated) transfer syntax, e.g. Explicit to Implicit VR Little
    /// Endian. Text is decoded and encoded again in the data set's own
    /// Specific Character Set.
    pub fn transcoded(&self, ts_uid: &str) -> Result<Vec<u8>, SendError> {
        use dicom_encoding::TransferSyntaxIndex;
        let fail = |message: String| SendError::Transcode {
            from: self.transfer_syntax_uid.clone(),
            to: ts_uid.to_string(),
            message,
        };
        let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
        let native = |uid: &str| {
            registry
                .get(uid)
                .filter(|ts| ts.is_codec_free())
                .ok_or_else(|| fail(format!("{uid} is not a native transfer syntax")))
        };
        let (from, to) = (native(&self.transfer_syntax_uid)?, native(ts_uid)?);
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(&self.data_set[..], from)
            .map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::with_capacity(self.data_set.len());
        obj.write_dataset_with_ts(&mut out, to)
            .map_err(|e| fail(e.to_string()))?;
        Ok(out)
    }
}

/// What an association can run over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

fn options<'a>(
    calling_ae: &str,
    called_ae: &str,
    contexts: &[(&str, Vec<&str>)],
) -> ClientAssociationOptions<'a> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_string())
        .called_ae_title(called_ae.to_string())
        .max_pdu_length(262_138);
    for (abstract_syntax, ts) in contexts {
        options = options.with_presentation_context(
            abstract_syntax.to_string(),
            ts.iter().map(|t| t.to_string()).collect(),
        );
    }
    options
}

/// Open an association proposing each (abstract syntax, transfer syntaxes).
pub async fn associate(
    addr: &str,
    calling_ae: &str,
    called_ae: &str,
    contexts: &[(&str, Vec<&str>)],
) -> Result<AsyncClientAssociation<TcpStream>, SendError> {
    options(calling_ae, called_ae, contexts)
        .establish_async(addr)
        .await
        .context(AssociateSnafu {
            addr: addr.to_string(),
        })
}

/// The same over TLS: the peer's certificate must chain to the CAs of
/// `config` and name `host` (a DNS name or an IP address).
pub async fn associate_tls(
    host: &str,
    port: u16,
    config: Arc<rustls::ClientConfig>,
    calling_ae: &str,
    called_ae: &str,
    contexts: &[(&str, Vec<&str>)],
) -> Result<AsyncClientAssociation<AsyncTlsStream>, SendError> {
    let addr = format!("{host}:{port}");
    options(calling_ae, called_ae, contexts)
        .tls_config(config)
        .server_name(host)
        .establish_tls_async(addr.as_str())
        .await
        .context(AssociateSnafu { addr })
}

/// An association with a destination, over TCP or TLS. (One lives per
/// destination and delivery round: the TLS variant's size does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Peer {
    Tcp(AsyncClientAssociation<TcpStream>),
    Tls(AsyncClientAssociation<AsyncTlsStream>),
}

/// Associate with `d` over its transport: TLS (with `tls`, the
/// `pipeline.tls` configuration) for a `+tls` destination, TCP otherwise.
pub async fn connect(
    d: &Destination,
    tls: Option<Arc<rustls::ClientConfig>>,
    calling_ae: &str,
    contexts: &[(&str, Vec<&str>)],
) -> Result<Peer, SendError> {
    if !d.tls {
        let addr = format!("{}:{}", d.host, d.port);
        return Ok(Peer::Tcp(
            associate(&addr, calling_ae, &d.ae_title, contexts).await?,
        ));
    }
    let config = tls.ok_or_else(|| SendError::NoTlsSettings { dest: d.key() })?;
    let assoc = associate_tls(&d.host, d.port, config, calling_ae, &d.ae_title, contexts).await?;
    Ok(Peer::Tls(assoc))
}

impl Peer {
    /// C-STORE one data set; see [`store`].
    pub async fn store(&mut self, message_id: u16, file: &DicomFile) -> Result<Command, SendError> {
        match self {
            Peer::Tcp(a) => store(a, message_id, file).await,
            Peer::Tls(a) => store(a, message_id, file).await,
        }
    }

    /// Whether the peer accepted `abstract_syntax` (dicom-ul keeps only
    /// the accepted presentation contexts).
    pub fn accepts(&self, abstract_syntax: &str) -> bool {
        let contexts = match self {
            Peer::Tcp(a) => a.presentation_contexts(),
            Peer::Tls(a) => a.presentation_contexts(),
        };
        contexts.iter().any(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && crate::uid::trim(&pc.abstract_syntax) == abstract_syntax
        })
    }

    /// C-ECHO; see [`echo`].
    pub async fn echo(&mut self, message_id: u16) -> Result<u16, SendError> {
        match self {
            Peer::Tcp(a) => echo(a, message_id).await,
            Peer::Tls(a) => echo(a, message_id).await,
        }
    }

    /// Abort the association (A-ABORT) and close the connection.
    pub async fn abort(self) -> Result<(), SendError> {
        match self {
            Peer::Tcp(a) => a.abort().await,
            Peer::Tls(a) => a.abort().await,
        }
        .context(NetworkSnafu)
    }

    /// Release the association (A-RELEASE).
    pub async fn release(self) -> Result<(), SendError> {
        match self {
            Peer::Tcp(a) => a.release().await,
            Peer::Tls(a) => a.release().await,
        }
        .context(NetworkSnafu)
    }
}

/// The accepted presentation context for an abstract syntax and transfer syntax.
pub fn context_id<S>(
    assoc: &AsyncClientAssociation<S>,
    abstract_syntax: &str,
    transfer_syntax: &str,
) -> Option<u8> {
    assoc
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && crate::uid::trim(&pc.abstract_syntax) == abstract_syntax
                && crate::uid::trim(&pc.transfer_syntax) == transfer_syntax
        })
        .map(|pc| pc.id)
}

/// Send a command and an optional data set, split into PDUs that fit the
/// peer's maximum length.
pub async fn send_message<S: Stream>(
    assoc: &mut AsyncClientAssociation<S>,
    pc_id: u8,
    command: &Command,
    data_set: Option<&[u8]>,
) -> Result<(), SendError> {
    let max = assoc.acceptor_max_pdu_length();
    for pdu in command.to_pdus(pc_id, max) {
        assoc.send(&pdu).await.context(NetworkSnafu)?;
    }
    if let Some(data) = data_set {
        for pdu in crate::dimse::pdata_pdus(pc_id, PDataValueType::Data, data, max) {
            assoc.send(&pdu).await.context(NetworkSnafu)?;
        }
    }
    Ok(())
}

/// Wait for the next command (a response).
pub async fn receive_command<S: Stream>(
    assoc: &mut AsyncClientAssociation<S>,
) -> Result<Command, SendError> {
    let mut bytes = Vec::new();
    loop {
        match assoc.receive().await.context(NetworkSnafu)? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return ProtocolSnafu {
                            what: "data set where a response was expected",
                        }
                        .fail();
                    }
                    bytes.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        return Command::decode(&bytes).context(CommandSnafu);
                    }
                }
            }
            other => {
                return ProtocolSnafu {
                    what: format!("{other:?}").chars().take(120).collect::<String>(),
                }
                .fail()
            }
        }
    }
}

/// C-STORE one data set; returns the response command. When the peer took
/// the SOP class only in another transfer syntax (Implicit VR Little
/// Endian, which every SCP must accept, where it accepts no other), the
/// data set is re-encoded in it ([`DicomFile::transcoded`]).
pub async fn store<S: Stream>(
    assoc: &mut AsyncClientAssociation<S>,
    message_id: u16,
    file: &DicomFile,
) -> Result<Command, SendError> {
    let (pc_id, data_set) = match context_id(assoc, &file.sop_class_uid, &file.transfer_syntax_uid)
    {
        Some(id) => (id, std::borrow::Cow::Borrowed(&file.data_set)),
        None => {
            let (id, ts) = assoc
                .presentation_contexts()
                .iter()
                .find(|pc| {
                    pc.reason == PresentationContextResultReason::Acceptance
                        && crate::uid::trim(&pc.abstract_syntax) == file.sop_class_uid
                })
                .map(|pc| (pc.id, crate::uid::trim(&pc.transfer_syntax).to_string()))
                .ok_or_else(|| SendError::NoContext {
                    abstract_syntax: file.sop_class_uid.clone(),
                })?;
            (id, std::borrow::Cow::Owned(file.transcoded(&ts)?))
        }
    };
    let rq = Command::store_request(message_id, &file.sop_class_uid, &file.sop_instance_uid);
    send_message(assoc, pc_id, &rq, Some(&data_set)).await?;
    receive_command(assoc).await
}

/// C-ECHO on an accepted Verification context; returns the status.
pub async fn echo<S: Stream>(
    assoc: &mut AsyncClientAssociation<S>,
    message_id: u16,
) -> Result<u16, SendError> {
    let pc_id = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && crate::uid::trim(&pc.abstract_syntax) == crate::dimse::VERIFICATION_SOP_CLASS
        })
        .map(|pc| pc.id)
        .ok_or_else(|| SendError::NoContext {
            abstract_syntax: crate::dimse::VERIFICATION_SOP_CLASS.into(),
        })?;
    send_message(assoc, pc_id, &Command::echo_request(message_id), None).await?;
    let rsp = receive_command(assoc).await?;
    Ok(rsp.status.unwrap_or(0xFFFF))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ts::{EXPLICIT_VR_LE, IMPLICIT_VR_LE};

    /// Explicit to Implicit VR Little Endian and back gives the data set
    /// byte for byte (sequences included); compressed syntaxes are refused.
    #[test]
    fn transcoding_between_native_syntaxes_round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = crate::testgen::write_set(dir.path(), "study", 0, 16, 1, 3).expect("files");
        let mut n = 0;
        for path in &files {
            let file = DicomFile::read(path).expect("read");
            assert_eq!(file.transfer_syntax_uid, EXPLICIT_VR_LE);
            let implicit = DicomFile {
                transfer_syntax_uid: IMPLICIT_VR_LE.into(),
                data_set: file.transcoded(IMPLICIT_VR_LE).expect("to implicit"),
                ..file.clone()
            };
            assert_ne!(implicit.data_set, file.data_set);
            let back = implicit.transcoded(EXPLICIT_VR_LE).expect("to explicit");
            assert!(back == file.data_set, "{}", path.display());
            let err = file
                .transcoded("1.2.840.10008.1.2.4.70")
                .expect_err("JPEG is not native");
            assert!(
                err.to_string().contains("not a native transfer syntax"),
                "{err}"
            );
            n += 1;
        }
        assert!(n >= 3, "{n} files");
    }
}
