//! Training the DGD network and its ablations: deterministic for a seed,
//! AdamW with warm-up and cosine decay, light augmentation that keeps the
//! anatomy (whole-voxel shifts, a few percent of dose scaling), early
//! stopping on the internal validation AUC, checkpoints as safetensors with
//! a JSON model card.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::data::{self, InputConfig};
use super::dataset::Dataset;
use super::loss;
use super::net::{Dgd, NetConfig};
use crate::metrics::auc;
use crate::synth::rng::Rng;

/// Which parts of the network train (the paper's ablations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// ResNet34 encoder and classifier only.
    Dl,
    /// + the auxiliary segmentation of the optimal ROI.
    DlSeg,
    /// + the supervised contrastive branch.
    DlSegCon,
    /// + fusion with the dosiomic features: the full model.
    Dgd,
}

impl Variant {
    pub const ALL: [Variant; 4] = [Variant::Dl, Variant::DlSeg, Variant::DlSegCon, Variant::Dgd];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Dl => "dl",
            Variant::DlSeg => "dl-seg",
            Variant::DlSegCon => "dl-seg-con",
            Variant::Dgd => "dgd",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Dl => "DL only (ResNet34)",
            Variant::DlSeg => "DL + segmentation",
            Variant::DlSegCon => "DL + segmentation + contrastive",
            Variant::Dgd => "DGD (full)",
        }
    }

    pub fn segmentation(self) -> bool {
        self != Variant::Dl
    }

    pub fn contrastive(self) -> bool {
        matches!(self, Variant::DlSegCon | Variant::Dgd)
    }

    pub fn fusion(self) -> bool {
        self == Variant::Dgd
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("variant {s:?}: dl, dl-seg, dl-seg-con or dgd"))
    }
}

/// Training settings (all stored in the model card).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_epochs: usize,
    /// Stop after this many epochs without a better validation AUC.
    pub patience: usize,
    pub lambda_seg: f64,
    pub lambda_con: f64,
    pub temperature: f64,
    /// Random whole-voxel shift, ± this many voxels per axis.
    pub shift_voxels: usize,
    /// Random dose scaling, ± this fraction.
    pub dose_scale: f64,
    pub variant: Variant,
    /// Where the fusion head's dosiomic features are measured in training.
    #[serde(default)]
    pub fusion_features: FusionFeatures,
    /// With predicted-ROI features: a learned ROI smaller than this (cc)
    /// gives way to the target ROI, in training as at inference
    /// (`ModelCard::min_fusion_roi_cc`). Absent or 0: none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_fusion_roi_cc: Option<f64>,
    pub net: NetConfig,
    pub input: InputConfig,
}

/// Where the fusion head's dosiomic features come from during training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionFeatures {
    /// Measured once, in the target (optimal) ROI.
    #[default]
    Target,
    /// Measured in the ROI the segmentation branch predicts, again after
    /// every epoch (the first epoch uses the target ROI), so that the head
    /// learns from the features it will see at inference, and the
    /// validation AUC that picks the epoch is the one inference gives.
    Predicted,
}

/// What re-measuring features in a predicted ROI needs: the cohort's DICOM
/// (the dataset keeps only crops) and the dosiomics model.
pub struct FeatureSource<'a> {
    pub cohort: &'a Path,
    pub model: &'a crate::dosiomics::search::DosiomicsModelFile,
    pub threads: usize,
    /// `TrainConfig::min_fusion_roi_cc`.
    pub min_roi_cc: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 20261126,
            epochs: 12,
            batch_size: 8,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            warmup_epochs: 2,
            patience: 4,
            lambda_seg: 1.0,
            lambda_con: 0.2,
            temperature: 0.1,
            shift_voxels: 2,
            dose_scale: 0.03,
            variant: Variant::Dgd,
            fusion_features: FusionFeatures::Target,
            min_fusion_roi_cc: None,
            net: NetConfig::default(),
            input: InputConfig::default(),
        }
    }
}

