//! Seed ensembles: models trained the same way with different seeds, joined
//! into one model directory whose networks score together.
//!
//! Networks trained on a few hundred patients differ from seed to seed by
//! a few hundredths of AUC; the mean of their logits is steadier than any
//! one of them. Each member keeps its own card and weights under
//! `OUT/members/seed-N/`, so it can still be loaded and checked on its own.

use std::path::{Path, PathBuf};

use super::infer::{self, ModelCard};

/// Join `models` (single models, trained the same way with different seeds)
/// into the ensemble `out`, and with `ablations` also every ablation all of
/// them have (`OUT/ablations/<variant>`). Returns the directories written.
/// The ensemble is not calibrated: run `esorisk calibrate` on it.
pub fn join(out: &Path, models: &[PathBuf], ablations: bool) -> Result<Vec<PathBuf>, String> {
    let mut written = vec![join_one(out, models)?];
    if ablations {
        for a in super::calibrate::with_ablations(&models[0]).iter().skip(1) {
            let Some(name) = a.file_name() else { continue };
            let dirs: Vec<PathBuf> = models
                .iter()
                .map(|m| m.join("ablations").join(name))
                .collect();
            if dirs.iter().all(|d| d.join("card.json").is_file()) {
                written.push(join_one(&out.join("ablations").join(name), &dirs)?);
            }
        }
    }
    Ok(written)
}

fn join_one(out: &Path, models: &[PathBuf]) -> Result<PathBuf, String> {
    if models.len() < 2 {
        return Err("an ensemble needs at least two models".into());
    }
    if out.join("model.safetensors").exists() {
        return Err(format!(
            "{} holds a single model; write the ensemble to another directory",
            out.display()
        ));
    }
    let cards = models
        .iter()
        .map(|m| infer::read_card(m))
        .collect::<Result<Vec<ModelCard>, String>>()?;
    let first = &cards[0];
    let mut names: Vec<String> = Vec::new();
    for (dir, card) in models.iter().zip(&cards) {
        if let Some(why) = infer::incompatible(first, card) {
            return Err(format!(
                "{} cannot join {}: {why}",
                dir.display(),
                models[0].display()
            ));
        }
        let name = format!("members/seed-{}", card.train.seed);
        if names.contains(&name) {
            return Err(format!(
                "{}: seed {} is already a member; an ensemble of one seed twice is the same model",
                dir.display(),
                card.train.seed
            ));
        }
        names.push(name);
    }
    let members = out.join("members");
    if members.exists() {
        std::fs::remove_dir_all(&members).map_err(|e| format!("{}: {e}", members.display()))?;
    }
    for (dir, name) in models.iter().zip(&names) {
        let to = out.join(name);
        std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
        for f in ["card.json", "model.safetensors"] {
            std::fs::copy(dir.join(f), to.join(f))
                .map_err(|e| format!("{}: {e}", dir.join(f).display()))?;
        }
    }
    let n = cards.len() as f64;
    let seeds: Vec<String> = cards.iter().map(|c| c.train.seed.to_string()).collect();
    let card = ModelCard {
        name: out
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        architecture: format!(
            "{}; an ensemble of {} such networks (seeds {}) scored by the mean of their logits",
            first.architecture,
            cards.len(),
            seeds.join(", ")
        ),
        parameters: cards.iter().map(|c| c.parameters).sum(),
        // Each member's card keeps its own training log.
        epochs: Vec::new(),
        best_epoch: 0,
        best_validation_auc: cards.iter().map(|c| c.best_validation_auc).sum::<f64>() / n,
        training_samples_per_second: cards
            .iter()
            .map(|c| c.training_samples_per_second)
            .sum::<f64>()
            / n,
        calibration: None,
        roi_threshold: None,
        members: names,
        init_seed: None,
        restarts: 0,
        ..first.clone()
    };
    let path = out.join("card.json");
    let text = serde_json::to_string_pretty(&card).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(out.to_path_buf())
}
