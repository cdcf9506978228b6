//! Training losses of the DGD model: weighted BCE for the risk logit, Dice + BCE for the
//! auxiliary segmentation, and the supervised contrastive loss on the projections.

use candle_core::{Result, Tensor, D};

/// Mean binary cross-entropy on logits, positives weighted by `pos_weight` (PyTorch's
/// `BCEWithLogitsLoss`). Uses `max(-x,0) + log(1+exp(-|x|))` for `-log σ(x)` so large
/// logits neither overflow nor give NaN gradients. `targets` in [0, 1], same shape.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor, pos_weight: f64) -> Result<Tensor> {
    if logits.shape() != targets.shape() {
        candle_core::bail!(
            "bce_with_logits: logits {:?} vs targets {:?}",
            logits.dims(),
            targets.dims()
        );
    }
    let targets = targets.to_dtype(logits.dtype())?;
    // -log σ(x) = softplus(-x).
    let neg_log_sig = (logits.neg()?.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    // -log(1-σ(x)) = x + softplus(-x); weight w on positives:
    // t·w·softplus(-x) + (1-t)·(x + softplus(-x)) = (1-t)·x + (1 + (w-1)·t)·softplus(-x).
    let weight = ((&targets * (pos_weight - 1.0))? + 1.0)?;
    let loss = ((targets.affine(-1.0, 1.0)? * logits)? + (weight * neg_log_sig)?)?;
    loss.mean_all()
}

/// Soft Dice loss plus voxel-wise BCE for `[B, 1, D, H, W]` logits and a
/// {0, 1} target. The Dice is taken over the whole batch, not per sample:
/// the regions are a few voxels of thousands and a third of the patients
/// have none, and a per-sample Dice (smoothed so that empty matches empty)
/// then rewards predicting nothing, which is where the branch collapsed.
/// The smoothing term 1 keeps an all-empty batch at Dice ≈ 1 (loss ≈ 0).
pub fn dice_bce(seg_logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    const SMOOTH: f64 = 1.0;
    if seg_logits.shape() != target.shape() {
        candle_core::bail!(
            "dice_bce: logits {:?} vs target {:?}",
            seg_logits.dims(),
            target.dims()
        );
    }
    let target = target.to_dtype(seg_logits.dtype())?;
    let p = candle_nn::ops::sigmoid(seg_logits)?.flatten_all()?;
    let t = target.flatten_all()?;
    let inter = (&p * &t)?.sum_all()?;
    let denom = ((p.sum_all()? + t.sum_all()?)? + SMOOTH)?;
    let dice = ((inter * 2.0)? + SMOOTH)?.div(&denom)?;
    dice.affine(-1.0, 1.0)? + bce_with_logits(seg_logits, &target, 1.0)?
}