/// One epoch's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub validation_auc: f64,
    /// Mean Dice of the segmentation branch (probability ½) against the
    /// optimal ROI on the crop, internal split, patients with a region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_dice: Option<f64>,
    pub seconds: f64,
}

/// What training returns: the best weights (in `varmap`) and the log.
pub struct Trained {
    pub varmap: VarMap,
    pub net: Dgd,
    pub log: Vec<EpochLog>,
    pub best_epoch: usize,
    pub best_validation_auc: f64,
    pub samples_per_second: f64,
    /// With predicted-ROI features: the probability threshold of the
    /// learned ROI at the best epoch.
    pub roi_threshold: Option<f64>,
    /// The seed the kept weights started from: `cfg.seed`, or after a
    /// restart (see [`roi_collapsed`]) the one derived for that attempt.
    pub init_seed: u64,
    /// Attempts abandoned after a first epoch whose ROI had collapsed.
    pub restarts: usize,
}

/// Attempts whose segmentation branch collapsed in the first epoch are
/// abandoned, at most this many times; the last attempt always runs on.
pub const MAX_RESTARTS: usize = 2;

/// The collapse check needs a first epoch of at least this many optimizer
/// steps: a branch rising from its 1 % prior needs some steps to show.
const COLLAPSE_CHECK_MIN_STEPS: usize = 10;

/// Whether a segmentation branch has collapsed: cut at the lowest ROI
/// threshold, its output (`logits`, patient-major, `voxels` per patient)
/// meets the target (`targets`, the same layout, 0/1) of no patient that
/// has one. False when no patient has a target.
///
/// Why it matters: the output starts at a 1 % prior, and one of three
/// training seeds of the shipped configuration ended its first epoch with
/// every output below 0.02 and never rose again (an empty ROI for every
/// patient after every epoch; the head then reads imputed features only).
/// A sigmoid that far down passes little gradient, which is the likely
/// reason it stays there. Restarting from another seed is cheaper than
/// training on.
pub fn roi_collapsed(targets: &[u8], logits: &[f32], voxels: usize) -> bool {
    let cut = data::roi_cut(ROI_THRESHOLDS[0]);
    let mut any_target = false;
    for (t, l) in targets
        .chunks(voxels.max(1))
        .zip(logits.chunks(voxels.max(1)))
    {
        if !t.iter().any(|&x| x > 0) {
            continue;
        }
        any_target = true;
        if t.iter().zip(l).any(|(&x, &v)| x > 0 && v > cut) {
            return false;
        }
    }
    any_target
}

/// Device from a setting: `cpu`, `cuda:N`, or `auto` (CUDA when built with
/// it and present, else CPU with a log line).
pub fn device(setting: &str) -> Result<Device, String> {
    match setting {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(|e| e.to_string())
            } else {
                tracing::info!("no CUDA device (or not built with --features cuda): using the CPU");
                Ok(Device::Cpu)
            }
        }
        s => match s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Device::new_cuda(n).map_err(|e| format!("device {s}: {e}")),
            None => Err(format!("device {s:?}: auto, cpu or cuda:N")),
        },
    }
}

/// A batch on the device: inputs `[B, C, D, H, W]`, targets `[B, 1, D, H, W]`,
/// side input `[B, F (+1)]` (dosiomics, then the prescription scale), labels.
struct Batch {
    x: Tensor,
    seg: Tensor,
    side: Option<Tensor>,
    y: Tensor,
    labels: Vec<u32>,
}

