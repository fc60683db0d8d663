//! Weighted k-nearest-neighbour classifier on frozen features (the DINO protocol).
//!
//! Features are L2-normalised (a zero row stays zero), similarity is the cosine, the `k` most
//! similar train rows vote for their class with weight `exp(sim / T)`, and the class with the
//! largest total wins. Weights are computed as `exp((sim - sim_max) / T)`: the same ranking as
//! DINO's `exp(sim / T)` (a common factor per test row) without overflow at small `T`.
//!
//! Similarities are matrix products on the crate's GEMM (`cargo bench --bench eval_products`:
//! 2-3x the hand-written register tiles it replaced), one per (block of test rows, chunk of
//! train rows), blocks and chunks fixed by the shapes alone.
//!
//! Determinism: every product has the same shape whatever the thread count, so every
//! similarity is the same f32 value; neighbours are ordered by (similarity desc, train index asc) and vote
//! ties go to the lowest class index.

use rayon::prelude::*;
use serde::Serialize;

use crate::ops::kernels::matmul::{Parallelism, View, gemm_strided};

use super::error::EvalError;
use super::matrix::{Features, check_labels, top1_percent};
use crate::error::Setting;

type Result<T> = std::result::Result<T, EvalError>;

/// DINO's defaults.
pub const DEFAULT_K: usize = 20;
pub const DEFAULT_TEMPERATURE: f32 = 0.07;

/// Result of [`knn_top1`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KnnResult {
    /// Test top-1, percent.
    pub top1: f64,
    /// Neighbours actually used: `min(k, n_train)`.
    pub k: usize,
    pub temperature: f32,
    pub n_train: usize,
    pub n_test: usize,
}

/// kNN top-1 (percent) of `test` against `train`.
pub fn knn_top1(
    train: &Features,
    train_y: &[usize],
    test: &Features,
    test_y: &[usize],
    num_classes: usize,
    k: usize,
    temperature: f32,
) -> Result<KnnResult> {
    check_labels(test_y, test.n, num_classes, "test labels")?;
    let pred = knn_predict(train, train_y, test, num_classes, k, temperature)?;
    Ok(KnnResult {
        top1: top1_percent(&pred, test_y),
        k: k.min(train.n),
        temperature,
        n_train: train.n,
        n_test: test.n,
    })
}

/// Predicted class of every test row. `k > n_train` uses all train rows.
pub fn knn_predict(
    train: &Features,
    train_y: &[usize],
    test: &Features,
    num_classes: usize,
    k: usize,
    temperature: f32,
) -> Result<Vec<usize>> {
    train.validate("kNN train features")?;
    test.validate("kNN test features")?;
    if train.dim != test.dim {
        return Err(EvalError::Shape(format!(
            "kNN: train has {} dims, test has {}",
            train.dim, test.dim
        )));
    }
    check_labels(train_y, train.n, num_classes, "kNN train labels")?;
    if k == 0 {
        return Err(EvalError::Config(Setting::new("kNN k", "at least 1", k)));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(EvalError::Config(Setting::new(
            "kNN temperature",
            "a finite number > 0",
            temperature,
        )));
    }
    let k = k.min(train.n);
    let d = train.dim;
    let train_rows = normalized(train);
    let queries = normalized(test);
    let chunk_rows = (CHUNK_BYTES / (4 * d)).max(1);
    let inv_t = 1.0 / temperature as f64;

    let mut pred = vec![0usize; test.n];
    pred.par_chunks_mut(TEST_BLOCK)
        .zip(queries.par_chunks(TEST_BLOCK * d))
        .for_each(|(pred, q)| {
            let rows = pred.len();
            let mut top = TopK::new(rows, k);
            let mut sims = vec![0.0f32; rows * chunk_rows.min(train.n)];
            for (ci, chunk) in train_rows.chunks(chunk_rows * d).enumerate() {
                let cols = chunk.len() / d;
                let (lhs, rhs) = (View::rows(q, d), View::t(chunk, d));
                gemm_strided(
                    rows,
                    cols,
                    d,
                    &mut sims,
                    cols,
                    false,
                    lhs,
                    rhs,
                    1.0,
                    Parallelism::None,
                );
                for (r, sr) in sims.chunks_exact(cols).take(rows).enumerate() {
                    for (l, &s) in sr.iter().enumerate() {
                        top.offer(r, s, ci * chunk_rows + l);
                    }
                }
            }
            let mut votes = vec![0.0f64; num_classes];
            for (r, p) in pred.iter_mut().enumerate() {
                *p = vote(top.row(r), train_y, inv_t, &mut votes);
            }
        });
    Ok(pred)
}

