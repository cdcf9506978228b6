//! DIMSE command sets for C-ECHO and C-STORE (PS3.7), and the failure
//! response to any other request.
//!
//! dicom-ul carries PDUs but has no DIMSE layer. A command set is a short,
//! flat list of group 0000 elements, always in implicit VR little endian, so
//! it is encoded and decoded here directly: no sequences, no character sets,
//! and no allocation beyond the element values.

use std::fmt;

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
pub const C_CANCEL_RQ: u16 = 0x0FFF;

/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;
/// A value meaning "a data set follows" (any other than 0x0101 does).
pub const DATA_SET_PRESENT: u16 = 0x0000;

pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

mod tag {
    pub const GROUP_LENGTH: u32 = 0x0000_0000;
    pub const AFFECTED_SOP_CLASS_UID: u32 = 0x0000_0002;
    pub const REQUESTED_SOP_CLASS_UID: u32 = 0x0000_0003;
    pub const COMMAND_FIELD: u32 = 0x0000_0100;
    pub const MESSAGE_ID: u32 = 0x0000_0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u32 = 0x0000_0120;
    pub const MOVE_ORIGINATOR_AE: u32 = 0x0000_1030;
    pub const PRIORITY: u32 = 0x0000_0700;
    pub const DATA_SET_TYPE: u32 = 0x0000_0800;
    pub const STATUS: u32 = 0x0000_0900;
    pub const OFFENDING_ELEMENT: u32 = 0x0000_0901;
    pub const ERROR_COMMENT: u32 = 0x0000_0902;
    pub const AFFECTED_SOP_INSTANCE_UID: u32 = 0x0000_1000;
    pub const REQUESTED_SOP_INSTANCE_UID: u32 = 0x0000_1001;
}

/// DIMSE status codes used by this node (PS3.4 Annex B, PS3.7 Annex C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Warning: coercion of data elements.
    pub const WARNING_COERCION: u16 = 0xB000;
    /// Refused: out of resources (disk full, storage failure).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand (the data set does not parse).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Error: cannot understand, an identifying UID is invalid or missing.
    pub const INVALID_UID: u16 = 0xC001;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Failure: unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Failure: processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
}

/// A decoded command set: the elements this node reads or writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub command_field: u16,
    pub message_id: Option<u16>,
    pub message_id_being_responded_to: Option<u16>,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    /// N-GET, N-SET, N-ACTION and N-DELETE requests name their instance
    /// with these instead of the affected ones.
    pub requested_sop_class_uid: Option<String>,
    pub requested_sop_instance_uid: Option<String>,
    pub priority: Option<u16>,
    pub data_set_type: u16,
    pub status: Option<u16>,
    pub error_comment: Option<String>,
    pub offending_element: Option<u32>,
    pub move_originator_ae: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DIMSE command set: {}", self.0)
    }
}

impl std::error::Error for CommandError {}

