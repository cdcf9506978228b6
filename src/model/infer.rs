//! A trained model on disk (`model.safetensors` + `card.json`) and scoring
//! one study with it: crop, forward, learned ROI back on the dose grid,
//! dosiomic features in that ROI, fused risk.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{self, InputConfig};
use super::net::{Dgd, Encoded, NetConfig};
use super::train::{self, EpochLog, TrainConfig, Variant};
use crate::dosiomics::roi::NotScorable;
use crate::dosiomics::search::DosiomicsModelFile;
use crate::rt::study::Study;

pub const CARD_FORMAT: &str = "esorisk-dgd";
pub const CARD_VERSION: u32 = 1;

/// The model card: what the model is, how it was trained, on what, how
/// well it did, and what it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: String,
    pub version: u32,
    pub name: String,
    pub created_by: String,
    pub architecture: String,
    pub variant: Variant,
    pub net: NetConfig,
    pub input: InputConfig,
    pub train: TrainConfig,
    pub parameters: usize,
    /// The dosiomics model whose ROI the segmentation learns and whose
    /// features the head fuses (a copy, so the card is self-contained).
    pub dosiomics: DosiomicsModelFile,
    pub data: TrainingData,
    pub epochs: Vec<EpochLog>,
    pub best_epoch: usize,
    pub best_validation_auc: f64,
    pub training_samples_per_second: f64,
    pub intended_use: String,
    /// Where the fused dosiomic features are measured when scoring.
    #[serde(default)]
    pub fusion_roi: FusionRoi,
    /// Recalibration of the risk (`esorisk calibrate`), when fitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Probability above which a voxel belongs to the learned ROI
    /// (`esorisk calibrate` fits it; 0.5 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roi_threshold: Option<f64>,
    /// Smallest learned ROI (cc, on the feature grid) the fused features
    /// are measured in. Below it, or where the learned ROI is empty, they
    /// are measured in the rule-defined ROI instead, the region the
    /// learned one stands for. Absent: always in the learned ROI.
    ///
    /// Why: a region of a few voxels has shape and texture features that
    /// jump with every small change of the dose (one seed's risk for a
    /// patient with a one-voxel ROI fell from 23 % to 1 % when the dose
    /// rose 2 %; docs/RESULTS.md, "The revised card").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_fusion_roi_cc: Option<f64>,
    /// A seed ensemble (`esorisk ensemble`): the model directories, relative
    /// to this card's, whose networks score together. Each member scores as
    /// it would alone (its own learned ROI, at its own threshold, feeds its
    /// own head) and the risk is σ of the mean of their logits; the returned
    /// ROI is the mean of their segmentation logits at `roi_threshold`.
    /// Empty for a single model, whose weights are `model.safetensors`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Training runs abandoned because the segmentation branch collapsed
    /// in their first epoch (`train::roi_collapsed`); 0 for most models.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: usize,
    /// After such a restart, the seed the weights were initialised from
    /// (derived from `train.seed`); absent when it is `train.seed` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Platt scaling of the risk: σ(a·z + b), z the prior-corrected log-odds
/// the network gives, fitted by `esorisk calibrate` on held-out patients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub a: f64,
    pub b: f64,
    /// Which patients it was fitted on (cohort, split, patients, events).
    pub fitted_on: String,
}

/// Where the fusion head's dosiomic features are measured at inference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionRoi {
    /// In the ROI the segmentation branch predicts (the paper's design).
    #[default]
    Predicted,
    /// In the optimal ROI as its rule defines it (the region the features
    /// were measured in during training); for models whose segmentation is
    /// not good enough to stand in for it.
    Rule,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingData {
    pub cohort: String,
    pub cohort_generator: String,
    pub cohort_seed: Option<u64>,
    pub train_patients: usize,
    pub train_events: usize,
    pub validation_patients: usize,
    pub excluded: usize,
}

pub const INTENDED_USE: &str = "Research only; not a medical device. Trained and evaluated on \
    synthetic phantom-hospital data generated by `esorisk synth`, not on patients. The risk it \
    gives is the output of a model of synthetic data, not a clinical prediction.";

