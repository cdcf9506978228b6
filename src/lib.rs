//! esorisk: a DICOM node that receives lung radiotherapy plans and scores
//! the risk of grade ≥ 2 radiation esophagitis.
//!
//! Research tool, not a medical device.
//!
//! The modules follow the data: [`receive`] (DICOM associations) →
//! [`store`] (durable files) → [`index`] (SQLite).

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
pub mod rt;
pub mod send;
pub mod store;
pub mod synth;
pub mod testgen;
pub mod uid;
