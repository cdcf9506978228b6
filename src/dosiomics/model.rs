//! The dosiomics-only risk model: impute, standardise, prune redundant
//! features, then LASSO-penalised logistic regression with the penalty
//! chosen by inner stratified cross-validation.
//!
//! The solver is our own (glmnet's coordinate descent on the IRLS quadratic
//! approximation, warm-started along a decreasing penalty path): the
//! maintained Rust crates cover logistic regression with an L2 penalty only
//! (linfa-logistic) or the L1 penalty with squared loss only
//! (linfa-elasticnet), and the L1 penalty on the logistic loss is what
//! selects features.

use serde::{Deserialize, Serialize};

use crate::metrics::stratified_folds;

/// Settings of the fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Inner folds for choosing the penalty.
    pub inner_folds: usize,
    /// Penalties on the path, from the smallest that keeps every coefficient
    /// at zero down to `path_ratio` times it, log-spaced.
    pub path_len: usize,
    pub path_ratio: f64,
    /// Features missing in more than this share of training patients are
    /// dropped; the others are imputed with the training median.
    pub max_missing: f64,
    /// Of two features correlated above this (|Pearson r|), the one with the
    /// weaker univariate association is dropped before the LASSO.
    pub max_correlation: f64,
    /// How the inner cross-validation picks the penalty.
    pub lambda_rule: LambdaRule,
    pub seed: u64,
}

/// Which penalty the inner cross-validation picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LambdaRule {
    /// The lowest mean held-out deviance (glmnet's `lambda.min`).
    Min,
    /// The largest penalty within one standard error of that minimum
    /// (glmnet's `lambda.1se`): fewer features, more shrinkage.
    #[serde(rename = "1se")]
    OneSe,
}

impl std::str::FromStr for LambdaRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "min" => Ok(LambdaRule::Min),
            "1se" => Ok(LambdaRule::OneSe),
            o => Err(format!("lambda rule {o:?}: min or 1se")),
        }
    }
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            inner_folds: 5,
            path_len: 25,
            path_ratio: 0.02,
            max_missing: 0.5,
            max_correlation: 0.95,
            lambda_rule: LambdaRule::Min,
            seed: 1,
        }
    }
}

/// One feature the model uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFeature {
    pub name: String,
    /// Training median, used for a missing value.
    pub median: f64,
    pub mean: f64,
    pub sd: f64,
    /// Coefficient on the standardised (and clipped) feature.
    pub coefficient: f64,
}

/// A fitted dosiomics model: logit p = intercept + Σ coefficient × z, with
/// z = clamp((value − mean) / sd, ±Z_CLIP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogisticModel {
    pub intercept: f64,
    pub lambda: f64,
    /// Features with a non-zero coefficient.
    pub features: Vec<ModelFeature>,
    /// Features that entered the LASSO (after missingness, constancy and
    /// correlation pruning).
    pub candidates: usize,
}

/// Standardised values are clipped here so that one extreme texture value
/// cannot dominate a prediction.
pub const Z_CLIP: f64 = 6.0;

impl LogisticModel {
    /// The model's features as it sees them: standardised, clipped, the
    /// median for a missing value; `value(name)` returns the raw feature.
    pub fn standardised(&self, value: impl Fn(&str) -> Option<f64>) -> Vec<f64> {
        self.features
            .iter()
            .map(|f| {
                let v = value(&f.name).filter(|v| v.is_finite()).unwrap_or(f.median);
                ((v - f.mean) / f.sd).clamp(-Z_CLIP, Z_CLIP)
            })
            .collect()
    }

