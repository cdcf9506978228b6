//! The search for the optimal ROI: dosiomic features of every candidate
//! region for every patient of a synthetic cohort, a dosiomics-only model
//! per region ranked by repeated stratified cross-validation on the
//! training split, and the winner fitted on the whole training split and
//! saved for the model and the node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::{self, FitOptions, LogisticModel};
use super::roi::{self, DoseKind, PatientDose, CANDIDATES};
use super::{extract, feature_names, Discretisation};
use crate::metrics::{auc, auc_ci, stratified_folds, AucCi};
use crate::rt::dose::DoseOptions;

/// Settings of feature extraction and of the search.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub bin_width_gy: f64,
    pub dose: DoseKind,
    pub alpha_beta: f64,
    /// Isotropic voxel size (mm) the dose is interpolated to before the
    /// features; `None`: the dose grid as it is.
    pub resample_mm: Option<f64>,
    /// Repeats × folds of the outer cross-validation.
    pub repeats: usize,
    pub folds: usize,
    pub bootstrap: usize,
    pub seed: u64,
    pub threads: usize,
    pub lambda_rule: model::LambdaRule,
    /// The stability screen: every training patient's features are also
    /// measured with the dose scaled by 1 − `stability_scale` and
    /// 1 + `stability_scale`; 0 turns the screen off.
    pub stability_scale: f64,
    /// A feature whose [`instability`] exceeds this is not offered to the
    /// LASSO. A risk should follow the dose smoothly; features such as the
    /// histogram's steepest-fall bin (an arg-min) jump between distant
    /// values when the dose moves by 1 %, and a model fusing them gives
    /// risks that fall as the dose rises.
    pub max_instability: f64,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            bin_width_gy: 1.0,
            dose: DoseKind::Physical,
            alpha_beta: 10.0,
            resample_mm: None,
            repeats: 5,
            folds: 5,
            bootstrap: 1000,
            seed: 20261126,
            lambda_rule: model::LambdaRule::Min,
            threads: crate::par::threads(),
            stability_scale: 0.02,
            max_instability: 0.05,
        }
    }
}

impl SearchOptions {
    pub fn discretisation(&self) -> Discretisation {
        Discretisation::BinWidth {
            width: self.bin_width_gy,
            lower: 0.0,
        }
    }
}

/// One patient of a cohort's `labels.csv`.
#[derive(Debug, Clone)]
pub struct Patient {
    pub patient_id: String,
    pub hospital: String,
    pub split: String,
    pub label: bool,
    pub p_dose: f64,
    pub truth_file: String,
}

/// Read `labels.csv` (columns found by header name).
pub fn read_labels(dir: &Path) -> Result<Vec<Patient>, String> {
    let path = dir.join("labels.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (is this a cohort written by `esorisk synth`?)",
            path.display()
        )
    })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("{}: no column {name:?}", path.display()))
    };
    let (id, hosp, split, label, p_dose, truth) = (
        col("patient_id")?,
        col("hospital")?,
        col("split")?,
        col("label")?,
        col("p_dose")?,
        col("truth_file")?,
    );
    let mut out = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| {
            f.get(i)
                .copied()
                .ok_or_else(|| format!("{} line {}: too few fields", path.display(), n + 2))
        };
        let patient_id = get(id)?.to_string();
        let safe = !patient_id.is_empty()
            && patient_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !patient_id.starts_with('.');
        if !safe {
            return Err(format!(
                "{}: unusable patient id {patient_id:?}",
                path.display()
            ));
        }
        out.push(Patient {
            patient_id,
            hospital: get(hosp)?.to_string(),
            split: get(split)?.to_string(),
            label: get(label)? == "1",
            p_dose: get(p_dose)?
                .parse()
                .map_err(|_| format!("{}: bad p_dose", path.display()))?,
            truth_file: get(truth)?.to_string(),
        });
    }
    Ok(out)
}

/// Features of every candidate ROI of one patient.
#[derive(Debug, Clone, Default)]
pub struct PatientFeatures {
    /// Per candidate (CANDIDATES order): the feature values, or `None` when
    /// the candidate cannot be defined for this patient.
    pub rois: Vec<Option<Vec<Option<f64>>>>,
    /// Per candidate: Dice against the saved truth mask (when the truth
    /// region is not empty).
    pub dice: Vec<Option<f64>>,
    /// Per candidate, for training patients when the stability screen is
    /// on: the features with the dose scaled by 1 − h and 1 + h (see
    /// [`SearchOptions::stability_scale`]); empty otherwise.
    pub scaled: Vec<[Option<Vec<Option<f64>>>; 2]>,
    /// Why the patient has no features at all.
    pub error: Option<String>,
}

