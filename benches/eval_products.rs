//! The evaluation's matrix products on the crate's GEMM against the hand-written register
//! tiles they replaced (kept here, and only here, as the measured alternative):
//!
//! * kNN similarities, f32: one block of 64 normalised test rows against all train rows,
//!   `gemm_strided` vs the packed-panel 4x8 micro-kernel;
//! * the linear probe's objective, f64: one evaluation of loss and gradient,
//!   `logreg::Objective::eval` (two GEMM products per chunk of rows) vs the 4x4 register tiles.
//!
//!     cargo bench --bench eval_products
//!
//! Both variants alternate in one process; best of 15 runs each, on one thread (the
//! evaluation runs one such product per rayon task). Measured on this project's 2-core
//! machine: GEMM 2-3x faster for kNN, 1.2-2.4x for the probe, so the tiles were removed.

mod common;

use common::best_pair;
use ijepa::eval::Features;
use ijepa::eval::logreg::Objective;
use ijepa::ops::kernels::matmul::{Parallelism, View, gemm_strided};

fn values(len: usize, a: usize, b: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * a) % b) as f32 / b as f32 - 0.5)
        .collect()
}

/// The removed kNN kernel: train rows packed 8 at a time, 4 x 8 dot products in registers.
mod knn_tiles {
    use rayon::prelude::*;

    pub const PANEL: usize = 8;
    pub const MR: usize = 4;

    /// Train rows regrouped `PANEL` at a time, dimension-major inside a panel
    /// (`panel[j * PANEL + l]` = row `l`, dim `j`), zero-padded: one contiguous load per step.
    pub fn pack_panels(x: &[f32], n: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n.div_ceil(PANEL) * PANEL * d];
        out.par_chunks_mut(PANEL * d)
            .enumerate()
            .for_each(|(p, panel)| {
                for l in 0..PANEL.min(n - p * PANEL) {
                    let row = &x[(p * PANEL + l) * d..(p * PANEL + l + 1) * d];
                    for (j, &v) in row.iter().enumerate() {
                        panel[j * PANEL + l] = v;
                    }
                }
            });
        out
    }

    /// `MR x PANEL` dot products: `out[r][l] = sum_j a[r * d + j] * panel[j * PANEL + l]`, j in
    /// increasing order (so a similarity does not depend on where its rows sit in a tile).
    #[inline(always)]
    pub fn micro_kernel(a: &[f32], panel: &[f32], d: usize) -> [[f32; PANEL]; MR] {
        let mut acc = [[0.0f32; PANEL]; MR];
        let (a0, rest) = a.split_at(d);
        let (a1, rest) = rest.split_at(d);
        let (a2, a3) = rest.split_at(d);
        let (pv, _) = panel.as_chunks::<PANEL>();
        for ((((b, &x0), &x1), &x2), &x3) in pv.iter().zip(a0).zip(a1).zip(a2).zip(a3) {
            for l in 0..PANEL {
                acc[0][l] += x0 * b[l];
                acc[1][l] += x1 * b[l];
                acc[2][l] += x2 * b[l];
                acc[3][l] += x3 * b[l];
            }
        }
        acc
    }
}

/// The removed probe objective: 4 rows x 4 classes register tiles, f32 rows widened per tile.
mod probe_tiles {
    use std::ops::Range;

    use rayon::prelude::*;

    use ijepa::eval::Features;
    use ijepa::eval::logreg::softmax_residual;

    const TILE: usize = 4;

