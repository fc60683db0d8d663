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

use super::{arg, empty_f32, row_grid, row_index};

/// Larger heads use the composed implementation (the per-thread rows would not fit).
pub const MAX_HEAD_DIM: usize = 128;

/// Rows per cube (one thread each: queries in the forward and `dq`, keys in `dk`, `dv`) and
/// rows per tile streamed through shared memory, for head dimension `hd` within `max_shared`
/// bytes of shared memory (the `dk`, `dv` kernel holds its own rows' keys and values and one
/// tile of queries and output gradients: `(2 threads + 2 tile) hd + 2 tile` floats).
fn plan(hd: usize, max_shared: usize, unroll: bool) -> Plan {
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
    Plan {
        hd,
        threads,
        tile,
        unroll,
    }
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

/// The kernels' compile-time plan: head dimension `hd`, `threads` (rows) per cube, rows per
/// `tile` streamed through shared memory, and whether to `unroll` the loops over `hd`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Plan {
    hd: usize,
    threads: usize,
    tile: usize,
    unroll: bool,
}

/// The run-time sizes every kernel takes: `n` tokens (`keys` of them keys and values), `heads`,
/// and the scores' `scale`.
#[derive(CubeType, CubeLaunch)]
struct Heads {
    n: u32,
    keys: u32,
    heads: u32,
    scale: f32,
}

/// One thread's place: batch `b` and head `h` (`bh = b * heads + h`), the head's width `d`
/// in tokens of `[B, N, D]`, its row `i` (a query or a key; past `n` in a last partial cube)
/// and `row`, `i` clamped into the tensor (to read without a bounds check).
#[derive(CubeType)]
struct Place {
    bh: usize,
    b: usize,
    h: usize,
    n: usize,
    keys: usize,
    d: usize,
    tid: usize,
    i: usize,
    row: usize,
}

/// This thread's [`Place`], with `rows = B H N` the rows of the `[B, H, N]` log-sum-exp.
#[cube]
fn place(a: &Heads, rows: usize, #[comptime] plan: Plan) -> Place {
    let n = a.n as usize;
    let heads = a.heads as usize;
    let tiles = n.div_ceil(plan.threads);
    // the cubes past the last (batch, head) stop
    let cube = row_index(tiles * (rows / n));
    let bh = cube / tiles;
    let tid = UNIT_POS as usize;
    let i = (cube % tiles) * plan.threads + tid;
    let row = if i < n { i } else { n - 1 };
    Place {
        bh,
        b: bh / heads,
        h: bh % heads,
        n,
        keys: a.keys as usize,
        d: heads * plan.hd,
        tid,
        i,
        row,
    }
}

/// Offset of this head's first column in row `token` of `[B, N, width]` (the q block of
/// `qkv` with `width = 3D`; add `D` for k, `2D` for v).
#[cube]
fn head_at(p: &Place, token: usize, width: usize, #[comptime] hd: usize) -> usize {
    (p.b * p.n + token) * width + p.h * hd
}

/// Rows `start..start + tile` below `end` of this head's columns into shared memory, each
/// thread of the cube loading a share: from `x [B, N, x_width]` at column offset `x_col` into
/// `sx`, and likewise from `y` into `sy`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tile<F: Float>(
    x: &Tensor<F>,
    x_col: usize,
    x_width: usize,
    sx: &mut SharedMemory<F>,
    y: &Tensor<F>,
    y_col: usize,
    y_width: usize,
    sy: &mut SharedMemory<F>,
    start: usize,
    end: usize,
    p: &Place,
    #[comptime] plan: Plan,
) {
    let hd = plan.hd;
    let mut e = p.tid;
    while e < plan.tile * hd {
        let j = start + e / hd;
        if j < end {
            let c = e % hd;
            sx[e] = x[head_at(p, j, x_width, hd) + x_col + c];
            sy[e] = y[head_at(p, j, y_width, hd) + y_col + c];
        }
        e += plan.threads;
    }
}

/// This thread's query row (of its head; the last row for threads past `n`).
#[cube]
fn query_row<F: Float>(qkv: &Tensor<F>, p: &Place, #[comptime] plan: Plan) -> Array<F> {
    let mut q = Array::<F>::new(plan.hd);
    #[unroll(plan.unroll)]
    for c in 0..plan.hd {
        q[c] = qkv[head_at(p, p.row, 3 * p.d, plan.hd) + c];
    }
    q
}

/// The tile of keys and values from key `start` into `sk`, `sv`, loaded by the whole cube
/// (which waits for it): the number of keys in it.
#[cube]
fn key_value_tile<F: Float>(
    qkv: &Tensor<F>,
    sk: &mut SharedMemory<F>,
    sv: &mut SharedMemory<F>,
    start: usize,
    p: &Place,
    #[comptime] plan: Plan,
) -> usize {
    let (d, tile) = (p.d, plan.tile);
    load_tile(
        qkv,
        d,
        3 * d,
        sk,
        qkv,
        2 * d,
        3 * d,
        sv,
        start,
        p.keys,
        p,
        plan,
    );
    sync_cube();
    min(p.keys - start, tile.runtime())
}