/// A loaded model, ready to score.
pub struct RiskModel {
    pub card: ModelCard,
    pub dir: PathBuf,
    /// Name and a hash of the weights: what "the same model" means.
    pub version: String,
    /// One network, or the members of an ensemble.
    members: Vec<Member>,
    device: Device,
}

/// One network of a model.
struct Member {
    net: Dgd,
    /// An ensemble member's own learned-ROI threshold (its head was trained
    /// on the features measured there); `None` for a single model, which
    /// uses the card's.
    roi_threshold: Option<f64>,
}

/// The result of scoring one study.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Probability of grade ≥ 2 esophagitis (model of synthetic data).
    pub risk: f64,
    /// The learned ROI on the plan's own dose grid (`prepared_grid`), where
    /// it goes back to the planning system (its features are measured on
    /// the dosiomics model's feature grid).
    #[serde(skip)]
    pub roi: Vec<bool>,
    #[serde(skip)]
    pub prepared_grid: crate::rt::grid::Grid,
    pub roi_voxels: usize,
    pub roi_volume_cc: f64,
    /// Mean physical dose in the learned ROI (Gy).
    pub roi_mean_gy: Option<f64>,
    /// Extent of the learned ROI (patient z, mm), cranial and caudal end.
    pub roi_z_mm: Option<(f64, f64)>,
    /// The fused dosiomic features, raw values in the learned ROI.
    pub dosiomics: Vec<(String, Option<f64>)>,
    /// Where the fusion head read its features (for an ensemble, where
    /// the first member read them).
    pub fusion_roi: FusionRoi,
    /// What the reader of this risk should know about the model on this
    /// study (carried beside the study's own notes).
    pub notes: Vec<String>,
}

/// Dose per fraction (Gy) above which a schedule is hypofractionated for
/// [`schedule_note`].
pub const HYPOFRACTIONATED_GY: f64 = 3.0;

/// The shipped models' risk falls where it should rise for hypofractionated
/// schedules (docs/RESULTS.md, "Stability"): in the cohorts they were
/// trained on, such schedules came only as peripheral SBRT plans. Said on
/// every such study, whatever the risk.
pub fn schedule_note(prescription_gy: Option<f64>, fractions: Option<u32>) -> Option<String> {
    let (rx, n) = (prescription_gy?, fractions?);
    let per_fraction = rx / f64::from(n.max(1));
    (per_fraction > HYPOFRACTIONATED_GY).then(|| {
        format!(
            "the plan gives {per_fraction:.1} Gy per fraction ({rx:.1} Gy in {n}): for \
             hypofractionated schedules the model's risk does not rise with the EQD2 as it \
             should (it saw them only in peripheral SBRT plans), so read the DVH metrics, \
             not the risk"
        )
    })
}

pub(crate) fn read_card(dir: &Path) -> Result<ModelCard, String> {
    let card_path = dir.join("card.json");
    let text =
        std::fs::read_to_string(&card_path).map_err(|e| format!("{}: {e}", card_path.display()))?;
    parse_card(&text, &card_path.display().to_string())
}

/// A card's text (`origin` names it in errors), checked for its format.
fn parse_card(text: &str, origin: &str) -> Result<ModelCard, String> {
    let card: ModelCard = serde_json::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    if card.format != CARD_FORMAT || card.version != CARD_VERSION {
        return Err(format!(
            "{origin}: format {} v{} (this esorisk reads {CARD_FORMAT} v{CARD_VERSION})",
            card.format, card.version
        ));
    }
    Ok(card)
}

/// The default `model.path`. It is relative to the working directory, so
/// the shipped model it names is also built into the binary: a node or
/// `predict` started elsewhere (an installed binary, a service without
/// the repository) still scores, with the same version.
pub const BUILTIN_PATH: &str = "models/dgd-v2";
const BUILTIN_CARD: &str = include_str!("../../models/dgd-v2/card.json");
const BUILTIN_WEIGHTS: &[u8] = include_bytes!("../../models/dgd-v2/model.safetensors");

/// The weights of a safetensors file's bytes into `varmap`'s variables.
fn load_weights(varmap: &candle_nn::VarMap, bytes: &[u8], device: &Device) -> Result<(), String> {
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| e.to_string())?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| "the model's variables are poisoned".to_string())?;
    for (name, var) in vars.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| format!("no tensor {name} in the weights"))?;
        var.set(t).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// "name hash": the card's name and a hash of the weights (`h`, fed with
