//! Recalibration of trained models on held-out patients: the learned ROI's
//! probability threshold (mean Dice against the optimal ROI) and a Platt
//! scaling of the risk, both written into the model cards.

use std::path::{Path, PathBuf};

use super::infer::{Calibration, RiskModel};
use super::train::ROI_THRESHOLDS;
use crate::dosiomics::search::{self, Patient};
use crate::rt::study::Study;

/// A model directory and its ablations (`DIR/ablations/*`, sorted).
pub fn with_ablations(model: &Path) -> Vec<PathBuf> {
    let mut more: Vec<PathBuf> = std::fs::read_dir(model.join("ablations"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    more.sort();
    std::iter::once(model.to_path_buf()).chain(more).collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Fit the ROI threshold (models with a segmentation branch) and then the
/// Platt scaling of every model on the patients of `split`, and write each
/// card. Returns one report line per fitted item.
pub fn calibrate(
    models: &mut [RiskModel],
    cohort: &Path,
    split: &str,
) -> Result<Vec<String>, String> {
    let patients: Vec<Patient> = search::read_labels(cohort)?
        .into_iter()
        .filter(|p| p.split == split)
        .collect();
    if patients.is_empty() {
        return Err(format!(
            "no patients in split {split:?} of {}",
            cohort.display()
        ));
    }
    for m in models.iter_mut() {
        // Fit on the uncalibrated output. A model whose head reads the
        // features in the learned ROI keeps the threshold it was trained
        // with: its head learned the features measured there.
        m.card.calibration = None;
        // An ensemble's members keep theirs; its own threshold only draws
        // the returned ROI, so it is fitted.
        if !m.reads_learned_roi() || m.is_ensemble() {
            m.card.roi_threshold = None;
        }
    }
    let mut report = Vec::new();
    // First the learned ROI's threshold (the fused features of a model that
    // reads them in the predicted ROI depend on it), then the risk.
    let dice = over_patients(cohort, &patients, |study| {
        models
            .iter()
            .map(|m| {
                m.roi_dice_by_threshold(study, &ROI_THRESHOLDS)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()
    });
    let half = ROI_THRESHOLDS.iter().position(|&t| t == 0.5).unwrap_or(0);
    for (k, m) in models.iter_mut().enumerate() {
        let rows: Vec<&Vec<f64>> = dice
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(|v| v[k].as_ref()))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mean = |t: usize| rows.iter().map(|r| r[t]).sum::<f64>() / rows.len() as f64;
        let trained = m
            .card
            .roi_threshold
            .and_then(|t| ROI_THRESHOLDS.iter().position(|&x| x == t));
        let best = trained.unwrap_or_else(|| {
            (0..ROI_THRESHOLDS.len())
                .max_by(|&a, &b| mean(a).total_cmp(&mean(b)))
                .unwrap_or(half)
        });
        report.push(format!(
            "{}: learned-ROI threshold {}{} (mean Dice against the optimal ROI {:.3}; {:.3} at 0.5), {} patients with a non-empty optimal ROI",
            m.dir.display(),
            ROI_THRESHOLDS[best],
            if trained.is_some() { ", as trained" } else { "" },
            mean(best),
            mean(half),
            rows.len()
        ));
        m.card.roi_threshold = Some(ROI_THRESHOLDS[best]);
    }
    let risks = over_patients(cohort, &patients, |study| {
        models
            .iter()
            .map(|m| m.score(study).map(|s| s.risk).map_err(|e| e.to_string()))
            .collect::<Result<Vec<f64>, String>>()
    });
    let (mut logits, mut labels) = (vec![Vec::new(); models.len()], Vec::new());
    for (p, r) in patients.iter().zip(risks) {
        match r {
            Ok(risks) => {
                for (k, r) in risks.iter().enumerate() {
                    let r = r.clamp(1e-9, 1.0 - 1e-9);
                    logits[k].push((r / (1.0 - r)).ln());
                }
                labels.push(p.label);
            }
            Err(e) => tracing::warn!(patient = %p.patient_id, "left out of the calibration: {e}"),
        }
    }
    let events = labels.iter().filter(|&&l| l).count();
    for (m, z) in models.iter_mut().zip(&logits) {
        let (a, b) = crate::metrics::platt(z, &labels);
        let before: Vec<f64> = z.iter().map(|&z| sigmoid(z)).collect();
        let after: Vec<f64> = z.iter().map(|&z| sigmoid(a * z + b)).collect();
        m.card.calibration = Some(Calibration {
            a,
            b,
            fitted_on: format!(
                "split {split} of {} ({} patients, {events} events)",
                cohort.display(),
                labels.len()
            ),
        });
        let card = m.dir.join("card.json");
        let text = serde_json::to_string_pretty(&m.card).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&card, text).map_err(|e| format!("{}: {e}", card.display()))?;
        report.push(format!(
            "{}: a {a:.3}, b {b:.3}; on the fitting split Brier {:.3} -> {:.3}, calibration error {:.3} -> {:.3}",
            m.dir.display(),
            crate::metrics::brier(&before, &labels),
            crate::metrics::brier(&after, &labels),
            super::evaluate::calibration_error(&before, &labels, 10),
            super::evaluate::calibration_error(&after, &labels, 10),
        ));
    }
    Ok(report)
}

/// `f` on every patient's study, on all cores, in the patients' order.
fn over_patients<T: Send>(
    cohort: &Path,
    patients: &[Patient],
    f: impl Fn(&Study) -> Result<T, String> + Sync,
) -> Vec<Result<T, String>> {
    crate::par::map(
        patients.len(),
        crate::par::threads(),
        |i| {
            crate::rt::study::load(&[cohort.join(&patients[i].patient_id)], &Default::default())
                .map_err(|e| e.to_string())
                .and_then(|study| f(&study))
        },
        |_| {},
    )
}
