//! One-pass element-wise kernels: the epilogues of the Linear layers (bias + GELU, bias +
//! residual), GELU's backward, and the optimizer (AdamW, EMA), each one kernel where the
//! composed versions launch several and write every intermediate to memory.

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::{arg, empty_f32, optional_arg};
use crate::ops::kernels::optim::{AdamW, Scalars, ema_factors};

const THREADS: u32 = 256;

/// `1 / sqrt(2)` and `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// This unit's element of a tensor of `len` elements (the units past the end stop here).
#[cube]
fn element(len: usize) -> usize {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    i
}

/// `p[i] + b[i % n]`: element `i` of `p [rows, n]` plus the bias of its column (or `p[i]`).
#[cube]
fn biased<F: Float>(
    p: &Tensor<F>,
    b: &Tensor<F>,
    i: usize,
    n: u32,
    #[comptime] with_bias: bool,
) -> F {
    let mut x = p[i];
    if with_bias {
        x += b[i % n as usize];
    }
    x
}

/// `act = gelu(p + b)` (exact, erf) over `p [rows, n]`, bias `b [n]`; with `keep_pre`, also
/// the pre-activation `p + b` into `pre` (what the backward needs).
#[cube(launch)]
fn bias_gelu<F: Float>(
    p: &Tensor<F>,
    b: &Tensor<F>,
    act: &mut Tensor<F>,
    pre: &mut Tensor<F>,
    n: u32,
    #[comptime] with_bias: bool,
    #[comptime] keep_pre: bool,
) {
    let i = element(p.len());
    let x = biased(p, b, i, n, with_bias);
    if keep_pre {
        pre[i] = x;
    }
    act[i] = x * ((x * F::cast_from(FRAC_1_SQRT_2)).erf() + F::new(1.0)) * F::new(0.5);
}

/// `dh = dy * gelu'(h)`.
#[cube(launch)]
fn gelu_backward<F: Float>(h: &Tensor<F>, dy: &Tensor<F>, dh: &mut Tensor<F>) {
    let i = element(h.len());
    let x = h[i];
    let cdf = ((x * F::cast_from(FRAC_1_SQRT_2)).erf() + F::new(1.0)) * F::new(0.5);
    let pdf = (x * x * F::new(-0.5)).exp() * F::cast_from(FRAC_1_SQRT_2PI);
    dh[i] = dy[i] * (cdf + x * pdf);
}

/// `out = r + (p + b)` (the composed order of the additions).
#[cube(launch)]
fn bias_residual<F: Float>(
    p: &Tensor<F>,
    b: &Tensor<F>,
    r: &Tensor<F>,
    out: &mut Tensor<F>,
    n: u32,
    #[comptime] with_bias: bool,
) {
    let i = element(p.len());
    out[i] = r[i] + biased(p, b, i, n, with_bias);
}

/// One AdamW step (the formulas of [`crate::ops::kernels::optim::adamw_step`]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw<F: Float>(
    p: &Tensor<F>,
    g: &Tensor<F>,
    m: &Tensor<F>,
    v: &Tensor<F>,
    p_out: &mut Tensor<F>,
    m_out: &mut Tensor<F>,
    v_out: &mut Tensor<F>,
    decay: f32,
    w1: f32,
    b2: f32,
    w2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    #[comptime] decayed: bool,
) {
    let i = element(p.len());
    let gi = g[i];
    let mi = m[i] + (gi - m[i]) * F::cast_from(w1);
    let vi = v[i] * F::cast_from(b2) + F::cast_from(w2) * gi * gi;
    m_out[i] = mi;
    v_out[i] = vi;
    let update = mi / (vi.sqrt() / F::cast_from(bc2_sqrt) + F::cast_from(eps));
    let mut pi = p[i];
    if decayed {
        pi *= F::cast_from(decay);
    }
    p_out[i] = pi - F::cast_from(step_size) * update;
}

/// `out = t * m + o * om`.
#[cube(launch)]
fn ema<F: Float>(t: &Tensor<F>, o: &Tensor<F>, out: &mut Tensor<F>, m: f32, om: f32) {
    let i = element(t.len());
    out[i] = t[i] * F::cast_from(m) + o[i] * F::cast_from(om);
}

