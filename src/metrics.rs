//! Discrimination and calibration measures shared by the ROI search and the
//! model evaluation: AUC with bootstrap confidence intervals, stratified
//! folds, Brier score. Deterministic for a given seed.

use crate::synth::rng::Rng;

/// Area under the ROC curve (Mann–Whitney, ties count one half).
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// AUC with a percentile bootstrap 95% CI over `resamples` resamples of the
/// patients (resamples with one class only are skipped).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AucCi {
    pub auc: f64,
    pub lo: f64,
    pub hi: f64,
}

impl std::fmt::Display for AucCi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} ({:.3}-{:.3})", self.auc, self.lo, self.hi)
    }
}

pub fn auc_ci(scores: &[f64], labels: &[bool], resamples: usize, seed: u64) -> AucCi {
    let point = auc(scores, labels);
    let n = scores.len();
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(resamples);
    let (mut s, mut l) = (vec![0.0; n], vec![false; n]);
    for _ in 0..resamples {
        for k in 0..n {
            let i = (rng.next_u64() % n as u64) as usize;
            s[k] = scores[i];
            l[k] = labels[i];
        }
        let a = auc(&s, &l);
        if a.is_finite() {
            values.push(a);
        }
    }
    values.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if values.is_empty() {
            f64::NAN
        } else {
            values[((p * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)]
        }
    };
    AucCi {
        auc: point,
        lo: q(0.025),
        hi: q(0.975),
    }
}

/// Fold number (0..k) for each sample, stratified by label: each class is
/// shuffled and dealt round-robin, so every fold holds both classes when
/// each class has at least `k` members.
pub fn stratified_folds(labels: &[bool], k: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut fold = vec![0; labels.len()];
    let mut offset = 0;
    for class in [false, true] {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        for i in (1..idx.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        for (r, &i) in idx.iter().enumerate() {
            fold[i] = (r + offset) % k.max(1);
        }
        offset += idx.len();
    }
    fold
}

/// Mean squared difference between predicted probability and outcome.
pub fn brier(p: &[f64], labels: &[bool]) -> f64 {
    p.iter()
        .zip(labels)
        .map(|(p, &l)| (p - f64::from(u8::from(l))).powi(2))
        .sum::<f64>()
        / p.len().max(1) as f64
}

/// Platt scaling: the `(a, b)` of P(label) = σ(a·x + b) by maximum
/// likelihood (Newton's method, a tiny ridge keeps separable data finite).
pub fn platt(x: &[f64], labels: &[bool]) -> (f64, f64) {
    let (mut a, mut b) = (1.0, 0.0);
    let ridge = 1e-6 * x.len().max(1) as f64;
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (-ridge * a, 0.0, ridge, 0.0, 1e-9);
        for (&xi, &l) in x.iter().zip(labels) {
            let p = 1.0 / (1.0 + (-(a * xi + b)).exp());
            let r = f64::from(u8::from(l)) - p;
            let w = p * (1.0 - p);
            ga += r * xi;
            gb += r;
            haa += w * xi * xi;
            hab += w * xi;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-300 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a += da;
        b += db;
        if da.abs() < 1e-10 && db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_recovers_a_known_logistic() {
        // Labels drawn from σ(2x − 1) with a fixed generator.
        let mut rng = crate::synth::rng::Rng::new(7);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..20000 {
            let xi = rng.range(-3.0, 3.0);
            let p = 1.0 / (1.0 + (-(2.0 * xi - 1.0)).exp());
            x.push(xi);
            y.push(rng.range(0.0, 1.0) < p);
        }
        let (a, b) = platt(&x, &y);
        assert!((a - 2.0).abs() < 0.1 && (b + 1.0).abs() < 0.1, "{a} {b}");
        // Already calibrated log-odds stay as they are.
        let z: Vec<f64> = x.iter().map(|v| 2.0 * v - 1.0).collect();
        let (a, b) = platt(&z, &y);
        assert!((a - 1.0).abs() < 0.05 && b.abs() < 0.05, "{a} {b}");
    }

    #[test]
    fn folds_are_stratified_and_deterministic() {
        let labels: Vec<bool> = (0..50).map(|i| i % 5 == 0).collect();
        let f = stratified_folds(&labels, 5, 7);
        assert_eq!(f, stratified_folds(&labels, 5, 7));
        for k in 0..5 {
            let pos = (0..50).filter(|&i| f[i] == k && labels[i]).count();
            let all = (0..50).filter(|&i| f[i] == k).count();
            assert_eq!((pos, all), (2, 10));
        }
    }

    #[test]
    fn bootstrap_interval_brackets_the_estimate() {
        let mut rng = Rng::new(3);
        let labels: Vec<bool> = (0..200).map(|i| i % 3 == 0).collect();
        let scores: Vec<f64> = labels
            .iter()
            .map(|&l| rng.normal() + if l { 1.0 } else { 0.0 })
            .collect();
        let ci = auc_ci(&scores, &labels, 500, 1);
        assert!(ci.lo < ci.auc && ci.auc < ci.hi, "{ci}");
        assert!(ci.auc > 0.65 && ci.auc < 0.9, "{ci}");
        assert!(ci.hi - ci.lo < 0.2, "{ci}");
    }
}
