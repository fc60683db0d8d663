//! Multi-head attention on the fused `qkv [B, N, 3D]` as cubecl kernels, FlashAttention-style:
//! the `N x N` score matrix is never written to memory.
//!
//! - forward: one thread per query row, keys and values streamed through shared memory in
//!   tiles, an online softmax (running maximum and sum); writes the output and the
//!   log-sum-exp of every row (what the backward needs);
//! - backward: `dq` with one thread per query row (also writing `delta = rowsum(dO * O)`),
//!   then `dk`, `dv` with one thread per key row streaming the queries; the softmax weights
//!   are recomputed from the saved log-sum-exp.
//!
//! Only the first `keys` tokens are keys and values (the rest is padding, see
//! [`crate::model::padding`]): the loops stop there and the padding gets no gradient as a
//! key or value. Head dimensions up to [`MAX_HEAD_DIM`].

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{empty_f32, row_grid, row_index};

/// Larger heads use the composed implementation (the per-thread rows would not fit).
pub const MAX_HEAD_DIM: usize = 128;

/// Rows per cube (one thread each: queries in the forward and `dq`, keys in `dk`, `dv`) and
/// rows per tile streamed through shared memory, for head dimension `hd` within `max_shared`
/// bytes of shared memory (the `dk`, `dv` kernel holds its own rows' keys and values and one
/// tile of queries and output gradients: `(2 threads + 2 tile) hd + 2 tile` floats).
fn plan(hd: usize, max_shared: usize) -> (usize, usize) {
    let floats = max_shared / 4;
    let fits = |threads: usize, tile: usize| (2 * threads + 2 * tile) * hd + 2 * tile <= floats;
    let mut threads = if hd <= 64 { 32 } else { 16 };
    while threads > 1 && !fits(threads, 1) {
        threads /= 2;
    }
    let mut tile = threads;
    while tile > 1 && !fits(threads, tile) {
        tile /= 2;
    }
    (threads, tile)
}

/// Whether to unroll the loops over the head dimension (the per-thread rows then live in
/// registers): on CUDA. Not on wgpu, where Mesa's software Vulkan (CI) takes minutes to compile
/// the unrolled kernels and GPU drivers' compilers decide for themselves.
fn unroll<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    R::name(client).starts_with("cuda")
}

fn max_shared<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    t.client.properties().hardware.max_shared_memory_size
}

/// Row `token` of batch `b` in a `[B, N, width]` tensor: the offset of its first element.
#[cube]
fn at(b: usize, token: usize, n: usize, width: usize) -> usize {
    (b * n + token) * width
}

