//! Phantom hospitals: synthetic lung RT cohorts, written as the DICOM a
//! planning system sends, with the ground-truth esophagitis risk behind
//! every label. See docs/SYNTHETIC.md for the models and their sources.

pub mod anatomy;
pub mod ct;
pub mod dose;
pub mod risk;
pub mod rng;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::rt::grid::Grid;
use crate::rt::phantom::{circle, ellipse};
use crate::rt::structure::ContourPlane;
use crate::rt::write::{self, DoseEncoding, PlanSpec, RoiSpec, StudyHeader, Technique};
use anatomy::{Anatomy, Location};
use dose::DoseShape;
use risk::{Exposure, RiskModel, MODEL};
use rng::Rng;

/// How one hospital plans, contours and exports.
#[derive(Debug, Clone, Serialize)]
pub struct Hospital {
    pub name: String,
    /// Dose grid spacing (mm).
    pub dose_spacing: f64,
    /// CT slice and contour plane spacing (mm).
    pub slice_spacing: f64,
    /// Weights of 3D-CRT, IMRT, VMAT for conventional plans.
    pub technique_mix: [f64; 3],
    /// Typical esophagus sparing strength of the optimiser (0–1).
    pub sparing_habit: f64,
    /// Share of plans that spare only the far esophageal wall.
    pub far_wall_share: f64,
    pub central_share: f64,
    pub sbrt_share: f64,
    pub chemo_rate: f64,
    pub esophagus_name: String,
    /// Lungs as one ROI with this name, or as Lung_L / Lung_R.
    pub lungs_name: Option<String>,
    /// How far short of the anatomical ends the esophagus is contoured (mm).
    pub contour_trim: (f64, f64),
    pub dose_bits: u16,
    pub dose_rle: bool,
}

impl Hospital {
    /// The three reference hospitals, or hospital 1's habits under another name.
    pub fn preset(name: &str) -> Hospital {
        match name {
            "hospital2" => Hospital {
                name: name.into(),
                dose_spacing: 3.0,
                slice_spacing: 3.0,
                technique_mix: [0.45, 0.35, 0.20],
                sparing_habit: 0.25,
                far_wall_share: 0.1,
                central_share: 0.6,
                sbrt_share: 0.1,
                chemo_rate: 0.6,
                esophagus_name: "ESOPH".into(),
                lungs_name: Some("LUNGS".into()),
                contour_trim: (30.0, 0.0),
                dose_bits: 32,
                dose_rle: true,
            },
            "hospital3" => Hospital {
                name: name.into(),
                dose_spacing: 4.0,
                slice_spacing: 2.5,
                technique_mix: [0.15, 0.25, 0.60],
                sparing_habit: 0.55,
                far_wall_share: 0.4,
                central_share: 0.55,
                sbrt_share: 0.2,
                chemo_rate: 0.75,
                esophagus_name: "Oesophagus".into(),
                lungs_name: None,
                contour_trim: (0.0, 20.0),
                dose_bits: 32,
                dose_rle: false,
            },
            _ => Hospital {
                name: name.into(),
                dose_spacing: 2.5,
                slice_spacing: 2.5,
                technique_mix: [0.2, 0.3, 0.5],
                sparing_habit: 0.25,
                far_wall_share: 0.6,
                central_share: 0.75,
                sbrt_share: 0.15,
                chemo_rate: 0.7,
                esophagus_name: "Esophagus".into(),
                lungs_name: None,
                contour_trim: (0.0, 0.0),
                dose_bits: 16,
                dose_rle: false,
            },
        }
    }
}

