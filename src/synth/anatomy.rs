//! Patient anatomy in HFS patient coordinates (mm): +x patient left,
//! +y posterior, +z superior. Organs are simple analytic shapes whose sizes
//! and positions vary between patients within adult ranges.

use super::rng::Rng;

/// An axis-aligned ellipsoid.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Ellipsoid {
    pub c: [f64; 3],
    pub r: [f64; 3],
}

impl Ellipsoid {
    /// Scaled radius: < 1 inside.
    pub fn q(&self, p: [f64; 3]) -> f64 {
        (0..3)
            .map(|i| ((p[i] - self.c[i]) / self.r[i]).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Approximate signed distance (mm), negative inside.
    pub fn signed_distance(&self, p: [f64; 3]) -> f64 {
        let r_eff = 3.0 / (1.0 / self.r[0] + 1.0 / self.r[1] + 1.0 / self.r[2]);
        (self.q(p) - 1.0) * r_eff
    }

    /// Cross-section at height z: (cx, cy, ax, ay), if it cuts the plane.
    pub fn section(&self, z: f64) -> Option<(f64, f64, f64, f64)> {
        let t = 1.0 - ((z - self.c[2]) / self.r[2]).powi(2);
        (t > 0.0).then(|| {
            (
                self.c[0],
                self.c[1],
                self.r[0] * t.sqrt(),
                self.r[1] * t.sqrt(),
            )
        })
    }

    pub fn grown(&self, margin: f64) -> Ellipsoid {
        Ellipsoid {
            c: self.c,
            r: [self.r[0] + margin, self.r[1] + margin, self.r[2] + margin],
        }
    }
}

/// The esophagus: an elliptic tube along a smooth centreline.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Esophagus {
    pub z_top: f64,
    pub z_bottom: f64,
    pub x0: f64,
    pub y0: f64,
    /// Drift to the patient's left and anterior towards the stomach (mm).
    pub drift_x: f64,
    pub drift_y: f64,
    pub wiggle: f64,
    pub rx: f64,
    pub ry: f64,
}

impl Esophagus {
    pub fn length(&self) -> f64 {
        self.z_top - self.z_bottom
    }

    /// Centre of the cross-section at z.
    pub fn centre(&self, z: f64) -> (f64, f64) {
        let t = ((self.z_top - z) / self.length()).clamp(0.0, 1.0);
        (
            self.x0 + self.drift_x * t * t + self.wiggle * (std::f64::consts::PI * t).sin(),
            self.y0 - self.drift_y * t,
        )
    }

