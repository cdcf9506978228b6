//! PDUs off the wire, with P-DATA values read straight into one buffer.
//!
//! dicom-ul's `receive` hands back every presentation data value as a fresh
//! `Vec`, copied twice on the way from its read buffer. For a CT series that
//! is two extra copies, two allocations and a round of page faults per
//! 256 KiB fragment, on a path where the sender waits for every response.
//! Here the value of a P-DATA PDU is read from the socket into a buffer
//! that lives as long as the association, in chunks of at most that
//! buffer's size, so memory per association stays bounded whatever PDU
//! size the peer sends. The other PDUs (release, abort) are rare: they are
//! read whole and decoded by dicom-ul.
//!
//! The association's own read buffer may hold bytes read ahead during
//! negotiation; they are consumed first.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use dicom_ul::pdu::Pdu;
use snafu::Snafu;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Type of the P-DATA-TF PDU.
const P_DATA_TF: u8 = 0x04;
/// Largest chunk handed out: enough for few system calls per instance,
/// small enough that 32 associations hold 8 MiB between them.
pub const MAX_CHUNK: usize = 256 * 1024;
/// Largest PDU other than P-DATA accepted (release and abort are a few
/// bytes; an association request has no business here).
const MAX_OTHER_PDU: usize = 64 * 1024;

/// What the peer sent next.
#[derive(Debug)]
pub enum Event<'a> {
    /// A chunk of one presentation data value. `last` is set on the final
    /// chunk of a value whose message control header marks the last
    /// fragment of a command or data set.
    Data {
        pc_id: u8,
        command: bool,
        last: bool,
        bytes: &'a [u8],
    },
    /// Any PDU other than P-DATA-TF.
    Pdu(Pdu),
}

#[derive(Debug, Snafu)]
pub enum WireError {
    #[snafu(display("no data within the read timeout"))]
    Timeout,
    #[snafu(display("connection closed by peer"))]
    Closed,
    #[snafu(display("reading from the peer: {source}"))]
    Io { source: io::Error },
    #[snafu(display("malformed PDU: {message}"))]
    Protocol { message: String },
}

fn protocol(message: impl Into<String>) -> WireError {
    WireError::Protocol {
        message: message.into(),
    }
}

/// The value being read: its context, kind and bytes still to come.
#[derive(Debug, Default, Clone, Copy)]
struct Value {
    pc_id: u8,
    command: bool,
    last: bool,
    left: usize,
}

/// Reads one association's PDUs; see the module documentation.
pub struct PduReader {
    buf: Vec<u8>,
    /// Bytes of the current P-DATA PDU not yet read (item headers included).
    pdata_left: usize,
    value: Value,
    timeout: Duration,
}

enum Step {
    Data { value: Value, len: usize },
    Pdu(Pdu),
}

impl PduReader {
    /// `chunk`: the buffer size, normally the maximum PDU length this node
    /// announced (kept between 4 KiB and [`MAX_CHUNK`]); `timeout`: how
    /// long one read may wait for the peer.
    pub fn new(chunk: usize, timeout: Duration) -> PduReader {
        PduReader {
            buf: vec![0; chunk.clamp(4096, MAX_CHUNK)],
            pdata_left: 0,
            value: Value::default(),
            timeout,
        }
    }