/// One row of labels.csv.
#[derive(Debug, Clone, Serialize)]
pub struct PatientRecord {
    pub patient_id: String,
    pub hospital: String,
    pub split: String,
    pub label: u8,
    pub p_true: f64,
    pub p_dose: f64,
    pub study_instance_uid: String,
    pub rtstruct_uid: String,
    pub rtplan_uid: String,
    pub rtdose_uid: String,
    pub age: u32,
    pub sex: String,
    pub concurrent_chemo: u8,
    pub prescription_gy: f64,
    pub fractions: u32,
    pub fractions_per_day: u32,
    pub technique: String,
    pub sbrt: u8,
    pub location: String,
    pub nodal: u8,
    pub esophagus_mean_gy: f64,
    pub esophagus_mean_eqd2_gy: f64,
    pub esophagus_v35_pct: f64,
    pub esophagus_v50_pct: f64,
    pub esophagus_v60_pct: f64,
    pub risk_length_cm: f64,
    pub risk_region_cc: f64,
    pub truth_file: String,
    #[serde(skip)]
    pub grid: Option<Grid>,
    /// First voxel (k, j, i) and shape (nz, ny, nx) of the saved mask box.
    #[serde(skip)]
    pub truth_box: ([usize; 3], [usize; 3]),
}

/// The box of the grid around the esophagus voxels: (first (k, j, i), shape).
fn esophagus_box(grid: &Grid, a: &Anatomy) -> ([usize; 3], [usize; 3]) {
    let e = a.esophagus;
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (k, z) in grid.z.iter().enumerate() {
        if *z > e.z_top || *z < e.z_bottom {
            continue;
        }
        let (cx, cy) = e.centre(*z);
        let i0 = grid.fx(cx - e.rx).floor().max(0.0) as usize;
        let i1 = (grid.fx(cx + e.rx).ceil() as usize).min(grid.nx - 1);
        let j0 = grid.fy(cy - e.ry).floor().max(0.0) as usize;
        let j1 = (grid.fy(cy + e.ry).ceil() as usize).min(grid.ny - 1);
        lo = [lo[0].min(k), lo[1].min(j0), lo[2].min(i0)];
        hi = [hi[0].max(k), hi[1].max(j1), hi[2].max(i1)];
    }
    if lo[0] == usize::MAX {
        return ([0; 3], [0; 3]);
    }
    (
        lo,
        [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1],
    )
}

fn crop(data: &[u8], grid: &Grid, (lo, shape): ([usize; 3], [usize; 3])) -> (Vec<u8>, [usize; 3]) {
    let mut out = Vec::with_capacity(shape.iter().product());
    for k in lo[0]..lo[0] + shape[0] {
        for j in lo[1]..lo[1] + shape[1] {
            let start = grid.index(lo[2], j, k);
            out.extend_from_slice(&data[start..start + shape[2]]);
        }
    }
    (out, shape)
}

/// A generated patient in memory.
struct Patient {
    record: PatientRecord,
    objects: Vec<(
        dicom_object::FileDicomObject<dicom_object::InMemDicomObject>,
        String,
    )>,
    region: Vec<u8>,
    grid: Grid,
}

fn draw_plan(rng: &mut Rng, h: &Hospital, sbrt: bool) -> (f64, u32, u32, Technique) {
    if sbrt {
        let (rx, n) =
            [(54.0, 3), (55.0, 5), (60.0, 8), (50.0, 5)][rng.weighted(&[0.3, 0.35, 0.2, 0.15])];
        return (
            rx,
            n,
            1,
            if rng.bernoulli(0.7) {
                Technique::Vmat
            } else {
                Technique::Imrt
            },
        );
    }
    let (rx, n, per_day) =
        [(60.0, 30, 1), (66.0, 33, 1), (45.0, 30, 2)][rng.weighted(&[0.65, 0.2, 0.15])];
    let technique =
        [Technique::Conformal3d, Technique::Imrt, Technique::Vmat][rng.weighted(&h.technique_mix)];
    (rx, n, per_day, technique)
}