/// them) and of what else changes the risks.
fn version(card: &ModelCard, mut h: crate::hash::Fnv) -> String {
    // A recalibration changes the risks: it is part of the version.
    if let Some(c) = &card.calibration {
        h.update(format!("{:e} {:e}", c.a, c.b).as_bytes());
    }
    if let Some(t) = card.roi_threshold {
        h.update(format!("roi {t:e}").as_bytes());
    }
    // So does the smallest learned ROI the head reads its features in.
    if let Some(m) = card.min_fusion_roi_cc {
        h.update(format!("min roi {m:e}").as_bytes());
    }
    // So does the voxel size the features are measured on.
    if let Some(r) = card.dosiomics.resample_mm {
        h.update(format!("resample {r:e}").as_bytes());
    }
    format!("{} {:012x}", card.name, h.finish() >> 16)
}

/// Why `member` cannot score beside `first` in one ensemble, if it cannot:
/// the members must read the same input the same way and be trained on the
/// same patients (the prior correction is shared).
pub(crate) fn incompatible(first: &ModelCard, member: &ModelCard) -> Option<&'static str> {
    if !member.members.is_empty() {
        Some("it is an ensemble itself")
    } else if first.variant != member.variant {
        Some("the variant differs")
    } else if first.net != member.net {
        Some("the network differs")
    } else if first.input != member.input {
        Some("the input differs")
    } else if first.fusion_roi != member.fusion_roi {
        Some("the fused features are measured in another ROI")
    } else if first.dosiomics != member.dosiomics {
        Some("the dosiomics model differs")
    } else if first.data.train_patients != member.data.train_patients
        || first.data.train_events != member.data.train_events
    {
        Some("the training patients differ")
    } else {
        None
    }
}

impl RiskModel {
    /// The model in `dir`; for the default path when it is not there, the
    /// copy built into the binary.
    pub fn load_or_builtin(dir: &Path, device: &Device) -> Result<RiskModel, String> {
        if dir == Path::new(BUILTIN_PATH) && !dir.exists() {
            tracing::info!(
                "{BUILTIN_PATH} is not in the working directory; using the copy of it built into esorisk"
            );
            return Self::builtin(device);
        }
        Self::load(dir, device)
    }

    /// The shipped model as built into the binary.
    pub fn builtin(device: &Device) -> Result<RiskModel, String> {
        let card = parse_card(BUILTIN_CARD, "the built-in model's card")?;
        if !card.members.is_empty() {
            return Err("the built-in model is an ensemble, whose members are not built in".into());
        }
        let (varmap, net) = train::build(&card.net, 0, device)?;
        load_weights(&varmap, BUILTIN_WEIGHTS, device)
            .map_err(|e| format!("the built-in model: {e}"))?;
        let mut h = crate::hash::Fnv::default();
        h.update(BUILTIN_WEIGHTS);
        Ok(RiskModel {
            version: version(&card, h),
            card,
            dir: PathBuf::from(BUILTIN_PATH),
            members: vec![Member {
                net,
                roi_threshold: None,
            }],
            device: device.clone(),
        })
    }

    pub fn load(dir: &Path, device: &Device) -> Result<RiskModel, String> {
        let card = read_card(dir)?;
        // (weights, the member's own ROI threshold)
        let mut weights: Vec<(PathBuf, Option<f64>)> = Vec::new();
        if card.members.is_empty() {
            weights.push((dir.join("model.safetensors"), None));
        }
        for m in &card.members {
            let mdir = dir.join(m);
            let mcard = read_card(&mdir)?;
            if let Some(why) = incompatible(&card, &mcard) {
                return Err(format!(
                    "{}: ensemble member {m} does not fit: {why}",
                    dir.display()
                ));
            }
            weights.push((mdir.join("model.safetensors"), mcard.roi_threshold));
        }
        let mut h = crate::hash::Fnv::default();
        let mut members = Vec::new();
        for (w, roi_threshold) in weights {
            let (varmap, net) = train::build(&card.net, 0, device)?;
            // Read once: loaded, and hashed for the version.
            let bytes = std::fs::read(&w).map_err(|e| format!("{}: {e}", w.display()))?;
            load_weights(&varmap, &bytes, device).map_err(|e| format!("{}: {e}", w.display()))?;
            h.update(&bytes);
            members.push(Member { net, roi_threshold });
        }
        Ok(RiskModel {
            version: version(&card, h),
            card,
            dir: dir.to_path_buf(),
            members,
            device: device.clone(),
        })
    }