fn batch(
    ds: &Dataset,
    idx: &[usize],
    dev: &Device,
    augment: Option<(&mut Rng, &TrainConfig)>,
    n_dosio: usize,
    prescription_scale: bool,
) -> candle_core::Result<Batch> {
    let [d, h, w] = ds.input.size;
    let v = d * h * w;
    let c = ds.input.channels();
    let mut x = Vec::with_capacity(idx.len() * c * v);
    let mut seg = Vec::with_capacity(idx.len() * v);
    let n_side = n_dosio + usize::from(prescription_scale);
    let mut side: Vec<f32> = Vec::with_capacity(idx.len() * n_side);
    let mut aug = augment;
    for &i in idx {
        let src = &ds.inputs[i * c * v..(i + 1) * c * v];
        let tgt = &ds.targets[i * v..(i + 1) * v];
        let (shift, scale) = match aug.as_mut() {
            Some((rng, cfg)) => {
                let s = cfg.shift_voxels as i64;
                let mut draw = || (rng.next_u64() % (2 * s as u64 + 1)) as i64 - s;
                let sh = [draw(), draw(), draw()];
                (sh, 1.0 + rng.range(-cfg.dose_scale, cfg.dose_scale) as f32)
            }
            None => ([0, 0, 0], 1.0),
        };
        for ch in 0..c {
            let f = if ch == 0 { scale } else { 1.0 };
            x.extend(shifted(&src[ch * v..(ch + 1) * v], [d, h, w], shift).map(|a| a * f));
        }
        seg.extend(shifted(tgt, [d, h, w], shift).map(f32::from));
        side.extend(&ds.dosiomics[i * ds.n_dosiomics..i * ds.n_dosiomics + n_dosio]);
        if prescription_scale {
            side.push(data::prescription_scale(ds.patients[i].norm_gy));
        }
    }
    let b = idx.len();
    let labels: Vec<u32> = idx
        .iter()
        .map(|&i| u32::from(ds.patients[i].label))
        .collect();
    Ok(Batch {
        x: Tensor::from_vec(x, (b, c, d, h, w), dev)?,
        seg: Tensor::from_vec(seg, (b, 1, d, h, w), dev)?,
        side: if n_side > 0 {
            Some(Tensor::from_vec(side, (b, n_side), dev)?)
        } else {
            None
        },
        y: Tensor::from_vec(labels.iter().map(|&l| l as f32).collect::<Vec<_>>(), b, dev)?,
        labels,
    })
}

/// `vol` moved by whole voxels (zero fill): the anatomy stays intact.
fn shifted<T: Copy + Default>(
    vol: &[T],
    [d, h, w]: [usize; 3],
    [sz, sy, sx]: [i64; 3],
) -> impl Iterator<Item = T> + '_ {
    (0..d * h * w).map(move |o| {
        let (k, j, i) = ((o / (h * w)) as i64, ((o / w) % h) as i64, (o % w) as i64);
        let (k, j, i) = (k - sz, j - sy, i - sx);
        if k < 0 || j < 0 || i < 0 || k >= d as i64 || j >= h as i64 || i >= w as i64 {
            T::default()
        } else {
            vol[(k as usize * h + j as usize) * w + i as usize]
        }
    })
}

