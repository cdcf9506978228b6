//! Which ROI is which organ: TG-263 names and the variants seen in practice.
//!
//! Names are compared after lower-casing and dropping everything but
//! letters and digits (umlauts spelled out, an "OAR" prefix dropped).
//! Planning helper structures (PRVs, rings, "opt" and "avoid" structures,
//! expansions, an organ name with a margin such as "Esophagus_5mm") are
//! never taken for the organ itself.

use super::structure::{Roi, RoiInfo};

/// The organs and targets the scoring needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Organ {
    Esophagus,
    Ptv,
    Itv,
    Gtv,
    Lungs,
    Heart,
    SpinalCord,
}

impl Organ {
    pub const ALL: [Organ; 7] = [
        Organ::Esophagus,
        Organ::Ptv,
        Organ::Itv,
        Organ::Gtv,
        Organ::Lungs,
        Organ::Heart,
        Organ::SpinalCord,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Organ::Esophagus => "Esophagus",
            Organ::Ptv => "PTV",
            Organ::Itv => "ITV",
            Organ::Gtv => "GTV",
            Organ::Lungs => "Lungs",
            Organ::Heart => "Heart",
            Organ::SpinalCord => "SpinalCord",
        }
    }

    fn is_target(self) -> bool {
        matches!(self, Organ::Ptv | Organ::Itv | Organ::Gtv)
    }
}

/// The ROI chosen for an organ and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Match {
    pub organ: Organ,
    pub roi_number: i64,
    pub roi_name: String,
    pub reason: String,
    /// Other ROIs that looked like candidates, with why they lost.
    pub passed_over: Vec<String>,
    /// Other ROIs that match exactly as well as the chosen one (two
    /// "Esophagus", or "esophagus" and "oesophagus"): which one is meant
    /// cannot be told from the names. Empty for targets, where the largest
    /// extent decides.
    pub tied: Vec<String>,
}

fn norm(s: &str) -> String {
    let mut n = String::with_capacity(s.len());
    for c in s.chars() {
        // German umlauts as they are spelled without them (Ösophagus).
        match c {
            'ä' | 'Ä' => n.push_str("ae"),
            'ö' | 'Ö' => n.push_str("oe"),
            'ü' | 'Ü' => n.push_str("ue"),
            'ß' => n.push_str("ss"),
            c if c.is_ascii_alphanumeric() => n.push(c.to_ascii_lowercase()),
            _ => {}
        }
    }
    n
}

/// An organ's name with an "OAR" prefix dropped (OAR_Esophagus).
fn organ_name(name: &str) -> String {
    let n = norm(name);
    match n.strip_prefix("oar") {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => n,
    }
}

/// An organ's name with a margin in it ("Esophagus_5mm", "Eso_exp3",
/// "Esophagus 0.5cm"): an expansion of the organ, not the organ. Targets
/// are left alone: a PTV is a margin by definition.
fn margin(name: &str) -> bool {
    let raw = name.to_ascii_lowercase();
    let tokens: Vec<&str> = raw
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
        .filter(|t| !t.is_empty())
        .collect();
    let with_unit = |t: &str| {
        ["mm", "cm"].iter().any(|u| {
            t.strip_suffix(u).is_some_and(|v| {
                let v = v.trim_start_matches(|c: char| c.is_ascii_alphabetic());
                !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')
            })
        })
    };
    tokens.iter().any(|t| {
        with_unit(t)
            || ["exp", "marg", "margin", "mrg"].contains(t)
            || t.strip_prefix("exp")
                .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
    })
}