fn generate(h: &Hospital, seed: u64, index: usize, with_ct: bool) -> Patient {
    let mut rng = Rng::new(Rng::derive(seed, &h.name, index as u64));
    let patient_id = format!(
        "{}-{:04}",
        h.name.to_uppercase().replace("HOSPITAL", "H"),
        index + 1
    );
    let sbrt = rng.bernoulli(h.sbrt_share);
    let a: Anatomy = anatomy::draw(&mut rng, h.central_share, sbrt);
    let (rx, fractions, per_day, technique) = draw_plan(&mut rng, h, sbrt);
    let age = (rng.normal() * 9.0 + 66.0).clamp(40.0, 88.0).round();
    let female = rng.bernoulli(0.4);
    let chemo = !sbrt && rng.bernoulli(h.chemo_rate);
    let shape = DoseShape {
        technique,
        sbrt,
        angles: match rng.weighted(&[0.3, 0.7]) {
            0 => vec![0.0, 180.0],
            _ => {
                let t = rng.range(30.0, 75.0);
                vec![0.0, 180.0, t, t + 180.0]
            }
        },
        sparing: if technique == Technique::Conformal3d {
            0.0
        } else {
            (h.sparing_habit * rng.range(0.4, 1.4)).min(0.85)
        },
        far_wall_only: technique != Technique::Conformal3d && rng.bernoulli(h.far_wall_share),
        far_wall_cap: rng.range(0.6, 0.85),
        spill_scale: rng.range(0.3, 1.8),
        spill_reach: rng.range(0.5, 3.0),
        bath_scale: rng.range(0.4, 1.9),
        bath_reach: rng.range(0.5, 1.5),
    };
    // The dose grid covers the body in x/y and the esophagus in z.
    let s = h.dose_spacing;
    let nx = ((2.0 * a.body.0) / s).ceil() as usize + 1;
    let ny = ((2.0 * a.body.1) / s).ceil() as usize + 1;
    let z0 = a.esophagus.z_bottom - 15.0;
    let nz = ((a.esophagus.length() + 30.0) / s).ceil() as usize + 1;
    let grid = Grid::uniform([-a.body.0, -a.body.1, z0], [s, s, s], [nx, ny, nz]);
    let gy = dose::compute(&grid, &a, &shape, rx);
    let e: Exposure = risk::exposure(&grid, &gy, &a, fractions, &MODEL);
    let mu = risk::observed_logit(&MODEL, &e, age, female);
    let eps = rng.normal() * MODEL.sigma;
    let p_true = risk::logistic(mu + MODEL.beta_chemo * f64::from(u8::from(chemo)) + eps);
    let p_chemo = if sbrt { 0.0 } else { h.chemo_rate };
    let p_dose = (1.0 - p_chemo) * risk::expected_logistic(mu, MODEL.sigma)
        + p_chemo * risk::expected_logistic(mu + MODEL.beta_chemo, MODEL.sigma);
    let label = rng.bernoulli(p_true);

    // DICOM objects.
    let mut header = StudyHeader::deterministic(&patient_id, &rng.uid_root());
    header.patient_name = format!("Synthetic^{patient_id}");
    header.patient_sex = Some(if female { "F" } else { "M" }.into());
    header.patient_age = Some(format!("{:03}Y", age as u32));
    let rois = structures(h, &a);
    let (ss_uid, plan_uid) = (header.uid(), header.uid());
    let (ct_objects, images) = if with_ct {
        let (objs, refs) = ct::series(&header, &a, &contour_planes(h, &a), h.slice_spacing);
        (objs, Some(refs))
    } else {
        (Vec::new(), None)
    };
    let per_fraction = rx / f64::from(fractions);
    // VMAT: two arcs; 3D-CRT: one static field per gantry angle the dose was
    // shaped with; IMRT: five or more static beams, evenly spaced.
    let n_beams = match technique {
        Technique::Vmat => 2,
        Technique::Conformal3d => shape.angles.len().max(1),
        _ => shape.angles.len().max(5),
    };
    let beams: Vec<(f64, f64)> = (0..n_beams)
        .map(|b| {
            let angle = if technique == Technique::Conformal3d {
                shape.angles[b % shape.angles.len()]
            } else {
                (b as f64 * 360.0 / n_beams as f64 + 181.0) % 360.0
            };
            (angle, per_fraction / n_beams as f64)
        })
        .collect();
    let spec = PlanSpec {
        label: if sbrt { "SBRT".into() } else { "LUNG".into() },
        prescription_gy: Some(rx),
        fractions,
        fractions_per_day: per_day,
        technique,
        beams,
    };
    let ss = write::rt_struct_on_images(&header, &ss_uid, "PLANNING", &rois, images.as_ref());
    let plan = write::rt_plan_spec(&header, &plan_uid, &ss_uid, &spec);
    let dose_obj = write::rt_dose(
        &header,
        &grid,
        &gy,
        &DoseEncoding {
            bits: h.dose_bits,
            rle: h.dose_rle,
            referenced_plan_uid: Some(plan_uid.clone()),
            ..Default::default()
        },
    );
    let dose_uid = dose_obj
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    let record = PatientRecord {
        patient_id: patient_id.clone(),
        hospital: h.name.clone(),
        split: String::new(),
        label: u8::from(label),
        p_true,
        p_dose,
        study_instance_uid: header.study_instance_uid.clone(),
        rtstruct_uid: ss_uid,
        rtplan_uid: plan_uid,
        rtdose_uid: dose_uid,
        age: age as u32,
        sex: if female { "F".into() } else { "M".into() },
        concurrent_chemo: u8::from(chemo),
        prescription_gy: rx,
        fractions,
        fractions_per_day: per_day,
        technique: technique.label().into(),
        sbrt: u8::from(sbrt),
        location: match a.location {
            Location::Central => "central".into(),
            Location::Peripheral => "peripheral".into(),
        },
        nodal: u8::from(a.nodal),
        esophagus_mean_gy: e.mean_gy,
        esophagus_mean_eqd2_gy: e.mean_eqd2_gy,
        esophagus_v35_pct: e.v35_pct,
        esophagus_v50_pct: e.v50_pct,
        esophagus_v60_pct: e.v60_pct,
        risk_length_cm: e.length_cm,
        risk_region_cc: e.region_cc,
        truth_file: format!("truth/{patient_id}.npy"),
        grid: Some(grid.clone()),
        truth_box: esophagus_box(&grid, &a),
    };
    let mut objects = vec![
        (ss, "rtstruct.dcm".to_string()),
        (plan, "rtplan.dcm".to_string()),
        (dose_obj, "rtdose.dcm".to_string()),
    ];
    objects.extend(
        ct_objects
            .into_iter()
            .enumerate()
            .map(|(i, o)| (o, format!("ct_{:04}.dcm", i + 1))),
    );
    Patient {
        record,
        objects,
        region: e.region,
        grid,
    }
}