/// Load a patient's study from `dir/<patient_id>` and compute everything;
/// `cohort` is the parsed `cohort.json` (for the truth masks), when present.
pub fn patient_features(
    dir: &Path,
    cohort: Option<&serde_json::Value>,
    p: &Patient,
    o: &SearchOptions,
) -> PatientFeatures {
    let fail = |e: String| PatientFeatures {
        rois: vec![None; CANDIDATES.len()],
        dice: vec![None; CANDIDATES.len()],
        scaled: Vec::new(),
        error: Some(e),
    };
    let study = match crate::rt::study::load(&[dir.join(&p.patient_id)], &DoseOptions::default()) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let pd = match PatientDose::from_study(&study, o.alpha_beta, o.resample_mm) {
        Ok(pd) => pd,
        Err(e) => return fail(e.to_string()),
    };
    let truth = cohort.and_then(|c| read_truth(dir, c, p, &pd.grid).ok());
    let mut out = PatientFeatures::default();
    for c in CANDIDATES {
        let mask = c.mask(&pd);
        out.dice.push(match (&mask, &truth) {
            (Some(m), Some(t)) if t.iter().any(|&v| v) => Some(roi::dice(m, t)),
            _ => None,
        });
        out.rois.push(roi_features(&pd, mask.as_deref(), o));
    }
    if o.stability_scale > 0.0 && p.split == "train" {
        let lo = pd.scaled(1.0 - o.stability_scale, o.alpha_beta);
        let hi = pd.scaled(1.0 + o.stability_scale, o.alpha_beta);
        out.scaled = CANDIDATES
            .iter()
            .map(|c| [&lo, &hi].map(|q| roi_features(q, c.mask(q).as_deref(), o)))
            .collect();
    }
    out
}

/// The features of one region, in `feature_names()` order; `None` when the
/// region is not defined.
fn roi_features(
    pd: &PatientDose,
    mask: Option<&[bool]>,
    o: &SearchOptions,
) -> Option<Vec<Option<f64>>> {
    let v = pd.volume(mask?, o.dose, 4)?;
    Some(
        extract(&v, o.discretisation())
            .into_iter()
            .map(|f| f.value)
            .collect(),
    )
}

/// How far each feature of candidate `c_idx` is from following the dose
/// smoothly: over the training patients measured at three dose scalings
/// (1 − h, 1, 1 + h), the mean of |f(1 + h) − 2 f(1) + f(1 − h)| divided by
/// the feature's SD between patients at 1. A feature that follows the dose
/// smoothly has a second difference of order h², near 0; one with a jump
/// inside the window has the jump's size. `None` where fewer than two
/// patients have all three values; 0 for a constant feature.
pub fn instability(
    c_idx: usize,
    train: &[usize],
    features: &[PatientFeatures],
    n_features: usize,
) -> Vec<Option<f64>> {
    (0..n_features)
        .map(|j| {
            let mut base = Vec::new();
            let mut second = Vec::new();
            for &i in train {
                let f = &features[i];
                let (Some(Some(r0)), Some([Some(lo), Some(hi)])) =
                    (f.rois.get(c_idx), f.scaled.get(c_idx))
                else {
                    continue;
                };
                let (Some(a), Some(b), Some(c)) = (lo[j], r0[j], hi[j]) else {
                    continue;
                };
                if a.is_finite() && b.is_finite() && c.is_finite() {
                    base.push(b);
                    second.push((c - 2.0 * b + a).abs());
                }
            }
            if base.len() < 2 {
                return None;
            }
            let n = base.len() as f64;
            let mean = base.iter().sum::<f64>() / n;
            let sd = (base.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            Some(if sd > 0.0 {
                second.iter().sum::<f64>() / n / sd
            } else {
                0.0
            })
        })
        .collect()
}

/// `row` with the features flagged in `unstable` made missing, so the
/// LASSO's missing-value rule drops them.
fn screened(row: &[Option<f64>], unstable: &[bool]) -> Vec<Option<f64>> {
    row.iter()
        .zip(unstable)
        .map(|(v, &u)| if u { None } else { *v })
        .collect()
}

/// The truth mask of a synthetic patient on `g` (a patient's feature grid
/// or dose grid).
pub fn read_truth(
    dir: &Path,
    cohort: &serde_json::Value,
    p: &Patient,
    g: &crate::rt::grid::Grid,
) -> Result<Vec<bool>, String> {
    let rec = cohort["patients"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["patient_id"] == p.patient_id.as_str()))
        .ok_or("patient not in cohort.json")?;
    let num = |v: &serde_json::Value, i: usize| v[i].as_f64().ok_or("bad cohort.json");
    let (origin, spacing, offset) = (&rec["origin_mm"], &rec["spacing_mm"], &rec["truth_offset"]);
    let (data, shape) = read_npy(&dir.join(&p.truth_file))?;
    let o = [num(origin, 0)?, num(origin, 1)?, num(origin, 2)?];
    let sp = [num(spacing, 0)?, num(spacing, 1)?, num(spacing, 2)?];
    // The truth array starts `truth_offset` ([z, y, x]) voxels into the
    // generator's dose grid.
    let off = [num(offset, 2)?, num(offset, 1)?, num(offset, 0)?];
    // Each voxel of the feature grid takes the truth voxel nearest its
    // centre, so the mask is right on the dose grid and on a resampled one.
    let index = |c: f64, a: usize, n: usize| {
        let t = ((c - o[a]) / sp[a] - off[a]).round();
        (t >= 0.0 && (t as usize) < n).then_some(t as usize)
    };
    let mut mask = vec![false; g.len()];
    for (k, &z) in g.z.iter().enumerate() {
        let Some(tk) = index(z, 2, shape[0]) else {
            continue;
        };
        for j in 0..g.ny {
            let Some(tj) = index(g.y(j), 1, shape[1]) else {
                continue;
            };
            for i in 0..g.nx {
                let Some(ti) = index(g.x(i), 0, shape[2]) else {
                    continue;
                };
                if data[(tk * shape[1] + tj) * shape[2] + ti] != 0 {
                    mask[g.index(i, j, k)] = true;
                }
            }
        }
    }
    Ok(mask)
}