    /// Probability for one patient; `value(name)` returns the feature.
    pub fn predict(&self, value: impl Fn(&str) -> Option<f64>) -> f64 {
        let z = self.standardised(value);
        let eta = self.intercept
            + self
                .features
                .iter()
                .zip(&z)
                .map(|(f, z)| f.coefficient * z)
                .sum::<f64>();
        sigmoid(eta)
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Fit on `rows` (one per patient, values in `names` order) and labels.
pub fn fit(
    rows: &[Vec<Option<f64>>],
    labels: &[bool],
    names: &[String],
    o: &FitOptions,
) -> LogisticModel {
    let n = rows.len();
    let y: Vec<f64> = labels.iter().map(|&l| f64::from(u8::from(l))).collect();
    // Columns kept: present often enough and not constant.
    let mut cols: Vec<(usize, f64, Vec<f64>)> = Vec::new();
    for j in 0..names.len() {
        let present: Vec<f64> = rows
            .iter()
            .filter_map(|r| r[j])
            .filter(|v| v.is_finite())
            .collect();
        if n == 0 || (n - present.len()) as f64 > o.max_missing * n as f64 {
            continue;
        }
        let median = median(&present);
        let col: Vec<f64> = rows
            .iter()
            .map(|r| r[j].filter(|v| v.is_finite()).unwrap_or(median))
            .collect();
        let (mean, sd) = mean_sd(&col);
        if sd < 1e-12 * (1.0 + mean.abs()) {
            continue;
        }
        cols.push((j, median, col));
    }
    // Strongest univariate association first, then greedy decorrelation.
    let strength = |c: &[f64]| (crate::metrics::auc(c, labels) - 0.5).abs();
    let mut order: Vec<(f64, usize)> = cols
        .iter()
        .enumerate()
        .map(|(k, c)| (strength(&c.2), k))
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept: Vec<usize> = Vec::new();
    let standardised: Vec<Vec<f64>> = cols.iter().map(|c| standardise(&c.2)).collect();
    for (_, k) in order {
        let redundant = kept.iter().any(|&m| {
            let r = dot(&standardised[k], &standardised[m]) / n as f64;
            r.abs() > o.max_correlation
        });
        if !redundant {
            kept.push(k);
        }
    }
    kept.sort_unstable();
    let mut stats = Vec::new();
    let mut x: Vec<Vec<f64>> = Vec::new();
    for &k in &kept {
        let (j, median, col) = &cols[k];
        let (mean, sd) = mean_sd(col);
        stats.push((*j, *median, mean, sd));
        x.push(
            col.iter()
                .map(|v| ((v - mean) / sd).clamp(-Z_CLIP, Z_CLIP))
                .collect(),
        );
    }
    let lambdas = path(&x, &y, o.path_len, o.path_ratio);
    let best = choose_lambda(&x, &y, labels, &lambdas, o);
    let fits = fit_path(&x, &y, &lambdas[..=best]);
    let (b0, beta) = fits
        .last()
        .cloned()
        .unwrap_or((logit_mean(&y), vec![0.0; x.len()]));
    let features = stats
        .iter()
        .zip(&beta)
        .filter(|(_, b)| **b != 0.0)
        .map(|(&(j, median, mean, sd), &b)| ModelFeature {
            name: names[j].clone(),
            median,
            mean,
            sd,
            coefficient: b,
        })
        .collect();
    LogisticModel {
        intercept: b0,
        lambda: lambdas.get(best).copied().unwrap_or(0.0),
        features,
        candidates: kept.len(),
    }
}

/// Penalty path: λmax (all coefficients zero) down to `ratio` λmax.
fn path(x: &[Vec<f64>], y: &[f64], len: usize, ratio: f64) -> Vec<f64> {
    let n = y.len().max(1) as f64;
    let ybar = y.iter().sum::<f64>() / n;
    let lmax = x
        .iter()
        .map(|c| (c.iter().zip(y).map(|(a, b)| a * (b - ybar)).sum::<f64>() / n).abs())
        .fold(0.0, f64::max);
    if lmax <= 0.0 || len == 0 {
        return vec![0.0];
    }
    (0..len)
        .map(|k| lmax * ratio.powf(k as f64 / (len - 1).max(1) as f64))
        .collect()
}

/// Index into `lambdas` chosen by inner stratified cross-validation on the
/// held-out deviance, by `o.lambda_rule`.
fn choose_lambda(
    x: &[Vec<f64>],
    y: &[f64],
    labels: &[bool],
    lambdas: &[f64],
    o: &FitOptions,
) -> usize {
    let k = o.inner_folds.max(2);
    let folds = stratified_folds(labels, k, o.seed);
    // Held-out deviance per fold and λ, per patient.
    let mut per_fold = vec![vec![0.0; lambdas.len()]; k];
    let mut counted = vec![0usize; k];
    for f in 0..k {
        let train: Vec<usize> = (0..y.len()).filter(|&i| folds[i] != f).collect();
        let test: Vec<usize> = (0..y.len()).filter(|&i| folds[i] == f).collect();
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let xt: Vec<Vec<f64>> = x
            .iter()
            .map(|c| train.iter().map(|&i| c[i]).collect())
            .collect();
        let yt: Vec<f64> = train.iter().map(|&i| y[i]).collect();
        for (l, (b0, beta)) in fit_path(&xt, &yt, lambdas).iter().enumerate() {
            for &i in &test {
                let eta = b0 + x.iter().zip(beta).map(|(c, b)| c[i] * b).sum::<f64>();
                let p = sigmoid(eta).clamp(1e-9, 1.0 - 1e-9);
                per_fold[f][l] -= if y[i] > 0.5 { p.ln() } else { (1.0 - p).ln() };
            }
        }
        counted[f] = test.len();
    }
    let folds_used: Vec<usize> = (0..k).filter(|&f| counted[f] > 0).collect();
    let m = folds_used.len().max(1) as f64;
    let stats: Vec<(f64, f64)> = (0..lambdas.len())
        .map(|l| {
            let d: Vec<f64> = folds_used
                .iter()
                .map(|&f| per_fold[f][l] / counted[f] as f64)
                .collect();
            let mean = d.iter().sum::<f64>() / m;
            let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (m - 1.0).max(1.0);
            (mean, (var / m).sqrt())
        })
        .collect();
    let Some((best, &(min, se))) = stats
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
    else {
        return 0;
    };
    // λ decreases along the path: the first within one SE is the largest.
    stats
        .iter()
        .position(|&(mean, _)| {
            mean <= min
                + match o.lambda_rule {
                    LambdaRule::Min => 0.0,
                    LambdaRule::OneSe => se,
                }
        })
        .unwrap_or(best)
}

fn logit_mean(y: &[f64]) -> f64 {
    let p = (y.iter().sum::<f64>() / y.len().max(1) as f64).clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// Coordinate descent on the penalised IRLS approximation (Friedman, Hastie
/// & Tibshirani 2010), one fit per λ, each warm-started from the last.
/// `x` is column-major (one Vec per feature), already standardised.
pub fn fit_path(x: &[Vec<f64>], y: &[f64], lambdas: &[f64]) -> Vec<(f64, Vec<f64>)> {
    let n = y.len();
    let nf = n as f64;
    let p = x.len();
    let mut b0 = logit_mean(y);
    let mut beta = vec![0.0; p];
    let mut eta = vec![b0; n];
    let mut out = Vec::with_capacity(lambdas.len());
    let mut w = vec![0.0; n];
    let mut r = vec![0.0; n];
    for &lambda in lambdas {
        for _irls in 0..25 {
            // Quadratic approximation at the current η.
            for i in 0..n {
                let pi = sigmoid(eta[i]);
                w[i] = (pi * (1.0 - pi)).max(1e-5);
                r[i] = (y[i] - pi) / w[i];
            }
            let xw: Vec<f64> = x
                .iter()
                .map(|c| c.iter().zip(&w).map(|(a, b)| a * a * b).sum::<f64>() / nf)
                .collect();
            let before = beta.clone();
            let b0_before = b0;
            for _cd in 0..100 {
                let mut max_change: f64 = 0.0;
                let sw: f64 = w.iter().sum();
                let d0 = w.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>() / sw;
                b0 += d0;
                for ri in r.iter_mut() {
                    *ri -= d0;
                }
                for j in 0..p {
                    if xw[j] <= 0.0 {
                        continue;
                    }
                    let c = &x[j];
                    let g = c
                        .iter()
                        .zip(&w)
                        .zip(&r)
                        .map(|((a, b), c)| a * b * c)
                        .sum::<f64>()
                        / nf;
                    let z = g + xw[j] * beta[j];
                    let new = soft(z, lambda) / xw[j];
                    let d = new - beta[j];
                    if d != 0.0 {
                        for i in 0..n {
                            r[i] -= d * c[i];
                        }
                        beta[j] = new;
                        max_change = max_change.max(d.abs() * xw[j].sqrt());
                    }
                }
                if max_change.max(d0.abs()) < 1e-6 {
                    break;
                }
            }
            for i in 0..n {
                eta[i] = b0 + x.iter().zip(&beta).map(|(c, b)| c[i] * b).sum::<f64>();
            }
            let change = beta
                .iter()
                .zip(&before)
                .map(|(a, b)| (a - b).abs())
                .fold((b0 - b0_before).abs(), f64::max);
            if change < 1e-6 {
                break;
            }
        }
        out.push((b0, beta.clone()));
    }
    out
}

fn soft(z: f64, l: f64) -> f64 {
    if z > l {
        z - l
    } else if z < -l {
        z + l
    } else {
        0.0
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn standardise(v: &[f64]) -> Vec<f64> {
    let (m, s) = mean_sd(v);
    v.iter().map(|x| (x - m) / s).collect()
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::rng::Rng;

    /// Two groups differ in one of twenty features; the LASSO must keep it
    /// and (nearly) nothing else.
    #[test]
    fn selection_finds_the_separating_feature() {
        let mut rng = Rng::new(11);
        let n = 160;
        let labels: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let names: Vec<String> = (0..20).map(|j| format!("f{j}")).collect();
        let rows: Vec<Vec<Option<f64>>> = labels
            .iter()
            .map(|&l| {
                (0..20)
                    .map(|j| {
                        let shift = if j == 7 && l { 1.5 } else { 0.0 };
                        Some(10.0 + 3.0 * (rng.normal() + shift))
                    })
                    .collect()
            })
            .collect();
        let m = fit(&rows, &labels, &names, &FitOptions::default());
        let top = m
            .features
            .iter()
            .max_by(|a, b| a.coefficient.abs().total_cmp(&b.coefficient.abs()))
            .map(|f| f.name.as_str());
        assert_eq!(top, Some("f7"), "{m:?}");
        let f7 = &m.features.iter().find(|f| f.name == "f7").unwrap();
        assert!(f7.coefficient > 0.5, "{m:?}");
        // Noise features, if kept at all, are shrunk far below the signal.
        assert!(
            m.features
                .iter()
                .filter(|f| f.name != "f7")
                .all(|f| f.coefficient.abs() < 0.2 * f7.coefficient),
            "{m:?}"
        );
        // The one-SE rule keeps fewer.
        let sparse = fit(
            &rows,
            &labels,
            &names,
            &FitOptions {
                lambda_rule: LambdaRule::OneSe,
                ..Default::default()
            },
        );
        assert!(
            sparse.features.len() <= m.features.len() && sparse.features.len() <= 4,
            "{sparse:?}"
        );
        assert!(sparse.features.iter().any(|f| f.name == "f7"));
        // Predictions follow the feature.
        let p_hi = m.predict(|k| Some(if k == "f7" { 20.0 } else { 10.0 }));
        let p_lo = m.predict(|k| Some(if k == "f7" { 5.0 } else { 10.0 }));
        assert!(p_hi > 0.7 && p_lo < 0.3, "{p_hi} {p_lo}");
    }

    #[test]
    fn unpenalised_end_of_path_matches_logistic_regression() {
        // One standardised feature; at λ → 0 the fit solves the score
        // equations: Σ (y − p) = 0 and Σ x (y − p) = 0.
        let x = vec![vec![-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 0.0]];
        let y = vec![0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let fits = fit_path(&x, &y, &[0.0]);
        let (b0, beta) = &fits[0];
        let (mut s0, mut s1) = (0.0, 0.0);
        for i in 0..8 {
            let p = sigmoid(b0 + beta[0] * x[0][i]);
            s0 += y[i] - p;
            s1 += x[0][i] * (y[i] - p);
        }
        assert!(s0.abs() < 1e-4 && s1.abs() < 1e-4, "{s0} {s1}");
    }

    #[test]
    fn missing_and_constant_features_are_handled() {
        let labels = vec![true, false, true, false, true, false];
        let names = vec![
            "mostly_missing".to_string(),
            "constant".into(),
            "signal".into(),
        ];
        let rows: Vec<Vec<Option<f64>>> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                vec![
                    (i == 0).then_some(1.0),
                    Some(4.0),
                    Some(if l { 2.0 } else { 1.0 } + i as f64 * 0.01),
                ]
            })
            .collect();
        let m = fit(
            &rows,
            &labels,
            &names,
            &FitOptions {
                inner_folds: 3,
                ..Default::default()
            },
        );
        assert_eq!(m.candidates, 1);
        assert!(m.features.iter().all(|f| f.name == "signal"));
        assert!(m.predict(|_| None).is_finite());
    }
}