    /// The next chunk of data or the next other PDU. `pending` is the
    /// association's read buffer (bytes already read from `socket`).
    pub async fn next<S: AsyncRead + Unpin>(
        &mut self,
        socket: &mut S,
        pending: &mut BytesMut,
    ) -> Result<Event<'_>, WireError> {
        let step = match tokio::time::timeout(self.timeout, self.step(socket, pending)).await {
            Ok(step) => step?,
            Err(_) => return Err(WireError::Timeout),
        };
        Ok(match step {
            Step::Pdu(pdu) => Event::Pdu(pdu),
            Step::Data { value, len } => Event::Data {
                pc_id: value.pc_id,
                command: value.command,
                last: value.last && value.left == 0,
                bytes: &self.buf[..len],
            },
        })
    }

    async fn step<S: AsyncRead + Unpin>(
        &mut self,
        socket: &mut S,
        pending: &mut BytesMut,
    ) -> Result<Step, WireError> {
        if self.value.left == 0 {
            if self.pdata_left == 0 {
                let mut header = [0u8; 6];
                read_exact(socket, pending, &mut header).await?;
                let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
                let length = usize::try_from(length).map_err(|_| protocol("PDU too long"))?;
                if header[0] != P_DATA_TF {
                    return self.other_pdu(socket, pending, header, length).await;
                }
                if length < 6 {
                    return Err(protocol(format!(
                        "P-DATA-TF of {length} bytes holds no presentation data value"
                    )));
                }
                self.pdata_left = length;
            }
            if self.pdata_left < 6 {
                return Err(protocol(
                    "P-DATA-TF ends inside a presentation data value item",
                ));
            }
            let mut item = [0u8; 6];
            read_exact(socket, pending, &mut item).await?;
            let item_length = u32::from_be_bytes([item[0], item[1], item[2], item[3]]) as usize;
            if item_length < 2 || item_length > self.pdata_left - 4 {
                return Err(protocol(format!(
                    "presentation data value item of {item_length} bytes in {} remaining",
                    self.pdata_left - 4
                )));
            }
            self.pdata_left -= 4 + item_length;
            self.value = Value {
                pc_id: item[4],
                command: item[5] & 0x01 != 0,
                last: item[5] & 0x02 != 0,
                left: item_length - 2,
            };
        }
        let len = self.value.left.min(self.buf.len());
        read_exact(socket, pending, &mut self.buf[..len]).await?;
        self.value.left -= len;
        Ok(Step::Data {
            value: self.value,
            len,
        })
    }

    async fn other_pdu<S: AsyncRead + Unpin>(
        &mut self,
        socket: &mut S,
        pending: &mut BytesMut,
        header: [u8; 6],
        length: usize,
    ) -> Result<Step, WireError> {
        if length > MAX_OTHER_PDU {
            return Err(protocol(format!(
                "PDU of type {:#04x} and {length} bytes",
                header[0]
            )));
        }
        let mut whole = vec![0u8; 6 + length];
        whole[..6].copy_from_slice(&header);
        read_exact(socket, pending, &mut whole[6..]).await?;
        match dicom_ul::pdu::read_pdu(&whole[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
            Ok(Some(pdu)) => Ok(Step::Pdu(pdu)),
            Ok(None) => Err(protocol("incomplete PDU")),
            Err(e) => Err(protocol(e.to_string())),
        }
    }
}