/// Helper structures that carry an organ's name but are not the organ.
fn helper(name: &str) -> Option<&'static str> {
    let n = norm(name);
    let raw = name.to_ascii_lowercase();
    if n.contains("prv") {
        return Some("a planning risk volume (PRV)");
    }
    for (w, why) in [
        ("ring", "a ring structure"),
        ("opt", "an optimisation structure"),
        ("avoid", "an avoidance structure"),
        ("wall", "a wall structure"),
        ("expand", "an expansion"),
        ("dose", "a dose-derived structure"),
    ] {
        if n.contains(w) {
            return Some(why);
        }
    }
    if raw.starts_with("z_") || raw.starts_with("zz") || raw.starts_with('_') {
        return Some("a helper structure (name starts with z_ or _)");
    }
    // "PTV-GTV", "Lung-PTV": a minus followed by a structure name.
    let minus_name = raw.match_indices('-').any(|(i, _)| {
        raw[i + 1..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
    });
    if raw.contains('+') || (minus_name && !raw.starts_with("lungs-") && !raw.starts_with("lung-"))
    {
        return Some("a Boolean combination of structures");
    }
    None
}

/// How well `name` names `organ`: 3 exact TG-263, 2 common variant, 1 loose.
fn score(organ: Organ, name: &str) -> u8 {
    let n = if organ.is_target() {
        norm(name)
    } else {
        organ_name(name)
    };
    let raw = name.to_ascii_lowercase();
    match organ {
        Organ::Esophagus => {
            if name == "Esophagus" {
                3
            } else if [
                "esophagus",
                "oesophagus",
                "esophag",
                "oesophag",
                "esoph",
                "oesoph",
                "speiseroehre",
            ]
            .contains(&n.as_str())
            {
                2
            } else if n.starts_with("esoph") || n.starts_with("oesoph") {
                1
            } else {
                0
            }
        }
        Organ::Ptv | Organ::Itv | Organ::Gtv => {
            let key = match organ {
                Organ::Ptv => "ptv",
                Organ::Itv => "itv",
                _ => "gtv",
            };
            if n == key {
                3
            } else if n.starts_with(key) || (organ == Organ::Itv && n.starts_with("igtv")) {
                2
            } else {
                0
            }
        }
        Organ::Lungs => {
            if name == "Lungs" || raw == "lungs-gtv" || raw == "lungs-itv" || raw == "lungs-ptv" {
                3
            } else if [
                "lungs",
                "lung",
                "lungtotal",
                "totallung",
                "lungsgtv",
                "lungsitv",
                "lungsptv",
                "bilaterallungs",
                "lungbilat",
            ]
            .contains(&n.as_str())
            {
                2
            } else {
                0
            }
        }
        Organ::Heart => {
            if name == "Heart" {
                3
            } else if n == "heart" || n == "cor" || n == "coeur" {
                2
            } else {
                0
            }
        }
        Organ::SpinalCord => {
            if name == "SpinalCord" {
                3
            } else if [
                "spinalcord",
                "cord",
                "spinecord",
                "myelon",
                "medulla",
                "spinal",
            ]
            .contains(&n.as_str())
            {
                2
            } else if n.starts_with("spinalcord") || n.starts_with("cord") {
                1
            } else {
                0
            }
        }
    }
}

/// The left and right lung ROIs, when the lungs are contoured in halves.
pub fn lung_halves(rois: &[Roi]) -> Option<(&Roi, &Roi)> {
    let side = |names: &[&str]| {
        rois.iter().find(|r| {
            let n = norm(&r.info.name);
            names.contains(&n.as_str()) && helper(&r.info.name).is_none() && !r.planes.is_empty()
        })
    };
    let left = side(&[
        "lungl",
        "lunglt",
        "lungleft",
        "leftlung",
        "llung",
        "lunglinks",
        "lungsin",
    ])?;
    let right = side(&[
        "lungr",
        "lungrt",
        "lungright",
        "rightlung",
        "rlung",
        "lungrechts",
        "lungdx",
    ])?;
    Some((left, right))
}

/// Pick the ROI for each organ among `rois`. Only ROIs with contours count.
pub fn match_organs(rois: &[Roi]) -> Vec<Match> {
    Organ::ALL
        .iter()
        .filter_map(|o| match_organ(*o, rois))
        .collect()
}

