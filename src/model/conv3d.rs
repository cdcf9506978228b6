//! 3D convolution, pooling and resampling built from candle's 2D kernels.
//!
//! candle 0.11 has no conv3d. A 3D convolution is a sum over the kernel depth of 2D
//! convolutions in which the output depth is folded into the batch, so the heavy work
//! runs in candle's optimised conv2d (CPU and CUDA) and gradients come from its autograd.

use candle_core::{Module, Result, Tensor};
use candle_nn::{init, Init, VarBuilder};

/// Stride and zero padding, the same along depth, height and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dConfig {
    pub stride: usize,
    pub padding: usize,
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
        }
    }
}

/// Cubic-kernel 3D convolution over `[B, C, D, H, W]`.
#[derive(Debug, Clone)]
pub struct Conv3d {
    /// `[out, in, k, k, k]`.
    weight: Tensor,
    /// `[out]`.
    bias: Option<Tensor>,
    cfg: Conv3dConfig,
}

impl Conv3d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv3dConfig) -> Result<Self> {
        let (out_c, _, kd, kh, kw) = weight.dims5()?;
        if kd != kh || kd != kw || kd == 0 {
            candle_core::bail!("conv3d: kernel must be cubic and non-empty, got {kd}x{kh}x{kw}");
        }
        if cfg.stride == 0 {
            candle_core::bail!("conv3d: stride must be positive");
        }
        if let Some(b) = &bias {
            if b.dims1()? != out_c {
                candle_core::bail!(
                    "conv3d: bias has {} entries for {out_c} outputs",
                    b.dims1()?
                );
            }
        }
        Ok(Self { weight, bias, cfg })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn config(&self) -> &Conv3dConfig {
        &self.cfg
    }
}

/// Output length of a window of `k` with `stride` over `n` elements padded by `pad` each side.
fn out_len(n: usize, k: usize, stride: usize, pad: usize, what: &str) -> Result<usize> {
    let padded = n + 2 * pad;
    if padded < k {
        candle_core::bail!("{what}: size {n} (+2*{pad} padding) smaller than kernel {k}");
    }
    Ok((padded - k) / stride + 1)
}

/// Indices `o*stride + offset` for `o in 0..n`, as a u32 tensor on `x`'s device.
fn strided_ids(x: &Tensor, n: usize, stride: usize, offset: usize) -> Result<Tensor> {
    let ids: Vec<u32> = (0..n).map(|o| (o * stride + offset) as u32).collect();
    Tensor::from_vec(ids, n, x.device())
}

