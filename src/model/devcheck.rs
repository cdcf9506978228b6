//! Does the network compute the same on another device, and how fast?
//!
//! `esorisk device-check` builds the network twice from one seed (the
//! initial weights are a function of the seed and the parameter names, not
//! of the device), feeds both copies the same deterministic input, and
//! compares every output of the CPU copy with the device copy: risk logits,
//! segmentation logits and contrastive embedding. It then times the
//! forward pass and full training steps (forward, Dice + BCE + contrastive
//! loss, backward, AdamW) on the device. This is what a lent GPU is checked
//! with, in one short run, before anything is trained on it.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::loss;
use super::net::{Dgd, NetConfig};
use super::train;
use crate::synth::rng::Rng;

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub net: NetConfig,
    /// Input grid `[D, H, W]`.
    pub size: [usize; 3],
    /// Samples for the CPU-against-device comparison.
    pub compare_batch: usize,
    /// Samples per timed step.
    pub batch: usize,
    /// Timed repetitions (after one untimed warm-up).
    pub reps: usize,
    pub seed: u64,
}

/// The largest difference of one output, relative to the output's scale.
#[derive(Debug, Clone)]
pub struct Agreement {
    pub output: &'static str,
    pub elements: usize,
    /// max |cpu − device| / max |cpu|.
    pub relative_error: f64,
}

/// Timings on the device, in seconds (median over the repetitions).
#[derive(Debug, Clone)]
pub struct Report {
    pub device: String,
    pub parameters: usize,
    pub agreement: Vec<Agreement>,
    pub cpu_forward_s: f64,
    pub forward_s: f64,
    pub train_step_s: f64,
    pub samples_per_second: f64,
    /// Samples per timed step.
    pub batch: usize,
}

impl Report {
    /// The worst relative error over all outputs; NaN when any output is
    /// not a number (which `f64::max` would hide).
    pub fn worst(&self) -> f64 {
        self.agreement
            .iter()
            .map(|a| a.relative_error)
            .fold(0.0, |m, e| {
                if m.is_nan() || e.is_nan() {
                    f64::NAN
                } else {
                    m.max(e)
                }
            })
    }
}

struct Outputs {
    risk: Tensor,
    seg: Tensor,
    proj: Tensor,
}

fn forward(
    net: &Dgd,
    x: &Tensor,
    f: Option<&Tensor>,
    size: [usize; 3],
) -> candle_core::Result<Outputs> {
    let e = net.encode(x)?;
    Ok(Outputs {
        risk: net.head(&e, f)?,
        seg: net.segment(&e, (size[0], size[1], size[2]))?,
        proj: net.project(&e)?,
    })
}

/// Deterministic input of `b` samples: a smooth dose-like channel, the
/// others a centred box, and standardised dosiomic features.
fn inputs(
    cfg: &CheckConfig,
    b: usize,
    dev: &Device,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let [d, h, w] = cfg.size;
    let c = cfg.net.in_channels;
    let mut rng = Rng::new(Rng::derive(cfg.seed, "device-check input", b as u64));
    let mut x = Vec::with_capacity(b * c * d * h * w);
    for _ in 0..b {
        let centre = [
            rng.range(0.3, 0.7),
            rng.range(0.3, 0.7),
            rng.range(0.3, 0.7),
        ];
        for ch in 0..c {
            for k in 0..d {
                for j in 0..h {
                    for i in 0..w {
                        let p = [
                            k as f64 / d as f64 - centre[0],
                            j as f64 / h as f64 - centre[1],
                            i as f64 / w as f64 - centre[2],
                        ];
                        let r2 = p.iter().map(|v| v * v).sum::<f64>();
                        let v = if ch == 0 {
                            (-r2 / 0.05).exp() + 0.05 * rng.normal()
                        } else {
                            f64::from(u8::from(p.iter().all(|v| v.abs() < 0.1)))
                        };
                        x.push(v as f32);
                    }
                }
            }
        }
    }
    let x = Tensor::from_vec(x, (b, c, d, h, w), dev)?;
    let n = cfg.net.side_dim();
    let f = (n > 0)
        .then(|| {
            let v: Vec<f32> = (0..b * n).map(|_| rng.normal() as f32).collect();
            Tensor::from_vec(v, (b, n), dev)
        })
        .transpose()?;
    Ok((x, f))
}