impl Command {
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }

    /// A request: bit 15 of the Command Field is clear (responses set it).
    pub fn is_request(&self) -> bool {
        self.command_field & 0x8000 == 0
    }

    /// Decode an implicit VR little endian command set. A command set
    /// without a Command Field, or a request (other than C-CANCEL, which
    /// names the message it cancels instead) without a Message ID, is
    /// malformed: there is nothing a response could be matched with.
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        let mut cmd = Command {
            data_set_type: NO_DATA_SET,
            ..Default::default()
        };
        let mut seen_field = false;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let header = bytes
                .get(pos..pos + 8)
                .ok_or_else(|| CommandError("truncated element header".into()))?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            pos += 8;
            if group != 0x0000 {
                return Err(CommandError(format!(
                    "element ({group:04X},{element:04X}) outside group 0000"
                )));
            }
            let value = bytes
                .get(pos..pos.saturating_add(len))
                .ok_or_else(|| CommandError(format!("element (0000,{element:04X}) truncated")))?;
            pos += len;
            let t = u32::from(element);
            let us = || -> Result<u16, CommandError> {
                value
                    .get(..2)
                    .map(|v| u16::from_le_bytes([v[0], v[1]]))
                    .ok_or_else(|| {
                        CommandError(format!("(0000,{element:04X}) shorter than 2 bytes"))
                    })
            };
            match t {
                tag::COMMAND_FIELD => {
                    cmd.command_field = us()?;
                    seen_field = true;
                }
                tag::MESSAGE_ID => cmd.message_id = Some(us()?),
                tag::MESSAGE_ID_BEING_RESPONDED_TO => {
                    cmd.message_id_being_responded_to = Some(us()?)
                }
                tag::PRIORITY => cmd.priority = Some(us()?),
                tag::DATA_SET_TYPE => cmd.data_set_type = us()?,
                tag::STATUS => cmd.status = Some(us()?),
                tag::AFFECTED_SOP_CLASS_UID => cmd.affected_sop_class_uid = Some(text(value)),
                tag::AFFECTED_SOP_INSTANCE_UID => cmd.affected_sop_instance_uid = Some(text(value)),
                tag::REQUESTED_SOP_CLASS_UID => cmd.requested_sop_class_uid = Some(text(value)),
                tag::REQUESTED_SOP_INSTANCE_UID => {
                    cmd.requested_sop_instance_uid = Some(text(value))
                }
                tag::ERROR_COMMENT => cmd.error_comment = Some(text(value)),
                tag::MOVE_ORIGINATOR_AE => cmd.move_originator_ae = Some(text(value)),
                tag::OFFENDING_ELEMENT if value.len() >= 4 => {
                    let g = u16::from_le_bytes([value[0], value[1]]);
                    let e = u16::from_le_bytes([value[2], value[3]]);
                    cmd.offending_element = Some((u32::from(g) << 16) | u32::from(e));
                }
                _ => {}
            }
        }
        if !seen_field {
            return Err(CommandError("no CommandField (0000,0100)".into()));
        }
        if cmd.is_request() && cmd.command_field != C_CANCEL_RQ && cmd.message_id.is_none() {
            return Err(CommandError(format!(
                "request {:#06x} without MessageID (0000,0110)",
                cmd.command_field
            )));
        }
        Ok(cmd)
    }

    /// Encode as implicit VR little endian, with the group length first.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(160);
        if let Some(uid) = &self.affected_sop_class_uid {
            put_text(&mut body, tag::AFFECTED_SOP_CLASS_UID, uid, 0);
        }
        if let Some(uid) = &self.requested_sop_class_uid {
            put_text(&mut body, tag::REQUESTED_SOP_CLASS_UID, uid, 0);
        }
        put_us(&mut body, tag::COMMAND_FIELD, self.command_field);
        if let Some(id) = self.message_id {
            put_us(&mut body, tag::MESSAGE_ID, id);
        }
        if let Some(id) = self.message_id_being_responded_to {
            put_us(&mut body, tag::MESSAGE_ID_BEING_RESPONDED_TO, id);
        }
        if let Some(p) = self.priority {
            put_us(&mut body, tag::PRIORITY, p);
        }
        put_us(&mut body, tag::DATA_SET_TYPE, self.data_set_type);
        if let Some(s) = self.status {
            put_us(&mut body, tag::STATUS, s);
        }
        if let Some(t) = self.offending_element {
            body.extend_from_slice(&tag_bytes(tag::OFFENDING_ELEMENT));
            body.extend_from_slice(&4u32.to_le_bytes());
            body.extend_from_slice(&((t >> 16) as u16).to_le_bytes());
            body.extend_from_slice(&(t as u16).to_le_bytes());
        }
        if let Some(c) = &self.error_comment {
            // LO: at most 64 characters, default repertoire, no backslash.
            let clean: String = c
                .chars()
                .map(|ch| {
                    if ch.is_ascii_graphic() || ch == ' ' {
                        ch
                    } else {
                        '?'
                    }
                })
                .map(|ch| if ch == '\\' { '/' } else { ch })
                .take(64)
                .collect();
            put_text(&mut body, tag::ERROR_COMMENT, &clean, b' ');
        }
        if let Some(uid) = &self.affected_sop_instance_uid {
            put_text(&mut body, tag::AFFECTED_SOP_INSTANCE_UID, uid, 0);
        }
        if let Some(uid) = &self.requested_sop_instance_uid {
            put_text(&mut body, tag::REQUESTED_SOP_INSTANCE_UID, uid, 0);
        }
        if let Some(ae) = &self.move_originator_ae {
            put_text(&mut body, tag::MOVE_ORIGINATOR_AE, ae, b' ');
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&tag_bytes(tag::GROUP_LENGTH));
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The command as P-DATA-TF PDUs on presentation context `pc_id` that
    /// fit the peer's maximum PDU length: one, unless the peer announced a
    /// maximum smaller than a command set (PS3.8 sets no lower bound).
    pub fn to_pdus(&self, pc_id: u8, peer_max_pdu: u32) -> Vec<dicom_ul::Pdu> {
        let bytes = self.encode();
        pdata_pdus(
            pc_id,
            dicom_ul::pdu::PDataValueType::Command,
            &bytes,
            peer_max_pdu,
        )
        .collect()
    }

    /// A C-ECHO-RSP answering `rq`.
    pub fn echo_response(rq: &Command) -> Command {
        Command {
            command_field: C_ECHO_RSP,
            message_id_being_responded_to: rq.message_id,
            affected_sop_class_uid: Some(
                rq.affected_sop_class_uid
                    .clone()
                    .unwrap_or_else(|| VERIFICATION_SOP_CLASS.to_string()),
            ),
            data_set_type: NO_DATA_SET,
            status: Some(status::SUCCESS),
            ..Default::default()
        }
    }

    /// A C-STORE-RSP answering `rq` with `status` and an optional comment.
    pub fn store_response(rq: &Command, status: u16, comment: Option<String>) -> Command {
        Command {
            command_field: C_STORE_RSP,
            message_id_being_responded_to: rq.message_id,
            affected_sop_class_uid: rq.affected_sop_class_uid.clone(),
            affected_sop_instance_uid: rq.affected_sop_instance_uid.clone(),
            data_set_type: NO_DATA_SET,
            status: Some(status),
            error_comment: comment,
            ..Default::default()
        }
    }

    /// The failure response to a request this node does not support
    /// (C-FIND, C-GET, C-MOVE, the N- services): the request's Command
    /// Field with bit 15 set, status 0211 "unrecognized operation" and
    /// `comment`. PS3.7 has every N- response name its instance with the
    /// Affected SOP Class and Instance UID, which N-GET, N-SET, N-ACTION and
    /// N-DELETE requests carry as the Requested ones; a C- response other
    /// than C-STORE's has no SOP Instance UID.
    pub fn unsupported_response(rq: &Command, comment: String) -> Command {
        let n_service = (0x0100..0x0200).contains(&rq.command_field);
        Command {
            command_field: rq.command_field | 0x8000,
            message_id_being_responded_to: rq.message_id,
            affected_sop_class_uid: rq
                .affected_sop_class_uid
                .clone()
                .or_else(|| rq.requested_sop_class_uid.clone()),
            affected_sop_instance_uid: if n_service {
                rq.affected_sop_instance_uid
                    .clone()
                    .or_else(|| rq.requested_sop_instance_uid.clone())
            } else {
                None
            },
            data_set_type: NO_DATA_SET,
            status: Some(status::UNRECOGNIZED_OPERATION),
            error_comment: Some(comment),
            ..Default::default()
        }
    }

    /// A C-STORE-RQ for one instance (used by the sending side and tests).
    pub fn store_request(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Command {
        Command {
            command_field: C_STORE_RQ,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(sop_class_uid.to_string()),
            affected_sop_instance_uid: Some(sop_instance_uid.to_string()),
            priority: Some(0),
            data_set_type: DATA_SET_PRESENT,
            ..Default::default()
        }
    }

    /// A C-ECHO-RQ.
    pub fn echo_request(message_id: u16) -> Command {
        Command {
            command_field: C_ECHO_RQ,
            message_id: Some(message_id),
            affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.to_string()),
            data_set_type: NO_DATA_SET,
            ..Default::default()
        }
    }
}

