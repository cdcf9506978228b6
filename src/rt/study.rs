//! A study's RT objects, found among files and linked by reference:
//! RT Dose → RT Plan → RT Structure Set, checked for one frame of reference.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use serde::Serialize;

use super::dose::{self, DoseOptions, RtDose, Summation};
use super::plan::{self, RtPlan};
use super::structure::{self, StructureSet};
use super::{attr, RtError};
use crate::receive::sop;

/// One DICOM object seen in the input.
#[derive(Debug, Clone, Serialize)]
pub struct Object {
    pub kind: String,
    pub sop_instance_uid: String,
    pub path: PathBuf,
}

/// The RT objects of a study, linked and checked.
#[derive(Debug)]
pub struct Study {
    pub study_instance_uid: Option<String>,
    pub patient_id: Option<String>,
    pub objects: Vec<Object>,
    pub dose: RtDose,
    pub plan: Option<RtPlan>,
    pub structures: Option<StructureSet>,
    pub ct_images: usize,
    /// How the objects link, one line each.
    pub links: Vec<String>,
    /// What is missing or inconsistent, in plain words.
    pub problems: Vec<String>,
    /// Those of `problems` that make the dose wrong, not just unusual:
    /// objects of different patients, structures or plan in another frame
    /// of reference than the dose (their coordinates are not comparable),
    /// beam doses that do not add up to the plan.
    pub blocking: Vec<String>,
}

impl Study {
    /// The first problem that makes the dose wrong. Such a study is not
    /// scored, by the node or by `predict`.
    pub fn blocking_problem(&self) -> Option<&str> {
        self.blocking.first().map(String::as_str)
    }
}

/// Record a problem that makes the dose wrong.
fn block(problems: &mut Vec<String>, blocking: &mut Vec<String>, what: String) {
    problems.push(what.clone());
    blocking.push(what);
}

/// Every file under the given files and directories (recursively).
pub fn collect_files(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in inputs {
        walk(p, &mut out);
    }
    out.sort();
    out
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                walk(&e.path(), out);
            }
        }
    } else if p.is_file() {
        out.push(p.to_path_buf());
    }
}

