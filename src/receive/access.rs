//! Who may open an association.
//!
//! dicom-ul asks an [`AccessControl`] for its verdict while it negotiates, but
//! gives it only AE titles. The policy here is built per connection so that it
//! also knows the peer's address, which the allow-list may pin.

use std::net::SocketAddr;
use std::sync::Arc;

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};

use crate::config::{wire_ae_title, ResolvedCaller};

/// The node-wide rules.
#[derive(Debug, Clone)]
pub struct Policy {
    pub require_called_ae_title: bool,
    /// Empty: any calling AE title.
    pub allowed_callers: Vec<ResolvedCaller>,
}

/// The rules applied to one incoming connection.
#[derive(Debug, Clone)]
pub struct PeerAccess {
    pub policy: Arc<Policy>,
    pub peer: SocketAddr,
}

impl PeerAccess {
    /// The verdict, separate from dicom-ul's trait so it can be tested alone.
    pub fn decide(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.policy.require_called_ae_title
            && wire_ae_title(called_ae_title) != this_ae_title.trim()
        {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        // The calling AE title names the sender in the index, the logs and
        // the returned reports, so one that is not text (PS3.5: not all
        // spaces, no control character, no backslash) is refused even when
        // any caller is let in. NULs, which some older peers pad with,
        // count as padding.
        if !crate::config::valid_ae_title(wire_ae_title(calling_ae_title)) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        let callers = &self.policy.allowed_callers;
        if !callers.is_empty()
            && !callers
                .iter()
                .any(|c| c.admits(calling_ae_title, self.peer.ip()))
        {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let verdict = self.decide(this_ae_title, calling_ae_title, called_ae_title);
        if let Err(reason) = &verdict {
            tracing::warn!(
                calling_ae = wire_ae_title(calling_ae_title),
                called_ae = wire_ae_title(called_ae_title),
                peer = %self.peer,
                reason = %reason,
                "association rejected"
            );
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(callers: Vec<ResolvedCaller>) -> PeerAccess {
        PeerAccess {
            policy: Arc::new(Policy {
                require_called_ae_title: true,
                allowed_callers: callers,
            }),
            peer: "192.0.2.7:40000".parse().expect("addr"),
        }
    }

    #[test]
    fn called_title_must_match() {
        let a = access(vec![]);
        assert_eq!(a.decide("ESORISK", "ANY", "ESORISK"), Ok(()));
        assert_eq!(
            a.decide("ESORISK", "ANY", "OTHER"),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
    }

    #[test]
    fn calling_titles_that_are_not_text_are_refused() {
        let a = access(vec![]);
        for bad in ["", "   ", "FUZZ\u{f}\u{ff}", "A\\B", "TAB\tX"] {
            assert_eq!(
                a.decide("ESORISK", bad, "ESORISK"),
                Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized),
                "{bad:?}"
            );
        }
        assert_eq!(a.decide("ESORISK", "TPS 1 ", "ESORISK"), Ok(()));
        assert_eq!(a.decide("ESORISK", "OLDTPS\0\0", "ESORISK"), Ok(()));
        assert_eq!(a.decide("ESORISK", " OLDTPS \0\0", "ESORISK\0\0"), Ok(()));
    }

    #[test]
    fn allow_list_with_host() {
        let a = access(vec![
            ResolvedCaller {
                ae_title: "TPS".into(),
                hosts: Some(vec!["192.0.2.7".parse().expect("ip")]),
            },
            ResolvedCaller {
                ae_title: "PACS".into(),
                hosts: Some(vec!["192.0.2.8".parse().expect("ip")]),
            },
        ]);
        assert_eq!(a.decide("ESORISK", "TPS", "ESORISK"), Ok(()));
        // Padding is not part of the title: NULs as much as spaces.
        assert_eq!(a.decide("ESORISK", "TPS\0\0\0", "ESORISK"), Ok(()));
        assert_eq!(a.decide("ESORISK", " TPS \0", "ESORISK"), Ok(()));
        assert_eq!(
            a.decide("ESORISK", "PACS", "ESORISK"),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        assert_eq!(
            a.decide("ESORISK", "STRANGER", "ESORISK"),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }
}
