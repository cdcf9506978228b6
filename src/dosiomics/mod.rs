//! Dosiomics: IBSI-1 features of the dose inside a region, the candidate
//! regions on the esophagus, the dosiomics-only risk model, and the search
//! for the region whose features predict esophagitis best.
//!
//! Features follow the IBSI-1 reference manual (3D, volumetric) and are named
//! in pyradiomics' style (`original_<family>_<Name>`); `docs/VALIDATION.md`
//! lists each with its IBSI name and the digital-phantom check.

pub mod glcm;
pub mod gldzm;
pub mod glrlm;
pub mod glszm;
mod mesh;
pub mod model;
pub mod morphology;
pub mod ngldm;
pub mod ngtdm;
pub mod roi;
pub mod search;
pub mod stats;
#[cfg(test)]
mod testutil;
pub mod volume;

pub use volume::{Discretisation, Discretised, Feature, Volume};

use crate::rt::study::Study;
use roi::{DoseKind, NotScorable, PatientDose};

/// Features of one region of a study, as `esorisk features` prints them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionFeatures {
    /// The region as asked for, and what it resolved to.
    pub roi: String,
    pub source: String,
    pub voxels: usize,
    pub volume_cc: f64,
    pub dose: DoseKind,
    pub bin_width_gy: f64,
    #[serde(serialize_with = "features_as_map")]
    pub features: Vec<Feature>,
}

fn features_as_map<S: serde::Serializer>(f: &[Feature], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(f.len()))?;
    for x in f {
        m.serialize_entry(&x.name, &x.value)?;
    }
    m.end()
}