/// Logits of the classifier for `idx` (no augmentation), in batches, and
/// with `segment` the segmentation logits from the same encoder pass
/// (patient-major; empty otherwise).
pub fn predict_logits(
    net: &Dgd,
    ds: &Dataset,
    idx: &[usize],
    dev: &Device,
    fusion: bool,
    segment: bool,
) -> candle_core::Result<(Vec<f64>, Vec<f32>)> {
    let n_dosio = if fusion { ds.n_dosiomics } else { 0 };
    let [d, h, w] = ds.input.size;
    let (mut out, mut seg) = (Vec::with_capacity(idx.len()), Vec::new());
    for chunk in idx.chunks(16) {
        let b = batch(
            ds,
            chunk,
            dev,
            None,
            n_dosio,
            net.config().prescription_scale,
        )?;
        let e = net.encode(&b.x)?;
        let logits = net.head(&e, b.side.as_ref())?;
        out.extend(logits.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        if segment {
            seg.extend(
                net.segment(&e, (d, h, w))?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
    }
    Ok((out, seg))
}

/// Probability thresholds tried for the learned ROI (training and
/// `esorisk calibrate`).
pub const ROI_THRESHOLDS: [f64; 11] = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

/// Mean Dice on the crop of the logits (patient-major, the first
/// `idx.len()` patients of `logits`) cut at probability `t` against the
/// targets, over the patients whose target is not empty.
fn crop_dice(ds: &Dataset, idx: &[usize], logits: &[f32], t: f64) -> f64 {
    let v = ds.input.voxels();
    let cut = data::roi_cut(t);
    let (mut sum, mut n) = (0.0, 0usize);
    for (k, &i) in idx.iter().enumerate() {
        let truth: Vec<bool> = ds.targets[i * v..(i + 1) * v]
            .iter()
            .map(|&x| x > 0)
            .collect();
        if !truth.iter().any(|&x| x) {
            continue;
        }
        let pred: Vec<bool> = logits[k * v..(k + 1) * v]
            .iter()
            .map(|&l| l > cut)
            .collect();
        sum += crate::dosiomics::roi::dice(&pred, &truth);
        n += 1;
    }
    sum / n.max(1) as f64
}

/// What one re-measuring of the fused features found.
struct Refreshed {
    /// The learned ROI's probability threshold.
    threshold: f64,
    /// Patients whose learned ROI was empty.
    empty: usize,
    /// Patients whose learned ROI was under the minimum (empty ones
    /// included), whose features were read in the target ROI.
    small: usize,
}

/// Measure the fusion features of `idx` in the ROI the network predicts
/// now (in place of the dataset's rows), at the threshold whose learned
/// ROIs best match the optimal ROI of the first `fit` patients of `idx`
/// (mean Dice on the patient grid, as the node maps them back); returns
/// the threshold and how many ROIs were empty (their features fall back to
/// the model's medians) or under the minimum.
fn refresh_predicted(
    net: &Dgd,
    ds: &mut Dataset,
    idx: &[usize],
    fit: usize,
    dev: &Device,
    src: &FeatureSource,
) -> Result<Refreshed, String> {
    let [d, h, w] = ds.input.size;
    let v = d * h * w;
    // The head's output is not needed here; the pass is the same.
    let (_, logits) = predict_logits(net, ds, idx, dev, true, true).map_err(|e| e.to_string())?;
    let (input, patients) = (&ds.input, &ds.patients);
    let prepare = |n: usize| {
        let id = &patients[idx[n]].patient_id;
        crate::rt::study::load(&[src.cohort.join(id)], &Default::default())
            .map_err(|e| format!("{id}: {e}"))
            .and_then(|study| {
                data::prepare(&study, input, src.model.resample_mm)
                    .map_err(|e| format!("{id}: {e}"))
            })
    };
    let learned = |p: &data::Prepared, n: usize, t: f64| {
        p.roi_from_logits(
            &logits[n * v..(n + 1) * v],
            data::roi_cut(t),
            &p.roi_support(src.model),
        )
    };
    // Pass 1: the threshold, on the training patients with a region.
    let dice = crate::par::map(
        fit.min(idx.len()),
        src.threads,
        |n| {
            prepare(n).map(|p| {
                let target = p.optimal_roi(src.model);
                target.iter().any(|&m| m).then(|| {
                    ROI_THRESHOLDS
                        .iter()
                        .map(|&t| crate::dosiomics::roi::dice(&learned(&p, n, t), &target))
                        .collect::<Vec<f64>>()
                })
            })
        },
        |_| {},
    );
    let mut sums = vec![0.0; ROI_THRESHOLDS.len()];
    for row in dice {
        if let Some(r) = row? {
            sums.iter_mut().zip(r).for_each(|(s, d)| *s += d);
        }
    }
    let threshold = (0..ROI_THRESHOLDS.len())
        .max_by(|&a, &b| sums[a].total_cmp(&sums[b]))
        .map_or(0.5, |k| ROI_THRESHOLDS[k]);
    // Pass 2: the features in the learned ROI at that threshold.
    let rows = crate::par::map(
        idx.len(),
        src.threads,
        |n| {
            prepare(n).map(|p| {
                let mut roi = p.feature_roi_from_logits(
                    &logits[n * v..(n + 1) * v],
                    data::roi_cut(threshold),
                    &p.feature_roi_support(src.model),
                );
                let empty = !roi.iter().any(|&m| m);
                let small = data::too_small(&roi, p.features(), src.min_roi_cc);
                if small {
                    roi = p.feature_optimal_roi(src.model);
                }
                let row = src.model.measure(p.features(), &roi);
                (data::Prepared::dosiomics(&row, src.model), empty, small)
            })
        },
        |_| {},
    );
    let f = ds.n_dosiomics;
    let (mut empty, mut small) = (0, 0);
    for (&i, r) in idx.iter().zip(rows) {
        let (row, e, s) = r?;
        ds.dosiomics[i * f..(i + 1) * f].copy_from_slice(&row[..f]);
        empty += usize::from(e);
        small += usize::from(s);
    }
    Ok(Refreshed {
        threshold,
        empty,
        small,
    })
}

/// Train `cfg.variant` on the training split, early-stopping on the
/// internal split's AUC. The best epoch's weights are kept. A run whose
/// segmentation branch collapsed in its first epoch ([`roi_collapsed`]) is
/// restarted from a seed derived from `cfg.seed`, at most
/// [`MAX_RESTARTS`] times; runs that do not collapse are what they were.
pub fn train(
    ds: &Dataset,
    cfg: &TrainConfig,
    dev: &Device,
    checkpoint: &Path,
    source: &FeatureSource,
) -> Result<Trained, String> {
    let mut restarts = 0;
    loop {
        let seed = if restarts == 0 {
            cfg.seed
        } else {
            Rng::derive(cfg.seed, "restart", restarts as u64)
        };
        let check = restarts < MAX_RESTARTS;
        match train_from(ds, cfg, seed, check, dev, checkpoint, source)? {
            Some(mut t) => {
                t.restarts = restarts;
                return Ok(t);
            }
            None => {
                restarts += 1;
                eprintln!(
                    "the segmentation branch collapsed in the first epoch (seed {seed}: no learned ROI meets an optimal ROI at probability {}); restarting from another seed ({restarts} of at most {MAX_RESTARTS})",
                    ROI_THRESHOLDS[0]
                );
            }
        }
    }
}

/// One training run from the weights `seed` gives; `None` when
/// `check_collapse` is set and the segmentation branch collapsed in the
/// first epoch.
fn train_from(
    ds: &Dataset,
    cfg: &TrainConfig,
    seed: u64,
    check_collapse: bool,
    dev: &Device,
    checkpoint: &Path,
    source: &FeatureSource,
) -> Result<Option<Trained>, String> {
    let err = |e: candle_core::Error| e.to_string();
    let mut cfg = cfg.clone();
    cfg.net.n_dosiomics = if cfg.variant.fusion() {
        ds.n_dosiomics
    } else {
        0
    };
    let net_cfg = NetConfig {
        in_channels: cfg.input.channels(),
        ..cfg.net.clone()
    };
    let (varmap, net) = build(&net_cfg, seed, dev)?;
    let train_idx = ds.indices("train", None);
    let val_idx = ds.indices("internal", None);
    if train_idx.is_empty() || val_idx.is_empty() {
        return Err("the cohort needs train and internal splits".into());
    }
    let pos = train_idx
        .iter()
        .filter(|&&i| ds.patients[i].label)
        .count()
        .max(1);
    let pos_weight = (train_idx.len() - pos) as f64 / pos as f64;
    let val_labels: Vec<bool> = val_idx.iter().map(|&i| ds.patients[i].label).collect();
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )
    .map_err(err)?;
    let steps_per_epoch = train_idx.len().div_ceil(cfg.batch_size.max(1));
    let total = steps_per_epoch * cfg.epochs.max(1);
    let warmup = steps_per_epoch * cfg.warmup_epochs;
    let mut rng = Rng::new(Rng::derive(seed, "train", 0));
    let mut log = Vec::new();
    let (mut best_auc, mut best_epoch, mut since) = (f64::NEG_INFINITY, 0, 0);
    let mut step = 0usize;
    let mut seen = 0usize;
    let started = Instant::now();
    let n_dosio = cfg.net.n_dosiomics;
    // Predicted-ROI features: a working copy of the dataset whose feature
    // rows follow the segmentation branch.
    let mut work = (n_dosio > 0
        && cfg.variant.segmentation()
        && cfg.fusion_features == FusionFeatures::Predicted)
        .then(|| ds.clone());
    let measured: Vec<usize> = train_idx.iter().chain(&val_idx).copied().collect();
    let (mut threshold, mut best_threshold): (Option<f64>, Option<f64>) = (None, None);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut order = train_idx.clone();
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut total_loss = 0.0;
        for (b_i, chunk) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            let lr = if step < warmup {
                cfg.learning_rate * (step + 1) as f64 / warmup as f64
            } else {
                let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                cfg.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            };
            opt.set_learning_rate(lr);
            let cur = work.as_ref().unwrap_or(ds);
            let b = batch(
                cur,
                chunk,
                dev,
                Some((&mut rng, &cfg)),
                n_dosio,
                net_cfg.prescription_scale,
            )
            .map_err(err)?;
            let e = net.encode(&b.x).map_err(err)?;
            let logits = net.head(&e, b.side.as_ref()).map_err(err)?;
            let mut l = loss::bce_with_logits(&logits, &b.y, pos_weight).map_err(err)?;
            if cfg.variant.segmentation() {
                let [d, h, w] = ds.input.size;
                let s = net.segment(&e, (d, h, w)).map_err(err)?;
                let ls = loss::dice_bce(&s, &b.seg).map_err(err)?;
                l = (l + (ls * cfg.lambda_seg).map_err(err)?).map_err(err)?;
            }
            if cfg.variant.contrastive() {
                let z = net.project(&e).map_err(err)?;
                let lc = loss::supcon(&z, &b.labels, cfg.temperature).map_err(err)?;
                l = (l + (lc * cfg.lambda_con).map_err(err)?).map_err(err)?;
            }
            opt.backward_step(&l).map_err(err)?;
            let lv = l
                .to_dtype(DType::F64)
                .and_then(|t| t.to_scalar::<f64>())
                .map_err(err)?;
            total_loss += lv * chunk.len() as f64;
            seen += chunk.len();
            step += 1;
            eprint!(
                "\repoch {epoch}/{} [{:>3}/{steps_per_epoch}] loss {lv:.4}   ",
                cfg.epochs,
                b_i + 1
            );
        }
        if let Some(w) = work.as_mut() {
            let t = Instant::now();
            let r = refresh_predicted(&net, w, &measured, train_idx.len(), dev, source)?;
            let small = match source.min_roi_cc {
                Some(min) if min > 0.0 => {
                    format!(", {} under {min} cc read in the target ROI", r.small)
                }
                _ => String::new(),
            };
            eprintln!(
                "\rfeatures re-measured in the predicted ROI of {} patients (threshold {}, {} empty{small}) in {:.0} s",
                measured.len(),
                r.threshold,
                r.empty,
                t.elapsed().as_secs_f64()
            );
            threshold = Some(r.threshold);
        }
        let (logits, seg) = predict_logits(
            &net,
            work.as_ref().unwrap_or(ds),
            &val_idx,
            dev,
            cfg.variant.fusion(),
            cfg.variant.segmentation(),
        )
        .map_err(err)?;
        if epoch == 1
            && check_collapse
            && cfg.variant.segmentation()
            && steps_per_epoch >= COLLAPSE_CHECK_MIN_STEPS
        {
            let v = ds.input.voxels();
            let targets: Vec<u8> = val_idx
                .iter()
                .flat_map(|&i| ds.targets[i * v..(i + 1) * v].iter().copied())
                .collect();
            if roi_collapsed(&targets, &seg, v) {
                return Ok(None);
            }
        }
        let val_auc = auc(&logits, &val_labels);
        let validation_dice = cfg
            .variant
            .segmentation()
            .then(|| crop_dice(ds, &val_idx, &seg, 0.5));
        let rec = EpochLog {
            epoch,
            loss: total_loss / train_idx.len() as f64,
            validation_auc: val_auc,
            validation_dice,
            seconds: t0.elapsed().as_secs_f64(),
        };
        eprintln!(
            "\repoch {epoch}/{}: loss {:.4}, internal validation AUC {:.3}{} ({:.0} s){}",
            cfg.epochs,
            rec.loss,
            val_auc,
            validation_dice
                .map(|d| format!(", ROI Dice {d:.3}"))
                .unwrap_or_default(),
            rec.seconds,
            if val_auc > best_auc { "  best" } else { "" }
        );
        log.push(rec);
        if val_auc > best_auc {
            best_auc = val_auc;
            best_epoch = epoch;
            best_threshold = threshold;
            since = 0;
            varmap.save(checkpoint).map_err(err)?;
        } else {
            since += 1;
            if since >= cfg.patience {
                eprintln!(
                    "early stop: no better validation AUC for {} epochs",
                    cfg.patience
                );
                break;
            }
        }
    }
    let mut varmap = varmap;
    varmap.load(checkpoint).map_err(err)?;
    Ok(Some(Trained {
        varmap,
        net,
        log,
        best_epoch,
        best_validation_auc: best_auc,
        samples_per_second: seen as f64 / started.elapsed().as_secs_f64(),
        roi_threshold: best_threshold,
        init_seed: seed,
        restarts: 0,
    }))
}

