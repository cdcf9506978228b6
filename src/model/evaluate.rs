//! The paper-style evaluation: every trained variant, the dosiomics-only
//! model, the mean-dose and LKB baselines and the `p_dose` ceiling on the
//! internal and external validation sets, with AUC and bootstrap CI,
//! sensitivity and specificity at the Youden threshold chosen on the
//! training split, Brier score, calibration error, and the Dice of the
//! learned ROI against the truth masks.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::infer::RiskModel;
use crate::dosiomics::model::{self, FitOptions};
use crate::dosiomics::roi::PatientDose;
use crate::dosiomics::search::{self, DosiomicsModelFile, Patient};
use crate::metrics::{auc_ci, brier, AucCi};
use crate::rt::analysis;
use crate::rt::names::Organ;

/// Everything known about one patient after scoring.
#[derive(Debug, Clone, Default)]
pub struct PatientResult {
    /// Risk per model row name.
    pub risk: HashMap<String, f64>,
    /// Dice of each model's learned ROI against the truth mask (truth not
    /// empty).
    pub dice: HashMap<String, f64>,
    pub mean_dose_gy: Option<f64>,
    pub error: Option<String>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub model: String,
    pub group: String,
    pub patients: usize,
    pub events: usize,
    pub auc: AucCi,
    pub threshold: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub brier: f64,
    /// Expected calibration error, 10 equal-width bins.
    pub calibration_error: f64,
}

/// The evaluation: rows, Dice per model, and per-patient scores for plots.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub rows: Vec<Row>,
    pub dice: Vec<(String, f64, usize)>,
    pub excluded: Vec<(String, String)>,
    #[serde(skip)]
    pub curves: Vec<(String, String, Vec<f64>, Vec<bool>)>,
    /// Every patient's risk from every row's model (`predictions.csv`), so
    /// that any figure of the table can be checked or recomputed.
    #[serde(skip)]
    pub predictions: Predictions,
}

/// Per-patient risks: one column per model row.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    pub columns: Vec<String>,
    /// Patient, hospital, split, label, risk per column, Dice of the main
    /// model's learned ROI against the truth, why it was not scored.
    pub rows: Vec<PredictionRow>,
}

#[derive(Debug, Clone)]
pub struct PredictionRow {
    pub patient_id: String,
    pub hospital: String,
    pub split: String,
    pub label: bool,
    pub risks: Vec<Option<f64>>,
    pub dice: Option<f64>,
    pub error: Option<String>,
}

pub const MEAN_DOSE: &str = "mean esophagus dose (logistic)";
pub const LKB: &str = "LKB NTCP (Belderbos 2005, EQD2)";
pub const DOSIOMICS: &str = "dosiomics only (optimal ROI)";
pub const CEILING: &str = "p_dose (ceiling)";

/// The split given to the patients of `--extra-cohort` cohorts.
pub const EXTRA: &str = "larger-draw";

/// Score every patient of `cohort` with every model, on all cores.
pub fn score_cohort(
    cohort: &Path,
    models: &[(String, RiskModel)],
    dosio: &DosiomicsModelFile,
) -> Result<(Vec<Patient>, Vec<PatientResult>), String> {
    let patients = search::read_labels(cohort)?;
    let cohort_json = search::read_cohort_json(cohort).ok();
    let names = crate::dosiomics::feature_names();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let out = crate::par::map(
        patients.len(),
        crate::par::threads(),
        |i| {
            score_patient(
                cohort,
                cohort_json.as_ref(),
                &patients[i],
                models,
                dosio,
                &index,
            )
        },
        |n| eprint!("\rscoring {n}/{} ", patients.len()),
    );
    eprintln!();
    Ok((patients, out))
}