    /// Whether this is a seed ensemble of several networks.
    pub fn is_ensemble(&self) -> bool {
        self.members.len() > 1
    }

    /// The classifier trains on a class-weighted loss (positives weighted by
    /// negatives / positives), which moves its logits up by the log of that
    /// weight; subtracting it restores probabilities on the training
    /// prevalence (the prior correction for a weighted likelihood).
    pub fn prior_shift(&self) -> f64 {
        let d = &self.card.data;
        if d.train_events == 0 || d.train_events >= d.train_patients {
            return 0.0;
        }
        ((d.train_patients - d.train_events) as f64 / d.train_events as f64).ln()
    }

    /// Whether the fusion head reads its features in the learned ROI (so
    /// the ROI's threshold is part of what the head was trained on).
    pub fn reads_learned_roi(&self) -> bool {
        self.card.variant.fusion()
            && self.card.variant.segmentation()
            && self.card.fusion_roi == FusionRoi::Predicted
    }

    /// The segmentation branch's logit threshold for the learned ROI.
    fn roi_logit(&self) -> f32 {
        data::roi_cut(self.card.roi_threshold.unwrap_or(0.5))
    }

    /// The logit threshold of one member's own learned ROI (the ROI its head
    /// reads): the card's for a single model.
    fn member_roi_logit(&self, m: &Member) -> f32 {
        m.roi_threshold
            .map(data::roi_cut)
            .unwrap_or_else(|| self.roi_logit())
    }

    /// Dice of the learned ROI against the optimal ROI's rule (the target
    /// the branch was trained on) at each probability threshold; `None`
    /// where the target is empty or the model has no segmentation branch.
    pub fn roi_dice_by_threshold(
        &self,
        study: &Study,
        thresholds: &[f64],
    ) -> Result<Option<Vec<f64>>, NotScorable> {
        if !self.card.variant.segmentation() {
            return Ok(None);
        }
        let cfg = &self.card.input;
        let p = data::prepare(study, cfg, self.card.dosiomics.resample_mm)?;
        let target = p.optimal_roi(&self.card.dosiomics);
        if !target.iter().any(|&m| m) {
            return Ok(None);
        }
        let logits = self.segment(&self.encode(&p)?)?;
        let support = p.roi_support(&self.card.dosiomics);
        Ok(Some(
            thresholds
                .iter()
                .map(|&t| {
                    let roi = p.roi_from_logits(&logits, data::roi_cut(t), &support);
                    crate::dosiomics::roi::dice(&roi, &target)
                })
                .collect(),
        ))
    }

    /// Every member's encoder on a prepared study's input.
    fn encode(&self, p: &data::Prepared) -> Result<Vec<Encoded>, NotScorable> {
        let cfg = &self.card.input;
        let [d, h, w] = cfg.size;
        let x = Tensor::from_vec(p.input(cfg), (1, cfg.channels(), d, h, w), &self.device)
            .map_err(model_failed)?;
        self.members
            .iter()
            .map(|m| m.net.encode(&x).map_err(model_failed))
            .collect()
    }