/// The planning slices: every `slice_spacing` mm over the esophagus ±15 mm.
fn contour_planes(h: &Hospital, a: &Anatomy) -> Vec<f64> {
    let z_lo = a.esophagus.z_bottom - 15.0;
    let n = ((a.esophagus.length() + 30.0) / h.slice_spacing).floor() as usize;
    (0..=n).map(|k| z_lo + k as f64 * h.slice_spacing).collect()
}

/// The ROIs a planner would draw, with the hospital's names and habits.
fn structures(h: &Hospital, a: &Anatomy) -> Vec<RoiSpec> {
    let zs = contour_planes(h, a);
    let planes = |f: &dyn Fn(f64) -> Option<Vec<Vec<[f64; 2]>>>| -> Vec<ContourPlane> {
        zs.iter()
            .filter_map(|z| f(*z).map(|polygons| ContourPlane { z: *z, polygons }))
            .collect()
    };
    let ell = |e: anatomy::Ellipsoid| {
        move |z: f64| {
            e.section(z)
                .map(|(cx, cy, ax, ay)| vec![ellipse(cx, cy, ax, ay)])
        }
    };
    let roi =
        |number: i64, name: &str, kind: &str, planes: Vec<ContourPlane>, color: [u8; 3]| RoiSpec {
            number,
            name: name.into(),
            interpreted_type: kind.into(),
            planes,
            color,
        };
    let eso = a.esophagus;
    let (trim_top, trim_bottom) = h.contour_trim;
    let mut rois = vec![
        roi(
            1,
            "BODY",
            "EXTERNAL",
            planes(&|_| Some(vec![ellipse(0.0, 0.0, a.body.0, a.body.1)])),
            [0, 255, 0],
        ),
        roi(
            2,
            &h.esophagus_name,
            "ORGAN",
            planes(&|z| {
                (z <= eso.z_top - trim_top && z >= eso.z_bottom + trim_bottom).then(|| {
                    let (cx, cy) = eso.centre(z);
                    vec![ellipse(cx, cy, eso.rx, eso.ry)]
                })
            }),
            [255, 128, 0],
        ),
        roi(3, "Heart", "ORGAN", planes(&ell(a.heart)), [255, 0, 0]),
        roi(
            4,
            "SpinalCord",
            "ORGAN",
            planes(&|_| Some(vec![circle(a.cord.0, a.cord.1, a.cord.2, 32)])),
            [255, 255, 0],
        ),
        roi(5, "GTV", "GTV", planes(&ell(a.gtv)), [255, 0, 255]),
        roi(6, "PTV", "PTV", planes(&ell(a.ptv)), [0, 255, 255]),
        roi(
            7,
            "Esophagus_PRV",
            "AVOIDANCE",
            planes(&|z| {
                (z <= eso.z_top - trim_top && z >= eso.z_bottom + trim_bottom).then(|| {
                    let (cx, cy) = eso.centre(z);
                    vec![ellipse(cx, cy, eso.rx + 5.0, eso.ry + 5.0)]
                })
            }),
            [128, 64, 0],
        ),
    ];
    match &h.lungs_name {
        Some(name) => {
            let (l, r) = (a.lung_left, a.lung_right);
            rois.push(roi(
                8,
                name,
                "ORGAN",
                planes(&|z| {
                    let polys: Vec<Vec<[f64; 2]>> = [l, r]
                        .iter()
                        .filter_map(|e| {
                            e.section(z).map(|(cx, cy, ax, ay)| ellipse(cx, cy, ax, ay))
                        })
                        .collect();
                    (!polys.is_empty()).then_some(polys)
                }),
                [0, 128, 255],
            ));
        }
        None => {
            rois.push(roi(
                8,
                "Lung_L",
                "ORGAN",
                planes(&ell(a.lung_left)),
                [0, 128, 255],
            ));
            rois.push(roi(
                9,
                "Lung_R",
                "ORGAN",
                planes(&ell(a.lung_right)),
                [0, 64, 255],
            ));
        }
    }
    rois
}