/// Find, read and link the RT objects among `inputs`.
pub fn load(inputs: &[PathBuf], options: &DoseOptions) -> Result<Study, RtError> {
    // A mistyped path is named, not read as a folder without a dose.
    if let Some(missing) = inputs.iter().find(|p| !p.exists()) {
        return Err(RtError::Study {
            what: format!("{}: no such file or directory", missing.display()),
        });
    }
    let files = collect_files(inputs);
    let mut objects = Vec::new();
    let mut doses = Vec::new();
    let mut plans = Vec::new();
    let mut structure_sets = Vec::new();
    let mut ct_for: Vec<Option<String>> = Vec::new();
    let mut study_uids: Vec<String> = Vec::new();
    let mut patient_id = None;
    // Each Patient ID with the kinds of object that carry it.
    let mut patients: Vec<(String, Vec<&'static str>)> = Vec::new();
    let mut unreadable = Vec::new();
    let mut copies = Vec::new();
    let mut seen: std::collections::HashMap<String, PathBuf> = Default::default();
    for f in &files {
        let obj = match super::open(f) {
            Ok(o) => o,
            Err(_) => {
                if f.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")) {
                    unreadable.push(f.display().to_string());
                }
                continue;
            }
        };
        let class = attr::string(&obj, tags::SOP_CLASS_UID).unwrap_or_default();
        let uid = attr::string(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
        // A copy of an instance (the same export twice in a folder) is read
        // once; counted twice, it would look like two plans or structure
        // sets to choose between.
        if !uid.is_empty() {
            if let Some(first) = seen.get(&uid) {
                copies.push(format!("{} (as {})", f.display(), first.display()));
                continue;
            }
            seen.insert(uid.clone(), f.clone());
        }
        if let Some(s) = attr::string(&obj, tags::STUDY_INSTANCE_UID) {
            if !study_uids.contains(&s) {
                study_uids.push(s);
            }
        }
        let this_patient = attr::string(&obj, tags::PATIENT_ID);
        patient_id = patient_id.or_else(|| this_patient.clone());
        let kind = match class.as_str() {
            sop::RT_DOSE => {
                doses.push((f.clone(), obj));
                "RT Dose"
            }
            sop::RT_PLAN | sop::RT_ION_PLAN => {
                plans.push(plan::from_object(&obj));
                if class == sop::RT_PLAN {
                    "RT Plan"
                } else {
                    "RT Ion Plan"
                }
            }
            sop::RT_STRUCTURE_SET => {
                structure_sets.push(structure::from_object(&obj)?);
                "RT Structure Set"
            }
            sop::CT_IMAGE | sop::ENHANCED_CT_IMAGE => {
                ct_for.push(attr::string(&obj, tags::FRAME_OF_REFERENCE_UID));
                "CT Image"
            }
            _ => "other",
        };
        if let Some(id) = this_patient.filter(|_| kind != "other") {
            match patients.iter_mut().find(|(p, _)| *p == id) {
                Some((_, kinds)) if kinds.contains(&kind) => {}
                Some((_, kinds)) => kinds.push(kind),
                None => patients.push((id, vec![kind])),
            }
        }
        objects.push(Object {
            kind: kind.to_string(),
            sop_instance_uid: uid,
            path: f.clone(),
        });
    }
    let mut problems = Vec::new();
    let mut blocking = Vec::new();
    let mut links = Vec::new();
    if patients.len() > 1 {
        let who: Vec<String> = patients
            .iter()
            .map(|(id, kinds)| format!("{id:?} ({})", kinds.join(", ")))
            .collect();
        block(
            &mut problems,
            &mut blocking,
            format!(
                "the objects belong to different patients: Patient ID {}; one patient's dose is not measured in another's structures",
                who.join(", ")
            ),
        );
    }
    if !unreadable.is_empty() {
        problems.push(format!(
            "{} file(s) could not be read as DICOM: {}",
            unreadable.len(),
            unreadable.join(", ")
        ));
    }
    if !copies.is_empty() {
        problems.push(format!(
            "{} file(s) hold an instance already read, and were skipped: {}",
            copies.len(),
            copies.join(", ")
        ));
    }
    if study_uids.len() > 1 {
        problems.push(format!(
            "the input holds {} studies; objects are linked by reference, not by study",
            study_uids.len()
        ));
    }
    if doses.is_empty() {
        return Err(RtError::Study {
            what: "no RT Dose among the input files: there is no dose distribution to analyse"
                .into(),
        });
    }

    // Read every dose; keep those that read.
    let mut read = Vec::new();
    for (path, obj) in &doses {
        match dose::from_object(obj, options) {
            Ok(d) => read.push(d),
            Err(e) => problems.push(format!(
                "{} ({}) cannot be used: {e}",
                "RT Dose",
                path.display()
            )),
        }
    }
    if read.is_empty() {
        return Err(RtError::Study {
            what: problems.join("; "),
        });
    }

    // A dose summed over several plans (MULTI_PLAN) is the dose of their
    // course: when one is among the inputs it is what is scored, and its
    // plans together are the plan. Otherwise the plan is the one referenced
    // by a dose, else the only plan present.
    let course = summed_course(&read, &mut problems, &mut blocking);
    let referenced: Vec<String> = match &course {
        Some(set) => set.clone(),
        None => read
            .iter()
            .flat_map(|d| d.info.referenced_plan_uids.iter().cloned())
            .collect(),
    };
    let with_dose: Vec<&RtPlan> = plans
        .iter()
        .filter(|p| referenced.contains(&p.sop_instance_uid))
        .collect();
    let chosen = match &course {
        Some(set) => {
            let combined = combine_plans(set, &with_dose, &mut problems, &mut blocking);
            if let Some(p) = &combined {
                links.push(format!(
                    "RT Dose → {} RT Plans summed (MULTI_PLAN): {}",
                    set.len(),
                    p.label.as_deref().unwrap_or_default()
                ));
            }
            combined
        }
        None => choose_plan(with_dose, &mut problems, &mut blocking).cloned(),
    };
    let plan = match chosen {
        Some(p) if course.is_some() => Some(p),
        None if course.is_some() => None,
        Some(p) => {
            links.push(format!(
                "RT Dose → RT Plan {} (by reference)",
                p.sop_instance_uid
            ));
            if p.approval.as_deref() == Some("REJECTED") {
                problems.push("the RT Plan's Approval Status is REJECTED".into());
            }
            Some(p)
        }
        None => {
            let mut named: Vec<&str> = Vec::new();
            for u in &referenced {
                if !named.contains(&u.as_str()) {
                    named.push(u);
                }
            }
            if !named.is_empty() && !plans.is_empty() {
                // Another plan's prescription and fractions are not this
                // dose's: the plan it names must come.
                block(
                    &mut problems,
                    &mut blocking,
                    format!(
                        "the RT Dose was computed for RT Plan {}, which has not been received: its prescription and fractionation are unknown; send that plan",
                        named.join(" and ")
                    ),
                );
            } else if let Some(u) = named.first() {
                problems.push(format!(
                    "the RT Dose refers to RT Plan {u}, which is not among the input files"
                ));
            }
            if plans.len() == 1 {
                links.push(if named.is_empty() {
                    format!(
                        "RT Plan {} is the only plan present; used without a reference",
                        plans[0].sop_instance_uid
                    )
                } else {
                    format!(
                        "RT Plan {} is the only plan present and not the one the dose names; shown, not scored",
                        plans[0].sop_instance_uid
                    )
                });
                Some(plans[0].clone())
            } else if !named.is_empty() && plans.len() > 1 {
                None
            } else {
                if plans.len() > 1 {
                    problems.push(format!(
                        "{} RT Plans present and none referenced by the dose",
                        plans.len()
                    ));
                } else {
                    problems.push("no RT Plan: prescription and fractionation are unknown".into());
                }
                None
            }
        }
    };

    if let Some(p) = plan
        .as_ref()
        .filter(|p| referenced.contains(&p.sop_instance_uid))
    {
        newer_without_dose(p, &plans, &referenced, &mut problems);
    }

    if let Some(p) = plan
        .as_ref()
        .filter(|p| course.is_none() && p.fraction_groups > 1)
    {
        problems.push(format!(
            "the RT Plan has {} fraction groups, read as one course of {} fractions: EQD2 takes its dose as given in equal fractions, which for groups of different doses per fraction is an approximation",
            p.fraction_groups,
            p.fractions.map_or_else(|| "unknown".to_string(), |n| n.to_string())
        ));
    }

    // Choose and combine doses.
    // When the plan was found by reference, only its doses count; a plan
    // taken for lack of anything better constrains nothing.
    let plan_uid = plan
        .as_ref()
        .map(|p| p.sop_instance_uid.clone())
        .filter(|u| referenced.contains(u));
    let of_plan = |d: &RtDose| match &course {
        Some(set) => sorted(&d.info.referenced_plan_uids) == *set,
        None => plan_uid.is_none() || d.info.referenced_plan_uids.first() == plan_uid.as_ref(),
    };
    let mut candidates: Vec<RtDose> = read.into_iter().filter(|d| of_plan(d)).collect();
    if candidates.is_empty() {
        return Err(RtError::Study {
            what: "no RT Dose belongs to the chosen RT Plan".into(),
        });
    }
    let whole = |d: &RtDose| matches!(d.info.summation, Summation::Plan | Summation::MultiPlan);
    let dose = if candidates.iter().any(whole) {
        // Of several whole-plan doses (a dose recalculated and sent again),
        // the latest created; on a tie, the first. An RBE-weighted dose
        // (EFFECTIVE, as for protons) is the one prescribed and reported,
        // so it goes before a PHYSICAL dose of the same plan.
        let effective = |d: &RtDose| d.info.dose_type == "EFFECTIVE";
        let pos = candidates
            .iter()
            .enumerate()
            .filter(|(_, d)| whole(d))
            .min_by_key(|(i, d)| (!effective(d), std::cmp::Reverse(d.info.created.clone()), *i))
            .map_or(0, |(i, _)| i);
        let plan_doses = candidates
            .iter()
            .filter(|d| whole(d) && d.info.dose_type == candidates[pos].info.dose_type)
            .count();
        if effective(&candidates[pos]) && candidates.iter().any(|d| whole(d) && !effective(d)) {
            problems.push(format!(
                "the plan has an RBE-weighted (EFFECTIVE) and a PHYSICAL dose; the EFFECTIVE one ({}) is used",
                candidates[pos].info.sop_instance_uid
            ));
        }
        // Another whole-plan dose of the same type created at the same time
        // (or neither dated) with other values: which is current is
        // unknown. The same values under another UID (a second export) are
        // no question.
        let rival = candidates.iter().enumerate().find(|(i, d)| {
            *i != pos
                && whole(d)
                && d.info.dose_type == candidates[pos].info.dose_type
                && d.info.created == candidates[pos].info.created
                && (d.grid != candidates[pos].grid || d.gy != candidates[pos].gy)
        });
        if let Some((_, other)) = rival {
            block(
                &mut problems,
                &mut blocking,
                format!(
                    "whole-plan doses {} and {} of this plan differ and their creation dates ({}) do not tell which is current; send only the current one",
                    candidates[pos].info.sop_instance_uid,
                    other.info.sop_instance_uid,
                    candidates[pos].info.created.as_deref().unwrap_or("none")
                ),
            );
        }
        if plan_doses > 1 {
            problems.push(format!(
                "{plan_doses} whole-plan doses of this plan; the latest created ({}, {}) is used",
                candidates[pos].info.sop_instance_uid,
                candidates[pos].info.created.as_deref().unwrap_or("no date")
            ));
        } else if candidates.len() > 1 {
            links.push(format!(
                "plan dose {} used; {} other dose object(s) ignored",
                candidates[pos].info.sop_instance_uid,
                candidates.len() - 1
            ));
        }
        candidates.swap_remove(pos)
    } else if candidates
        .iter()
        .all(|d| matches!(d.info.summation, Summation::Beam | Summation::Brachy))
    {
        let n = candidates.len();
        check_beams(&candidates, &mut problems)?;
        let summed = RtDose::sum(candidates)?;
        if let Some(p) = &plan {
            if p.beams > n {
                block(
                    &mut problems,
                    &mut blocking,
                    format!(
                        "only {n} beam dose(s) for a plan with {} treatment beams: the summed dose is incomplete",
                        p.beams
                    ),
                );
            }
        }
        links.push(format!("{n} beam/brachy dose(s) summed on one grid"));
        summed
    } else if let Some(pos) = candidates
        .iter()
        .position(|d| d.info.summation == Summation::Fraction)
    {
        let mut d = candidates.swap_remove(pos);
        if let Some(p) = plan.as_ref().filter(|p| p.fraction_groups > 1) {
            return Err(RtError::Study {
                what: format!(
                    "the RT Dose is one fraction's dose and its plan has {} fraction groups of different fractions: which fraction it is, and how many like it were given, is unknown; send the plan's whole dose (PLAN)",
                    p.fraction_groups
                ),
            });
        }
        match plan.as_ref().and_then(|p| p.fractions) {
            Some(n) => {
                d.scale(f64::from(n));
                links.push(format!("fraction dose × {n} planned fractions"));
            }
            None => {
                // A plan that did not come is the reason, when it is one.
                return Err(RtError::Study {
                    what: blocking.first().cloned().unwrap_or_else(|| {
                        "the RT Dose is one fraction's dose and the number of fractions is unknown (no RT Plan)".into()
                    }),
                });
            }
        }
        d
    } else {
        // Neither a whole plan's, beams' nor a fraction's: a Dose Summation
        // Type esorisk does not know (or none), among these doses.
        let d = candidates
            .iter()
            .find(|d| matches!(d.info.summation, Summation::Other(_)))
            .unwrap_or(&candidates[0]);
        let said = match d.info.summation.to_string().as_str() {
            "" => "an empty Dose Summation Type (\"\")".to_string(),
            other => format!("an unknown Dose Summation Type (\"{other}\")"),
        };
        return Err(RtError::Study {
            what: format!(
                "RT Dose {} has {said}, which does not say whether it is a whole plan's dose, a fraction's or a beam's (esorisk reads PLAN, MULTI_PLAN, FRACTION, BEAM and BRACHY)",
                d.info.sop_instance_uid
            ),
        });
    };
    // Only the dose's own plan (by reference, or the one plan when the dose
    // names none) says what the dose should reach.
    let own_plan = plan
        .as_ref()
        .filter(|p| referenced.is_empty() || referenced.contains(&p.sop_instance_uid));
    check_dose(&dose, own_plan, &mut problems, &mut blocking);

    // The structure set: referenced by the plan, else the only one.
    let wanted = plan
        .as_ref()
        .and_then(|p| p.referenced_structure_set_uid.clone());
    let structures = match wanted
        .as_ref()
        .and_then(|u| structure_sets.iter().position(|s| &s.sop_instance_uid == u))
    {
        Some(i) => {
            links.push(format!(
                "RT Plan → RT Structure Set {} (by reference)",
                structure_sets[i].sop_instance_uid
            ));
            let chosen = structure_sets.swap_remove(i);
            if !structure_sets.is_empty() {
                // A structure set edited after planning: the plan's dose
                // was computed on the one it names, which is the one used.
                problems.push(format!(
                    "{} other RT Structure Set(s) not referenced by the RT Plan ignored ({})",
                    structure_sets.len(),
                    structure_sets
                        .iter()
                        .map(|s| s.sop_instance_uid.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Some(chosen)
        }
        None => {
            if let Some(u) = &wanted {
                if structure_sets.is_empty() {
                    problems.push(format!("the RT Plan refers to RT Structure Set {u}, which is not among the input files"));
                } else {
                    // Contours edited or redrawn after planning are not
                    // the ones the dose was planned on.
                    block(
                        &mut problems,
                        &mut blocking,
                        format!(
                            "the RT Plan was planned on RT Structure Set {u}, which has not been received: the structure set(s) present ({}) may not hold the contours the dose was planned on; send that structure set",
                            structure_sets
                                .iter()
                                .map(|s| s.sop_instance_uid.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
            // How a structure set taken without the plan's reference is
            // linked: used, or (the plan names another) only shown.
            let unreferenced = if wanted.is_some() {
                "shown, not scored (the RT Plan names another)"
            } else {
                "used without a reference"
            };
            // esorisk's own structure sets (a returned learned ROI among
            // the files) are no candidates while a planning one is there.
            let planning: Vec<usize> = (0..structure_sets.len())
                .filter(|&i| !structure_sets[i].written_by_esorisk)
                .collect();
            let uids = |sets: &[StructureSet]| {
                sets.iter()
                    .map(|s| s.sop_instance_uid.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if structure_sets.len() == 1 {
                links.push(format!(
                    "RT Structure Set {} is the only one present; {unreferenced}",
                    structure_sets[0].sop_instance_uid
                ));
                structure_sets.pop()
            } else if let [i] = planning[..] {
                let chosen = structure_sets.swap_remove(i);
                links.push(format!(
                    "RT Structure Set {} is the only one not written by esorisk; {unreferenced}",
                    chosen.sop_instance_uid
                ));
                problems.push(format!(
                    "RT Structure Set(s) written by esorisk (a returned learned ROI) are not inputs: {}",
                    uids(&structure_sets)
                ));
                Some(chosen)
            } else if wanted.is_some() && !structure_sets.is_empty() {
                None
            } else {
                block(
                    &mut problems,
                    &mut blocking,
                    if structure_sets.is_empty() {
                        "no RT Structure Set: no organ can be analysed".to_string()
                    } else {
                        format!(
                            "{} RT Structure Sets ({}) and the RT Plan references none of them, so which one the dose was planned on is unknown; send only that one",
                            structure_sets.len(),
                            uids(&structure_sets)
                        )
                    },
                );
                None
            }
        }
    };

    // One frame of reference for dose, plan and structures. Each ROI names
    // its own (Type 1); the structure set's list may also hold others (a
    // registered PET or MR), which matter only for ROIs drawn in them.
    let mut structures = structures;
    let dose_for = dose.info.frame_of_reference_uid.clone();
    if let (Some(d), Some(s)) = (&dose_for, &mut structures) {
        let elsewhere = |r: &super::structure::Roi| {
            r.info
                .frame_of_reference_uid
                .as_ref()
                .is_some_and(|f| f != d)
        };
        let (other, same): (Vec<_>, Vec<_>) = s.rois.iter().partition(|r| elsewhere(r));
        // ROIs without their own fall back on the structure set's list.
        let unnamed_elsewhere = same.iter().any(|r| r.info.frame_of_reference_uid.is_none())
            && !s.frame_of_reference_uids.is_empty()
            && !s.frame_of_reference_uids.contains(d);
        if (!other.is_empty() && same.is_empty()) || unnamed_elsewhere {
            block(
                &mut problems,
                &mut blocking,
                format!(
                    "the structures are drawn in another frame of reference than the dose ({d}); dose and structures may not line up"
                ),
            );
        } else {
            if !other.is_empty() {
                problems.push(format!(
                    "{} ROI(s) drawn in another frame of reference than the dose's are not used: {}",
                    other.len(),
                    other
                        .iter()
                        .map(|r| format!("{:?}", r.info.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                s.rois.retain(|r| !elsewhere(r));
            }
            if s.rois
                .iter()
                .any(|r| r.info.frame_of_reference_uid.is_some())
                || s.frame_of_reference_uids.contains(d)
            {
                links.push(format!("dose and structures share frame of reference {d}"));
            }
        }
    }
    if let (Some(d), Some(p)) = (
        &dose_for,
        plan.as_ref()
            .and_then(|p| p.frame_of_reference_uid.as_ref()),
    ) {
        if d != p {
            block(
                &mut problems,
                &mut blocking,
                format!("the RT Plan's frame of reference {p} differs from the dose's {d}"),
            );
        }
    }
    let ct_images = ct_for
        .iter()
        .filter(|f| dose_for.is_none() || **f == dose_for)
        .count();
    if ct_for.len() > ct_images {
        problems.push(format!(
            "{} CT image(s) in another frame of reference ignored",
            ct_for.len() - ct_images
        ));
    }
    if let Some(ss) = &structures {
        check_esophagus(&dose, ss, &mut problems);
    }
    Ok(Study {
        study_instance_uid: study_uids.first().cloned(),
        patient_id,
        objects,
        dose,
        plan,
        structures,
        ct_images,
        links,
        problems,
        blocking,
    })
}

fn sorted(uids: &[String]) -> Vec<String> {
    let mut v = uids.to_vec();
    v.sort();
    v
}

/// The plans (sorted UIDs) of the dose summed over the most plans, when a
/// dose among the inputs sums several (MULTI_PLAN). A course that grew
/// (plans A + B, then A + B + C) is scored by its largest sum; sums over
/// sets that do not contain one another are different courses, which is
/// blocking.
fn summed_course(
    read: &[RtDose],
    problems: &mut Vec<String>,
    blocking: &mut Vec<String>,
) -> Option<Vec<String>> {
    let mut sets: Vec<Vec<String>> = read
        .iter()
        .filter(|d| d.info.referenced_plan_uids.len() > 1)
        .map(|d| sorted(&d.info.referenced_plan_uids))
        .collect();
    sets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let largest = sets.first()?.clone();
    if let Some(other) = sets.iter().find(|s| s.iter().any(|u| !largest.contains(u))) {
        block(
            problems,
            blocking,
            format!(
                "two RT Doses sum different sets of plans ({} and {}), so which course to score is unknown; send only that course's summed dose",
                largest.join(" + "),
                other.join(" + ")
            ),
        );
    }
    Some(largest)
}

/// The plans a summed dose names, read as one course: the fractions and
/// prescriptions add up. EQD2 from the summed dose then takes it as given
/// in all the course's fractions alike, which is exact when the plans give
/// the same dose per fraction (a sequential boost at 2 Gy), and otherwise
/// an approximation that is noted. A plan that is not among the inputs
/// leaves the course's fractions unknown: blocking.
fn combine_plans(
    set: &[String],
    present: &[&RtPlan],
    problems: &mut Vec<String>,
    blocking: &mut Vec<String>,
) -> Option<RtPlan> {
    let mut members: Vec<&RtPlan> = present.to_vec();
    members.sort_by_key(|p| (p.date_time.clone(), p.created.clone()));
    if members.len() < set.len() {
        let missing: Vec<&str> = set
            .iter()
            .filter(|u| !members.iter().any(|p| &p.sop_instance_uid == *u))
            .map(String::as_str)
            .collect();
        block(
            problems,
            blocking,
            format!(
                "the RT Dose sums {} plans and {} of them ({}) are not among the input files, so the course's fractions are unknown; send every plan it sums",
                set.len(),
                missing.len(),
                missing.join(", ")
            ),
        );
    }
    let latest = *members.last()?;
    let all = |f: &dyn Fn(&RtPlan) -> Option<f64>| -> Option<f64> {
        members.iter().map(|p| f(p)).sum::<Option<f64>>()
    };
    let per_fraction: Vec<f64> = members
        .iter()
        .filter_map(|p| p.dose_per_fraction())
        .collect();
    let (lo, hi) = per_fraction
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    if per_fraction.len() == members.len() && hi > lo * 1.05 {
        problems.push(format!(
            "the summed plans give {} Gy per fraction: EQD2 takes the summed dose as given in equal fractions, which for different doses per fraction is an approximation",
            per_fraction
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if members
        .iter()
        .any(|p| p.approval.as_deref() == Some("REJECTED"))
    {
        problems.push("an RT Plan of the summed course has Approval Status REJECTED".into());
    }
    let mut techniques: Vec<&str> = Vec::new();
    for p in &members {
        if !techniques.contains(&p.technique.as_str()) {
            techniques.push(&p.technique);
        }
    }
    let structure_sets: Vec<&String> = members
        .iter()
        .filter_map(|p| p.referenced_structure_set_uid.as_ref())
        .collect();
    if structure_sets.iter().any(|u| *u != structure_sets[0]) {
        problems.push(format!(
            "the summed plans were planned on different RT Structure Sets; the latest plan's ({}) is used",
            latest.referenced_structure_set_uid.as_deref().unwrap_or("none")
        ));
    }
    Some(RtPlan {
        sop_instance_uid: latest.sop_instance_uid.clone(),
        label: Some(
            members
                .iter()
                .map(|p| p.label.as_deref().unwrap_or(&p.sop_instance_uid))
                .collect::<Vec<_>>()
                .join(" + "),
        ),
        prescription_gy: all(&|p| p.prescription_gy),
        prescription_source: "the sum of the summed plans' prescriptions".into(),
        fractions: all(&|p| p.fractions.map(f64::from)).map(|n| n as u32),
        fraction_groups: members.iter().map(|p| p.fraction_groups).sum(),
        technique: techniques.join(" + "),
        beams: members.iter().map(|p| p.beams).sum(),
        notes: members
            .iter()
            .flat_map(|p| p.notes.iter().cloned())
            .collect(),
        ..latest.clone()
    })
}

/// Of the plans that have a dose among the inputs, the one to score. A
/// plan that another names as its PREDECESSOR is an old version, and a
/// REJECTED plan gives way to any other; of those left the latest (RT Plan
/// Date and Time) is taken, with a note, since a planning system that
/// exports a revised plan into the same study is the usual reason for two.
/// Plans that name each other PRIOR or CONCURRENT are one course: its dose
/// is their sum, which one plan's dose is not, so that is blocking.
fn choose_plan<'a>(
    mut with_dose: Vec<&'a RtPlan>,
    problems: &mut Vec<String>,
    blocking: &mut Vec<String>,
) -> Option<&'a RtPlan> {
    if with_dose.len() > 1 {
        let superseded: Vec<&str> = with_dose
            .iter()
            .flat_map(|p| &p.related)
            .filter(|(_, relationship)| relationship == "PREDECESSOR")
            .map(|(uid, _)| uid.as_str())
            .collect();
        let before = with_dose.len();
        with_dose.retain(|p| !superseded.contains(&p.sop_instance_uid.as_str()));
        if with_dose.len() < before {
            problems.push(format!(
                "{} RT Plan(s) replaced by a newer version (RT Plan Relationship PREDECESSOR) ignored",
                before - with_dose.len()
            ));
        }
    }
    let rejected = |p: &&RtPlan| p.approval.as_deref() == Some("REJECTED");
    if with_dose.len() > 1 && !with_dose.iter().all(rejected) {
        let before = with_dose.len();
        with_dose.retain(|p| !rejected(p));
        if with_dose.len() < before {
            problems.push(format!(
                "{} REJECTED RT Plan(s) ignored",
                before - with_dose.len()
            ));
        }
    }
    if with_dose.len() > 1 {
        let course = with_dose.iter().any(|p| {
            p.related.iter().any(|(uid, relationship)| {
                (relationship == "PRIOR" || relationship == "CONCURRENT")
                    && with_dose.iter().any(|q| &q.sop_instance_uid == uid)
            })
        });
        let named: Vec<String> = with_dose.iter().map(|p| plan_named(p)).collect();
        if course {
            let what = format!(
                "the study holds a course of {} RT Plans ({}) that name each other PRIOR or CONCURRENT: its dose is their sum, not one plan's; send the sum as one RT Dose (MULTI_PLAN)",
                with_dose.len(),
                named.join(", ")
            );
            block(problems, blocking, what);
        }
        // By plan date, then (two exports of one plan) by creation.
        let when = |p: &RtPlan| (p.date_time.clone(), p.created.clone());
        with_dose.sort_by_key(|p| when(p));
        let latest = with_dose.last()?;
        // Dates that do not tell which is the latest leave nothing but
        // file order to choose by: refused rather than guessed.
        if !course && when(with_dose[with_dose.len() - 2]) == when(latest) {
            let what = format!(
                "{} RT Plans with their own doses: {}; their dates do not tell which is current, so which to score is unknown; send only that plan (or plans with RT Plan Date and Time)",
                named.len(),
                named.join(", ")
            );
            block(problems, blocking, what);
        }
        problems.push(format!(
            "{} RT Plans with their own doses: {}; the latest, {}, is scored",
            named.len(),
            named.join(", "),
            plan_label(latest)
        ));
    }
    with_dose.last().copied()
}

/// Beam doses about to be summed must not hold the same beam twice (a
/// beam dose recomputed and sent again under a new SOP Instance UID would
/// otherwise count that beam twice, and the beam count would still look
/// complete). A beam dose that names no beam cannot be checked: a note.
fn check_beams(doses: &[RtDose], problems: &mut Vec<String>) -> Result<(), RtError> {
    let beams: Vec<&RtDose> = doses
        .iter()
        .filter(|d| d.info.summation == Summation::Beam)
        .collect();
    let mut holder: std::collections::HashMap<i64, &str> = Default::default();
    for d in &beams {
        let uid = d.info.sop_instance_uid.as_str();
        for b in &d.info.referenced_beams {
            match holder.insert(*b, uid) {
                Some(other) if other != uid => {
                    return Err(RtError::Study {
                        what: format!(
                            "beam doses {other} and {uid} both hold beam {b} of the plan: summing them would count that beam twice"
                        ),
                    })
                }
                _ => {}
            }
        }
    }
    let unnamed = beams
        .iter()
        .filter(|d| d.info.referenced_beams.is_empty())
        .count();
    if unnamed > 0 && beams.len() > 1 {
        problems.push(format!(
            "{unnamed} of {} beam doses name no beam (Referenced Beam Number): a beam sent twice would go unnoticed",
            beams.len()
        ));
    }
    Ok(())
}

/// A plan by its label (quoted), else its UID.
fn plan_label(p: &RtPlan) -> String {
    match &p.label {
        Some(l) => format!("{l:?}"),
        None => format!("RT Plan {}", p.sop_instance_uid),
    }
}

/// A plan as a note names it: label, date, approval and UID, which is what
/// a physicist needs to find it in the planning system.
fn plan_named(p: &RtPlan) -> String {
    let date = p
        .date_time
        .as_deref()
        .map_or("no date".to_string(), readable_date);
    let approval = p.approval.as_deref().unwrap_or("no Approval Status");
    match &p.label {
        Some(l) => format!("{l:?} ({date}, {approval}, {})", p.sop_instance_uid),
        None => format!("RT Plan {} ({date}, {approval})", p.sop_instance_uid),
    }
}

/// `YYYYMMDDHHMMSS…` as `YYYY-MM-DD HH:MM` (the date alone when the time
/// is midnight or absent); anything else as it is.
fn readable_date(d: &str) -> String {
    let digits =
        |r: std::ops::Range<usize>| d.get(r).filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
    match (digits(0..4), digits(4..6), digits(6..8)) {
        (Some(y), Some(m), Some(day)) => match (digits(8..10), digits(10..12)) {
            (Some(h), Some(min)) if (h, min) != ("00", "00") => format!("{y}-{m}-{day} {h}:{min}"),
            _ => format!("{y}-{m}-{day}"),
        },
        _ => d.to_string(),
    }
}

/// Plans newer than the scored one that no dose among the inputs belongs
/// to: a replan whose dose was not sent is not scored, and the physicist
/// should know that the risk is the older plan's. REJECTED plans and those
/// the scored plan names as its PREDECESSOR are no such question; plans
/// without a date cannot be compared.
fn newer_without_dose(
    scored: &RtPlan,
    plans: &[RtPlan],
    referenced: &[String],
    problems: &mut Vec<String>,
) {
    let Some(when) = scored.date_time.as_ref() else {
        return;
    };
    let scored_when = (when, scored.created.as_ref());
    for p in plans {
        let Some(date) = p.date_time.as_ref() else {
            continue;
        };
        let replaced = scored
            .related
            .iter()
            .any(|(u, r)| u == &p.sop_instance_uid && r == "PREDECESSOR");
        if referenced.contains(&p.sop_instance_uid)
            || p.approval.as_deref() == Some("REJECTED")
            || replaced
            || (date, p.created.as_ref()) <= scored_when
        {
            continue;
        }
        problems.push(format!(
            "RT Plan {} has no RT Dose among the inputs: it is not scored; the scored plan is {}",
            plan_named(p),
            plan_named(scored)
        ));
    }
}

/// Below this share of the prescription a dose's maximum is not the plan's
/// (one fraction's dose sent as the plan's, typically); no plan delivers
/// less than its prescription anywhere.
const MAX_BELOW_RX: f64 = 0.5;
/// Above this multiple of the prescription a dose's maximum is no plan's
/// own (the synthetic 3D-CRT plans run to about 1.4 times, SBRT plans
/// prescribed to a low isodose to about 1.7 times).
const MAX_ABOVE_RX: f64 = 2.0;

/// The dose itself, against its plan: a dose of zero everywhere is no
/// dose (refused); a maximum far below or above the prescription, and a
/// Dose Type that is neither PHYSICAL nor EFFECTIVE, are noted.
fn check_dose(
    dose: &RtDose,
    plan: Option<&RtPlan>,
    problems: &mut Vec<String>,
    blocking: &mut Vec<String>,
) {
    let max = f64::from(dose.max_gy());
    if max <= 0.0 {
        block(
            problems,
            blocking,
            format!(
                "the RT Dose ({}) is zero everywhere: there is no dose to score",
                dose.info.sop_instance_uid
            ),
        );
        return;
    }
    if let Some(rx) = plan.and_then(|p| p.prescription_gy).filter(|r| *r > 0.0) {
        if max < MAX_BELOW_RX * rx {
            problems.push(format!(
                "the RT Dose's maximum, {max:.2} Gy, is less than half the prescription ({rx:.2} Gy): most likely one fraction's (or one beam's) dose was sent as the whole plan's, or the prescription is not this dose's; the risk is computed from the dose as received"
            ));
        } else if max > MAX_ABOVE_RX * rx {
            problems.push(format!(
                "the RT Dose's maximum, {max:.2} Gy, is more than twice the prescription ({rx:.2} Gy): most likely the dose holds more than this plan (a sum over plans or a dose counted twice), its Dose Grid Scaling is wrong, or the prescription is not this dose's; the risk is computed from the dose as received"
            ));
        }
    }
    match dose.info.dose_type.as_str() {
        "PHYSICAL" | "EFFECTIVE" => {}
        "" => problems.push(
            "the RT Dose has no Dose Type (PHYSICAL or EFFECTIVE): it is read as a physical dose"
                .into(),
        ),
        other => problems.push(format!(
            "the RT Dose's Dose Type is {other:?}, neither PHYSICAL nor EFFECTIVE: it is read as a physical dose"
        )),
    }
}

/// An esophagus shorter than this (mm) is not the whole thoracic
/// esophagus the model learned from.
const SHORT_ESOPHAGUS_MM: f64 = 50.0;

/// What about the esophagus contour changes the risk without refusing it:
/// its ROI's own notes (contours skipped or dropped), planes left without a
/// contour inside it, a contour too short to be the thoracic esophagus, and
/// a part of it that the dose grid leaves out (counted at 0 Gy). The ROI is
/// the one scoring measures; when none or several match, scoring refuses
/// the study with that reason and nothing is said here.
fn check_esophagus(dose: &RtDose, ss: &StructureSet, problems: &mut Vec<String>) {
    use super::names::{match_organ, Organ};
    let Some(m) = match_organ(Organ::Esophagus, &ss.rois).filter(|m| m.tied.is_empty()) else {
        return;
    };
    let Some(roi) = ss
        .rois
        .iter()
        .find(|r| r.info.number == m.roi_number)
        .filter(|r| !r.planes.is_empty())
    else {
        return;
    };
    let name = &roi.info.name;
    for n in &roi.info.notes {
        problems.push(format!("the esophagus ROI {name:?}: {n}"));
    }
    let gaps = roi.contour_gaps();
    if !gaps.is_empty() {
        let missing: usize = gaps.iter().map(|g| g.0).sum();
        let where_: Vec<String> = gaps
            .iter()
            .map(|&(n, lo, hi)| {
                if n == 1 {
                    format!("z = {lo:.1} mm")
                } else {
                    format!("z = {lo:.1} to {hi:.1} mm")
                }
            })
            .collect();
        problems.push(format!(
            "the esophagus ROI {name:?} has no contour on {missing} plane(s) inside its extent ({}): the volume there is left out of the esophagus",
            where_.join(", ")
        ));
    }
    if let Some((lo, hi)) = roi.z_extent(&dose.grid) {
        if hi - lo < SHORT_ESOPHAGUS_MM {
            problems.push(format!(
                "the esophagus ROI {name:?} is contoured over {:.0} mm only (z = {lo:.1} to {hi:.1} mm): the model was trained on contours of the whole thoracic esophagus, and its risk for so short a contour is unreliable",
                hi - lo
            ));
        }
    }
    if let Some((total, outside)) = outside_dose_grid(roi, dose) {
        let share = outside / total;
        if share >= 0.01 || outside >= 0.1 {
            let pct = 100.0 * share;
            problems.push(format!(
                "the dose grid leaves out {} % of the esophagus {name:?} ({outside:.1} cm³); its dose there counts as 0 Gy",
                if pct < 10.0 {
                    format!("{pct:.1}")
                } else {
                    format!("{pct:.0}")
                }
            ));
        }
    }
}

/// The ROI's volume and the part of it outside the dose grid (cm³), from
/// 4³ sample points per voxel as the DVH counts them; None when the ROI and
/// the dose grid do not lie together (scoring refuses that with the reason).
fn outside_dose_grid(roi: &super::structure::Roi, dose: &RtDose) -> Option<(f64, f64)> {
    const N: usize = 4;
    let grid = super::analysis::analysis_grid(&dose.grid, &[roi]).ok()?;
    let per_sample: Vec<f64> = (0..grid.nz())
        .map(|k| grid.voxel_cc(k) / (N * N * N) as f64)
        .collect();
    let (mut total, mut outside) = (0.0, 0.0);
    roi.for_each_sample(&grid, N, |k, x, y, z| {
        total += per_sample[k];
        if dose.grid.interpolate(&dose.gy, x, y, z).is_none() {
            outside += per_sample[k];
        }
    });
    (total > 0.0).then_some((total, outside))
}