#[cube(launch)]
fn attention_forward<F: Float>(
    qkv: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    n: u32,
    keys: u32,
    heads: u32,
    scale: f32,
    #[comptime] hd: usize,
    #[comptime] threads: usize,
    #[comptime] tile: usize,
    #[comptime] unroll: bool,
) {
    let tiles = (n as usize).div_ceil(threads);
    let cube = row_index();
    let bh = cube / tiles;
    let heads = heads as usize;
    if bh >= lse.len() / n as usize {
        terminate!();
    }
    let (n, keys) = (n as usize, keys as usize);
    let b = bh / heads;
    let h = bh % heads;
    let d = heads * hd;
    let tid = UNIT_POS as usize;
    let i = (cube % tiles) * threads + tid;
    let row = if i < n { i } else { n - 1 };
    let scale = F::cast_from(scale);

    let mut q = Array::<F>::new(hd);
    let mut acc = Array::<F>::new(hd);
    #[unroll(unroll)]
    for c in 0..hd {
        q[c] = qkv[at(b, row, n, 3 * d) + h * hd + c];
        acc[c] = F::new(0.0);
    }
    let mut sk = SharedMemory::<F>::new(tile * hd);
    let mut sv = SharedMemory::<F>::new(tile * hd);
    let mut s = Array::<F>::new(tile);
    let mut m = F::new(-1e30);
    let mut l = F::new(0.0);

    let mut start = 0usize;
    while start < keys {
        let mut e = tid;
        while e < tile * hd {
            let j = start + e / hd;
            if j < keys {
                let base = at(b, j, n, 3 * d) + h * hd + e % hd;
                sk[e] = qkv[base + d];
                sv[e] = qkv[base + 2 * d];
            }
            e += threads;
        }
        sync_cube();
        let len = min(keys - start, tile.runtime());
        let mut tile_max = F::new(-1e30);
        for r in 0..tile {
            if r < len {
                let mut dot = F::new(0.0);
                #[unroll(unroll)]
                for c in 0..hd {
                    dot += q[c] * sk[r * hd + c];
                }
                let score = dot * scale;
                s[r] = score;
                tile_max = max(tile_max, score);
            }
        }
        let m_new = max(m, tile_max);
        let corr = (m - m_new).exp();
        l *= corr;
        #[unroll(unroll)]
        for c in 0..hd {
            acc[c] *= corr;
        }
        for r in 0..tile {
            if r < len {
                let p = (s[r] - m_new).exp();
                l += p;
                #[unroll(unroll)]
                for c in 0..hd {
                    acc[c] += p * sv[r * hd + c];
                }
            }
        }
        m = m_new;
        sync_cube();
        start += tile;
    }
    if i < n {
        let inv = F::new(1.0) / l;
        #[unroll(unroll)]
        for c in 0..hd {
            out[at(b, i, n, d) + h * hd + c] = acc[c] * inv;
        }
        lse[bh * n + i] = m + l.ln();
    }
}

/// `dq` (into the q block of `dqkv`) and `delta = rowsum(dO * O)` per query row.
#[cube(launch)]
fn attention_backward_dq<F: Float>(
    qkv: &Tensor<F>,
    out: &Tensor<F>,
    dout: &Tensor<F>,
    lse: &Tensor<F>,
    dqkv: &mut Tensor<F>,
    delta: &mut Tensor<F>,
    n: u32,
    keys: u32,
    heads: u32,
    scale: f32,
    #[comptime] hd: usize,
    #[comptime] threads: usize,
    #[comptime] tile: usize,
    #[comptime] unroll: bool,
) {
    let tiles = (n as usize).div_ceil(threads);
    let cube = row_index();
    let bh = cube / tiles;
    let heads = heads as usize;
    if bh >= lse.len() / n as usize {
        terminate!();
    }
    let (n, keys) = (n as usize, keys as usize);
    let b = bh / heads;
    let h = bh % heads;
    let d = heads * hd;
    let tid = UNIT_POS as usize;
    let i = (cube % tiles) * threads + tid;
    let row = if i < n { i } else { n - 1 };
    let scale = F::cast_from(scale);

    let mut q = Array::<F>::new(hd);
    let mut go = Array::<F>::new(hd);
    let mut dq = Array::<F>::new(hd);
    let mut dl = F::new(0.0);
    #[unroll(unroll)]
    for c in 0..hd {
        q[c] = qkv[at(b, row, n, 3 * d) + h * hd + c];
        let g = dout[at(b, row, n, d) + h * hd + c];
        go[c] = g;
        dl += g * out[at(b, row, n, d) + h * hd + c];
        dq[c] = F::new(0.0);
    }
    let li = lse[bh * n + row];
    let mut sk = SharedMemory::<F>::new(tile * hd);
    let mut sv = SharedMemory::<F>::new(tile * hd);

    let mut start = 0usize;
    while start < keys {
        let mut e = tid;
        while e < tile * hd {
            let j = start + e / hd;
            if j < keys {
                let base = at(b, j, n, 3 * d) + h * hd + e % hd;
                sk[e] = qkv[base + d];
                sv[e] = qkv[base + 2 * d];
            }
            e += threads;
        }
        sync_cube();
        let len = min(keys - start, tile.runtime());
        for r in 0..tile {
            if r < len {
                let mut qk = F::new(0.0);
                let mut dp = F::new(0.0);
                #[unroll(unroll)]
                for c in 0..hd {
                    qk += q[c] * sk[r * hd + c];
                    dp += go[c] * sv[r * hd + c];
                }
                let p = (qk * scale - li).exp();
                let ds = p * (dp - dl);
                #[unroll(unroll)]
                for c in 0..hd {
                    dq[c] += ds * sk[r * hd + c];
                }
            }
        }
        sync_cube();
        start += tile;
    }
    if i < n {
        #[unroll(unroll)]
        for c in 0..hd {
            dqkv[at(b, i, n, 3 * d) + h * hd + c] = dq[c] * scale;
        }
        delta[bh * n + i] = dl;
    }
}

