//! `esorisk inspect`: a study's RT objects shown to a physicist as text,
//! JSON, or a DVH plot.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::rt::analysis::Analysis;
use crate::rt::study::{Object, Study};

/// The machine-readable form of `inspect`.
#[derive(Serialize)]
pub struct Report<'a> {
    pub study_instance_uid: Option<&'a str>,
    pub patient_id: Option<&'a str>,
    pub objects: &'a [Object],
    pub links: &'a [String],
    pub problems: &'a [String],
    /// Those of `problems` for which the study is not scored.
    pub blocking: &'a [String],
    pub dose: &'a crate::rt::dose::DoseInfo,
    pub dose_max_gy: f32,
    pub plan: Option<&'a crate::rt::plan::RtPlan>,
    pub structure_set: Option<StructureSetSummary<'a>>,
    pub ct_images: usize,
    pub analysis: &'a Analysis,
    pub disclaimer: &'static str,
}

#[derive(Serialize)]
pub struct StructureSetSummary<'a> {
    pub sop_instance_uid: &'a str,
    pub label: Option<&'a str>,
    pub rois: Vec<&'a crate::rt::structure::RoiInfo>,
}

pub const DISCLAIMER: &str = "esorisk is a research tool, not a medical device.";

pub fn report<'a>(study: &'a Study, analysis: &'a Analysis) -> Report<'a> {
    Report {
        study_instance_uid: study.study_instance_uid.as_deref(),
        patient_id: study.patient_id.as_deref(),
        objects: &study.objects,
        links: &study.links,
        problems: &study.problems,
        blocking: &study.blocking,
        dose: &study.dose.info,
        dose_max_gy: study.dose.max_gy(),
        plan: study.plan.as_ref(),
        structure_set: study.structures.as_ref().map(|s| StructureSetSummary {
            sop_instance_uid: &s.sop_instance_uid,
            label: s.label.as_deref(),
            rois: s.rois.iter().map(|r| &r.info).collect(),
        }),
        ct_images: study.ct_images,
        analysis,
        disclaimer: DISCLAIMER,
    }
}