/// The cohort's `cohort.json`.
pub fn read_cohort_json(dir: &Path) -> Result<serde_json::Value, String> {
    let path = dir.join("cohort.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Which generator wrote a cohort and with what seed (from its
/// `cohort.json`), for model cards: `("unknown", None)` without one.
pub fn cohort_origin(dir: &Path) -> (String, Option<u64>) {
    let json = read_cohort_json(dir).ok();
    let generator = json
        .as_ref()
        .and_then(|c| c["generator"].as_str())
        .unwrap_or("unknown")
        .to_string();
    (generator, json.as_ref().and_then(|c| c["seed"].as_u64()))
}

/// A uint8 `.npy` array and its 3D shape.
fn read_npy(path: &Path) -> Result<(Vec<u8>, [usize; 3]), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not a .npy file", path.display()));
    }
    let hlen = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = String::from_utf8_lossy(bytes.get(10..10 + hlen).ok_or("short .npy")?);
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(['(', ')']).nth(1))
        .ok_or("no shape in .npy header")?;
    let dims: Vec<usize> = shape_txt
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| "bad .npy shape".to_string()))
        .collect::<Result<_, _>>()?;
    let [a, b, c] = dims[..] else {
        return Err("the .npy array is not 3D".into());
    };
    let data = bytes[10 + hlen..].to_vec();
    if data.len() != a * b * c {
        return Err("the .npy data does not match its shape".into());
    }
    Ok((data, [a, b, c]))
}

/// Features of every patient, `threads` at a time, in patient order.
pub fn cohort_features(
    dir: &Path,
    patients: &[Patient],
    o: &SearchOptions,
) -> Vec<PatientFeatures> {
    let cohort = read_cohort_json(dir).ok();
    crate::par::map(
        patients.len(),
        o.threads,
        |i| {
            let f = patient_features(dir, cohort.as_ref(), &patients[i], o);
            if let Some(e) = &f.error {
                tracing::warn!(patient = %patients[i].patient_id, "no dosiomics: {e}");
            }
            f
        },
        |n| {
            if n % 50 == 0 || n == patients.len() {
                eprintln!("features: {n}/{} patients", patients.len());
            }
        },
    )
}

/// Write the feature table as CSV: one row per patient and defined
/// candidate; an empty field is a missing value.
pub fn write_features_csv(
    path: &Path,
    patients: &[Patient],
    features: &[PatientFeatures],
) -> Result<(), String> {
    let names = feature_names();
    let mut s = String::from("patient_id,roi");
    for n in &names {
        s.push(',');
        s.push_str(n);
    }
    s.push('\n');
    for (p, f) in patients.iter().zip(features) {
        for (c, row) in CANDIDATES.iter().zip(&f.rois) {
            let Some(row) = row else { continue };
            s.push_str(&p.patient_id);
            s.push(',');
            s.push_str(c.name);
            for v in row {
                s.push(',');
                if let Some(v) = v {
                    s.push_str(&format!("{v}"));
                }
            }
            s.push('\n');
        }
    }
    std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
}