/// `dk`, `dv` (into the k and v blocks of `dqkv`) per key row, streaming every query; zero
/// for the padding rows at and after `keys`.
#[cube(launch)]
fn attention_backward_dkv<F: Float>(
    qkv: &Tensor<F>,
    dout: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    dqkv: &mut Tensor<F>,
    n: u32,
    keys: u32,
    heads: u32,
    scale: f32,
    #[comptime] hd: usize,
    #[comptime] threads: usize,
    #[comptime] tile: usize,
    #[comptime] unroll: bool,
) {
    let tiles = (n as usize).div_ceil(threads);
    let cube = row_index();
    let bh = cube / tiles;
    let heads = heads as usize;
    if bh >= lse.len() / n as usize {
        terminate!();
    }
    let (n, keys) = (n as usize, keys as usize);
    let b = bh / heads;
    let h = bh % heads;
    let d = heads * hd;
    let tid = UNIT_POS as usize;
    let j = (cube % tiles) * threads + tid;
    let row = if j < n { j } else { n - 1 };
    let scale = F::cast_from(scale);

    // this thread's key and value rows, in shared memory (registers hold the accumulators)
    let mut own_k = SharedMemory::<F>::new(threads * hd);
    let mut own_v = SharedMemory::<F>::new(threads * hd);
    let mut dk = Array::<F>::new(hd);
    let mut dv = Array::<F>::new(hd);
    #[unroll(unroll)]
    for c in 0..hd {
        let base = at(b, row, n, 3 * d) + h * hd + c;
        own_k[tid * hd + c] = qkv[base + d];
        own_v[tid * hd + c] = qkv[base + 2 * d];
        dk[c] = F::new(0.0);
        dv[c] = F::new(0.0);
    }
    let mut sq = SharedMemory::<F>::new(tile * hd);
    let mut sgo = SharedMemory::<F>::new(tile * hd);
    let mut slse = SharedMemory::<F>::new(tile);
    let mut sdl = SharedMemory::<F>::new(tile);
    let is_key = j < keys;

    let mut start = 0usize;
    while start < n {
        let mut e = tid;
        while e < tile * hd {
            let i = start + e / hd;
            if i < n {
                let c = e % hd;
                sq[e] = qkv[at(b, i, n, 3 * d) + h * hd + c];
                sgo[e] = dout[at(b, i, n, d) + h * hd + c];
            }
            e += threads;
        }
        if tid < tile && start + tid < n {
            slse[tid] = lse[bh * n + start + tid];
            sdl[tid] = delta[bh * n + start + tid];
        }
        sync_cube();
        let len = min(n - start, tile.runtime());
        if is_key {
            for r in 0..tile {
                if r < len {
                    let mut qk = F::new(0.0);
                    let mut dp = F::new(0.0);
                    #[unroll(unroll)]
                    for c in 0..hd {
                        qk += sq[r * hd + c] * own_k[tid * hd + c];
                        dp += sgo[r * hd + c] * own_v[tid * hd + c];
                    }
                    let p = (qk * scale - slse[r]).exp();
                    let ds = p * (dp - sdl[r]);
                    #[unroll(unroll)]
                    for c in 0..hd {
                        dv[c] += p * sgo[r * hd + c];
                        dk[c] += ds * sq[r * hd + c];
                    }
                }
            }
        }
        sync_cube();
        start += tile;
    }
    if j < n {
        #[unroll(unroll)]
        for c in 0..hd {
            let base = at(b, j, n, 3 * d) + h * hd + c;
            dqkv[base + d] = dk[c] * scale;
            dqkv[base + 2 * d] = dv[c];
        }
    }
}