/// Elements `offset, offset+stride, ...` (`n` of them) along `dim`: a view when stride is 1.
fn take_strided(x: &Tensor, dim: usize, n: usize, stride: usize, offset: usize) -> Result<Tensor> {
    if stride == 1 {
        x.narrow(dim, offset, n)
    } else {
        // candle's index_select wants a contiguous source.
        x.contiguous()?
            .index_select(&strided_ids(x, n, stride, offset)?, dim)
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, d, h, w) = x.dims5()?;
        let (out_c, in_c, k, _, _) = self.weight.dims5()?;
        if c != in_c {
            candle_core::bail!("conv3d: input has {c} channels, weight expects {in_c}");
        }
        let Conv3dConfig { stride, padding } = self.cfg;
        let d_out = out_len(d, k, stride, padding, "conv3d depth")?;
        let h_out = out_len(h, k, stride, padding, "conv3d height")?;
        let w_out = out_len(w, k, stride, padding, "conv3d width")?;

        // Depth goes outermost, [D, B, C, H, W]: a run of depth slices is then a
        // contiguous [D_out*B, C, H, W] block and reaches conv2d without a copy. The
        // padding copy doubles as the permute copy.
        let mut xp = x
            .permute((2, 0, 1, 3, 4))?
            .pad_with_zeros(0, padding, padding)?;
        let pad2d = if stride == 1 {
            padding
        } else {
            // candle's conv2d backward infers one output_padding from the height and
            // applies it to the width too, which breaks when H and W differ in parity
            // under stride 2. Padding explicitly and cropping both to exactly the
            // extent the windows read makes that output_padding 0 for both.
            xp = xp
                .pad_with_zeros(3, padding, padding)?
                .pad_with_zeros(4, padding, padding)?
                .narrow(3, 0, (h_out - 1) * stride + k)?
                .narrow(4, 0, (w_out - 1) * stride + k)?;
            0
        };
        let xp = xp.contiguous()?;
        let (hp, wp) = (xp.dim(3)?, xp.dim(4)?);

        let mut acc: Option<Tensor> = None;
        for kd in 0..k {
            let slab = take_strided(&xp, 0, d_out, stride, kd)?.reshape((d_out * b, c, hp, wp))?;
            let w2 = self.weight.narrow(2, kd, 1)?.squeeze(2)?.contiguous()?;
            let y = slab.conv2d(&w2, pad2d, stride, 1, 1)?;
            acc = Some(match acc {
                None => y,
                Some(a) => (a + y)?,
            });
        }
        let y = match acc {
            Some(y) => y,
            None => candle_core::bail!("conv3d: empty kernel"),
        };
        let y = y
            .reshape((d_out, b, out_c, h_out, w_out))?
            .permute((1, 2, 0, 3, 4))?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, out_c, 1, 1, 1))?),
            None => y.contiguous(),
        }
    }
}

/// Kaiming-uniform weight (fan-in = in·k³, as PyTorch) under `weight`.
fn conv3d_weight(in_c: usize, out_c: usize, k: usize, vb: &VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(
        (out_c, in_c, k, k, k),
        "weight",
        init::DEFAULT_KAIMING_UNIFORM,
    )
}