/// Write a u8 mask as a NumPy .npy file, shape (nz, ny, nx).
pub fn write_npy(path: &Path, data: &[u8], shape: [usize; 3]) -> std::io::Result<()> {
    let mut header = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        shape[0], shape[1], shape[2]
    );
    // Magic (6) + version (2) + length (2) + header, padded to 64 with '\n' last.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(data)?;
    f.flush()
}

/// What was generated, with the calibration figures.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub patients: usize,
    pub per_hospital: Vec<HospitalSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HospitalSummary {
    pub hospital: String,
    pub patients: usize,
    pub incidence_conventional: f64,
    pub incidence_sbrt: Option<f64>,
    pub auc_p_dose: f64,
    pub auc_mean_dose: f64,
    pub esophagus_mean_gy_median: f64,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} patients (synthetic data; esorisk is a research tool, not a medical device)",
            self.patients
        );
        // Rates and AUCs that a handful of patients cannot define print as "-".
        let pct = |v: f64| {
            if v.is_finite() {
                format!("{:.1} %", (100.0 * v).abs())
            } else {
                "-".into()
            }
        };
        let auc = |v: f64| {
            if v.is_finite() {
                format!("{v:.3}")
            } else {
                "-".into()
            }
        };
        for h in &self.per_hospital {
            let _ = writeln!(
                o,
                "  {:<10} n={:<4} grade>=2 incidence {} conventional, {} SBRT; AUC of p_dose {}, of esophagus mean dose {}; median esophagus Dmean {:.1} Gy",
                h.hospital,
                h.patients,
                pct(h.incidence_conventional),
                h.incidence_sbrt.map(pct).unwrap_or_else(|| "-".into()),
                auc(h.auc_p_dose),
                auc(h.auc_mean_dose),
                h.esophagus_mean_gy_median
            );
        }
        o
    }
}