    pub fn contains(&self, p: [f64; 3]) -> bool {
        if p[2] > self.z_top || p[2] < self.z_bottom {
            return false;
        }
        let (cx, cy) = self.centre(p[2]);
        ((p[0] - cx) / self.rx).powi(2) + ((p[1] - cy) / self.ry).powi(2) <= 1.0
    }
}

/// Where the tumour is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Location {
    /// Near the mediastinum, close to the esophagus.
    Central,
    /// In the lung periphery.
    Peripheral,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Anatomy {
    /// Body outline semi-axes (x, y), constant in z over the thorax.
    pub body: (f64, f64),
    pub lung_left: Ellipsoid,
    pub lung_right: Ellipsoid,
    pub heart: Ellipsoid,
    pub cord: (f64, f64, f64),
    pub esophagus: Esophagus,
    pub gtv: Ellipsoid,
    pub ptv: Ellipsoid,
    pub location: Location,
    pub nodal: bool,
}

/// Share of central tumours with nodal extension along the mediastinum.
pub const NODAL_SHARE: f64 = 0.45;
/// How central PTVs relate to the esophagus: taking in its whole
/// circumference, cutting through it, staying clear of it; without and with
/// nodes (nodal targets more often run alongside it).
pub const RELATION_WEIGHTS: [[f64; 3]; 2] = [[0.65, 0.3, 0.05], [0.45, 0.5, 0.05]];

/// Draw an anatomy. `central` is the probability of a central tumour;
/// `sbrt` asks for a small peripheral tumour.
pub fn draw(rng: &mut Rng, central: f64, sbrt: bool) -> Anatomy {
    let body = (rng.range(150.0, 190.0), rng.range(100.0, 130.0));
    let lung = |rng: &mut Rng, side: f64| Ellipsoid {
        c: [
            side * body.0 * rng.range(0.42, 0.5),
            rng.range(-5.0, 10.0),
            rng.range(0.0, 20.0),
        ],
        r: [
            body.0 * rng.range(0.26, 0.32),
            body.1 * rng.range(0.55, 0.65),
            rng.range(110.0, 135.0),
        ],
    };
    let lung_left = lung(rng, 1.0);
    let lung_right = lung(rng, -1.0);
    let heart = Ellipsoid {
        c: [
            rng.range(5.0, 25.0),
            rng.range(-45.0, -25.0),
            rng.range(-75.0, -45.0),
        ],
        r: [
            rng.range(45.0, 60.0),
            rng.range(38.0, 50.0),
            rng.range(42.0, 55.0),
        ],
    };
    let cord = (0.0, body.1 * rng.range(0.5, 0.6), rng.range(5.0, 7.0));
    let length = rng.range(200.0, 250.0);
    let z_top = rng.range(95.0, 125.0);
    let rx = rng.range(7.0, 10.0);
    let esophagus = Esophagus {
        z_top,
        z_bottom: z_top - length,
        x0: rng.range(-3.0, 10.0),
        y0: cord.1 - cord.2 - rng.range(20.0, 30.0),
        drift_x: rng.range(5.0, 25.0),
        drift_y: rng.range(0.0, 20.0),
        wiggle: rng.range(-6.0, 6.0),
        rx,
        ry: rx * rng.range(0.65, 0.85),
    };
    let margin = if sbrt { 5.0 } else { rng.range(7.0, 10.0) };
    let location = if !sbrt && rng.bernoulli(central) {
        Location::Central
    } else {
        Location::Peripheral
    };
    let (gtv, nodal) = match location {
        Location::Central => {
            let z = rng.range(esophagus.z_bottom + 20.0, esophagus.z_top - 40.0);
            let (ex, ey) = esophagus.centre(z);
            let r = rng.range(10.0, 30.0);
            let (ax, ay) = (r * rng.range(0.85, 1.15), r * rng.range(0.8, 1.1));
            // Anterior or lateral to the esophagus.
            let angle = rng.range(0.65, 2.5) * if rng.bernoulli(0.5) { 1.0 } else { -1.0 };
            let (ux, uy) = (angle.sin(), -angle.cos().abs());
            // Nodes (subcarinal, paratracheal) stretch the target along the
            // mediastinum.
            let nodal = rng.bernoulli(NODAL_SHARE);
            // Where the PTV edge lies, in esophageal radii from its centre:
            // −2.4 to −1.3 the PTV takes in the whole circumference, −1.3 to
            // 0.4 it cuts through the esophagus (the near wall in the target,
            // the far wall in the penumbra), 1 to 4 it stays clear.
            // Small tumours and nodes wrap around the esophagus more often
            // than bulky masses, which tend to push it aside.
            let mut w = RELATION_WEIGHTS[usize::from(nodal)];
            w[0] *= 1.5 - (r - 10.0) / 20.0;
            let relation = rng.weighted(&w);
            let edge = match relation {
                0 => rng.range(-2.4, -1.3),
                1 => rng.range(-1.3, 0.4),
                _ => rng.range(1.0, 4.0),
            };
            // Nodal chains that run alongside the esophagus are the long ones.
            let stretch = match (nodal, relation) {
                (false, _) => 1.0,
                (true, 0) => rng.range(1.3, 2.0),
                (true, _) => rng.range(1.5, 2.6),
            };
            // The PTV's in-plane radius towards the esophagus.
            let ptv_radius =
                1.0 / ((ux / (ax + margin)).powi(2) + (uy / (ay + margin)).powi(2)).sqrt();
            let d = (ptv_radius + edge * rx).max(0.0);
            (
                Ellipsoid {
                    c: [ex + d * ux, ey + d * uy, z],
                    r: [ax, ay, r * stretch],
                },
                nodal,
            )
        }
        Location::Peripheral => {
            let side = if rng.bernoulli(0.55) { -1.0 } else { 1.0 };
            let l = if side > 0.0 { lung_left } else { lung_right };
            let r = if sbrt {
                rng.range(8.0, 16.0)
            } else {
                rng.range(12.0, 30.0)
            };
            (
                Ellipsoid {
                    c: [
                        l.c[0] + side * rng.range(-0.35, 0.45) * l.r[0],
                        l.c[1] + rng.range(-0.4, 0.3) * l.r[1],
                        l.c[2] + rng.range(-0.45, 0.45) * l.r[2],
                    ],
                    r: [r, r * rng.range(0.85, 1.1), r * rng.range(0.9, 1.2)],
                },
                false,
            )
        }
    };
    Anatomy {
        body,
        lung_left,
        lung_right,
        heart,
        cord,
        esophagus,
        ptv: gtv.grown(margin),
        gtv,
        location,
        nodal,
    }
}