/// Features of `name` in `study`: a candidate ROI (see [`roi::CANDIDATES`])
/// or a structure of the structure set (name compared without case), on
/// the dose grid (or isotropic `resample_mm` voxels), voxel centre inside.
pub fn region_features(
    study: &Study,
    name: &str,
    dose: DoseKind,
    bin_width_gy: f64,
    alpha_beta: f64,
    resample_mm: Option<f64>,
) -> Result<RegionFeatures, NotScorable> {
    let (volume, source) = if let Some(c) = roi::candidate(name) {
        let pd = PatientDose::from_study(study, alpha_beta, resample_mm)?;
        let mask = c.mask(&pd).ok_or_else(|| {
            NotScorable(format!(
                "candidate {name} needs {} for this study",
                if matches!(dose, DoseKind::Eqd2) || name.contains("eqd2") {
                    "the number of fractions (from the RT Plan)"
                } else {
                    "a PTV"
                }
            ))
        })?;
        let v = pd.volume(&mask, dose, 4).ok_or_else(|| {
            NotScorable("EQD2 needs the number of fractions (from the RT Plan)".into())
        })?;
        (
            v,
            format!(
                "candidate: {} (esophagus ROI {:?})",
                c.description, pd.esophagus_name
            ),
        )
    } else {
        let ss = study
            .structures
            .as_ref()
            .ok_or_else(|| NotScorable("no RT Structure Set linked to the dose".into()))?;
        let r = ss
            .rois
            .iter()
            .find(|r| r.info.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                NotScorable(format!(
                    "no structure or candidate ROI called {name:?}; structures: {}; candidates: {}",
                    ss.rois
                        .iter()
                        .map(|r| r.info.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    roi::CANDIDATES
                        .iter()
                        .map(|c| c.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let (grid, spacing, physical, _) = roi::feature_grid(study, &[r], resample_mm)?;
        let values = match dose {
            DoseKind::Physical => physical,
            DoseKind::Eqd2 => {
                let n = study
                    .plan
                    .as_ref()
                    .and_then(|p| p.fractions)
                    .ok_or_else(|| {
                        NotScorable("EQD2 needs the number of fractions (from the RT Plan)".into())
                    })?;
                crate::rt::dvh::eqd2_grid(&physical, f64::from(n), alpha_beta)
            }
        };
        let mask = r.rasterize(&grid, 1).centre_mask(&grid);
        let pd = PatientDose {
            spacing,
            eqd2: None,
            esophagus: vec![],
            ptv: None,
            esophagus_name: String::new(),
            ptv_name: None,
            fractions: None,
            esophagus_outside_dose: 0.0,
            physical: values,
            grid,
        };
        let v = pd
            .volume(&mask, DoseKind::Physical, 4)
            .ok_or_else(|| NotScorable("no dose".into()))?;
        (
            v,
            format!("structure {:?} (ROI number {})", r.info.name, r.info.number),
        )
    };
    let voxels = volume.count();
    let volume_cc = voxels as f64 * volume.voxel_volume() / 1000.0;
    let features = extract(
        &volume,
        Discretisation::BinWidth {
            width: bin_width_gy,
            lower: 0.0,
        },
    );
    Ok(RegionFeatures {
        roi: name.to_string(),
        source,
        voxels,
        volume_cc,
        dose,
        bin_width_gy,
        features,
    })
}

/// Every feature family, in output order.
pub fn extract(volume: &Volume, discretisation: Discretisation) -> Vec<Feature> {
    let d = Discretised::new(volume, discretisation);
    let mut out = Vec::with_capacity(400);
    out.extend(morphology::morphology(volume));
    out.extend(stats::local_intensity(volume));
    out.extend(stats::intensity_statistics(volume));
    out.extend(stats::intensity_histogram(&d));
    out.extend(stats::intensity_volume_histogram(volume, &d));
    out.extend(glcm::glcm(&d));
    out.extend(glrlm::glrlm(&d));
    out.extend(glszm::glszm(&d));
    out.extend(gldzm::gldzm(&d));
    out.extend(ngtdm::ngtdm(&d));
    out.extend(ngldm::ngldm(&d));
    if volume.count() == 0 {
        // An empty region (no esophagus above an isodose level, say) has no
        // texture or shape ratios, but its extensive measures are defined
        // and zero: volume, area, extent, summed intensity. Keeping them lets
        // a model tell "none of the esophagus got 50 Gy" from "unknown".
        for f in &mut out {
            if EXTENSIVE.contains(&f.name.as_str()) {
                f.value = Some(0.0);
            }
        }
    }
    out
}

/// Features that are sums or extents over the region, zero when it is empty.
pub const EXTENSIVE: &[&str] = &[
    "original_shape_MeshVolume",
    "original_shape_VoxelVolume",
    "original_shape_SurfaceArea",
    "original_shape_Maximum3DDiameter",
    "original_shape_MajorAxisLength",
    "original_shape_MinorAxisLength",
    "original_shape_LeastAxisLength",
    "original_shape_IntegratedIntensity",
    "original_firstorder_Energy",
    "original_firstorder_TotalEnergy",
];

/// The names `extract` returns, in order (the same for every input).
pub fn feature_names() -> Vec<String> {
    let empty = Volume {
        dims: [0, 0, 0],
        spacing: [1.0, 1.0, 1.0],
        values: vec![],
        mask: vec![],
    };
    extract(&empty, Discretisation::BinCount(1))
        .into_iter()
        .map(|f| f.name)
        .collect()
}

/// IBSI reference name for a feature (`""` when the phantom has no value).
pub fn ibsi_name(feature: &str) -> Option<(&'static str, &'static str)> {
    let tables: [(&str, &[(&str, &str)]); 8] = [
        ("morphology", morphology::IBSI_NAMES),
        ("stats", stats::IBSI_NAMES),
        ("glcm", glcm::IBSI_NAMES),
        ("glrlm", glrlm::IBSI_NAMES),
        ("glszm", glszm::IBSI_NAMES),
        ("gldzm", gldzm::IBSI_NAMES),
        ("ngtdm", ngtdm::IBSI_NAMES),
        ("ngldm", ngldm::IBSI_NAMES),
    ];
    tables.iter().find_map(|(fam, t)| {
        t.iter()
            .find(|(ours, _)| *ours == feature)
            .map(|(_, ibsi)| (*fam, *ibsi))
    })
}

/// The IBSI reference family a feature name's prefix belongs to.
pub fn ibsi_family(feature: &str) -> Option<&'static str> {
    let prefix = feature.strip_prefix("original_")?.split('_').next()?;
    Some(match prefix {
        "shape" => "morphology",
        "localintensity" => "local_intensity",
        "firstorder" => "intensity_statistics",
        "histogram" => "intensity_histogram",
        "ivh" => "intensity_volume_histogram",
        "glcm" | "glcmMerged" => "glcm",
        "glrlm" | "glrlmMerged" => "glrlm",
        "glszm" => "glszm",
        "gldzm" => "gldzm",
        "ngtdm" => "ngtdm",
        "ngldm" => "ngldm",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IBSI-1 digital phantom and its reference values (CC BY 4.0,
    /// theibsi/data_sets), kept with the tests.
    const PHANTOM: &str = include_str!("../../tests/fixtures/ibsi_phantom.json");

    fn phantom() -> (Volume, serde_json::Value) {
        let j: serde_json::Value = serde_json::from_str(PHANTOM).expect("fixture parses");
        let (mut values, mut mask) = (Vec::new(), Vec::new());
        for (plane_v, plane_m) in j["values"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(j["mask"].as_array().into_iter().flatten())
        {
            for (row_v, row_m) in plane_v
                .as_array()
                .into_iter()
                .flatten()
                .zip(plane_m.as_array().into_iter().flatten())
            {
                for (v, m) in row_v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .zip(row_m.as_array().into_iter().flatten())
                {
                    values.push(v.as_f64().expect("number"));
                    mask.push(m.as_i64() == Some(1));
                }
            }
        }
        assert_eq!(values.len(), 80);
        let v = Volume {
            dims: [4, 4, 5],
            spacing: [2.0, 2.0, 2.0],
            values,
            mask,
        };
        (v, j)
    }

    /// The rows a 3D volumetric implementation is checked against.
    fn is_3d_row(key: &str) -> bool {
        !key.contains('[') || key.contains("[3D")
    }

    fn within(value: f64, reference: f64, tolerance: Option<f64>) -> bool {
        let tol = tolerance.unwrap_or_else(|| {
            if reference == 0.0 {
                1e-9
            } else {
                0.5 * 10f64.powf(reference.abs().log10().floor() - 2.0)
            }
        });
        (value - reference).abs() <= tol + 1e-12
    }

    #[test]
    fn every_feature_matches_the_ibsi_phantom() {
        let (v, j) = phantom();
        let features = extract(
            &v,
            Discretisation::BinWidth {
                width: 1.0,
                lower: 1.0,
            },
        );
        let refs = &j["reference_values"];
        let mut failures = Vec::new();
        let mut covered = std::collections::HashSet::new();
        for f in &features {
            let (_, key) =
                ibsi_name(&f.name).unwrap_or_else(|| panic!("{} has no IBSI row", f.name));
            if key.is_empty() {
                continue;
            }
            let family = ibsi_family(&f.name).expect("known prefix");
            let r = &refs[family][key];
            let reference = r["value"]
                .as_f64()
                .unwrap_or_else(|| panic!("{family}/{key} not in fixture"));
            covered.insert((family, key));
            match f.value {
                Some(x) if within(x, reference, r["tolerance"].as_f64()) => {}
                other => failures.push(format!("{} ({key}): {other:?} vs {reference}", f.name)),
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        // Every 3D reference row of the implemented families is computed.
        let mut missing = Vec::new();
        for (family, rows) in refs.as_object().into_iter().flatten() {
            for key in rows.as_object().into_iter().flatten().map(|(k, _)| k) {
                if is_3d_row(key) && !covered.contains(&(family.as_str(), key.as_str())) {
                    missing.push(format!("{family}/{key}"));
                }
            }
        }
        assert!(missing.is_empty(), "not computed: {missing:#?}");
        assert!(covered.len() >= 180, "{} rows checked", covered.len());
    }

    /// The table in docs/VALIDATION.md:
    /// `cargo test --lib dosiomics::tests::ibsi_table -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn ibsi_table() {
        let (v, j) = phantom();
        let refs = &j["reference_values"];
        println!("| Feature | IBSI-1 name | Reference | esorisk |\n|---|---|---|---|");
        for f in extract(
            &v,
            Discretisation::BinWidth {
                width: 1.0,
                lower: 1.0,
            },
        ) {
            let (_, key) = ibsi_name(&f.name).unwrap_or(("", ""));
            let family = ibsi_family(&f.name).unwrap_or("");
            let r = &refs[family][key];
            let reference = match (r["value"].as_f64(), r["tolerance"].as_f64()) {
                (Some(x), Some(t)) => format!("{x} ± {t}"),
                (Some(x), None) => format!("{x}"),
                _ => "–".into(),
            };
            let shown = if key.is_empty() {
                "(no reference row)"
            } else {
                key
            };
            println!(
                "| `{}` | {} | {} | {} |",
                f.name,
                shown.replace("\\ :sup:`th`", "th"),
                reference,
                f.value
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_else(|| "missing".into())
            );
        }
    }

    #[test]
    fn names_are_fixed_and_values_never_nan() {
        let names = feature_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate feature names");
        let (v, _) = phantom();
        let single = Volume {
            mask: (0..80).map(|i| i == 7).collect(),
            ..v.clone()
        };
        let constant = Volume {
            values: vec![3.0; 80],
            ..v.clone()
        };
        for vol in [v, single, constant] {
            let f = extract(
                &vol,
                Discretisation::BinWidth {
                    width: 1.0,
                    lower: 0.0,
                },
            );
            assert_eq!(
                f.iter().map(|f| &f.name).collect::<Vec<_>>(),
                names.iter().collect::<Vec<_>>()
            );
            assert!(f.iter().all(|f| f.value.is_none_or(f64::is_finite)));
        }
    }

    /// Moving the image and its mask together changes no feature.
    #[test]
    fn features_do_not_depend_on_position() {
        let (v, _) = phantom();
        let mut big = Volume {
            dims: [7, 9, 8],
            spacing: v.spacing,
            values: vec![0.0; 7 * 9 * 8],
            mask: vec![false; 7 * 9 * 8],
        };
        for z in 0..4 {
            for y in 0..4 {
                for x in 0..5 {
                    let (i, o) = (v.index(z, y, x), big.index(z + 2, y + 3, x + 1));
                    big.values[o] = v.values[i];
                    big.mask[o] = v.mask[i];
                }
            }
        }
        let d = Discretisation::BinWidth {
            width: 1.0,
            lower: 0.0,
        };
        // Local intensity spheres see the image around the ROI, which
        // differs once zero padding surrounds it; everything else must match.
        for (a, b) in extract(&v, d).iter().zip(extract(&big, d).iter()) {
            if a.name.starts_with("original_localintensity_") {
                continue;
            }
            match (a.value, b.value) {
                (Some(x), Some(y)) => assert!(
                    (x - y).abs() <= 1e-9 * (1.0 + x.abs()),
                    "{}: {x} vs {y}",
                    a.name
                ),
                (x, y) => assert_eq!(x, y, "{}", a.name),
            }
        }
    }
}