/// True when a status is a failure (not success, not a warning, not pending).
pub fn is_failure(status: u16) -> bool {
    !(status == status::SUCCESS
        || status == 0x0001
        || status == 0x0107
        || status == 0x0116
        || (status & 0xF000) == 0xB000
        || status == 0xFF00
        || status == 0xFF01)
}

fn tag_bytes(t: u32) -> [u8; 4] {
    let g = ((t >> 16) as u16).to_le_bytes();
    let e = (t as u16).to_le_bytes();
    [g[0], g[1], e[0], e[1]]
}

fn put_us(out: &mut Vec<u8>, t: u32, v: u16) {
    out.extend_from_slice(&tag_bytes(t));
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, t: u32, s: &str, pad: u8) {
    let odd = s.len() % 2 == 1;
    out.extend_from_slice(&tag_bytes(t));
    out.extend_from_slice(&((s.len() + usize::from(odd)) as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    if odd {
        out.push(pad);
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

/// `data` as P-DATA-TF PDUs of one presentation data value each, every
/// PDU within `peer_max_pdu` (the length of its variable field, as
/// negotiated; dicom-ul reads an announced 0, "no limit", as its own
/// maximum). The last fragment carries the "last" bit; empty data is one
/// empty fragment. Made one at a time, so that a large data set is never
/// held twice.
pub fn pdata_pdus(
    pc_id: u8,
    value_type: dicom_ul::pdu::PDataValueType,
    data: &[u8],
    peer_max_pdu: u32,
) -> impl Iterator<Item = dicom_ul::Pdu> + '_ {
    // A PDV item's header: 4 bytes of length, the context ID and the
    // message control header.
    let room = (peer_max_pdu as usize).saturating_sub(6).max(1);
    let n = data.len().div_ceil(room).max(1);
    (0..n).map(move |i| dicom_ul::Pdu::PData {
        data: vec![dicom_ul::pdu::PDataValue {
            presentation_context_id: pc_id,
            value_type: value_type.clone(),
            is_last: i + 1 == n,
            data: data[(i * room).min(data.len())..((i + 1) * room).min(data.len())].to_vec(),
        }],
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pdus_fit_the_peers_maximum() {
        use dicom_ul::pdu::PDataValueType;
        let rsp = Command::echo_response(&Command {
            command_field: 0x0030,
            message_id: Some(7),
            affected_sop_class_uid: Some(VERIFICATION_SOP_CLASS.into()),
            ..Command::default()
        });
        let whole = rsp.encode();
        for max in [0u32, 1, 7, 16, 64, 100, 16_384] {
            let pdus = rsp.to_pdus(3, max.max(1));
            let mut joined = Vec::new();
            for (i, pdu) in pdus.iter().enumerate() {
                let dicom_ul::Pdu::PData { data } = pdu else {
                    panic!("not P-DATA")
                };
                assert_eq!(data.len(), 1);
                let pdv = &data[0];
                assert_eq!(pdv.presentation_context_id, 3);
                assert_eq!(pdv.value_type, PDataValueType::Command);
                assert_eq!(pdv.is_last, i + 1 == pdus.len());
                assert!(pdv.data.len() + 6 <= (max.max(7)) as usize, "max {max}");
                joined.extend_from_slice(&pdv.data);
            }
            assert_eq!(joined, whole, "max {max}");
            assert_eq!(
                pdus.len() == 1,
                whole.len() + 6 <= max.max(1) as usize,
                "max {max}"
            );
        }
        assert_eq!(pdata_pdus(1, PDataValueType::Data, &[], 64).count(), 1);
    }

    use super::*;

    #[test]
    fn store_request_round_trips() {
        let rq = Command::store_request(7, "1.2.840.10008.5.1.4.1.1.481.2", "1.2.3.45");
        let bytes = rq.encode();
        // Group length covers exactly what follows it.
        let gl = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(gl, bytes.len() - 12);
        let back = Command::decode(&bytes).expect("decode");
        assert_eq!(back, rq);
        assert!(back.has_data_set());
    }

    #[test]
    fn response_carries_status_and_comment() {
        let rq = Command::store_request(3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3");
        let rsp = Command::store_response(&rq, status::INVALID_UID, Some("bad \\ uid é".into()));
        let back = Command::decode(&rsp.encode()).expect("decode");
        assert_eq!(back.command_field, C_STORE_RSP);
        assert_eq!(back.message_id_being_responded_to, Some(3));
        assert_eq!(back.status, Some(status::INVALID_UID));
        assert_eq!(back.error_comment.as_deref(), Some("bad / uid ?"));
        assert!(!back.has_data_set());
        assert!(is_failure(status::INVALID_UID));
        assert!(!is_failure(status::SUCCESS));
        assert!(!is_failure(status::WARNING_COERCION));
    }

    #[test]
    fn truncated_or_foreign_commands_are_errors() {
        let bytes = Command::echo_request(1).encode();
        assert!(Command::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut foreign = bytes.clone();
        foreign.extend_from_slice(&[0x08, 0x00, 0x16, 0x00, 0, 0, 0, 0]);
        assert!(Command::decode(&foreign).is_err());
        assert!(Command::decode(&[]).is_err());
    }

    #[test]
    fn a_request_without_message_id_is_malformed() {
        let mut rq = Command::store_request(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3");
        rq.message_id = None;
        let e = Command::decode(&rq.encode()).expect_err("no message ID");
        assert!(e.0.contains("MessageID"), "{e}");
        let mut echo = Command::echo_request(1);
        echo.message_id = None;
        assert!(Command::decode(&echo.encode()).is_err());
        // A response has none, and C-CANCEL names the request it cancels.
        let rsp = Command::store_response(
            &Command::store_request(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3"),
            status::SUCCESS,
            None,
        );
        assert!(Command::decode(&rsp.encode()).is_ok());
        let cancel = Command {
            command_field: C_CANCEL_RQ,
            message_id_being_responded_to: Some(3),
            ..Default::default()
        };
        assert!(Command::decode(&cancel.encode()).is_ok());
    }

    #[test]
    fn unsupported_requests_get_their_own_response() {
        const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
        // C-FIND-RQ: C-FIND-RSP, affected SOP class, no instance.
        let find = Command {
            command_field: 0x0020,
            message_id: Some(4),
            affected_sop_class_uid: Some(CT.into()),
            priority: Some(0),
            data_set_type: DATA_SET_PRESENT,
            ..Default::default()
        };
        let back = Command::decode(&find.encode()).expect("decode");
        assert_eq!(back, find);
        let rsp =
            Command::decode(&Command::unsupported_response(&back, "not supported".into()).encode())
                .expect("decode");
        assert_eq!(rsp.command_field, 0x8020);
        assert_eq!(rsp.message_id_being_responded_to, Some(4));
        assert_eq!(rsp.status, Some(status::UNRECOGNIZED_OPERATION));
        assert_eq!(rsp.error_comment.as_deref(), Some("not supported"));
        assert_eq!(rsp.affected_sop_class_uid.as_deref(), Some(CT));
        assert_eq!(rsp.affected_sop_instance_uid, None);
        assert!(!rsp.has_data_set());

        // N-SET-RQ names its instance with the Requested UIDs; the
        // N-SET-RSP with the Affected ones.
        let set = Command {
            command_field: 0x0120,
            message_id: Some(5),
            requested_sop_class_uid: Some(CT.into()),
            requested_sop_instance_uid: Some("1.2.3.4".into()),
            data_set_type: DATA_SET_PRESENT,
            ..Default::default()
        };
        let back = Command::decode(&set.encode()).expect("decode");
        assert_eq!(back, set);
        let rsp =
            Command::decode(&Command::unsupported_response(&back, "not supported".into()).encode())
                .expect("decode");
        assert_eq!(rsp.command_field, 0x8120);
        assert_eq!(rsp.message_id_being_responded_to, Some(5));
        assert_eq!(rsp.affected_sop_class_uid.as_deref(), Some(CT));
        assert_eq!(rsp.affected_sop_instance_uid.as_deref(), Some("1.2.3.4"));
        assert_eq!(rsp.requested_sop_class_uid, None);
        assert_eq!(rsp.requested_sop_instance_uid, None);
    }

    /// Every cut and every single-byte change of a C-STORE request decodes
    /// or fails, never panics: the command set is the peer's to send.
    #[test]
    fn damaged_command_sets_never_panic() {
        let bytes = Command::store_request(7, "1.2.840.10008.5.1.4.1.1.481.2", "1.2.3.4").encode();
        for cut in 0..bytes.len() {
            let _ = Command::decode(&bytes[..cut]);
        }
        let mut refused = 0;
        for at in 0..bytes.len() {
            for value in [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF] {
                let mut b = bytes.clone();
                b[at] = value;
                refused += usize::from(Command::decode(&b).is_err());
            }
        }
        // The damage reached the decoder: lengths and tags are refused.
        assert!(refused > bytes.len(), "{refused} refused");
    }
}