/// Test rows per parallel task (each streams all of train once, chunk by chunk).
const TEST_BLOCK: usize = 64;
/// Train bytes per chunk, revisited by every micro-tile of a test block.
const CHUNK_BYTES: usize = 128 << 10;

/// Rows scaled to unit L2 norm (norm computed in f64); zero rows stay zero.
fn normalized(x: &Features) -> Vec<f32> {
    let mut out = x.data.clone();
    out.par_chunks_mut(x.dim).for_each(|row| {
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        let s = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        row.iter_mut().for_each(|v| *v = (*v as f64 * s) as f32);
    });
    out
}

/// Per test row, the best `k` (similarity, train index) seen so far, sorted.
struct TopK {
    k: usize,
    sims: Vec<f32>,
    idx: Vec<usize>,
    len: Vec<usize>,
    /// Similarity a candidate must beat (the k-th best, or -inf while not full).
    floor: Vec<f32>,
}

impl TopK {
    fn new(rows: usize, k: usize) -> Self {
        TopK {
            k,
            sims: vec![0.0; rows * k],
            idx: vec![0; rows * k],
            len: vec![0; rows],
            floor: vec![f32::NEG_INFINITY; rows],
        }
    }

    /// Train indices arrive in increasing order, so a strict `>` keeps the earlier of equal
    /// similarities: the order is (similarity desc, index asc).
    #[inline(always)]
    fn offer(&mut self, r: usize, s: f32, j: usize) {
        if s <= self.floor[r] {
            return;
        }
        let k = self.k;
        let sims = &mut self.sims[r * k..(r + 1) * k];
        let idx = &mut self.idx[r * k..(r + 1) * k];
        let len = &mut self.len[r];
        let mut p = if *len == k { k - 1 } else { *len };
        while p > 0 && sims[p - 1] < s {
            sims[p] = sims[p - 1];
            idx[p] = idx[p - 1];
            p -= 1;
        }
        sims[p] = s;
        idx[p] = j;
        if *len < k {
            *len += 1;
        }
        if *len == k {
            self.floor[r] = sims[k - 1];
        }
    }

    fn row(&self, r: usize) -> (&[f32], &[usize]) {
        let (a, b) = (r * self.k, r * self.k + self.len[r]);
        (&self.sims[a..b], &self.idx[a..b])
    }
}

