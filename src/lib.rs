//! esorisk: a DICOM node that receives lung radiotherapy plans and scores
//! the risk of grade ≥ 2 radiation esophagitis.
//!
//! Research tool, not a medical device.
//!
//! The modules follow the data: [`receive`] (DICOM associations) →
//! [`store`] (durable files) → [`index`] (SQLite).

pub mod charset;
pub mod config;
pub mod dimse;
pub mod dosiomics;
pub mod hash;
pub mod index;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod par;
pub mod pipeline;
pub mod receive;
pub mod report;
pub mod retention;
pub mod rt;
pub mod send;
pub mod store;
pub mod synth;
pub mod testgen;
pub mod tls;
pub mod uid;

/// The message a panic carried, for the instance, association, job or
/// delivery it failed.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// An error and its causes, `a: b: c`: dicom-ul's "could not connect to
/// server" alone does not say that a certificate was refused; its cause
/// does.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}