pub fn match_organ(organ: Organ, rois: &[Roi]) -> Option<Match> {
    let mut passed = Vec::new();
    let mut tied: Vec<String> = Vec::new();
    let mut best: Option<(&RoiInfo, u8, f64)> = None;
    for r in rois {
        let s = score(organ, &r.info.name);
        let typed = organ.is_target()
            && r.info.interpreted_type.as_deref() == Some(organ.label())
            && s == 0
            && helper(&r.info.name).is_none();
        if s == 0 && !typed {
            continue;
        }
        if let Some(why) = helper(&r.info.name) {
            passed.push(format!("{:?}: {why}", r.info.name));
            continue;
        }
        if !organ.is_target() && margin(&r.info.name) {
            passed.push(format!(
                "{:?}: an expansion (a margin in its name)",
                r.info.name
            ));
            continue;
        }
        if r.planes.is_empty() {
            passed.push(format!("{:?}: no closed contours", r.info.name));
            continue;
        }
        let s = if typed { 1 } else { s };
        // Among targets of equal name quality, prefer the largest extent in z
        // (the outermost target, e.g. PTV over PTV_boost).
        let extent = r.planes.last().map(|p| p.z).unwrap_or(0.0)
            - r.planes.first().map(|p| p.z).unwrap_or(0.0);
        let better = match best {
            None => true,
            Some((_, bs, be)) => s > bs || (s == bs && organ.is_target() && extent > be),
        };
        if better {
            if let Some((old, _, _)) = best {
                passed.push(format!(
                    "{:?}: a weaker match than the one chosen",
                    old.name
                ));
            }
            for t in tied.drain(..) {
                passed.push(format!("{t}: a weaker match than the one chosen"));
            }
            best = Some((&r.info, s, extent));
        } else if best.is_some_and(|(_, bs, _)| bs == s) && !organ.is_target() {
            tied.push(format!("{:?} (ROI {})", r.info.name, r.info.number));
        } else {
            passed.push(format!(
                "{:?}: a weaker match than the one chosen",
                r.info.name
            ));
        }
    }
    let (info, s, _) = best?;
    let reason = match s {
        3 => format!("TG-263 name {:?}", organ.label()),
        2 => format!("common variant of {:?}", organ.label()),
        _ if info.interpreted_type.as_deref() == Some(organ.label())
            && score(organ, &info.name) == 0 =>
        {
            format!("RT ROI Interpreted Type {}", organ.label())
        }
        _ => format!("name starts like {:?}", organ.label()),
    };
    Some(Match {
        organ,
        roi_number: info.number,
        roi_name: info.name.clone(),
        reason,
        passed_over: passed,
        tied,
    })
}

#[cfg(test)]
mod tests {
    use super::super::structure::{ContourPlane, Roi, RoiInfo};
    use super::*;

