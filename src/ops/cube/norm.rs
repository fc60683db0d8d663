//! LayerNorm over the last axis as cubecl kernels: one cube per row, forward and backward in
//! one pass each (the composed version is about ten kernels each way).

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{arg, empty_f32, optional_arg, row_grid, row_index};

/// Threads of a row's cube (a power of two: the reductions halve it).
const THREADS: usize = 128;

/// Sum of every thread's `value` over the cube (all threads must call it).
#[cube]
pub(crate) fn cube_sum<F: Float>(value: F, shared: &mut SharedMemory<F>) -> F {
    let tid = UNIT_POS as usize;
    shared[tid] = value;
    sync_cube();
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if tid < half {
            shared[tid] = shared[tid] + shared[tid + half];
        }
        sync_cube();
        half /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// One row's cube: the row's `index`, its first element's offset `base` in `[rows, d]`, `d`,
/// and this thread.
#[derive(CubeType)]
struct Row {
    index: usize,
    base: usize,
    d: usize,
    tid: usize,
}

/// This cube's [`Row`] of `[rows, d]` (the cubes past the last row stop here).
#[cube]
fn this_row(rows: u32, d: u32) -> Row {
    let index = row_index(rows as usize);
    let d = d as usize;
    Row {
        index,
        base: index * d,
        d,
        tid: UNIT_POS as usize,
    }
}

/// `y = (x - mean) * rstd * w + b` per row of `x [rows, d]`; also writes `mean` and `rstd`
/// (what the backward needs). Without `affine`, `w` and `b` are not read.
#[cube(launch)]
fn layer_norm_forward<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    b: &Tensor<F>,
    y: &mut Tensor<F>,
    mean: &mut Tensor<F>,
    rstd: &mut Tensor<F>,
    rows: u32,
    d: u32,
    eps: f32,
    #[comptime] affine: bool,
    #[comptime] threads: usize,
) {
    let at = this_row(rows, d);
    let (row, base, d, tid) = (at.index, at.base, at.d, at.tid);
    let mut shared = SharedMemory::<F>::new(threads);

    let mut acc = F::new(0.0);
    let mut j = tid;
    while j < d {
        acc += x[base + j];
        j += threads;
    }
    let mu = cube_sum::<F>(acc, &mut shared) / F::cast_from(d as u32);

    let mut acc = F::new(0.0);
    let mut j = tid;
    while j < d {
        let c = x[base + j] - mu;
        acc += c * c;
        j += threads;
    }
    let var = cube_sum::<F>(acc, &mut shared) / F::cast_from(d as u32);
    let r = F::new(1.0) / (var + F::cast_from(eps)).sqrt();

    let mut j = tid;
    while j < d {
        let n = (x[base + j] - mu) * r;
        if affine {
            y[base + j] = n * w[j] + b[j];
        } else {
            y[base + j] = n;
        }
        j += threads;
    }
    if tid == 0 {
        mean[row] = mu;
        rstd[row] = r;
    }
}

/// `dx` of LayerNorm per row: with `g = dy * w` (or `dy`) and `n` the normalised input,
/// `dx = rstd * (g - mean(g) - n * mean(g * n))`; with `affine`, also `dy * n` (whose column
/// sums are `dw`) into `dyn_`.
#[cube(launch)]
fn layer_norm_backward<F: Float>(
    x: &Tensor<F>,
    mean: &Tensor<F>,
    rstd: &Tensor<F>,
    w: &Tensor<F>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    dyn_: &mut Tensor<F>,
    rows: u32,
    d: u32,
    #[comptime] affine: bool,
    #[comptime] threads: usize,
) {
    let at = this_row(rows, d);
    let (base, d, tid) = (at.base, at.d, at.tid);
    let mu = mean[at.index];
    let r = rstd[at.index];
    let mut shared = SharedMemory::<F>::new(threads);

    let mut sum_g = F::new(0.0);
    let mut sum_gn = F::new(0.0);
    let mut j = tid;
    while j < d {
        let n = (x[base + j] - mu) * r;
        let mut g = dy[base + j];
        if affine {
            dyn_[base + j] = g * n;
            g *= w[j];
        }
        sum_g += g;
        sum_gn += g * n;
        j += threads;
    }
    let inv_d = F::new(1.0) / F::cast_from(d as u32);
    let mean_g = cube_sum::<F>(sum_g, &mut shared) * inv_d;
    let mean_gn = cube_sum::<F>(sum_gn, &mut shared) * inv_d;

    let mut j = tid;
    while j < d {
        let n = (x[base + j] - mu) * r;
        let mut g = dy[base + j];
        if affine {
            g *= w[j];
        }
        dx[base + j] = r * (g - mean_g - n * mean_gn);
        j += threads;
    }
}

/// What the forward leaves for the backward.
#[derive(Clone, Debug)]
pub struct NormSaved<R: CubeRuntime> {
    pub mean: CubeTensor<R>,
    pub rstd: CubeTensor<R>,
}

/// LayerNorm forward of a contiguous f32 `x [rows, d]` (`w`, `b` both or neither).
pub fn forward<R: CubeRuntime>(
    x: &CubeTensor<R>,
    affine: Option<(&CubeTensor<R>, &CubeTensor<R>)>,
    eps: f64,
) -> (CubeTensor<R>, NormSaved<R>) {
    let (rows, d) = (x.meta.shape()[0], x.meta.shape()[1]);
    let y = empty_f32(x, vec![rows, d]);
    let mean = empty_f32(x, vec![rows]);
    let rstd = empty_f32(x, vec![rows]);
    let (w, b) = affine.unzip();
    layer_norm_forward::launch::<f32, R>(
        &x.client,
        row_grid(rows),
        CubeDim::new_1d(THREADS as u32),
        arg(x),
        optional_arg(w, x),
        optional_arg(b, x),
        arg(&y),
        arg(&mean),
        arg(&rstd),
        rows as u32,
        d as u32,
        eps as f32,
        affine.is_some(),
        THREADS,
    );
    (y, NormSaved { mean, rstd })
}

/// LayerNorm backward: `dx`, and with `w` the per-element `dy * n` whose column sums are `dw`.
pub fn backward<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: Option<&CubeTensor<R>>,
    saved: &NormSaved<R>,
    dy: &CubeTensor<R>,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let (rows, d) = (x.meta.shape()[0], x.meta.shape()[1]);
    let dx = empty_f32(x, vec![rows, d]);
    let dyn_ = w.map(|_| empty_f32(x, vec![rows, d]));
    layer_norm_backward::launch::<f32, R>(
        &x.client,
        row_grid(rows),
        CubeDim::new_1d(THREADS as u32),
        arg(x),
        arg(&saved.mean),
        arg(&saved.rstd),
        optional_arg(w, x),
        arg(dy),
        arg(&dx),
        optional_arg(dyn_.as_ref(), x),
        rows as u32,
        d as u32,
        w.is_some(),
        THREADS,
    );
    (dx, dyn_)
}