    pub struct Objective<'a> {
        x: &'a Features,
        y: &'a [usize],
        c: usize,
        /// `c` rounded up to a multiple of [`TILE`].
        cp: usize,
        l2: f64,
        ranges: Vec<Range<usize>>,
        /// Per task: gradient of W in the transposed padded layout (`d x cp`), then `cp` biases.
        partials: Vec<Vec<f64>>,
        /// W transposed and padded, then the padded biases: rebuilt at every evaluation.
        wt: Vec<f64>,
    }

    impl<'a> Objective<'a> {
        /// The row chunking depends only on (n, c, d), never on the thread count.
        pub fn new(x: &'a Features, y: &'a [usize], c: usize, l2: f64) -> Self {
            let cp = c.div_ceil(TILE) * TILE;
            let p = cp * (x.dim + 1);
            let ranges = ijepa::eval::logreg::task_ranges(x.n, p);
            let partials = vec![vec![0.0; p]; ranges.len()];
            Objective {
                x,
                y,
                c,
                cp,
                l2,
                ranges,
                partials,
                wt: vec![0.0; p],
            }
        }

        /// Objective value; writes the gradient (layout of `theta`) into `grad`.
        pub fn eval(&mut self, theta: &[f64], grad: &mut [f64]) -> f64 {
            let (x, y, c, cp) = (self.x, self.y, self.c, self.cp);
            let d = x.dim;
            for k in 0..c {
                for j in 0..d {
                    self.wt[j * cp + k] = theta[k * d + j];
                }
                self.wt[d * cp + k] = theta[c * d + k];
            }
            let wt = &self.wt;
            let losses: Vec<f64> = self
                .partials
                .par_iter_mut()
                .zip(self.ranges.par_iter())
                .map(|(g, r)| {
                    g.fill(0.0);
                    chunk_loss_grad(x, y, c, cp, wt, r.clone(), g)
                })
                .collect();
            // Sum the task buffers in task order (fixed), transposing back to theta's layout.
            let inv_n = 1.0 / x.n as f64;
            let parts = &self.partials;
            grad.par_chunks_mut(d).enumerate().for_each(|(k, gk)| {
                if k < c {
                    for (j, gkj) in gk.iter_mut().enumerate() {
                        let mut s = 0.0;
                        for p in parts {
                            s += p[j * cp + k];
                        }
                        *gkj = s * inv_n;
                    }
                } else {
                    // The c biases (the last chunk when d >= c; split over chunks otherwise).
                    let first = (k - c) * d;
                    for (i, gb) in gk.iter_mut().enumerate() {
                        let mut s = 0.0;
                        for p in parts {
                            s += p[d * cp + first + i];
                        }
                        *gb = s * inv_n;
                    }
                }
            });
            let nw = c * d;
            let mut sq = 0.0;
            for (g, &w) in grad[..nw].iter_mut().zip(&theta[..nw]) {
                *g += self.l2 * w;
                sq += w * w;
            }
            losses.iter().sum::<f64>() * inv_n + 0.5 * self.l2 * sq
        }
    }

    /// Sum of CE over `rows`; the matching unscaled gradient is added into `g` (layout of `wt`).
    fn chunk_loss_grad(
        x: &Features,
        y: &[usize],
        c: usize,
        cp: usize,
        wt: &[f64],
        rows: Range<usize>,
        g: &mut [f64],
    ) -> f64 {
        let d = x.dim;
        let (wt, bias) = wt.split_at(d * cp);
        let (gw, gb) = g.split_at_mut(d * cp);
        // Each value stored twice: a ready-made two-lane broadcast (SSE2 has no cheap one).
        let mut xt = vec![[[0.0f64; 2]; TILE]; d];
        // Stand-in for the missing rows of a partial tile.
        let zeros = vec![0.0f32; d];
        // Logits, then residuals p - onehot(y), per row of the block: `TILE x cp`.
        let mut z = vec![0.0f64; TILE * cp];
        let mut loss = 0.0;
        let mut i = rows.start;
        while i < rows.end {
            let m = (rows.end - i).min(TILE);
            let rows4: [&[f32]; TILE] =
                std::array::from_fn(|r| if r < m { x.row(i + r) } else { &zeros[..] });
            let [r0, r1, r2, r3] = rows4;
            for ((((t, &a), &b), &c), &e) in xt.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                *t = [[a as f64; 2], [b as f64; 2], [c as f64; 2], [e as f64; 2]];
            }
            for k0 in (0..cp).step_by(TILE) {
                let acc = logits_tile(&xt, wt, cp, k0);
                for (r, ar) in acc.iter().enumerate() {
                    for (l, a) in ar.iter().enumerate() {
                        z[r * cp + k0 + l] = a + bias[k0 + l];
                    }
                }
            }
            for r in 0..TILE {
                let zr = &mut z[r * cp..(r + 1) * cp];
                if r < m {
                    loss += softmax_residual(&mut zr[..c], y[i + r]);
                    zr[c..].fill(0.0);
                } else {
                    zr.fill(0.0);
                }
            }
            for r in 0..m {
                for (b, &v) in gb.iter_mut().zip(&z[r * cp..(r + 1) * cp]) {
                    *b += v;
                }
            }
            for k0 in (0..cp).step_by(TILE) {
                let mut rt = [[0.0f64; TILE]; TILE];
                for (r, rr) in rt.iter_mut().enumerate() {
                    rr.copy_from_slice(&z[r * cp + k0..r * cp + k0 + TILE]);
                }
                grad_tile(&xt, &rt, gw, cp, k0);
            }
            i += m;
        }
        loss
    }

    /// `acc[r][l] = sum_j xt[j][r] * wt[j * cp + k0 + l]`, j in increasing order.
    #[inline(always)]
    fn logits_tile(
        xt: &[[[f64; 2]; TILE]],
        wt: &[f64],
        cp: usize,
        k0: usize,
    ) -> [[f64; TILE]; TILE] {
        let mut acc = [[0.0f64; TILE]; TILE];
        for (xv, wrow) in xt.iter().zip(wt.chunks_exact(cp)) {
            let mut wv = [0.0f64; TILE];
            wv.copy_from_slice(&wrow[k0..k0 + TILE]);
            for r in 0..TILE {
                for l in 0..TILE {
                    acc[r][l] += xv[r][l % 2] * wv[l];
                }
            }
        }
        acc
    }

    /// `gw[j * cp + k0 + l] += sum_r xt[j][r] * rt[r][l]`, rows added in order (r = 0, 1, 2, 3).
    #[inline(always)]
    fn grad_tile(
        xt: &[[[f64; 2]; TILE]],
        rt: &[[f64; TILE]; TILE],
        gw: &mut [f64],
        cp: usize,
        k0: usize,
    ) {
        for (xv, grow) in xt.iter().zip(gw.chunks_exact_mut(cp)) {
            let mut gv = [0.0f64; TILE];
            gv.copy_from_slice(&grow[k0..k0 + TILE]);
            for r in 0..TILE {
                for l in 0..TILE {
                    gv[l] += xv[r][l % 2] * rt[r][l];
                }
            }
            grow[k0..k0 + TILE].copy_from_slice(&gv);
        }
    }
}