/// Every model and baseline on one patient.
fn score_patient(
    cohort: &Path,
    cohort_json: Option<&serde_json::Value>,
    p: &Patient,
    models: &[(String, RiskModel)],
    dosio: &DosiomicsModelFile,
    index: &HashMap<&str, usize>,
) -> PatientResult {
    let mut r = PatientResult::default();
    let study = match crate::rt::study::load(&[cohort.join(&p.patient_id)], &Default::default()) {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    let pd = match PatientDose::from_study(&study, dosio.alpha_beta, dosio.resample_mm) {
        Ok(pd) => pd,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    // Baselines.
    let eso: Vec<f64> = pd
        .esophagus
        .iter()
        .zip(&pd.physical)
        .filter(|(&m, _)| m)
        .map(|(_, &d)| f64::from(d))
        .collect();
    r.mean_dose_gy = Some(eso.iter().sum::<f64>() / eso.len().max(1) as f64);
    // Two samples per voxel edge: enough for the LKB baseline's gEUD.
    let a = analysis::analyse(
        &study,
        &analysis::Options {
            supersampling: 2,
            organs: Some(vec![Organ::Esophagus]),
            ..Default::default()
        },
    );
    if let Some(ntcp) = a
        .structures
        .iter()
        .find(|s| s.organ == Some(Organ::Esophagus))
        .and_then(|s| s.lkb.as_ref())
    {
        r.risk.insert(LKB.into(), ntcp.ntcp);
    }
    if let Some(m) = crate::dosiomics::roi::candidate(&dosio.roi).and_then(|c| c.mask(&pd)) {
        r.risk.insert(
            DOSIOMICS.into(),
            dosio.predict(index, &dosio.measure(&pd, &m)),
        );
    }
    r.risk.insert(CEILING.into(), p.p_dose);
    // The truth masks are read on the grid the learned ROIs come back on,
    // the plan's own (not the finer feature grid, where the truth would be
    // blocks of coarser voxels); every model returns its ROI there.
    let truth = std::cell::OnceCell::new();
    for (name, m) in models {
        match m.score(&study) {
            Ok(s) => {
                r.risk.insert(name.clone(), s.risk);
                let t = truth.get_or_init(|| {
                    cohort_json
                        .and_then(|c| search::read_truth(cohort, c, p, &s.prepared_grid).ok())
                        .filter(|t| t.iter().any(|&v| v))
                });
                if let Some(t) = t.as_ref().filter(|t| t.len() == s.roi.len()) {
                    r.dice
                        .insert(name.clone(), crate::dosiomics::roi::dice(&s.roi, t));
                }
            }
            Err(e) => r.error = Some(format!("{name}: {e}")),
        }
    }
    r
}

/// Build the table from the scores. Thresholds and the mean-dose model are
/// fitted on the training split.
pub fn evaluate(
    patients: &[Patient],
    results: &[PatientResult],
    model_names: &[String],
    bootstrap: usize,
    seed: u64,
) -> Evaluation {
    let ok: Vec<usize> = (0..patients.len())
        .filter(|&i| results[i].error.is_none())
        .collect();
    let train: Vec<usize> = ok
        .iter()
        .copied()
        .filter(|&i| patients[i].split == "train")
        .collect();
    // Mean-dose logistic regression on the training split.
    let md = model::fit(
        &train
            .iter()
            .map(|&i| vec![results[i].mean_dose_gy])
            .collect::<Vec<_>>(),
        &train.iter().map(|&i| patients[i].label).collect::<Vec<_>>(),
        &["mean".to_string()],
        &FitOptions {
            path_ratio: 1e-4,
            ..Default::default()
        },
    );
    let mut results = results.to_vec();
    for r in &mut results {
        if let Some(m) = r.mean_dose_gy {
            r.risk.insert(MEAN_DOSE.into(), md.predict(|_| Some(m)));
        }
    }
    let mut rows_models: Vec<String> = model_names.to_vec();
    rows_models.extend([DOSIOMICS, MEAN_DOSE, LKB, CEILING].map(String::from));
    let mut groups: Vec<(String, Vec<usize>)> = vec![(
        "internal validation".into(),
        ok.iter()
            .copied()
            .filter(|&i| patients[i].split == "internal")
            .collect(),
    )];
    let mut hospitals: Vec<String> = ok
        .iter()
        .filter(|&&i| patients[i].split == "external")
        .map(|&i| patients[i].hospital.clone())
        .collect();
    hospitals.dedup();
    hospitals.sort();
    hospitals.dedup();
    for h in hospitals {
        let idx = ok
            .iter()
            .copied()
            .filter(|&i| patients[i].split == "external" && patients[i].hospital == h)
            .collect();
        groups.push((format!("external ({h})"), idx));
    }
    // Larger draws of the validation hospitals (`--extra-cohort`).
    let mut extra: Vec<String> = ok
        .iter()
        .filter(|&&i| patients[i].split == EXTRA)
        .map(|&i| patients[i].hospital.clone())
        .collect();
    extra.sort();
    extra.dedup();
    for h in extra {
        let idx = ok
            .iter()
            .copied()
            .filter(|&i| patients[i].split == EXTRA && patients[i].hospital == h)
            .collect();
        groups.push((format!("larger draw ({h})"), idx));
    }
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for m in &rows_models {
        let score = |i: usize| results[i].risk.get(m).copied();
        let tr: Vec<(f64, bool)> = train
            .iter()
            .filter_map(|&i| score(i).map(|s| (s, patients[i].label)))
            .collect();
        if tr.is_empty() {
            continue;
        }
        let threshold = youden(&tr);
        for (g, idx) in &groups {
            let pairs: Vec<(f64, bool)> = idx
                .iter()
                .filter_map(|&i| score(i).map(|s| (s, patients[i].label)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let (s, l): (Vec<f64>, Vec<bool>) = pairs.iter().copied().unzip();
            let (sens, spec) = sens_spec(&pairs, threshold);
            rows.push(Row {
                model: m.clone(),
                group: g.clone(),
                patients: pairs.len(),
                events: l.iter().filter(|&&x| x).count(),
                auc: auc_ci(&s, &l, bootstrap, seed),
                threshold,
                sensitivity: sens,
                specificity: spec,
                brier: brier(&s, &l),
                calibration_error: calibration_error(&s, &l, 10),
            });
            curves.push((m.clone(), g.clone(), s, l));
        }
    }
    let dice = model_names
        .iter()
        .filter_map(|m| {
            let d: Vec<f64> = ok
                .iter()
                .filter_map(|&i| results[i].dice.get(m).copied())
                .collect();
            (!d.is_empty()).then(|| (m.clone(), d.iter().sum::<f64>() / d.len() as f64, d.len()))
        })
        .collect();
    let excluded = (0..patients.len())
        .filter_map(|i| {
            results[i]
                .error
                .clone()
                .map(|e| (patients[i].patient_id.clone(), e))
        })
        .collect();
    // The main model is the last of `model_names`.
    let main = model_names.last();
    let predictions = Predictions {
        rows: patients
            .iter()
            .zip(&results)
            .map(|(p, r)| PredictionRow {
                patient_id: p.patient_id.clone(),
                hospital: p.hospital.clone(),
                split: p.split.clone(),
                label: p.label,
                risks: rows_models.iter().map(|m| r.risk.get(m).copied()).collect(),
                dice: main.and_then(|m| r.dice.get(m).copied()),
                error: r.error.clone(),
            })
            .collect(),
        columns: rows_models,
    };
    Evaluation {
        rows,
        dice,
        excluded,
        curves,
        predictions,
    }
}

/// Threshold maximising sensitivity + specificity − 1.
pub fn youden(pairs: &[(f64, bool)]) -> f64 {
    let mut cands: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    cands.sort_by(f64::total_cmp);
    cands.dedup();
    let mut best = (f64::NEG_INFINITY, 0.5);
    for &t in &cands {
        let (se, sp) = sens_spec(pairs, t);
        if se + sp - 1.0 > best.0 {
            best = (se + sp - 1.0, t);
        }
    }
    best.1
}

/// Sensitivity and specificity calling `score ≥ t` positive.
pub fn sens_spec(pairs: &[(f64, bool)], t: f64) -> (f64, f64) {
    let (mut tp, mut fn_, mut tn, mut fp) = (0.0, 0.0, 0.0, 0.0);
    for &(s, l) in pairs {
        match (s >= t, l) {
            (true, true) => tp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fp += 1.0,
        }
    }
    (tp / f64::max(tp + fn_, 1.0), tn / f64::max(tn + fp, 1.0))
}

/// Expected calibration error: bin-size-weighted |mean risk − event rate|
/// over `bins` equal-width bins of predicted risk.
pub fn calibration_error(s: &[f64], l: &[bool], bins: usize) -> f64 {
    let mut sum = vec![(0.0, 0.0, 0usize); bins];
    for (&p, &y) in s.iter().zip(l) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sum[b].0 += p;
        sum[b].1 += f64::from(u8::from(y));
        sum[b].2 += 1;
    }
    let n = s.len().max(1) as f64;
    sum.iter()
        .filter(|b| b.2 > 0)
        .map(|(p, y, c)| (*c as f64 / n) * ((p - y) / *c as f64).abs())
        .sum()
}

impl Evaluation {
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| model | group | n | events | AUC (95% CI) | sensitivity | specificity | Brier | calibration error |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.3} | {:.3} |\n",
                r.model,
                r.group,
                r.patients,
                r.events,
                r.auc,
                r.sensitivity,
                r.specificity,
                r.brier,
                r.calibration_error
            ));
        }
        if !self.dice.is_empty() {
            s.push_str(
                "\n| model | Dice of the learned ROI vs truth | patients |\n|---|---|---|\n",
            );
            for (m, d, n) in &self.dice {
                s.push_str(&format!("| {m} | {d:.3} | {n} |\n"));
            }
        }
        if !self.excluded.is_empty() {
            s.push_str(&format!("\n{} patients excluded:\n", self.excluded.len()));
            for (p, e) in &self.excluded {
                s.push_str(&format!("- {p}: {e}\n"));
            }
        }
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from(
            "model,group,patients,events,auc,ci_lo,ci_hi,threshold,sensitivity,specificity,brier,calibration_error\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "\"{}\",\"{}\",{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}\n",
                r.model,
                r.group,
                r.patients,
                r.events,
                r.auc.auc,
                r.auc.lo,
                r.auc.hi,
                r.threshold,
                r.sensitivity,
                r.specificity,
                r.brier,
                r.calibration_error
            ));
        }
        s
    }

    /// `predictions.csv`: one line per patient.
    pub fn predictions_csv(&self) -> String {
        let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
        let p = &self.predictions;
        let mut s = String::from("patient_id,hospital,split,label");
        for c in &p.columns {
            s.push(',');
            s.push_str(&quote(c));
        }
        s.push_str(",main_model_roi_dice,error\n");
        let num = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &p.rows {
            s.push_str(&format!(
                "{},{},{},{}",
                quote(&r.patient_id),
                quote(&r.hospital),
                quote(&r.split),
                u8::from(r.label)
            ));
            for v in &r.risks {
                s.push(',');
                s.push_str(&num(*v));
            }
            s.push_str(&format!(
                ",{},{}\n",
                num(r.dice),
                r.error.as_deref().map(quote).unwrap_or_default()
            ));
        }
        s
    }

    /// ROC curves and calibration (reliability) plots, one panel per group.
    pub fn plots(&self, roc: &Path, calibration: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        crate::inspect::load_font()?;
        let mut groups: Vec<String> = self.curves.iter().map(|c| c.1.clone()).collect();
        groups.dedup();
        let mut seen = Vec::new();
        groups.retain(|g| {
            let new = !seen.contains(g);
            seen.push(g.clone());
            new
        });
        for (path, is_roc) in [(roc, true), (calibration, false)] {
            let root = BitMapBackend::new(path, (480 * groups.len().max(1) as u32, 520))
                .into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let panels = root.split_evenly((1, groups.len().max(1)));
            for (panel, g) in panels.iter().zip(&groups) {
                let mut chart = ChartBuilder::on(panel)
                    .caption(
                        format!("{} — {g}", if is_roc { "ROC" } else { "Calibration" }),
                        ("sans-serif", 16),
                    )
                    .margin(12)
                    .x_label_area_size(35)
                    .y_label_area_size(40)
                    .build_cartesian_2d(0f64..1f64, 0f64..1f64)
                    .map_err(|e| e.to_string())?;
                chart
                    .configure_mesh()
                    .x_desc(if is_roc {
                        "1 − specificity"
                    } else {
                        "predicted risk"
                    })
                    .y_desc(if is_roc {
                        "sensitivity"
                    } else {
                        "observed rate"
                    })
                    .draw()
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series(LineSeries::new(
                        vec![(0.0, 0.0), (1.0, 1.0)],
                        BLACK.mix(0.3),
                    ))
                    .map_err(|e| e.to_string())?;
                for (k, (m, _, s, l)) in self.curves.iter().filter(|c| &c.1 == g).enumerate() {
                    let colour = Palette99::pick(k).to_rgba();
                    let pts = if is_roc {
                        roc_points(s, l)
                    } else {
                        reliability(s, l, 10)
                    };
                    chart
                        .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                        .map_err(|e| e.to_string())?
                        .label(m.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                        });
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .label_font(("sans-serif", 11))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn roc_points(s: &[f64], l: &[bool]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|a, b| s[*b].total_cmp(&s[*a]));
    let pos = l.iter().filter(|&&x| x).count().max(1) as f64;
    let neg = l.iter().filter(|&&x| !x).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    for i in idx {
        if l[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        pts.push((fp / neg, tp / pos));
    }
    pts
}

fn reliability(s: &[f64], l: &[bool], bins: usize) -> Vec<(f64, f64)> {
    let mut sum = vec![(0.0, 0.0, 0usize); bins];
    for (&p, &y) in s.iter().zip(l) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sum[b].0 += p;
        sum[b].1 += f64::from(u8::from(y));
        sum[b].2 += 1;
    }
    sum.iter()
        .filter(|b| b.2 > 0)
        .map(|(p, y, c)| (p / *c as f64, y / *c as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn youden_threshold_and_rates() {
        let pairs = [
            (0.1, false),
            (0.2, false),
            (0.35, true),
            (0.4, false),
            (0.8, true),
        ];
        let t = youden(&pairs);
        assert_eq!(t, 0.35);
        assert_eq!(sens_spec(&pairs, t), (1.0, 2.0 / 3.0));
    }

    #[test]
    fn every_patient_gets_a_prediction_line() {
        let mut patients = Vec::new();
        let mut results = Vec::new();
        for i in 0..40 {
            let label = i % 3 == 0;
            patients.push(Patient {
                patient_id: format!("P{i}"),
                hospital: "H1".into(),
                split: if i < 24 { "train" } else { "internal" }.into(),
                label,
                p_dose: 0.3,
                truth_file: String::new(),
            });
            let mut r = PatientResult {
                mean_dose_gy: Some(20.0 + f64::from(u8::from(label)) * 10.0 + f64::from(i % 5)),
                ..Default::default()
            };
            r.risk.insert(
                "m".into(),
                if label { 0.7 } else { 0.2 } + 0.01 * f64::from(i % 4),
            );
            r.dice.insert("m".into(), 0.5);
            if i == 39 {
                r = PatientResult {
                    error: Some("no RT Dose".into()),
                    ..Default::default()
                };
            }
            results.push(r);
        }
        let ev = evaluate(&patients, &results, &["m".to_string()], 50, 1);
        let internal = ev
            .rows
            .iter()
            .find(|r| r.model == "m" && r.group == "internal validation")
            .expect("row");
        // The scored internal patients (the last one failed).
        assert_eq!(internal.patients, 15);
        assert_eq!(internal.auc.auc, 1.0);
        let csv = ev.predictions_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 41, "{csv}");
        assert!(lines[0].starts_with("patient_id,hospital,split,label,\"m\","));
        assert!(lines[0].contains(&format!("\"{MEAN_DOSE}\"")));
        assert!(lines[0].ends_with("main_model_roi_dice,error"));
        let first: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(
            &first[..5],
            ["\"P0\"", "\"H1\"", "\"train\"", "1", "0.700000"]
        );
        assert_eq!(first[first.len() - 2], "0.500000");
        assert!(lines[40].ends_with(",\"no RT Dose\""), "{}", lines[40]);
    }

    #[test]
    fn calibration_error_is_zero_when_rates_match() {
        let s = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let l = [true, false, false, false, true, true, true, false];
        assert!(calibration_error(&s, &l, 10) < 1e-12);
        let bad = [0.9; 8];
        assert!((calibration_error(&bad, &l, 10) - 0.4).abs() < 1e-12);
    }
}
