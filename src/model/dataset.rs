//! A cohort turned into tensors once: inputs, target ROIs, dosiomic
//! features and labels for every usable patient, cached next to the cohort
//! so training the variants and evaluating them do not read DICOM again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::data::{self, Crop, InputConfig};
use crate::dosiomics::search::{self, DosiomicsModelFile, Patient};

/// The cohort's usable patients as flat arrays (patient-major).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    pub input: InputConfig,
    pub patients: Vec<Entry>,
    pub n_dosiomics: usize,
    /// `N × C × D × H × W`.
    #[serde(skip)]
    pub inputs: Vec<f32>,
    /// `N × D × H × W`, 0/1.
    #[serde(skip)]
    pub targets: Vec<u8>,
    /// `N × F`.
    #[serde(skip)]
    pub dosiomics: Vec<f32>,
    /// Patients left out, with the reason.
    pub excluded: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub patient_id: String,
    pub hospital: String,
    pub split: String,
    pub label: bool,
    pub p_dose: f64,
    pub crop: Crop,
    pub norm_gy: f64,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.patients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
    }

    /// Indices of the patients in `split` (and `hospital`, when given).
    pub fn indices(&self, split: &str, hospital: Option<&str>) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| {
                self.patients[i].split == split
                    && hospital.is_none_or(|h| self.patients[i].hospital == h)
            })
            .collect()
    }

    /// Build from a cohort written by `esorisk synth`, `threads` at a time.
    pub fn build(
        cohort: &Path,
        cfg: &InputConfig,
        model: &DosiomicsModelFile,
        threads: usize,
    ) -> Result<Dataset, String> {
        let patients = search::read_labels(cohort)?;
        let results = crate::par::map(
            patients.len(),
            threads,
            |i| load_one(cohort, &patients[i], cfg, model),
            |n| {
                if n % 50 == 0 || n == patients.len() {
                    eprintln!("dataset: {n}/{} patients", patients.len());
                }
            },
        );
        let mut ds = Dataset {
            input: cfg.clone(),
            patients: vec![],
            n_dosiomics: model.model.features.len(),
            inputs: vec![],
            targets: vec![],
            dosiomics: vec![],
            excluded: vec![],
        };
        for (p, r) in patients.iter().zip(results) {
            match r {
                Ok(s) => {
                    ds.inputs.extend(&s.input);
                    ds.targets.extend(&s.target);
                    ds.dosiomics.extend(&s.dosiomics);
                    ds.patients.push(entry(p, s.crop, s.norm_gy));
                }
                Err(e) => ds.excluded.push((p.patient_id.clone(), e)),
            }
        }
        Ok(ds)
    }

    /// Load from the cache or build and cache.
    pub fn cached(
        cohort: &Path,
        cfg: &InputConfig,
        model: &DosiomicsModelFile,
        threads: usize,
    ) -> Result<Dataset, String> {
        let path = cache_path(cohort, cfg, model);
        if let Ok(ds) = Dataset::read(&path) {
            if ds.input == *cfg {
                return Ok(ds);
            }
        }
        let ds = Dataset::build(cohort, cfg, model, threads)?;
        if let Err(e) = ds.write(&path) {
            tracing::warn!("cannot cache the dataset at {}: {e}", path.display());
        }
        Ok(ds)
    }

    fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        let meta = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(
            16 + meta.len() + 4 * (self.inputs.len() + self.dosiomics.len()) + self.targets.len(),
        );
        out.extend(b"ESORISKDS1");
        out.extend((meta.len() as u64).to_le_bytes());
        out.extend(&meta);
        for v in &self.inputs {
            out.extend(v.to_le_bytes());
        }
        for v in &self.dosiomics {
            out.extend(v.to_le_bytes());
        }
        out.extend(&self.targets);
        // One temporary name per process: two trainings reading the same
        // cohort at once build the same cache, and a shared name would let
        // one truncate the file the other is about to rename into place.
        let tmp = path.with_extension(format!("{}.part", std::process::id()));
        std::fs::write(&tmp, out).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    }

    fn read(path: &Path) -> Result<Dataset, String> {
        let b = std::fs::read(path).map_err(|e| e.to_string())?;
        let bad = || format!("{}: not a dataset cache", path.display());
        if b.len() < 18 || &b[..10] != b"ESORISKDS1" {
            return Err(bad());
        }
        let n = u64::from_le_bytes(b[10..18].try_into().map_err(|_| bad())?) as usize;
        let meta = b.get(18..18 + n).ok_or_else(bad)?;
        let mut ds: Dataset = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
        let voxels = ds.input.voxels();
        let (ni, nd, nt) = (
            ds.len() * ds.input.channels() * voxels,
            ds.len() * ds.n_dosiomics,
            ds.len() * voxels,
        );
        let rest = &b[18 + n..];
        if rest.len() != 4 * (ni + nd) + nt {
            return Err(bad());
        }
        let f32s = |s: &[u8]| -> Vec<f32> {
            s.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        ds.inputs = f32s(&rest[..4 * ni]);
        ds.dosiomics = f32s(&rest[4 * ni..4 * (ni + nd)]);
        ds.targets = rest[4 * (ni + nd)..].to_vec();
        Ok(ds)
    }
}

fn entry(p: &Patient, crop: Crop, norm_gy: f64) -> Entry {
    Entry {
        patient_id: p.patient_id.clone(),
        hospital: p.hospital.clone(),
        split: p.split.clone(),
        label: p.label,
        p_dose: p.p_dose,
        crop,
        norm_gy,
    }
}

fn load_one(
    cohort: &Path,
    p: &Patient,
    cfg: &InputConfig,
    model: &DosiomicsModelFile,
) -> Result<data::Sample, String> {
    let study = crate::rt::study::load(&[cohort.join(&p.patient_id)], &Default::default())
        .map_err(|e| e.to_string())?;
    data::sample(&study, cfg, model).map_err(|e| e.to_string())
}

/// `<cohort>/.esorisk-cache/dataset-<hash>.bin`, the hash over the input
/// settings and the dosiomics model.
fn cache_path(cohort: &Path, cfg: &InputConfig, model: &DosiomicsModelFile) -> PathBuf {
    let key = format!(
        "{}|{}",
        serde_json::to_string(cfg).unwrap_or_default(),
        serde_json::to_string(model).unwrap_or_default()
    );
    let mut h = crate::hash::Fnv::default();
    h.update(key.as_bytes());
    let h = h.finish();
    cohort
        .join(".esorisk-cache")
        .join(format!("dataset-{h:016x}.bin"))
}