/// Generate `hospitals` (name, number of patients) into `out`. Hospital 1
/// (the first) is split stratified into `train` and `internal` with
/// `train_share`; the others are `external`.
pub fn generate_cohort(
    out: &Path,
    hospitals: &[(Hospital, usize)],
    seed: u64,
    train_share: f64,
    with_ct: bool,
) -> Result<Summary, String> {
    std::fs::create_dir_all(out.join("truth")).map_err(|e| e.to_string())?;
    let mut all: Vec<PatientRecord> = Vec::new();
    let mut per_hospital = Vec::new();
    for (hi, (h, n)) in hospitals.iter().enumerate() {
        let records = generate_hospital(out, h, *n, seed, with_ct)?;
        let mut records = records;
        // Stratified split of the first hospital; deterministic.
        if hi == 0 {
            let mut rng = Rng::new(Rng::derive(seed, "split", 0));
            for lab in [0u8, 1] {
                let mut idx: Vec<usize> = (0..records.len())
                    .filter(|i| records[*i].label == lab)
                    .collect();
                for i in (1..idx.len()).rev() {
                    let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                    idx.swap(i, j);
                }
                let n_train = (idx.len() as f64 * train_share).round() as usize;
                for (rank, i) in idx.iter().enumerate() {
                    records[*i].split = if rank < n_train {
                        "train".into()
                    } else {
                        "internal".into()
                    };
                }
            }
        } else {
            for r in &mut records {
                r.split = "external".into();
            }
        }
        per_hospital.push(summarise(h, &records));
        all.extend(records);
    }
    write_labels(out, &all)?;
    write_cohort_json(out, hospitals, seed, &all)?;
    Ok(Summary {
        patients: all.len(),
        per_hospital,
    })
}

fn generate_hospital(
    out: &Path,
    h: &Hospital,
    n: usize,
    seed: u64,
    with_ct: bool,
) -> Result<Vec<PatientRecord>, String> {
    crate::par::map(
        n,
        crate::par::threads().min(4),
        |i| write_patient(out, generate(h, seed, i, with_ct)),
        |_| {},
    )
    .into_iter()
    .collect()
}

fn write_patient(out: &Path, p: Patient) -> Result<PatientRecord, String> {
    let dir = out.join(&p.record.patient_id);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for (obj, name) in &p.objects {
        obj.write_to_file(dir.join(name))
            .map_err(|e| format!("{}: {e}", p.record.patient_id))?;
    }
    let (data, shape) = crop(&p.region, &p.grid, p.record.truth_box);
    write_npy(&out.join(&p.record.truth_file), &data, shape).map_err(|e| e.to_string())?;
    Ok(p.record)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summarise(h: &Hospital, r: &[PatientRecord]) -> HospitalSummary {
    let conv: Vec<&PatientRecord> = r.iter().filter(|p| p.sbrt == 0).collect();
    let sbrt: Vec<&PatientRecord> = r.iter().filter(|p| p.sbrt == 1).collect();
    let rate = |v: &[&PatientRecord]| {
        v.iter().map(|p| f64::from(p.label)).sum::<f64>() / v.len().max(1) as f64
    };
    let labels: Vec<bool> = r.iter().map(|p| p.label == 1).collect();
    HospitalSummary {
        hospital: h.name.clone(),
        patients: r.len(),
        incidence_conventional: rate(&conv),
        incidence_sbrt: (!sbrt.is_empty()).then(|| rate(&sbrt)),
        auc_p_dose: risk::auc(&r.iter().map(|p| p.p_dose).collect::<Vec<_>>(), &labels),
        auc_mean_dose: risk::auc(
            &r.iter()
                .map(|p| p.esophagus_mean_eqd2_gy)
                .collect::<Vec<_>>(),
            &labels,
        ),
        esophagus_mean_gy_median: median(r.iter().map(|p| p.esophagus_mean_gy).collect()),
    }
}

fn write_labels(out: &Path, records: &[PatientRecord]) -> Result<(), String> {
    let mut s = String::from(
        "patient_id,hospital,split,label,p_true,p_dose,study_instance_uid,rtstruct_uid,rtplan_uid,rtdose_uid,age,sex,concurrent_chemo,prescription_gy,fractions,fractions_per_day,technique,sbrt,location,nodal,esophagus_mean_gy,esophagus_mean_eqd2_gy,esophagus_v35_pct,esophagus_v50_pct,esophagus_v60_pct,risk_length_cm,risk_region_cc,truth_file\n",
    );
    for r in records {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.6},{:.6},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.2},{:.2},{:.2},{:.3},{:.3},{}",
            r.patient_id,
            r.hospital,
            r.split,
            r.label,
            r.p_true,
            r.p_dose,
            r.study_instance_uid,
            r.rtstruct_uid,
            r.rtplan_uid,
            r.rtdose_uid,
            r.age,
            r.sex,
            r.concurrent_chemo,
            r.prescription_gy,
            r.fractions,
            r.fractions_per_day,
            r.technique,
            r.sbrt,
            r.location,
            r.nodal,
            r.esophagus_mean_gy,
            r.esophagus_mean_eqd2_gy,
            r.esophagus_v35_pct,
            r.esophagus_v50_pct,
            r.esophagus_v60_pct,
            r.risk_length_cm,
            r.risk_region_cc,
            r.truth_file
        );
    }
    std::fs::write(out.join("labels.csv"), s).map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct CohortJson<'a> {
    generator: String,
    seed: u64,
    disclaimer: &'static str,
    risk_model: RiskModel,
    risk_model_formula: &'static str,
    hospitals: Vec<(&'a Hospital, usize)>,
    truth_masks: &'static str,
    patients: Vec<PatientGrid<'a>>,
}