/// Conv3d with bias; bias uniform in ±1/sqrt(fan-in) as PyTorch initialises it.
pub fn conv3d(
    in_c: usize,
    out_c: usize,
    k: usize,
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let weight = conv3d_weight(in_c, out_c, k, &vb)?;
    let bound = 1. / ((in_c * k * k * k) as f64).sqrt();
    let bias = vb.get_with_hints(
        out_c,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Conv3d::new(weight, Some(bias), cfg)
}

/// Conv3d without bias, for convolutions followed by a normalisation layer.
pub fn conv3d_no_bias(
    in_c: usize,
    out_c: usize,
    k: usize,
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let weight = conv3d_weight(in_c, out_c, k, &vb)?;
    Conv3d::new(weight, None, cfg)
}

/// Sliding-window max along one dim, no padding.
fn window_max(x: &Tensor, dim: usize, k: usize, stride: usize) -> Result<Tensor> {
    let n_out = out_len(x.dim(dim)?, k, stride, 0, "max_pool3d")?;
    let mut acc = take_strided(x, dim, n_out, stride, 0)?;
    for off in 1..k {
        acc = acc.maximum(&take_strided(x, dim, n_out, stride, off)?)?;
    }
    Ok(acc)
}

/// Max pooling over `[B, C, D, H, W]` with a cubic window and no padding.
///
/// Done separably (depth, height, width) with slices and `maximum`, because candle's
/// max_pool2d only has a backward pass when kernel == stride.
pub fn max_pool3d(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    x.dims5()?;
    if k == 0 || stride == 0 {
        candle_core::bail!("max_pool3d: kernel and stride must be positive");
    }
    let y = window_max(x, 2, k, stride)?;
    let y = window_max(&y, 3, k, stride)?;
    window_max(&y, 4, k, stride)
}

/// Nearest-neighbour resize along one dim: source index floor(i·n_in/n_out), as PyTorch.
fn nearest_along(x: &Tensor, dim: usize, n_out: usize) -> Result<Tensor> {
    let n_in = x.dim(dim)?;
    if n_in == n_out {
        return Ok(x.clone());
    }
    if n_in == 0 || n_out == 0 {
        candle_core::bail!("upsample_nearest3d: cannot resize {n_in} to {n_out}");
    }
    let ids: Vec<u32> = (0..n_out).map(|i| (i * n_in / n_out) as u32).collect();
    x.contiguous()?
        .index_select(&Tensor::from_vec(ids, n_out, x.device())?, dim)
}

/// Nearest-neighbour resize of `[B, C, D, H, W]` to `[B, C, d, h, w]`.
///
/// Uses index_select, which backpropagates for any size ratio; candle's
/// upsample_nearest2d only does for integer, equal factors, and skip connections
/// of odd-sized volumes need e.g. 3 → 5.
pub fn upsample_nearest3d(x: &Tensor, d: usize, h: usize, w: usize) -> Result<Tensor> {
    x.dims5()?;
    let y = nearest_along(x, 2, d)?;
    let y = nearest_along(&y, 3, h)?;
    nearest_along(&y, 4, w)
}

/// Mean over depth, height and width: `[B, C, D, H, W]` → `[B, C]`.
pub fn global_avg_pool3d(x: &Tensor) -> Result<Tensor> {
    x.dims5()?;
    x.flatten_from(2)?.mean(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Naive f64 reference, `x: [B,C,D,H,W]`, `w: [O,C,k,k,k]`.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        xs: (usize, usize, usize, usize, usize),
        w: &[f64],
        bias: Option<&[f64]>,
        o: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> (Vec<f64>, (usize, usize, usize, usize, usize)) {
        let (b, c, d, h, wd) = xs;
        let od = (d + 2 * p - k) / s + 1;
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (wd + 2 * p - k) / s + 1;
        let mut y = vec![0.0; b * o * od * oh * ow];
        for bi in 0..b {
            for oi in 0..o {
                for z in 0..od {
                    for yy in 0..oh {
                        for xx in 0..ow {
                            let mut acc = bias.map_or(0.0, |bb| bb[oi]);
                            for ci in 0..c {
                                for kz in 0..k {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let iz = (z * s + kz) as isize - p as isize;
                                            let iy = (yy * s + ky) as isize - p as isize;
                                            let ix = (xx * s + kx) as isize - p as isize;
                                            if iz < 0
                                                || iy < 0
                                                || ix < 0
                                                || iz >= d as isize
                                                || iy >= h as isize
                                                || ix >= wd as isize
                                            {
                                                continue;
                                            }
                                            let xi = (((bi * c + ci) * d + iz as usize) * h
                                                + iy as usize)
                                                * wd
                                                + ix as usize;
                                            let wi = (((oi * c + ci) * k + kz) * k + ky) * k + kx;
                                            acc += x[xi] * w[wi];
                                        }
                                    }
                                }
                            }
                            y[(((bi * o + oi) * od + z) * oh + yy) * ow + xx] = acc;
                        }
                    }
                }
            }
        }
        (y, (b, o, od, oh, ow))
    }

    fn flat_f64(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .expect("flatten")
    }

    #[test]
    fn forward_matches_naive() {
        let dev = Device::Cpu;
        // (B, C, D, H, W, O, k, stride, padding)
        let cases = [
            (2, 3, 5, 6, 7, 4, 3, 1, 1),
            (1, 2, 6, 6, 6, 3, 3, 1, 0),
            (2, 3, 7, 8, 9, 2, 3, 2, 1),
            (2, 2, 6, 5, 7, 3, 3, 2, 0),
            (3, 4, 5, 6, 7, 5, 1, 1, 0),
            (2, 4, 7, 6, 9, 3, 1, 2, 0),
            (1, 1, 4, 4, 4, 2, 1, 1, 1),
            (1, 2, 3, 3, 3, 2, 3, 2, 1),
        ];
        for &(b, c, d, h, w, o, k, s, p) in &cases {
            let x = Tensor::randn(0f32, 1., (b, c, d, h, w), &dev).expect("x");
            let wt = Tensor::randn(0f32, 1., (o, c, k, k, k), &dev).expect("w");
            let bias = Tensor::randn(0f32, 1., o, &dev).expect("b");
            let cfg = Conv3dConfig {
                stride: s,
                padding: p,
            };
            let conv = Conv3d::new(wt.clone(), Some(bias.clone()), cfg).expect("conv");
            let y = conv.forward(&x).expect("forward");
            let bias_v = flat_f64(&bias);
            let (r, rs) = naive(
                &flat_f64(&x),
                (b, c, d, h, w),
                &flat_f64(&wt),
                Some(&bias_v),
                o,
                k,
                s,
                p,
            );
            assert_eq!(
                y.dims5().expect("dims"),
                rs,
                "case {b} {c} {d} {h} {w} {o} {k} {s} {p}"
            );
            let err = flat_f64(&y)
                .iter()
                .zip(&r)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4, "max abs error {err} for case {k} {s} {p}");
        }
    }

    /// loss = sum(conv3d(x) * r), candle's f64 gradients vs central differences of the naive reference.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        // (B, C, D, H, W, O, k, stride, padding); H and W of different parity on purpose.
        let cases = [
            (2, 2, 4, 5, 4, 3, 3, 1, 1),
            (2, 2, 5, 6, 5, 3, 3, 2, 1),
            (1, 2, 5, 4, 5, 2, 3, 2, 0),
            (2, 3, 4, 5, 6, 2, 1, 2, 0),
        ];
        for &(b, c, d, h, w, o, k, s, p) in &cases {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1., (b, c, d, h, w), &dev).expect("x"))
                .expect("var");
            let wt = Var::from_tensor(&Tensor::randn(0f64, 1., (o, c, k, k, k), &dev).expect("w"))
                .expect("var");
            let cfg = Conv3dConfig {
                stride: s,
                padding: p,
            };
            let conv = Conv3d::new(wt.as_tensor().clone(), None, cfg).expect("conv");
            let y = conv.forward(x.as_tensor()).expect("forward");
            let r = Tensor::randn(0f64, 1., y.shape(), &dev).expect("r");
            let loss = (&y * &r).expect("mul").sum_all().expect("sum");
            let grads = loss.backward().expect("backward");
            let gx = flat_f64(grads.get(x.as_tensor()).expect("grad x"));
            let gw = flat_f64(grads.get(wt.as_tensor()).expect("grad w"));

            let xv = flat_f64(x.as_tensor());
            let wv = flat_f64(wt.as_tensor());
            let rv = flat_f64(&r);
            let eval = |xv: &[f64], wv: &[f64]| -> f64 {
                let (yv, _) = naive(xv, (b, c, d, h, w), wv, None, o, k, s, p);
                yv.iter().zip(&rv).map(|(a, b)| a * b).sum()
            };
            let eps = 1e-4;
            let fd = |v: &[f64], i: usize, is_x: bool| -> f64 {
                let mut plus = v.to_vec();
                let mut minus = v.to_vec();
                plus[i] += eps;
                minus[i] -= eps;
                let (lp, lm) = if is_x {
                    (eval(&plus, &wv), eval(&minus, &wv))
                } else {
                    (eval(&xv, &plus), eval(&xv, &minus))
                };
                (lp - lm) / (2.0 * eps)
            };
            for (name, g, v, is_x) in [("input", &gx, &xv, true), ("weight", &gw, &wv, false)] {
                let num: Vec<f64> = (0..v.len()).map(|i| fd(v, i, is_x)).collect();
                let diff: f64 = g.iter().zip(&num).map(|(a, b)| (a - b).powi(2)).sum();
                let norm: f64 = num.iter().map(|a| a * a).sum();
                let rel = (diff / norm.max(1e-30)).sqrt();
                assert!(
                    rel < 1e-2,
                    "{name} grad rel error {rel} for case {k} {s} {p}"
                );
                let worst = g
                    .iter()
                    .zip(&num)
                    .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                    .fold(0.0, f64::max);
                assert!(worst < 1e-2, "{name} grad element error {worst}");
            }
        }
    }

    #[test]
    fn f32_backward_odd_sizes() {
        // Exercises candle's conv2d backward with stride 2 on H/W of different parity.
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let conv = conv3d(
            2,
            3,
            3,
            Conv3dConfig {
                stride: 2,
                padding: 1,
            },
            vb,
        )
        .expect("conv");
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 2, 7, 10, 9), &dev).expect("x"))
            .expect("var");
        let y = conv.forward(x.as_tensor()).expect("forward");
        assert_eq!(y.dims5().expect("dims"), (2, 3, 4, 5, 5));
        let grads = y.sqr().and_then(|t| t.sum_all()).expect("loss").backward();
        let grads = grads.expect("backward");
        assert_eq!(grads.get(x.as_tensor()).expect("gx").dims(), x.dims());
        for v in vm.all_vars() {
            assert_eq!(grads.get(v.as_tensor()).expect("gw").dims(), v.dims());
        }
    }

    #[test]
    fn max_pool_values() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 64., &dev)
            .and_then(|t| t.reshape((1, 1, 4, 4, 4)))
            .expect("x");
        let y = max_pool3d(&x, 2, 2).expect("pool");
        assert_eq!(y.dims5().expect("dims"), (1, 1, 2, 2, 2));
        // Window max is its last corner: index (2z+1)*16 + (2y+1)*4 + (2x+1).
        assert_eq!(flat_f64(&y), vec![21., 23., 29., 31., 53., 55., 61., 63.]);
        // Overlapping windows, k=3 stride 1 on 4 → 2 per dim.
        let y = max_pool3d(&x, 3, 1).expect("pool");
        assert_eq!(flat_f64(&y), vec![42., 43., 46., 47., 58., 59., 62., 63.]);
        // Gradient goes to the argmax only.
        let xv = Var::from_tensor(&x).expect("var");
        let g = max_pool3d(xv.as_tensor(), 2, 2)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .expect("backward");
        let gx = flat_f64(g.get(xv.as_tensor()).expect("grad"));
        assert_eq!(gx.iter().sum::<f64>(), 8.0);
        assert_eq!(gx[63], 1.0);
        assert_eq!(gx[0], 0.0);
    }

    #[test]
    fn upsample_values() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 8., &dev)
            .and_then(|t| t.reshape((1, 1, 2, 2, 2)))
            .expect("x");
        let y = upsample_nearest3d(&x, 4, 3, 2).expect("up");
        assert_eq!(y.dims5().expect("dims"), (1, 1, 4, 3, 2));
        // depth 0,0,1,1; height 0,0,1 (floor(i*2/3)); width unchanged.
        let expected = [
            0., 1., 0., 1., 2., 3., //
            0., 1., 0., 1., 2., 3., //
            4., 5., 4., 5., 6., 7., //
            4., 5., 4., 5., 6., 7.,
        ];
        assert_eq!(flat_f64(&y), expected.to_vec());
        // Non-integer ratio 3 -> 5 backpropagates (counts of copies per source).
        let xv = Var::from_tensor(&Tensor::ones((1, 1, 1, 1, 3), DType::F32, &dev).expect("ones"))
            .expect("var");
        let g = upsample_nearest3d(xv.as_tensor(), 1, 1, 5)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .expect("backward");
        // floor(i*3/5) for i in 0..5 = 0,0,1,1,2.
        assert_eq!(
            flat_f64(g.get(xv.as_tensor()).expect("g")),
            vec![2., 2., 1.]
        );
    }

    #[test]
    fn global_pool_values() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 16., &dev)
            .and_then(|t| t.reshape((2, 1, 2, 2, 2)))
            .expect("x");
        let y = global_avg_pool3d(&x).expect("pool");
        assert_eq!(y.dims(), &[2, 1]);
        assert_eq!(flat_f64(&y), vec![3.5, 11.5]);
    }
}