/// Supervised contrastive loss (Khosla et al. 2020, L_out) on L2-normalised rows `emb`.
///
/// For each anchor i with at least one other sample of its label,
/// `-mean_{p∈P(i)} log(exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ))`, averaged over those
/// anchors. With no such anchor the result is `0 · sum(emb)`: zero, finite, and still
/// connected to the graph so a combined loss backpropagates.
pub fn supcon(emb: &Tensor, labels: &[u32], temperature: f64) -> Result<Tensor> {
    let (b, _) = emb.dims2()?;
    if labels.len() != b {
        candle_core::bail!("supcon: {} labels for {b} embeddings", labels.len());
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        candle_core::bail!("supcon: temperature must be positive, got {temperature}");
    }
    let mut pos = vec![0f32; b * b];
    let mut not_self = vec![1f32; b * b];
    let mut n_pos = vec![0f32; b];
    for i in 0..b {
        not_self[i * b + i] = 0.0;
        for j in 0..b {
            if i != j && labels[i] == labels[j] {
                pos[i * b + j] = 1.0;
                n_pos[i] += 1.0;
            }
        }
    }
    let n_anchors = n_pos.iter().filter(|&&n| n > 0.0).count();
    if n_anchors == 0 {
        // A tensor product, not `* 0.0`: candle prunes affine ops with mul 0 from backprop.
        let zero = Tensor::zeros((), emb.dtype(), emb.device())?;
        return emb.sum_all()?.mul(&zero);
    }
    let dev = emb.device();
    let dtype = emb.dtype();
    let pos = Tensor::from_vec(pos, (b, b), dev)?.to_dtype(dtype)?;
    let not_self = Tensor::from_vec(not_self, (b, b), dev)?.to_dtype(dtype)?;
    // 1/|P(i)|, and 0 for anchors without positives so they drop out of the sum.
    let inv_pos: Vec<f32> = n_pos
        .iter()
        .map(|&n| if n > 0.0 { 1.0 / n } else { 0.0 })
        .collect();
    let inv_pos = Tensor::from_vec(inv_pos, b, dev)?.to_dtype(dtype)?;

    let sim = (emb.matmul(&emb.t()?)? / temperature)?;
    // Shift by the (detached) row max before exp; the shift cancels in log_prob.
    let row_max = sim.max_keepdim(D::Minus1)?.detach();
    let shifted = sim.broadcast_sub(&row_max)?;
    let log_denom = (shifted.exp()? * &not_self)?
        .sum_keepdim(D::Minus1)?
        .log()?;
    let log_prob = shifted.broadcast_sub(&log_denom)?;
    let mean_log_prob_pos = ((log_prob * pos)?.sum(D::Minus1)? * inv_pos)?;
    mean_log_prob_pos.sum_all()? / -(n_anchors as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())
            .expect("scalar")
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() < tol, "{a} vs {b}");
    }

    #[test]
    fn bce_known_values() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0f32, 2., -1.], &dev).expect("x");
        let t = Tensor::new(&[1f32, 0., 1.], &dev).expect("t");
        // ln2, 2 + ln(1+e^-2), ln(1+e)
        close(
            scalar(&bce_with_logits(&x, &t, 1.0).expect("bce")),
            1.3777789,
            1e-5,
        );
        // positives doubled: (2 ln2 + 2.126928 + 2 ln(1+e)) / 3
        close(
            scalar(&bce_with_logits(&x, &t, 2.0).expect("bce")),
            2.0465822,
            1e-5,
        );
    }

    #[test]
    fn bce_extreme_logits_finite() {
        let dev = Device::Cpu;
        let x = Var::new(&[100f32, -100., 100., -100.], &dev).expect("x");
        let t = Tensor::new(&[1f32, 0., 0., 1.], &dev).expect("t");
        let loss = bce_with_logits(x.as_tensor(), &t, 3.0).expect("bce");
        // (0 + 0 + 100 + 3·100) / 4
        close(scalar(&loss), 100.0, 1e-3);
        let g = loss.backward().expect("backward");
        let g = g
            .get(x.as_tensor())
            .expect("grad")
            .to_vec1::<f32>()
            .expect("vec");
        // d/dx = ((1-t)σ(x)·... ) simplified: [0, 0, 1/4, -3/4]
        for (a, b) in g.iter().zip([0f32, 0., 0.25, -0.75]) {
            assert!((a - b).abs() < 1e-5, "{g:?}");
        }
    }

    #[test]
    fn dice_bce_known_values() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0f32, 0.], &dev)
            .and_then(|t| t.reshape((1, 1, 1, 1, 2)))
            .expect("x");
        let t = Tensor::new(&[1f32, 0.], &dev)
            .and_then(|t| t.reshape((1, 1, 1, 1, 2)))
            .expect("t");
        // p = .5,.5: Dice = (2·.5 + 1)/(1 + 1 + 1) = 2/3; BCE = ln 2.
        close(
            scalar(&dice_bce(&x, &t).expect("loss")),
            1.0 / 3.0 + 2f64.ln(),
            1e-5,
        );

        // Empty target, confidently empty prediction → ~0.
        let x = Tensor::full(-30f32, (2, 1, 4, 5, 6), &dev).expect("x");
        let t = Tensor::zeros((2, 1, 4, 5, 6), DType::F32, &dev).expect("t");
        assert!(scalar(&dice_bce(&x, &t).expect("loss")) < 1e-6);

        // Perfect confident prediction of a non-empty target → ~0.
        let t = Tensor::new(&[1f32, 0., 1., 1.], &dev)
            .and_then(|t| t.reshape((1, 1, 1, 2, 2)))
            .expect("t");
        let x = t.affine(60.0, -30.0).expect("x");
        assert!(scalar(&dice_bce(&x, &t).expect("loss")) < 1e-6);

        // One Dice over the batch: a patient with no region and an empty
        // prediction does not pull the loss towards "predict nothing".
        // Sample 1: target {1, 0}, p = .5, .5; sample 2: empty target,
        // confident empty prediction. Dice = (2·.5 + 1)/(1 + 1 + 1) = 2/3
        // over the batch; BCE = (2 ln 2 + ~0) / 4.
        let x = Tensor::new(&[0f32, 0., -30., -30.], &dev)
            .and_then(|t| t.reshape((2, 1, 1, 1, 2)))
            .expect("x");
        let t = Tensor::new(&[1f32, 0., 0., 0.], &dev)
            .and_then(|t| t.reshape((2, 1, 1, 1, 2)))
            .expect("t");
        close(
            scalar(&dice_bce(&x, &t).expect("loss")),
            1.0 / 3.0 + 2f64.ln() / 2.0,
            1e-5,
        );
    }

    #[test]
    fn supcon_known_value() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1f32, 0.], [0., 1.], [0.6, 0.8]], &dev).expect("z");
        // τ = 0.5. Anchor 0: log(1+e^1.2) - 1.2; anchor 2: log(e^1.2+e^1.6) - 1.2;
        // anchor 1 has no positive and is skipped.
        let l0 = (1f64 + 1.2f64.exp()).ln() - 1.2;
        let l2 = (1.2f64.exp() + 1.6f64.exp()).ln() - 1.2;
        let loss = supcon(&z, &[0, 1, 0], 0.5).expect("supcon");
        close(scalar(&loss), (l0 + l2) / 2.0, 1e-5);
        close((l0 + l2) / 2.0, 0.588149, 1e-5);
    }

    #[test]
    fn supcon_two_positives_and_temperature() {
        let dev = Device::Cpu;
        // Orthogonal unit rows: every similarity 0 except self, so each log_prob is
        // -log(B-1) whatever the labels and temperature.
        let z = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.]], &dev).expect("z");
        let loss = supcon(&z, &[4, 4, 4], 0.07).expect("supcon");
        close(scalar(&loss), 2f64.ln(), 1e-5);
    }

    #[test]
    fn supcon_zero_without_positives_and_in_graph() {
        let dev = Device::Cpu;
        let z =
            Var::from_tensor(&Tensor::new(&[[1f32, 0.], [0., 1.]], &dev).expect("z")).expect("var");
        let loss = supcon(z.as_tensor(), &[0, 1], 0.1).expect("supcon");
        assert_eq!(scalar(&loss), 0.0);
        assert_eq!(loss.rank(), 0);
        let g = loss.backward().expect("backward");
        let g = g.get(z.as_tensor()).expect("grad in graph");
        assert_eq!(
            g.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v"),
            vec![0.0; 4]
        );
        // A single sample has no pair either.
        let one = Tensor::new(&[[1f32, 0.]], &dev).expect("one");
        assert_eq!(scalar(&supcon(&one, &[1], 0.1).expect("supcon")), 0.0);
        assert!(supcon(&one, &[1, 2], 0.1).is_err());
    }

    #[test]
    fn supcon_gradients_finite() {
        let dev = Device::Cpu;
        // Identical embeddings and a tiny temperature: the worst case for exp overflow.
        let raw = Var::from_tensor(
            &Tensor::new(&[[1f32, 0.], [1., 0.], [1., 0.], [0.6, 0.8]], &dev).expect("z"),
        )
        .expect("var");
        let loss = supcon(raw.as_tensor(), &[0, 0, 1, 1], 0.01).expect("supcon");
        assert!(scalar(&loss).is_finite());
        let g = loss.backward().expect("backward");
        let g = g
            .get(raw.as_tensor())
            .expect("grad")
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("v");
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");

        // Random normalised embeddings, mixed labels.
        let z = Var::from_tensor(&Tensor::randn(0f32, 1., (6, 5), &dev).expect("z")).expect("var");
        let zn = z
            .as_tensor()
            .broadcast_div(
                &z.as_tensor()
                    .sqr()
                    .and_then(|t| t.sum_keepdim(1))
                    .and_then(|t| t.sqrt())
                    .expect("norm"),
            )
            .expect("normalise");
        let loss = supcon(&zn, &[0, 1, 0, 1, 2, 2], 0.1).expect("supcon");
        assert!(scalar(&loss).is_finite() && scalar(&loss) > 0.0);
        let g = loss.backward().expect("backward");
        let g = g
            .get(z.as_tensor())
            .expect("grad")
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("v");
        assert!(g.iter().all(|v| v.is_finite()));
    }
}