/// One row of the ranking.
#[derive(Debug, Clone, Serialize)]
pub struct RoiResult {
    pub roi: String,
    pub description: String,
    /// Mean over repeats of the pooled out-of-fold AUC.
    pub cv_auc: f64,
    pub cv_auc_sd: f64,
    /// Bootstrap CI of the AUC of the repeat-averaged out-of-fold risk.
    pub ci: AucCi,
    /// Features kept by the LASSO when fitted on the whole training split.
    pub selected: usize,
    /// Features left out by the stability screen.
    pub unstable: usize,
    /// Training patients for whom the region is empty.
    pub empty_share: f64,
    /// Mean Dice against the truth masks (patients whose truth is not empty).
    pub dice: Option<f64>,
    pub patients: usize,
}

/// The saved dosiomics model: the optimal ROI's definition and the fitted
/// classifier, loaded by the DGD model and the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DosiomicsModelFile {
    pub format: String,
    pub version: u32,
    pub created_by: String,
    pub roi: String,
    pub roi_description: String,
    pub dose: DoseKind,
    pub alpha_beta: f64,
    pub bin_width_gy: f64,
    /// The features are measured on isotropic voxels of this size (mm),
    /// the dose interpolated onto them; absent in files written before the
    /// setting existed, which measure on the dose grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample_mm: Option<f64>,
    pub model: LogisticModel,
    pub training: TrainingInfo,
    /// The stability screen of the search that wrote this file; absent in
    /// files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stability: Option<StabilityScreen>,
    pub intended_use: String,
}

/// What the stability screen of `roi-search` left out of the optimal ROI's
/// candidate features, and with which settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StabilityScreen {
    /// The dose was scaled by 1 ± this.
    pub dose_scale: f64,
    pub max_instability: f64,
    /// The features of the optimal ROI above `max_instability`, with their
    /// instability.
    pub excluded: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingInfo {
    pub cohort: String,
    /// Generator and seed of the cohort (from its cohort.json).
    pub cohort_generator: String,
    pub cohort_seed: Option<u64>,
    pub patients: usize,
    pub events: usize,
    pub cv_auc: f64,
    pub lambda_rule: model::LambdaRule,
    pub seed: u64,
}

pub const MODEL_FORMAT: &str = "esorisk-dosiomics";
pub const MODEL_VERSION: u32 = 1;

impl DosiomicsModelFile {
    pub fn load(path: &Path) -> Result<DosiomicsModelFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let m: DosiomicsModelFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if m.format != MODEL_FORMAT || m.version != MODEL_VERSION {
            return Err(format!(
                "{}: format {} v{} (this esorisk reads {MODEL_FORMAT} v{MODEL_VERSION})",
                path.display(),
                m.format,
                m.version
            ));
        }
        if roi::candidate(&m.roi).is_none() {
            return Err(format!("{}: unknown ROI {:?}", path.display(), m.roi));
        }
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every feature of `mask` (on the patient's grid), measured as this
    /// model measures them, in `feature_names()` order; all missing when
    /// the model's dose kind is not available.
    pub fn measure(&self, pd: &PatientDose, mask: &[bool]) -> Vec<Option<f64>> {
        match pd.volume(mask, self.dose, 4) {
            Some(v) => extract(
                &v,
                Discretisation::BinWidth {
                    width: self.bin_width_gy,
                    lower: 0.0,
                },
            )
            .into_iter()
            .map(|f| f.value)
            .collect(),
            None => vec![None; feature_names().len()],
        }
    }

    /// The model's own features from a [`measure`](Self::measure) row.
    pub fn selected(&self, row: &[Option<f64>]) -> Vec<(String, Option<f64>)> {
        let names = feature_names();
        self.model
            .features
            .iter()
            .map(|f| {
                let v = names.iter().position(|n| *n == f.name).and_then(|i| row[i]);
                (f.name.clone(), v)
            })
            .collect()
    }

    /// Risk for one feature vector in `feature_names()` order.
    pub fn predict(&self, names: &HashMap<&str, usize>, row: &[Option<f64>]) -> f64 {
        self.model
            .predict(|n| names.get(n).and_then(|&i| row.get(i).copied().flatten()))
    }
}

/// A validation row: AUC with CI on one group of patients.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    pub model: String,
    pub group: String,
    pub patients: usize,
    pub events: usize,
    pub auc: AucCi,
}

/// Everything `roi-search` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub ranking: Vec<RoiResult>,
    pub best: String,
    pub evaluation: Vec<EvalRow>,
    pub excluded: Vec<(String, String)>,
    /// Per candidate (CANDIDATES order), per feature: its [`instability`];
    /// empty when the screen was off.
    pub instability: Vec<Vec<Option<f64>>>,
    pub max_instability: f64,
}