fn relative_error(
    output: &'static str,
    cpu: &Tensor,
    other: &Tensor,
) -> candle_core::Result<Agreement> {
    let a = cpu.to_dtype(DType::F64)?.flatten_all()?;
    let b = other
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let scale = a.abs()?.max(0)?.to_scalar::<f64>()?;
    let diff = (a - b)?.abs()?.max(0)?.to_scalar::<f64>()?;
    Ok(Agreement {
        output,
        elements: cpu.elem_count(),
        relative_error: if scale > 0.0 { diff / scale } else { diff },
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Compare the CPU and `dev` copies and time `dev`.
pub fn check(cfg: &CheckConfig, dev: &Device) -> Result<Report, String> {
    let err = |e: candle_core::Error| e.to_string();
    let cpu = Device::Cpu;
    let (_, net_cpu) = train::build(&cfg.net, cfg.seed, &cpu)?;
    let (varmap, net) = train::build(&cfg.net, cfg.seed, dev)?;
    let parameters = varmap.all_vars().iter().map(|v| v.elem_count()).sum();

    // Agreement, on one batch.
    let (x, f) = inputs(cfg, cfg.compare_batch.max(1), &cpu).map_err(err)?;
    let t = Instant::now();
    let on_cpu = forward(&net_cpu, &x, f.as_ref(), cfg.size).map_err(err)?;
    let cpu_forward_s = t.elapsed().as_secs_f64();
    let xd = x.to_device(dev).map_err(err)?;
    let fd = f
        .as_ref()
        .map(|f| f.to_device(dev))
        .transpose()
        .map_err(err)?;
    let on_dev = forward(&net, &xd, fd.as_ref(), cfg.size).map_err(err)?;
    let agreement = vec![
        relative_error("risk logits", &on_cpu.risk, &on_dev.risk).map_err(err)?,
        relative_error("segmentation logits", &on_cpu.seg, &on_dev.seg).map_err(err)?,
        relative_error("contrastive embedding", &on_cpu.proj, &on_dev.proj).map_err(err)?,
    ];

    // Only the device's copy is needed from here on.
    drop((net_cpu, on_cpu, on_dev));

    // Timing, on the device.
    let b = cfg.batch.max(1);
    let (x, f) = inputs(cfg, b, dev).map_err(err)?;
    let target = x
        .narrow(1, 0, 1)
        .and_then(|t| t.ge(0.5))
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(err)?;
    let labels: Vec<u32> = (0..b as u32).map(|i| i % 2).collect();
    let y = Tensor::from_vec(
        labels.iter().map(|&l| l as f32).collect::<Vec<f32>>(),
        b,
        dev,
    )
    .map_err(err)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default()).map_err(err)?;
    let (mut fwd, mut steps) = (Vec::new(), Vec::new());
    for rep in 0..=cfg.reps.max(1) {
        let t = Instant::now();
        let o = forward(&net, &x, f.as_ref(), cfg.size).map_err(err)?;
        o.risk
            .sum_all()
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(err)?;
        dev.synchronize().map_err(err)?;
        let forward_s = t.elapsed().as_secs_f64();
        drop(o);

        let t = Instant::now();
        let o = forward(&net, &x, f.as_ref(), cfg.size).map_err(err)?;
        let mut l = loss::bce_with_logits(&o.risk, &y, 1.0)
            .and_then(|l| l + loss::dice_bce(&o.seg, &target)?)
            .map_err(err)?;
        if b > 1 {
            // The contrastive term compares samples; one alone has none.
            l = (loss::supcon(&o.proj, &labels, 0.1)
                .and_then(|c| c * 0.2)
                .and_then(|c| l + c))
            .map_err(err)?;
        }
        opt.backward_step(&l).map_err(err)?;
        l.to_scalar::<f32>().map_err(err)?;
        dev.synchronize().map_err(err)?;
        if rep > 0 {
            fwd.push(forward_s);
            steps.push(t.elapsed().as_secs_f64());
        }
    }
    let train_step_s = median(steps);
    Ok(Report {
        device: format!("{dev:?}"),
        parameters,
        agreement,
        cpu_forward_s,
        forward_s: median(fwd),
        train_step_s,
        samples_per_second: b as f64 / train_step_s,
        batch: b,
    })
}

/// The report as a short Markdown table.
pub fn table(cfg: &CheckConfig, r: &Report) -> String {
    let [d, h, w] = cfg.size;
    let mut s = format!(
        "network: width {}, {:.1} million parameters, input {} x {d} x {h} x {w}; device {}\n\n",
        cfg.net.width,
        r.parameters as f64 / 1e6,
        cfg.net.in_channels,
        r.device
    );
    s += "| output | elements | max relative error, CPU vs device |\n|---|---|---|\n";
    for a in &r.agreement {
        s += &format!(
            "| {} | {} | {:.2e} |\n",
            a.output, a.elements, a.relative_error
        );
    }
    s += &format!(
        "\n| step | batch | seconds (median of {}) |\n|---|---|---|\n",
        cfg.reps.max(1)
    );
    s += &format!(
        "| forward on the CPU (once) | {} | {:.3} |\n",
        cfg.compare_batch.max(1),
        r.cpu_forward_s
    );
    s += &format!(
        "| forward on the device | {} | {:.4} |\n",
        r.batch, r.forward_s
    );
    s += &format!(
        "| training step on the device | {} | {:.4} ({:.2} samples/s) |\n",
        r.batch, r.train_step_s, r.samples_per_second
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A width-2 network on a small grid, one timed repetition.
    fn tiny(size: [usize; 3], n_dosiomics: usize, seed: u64) -> CheckConfig {
        CheckConfig {
            net: NetConfig {
                width: 2,
                n_dosiomics,
                groups: 2,
                ..NetConfig::default()
            },
            size,
            compare_batch: 1,
            batch: 2,
            reps: 1,
            seed,
        }
    }

    #[test]
    fn two_builds_from_one_seed_agree_and_a_step_is_timed() {
        let cfg = tiny([8, 16, 16], 3, 7);
        let r = check(&cfg, &Device::Cpu).expect("check");
        assert_eq!(r.agreement.len(), 3);
        assert_eq!(r.agreement[1].elements, 8 * 16 * 16);
        // Same device, same seed, same input: identical outputs.
        assert_eq!(r.worst(), 0.0, "{:?}", r.agreement);
        assert!(r.parameters > 0 && r.train_step_s > 0.0 && r.forward_s > 0.0);
    }

    #[test]
    fn a_different_network_is_caught() {
        let cfg = tiny([8, 8, 8], 0, 1);
        let x = inputs(&cfg, 1, &Device::Cpu).expect("input").0;
        let (_, a) = train::build(&cfg.net, 1, &Device::Cpu).expect("a");
        let (_, b) = train::build(&cfg.net, 2, &Device::Cpu).expect("b");
        let oa = forward(&a, &x, None, cfg.size).expect("fa");
        let ob = forward(&b, &x, None, cfg.size).expect("fb");
        let e = relative_error("risk logits", &oa.risk, &ob.risk).expect("err");
        assert!(e.relative_error > 1e-3, "{e:?}");
    }
}