/// The network with deterministic initial weights: every parameter is
/// drawn from a generator seeded by the seed and its name, so the same seed
/// gives the same start on any device and thread count.
pub fn build(net_cfg: &NetConfig, seed: u64, dev: &Device) -> Result<(VarMap, Dgd), String> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let net = Dgd::new(net_cfg, vb).map_err(|e| e.to_string())?;
    init_weights(&varmap, seed, dev)?;
    Ok((varmap, net))
}

/// Uniform ±√(3 / fan-in) (unit variance for unit inputs) for weights.
fn init_weights(varmap: &VarMap, seed: u64, dev: &Device) -> Result<(), String> {
    let data = varmap.data().lock().map_err(|_| "weights lock")?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let bound = (3.0 / fan_in.max(1) as f64).sqrt();
            let mut rng = Rng::new(Rng::derive(seed, name, 0));
            (0..n).map(|_| rng.range(-bound, bound) as f32).collect()
        } else if name == "decoder.out.bias" {
            // The segmentation logit starts at the prior of a small region
            // (as for rare-class detection heads), not at p = ½ everywhere.
            vec![super::net::SEG_PRIOR_LOGIT as f32; n]
        } else if name.ends_with(".weight") {
            // Norm scales start at 1.
            vec![1.0; n]
        } else {
            // Biases and norm shifts start at 0 (candle draws conv and
            // linear biases from its unseeded generator).
            vec![0.0; n]
        };
        let t = Tensor::from_vec(values, dims.as_slice(), dev).map_err(|e| e.to_string())?;
        var.set(&t).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two patients of four voxels: the first has a target at voxel 1, the
    /// second none.
    const TARGETS: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

    #[test]
    fn a_branch_at_its_prior_has_collapsed() {
        let prior = crate::model::net::SEG_PRIOR_LOGIT as f32;
        assert!(roi_collapsed(&TARGETS, &[prior; 8], 4));
        // Outputs above the cut but only off the target: still nothing found.
        let mut off = [prior; 8];
        off[0] = 2.0;
        off[5] = 2.0;
        assert!(roi_collapsed(&TARGETS, &off, 4));
    }

    #[test]
    fn one_target_voxel_above_the_lowest_threshold_is_enough() {
        let prior = crate::model::net::SEG_PRIOR_LOGIT as f32;
        let mut l = [prior; 8];
        // Just above the lowest threshold's logit, on the target.
        l[1] = data::roi_cut(ROI_THRESHOLDS[0]) + 0.01;
        assert!(!roi_collapsed(&TARGETS, &l, 4));
        l[1] = data::roi_cut(ROI_THRESHOLDS[0]) - 0.01;
        assert!(roi_collapsed(&TARGETS, &l, 4));
    }

    #[test]
    fn without_targets_nothing_can_collapse() {
        assert!(!roi_collapsed(&[0; 8], &[-20.0; 8], 4));
        assert!(!roi_collapsed(&[], &[], 4));
    }
}