/// The text form.
pub fn text(study: &Study, a: &Analysis) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Study {}  patient {}",
        study.study_instance_uid.as_deref().unwrap_or("?"),
        study.patient_id.as_deref().unwrap_or("?")
    );
    let _ = writeln!(o, "{DISCLAIMER}\n");
    let _ = writeln!(o, "Objects");
    let mut kinds: Vec<&str> = study.objects.iter().map(|o| o.kind.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    for k in kinds {
        let of: Vec<&Object> = study.objects.iter().filter(|o| o.kind == k).collect();
        if of.len() > 3 {
            let _ = writeln!(o, "  {k:<17} {} objects", of.len());
        } else {
            for x in of {
                let _ = writeln!(o, "  {k:<17} {}  {}", x.sop_instance_uid, x.path.display());
            }
        }
    }
    let _ = writeln!(o, "\nLinks");
    for l in &study.links {
        let _ = writeln!(o, "  {l}");
    }
    let d = &study.dose;
    let g = &d.grid;
    let _ = writeln!(o, "\nDose grid");
    let _ = writeln!(
        o,
        "  {} × {} × {} voxels, {:.2} × {:.2} mm, planes {:.2} mm apart{}",
        g.nx,
        g.ny,
        g.nz(),
        g.dx,
        g.dy,
        if g.nz() > 1 { g.z[1] - g.z[0] } else { 0.0 },
        if g.z
            .windows(2)
            .all(|w| ((w[1] - w[0]) - (g.z[1] - g.z[0])).abs() < 1e-3)
        {
            ""
        } else {
            " (uneven)"
        }
    );
    let [(x0, x1), (y0, y1), (z0, z1)] = g.extent();
    let _ = writeln!(
        o,
        "  x {x0:.1} to {x1:.1} mm, y {y0:.1} to {y1:.1} mm, z {z0:.1} to {z1:.1} mm ({})",
        d.info.orientation
    );
    let _ = writeln!(
        o,
        "  {} dose, {} summation, {} units, maximum {:.2} Gy",
        if d.info.dose_type.is_empty() {
            "untyped"
        } else {
            &d.info.dose_type
        },
        if d.info.summation.to_string().is_empty() {
            "no".to_string()
        } else {
            d.info.summation.to_string()
        },
        d.info.units,
        d.max_gy()
    );
    for n in &d.info.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    let _ = writeln!(o, "\nPlan");
    match &study.plan {
        Some(p) => {
            let rx = match (p.prescription_gy, p.fractions) {
                (Some(gy), Some(n)) => format!(
                    "{gy:.2} Gy in {n} fractions ({:.2} Gy per fraction)",
                    gy / f64::from(n)
                ),
                (Some(gy), None) => format!("{gy:.2} Gy, fractions unknown"),
                (None, Some(n)) => format!("prescription unknown, {n} fractions"),
                (None, None) => "prescription and fractions unknown".into(),
            };
            let _ = writeln!(o, "  {} {rx}", p.label.as_deref().unwrap_or(""));
            let _ = writeln!(o, "  prescription from: {}", p.prescription_source);
            if let Some(f) = p.fractions_per_day {
                let _ = writeln!(o, "  {f} fraction(s) per day");
            }
            let _ = writeln!(
                o,
                "  {} with {} treatment beam(s), {}",
                p.technique,
                p.beams,
                p.radiation_type
                    .as_deref()
                    .unwrap_or("radiation type not stated")
            );
            for n in &p.notes {
                let _ = writeln!(o, "  note: {n}");
            }
        }
        None => {
            let _ = writeln!(o, "  none");
        }
    }
    let _ = writeln!(o, "\nStructures matched");
    for m in &a.matches {
        let _ = writeln!(
            o,
            "  {:<11} ← {:?} (ROI {}): {}",
            m.organ.label(),
            m.roi_name,
            m.roi_number,
            m.reason
        );
        for p in &m.passed_over {
            let _ = writeln!(o, "  {:<11}   passed over {p}", "");
        }
        for t in &m.tied {
            let _ = writeln!(
                o,
                "  {:<11}   as good a match: {t} (ambiguous; the risk model refuses it)",
                ""
            );
        }
    }
    if let Some(ss) = &study.structures {
        for r in &ss.rois {
            for n in &r.info.notes {
                let _ = writeln!(o, "  note on {:?}: {n}", r.info.name);
            }
        }
    }
    let _ = writeln!(
        o,
        "\nDVH (physical dose{})",
        a.fractions
            .map(|_| format!("; EQD2 with α/β = {} Gy in brackets", a.alpha_beta))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "  {:<22} {:>8} {:>14} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "structure",
        "cm³",
        "Dmean Gy",
        "Dmax Gy",
        "D2cc Gy",
        "V20 %",
        "V35 %",
        "V50 %",
        "V60 %",
        "V70 %"
    );
    for s in &a.structures {
        let p = &s.physical;
        let e = s.eqd2.as_ref();
        let both = |v: f64, eq: Option<f64>| match eq {
            Some(q) => format!("{v:.2} [{q:.2}]"),
            None => format!("{v:.2}"),
        };
        let _ = writeln!(
            o,
            "  {:<22} {:>8.2} {:>14} {:>14} {:>14} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            format!(
                "{} ({})",
                s.organ.map(|o| o.label()).unwrap_or("ROI"),
                s.roi_name
            ),
            p.volume_cc,
            both(p.mean_gy, e.map(|e| e.mean_gy)),
            both(p.max_gy, e.map(|e| e.max_gy)),
            both(p.d2cc_gy, e.map(|e| e.d2cc_gy)),
            p.v20_pct,
            p.v35_pct,
            p.v50_pct,
            p.v60_pct,
            p.v70_pct
        );
        if p.outside_dose_grid_cc > 0.005 {
            let _ = writeln!(
                o,
                "  {:<22} {:.2} cm³ outside the dose grid (counted as 0 Gy)",
                "", p.outside_dose_grid_cc
            );
        }
    }
    for s in &a.structures {
        if let Some(l) = &s.lkb {
            let _ = writeln!(
                o,
                "\n  {} LKB NTCP, grade ≥ 2 esophagitis ({}: TD50 {} Gy, m {}, n {}, {} dose): {:.1} % (gEUD {:.2} Gy)",
                s.roi_name, l.model.source, l.model.td50_gy, l.model.m, l.model.n, l.dose, 100.0 * l.ntcp, l.geud_gy
            );
            let _ = writeln!(
                o,
                "  a published population model shown for reference, not esorisk's risk score"
            );
        }
    }
    for n in &a.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    if !study.problems.is_empty() {
        let _ = writeln!(o, "\nProblems");
        for p in &study.problems {
            if study.blocking.contains(p) {
                let _ = writeln!(o, "  {p} (not scored for this)");
            } else {
                let _ = writeln!(o, "  {p}");
            }
        }
    }
    o
}

/// Draw the cumulative DVH curves to a PNG file.
pub fn png(a: &Analysis, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    load_font()?;
    let root = BitMapBackend::new(path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let xmax = a
        .structures
        .iter()
        .map(|s| s.physical.max_gy)
        .fold(1.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cumulative DVH (physical dose) — research use only",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..101f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("Dose (Gy)")
        .y_desc("Volume (%)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in a.structures.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let label = format!(
            "{} ({})",
            s.organ.map(|o| o.label()).unwrap_or("ROI"),
            s.roi_name
        );
        chart
            .draw_series(LineSeries::new(
                s.curve.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Register a system TrueType font for plot text (once). The commands
/// that end in a plot call it before their long work, so a machine without a
/// font fails in seconds rather than after the tables are computed.
pub fn load_font() -> Result<(), String> {
    use std::sync::OnceLock;
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            const CANDIDATES: &[&str] = &[
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
            ];
            let bytes = CANDIDATES
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    "no TrueType font found for the plot (install fonts-dejavu-core)".to_string()
                })?;
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, leaked)
                .map_err(|_| "the font could not be loaded".to_string())
        })
        .clone()
}