/// The forward's output and what its backward needs.
#[derive(Clone, Debug)]
pub struct AttentionSaved<R: CubeRuntime> {
    /// `[B, H, N]` log-sum-exp of every query row's scores.
    pub lse: CubeTensor<R>,
    pub keys: usize,
    pub heads: usize,
}

fn shape(qkv: &CubeTensor<impl CubeRuntime>, heads: usize) -> (usize, usize, usize, usize) {
    let s = qkv.meta.shape();
    let (b, n, d) = (s[0], s[1], s[2] / 3);
    (b, n, d, d / heads)
}

/// Whether the kernels take this `qkv [B, N, 3D]` (`keys` in `1..=N`).
pub fn supported(dims: &[usize], heads: usize, keys: usize) -> bool {
    let [_, n, d3] = dims else { return false };
    let hd = d3 / 3 / heads.max(1);
    heads > 0 && d3 % (3 * heads) == 0 && hd <= MAX_HEAD_DIM && keys >= 1 && keys <= *n
}

/// Forward on a contiguous f32 `qkv`: `[B, N, D]`.
pub fn forward<R: CubeRuntime>(
    qkv: &CubeTensor<R>,
    heads: usize,
    keys: usize,
) -> (CubeTensor<R>, AttentionSaved<R>) {
    let (b, n, d, hd) = shape(qkv, heads);
    let out = empty_f32(qkv, vec![b, n, d]);
    let lse = empty_f32(qkv, vec![b, heads, n]);
    let (threads, tile) = plan(hd, max_shared(qkv));
    attention_forward::launch::<f32, R>(
        &qkv.client,
        row_grid(n.div_ceil(threads) * b * heads),
        CubeDim::new_1d(threads as u32),
        qkv.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        n as u32,
        keys as u32,
        heads as u32,
        (hd as f32).powf(-0.5),
        hd,
        threads,
        tile,
        unroll(&qkv.client),
    );
    (out, AttentionSaved { lse, keys, heads })
}

/// Backward: `dqkv [B, N, 3D]` from the forward's input, output and saved state.
pub fn backward<R: CubeRuntime>(
    qkv: &CubeTensor<R>,
    out: &CubeTensor<R>,
    saved: &AttentionSaved<R>,
    dout: &CubeTensor<R>,
) -> CubeTensor<R> {
    let heads = saved.heads;
    let (b, n, d, hd) = shape(qkv, heads);
    let dqkv = empty_f32(qkv, vec![b, n, 3 * d]);
    let delta = empty_f32(qkv, vec![b, heads, n]);
    let (threads, tile) = plan(hd, max_shared(qkv));
    let grid = || row_grid(n.div_ceil(threads) * b * heads);
    let scale = (hd as f32).powf(-0.5);
    attention_backward_dq::launch::<f32, R>(
        &qkv.client,
        grid(),
        CubeDim::new_1d(threads as u32),
        qkv.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dout.clone().into_tensor_arg(),
        saved.lse.clone().into_tensor_arg(),
        dqkv.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        n as u32,
        saved.keys as u32,
        heads as u32,
        scale,
        hd,
        threads,
        tile,
        unroll(&qkv.client),
    );
    attention_backward_dkv::launch::<f32, R>(
        &qkv.client,
        grid(),
        CubeDim::new_1d(threads as u32),
        qkv.clone().into_tensor_arg(),
        dout.clone().into_tensor_arg(),
        saved.lse.clone().into_tensor_arg(),
        delta.into_tensor_arg(),
        dqkv.clone().into_tensor_arg(),
        n as u32,
        saved.keys as u32,
        heads as u32,
        scale,
        hd,
        threads,
        tile,
        unroll(&qkv.client),
    );
    dqkv
}