fn knn(n_train: usize, d: usize) {
    use knn_tiles::{MR, PANEL, micro_kernel, pack_panels};
    let rows = 64;
    let q = values(rows * d, 7, 13);
    let train = values(n_train * d, 5, 11);
    let panels = pack_panels(&train, n_train, d);
    let mut sims_tiles = vec![0.0f32; rows * n_train];
    let mut sims_gemm = vec![0.0f32; rows * n_train];
    let (gemm, tiles) = best_pair(
        || {
            let (lhs, rhs) = (View::rows(&q, d), View::t(&train, d));
            gemm_strided(
                rows,
                n_train,
                d,
                &mut sims_gemm,
                n_train,
                false,
                lhs,
                rhs,
                1.0,
                Parallelism::None,
            );
        },
        || {
            for (mi, a) in q.chunks_exact(MR * d).enumerate() {
                for (pi, panel) in panels.chunks_exact(PANEL * d).enumerate() {
                    let s = micro_kernel(a, panel, d);
                    for (r, sr) in s.iter().enumerate() {
                        let row = (mi * MR + r) * n_train + pi * PANEL;
                        let cols = PANEL.min(n_train - pi * PANEL);
                        sims_tiles[row..row + cols].copy_from_slice(&sr[..cols]);
                    }
                }
            }
        },
    );
    let diff = sims_tiles
        .iter()
        .zip(&sims_gemm)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let flop = 2.0 * (rows * n_train * d) as f64;
    println!(
        "kNN 64 x {n_train} x {d:<4}             gemm {:6.1} GF/s  tiles {:6.1} GF/s  (max |diff| {diff:.1e})",
        flop / gemm / 1e9,
        flop / tiles / 1e9
    );
}

fn logreg(n: usize, d: usize, c: usize) {
    let x = Features::new(n, d, values(n * d, 7, 13)).expect("features");
    let y: Vec<usize> = (0..n).map(|i| (i * 7) % c).collect();
    let theta: Vec<f64> = values(c * (d + 1), 3, 7)
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let (mut g_gemm, mut g_tiles) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let (mut l_gemm, mut l_tiles) = (0.0, 0.0);
    let (gemm, tiles) = pool.install(|| {
        let mut kept = Objective::new(&x, &y, c, 1e-3);
        let mut old = probe_tiles::Objective::new(&x, &y, c, 1e-3);
        best_pair(
            || l_gemm = kept.eval(&theta, &mut g_gemm),
            || l_tiles = old.eval(&theta, &mut g_tiles),
        )
    });
    let diff = g_gemm
        .iter()
        .zip(&g_tiles)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    let flop = 4.0 * (n * d * c) as f64;
    println!(
        "probe objective {n} x {d:<4} x {c:<3} gemm {:6.1} GF/s  tiles {:6.1} GF/s  (loss diff {:.1e}, grad diff {diff:.1e})",
        flop / gemm / 1e9,
        flop / tiles / 1e9,
        (l_gemm - l_tiles).abs()
    );
}

fn main() {
    for (n, d) in [(60_000, 128), (60_000, 512), (10_000, 384)] {
        knn(n, d);
    }
    for (n, d, c) in [(54_000, 128, 10), (54_000, 512, 10), (20_000, 384, 100)] {
        logreg(n, d, c);
    }
}