/// Fill `out`, first from what the association already buffered.
async fn read_exact<S: AsyncRead + Unpin>(
    socket: &mut S,
    pending: &mut BytesMut,
    out: &mut [u8],
) -> Result<(), WireError> {
    let k = pending.len().min(out.len());
    if k > 0 {
        out[..k].copy_from_slice(&pending.split_to(k));
    }
    if k < out.len() {
        socket.read_exact(&mut out[k..]).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                WireError::Closed
            } else {
                WireError::Io { source: e }
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdv(pc_id: u8, header: u8, data: &[u8]) -> Vec<u8> {
        let mut v = ((data.len() + 2) as u32).to_be_bytes().to_vec();
        v.push(pc_id);
        v.push(header);
        v.extend_from_slice(data);
        v
    }

    fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind, 0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Every event as (pc, command, last, bytes) or the PDU's debug name.
    async fn events(stream: &[u8], pending: &[u8], chunk: usize) -> Vec<String> {
        let mut reader = PduReader::new(chunk, Duration::from_secs(5));
        let mut socket = stream;
        let mut pending = BytesMut::from(pending);
        let mut out = Vec::new();
        loop {
            match reader.next(&mut socket, &mut pending).await {
                Ok(Event::Data {
                    pc_id,
                    command,
                    last,
                    bytes,
                }) => out.push(format!(
                    "{pc_id} {} {} {}",
                    if command { "cmd" } else { "data" },
                    if last { "last" } else { "more" },
                    bytes.len()
                )),
                Ok(Event::Pdu(p)) => out.push(format!("{p:?}")),
                Err(e) => {
                    out.push(format!("error: {e}"));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn values_come_in_chunks_of_the_buffer_size() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut body = pdv(1, 0x03, &[7; 20]);
        body.extend(pdv(1, 0x00, &data[..6000]));
        let mut wire = pdu(0x04, &body);
        wire.extend(pdu(0x04, &pdv(3, 0x02, &data[6000..])));
        wire.extend(pdu(0x05, &[0, 0, 0, 0]));
        // The association read ahead the first 9 bytes.
        let got = events(&wire[9..], &wire[..9], 4096).await;
        assert_eq!(
            got,
            [
                "1 cmd last 20",
                "1 data more 4096",
                "1 data more 1904",
                "3 data last 4000",
                "ReleaseRQ",
                "error: connection closed by peer",
            ]
        );
    }

    #[tokio::test]
    async fn a_value_of_exactly_the_buffer_size_is_one_chunk() {
        let wire = pdu(0x04, &pdv(1, 0x02, &[1; 4096]));
        let got = events(&wire, &[], 4096).await;
        assert_eq!(got[0], "1 data last 4096");
    }

    #[tokio::test]
    async fn bytes_are_delivered_unchanged() {
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        let wire = pdu(0x04, &pdv(1, 0x02, &data));
        let mut reader = PduReader::new(4096, Duration::from_secs(5));
        let mut socket = &wire[..];
        let mut pending = BytesMut::new();
        let mut got = Vec::new();
        loop {
            match reader.next(&mut socket, &mut pending).await {
                Ok(Event::Data { bytes, last, .. }) => {
                    got.extend_from_slice(bytes);
                    if last {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn malformed_and_truncated_pdus_are_errors() {
        // Item longer than its PDU.
        let mut body = pdv(1, 0x02, &[0; 10]);
        body[3] = 200;
        let got = events(&pdu(0x04, &body), &[], 4096).await;
        assert!(got[0].starts_with("error: malformed PDU"), "{got:?}");
        // Item shorter than its own header.
        let got = events(&pdu(0x04, &[0, 0, 0, 1, 1, 2]), &[], 4096).await;
        assert!(got[0].starts_with("error: malformed PDU"), "{got:?}");
        // An empty P-DATA-TF.
        let got = events(&pdu(0x04, &[]), &[], 4096).await;
        assert!(got[0].starts_with("error: malformed PDU"), "{got:?}");
        // A huge PDU of another type is refused before it is read.
        let got = events(&[0x01, 0, 0x10, 0, 0, 0], &[], 4096).await;
        assert!(got[0].starts_with("error: malformed PDU"), "{got:?}");
        // Cut in the middle of a value.
        let wire = pdu(0x04, &pdv(1, 0x02, &[0; 100]));
        let got = events(&wire[..60], &[], 4096).await;
        assert_eq!(got, ["error: connection closed by peer"]);
    }

    /// Every single-byte change of a stream of a command, a data set and a
    /// release request ends in events and an error, in bounded time: no
    /// panic, no loop that consumes nothing.
    #[tokio::test]
    async fn damaged_streams_end_without_panic_or_hang() {
        let mut body = pdv(1, 0x03, &[7; 20]);
        body.extend(pdv(1, 0x00, &[1; 50]));
        body.extend(pdv(1, 0x02, &[2; 30]));
        let mut wire = pdu(0x04, &body);
        wire.extend(pdu(0x05, &[0; 4]));
        let clean = events(&wire, &[], 4096).await;
        assert_eq!(clean.len(), 5, "{clean:?}");
        for at in 0..wire.len() {
            for value in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                let mut w = wire.clone();
                w[at] = value;
                let got = tokio::time::timeout(Duration::from_secs(5), events(&w, &[], 16))
                    .await
                    .unwrap_or_else(|_| panic!("byte {at} = {value}: no end"));
                let last = got.last().map(String::as_str).unwrap_or_default();
                assert!(last.starts_with("error"), "byte {at} = {value}: {got:?}");
            }
        }
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let (mut near, _far) = tokio::io::duplex(64);
        let mut reader = PduReader::new(4096, Duration::from_millis(20));
        let mut pending = BytesMut::new();
        let r = reader.next(&mut near, &mut pending).await;
        assert!(matches!(r, Err(WireError::Timeout)), "{r:?}");
    }
}