/// Weighted vote of sorted neighbours; `votes` is all zeros on entry and on return.
fn vote((sims, idx): (&[f32], &[usize]), labels: &[usize], inv_t: f64, votes: &mut [f64]) -> usize {
    let Some(&top) = sims.first() else {
        return 0;
    };
    for (&s, &i) in sims.iter().zip(idx) {
        votes[labels[i]] += ((s as f64 - top as f64) * inv_t).exp();
    }
    let mut best = labels[idx[0]];
    for &i in idx {
        let c = labels[i];
        if votes[c] > votes[best] || (votes[c] == votes[best] && c < best) {
            best = c;
        }
    }
    for &i in idx {
        votes[labels[i]] = 0.0;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{clusters, sample};
    use super::*;

    fn feats(n: usize, dim: usize, data: &[f32]) -> Features {
        Features::new(n, dim, data.to_vec()).unwrap()
    }

    /// Straightforward reference: every similarity as the same f32 sum, full sort.
    fn naive_predict(
        train: &Features,
        train_y: &[usize],
        test: &Features,
        c: usize,
        k: usize,
        t: f32,
    ) -> Vec<usize> {
        let tr = normalized(train);
        let te = normalized(test);
        let d = train.dim;
        (0..test.n)
            .map(|i| {
                let q = &te[i * d..(i + 1) * d];
                let mut sims: Vec<(f32, usize)> = (0..train.n)
                    .map(|j| {
                        let mut s = 0.0f32;
                        for (a, b) in q.iter().zip(&tr[j * d..(j + 1) * d]) {
                            s += a * b;
                        }
                        (s, j)
                    })
                    .collect();
                sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                sims.truncate(k.min(train.n));
                let top = sims[0].0 as f64;
                let mut votes = vec![0.0f64; c];
                for &(s, j) in &sims {
                    votes[train_y[j]] += ((s as f64 - top) / t as f64).exp();
                }
                let mut best = 0;
                for (cl, &v) in votes.iter().enumerate() {
                    if v > votes[best] {
                        best = cl;
                    }
                }
                best
            })
            .collect()
    }

    #[test]
    fn clustered_data_is_classified() {
        let (tr, ytr, means) = clusters(2000, 32, 10, 1.0, 1);
        let (te, yte, _) = sample(500, 32, 10, &means, 2);
        let r = knn_top1(&tr, &ytr, &te, &yte, 10, DEFAULT_K, DEFAULT_TEMPERATURE).unwrap();
        assert!(r.top1 >= 99.0, "{r:?}");
        assert_eq!((r.k, r.n_train, r.n_test), (20, 2000, 500));
    }

    #[test]
    fn matches_the_reference_on_awkward_sizes() {
        // Sizes that are not multiples of the tile, panel, block or chunk sizes.
        for (ntr, nte, d, k) in [
            (77, 70, 13, 5),
            (9, 3, 1, 4),
            (1, 1, 3, 20),
            (300, 130, 40, 1),
        ] {
            let (tr, ytr, means) = clusters(ntr, d, 4, 0.3, ntr as u64);
            let (te, _, _) = sample(nte, d, 4, &means, 7);
            for t in [0.07, 1.0] {
                let fast = knn_predict(&tr, &ytr, &te, 4, k, t).unwrap();
                assert_eq!(
                    fast,
                    naive_predict(&tr, &ytr, &te, 4, k, t),
                    "{ntr} {nte} {d} {k}"
                );
            }
        }
    }

    #[test]
    fn k_larger_than_train_uses_everything() {
        let tr = feats(3, 2, &[1.0, 0.0, 0.9, 0.1, -1.0, 0.0]);
        let te = feats(1, 2, &[1.0, 0.05]);
        let r = knn_top1(&tr, &[0, 1, 1], &te, &[1], 2, 20, 10.0).unwrap();
        // All three vote; at T = 10 the two class-1 rows outweigh the single nearest class-0 row.
        assert_eq!(r.k, 3);
        assert_eq!(r.top1, 100.0);
    }

    /// 1-D: cosine similarity is the sign. Query +1; one class-0 row at +1 (sim 1) and four
    /// class-1 rows at negative values (sim -1). Votes, relative to the top similarity:
    /// class 0 = exp(0) = 1, class 1 = 4 exp(-2 / T): class 1 wins iff T > 2 / ln 4 = 1.4427.
    #[test]
    fn one_dimensional_weighted_vote() {
        let tr = feats(5, 1, &[2.0, -1.0, -3.0, -0.5, -7.0]);
        let y = [0, 1, 1, 1, 1];
        let te = feats(1, 1, &[0.3]);
        let pred = |t: f32| knn_predict(&tr, &y, &te, 2, 5, t).unwrap()[0];
        assert_eq!(pred(1.40), 0);
        assert_eq!(pred(1.49), 1);
        assert_eq!(pred(0.07), 0);
        assert_eq!(pred(100.0), 1);
        // With k = 1 only the nearest row votes, whatever T.
        assert_eq!(knn_predict(&tr, &y, &te, 2, 1, 100.0).unwrap(), vec![0]);
        // The vote itself, at T = 1: class 1 gets 4 e^-2 = 0.54 < 1.
        let mut votes = vec![0.0; 2];
        let sims = [1.0f32, -1.0, -1.0, -1.0, -1.0];
        let idx = [0usize, 1, 2, 3, 4];
        assert_eq!(vote((&sims, &idx), &y, 1.0, &mut votes), 0);
        assert_eq!(votes, vec![0.0, 0.0], "votes are reset");
        // T = 2: class 1 gets 4 e^-1 = 1.47 > 1.
        assert_eq!(vote((&sims, &idx), &y, 0.5, &mut votes), 1);
    }

    /// A near class-0 row against two farther class-1 rows: a low temperature trusts the
    /// nearest neighbour, a high one counts heads.
    #[test]
    fn temperature_moves_the_decision() {
        let a = |deg: f64| [deg.to_radians().cos() as f32, deg.to_radians().sin() as f32];
        let rows = [a(5.0), a(30.0), a(-30.0)];
        let tr = feats(3, 2, &rows.concat());
        let te = feats(1, 2, &a(0.0));
        let y = [0, 1, 1];
        // cos 5 = 0.9962, cos 30 = 0.8660: class 1 / class 0 = 2 exp(-0.1302 / T).
        assert_eq!(knn_predict(&tr, &y, &te, 2, 3, 0.07).unwrap(), vec![0]);
        assert_eq!(knn_predict(&tr, &y, &te, 2, 3, 1.0).unwrap(), vec![1]);
        // Threshold T* = 0.1302 / ln 2 = 0.1878.
        assert_eq!(knn_predict(&tr, &y, &te, 2, 3, 0.18).unwrap(), vec![0]);
        assert_eq!(knn_predict(&tr, &y, &te, 2, 3, 0.20).unwrap(), vec![1]);
    }

    #[test]
    fn ties_are_deterministic() {
        // Three identical rows: k = 1 keeps the lowest index.
        let tr = feats(3, 2, &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        let te = feats(1, 2, &[1.0, 1.0]);
        assert_eq!(
            knn_predict(&tr, &[2, 1, 0], &te, 3, 1, 0.07).unwrap(),
            vec![2]
        );
        // k = 2: rows 0 and 1 vote equally for classes 2 and 1: the lower class wins.
        assert_eq!(
            knn_predict(&tr, &[2, 1, 0], &te, 3, 2, 0.07).unwrap(),
            vec![1]
        );
        // A zero query is equally similar (0) to everything: still a defined answer.
        let zero = feats(1, 2, &[0.0, 0.0]);
        assert_eq!(
            knn_predict(&tr, &[2, 1, 0], &zero, 3, 1, 0.07).unwrap(),
            vec![2]
        );
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let (tr, ytr, means) = clusters(1500, 24, 6, 0.2, 5);
        let (te, _, _) = sample(333, 24, 6, &means, 6);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| knn_predict(&tr, &ytr, &te, 6, 20, 0.07).unwrap())
        };
        let one = run(1);
        assert_eq!(run(2), one);
        assert_eq!(run(3), one);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let tr = feats(2, 2, &[1.0, 0.0, 0.0, 1.0]);
        let te = feats(1, 2, &[1.0, 0.0]);
        let y = [0, 1];
        let wide = feats(1, 3, &[1.0, 0.0, 0.0]);
        assert!(matches!(
            knn_top1(&tr, &y, &wide, &[0], 2, 1, 0.07),
            Err(EvalError::Shape(_))
        ));
        let empty = feats(0, 2, &[]);
        assert!(matches!(
            knn_top1(&empty, &[], &te, &[0], 2, 1, 0.07),
            Err(EvalError::Empty(_))
        ));
        assert!(matches!(
            knn_top1(&tr, &y, &empty, &[], 2, 1, 0.07),
            Err(EvalError::Empty(_))
        ));
        assert!(matches!(
            knn_top1(&tr, &[0, 2], &te, &[0], 2, 1, 0.07),
            Err(EvalError::Label { .. })
        ));
        assert!(matches!(
            knn_top1(&tr, &y, &te, &[5], 2, 1, 0.07),
            Err(EvalError::Label { .. })
        ));
        assert!(matches!(
            knn_top1(&tr, &[0], &te, &[0], 2, 1, 0.07),
            Err(EvalError::Shape(_))
        ));
        let mut nan = tr.clone();
        nan.data[3] = f32::NAN;
        assert!(matches!(
            knn_top1(&nan, &y, &te, &[0], 2, 1, 0.07),
            Err(EvalError::NonFinite { .. })
        ));
        let mut inf = te.clone();
        inf.data[0] = f32::NEG_INFINITY;
        assert!(matches!(
            knn_top1(&tr, &y, &inf, &[0], 2, 1, 0.07),
            Err(EvalError::NonFinite { .. })
        ));
        assert!(matches!(
            knn_top1(&tr, &y, &te, &[0], 2, 0, 0.07),
            Err(EvalError::Config(_))
        ));
        for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                knn_top1(&tr, &y, &te, &[0], 2, 1, t),
                Err(EvalError::Config(_))
            ));
        }
        let broken = Features {
            n: 2,
            dim: 2,
            data: vec![0.0; 3],
        };
        assert!(matches!(
            knn_top1(&broken, &y, &te, &[0], 2, 1, 0.07),
            Err(EvalError::Shape(_))
        ));
    }
}