/// Launches the element-wise `kernel` with one unit per element of `like`, then the arguments.
macro_rules! launch_elementwise {
    ($kernel:ident, $like:expr, $($arg:expr),+ $(,)?) => {{
        let like = $like;
        let dim = CubeDim::new_1d(THREADS);
        let units = like.meta.shape().num_elements();
        let count = calculate_cube_count_elemwise(&like.client, units, dim);
        $kernel::launch::<f32, R>(&like.client, count, dim, $($arg),+)
    }};
}

/// A new contiguous f32 tensor of `t`'s shape.
fn empty_like<R: CubeRuntime>(t: &CubeTensor<R>) -> CubeTensor<R> {
    empty_f32(t, t.meta.shape().to_vec())
}

/// The bias arguments of a kernel over `p [rows, n]`: the bias (an unread placeholder without
/// one), `n`, and whether there is one.
fn bias_args<R: CubeRuntime>(
    p: &CubeTensor<R>,
    b: Option<&CubeTensor<R>>,
) -> (TensorArg<R>, u32, bool) {
    let shape = p.meta.shape();
    let n = shape[shape.len() - 1] as u32;
    (optional_arg(b, p), n, b.is_some())
}

/// `(gelu(p + b), p + b when keep_pre)` for a contiguous f32 `p [rows, n]`.
pub fn bias_gelu_forward<R: CubeRuntime>(
    p: &CubeTensor<R>,
    b: Option<&CubeTensor<R>>,
    keep_pre: bool,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let act = empty_like(p);
    let pre = keep_pre.then(|| empty_like(p));
    let pre_arg = optional_arg(pre.as_ref(), p);
    let (b, n, with_bias) = bias_args(p, b);
    launch_elementwise!(
        bias_gelu,
        p,
        arg(p),
        b,
        arg(&act),
        pre_arg,
        n,
        with_bias,
        keep_pre
    );
    (act, pre)
}

/// `dy * gelu'(h)`.
pub fn gelu_grad<R: CubeRuntime>(h: &CubeTensor<R>, dy: &CubeTensor<R>) -> CubeTensor<R> {
    let dh = empty_like(h);
    launch_elementwise!(gelu_backward, h, arg(h), arg(dy), arg(&dh));
    dh
}

/// `r + (p + b)`.
pub fn bias_residual_forward<R: CubeRuntime>(
    p: &CubeTensor<R>,
    b: Option<&CubeTensor<R>>,
    r: &CubeTensor<R>,
) -> CubeTensor<R> {
    let out = empty_like(p);
    let (b, n, with_bias) = bias_args(p, b);
    launch_elementwise!(bias_residual, p, arg(p), b, arg(r), arg(&out), n, with_bias);
    out
}

/// One AdamW step on flat contiguous f32 buffers: the new `(p, m, v)`.
pub fn adamw_step<R: CubeRuntime>(
    p: &CubeTensor<R>,
    g: &CubeTensor<R>,
    m: &CubeTensor<R>,
    v: &CubeTensor<R>,
    hp: &AdamW,
    step: u64,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let s = Scalars::new(hp, step);
    let (p_out, m_out, v_out) = (empty_like(p), empty_like(p), empty_like(p));
    launch_elementwise!(
        adamw,
        p,
        arg(p),
        arg(g),
        arg(m),
        arg(v),
        arg(&p_out),
        arg(&m_out),
        arg(&v_out),
        s.decay.unwrap_or(1.0),
        s.w1,
        s.b2,
        s.w2,
        s.step_size,
        s.bc2_sqrt,
        s.eps,
        s.decay.is_some(),
    );
    (p_out, m_out, v_out)
}

/// `target * m + online * (1 - m)`.
pub fn ema_step<R: CubeRuntime>(
    target: &CubeTensor<R>,
    online: &CubeTensor<R>,
    momentum: f64,
) -> CubeTensor<R> {
    let (m, om) = ema_factors(momentum);
    let out = empty_like(target);
    launch_elementwise!(ema, target, arg(target), arg(online), arg(&out), m, om);
    out
}
