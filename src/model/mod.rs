//! The DGD model ("dosiomics-guided deep learning"): a 3D ResNet34 encoder
//! on the dose around the esophagus, an auxiliary segmentation branch that
//! learns the optimal ROI, a supervised contrastive branch, and a head that
//! fuses pooled image features with dosiomic features measured in the
//! learned ROI.
//!
//! `conv3d`, `net` and `loss` hold the network (candle has no 3D
//! convolution; it is composed from 2D ones); `data` and `dataset` turn
//! studies into tensors; `train` fits the network and its ablations;
//! `infer` loads a trained model and scores a study; `ensemble` joins
//! models trained with different seeds into one; `calibrate` fits its
//! ROI threshold and risk recalibration; `evaluate` builds the paper-style
//! table; `devcheck` compares a GPU's outputs with the CPU's and times it.

pub mod calibrate;
pub mod conv3d;
pub mod data;
pub mod dataset;
pub mod devcheck;
pub mod ensemble;
pub mod evaluate;
pub mod infer;
pub mod loss;
pub mod net;
pub mod train;