    fn roi(n: i64, name: &str, z: &[f64]) -> Roi {
        Roi {
            info: RoiInfo {
                number: n,
                name: name.into(),
                interpreted_type: None,
                frame_of_reference_uid: None,
                planes: z.len(),
                notes: vec![],
            },
            planes: z
                .iter()
                .map(|z| ContourPlane {
                    z: *z,
                    polygons: vec![vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]],
                })
                .collect(),
        }
    }

    #[test]
    fn esophagus_variants_and_prv_excluded() {
        for name in [
            "Esophagus",
            "ESOPHAGUS",
            "Oesophagus",
            "Esoph",
            "esophagus",
            "OESOPHAGUS",
        ] {
            let rois = vec![roi(1, "esophagus_PRV", &[0.0]), roi(2, name, &[0.0])];
            let m = match_organ(Organ::Esophagus, &rois).expect(name);
            assert_eq!(m.roi_number, 2, "{name}");
            assert!(
                m.passed_over.iter().any(|p| p.contains("PRV")),
                "{:?}",
                m.passed_over
            );
        }
        let rois = vec![
            roi(1, "Esophagus_PRV05", &[0.0]),
            roi(2, "Esoph_opt", &[0.0]),
        ];
        assert!(match_organ(Organ::Esophagus, &rois).is_none());
    }

    #[test]
    fn expansions_are_not_the_organ_and_prefixes_and_umlauts_are_read() {
        for name in [
            "Esophagus_5mm",
            "Esophagus 0.5cm",
            "Esoph_exp",
            "Esophagus_exp3",
            "Esophagus margin",
            "OAR_Esophagus_3mm",
        ] {
            let rois = vec![roi(1, name, &[0.0])];
            assert!(match_organ(Organ::Esophagus, &rois).is_none(), "{name}");
        }
        for name in [
            "OAR_Esophagus",
            "OAR Esoph",
            "Ösophagus",
            "Speiseröhre",
            "Esophagus_Thoracic",
            "Esophagus2",
        ] {
            let rois = vec![roi(1, "Esophagus_5mm", &[0.0]), roi(2, name, &[0.0])];
            let m = match_organ(Organ::Esophagus, &rois).expect(name);
            assert_eq!(m.roi_number, 2, "{name}");
        }
        // A target keeps its margin: "PTV_5mm" is the 5 mm PTV.
        let rois = vec![roi(1, "PTV_5mm", &[0.0])];
        assert_eq!(match_organ(Organ::Ptv, &rois).expect("ptv").roi_number, 1);
        assert!(!margin("Cord"));
        assert!(!margin("Esophagus_Thoracic"));
    }

    #[test]
    fn equally_good_organ_names_are_ambiguous() {
        let rois = vec![
            roi(1, "esophagus", &[0.0]),
            roi(2, "Heart", &[0.0]),
            roi(3, "Oesophagus", &[0.0]),
        ];
        let m = match_organ(Organ::Esophagus, &rois).expect("match");
        assert_eq!(m.roi_number, 1);
        assert_eq!(m.tied, vec!["\"Oesophagus\" (ROI 3)".to_string()]);
        // A better name settles it, and what tied before it is passed over.
        let mut better = rois.clone();
        better.push(roi(4, "Esophagus", &[0.0]));
        let m = match_organ(Organ::Esophagus, &better).expect("match");
        assert_eq!(m.roi_number, 4);
        assert!(m.tied.is_empty(), "{:?}", m.tied);
        assert_eq!(m.passed_over.len(), 2, "{:?}", m.passed_over);
        // Targets of equal names are told apart by their extent.
        let ptvs = vec![roi(1, "PTV", &[0.0, 5.0]), roi(2, "PTV", &[0.0, 9.0])];
        let m = match_organ(Organ::Ptv, &ptvs).expect("match");
        assert_eq!(m.roi_number, 2);
        assert!(m.tied.is_empty());
    }

    #[test]
    fn exact_tg263_beats_variants_and_targets_prefer_the_largest() {
        let rois = vec![roi(1, "esoph", &[0.0]), roi(2, "Esophagus", &[0.0])];
        let m = match_organ(Organ::Esophagus, &rois).expect("match");
        assert_eq!(m.roi_name, "Esophagus");
        assert!(m.reason.contains("TG-263"));
        let rois = vec![
            roi(1, "PTV_boost", &[0.0, 3.0]),
            roi(2, "PTV_60", &[0.0, 3.0, 6.0, 9.0]),
        ];
        assert_eq!(
            match_organ(Organ::Ptv, &rois).expect("ptv").roi_name,
            "PTV_60"
        );
        let rois = vec![
            roi(1, "Lung_L", &[0.0]),
            roi(2, "Lungs-GTV", &[0.0]),
            roi(3, "Cord", &[0.0]),
            roi(4, "Heart", &[0.0]),
        ];
        assert_eq!(
            match_organ(Organ::Lungs, &rois).expect("lungs").roi_name,
            "Lungs-GTV"
        );
        assert_eq!(
            match_organ(Organ::SpinalCord, &rois)
                .expect("cord")
                .roi_name,
            "Cord"
        );
        assert_eq!(
            match_organ(Organ::Heart, &rois).expect("heart").roi_name,
            "Heart"
        );
    }
}