    /// One member's segmentation logits on the crop.
    fn member_segment(&self, m: &Member, e: &Encoded) -> Result<Vec<f32>, NotScorable> {
        let [d, h, w] = self.card.input.size;
        m.net
            .segment(e, (d, h, w))
            .and_then(|s| s.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(model_failed)
    }

    /// The segmentation logits on the crop, averaged over the members.
    fn segment(&self, es: &[Encoded]) -> Result<Vec<f32>, NotScorable> {
        let each = self
            .members
            .iter()
            .zip(es)
            .map(|(m, e)| self.member_segment(m, e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(mean_logits(&each))
    }

    /// Score a study: every failure is a reason a physicist can act on.
    pub fn score(&self, study: &Study) -> Result<Score, NotScorable> {
        let p = data::prepare(study, &self.card.input, self.card.dosiomics.resample_mm)?;
        let es = self.encode(&p)?;
        let model = &self.card.dosiomics;
        let seg = self.card.variant.segmentation();
        // Where the learned ROI can lie: on the plan's grid (returned) and
        // on the feature grid (measured).
        let support = seg.then(|| (p.roi_support(model), p.feature_roi_support(model)));
        let rule = std::cell::OnceCell::new();
        let rule_roi = || rule.get_or_init(|| p.feature_optimal_roi(model)).clone();
        let mut measured: Vec<(Vec<bool>, Vec<Option<f64>>)> = Vec::new();
        let mut measure = |roi: &Vec<bool>| {
            if let Some((_, row)) = measured.iter().find(|(r, _)| r == roi) {
                return row.clone();
            }
            let row = model.measure(p.features(), roi);
            measured.push((roi.clone(), row.clone()));
            row
        };
        // Each member: its learned ROI on the feature grid (the segmentation
        // branch where trained, else the dosiomics model's own definition
        // of the optimal ROI), the fused features, the logit.
        let mut member_logits = Vec::new();
        let mut seg_logits = Vec::new();
        let mut read_from = None;
        for (m, e) in self.members.iter().zip(&es) {
            let own_roi = match &support {
                Some((_, on_features)) => {
                    let l = self.member_segment(m, e)?;
                    let roi = p.feature_roi_from_logits(&l, self.member_roi_logit(m), on_features);
                    seg_logits.push(l);
                    roi
                }
                None => rule_roi(),
            };
            let mut side = if self.card.variant.fusion() {
                let read = self.fusion_region(&own_roi, p.features());
                read_from.get_or_insert(read);
                let row = match read {
                    FusionRoi::Predicted => measure(&own_roi),
                    FusionRoi::Rule => measure(&rule_roi()),
                };
                data::Prepared::dosiomics(&row, model)
            } else {
                Vec::new()
            };
            if self.card.net.prescription_scale {
                side.push(data::prescription_scale(p.norm_gy));
            }
            let n_side = side.len();
            let side = (n_side > 0)
                .then(|| Tensor::from_vec(side, (1, n_side), &self.device))
                .transpose()
                .map_err(model_failed)?;
            let logit = m
                .net
                .head(e, side.as_ref())
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(model_failed)?;
            member_logits.push(logit.first().copied().unwrap_or(0.0));
        }
        // The returned ROI: the members' mean segmentation logits at the
        // card's threshold (for a single model, its own learned ROI), on
        // the plan's own grid for the planning system and on the feature
        // grid for the features reported with it.
        let (roi, roi_features) = match &support {
            Some((on_plan, on_features)) => {
                let mean = mean_logits(&seg_logits);
                (
                    p.roi_from_logits(&mean, self.roi_logit(), on_plan),
                    p.feature_roi_from_logits(&mean, self.roi_logit(), on_features),
                )
            }
            None => (p.optimal_roi(model), rule_roi()),
        };
        let learned = measure(&roi_features);
        let z = member_logits.iter().sum::<f64>() / member_logits.len().max(1) as f64
            - self.prior_shift();
        let z = match &self.card.calibration {
            Some(c) => c.a * z + c.b,
            None => z,
        };
        let risk = 1.0 / (1.0 + (-z).exp());
        let g = &p.patient.grid;
        let voxels = roi.iter().filter(|&&m| m).count();
        let vcc = p.patient.spacing.iter().product::<f64>() / 1000.0;
        let (mut sum, mut zlo, mut zhi) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
        let plane = g.nx * g.ny;
        for (i, _) in roi.iter().enumerate().filter(|(_, &m)| m) {
            sum += f64::from(p.patient.physical[i]);
            let z = g.z[i / plane];
            zlo = zlo.min(z);
            zhi = zhi.max(z);
        }
        let raw = model.selected(&learned);
        let mut notes: Vec<String> = schedule_note(
            study.plan.as_ref().and_then(|p| p.prescription_gy),
            p.patient.fractions,
        )
        .into_iter()
        .collect();
        if let (Some(FusionRoi::Rule), FusionRoi::Predicted, Some(min)) =
            (read_from, self.card.fusion_roi, self.card.min_fusion_roi_cc)
        {
            notes.push(small_roi_note(
                data::roi_cc(&roi_features, p.features()),
                min,
                &model.roi_description,
                data::roi_cc(&rule_roi(), p.features()),
            ));
        }
        Ok(Score {
            risk,
            roi_voxels: voxels,
            roi_volume_cc: voxels as f64 * vcc,
            roi_mean_gy: (voxels > 0).then(|| sum / voxels as f64),
            roi_z_mm: (voxels > 0).then_some((zhi, zlo)),
            dosiomics: raw,
            fusion_roi: read_from.unwrap_or(self.card.fusion_roi),
            prepared_grid: g.clone(),
            roi,
            notes,
        })
    }

    /// Where one member's head reads its features, given its learned ROI
    /// on the feature grid: the card's choice, except that a learned ROI
    /// under `min_fusion_roi_cc` gives way to the rule-defined one.
    fn fusion_region(
        &self,
        learned: &[bool],
        on: &crate::dosiomics::roi::PatientDose,
    ) -> FusionRoi {
        match self.card.fusion_roi {
            FusionRoi::Predicted if data::too_small(learned, on, self.card.min_fusion_roi_cc) => {
                FusionRoi::Rule
            }
            r => r,
        }
    }
}

/// Said when the head read its features in the rule-defined ROI because
/// the learned one was too small (`ModelCard::min_fusion_roi_cc`), and
/// what that region held (cc).
pub fn small_roi_note(learned_cc: f64, min_cc: f64, rule: &str, rule_cc: f64) -> String {
    let learned = if learned_cc > 0.0 {
        format!(
            "The learned ROI ({learned_cc:.1} cc) is smaller than the {min_cc:.1} cc its shape and \
             texture features need"
        )
    } else {
        "The learned ROI is empty".to_string()
    };
    if rule_cc > 0.0 {
        format!(
            "{learned}; the risk reads its dosiomic features in the rule-defined ROI ({rule}, \
             {rule_cc:.1} cc) instead."
        )
    } else {
        format!(
            "{learned}, and the rule-defined ROI ({rule}) is empty: the dosiomic features take \
             the training medians, and the risk rests on the dose distribution alone."
        )
    }
}

/// The voxel-wise mean of the members' segmentation logits (a single
/// model's own).
fn mean_logits(each: &[Vec<f32>]) -> Vec<f32> {
    let n = each.len().max(1) as f32;
    let mut mean = vec![0f32; each.first().map_or(0, Vec::len)];
    for l in each {
        for (a, b) in mean.iter_mut().zip(l) {
            *a += b / n;
        }
    }
    mean
}

fn model_failed(e: candle_core::Error) -> NotScorable {
    NotScorable(format!("model evaluation failed: {e}"))
}

/// The card for a freshly trained model.
pub fn card(
    cfg: &TrainConfig,
    t: &train::Trained,
    ds: &super::dataset::Dataset,
    dosio: &DosiomicsModelFile,
    cohort: &Path,
    dir: &Path,
) -> Result<ModelCard, String> {
    let (generator, cohort_seed) = crate::dosiomics::search::cohort_origin(cohort);
    let train_idx = ds.indices("train", None);
    let parameters = t
        .varmap
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().elem_count())
        .sum();
    let mut net = cfg.net.clone();
    net.in_channels = cfg.input.channels();
    net.n_dosiomics = if cfg.variant.fusion() {
        ds.n_dosiomics
    } else {
        0
    };
    Ok(ModelCard {
        format: CARD_FORMAT.into(),
        version: CARD_VERSION,
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        created_by: format!("esorisk {}", env!("CARGO_PKG_VERSION")),
        architecture: format!(
            "3D ResNet34 (BasicBlocks {:?}, width {}, GroupNorm) on {} input channel(s) of {:?} voxels at {:?} mm; {}{}",
            net.blocks,
            net.width,
            net.in_channels,
            cfg.input.size,
            cfg.input.spacing_mm,
            match cfg.variant {
                Variant::Dl => "classifier head only",
                Variant::DlSeg => "with the segmentation decoder",
                Variant::DlSegCon => "with the segmentation decoder and contrastive projection",
                Variant::Dgd => "with segmentation, contrastive projection and dosiomics fusion",
            },
            if net.prescription_scale {
                "; the head also reads ln(prescription / 60 Gy)"
            } else {
                ""
            }
        ),
        variant: cfg.variant,
        net,
        input: cfg.input.clone(),
        train: cfg.clone(),
        parameters,
        dosiomics: dosio.clone(),
        data: TrainingData {
            cohort: cohort.display().to_string(),
            cohort_generator: generator,
            cohort_seed,
            train_patients: train_idx.len(),
            train_events: train_idx.iter().filter(|&&i| ds.patients[i].label).count(),
            validation_patients: ds.indices("internal", None).len(),
            excluded: ds.excluded.len(),
        },
        epochs: t.log.clone(),
        best_epoch: t.best_epoch,
        best_validation_auc: t.best_validation_auc,
        training_samples_per_second: t.samples_per_second,
        intended_use: INTENDED_USE.into(),
        // Inference measures the fused features where training did.
        fusion_roi: match cfg.fusion_features {
            train::FusionFeatures::Target => FusionRoi::Rule,
            train::FusionFeatures::Predicted => FusionRoi::Predicted,
        },
        calibration: None,
        roi_threshold: t.roi_threshold,
        min_fusion_roi_cc: cfg
            .min_fusion_roi_cc
            .filter(|&m| m > 0.0 && cfg.fusion_features == train::FusionFeatures::Predicted),
        members: Vec::new(),
        restarts: t.restarts,
        init_seed: (t.restarts > 0).then_some(t.init_seed),
    })
}

/// `esorisk predict` as text.
pub fn text(m: &RiskModel, study: &Study, s: &Score) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "study {} (patient {})\nmodel {} ({})\n\n",
        study.study_instance_uid.as_deref().unwrap_or("-"),
        study.patient_id.as_deref().unwrap_or("-"),
        m.card.name,
        m.card.variant.label()
    ));
    o.push_str(&format!(
        "risk of grade >= 2 esophagitis: {:.1}%\n",
        100.0 * s.risk
    ));
    o.push_str(&format!(
        "learned ROI: {} voxels, {:.1} cc",
        s.roi_voxels, s.roi_volume_cc
    ));
    if let (Some(d), Some((top, bottom))) = (s.roi_mean_gy, s.roi_z_mm) {
        o.push_str(&format!(
            ", mean dose {d:.1} Gy, z from {top:.1} to {bottom:.1} mm"
        ));
    }
    o.push('\n');
    for (n, v) in &s.dosiomics {
        o.push_str(&format!(
            "  {n}: {}\n",
            v.map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "missing".into())
        ));
    }
    o.push_str("\nResearch result from a model trained on synthetic data; not for clinical use.\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypofractionated_schedules_are_noted() {
        assert!(schedule_note(Some(60.0), Some(30)).is_none());
        assert!(schedule_note(Some(45.0), Some(15)).is_none());
        assert!(schedule_note(Some(60.0), None).is_none());
        let n = schedule_note(Some(55.0), Some(5)).expect("SBRT");
        assert!(n.starts_with("the plan gives 11.0 Gy per fraction (55.0 Gy in 5)"));
        assert!(schedule_note(Some(60.0), Some(15)).is_some());
    }

    #[test]
    fn the_small_roi_note_says_where_the_features_came_from() {
        let rule = "esophagus voxels within 10 mm of the PTV";
        let n = small_roi_note(0.4, 3.0, rule, 12.5);
        assert!(
            n.starts_with("The learned ROI (0.4 cc) is smaller than the 3.0 cc"),
            "{n}"
        );
        assert!(n.contains("in the rule-defined ROI (esophagus voxels within 10 mm of the PTV, 12.5 cc) instead"), "{n}");
        let n = small_roi_note(0.0, 3.0, rule, 12.5);
        assert!(
            n.starts_with("The learned ROI is empty; the risk reads"),
            "{n}"
        );
        let n = small_roi_note(0.4, 3.0, rule, 0.0);
        assert!(
            n.contains("is empty: the dosiomic features take the training medians"),
            "{n}"
        );
        assert!(!n.contains("instead"), "{n}");
    }
}