/// Rank the candidates and fit the winner. `features` is in `patients`
/// order, as [`cohort_features`] returns it.
pub fn search(
    patients: &[Patient],
    features: &[PatientFeatures],
    o: &SearchOptions,
    cohort: &Path,
) -> Result<(SearchReport, DosiomicsModelFile), String> {
    let names = feature_names();
    let excluded: Vec<(String, String)> = patients
        .iter()
        .zip(features)
        .filter_map(|(p, f)| f.error.clone().map(|e| (p.patient_id.clone(), e)))
        .collect();
    let train: Vec<usize> = (0..patients.len())
        .filter(|&i| patients[i].split == "train" && features[i].error.is_none())
        .collect();
    if train.len() < 2 * o.folds {
        return Err(format!(
            "{} usable training patients: too few for {}-fold cross-validation",
            train.len(),
            o.folds
        ));
    }
    let fit_opts = FitOptions {
        seed: o.seed,
        lambda_rule: o.lambda_rule,
        ..FitOptions::default()
    };
    let labels: Vec<bool> = train.iter().map(|&i| patients[i].label).collect();
    let instability: Vec<Vec<Option<f64>>> = if o.stability_scale > 0.0 {
        (0..CANDIDATES.len())
            .map(|c| instability(c, &train, features, names.len()))
            .collect()
    } else {
        Vec::new()
    };
    let unstable: Vec<Vec<bool>> = (0..CANDIDATES.len())
        .map(|c| match instability.get(c) {
            Some(v) => v
                .iter()
                .map(|x| x.is_some_and(|x| x > o.max_instability))
                .collect(),
            None => vec![false; names.len()],
        })
        .collect();
    // Candidates are independent: rank them `threads` at a time.
    let mut ranking: Vec<RoiResult> = crate::par::map(
        CANDIDATES.len(),
        o.threads,
        |c_idx| {
            rank_candidate(
                c_idx,
                &train,
                &labels,
                features,
                &unstable[c_idx],
                o,
                &fit_opts,
            )
        },
        |_| {},
    )
    .into_iter()
    .flatten()
    .collect();
    ranking.sort_by(|a, b| b.cv_auc.total_cmp(&a.cv_auc));
    let best = ranking
        .first()
        .ok_or("no candidate ROI is defined for every training patient")?;
    let best_idx = CANDIDATES
        .iter()
        .position(|c| c.name == best.roi)
        .ok_or("internal: best ROI not a candidate")?;
    let rows: Vec<Vec<Option<f64>>> = train
        .iter()
        .filter_map(|&i| features[i].rois[best_idx].as_deref())
        .map(|r| screened(r, &unstable[best_idx]))
        .collect();
    let fitted = model::fit(&rows, &labels, &names, &fit_opts);
    let stability = instability.get(best_idx).map(|v| StabilityScreen {
        dose_scale: o.stability_scale,
        max_instability: o.max_instability,
        excluded: names
            .iter()
            .zip(v)
            .filter_map(|(n, x)| x.filter(|&x| x > o.max_instability).map(|x| (n.clone(), x)))
            .collect(),
    });
    let (generator, cohort_seed) = cohort_origin(cohort);
    let file = DosiomicsModelFile {
        format: MODEL_FORMAT.into(),
        version: MODEL_VERSION,
        created_by: format!("esorisk {}", env!("CARGO_PKG_VERSION")),
        roi: best.roi.clone(),
        roi_description: best.description.clone(),
        dose: o.dose,
        alpha_beta: o.alpha_beta,
        bin_width_gy: o.bin_width_gy,
        resample_mm: o.resample_mm,
        model: fitted,
        training: TrainingInfo {
            cohort: cohort.display().to_string(),
            cohort_generator: generator,
            cohort_seed,
            patients: train.len(),
            events: labels.iter().filter(|&&l| l).count(),
            cv_auc: best.cv_auc,
            lambda_rule: o.lambda_rule,
            seed: o.seed,
        },
        stability,
        intended_use: "Research only; not a medical device. Trained on synthetic phantom-hospital \
                       data generated by `esorisk synth`, not on patients."
            .into(),
    };
    let evaluation = evaluate(patients, features, &file, best_idx, &train, o);
    Ok((
        SearchReport {
            best: best.roi.clone(),
            ranking,
            evaluation,
            excluded,
            instability,
            max_instability: o.max_instability,
        },
        file,
    ))
}