#[derive(Serialize)]
struct PatientGrid<'a> {
    patient_id: &'a str,
    truth_file: &'a str,
    /// The RT Dose grid: centre of voxel (0, 0, 0), mm.
    origin_mm: [f64; 3],
    spacing_mm: [f64; 3],
    /// (nz, ny, nx) of the whole dose grid.
    shape: [usize; 3],
    /// Where the saved mask sits in the dose grid: first (k, j, i), and its
    /// (nz, ny, nx), the order of the .npy array.
    truth_offset: [usize; 3],
    truth_shape: [usize; 3],
}

fn write_cohort_json(
    out: &Path,
    hospitals: &[(Hospital, usize)],
    seed: u64,
    records: &[PatientRecord],
) -> Result<(), String> {
    let patients = records
        .iter()
        .filter_map(|r| {
            let g = r.grid.as_ref()?;
            Some(PatientGrid {
                patient_id: &r.patient_id,
                truth_file: &r.truth_file,
                origin_mm: [g.x0, g.y0, g.z[0]],
                spacing_mm: [g.dx, g.dy, if g.nz() > 1 { g.z[1] - g.z[0] } else { g.dx }],
                shape: [g.nz(), g.ny, g.nx],
                truth_offset: r.truth_box.0,
                truth_shape: r.truth_box.1,
            })
        })
        .collect();
    let doc = CohortJson {
        generator: format!("esorisk {}", env!("CARGO_PKG_VERSION")),
        seed,
        disclaimer: "Synthetic data from a stated model; not patient data. esorisk is a research tool, not a medical device.",
        risk_model: MODEL,
        risk_model_formula: "logit p = beta0 + beta_length * L_cm + beta_chemo * chemo + beta_age * (age - 65) / 10 + beta_female * female + N(0, sigma^2); L_cm = sum over esophagus slices of dz * logistic((min EQD2 over the slice - threshold) / softness)",
        hospitals: hospitals.iter().map(|(h, n)| (h, *n)).collect(),
        truth_masks: "truth/<patient>.npy: uint8 array of shape truth_shape (nz, ny, nx), a box of the patient's RT Dose grid starting at voxel truth_offset (k, j, i); grid origin = centre of voxel (0, 0, 0), HFS patient coordinates in mm; 1 marks the esophagus (voxel centre inside) in slices whose whole circumference receives at least the threshold EQD2",
        patients,
    };
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(out.join("cohort.json"), text).map_err(|e| e.to_string())
}

/// The paper-shaped preset: hospital 1 with 336 patients (235 train / 101
/// internal), hospitals 2 and 3 with 57 and 95 (external).
pub fn paper_preset() -> Vec<(Hospital, usize)> {
    vec![
        (Hospital::preset("hospital1"), 336),
        (Hospital::preset("hospital2"), 57),
        (Hospital::preset("hospital3"), 95),
    ]
}