/// `(q . k, dO . v)` for one query and one key over the head's columns: the query and its
/// output gradient at `at_q` in `q`, `go`, the key and value at `at_k` in `k`, `v`.
#[cube]
fn pair_dots<F: Float, Q: List<F>, K: List<F>>(
    q: &Q,
    go: &Q,
    at_q: usize,
    k: &K,
    v: &K,
    at_k: usize,
    #[comptime] plan: Plan,
) -> (F, F) {
    let mut qk = F::new(0.0);
    let mut dp = F::new(0.0);
    #[unroll(plan.unroll)]
    for c in 0..plan.hd {
        qk += q.read(at_q + c) * k.read(at_k + c);
        dp += go.read(at_q + c) * v.read(at_k + c);
    }
    (qk, dp)
}

#[cube(launch)]
fn attention_forward<F: Float>(
    qkv: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    a: Heads,
    #[comptime] plan: Plan,
) {
    let p = place(&a, lse.len(), plan);
    let q = query_row(qkv, &p, plan);
    let (hd, tile, unroll) = (plan.hd, plan.tile, plan.unroll);
    let d = p.d;
    let scale = F::cast_from(a.scale);

    let mut acc = Array::<F>::new(hd);
    #[unroll(unroll)]
    for c in 0..hd {
        acc[c] = F::new(0.0);
    }
    let mut sk = SharedMemory::<F>::new(tile * hd);
    let mut sv = SharedMemory::<F>::new(tile * hd);
    let mut s = Array::<F>::new(tile);
    let mut m = F::new(-1e30);
    let mut l = F::new(0.0);

    let mut start = 0usize;
    while start < p.keys {
        let len = key_value_tile(qkv, &mut sk, &mut sv, start, &p, plan);
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
                let w = (s[r] - m_new).exp();
                l += w;
                #[unroll(unroll)]
                for c in 0..hd {
                    acc[c] += w * sv[r * hd + c];
                }
            }
        }
        m = m_new;
        sync_cube();
        start += tile;
    }
    if p.i < p.n {
        let inv = F::new(1.0) / l;
        #[unroll(unroll)]
        for c in 0..hd {
            out[head_at(&p, p.i, d, hd) + c] = acc[c] * inv;
        }
        lse[p.bh * p.n + p.i] = m + l.ln();
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
    a: Heads,
    #[comptime] plan: Plan,
) {
    let (hd, tile, unroll) = (plan.hd, plan.tile, plan.unroll);
    let p = place(&a, lse.len(), plan);
    let (d, q) = (p.d, query_row(qkv, &p, plan));
    let mut go = Array::<F>::new(hd);
    let mut dq = Array::<F>::new(hd);
    let mut dl = F::new(0.0);
    #[unroll(unroll)]
    for c in 0..hd {
        let g = dout[head_at(&p, p.row, d, hd) + c];
        go[c] = g;
        dl += g * out[head_at(&p, p.row, d, hd) + c];
        dq[c] = F::new(0.0);
    }
    let li = lse[p.bh * p.n + p.row];
    let scale = F::cast_from(a.scale);
    let mut sk = SharedMemory::<F>::new(tile * hd);
    let mut sv = SharedMemory::<F>::new(tile * hd);

    let mut start = 0usize;
    while start < p.keys {
        let len = key_value_tile(qkv, &mut sk, &mut sv, start, &p, plan);
        for r in 0..tile {
            if r < len {
                let (qk, dp) =
                    pair_dots::<F, Array<F>, SharedMemory<F>>(&q, &go, 0, &sk, &sv, r * hd, plan);
                let ds = (qk * scale - li).exp() * (dp - dl);
                #[unroll(unroll)]
                for c in 0..hd {
                    dq[c] += ds * sk[r * hd + c];
                }
            }
        }
        sync_cube();
        start += tile;
    }
    if p.i < p.n {
        #[unroll(unroll)]
        for c in 0..hd {
            dqkv[head_at(&p, p.i, 3 * d, hd) + c] = dq[c] * scale;
        }
        delta[p.bh * p.n + p.i] = dl;
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
    a: Heads,
    #[comptime] plan: Plan,
) {
    let p = place(&a, lse.len(), plan);
    let (hd, tile, unroll) = (plan.hd, plan.tile, plan.unroll);
    let (d, n, tid, scale) = (p.d, p.n, p.tid, F::cast_from(a.scale));

    // this thread's key and value rows, in shared memory (registers hold the accumulators)
    let mut own_k = SharedMemory::<F>::new(plan.threads * hd);
    let mut own_v = SharedMemory::<F>::new(plan.threads * hd);
    let mut dk = Array::<F>::new(hd);
    let mut dv = Array::<F>::new(hd);
    #[unroll(unroll)]
    for c in 0..hd {
        let base = head_at(&p, p.row, 3 * d, hd) + c;
        own_k[tid * hd + c] = qkv[base + d];
        own_v[tid * hd + c] = qkv[base + 2 * d];
        dk[c] = F::new(0.0);
        dv[c] = F::new(0.0);
    }
    let mut sq = SharedMemory::<F>::new(tile * hd);
    let mut sgo = SharedMemory::<F>::new(tile * hd);
    let mut slse = SharedMemory::<F>::new(tile);
    let mut sdl = SharedMemory::<F>::new(tile);
    let is_key = p.i < p.keys;

    let mut start = 0usize;
    while start < n {
        load_tile(
            qkv,
            0,
            3 * d,
            &mut sq,
            dout,
            0,
            d,
            &mut sgo,
            start,
            n,
            &p,
            plan,
        );
        if tid < tile && start + tid < n {
            slse[tid] = lse[p.bh * n + start + tid];
            sdl[tid] = delta[p.bh * n + start + tid];
        }
        sync_cube();
        let len = min(n - start, tile.runtime());
        if is_key {
            for r in 0..tile {
                if r < len {
                    let (qk, dp) = pair_dots::<F, SharedMemory<F>, SharedMemory<F>>(
                        &sq,
                        &sgo,
                        r * hd,
                        &own_k,
                        &own_v,
                        tid * hd,
                        plan,
                    );
                    let w = (qk * scale - slse[r]).exp();
                    let ds = w * (dp - sdl[r]);
                    #[unroll(unroll)]
                    for c in 0..hd {
                        dv[c] += w * sgo[r * hd + c];
                        dk[c] += ds * sq[r * hd + c];
                    }
                }
            }
        }
        sync_cube();
        start += tile;
    }
    if p.i < n {
        #[unroll(unroll)]
        for c in 0..hd {
            let base = head_at(&p, p.i, 3 * d, hd) + c;
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

/// How the kernels run on a `qkv [B, N, 3D]`: one cube per `threads` rows of each batch and
/// head, the sizes `[B, N, D]`, the scores' scale and the plan.
struct Launch {
    grid: CubeCount,
    cube: CubeDim,
    sizes: [usize; 3],
    heads: usize,
    keys: usize,
    scale: f32,
    plan: Plan,
}

impl Launch {
    fn new<R: CubeRuntime>(qkv: &CubeTensor<R>, heads: usize, keys: usize) -> Self {
        let s = qkv.meta.shape();
        let (b, n, d) = (s[0], s[1], s[2] / 3);
        let hd = d / heads;
        let plan = plan(hd, max_shared(qkv), unroll(&qkv.client));
        Self {
            grid: row_grid(n.div_ceil(plan.threads) * b * heads),
            cube: CubeDim::new_1d(plan.threads as u32),
            sizes: [b, n, d],
            heads,
            keys,
            scale: (hd as f32).powf(-0.5),
            plan,
        }
    }

    /// The kernels' run-time sizes.
    fn heads<R: CubeRuntime>(&self) -> HeadsLaunch<R> {
        let (n, keys, heads) = (self.sizes[1] as u32, self.keys as u32, self.heads as u32);
        HeadsLaunch::new(n, keys, heads, self.scale)
    }
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
    let l = Launch::new(qkv, heads, keys);
    let [b, n, d] = l.sizes;
    let out = empty_f32(qkv, vec![b, n, d]);
    let lse = empty_f32(qkv, vec![b, heads, n]);
    attention_forward::launch::<f32, R>(
        &qkv.client,
        l.grid.clone(),
        l.cube,
        arg(qkv),
        arg(&out),
        arg(&lse),
        l.heads(),
        l.plan,
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
    let l = Launch::new(qkv, saved.heads, saved.keys);
    let [b, n, d] = l.sizes;
    let dqkv = empty_f32(qkv, vec![b, n, 3 * d]);
    let delta = empty_f32(qkv, vec![b, saved.heads, n]);
    let lse = &saved.lse;
    attention_backward_dq::launch::<f32, R>(
        &qkv.client,
        l.grid.clone(),
        l.cube,
        arg(qkv),
        arg(out),
        arg(dout),
        arg(lse),
        arg(&dqkv),
        arg(&delta),
        l.heads(),
        l.plan,
    );
    attention_backward_dkv::launch::<f32, R>(
        &qkv.client,
        l.grid.clone(),
        l.cube,
        arg(qkv),
        arg(dout),
        arg(lse),
        arg(&delta),
        arg(&dqkv),
        l.heads(),
        l.plan,
    );
    dqkv
}
