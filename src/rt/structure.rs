//! RT Structure Set: ROIs, their contours, and rasterisation onto a grid.
//!
//! The rule, stated once (docs/VALIDATION.md repeats it):
//! - Contours of an ROI are grouped into planes by their z (within 0.05 mm).
//!   Several contours on one plane combine by even-odd: a contour inside
//!   another is a hole, one inside a hole an island.
//! - Each contour plane stands for a slab half a contour spacing thick on
//!   either side (the spacing is the median distance between the ROI's
//!   planes; for a single plane, the grid's plane thickness). A point takes
//!   the nearest contour plane within that half spacing; past the first and
//!   last slab the ROI ends.
//! - The binary mask is "voxel centre inside". The fractional mask is the
//!   share of `n×n×n` sample points of the voxel that are inside (n = 4 by
//!   default), which makes DVHs accurate at the edges.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::attr;
use super::grid::Grid;
use super::RtError;

/// One plane of an ROI: every closed contour at that z.
#[derive(Debug, Clone)]
pub struct ContourPlane {
    pub z: f64,
    pub polygons: Vec<Vec<[f64; 2]>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RoiInfo {
    pub number: i64,
    pub name: String,
    pub interpreted_type: Option<String>,
    pub frame_of_reference_uid: Option<String>,
    pub planes: usize,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Roi {
    pub info: RoiInfo,
    /// Ascending in z.
    pub planes: Vec<ContourPlane>,
}

#[derive(Debug, Clone)]
pub struct StructureSet {
    pub sop_instance_uid: String,
    pub label: Option<String>,
    pub frame_of_reference_uids: Vec<String>,
    /// SOP Instance UIDs of the images the contours were drawn on.
    pub contour_image_uids: Vec<String>,
    pub rois: Vec<Roi>,
    /// esorisk's own output (a returned learned ROI), not a planning
    /// structure set.
    pub written_by_esorisk: bool,
}

pub fn read(path: &Path) -> Result<StructureSet, RtError> {
    let obj = super::open(path)?;
    from_object(&obj)
}

pub fn from_object(obj: &FileDicomObject<InMemDicomObject>) -> Result<StructureSet, RtError> {
    let sop = attr::string(obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let mut frame_of_reference_uids = Vec::new();
    let mut contour_image_uids = Vec::new();
    for f in attr::items(obj, tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE) {
        if let Some(u) = attr::string(f, tags::FRAME_OF_REFERENCE_UID) {
            frame_of_reference_uids.push(u);
        }
        for study in attr::items(f, tags::RT_REFERENCED_STUDY_SEQUENCE) {
            for series in attr::items(study, tags::RT_REFERENCED_SERIES_SEQUENCE) {
                for img in attr::items(series, tags::CONTOUR_IMAGE_SEQUENCE) {
                    if let Some(u) = attr::string(img, tags::REFERENCED_SOP_INSTANCE_UID) {
                        contour_image_uids.push(u);
                    }
                }
            }
        }
    }
    let mut rois: Vec<Roi> = attr::items(obj, tags::STRUCTURE_SET_ROI_SEQUENCE)
        .iter()
        .filter_map(|r| {
            Some(Roi {
                info: RoiInfo {
                    number: attr::int(r, tags::ROI_NUMBER)?,
                    name: attr::string(r, tags::ROI_NAME).unwrap_or_default(),
                    interpreted_type: None,
                    frame_of_reference_uid: attr::string(
                        r,
                        tags::REFERENCED_FRAME_OF_REFERENCE_UID,
                    ),
                    planes: 0,
                    notes: vec![],
                },
                planes: vec![],
            })
        })
        .collect();
    for obs in attr::items(obj, tags::RTROI_OBSERVATIONS_SEQUENCE) {
        let (Some(n), Some(t)) = (
            attr::int(obs, tags::REFERENCED_ROI_NUMBER),
            attr::string(obs, tags::RTROI_INTERPRETED_TYPE),
        ) else {
            continue;
        };
        if let Some(r) = rois.iter_mut().find(|r| r.info.number == n) {
            r.info.interpreted_type = Some(t.to_uppercase());
        }
    }
    for rc in attr::items(obj, tags::ROI_CONTOUR_SEQUENCE) {
        let Some(n) = attr::int(rc, tags::REFERENCED_ROI_NUMBER) else {
            continue;
        };
        let Some(roi) = rois.iter_mut().find(|r| r.info.number == n) else {
            continue;
        };
        let mut ignored: Vec<String> = Vec::new();
        // Skipped contours are counted, one note each kind: a damaged
        // structure set should not bury its ROI under a note per contour.
        let (mut unreadable, mut short) = (0usize, 0usize);
        let mut polys: Vec<(f64, Vec<[f64; 2]>)> = Vec::new();
        for c in attr::items(rc, tags::CONTOUR_SEQUENCE) {
            let kind = attr::string(c, tags::CONTOUR_GEOMETRIC_TYPE)
                .unwrap_or_default()
                .to_uppercase();
            if kind != "CLOSED_PLANAR" {
                if !ignored.contains(&kind) {
                    ignored.push(kind);
                }
                continue;
            }
            let Some(data) = attr::floats(c, tags::CONTOUR_DATA) else {
                unreadable += 1;
                continue;
            };
            if data.len() < 9 || data.len() % 3 != 0 {
                short += 1;
                continue;
            }
            let pts: Vec<[f64; 2]> = data.chunks_exact(3).map(|p| [p[0], p[1]]).collect();
            let z = data.chunks_exact(3).map(|p| p[2]).sum::<f64>() / pts.len() as f64;
            if data.chunks_exact(3).any(|p| (p[2] - z).abs() > 0.5) {
                roi.info.notes.push(format!(
                    "a contour near z = {z:.1} mm is not planar; its mean z is used"
                ));
            }
            polys.push((z, pts));
        }
        for kind in ignored {
            roi.info.notes.push(format!(
                "{kind} contours ignored (only CLOSED_PLANAR describe a volume)"
            ));
        }
        for (n, what) in [
            (unreadable, "whose coordinates are not all numbers"),
            (short, "with fewer than 3 points"),
        ] {
            match n {
                0 => {}
                1 => roi.info.notes.push(format!("a contour {what} was skipped")),
                n => roi
                    .info
                    .notes
                    .push(format!("{n} contours {what} were skipped")),
            }
        }
        polys.sort_by(|a, b| a.0.total_cmp(&b.0));
        // A contour repeated point for point on its plane (a contour pasted
        // twice, an export that writes a plane again) would be its own hole
        // under even-odd and erase the organ there: the copies are dropped.
        let mut duplicates: Vec<f64> = Vec::new();
        for (z, p) in polys {
            match roi.planes.last_mut() {
                Some(last) if (last.z - z).abs() < 0.05 => {
                    if last.polygons.contains(&p) {
                        duplicates.push(z);
                    } else {
                        last.polygons.push(p);
                    }
                }
                _ => roi.planes.push(ContourPlane {
                    z,
                    polygons: vec![p],
                }),
            }
        }
        if let (Some(lo), Some(hi)) = (duplicates.first(), duplicates.last()) {
            let planes = duplicates
                .windows(2)
                .filter(|w| w[1] - w[0] >= 0.05)
                .count()
                + 1;
            roi.info.notes.push(format!(
                "{} contour(s) that repeat another of the same plane point for point ({}) were dropped: under the even-odd rule each copy would cancel its original",
                duplicates.len(),
                if planes == 1 {
                    format!("z = {lo:.1} mm")
                } else {
                    format!("{planes} planes from z = {lo:.1} to {hi:.1} mm")
                }
            ));
        }
        roi.info.planes = roi.planes.len();
    }
    Ok(StructureSet {
        sop_instance_uid: sop,
        label: attr::string(obj, tags::STRUCTURE_SET_LABEL),
        frame_of_reference_uids,
        contour_image_uids,
        rois,
        written_by_esorisk: attr::written_by_esorisk(obj),
    })
}

/// An ROI on a grid: the voxels it touches, with the share of each inside.
#[derive(Debug, Clone, Default)]
pub struct Mask {
    /// (linear voxel index, fraction inside in (0, 1], voxel centre inside).
    pub voxels: Vec<(u32, f32, bool)>,
}

impl Mask {
    /// Volume in cm³ from the fractional mask.
    pub fn volume_cc(&self, grid: &Grid) -> f64 {
        let plane = grid.nx * grid.ny;
        self.voxels
            .iter()
            .map(|(i, f, _)| f64::from(*f) * grid.voxel_cc(*i as usize / plane))
            .sum()
    }

    /// Binary mask, voxel centre inside, over the whole grid.
    pub fn centre_mask(&self, grid: &Grid) -> Vec<bool> {
        let mut m = vec![false; grid.len()];
        for (i, _, c) in &self.voxels {
            if *c {
                m[*i as usize] = true;
            }
        }
        m
    }

    pub fn is_empty(&self) -> bool {
        self.voxels.is_empty()
    }
}

impl Roi {
    /// Two ROIs as one, plane by plane (for organs contoured in halves such
    /// as the lungs). The parts must not overlap: planes combine by even-odd.
    pub fn union(a: &Roi, b: &Roi, number: i64, name: &str) -> Roi {
        let mut all: Vec<ContourPlane> = a.planes.iter().chain(&b.planes).cloned().collect();
        all.sort_by(|p, q| p.z.total_cmp(&q.z));
        let mut planes: Vec<ContourPlane> = Vec::new();
        for p in all {
            match planes.last_mut() {
                Some(last) if (last.z - p.z).abs() < 0.05 => last.polygons.extend(p.polygons),
                _ => planes.push(p),
            }
        }
        Roi {
            info: RoiInfo {
                number,
                name: name.to_string(),
                interpreted_type: a.info.interpreted_type.clone(),
                frame_of_reference_uid: a.info.frame_of_reference_uid.clone(),
                planes: planes.len(),
                notes: vec![format!("union of {:?} and {:?}", a.info.name, b.info.name)],
            },
            planes,
        }
    }

    /// The ROI's contour spacing: the median distance between its planes
    /// (None for fewer than two).
    pub fn contour_spacing(&self) -> Option<f64> {
        let mut d: Vec<f64> = self.planes.windows(2).map(|w| w[1].z - w[0].z).collect();
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied()
    }

    /// Half the slab each contour plane stands for.
    fn half_slab(&self, grid: &Grid) -> f64 {
        if let Some(s) = self.contour_spacing() {
            return s / 2.0;
        }
        let k = grid
            .fz(self.planes.first().map(|p| p.z).unwrap_or(0.0))
            .map(|f| f.round() as usize)
            .unwrap_or(0);
        grid.dz(k.min(grid.nz().saturating_sub(1))) / 2.0
    }

    /// Where the ROI begins and ends in z (mm) under the slab rule: half a
    /// slab beyond its first and last contour planes (a single plane's slab
    /// is `grid`'s plane thickness there).
    pub fn z_extent(&self, grid: &Grid) -> Option<(f64, f64)> {
        let half = self.half_slab(grid);
        Some((self.planes.first()?.z - half, self.planes.last()?.z + half))
    }

    /// Planes left without a contour inside the ROI's extent: each gap
    /// between contour planes wider than 1.5 contour spacings, as (planes
    /// missing, z of the first and of the last missing plane). The slab rule
    /// reaches only half a spacing from each contour, so the volume in such
    /// a gap is not part of the ROI.
    pub fn contour_gaps(&self) -> Vec<(usize, f64, f64)> {
        let Some(s) = self.contour_spacing().filter(|s| *s > 0.0) else {
            return Vec::new();
        };
        self.planes
            .windows(2)
            .filter_map(|w| {
                let d = w[1].z - w[0].z;
                (d > 1.5 * s).then(|| {
                    let missing = ((d / s).round() as usize).saturating_sub(1).max(1);
                    (missing, w[0].z + s, w[1].z - s)
                })
            })
            .collect()
    }

    /// The contour plane that stands for height z, if any.
    fn plane_at(&self, z: f64, half: f64) -> Option<usize> {
        let k = self.planes.partition_point(|p| p.z < z);
        let mut best: Option<(usize, f64)> = None;
        for c in [k.wrapping_sub(1), k] {
            if let Some(p) = self.planes.get(c) {
                let d = (p.z - z).abs();
                if d <= half + 1e-6 && best.is_none_or(|(_, bd)| d < bd) {
                    best = Some((c, d));
                }
            }
        }
        best.map(|(c, _)| c)
    }

    /// Rasterise onto `grid` with `n×n×n` samples per voxel.
    pub fn rasterize(&self, grid: &Grid, n: usize) -> Mask {
        let n = n.max(1);
        let mut mask = Mask::default();
        if self.planes.is_empty() || grid.is_empty() {
            return mask;
        }
        let half = self.half_slab(grid);
        let Some((i0, i1, j0, j1)) = self.bbox(grid) else {
            return mask;
        };
        let (bw, bh) = (i1 - i0 + 1, j1 - j0 + 1);
        // In-plane coverage (0..=n*n samples per voxel) and centre mask for
        // each contour plane, computed once and reused.
        let mut cache: Vec<Option<(Vec<u16>, Vec<bool>)>> = vec![None; self.planes.len()];
        let zmin = self.planes[0].z - half;
        let zmax = self.planes[self.planes.len() - 1].z + half;
        for (k, zc) in grid.z.iter().enumerate() {
            let (z_lo, z_hi) = grid.z_bounds(k);
            if z_hi < zmin - 1e-6 || z_lo > zmax + 1e-6 {
                continue;
            }
            let centre_plane = self.plane_at(*zc, half);
            let mut counts = vec![0u32; bw * bh];
            let mut any = false;
            for m in 0..n {
                let z = z_lo + (m as f64 + 0.5) / n as f64 * (z_hi - z_lo);
                let Some(p) = self.plane_at(z, half) else {
                    continue;
                };
                let (cov, _) = cache[p]
                    .get_or_insert_with(|| self.plane_coverage(p, grid, n, (i0, j0, bw, bh)));
                for (c, v) in counts.iter_mut().zip(cov.iter()) {
                    *c += u32::from(*v);
                }
                any = true;
            }
            let centre = centre_plane.map(|p| {
                cache[p]
                    .get_or_insert_with(|| self.plane_coverage(p, grid, n, (i0, j0, bw, bh)))
                    .1
                    .clone()
            });
            if !any && centre.is_none() {
                continue;
            }
            let total = (n * n * n) as f32;
            for bj in 0..bh {
                for bi in 0..bw {
                    let b = bj * bw + bi;
                    let inside = centre.as_ref().is_some_and(|c| c[b]);
                    if counts[b] > 0 || inside {
                        let idx = grid.index(i0 + bi, j0 + bj, k) as u32;
                        mask.voxels.push((idx, counts[b] as f32 / total, inside));
                    }
                }
            }
        }
        mask
    }

    /// The voxel index box (inclusive) around the ROI's contours, or None if
    /// the ROI misses the grid in x or y.
    fn bbox(&self, grid: &Grid) -> Option<(usize, usize, usize, usize)> {
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in self.planes.iter().flat_map(|p| &p.polygons).flatten() {
            xmin = xmin.min(p[0]);
            xmax = xmax.max(p[0]);
            ymin = ymin.min(p[1]);
            ymax = ymax.max(p[1]);
        }
        if xmin > xmax
            || grid.fx(xmax) < -1.0
            || grid.fx(xmin) > grid.nx as f64
            || grid.fy(ymax) < -1.0
            || grid.fy(ymin) > grid.ny as f64
        {
            return None;
        }
        let clamp = |f: f64, len: usize| f.clamp(0.0, len as f64 - 1.0) as usize;
        Some((
            clamp(grid.fx(xmin).floor() - 1.0, grid.nx),
            clamp(grid.fx(xmax).ceil() + 1.0, grid.nx),
            clamp(grid.fy(ymin).floor() - 1.0, grid.ny),
            clamp(grid.fy(ymax).ceil() + 1.0, grid.ny),
        ))
    }

    /// Call `f(k, x, y, z)` for every one of the n×n×n sample points per
    /// voxel that lies inside the ROI (same rule as [`Roi::rasterize`]);
    /// each stands for 1/n³ of voxel k's volume.
    pub fn for_each_sample(&self, grid: &Grid, n: usize, mut f: impl FnMut(usize, f64, f64, f64)) {
        let n = n.max(1);
        if self.planes.is_empty() || grid.is_empty() {
            return;
        }
        let Some((i0, i1, j0, j1)) = self.bbox(grid) else {
            return;
        };
        let half = self.half_slab(grid);
        let mut xs = Vec::new();
        for k in 0..grid.z.len() {
            let (z_lo, z_hi) = grid.z_bounds(k);
            for m in 0..n {
                let z = z_lo + (m as f64 + 0.5) / n as f64 * (z_hi - z_lo);
                let Some(p) = self.plane_at(z, half) else {
                    continue;
                };
                let polys = &self.planes[p].polygons;
                for j in j0..=j1 {
                    for b in 0..n {
                        let y = grid.y(j) + ((b as f64 + 0.5) / n as f64 - 0.5) * grid.dy;
                        crossings(polys, y, &mut xs);
                        for span in xs.chunks_exact(2) {
                            let s_of = |x: f64| {
                                ((x - grid.x0 + grid.dx / 2.0) / grid.dx * n as f64 - 0.5).ceil()
                            };
                            let lo = s_of(span[0]).max((i0 * n) as f64) as i64;
                            let hi = s_of(span[1]).min(((i1 + 1) * n) as f64) as i64;
                            for s in lo..hi {
                                let x =
                                    grid.x0 + (s as f64 + 0.5) / n as f64 * grid.dx - grid.dx / 2.0;
                                f(k, x, y, z);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Samples inside per voxel (of n×n) and the centre test, over the box.
    fn plane_coverage(
        &self,
        p: usize,
        grid: &Grid,
        n: usize,
        bbox: (usize, usize, usize, usize),
    ) -> (Vec<u16>, Vec<bool>) {
        let (i0, j0, bw, bh) = bbox;
        let polys = &self.planes[p].polygons;
        let mut cov = vec![0u16; bw * bh];
        let mut centre = vec![false; bw * bh];
        let mut xs = Vec::new();
        for bj in 0..bh {
            let yc = grid.y(j0 + bj);
            for b in 0..n {
                let y = yc + ((b as f64 + 0.5) / n as f64 - 0.5) * grid.dy;
                crossings(polys, y, &mut xs);
                for span in xs.chunks_exact(2) {
                    // Sample s (over the whole row) sits at
                    // x0 + (s + 0.5)/n·dx − dx/2.
                    let s_of =
                        |x: f64| ((x - grid.x0 + grid.dx / 2.0) / grid.dx * n as f64 - 0.5).ceil();
                    let lo = s_of(span[0]).max((i0 * n) as f64) as i64;
                    let hi = s_of(span[1]).min(((i0 + bw) * n) as f64) as i64;
                    for s in lo..hi {
                        let bi = s as usize / n - i0;
                        cov[bj * bw + bi] += 1;
                    }
                }
            }
            crossings(polys, yc, &mut xs);
            for span in xs.chunks_exact(2) {
                let lo = grid.fx(span[0]).ceil().max(i0 as f64) as i64;
                let hi = grid.fx(span[1]).ceil().min((i0 + bw) as f64) as i64;
                for i in lo..hi {
                    centre[bj * bw + (i as usize - i0)] = true;
                }
            }
        }
        (cov, centre)
    }
}

/// Sorted x where the polygons' edges cross the line at y (half-open rule,
/// so a vertex on the line counts once); consecutive pairs are inside spans
/// under even-odd.
fn crossings(polys: &[Vec<[f64; 2]>], y: f64, out: &mut Vec<f64>) {
    out.clear();
    for poly in polys {
        let n = poly.len();
        for a in 0..n {
            let (p, q) = (poly[a], poly[(a + 1) % n]);
            if (p[1] <= y && q[1] > y) || (q[1] <= y && p[1] > y) {
                out.push(p[0] + (y - p[1]) / (q[1] - p[1]) * (q[0] - p[0]));
            }
        }
    }
    out.sort_by(f64::total_cmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(cx: f64, cy: f64, h: f64) -> Vec<[f64; 2]> {
        vec![
            [cx - h, cy - h],
            [cx + h, cy - h],
            [cx + h, cy + h],
            [cx - h, cy + h],
        ]
    }

    fn roi(planes: Vec<ContourPlane>) -> Roi {
        Roi {
            info: RoiInfo {
                number: 1,
                name: "T".into(),
                interpreted_type: None,
                frame_of_reference_uid: None,
                planes: planes.len(),
                notes: vec![],
            },
            planes,
        }
    }

    /// Damaged and degenerate contours are skipped and counted: one note
    /// per kind, however many there are.
    #[test]
    fn skipped_contours_are_counted_once_per_kind() {
        use crate::rt::phantom;
        use crate::rt::write::{self, StudyHeader};
        let plane = |z: f64, polygon: Vec<[f64; 2]>| ContourPlane {
            z,
            polygons: vec![polygon],
        };
        let mut planes: Vec<ContourPlane> = (0..6)
            .map(|k| plane(f64::from(k) * 2.5, square(0.0, 0.0, 5.0)))
            .collect();
        for p in &mut planes[..3] {
            p.polygons[0][1][0] = f64::NAN;
        }
        planes.push(plane(20.0, vec![[0.0, 0.0], [1.0, 0.0]]));
        let rois = [phantom::roi(1, "Esophagus", "ORGAN", planes)];
        let obj = write::rt_struct(&StudyHeader::new("SKIPPED"), "1.2.3", "test", &rois);
        let ss = from_object(&obj).expect("structure set");
        let r = &ss.rois[0];
        assert_eq!(r.planes.len(), 3, "the three good planes remain");
        assert_eq!(
            r.info.notes,
            [
                "3 contours whose coordinates are not all numbers were skipped",
                "a contour with fewer than 3 points was skipped",
            ]
        );
    }

    /// On unevenly spaced dose planes each plane's slab reaches halfway to
    /// each neighbour: a plane between 1 mm and 8 mm gaps covers 0.5 mm
    /// below it and 4 mm above, not 2.25 mm each way.
    #[test]
    fn slabs_of_uneven_planes_reach_halfway_to_each_neighbour() {
        let grid = Grid {
            x0: -9.5,
            y0: -9.5,
            dx: 1.0,
            dy: 1.0,
            nx: 20,
            ny: 20,
            z: vec![0.0, 1.0, 2.0, 10.0],
        };
        assert_eq!(grid.z_bounds(2), (1.5, 6.0));
        assert_eq!(grid.z_bounds(0), (-0.5, 0.5));
        assert_eq!(grid.z_bounds(3), (6.0, 14.0));
        // A 10 × 10 mm square contoured every 0.5 mm from z = −0.5 to 5.5
        // (so from −0.75 to 5.75): planes 0 and 1 whole, 4.25 of plane 2's
        // 4.5 mm, nothing of plane 3 — 625 mm³.
        let planes = (0..13)
            .map(|k| ContourPlane {
                z: -0.5 + 0.5 * f64::from(k),
                polygons: vec![square(0.0, 0.0, 5.0)],
            })
            .collect();
        let v = roi(planes).rasterize(&grid, 20).volume_cc(&grid);
        assert!((v - 0.625).abs() < 0.005, "{v} cc");
    }

    #[test]
    fn square_with_a_hole_and_an_island() {
        let grid = Grid::uniform([0.5, 0.5, 0.0], [1.0, 1.0, 2.0], [40, 40, 3]);
        let plane = ContourPlane {
            z: 2.0,
            polygons: vec![
                square(20.0, 20.0, 15.0),
                square(20.0, 20.0, 8.0),
                square(20.0, 20.0, 3.0),
            ],
        };
        let r = roi(vec![plane]);
        let m = r.rasterize(&grid, 4);
        // Area: 30² − 16² + 6² = 900 − 256 + 36 = 680 mm² in one 2 mm plane.
        let cc = m.volume_cc(&grid);
        assert!((cc - 0.680 * 2.0).abs() < 1e-3, "{cc}");
        let centre = m.centre_mask(&grid);
        assert!(centre[grid.index(6, 20, 1)], "ring");
        assert!(!centre[grid.index(14, 20, 1)], "hole");
        assert!(centre[grid.index(20, 20, 1)], "island");
        assert!(!centre[grid.index(20, 20, 0)], "only the plane's own slab");
    }

    #[test]
    fn slabs_between_planes_and_ends() {
        // Contours every 3 mm at z = 0, 3, 6; grid planes every 1 mm.
        let grid = Grid::uniform([0.5, 0.5, -5.0], [1.0, 1.0, 1.0], [20, 20, 17]);
        let planes = (0..3)
            .map(|k| ContourPlane {
                z: 3.0 * k as f64,
                polygons: vec![square(10.0, 10.0, 5.0)],
            })
            .collect();
        let m = roi(planes).rasterize(&grid, 4);
        // Three slabs of 3 mm × 100 mm² = 0.9 cm³.
        assert!(
            (m.volume_cc(&grid) - 0.9).abs() < 1e-3,
            "{}",
            m.volume_cc(&grid)
        );
        let centre = m.centre_mask(&grid);
        let at = |z: f64| centre[grid.index(10, 10, (z + 5.0) as usize)];
        assert!(!at(-2.0) && at(-1.0) && at(7.0) && !at(8.0));
    }
}