/// Cross-validate one candidate; `None` when it is not defined for every
/// training patient (an EQD2 candidate without fraction numbers, a PTV
/// candidate without a PTV).
fn rank_candidate(
    c_idx: usize,
    train: &[usize],
    labels: &[bool],
    features: &[PatientFeatures],
    unstable: &[bool],
    o: &SearchOptions,
    fit_opts: &FitOptions,
) -> Option<RoiResult> {
    let c = &CANDIDATES[c_idx];
    let names = &feature_names();
    let rows: Option<Vec<Vec<Option<f64>>>> = train
        .iter()
        .map(|&i| {
            features[i].rois[c_idx]
                .as_deref()
                .map(|r| screened(r, unstable))
        })
        .collect();
    let Some(rows) = rows else {
        tracing::info!(
            roi = c.name,
            "not defined for every training patient; skipped"
        );
        return None;
    };
    let (cv_auc, cv_sd, oof) = cross_validate(&rows, labels, names, o, fit_opts);
    let ci = auc_ci(&oof, labels, o.bootstrap, o.seed ^ c_idx as u64);
    let full = model::fit(&rows, labels, names, fit_opts);
    let vol = names.iter().position(|n| n == "original_shape_VoxelVolume");
    let empty = rows
        .iter()
        .filter(|r| vol.and_then(|v| r[v]).unwrap_or(0.0) <= 0.0)
        .count();
    let dice: Vec<f64> = train
        .iter()
        .filter_map(|&i| features[i].dice[c_idx])
        .collect();
    eprintln!("roi-search: {:<24} CV AUC {cv_auc:.3}", c.name);
    Some(RoiResult {
        roi: c.name.to_string(),
        description: c.description.to_string(),
        cv_auc,
        cv_auc_sd: cv_sd,
        ci,
        selected: full.features.len(),
        unstable: unstable.iter().filter(|&&u| u).count(),
        empty_share: empty as f64 / rows.len() as f64,
        dice: (!dice.is_empty()).then(|| dice.iter().sum::<f64>() / dice.len() as f64),
        patients: rows.len(),
    })
}

/// Repeated stratified k-fold CV: (mean AUC over repeats, its SD, the
/// out-of-fold risk averaged over repeats).
fn cross_validate(
    rows: &[Vec<Option<f64>>],
    labels: &[bool],
    names: &[String],
    o: &SearchOptions,
    fit_opts: &FitOptions,
) -> (f64, f64, Vec<f64>) {
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let n = rows.len();
    let mut aucs = Vec::new();
    let mut mean_oof = vec![0.0; n];
    for r in 0..o.repeats.max(1) {
        let folds = stratified_folds(labels, o.folds, o.seed.wrapping_add(1000 + r as u64));
        let mut oof = vec![0.0; n];
        for f in 0..o.folds {
            let tr: Vec<usize> = (0..n).filter(|&i| folds[i] != f).collect();
            let xs: Vec<Vec<Option<f64>>> = tr.iter().map(|&i| rows[i].clone()).collect();
            let ys: Vec<bool> = tr.iter().map(|&i| labels[i]).collect();
            let m = model::fit(&xs, &ys, names, fit_opts);
            for i in (0..n).filter(|&i| folds[i] == f) {
                oof[i] = m.predict(|k| index.get(k).and_then(|&j| rows[i][j]));
            }
        }
        aucs.push(auc(&oof, labels));
        for i in 0..n {
            mean_oof[i] += oof[i] / o.repeats.max(1) as f64;
        }
    }
    let mean = aucs.iter().sum::<f64>() / aucs.len() as f64;
    let sd = (aucs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / aucs.len() as f64).sqrt();
    (mean, sd, mean_oof)
}

/// AUCs of the fitted model, the whole-esophagus mean-dose logistic
/// regression and the `p_dose` ceiling on every validation group.
fn evaluate(
    patients: &[Patient],
    features: &[PatientFeatures],
    file: &DosiomicsModelFile,
    best_idx: usize,
    train: &[usize],
    o: &SearchOptions,
) -> Vec<EvalRow> {
    let names = feature_names();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let whole = CANDIDATES
        .iter()
        .position(|c| c.name == "esophagus")
        .unwrap_or(0);
    let mean_col = index.get("original_firstorder_Mean").copied();
    let mean_dose =
        |i: usize| -> Option<f64> { features[i].rois[whole].as_ref().and_then(|r| r[mean_col?]) };
    // Mean-dose baseline: logistic regression on the training split.
    let md_rows: Vec<Vec<Option<f64>>> = train.iter().map(|&i| vec![mean_dose(i)]).collect();
    let md_labels: Vec<bool> = train.iter().map(|&i| patients[i].label).collect();
    let md = model::fit(
        &md_rows,
        &md_labels,
        &["esophagus_mean_gy".to_string()],
        &FitOptions {
            path_ratio: 1e-4,
            ..FitOptions::default()
        },
    );
    let mut groups: Vec<(String, Vec<usize>)> =
        vec![("training (apparent)".into(), train.to_vec())];
    let mut internal = Vec::new();
    let mut external: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, p) in patients.iter().enumerate() {
        if features[i].error.is_some() {
            continue;
        }
        match p.split.as_str() {
            "internal" => internal.push(i),
            "external" => match external.iter_mut().find(|(h, _)| *h == p.hospital) {
                Some((_, v)) => v.push(i),
                None => external.push((p.hospital.clone(), vec![i])),
            },
            _ => {}
        }
    }
    groups.push(("internal validation".into(), internal));
    for (h, v) in external {
        groups.push((format!("external ({h})"), v));
    }
    let mut rows = Vec::new();
    for (g, idx) in &groups {
        if idx.is_empty() {
            continue;
        }
        let labels: Vec<bool> = idx.iter().map(|&i| patients[i].label).collect();
        let events = labels.iter().filter(|&&l| l).count();
        let scored: [(&str, Vec<f64>); 3] = [
            (
                "dosiomics (optimal ROI)",
                idx.iter()
                    .map(|&i| match &features[i].rois[best_idx] {
                        Some(r) => file.predict(&index, r),
                        None => f64::NAN,
                    })
                    .collect(),
            ),
            (
                "mean esophagus dose (logistic)",
                idx.iter().map(|&i| md.predict(|_| mean_dose(i))).collect(),
            ),
            (
                "p_dose (ceiling)",
                idx.iter().map(|&i| patients[i].p_dose).collect(),
            ),
        ];
        for (k, (name, s)) in scored.iter().enumerate() {
            rows.push(EvalRow {
                model: name.to_string(),
                group: g.clone(),
                patients: idx.len(),
                events,
                auc: auc_ci(s, &labels, o.bootstrap, o.seed.wrapping_add(7 + k as u64)),
            });
        }
    }
    rows
}

impl SearchReport {
    /// The ranking as a text table.
    pub fn text(&self) -> String {
        let mut s = String::from(
            "rank  ROI                      CV AUC (sd)     95% CI         features  unstable  empty  Dice\n",
        );
        for (i, r) in self.ranking.iter().enumerate() {
            s.push_str(&format!(
                "{:>4}  {:<24} {:.3} ({:.3})   {:.3}-{:.3}    {:>8}  {:>8}  {:>4.0}%  {}\n",
                i + 1,
                r.roi,
                r.cv_auc,
                r.cv_auc_sd,
                r.ci.lo,
                r.ci.hi,
                r.selected,
                r.unstable,
                100.0 * r.empty_share,
                r.dice
                    .map(|d| format!("{d:.3}"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s.push_str(&format!("\noptimal ROI: {}\n", self.best));
        if let Some(v) = CANDIDATES
            .iter()
            .position(|c| c.name == self.best)
            .and_then(|b| self.instability.get(b))
        {
            let names = feature_names();
            let mut left: Vec<(&String, f64)> = names
                .iter()
                .zip(v)
                .filter_map(|(n, x)| x.filter(|&x| x > self.max_instability).map(|x| (n, x)))
                .collect();
            left.sort_by(|a, b| b.1.total_cmp(&a.1));
            s.push_str(&format!(
                "stability screen: {} of its features left out (instability above {}):\n",
                left.len(),
                self.max_instability
            ));
            for (n, x) in left {
                s.push_str(&format!("  {n:<56} {x:.3}\n"));
            }
        }
        s.push('\n');
        s.push_str(
            "model                            group                   n   events  AUC (95% CI)\n",
        );
        for e in &self.evaluation {
            s.push_str(&format!(
                "{:<32} {:<22} {:>4} {:>6}   {}\n",
                e.model, e.group, e.patients, e.events, e.auc
            ));
        }
        if !self.excluded.is_empty() {
            s.push_str(&format!("\n{} patients excluded:\n", self.excluded.len()));
            for (p, e) in &self.excluded {
                s.push_str(&format!("  {p}: {e}\n"));
            }
        }
        s
    }

    /// The ranking as CSV.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "rank,roi,cv_auc,cv_auc_sd,ci_lo,ci_hi,selected_features,unstable_features,empty_share,dice,patients,description\n",
        );
        for (i, r) in self.ranking.iter().enumerate() {
            s.push_str(&format!(
                "{},{},{:.4},{:.4},{:.4},{:.4},{},{},{:.4},{},{},\"{}\"\n",
                i + 1,
                r.roi,
                r.cv_auc,
                r.cv_auc_sd,
                r.ci.lo,
                r.ci.hi,
                r.selected,
                r.unstable,
                r.empty_share,
                r.dice.map(|d| format!("{d:.4}")).unwrap_or_default(),
                r.patients,
                r.description
            ));
        }
        s
    }

    /// Every candidate's every feature with its instability, as CSV.
    pub fn stability_csv(&self) -> String {
        let names = feature_names();
        let mut s = String::from("roi,feature,instability,left_out\n");
        for (c, v) in CANDIDATES.iter().zip(&self.instability) {
            for (n, x) in names.iter().zip(v) {
                let Some(x) = x else { continue };
                s.push_str(&format!(
                    "{},{n},{x:.6},{}\n",
                    c.name,
                    u8::from(*x > self.max_instability)
                ));
            }
        }
        s
    }

    pub fn evaluation_csv(&self) -> String {
        let mut s = String::from("model,group,patients,events,auc,ci_lo,ci_hi\n");
        for e in &self.evaluation {
            s.push_str(&format!(
                "{},{},{},{},{:.4},{:.4},{:.4}\n",
                e.model, e.group, e.patients, e.events, e.auc.auc, e.auc.lo, e.auc.hi
            ));
        }
        s
    }

    /// Bar chart of the CV AUC per candidate with its 95% CI.
    pub fn png(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        crate::inspect::load_font()?;
        let n = self.ranking.len();
        let root = BitMapBackend::new(path, (1100, 140 + 34 * n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "ROI search: cross-validated AUC (95% CI) — synthetic data, research use only",
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(10)
            .build_cartesian_2d(0.4f64..1.0f64, 0f64..n as f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("AUC")
            .disable_y_mesh()
            .disable_y_axis()
            .draw()
            .map_err(|e| e.to_string())?;
        // Best at the top.
        let row = |rank: usize| (n - 1 - rank) as f64;
        let colour = |i: usize| {
            if i == 0 {
                RGBColor(200, 80, 40)
            } else {
                RGBColor(70, 110, 170)
            }
        };
        chart
            .draw_series(self.ranking.iter().enumerate().map(|(i, r)| {
                Rectangle::new(
                    [(0.4, row(i) + 0.15), (r.cv_auc.max(0.4), row(i) + 0.85)],
                    colour(i).mix(0.8).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(self.ranking.iter().enumerate().map(|(i, r)| {
                PathElement::new(
                    vec![
                        (r.ci.lo.max(0.4), row(i) + 0.5),
                        (r.ci.hi.max(0.4), row(i) + 0.5),
                    ],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(self.ranking.iter().enumerate().map(|(i, r)| {
                Text::new(
                    format!("{}  {:.3}", r.roi, r.cv_auc),
                    (0.405, row(i) + 0.62),
                    ("sans-serif", 15).into_font().color(&WHITE),
                )
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

/// Where `roi-search` writes its table, chart and feature table.
pub fn outputs(out: &Path) -> [PathBuf; 6] {
    [
        out.join("roi-search.csv"),
        out.join("roi-search.png"),
        out.join("evaluation.csv"),
        out.join("features.csv"),
        out.join("roi-search.txt"),
        out.join("stability.csv"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One training patient whose two features, measured at the three dose
    /// scalings, are `linear` (follows the dose) and `step` (jumps).
    fn patient(linear: [f64; 3], step: [f64; 3]) -> PatientFeatures {
        let row = |k: usize| Some(vec![Some(linear[k]), Some(step[k])]);
        PatientFeatures {
            rois: vec![row(1)],
            dice: vec![None],
            scaled: vec![[row(0), row(2)]],
            error: None,
        }
    }

    #[test]
    fn instability_is_zero_for_a_feature_that_follows_the_dose() {
        let features: Vec<PatientFeatures> = (0..10)
            .map(|i| {
                let d = 40.0 + 2.0 * i as f64;
                // The step feature jumps by 10 for every other patient,
                // between the scalings.
                let jump = if i % 2 == 0 { 10.0 } else { 0.0 };
                patient([0.98 * d, d, 1.02 * d], [d, d + jump, d + jump])
            })
            .collect();
        let train: Vec<usize> = (0..10).collect();
        let x = instability(0, &train, &features, 2);
        let linear = x[0].unwrap_or(f64::NAN);
        assert!(linear.abs() < 1e-9, "{linear}");
        // Mean |second difference| 5; SD between patients of d + jump ≈ 7.4.
        let step = x[1].unwrap_or(f64::NAN);
        assert!(step > 0.5 && step < 1.0, "{step}");
        // A patient without the scaled measurements does not count; with
        // fewer than two patients there is no figure.
        let mut one = features[..1].to_vec();
        one.push(PatientFeatures {
            scaled: Vec::new(),
            ..features[1].clone()
        });
        assert_eq!(instability(0, &[0, 1], &one, 2), vec![None, None]);
        // Screening makes the flagged features missing.
        assert_eq!(
            screened(&[Some(1.0), Some(2.0)], &[false, true]),
            vec![Some(1.0), None]
        );
    }
}
