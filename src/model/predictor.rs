//! The narrow predictor of the official `VisionTransformerPredictor` (spec 1.7).
//!
//! Option: StoP (Bar et al., ICML 2024, "Stochastic positional embeddings improve masked image
//! modeling"). The position of every target query becomes a random variable
//! `ψ̂_j = ψ_j + A n_j`, `n_j ~ N(0, σ I)` in the encoder's width, with `A` tied to the
//! projection that brings the context tokens into the predictor (`predictor_embed`'s weight,
//! without its bias): the predictor cannot silence the noise without also silencing its
//! context. Off (no noise) the forward is the official one.
//!
//! Option: an invariance head, an MLP from the mean context token to the mean target token of
//! the whole image, through which VICReg's invariance term is taken (this project's option:
//! VICReg puts its terms on an expander rather than on the features read out, and a head
//! lets the context's mean differ from the full image's by what the mask hid). None by
//! default: the official predictor.
//!
//! Option: MSN's prototypes, the learned rows its prototype term assigns image features to
//! (see [`crate::train::msn`]); kept here so that they train and checkpoint with the
//! predictor. None by default.
//!
//! Option: an expander, the MLP VICReg puts between the features read out and its variance
//! and covariance terms (Bardes et al. 2022): the terms then shape the expander's output, and
//! the encoder's tokens need not be whitened themselves. Here every context token goes
//! through it before SIGReg's and VICReg's terms. None by default.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};

use super::config::PredictorConfig;
use super::gather::{MaskIndices, gather_table};
use super::init::Init;
use super::layers::{Block, BlockDims, LayerNorm, Linear, Mlp};
use super::pos_embed::sincos_2d;

#[derive(Module, Debug)]
pub struct Predictor<B: crate::ops::IjepaBackend> {
    pub predictor_embed: Linear<B>,
    /// `[1, 1, Dp]`.
    pub mask_token: Param<Tensor<B, 3>>,
    /// Fixed `[N, Dp]` sin-cos table (a constant).
    pub predictor_pos_embed: Tensor<B, 2>,
    pub predictor_blocks: Vec<Block<B>>,
    pub predictor_norm: LayerNorm<B>,
    pub predictor_proj: Linear<B>,
    /// The invariance head (`PredictorConfig::invariance_head`); `None` in the official model.
    pub invariance_head: Option<Mlp<B>>,
    /// MSN's prototypes `[K, D]` (`PredictorConfig::prototypes`); `None` in the official model.
    pub prototypes: Option<Param<Tensor<B, 2>>>,
    /// The expander (`PredictorConfig::expander`); `None` in the official model.
    pub expander: Option<Mlp<B>>,
}

impl<B: crate::ops::IjepaBackend> Predictor<B> {
    pub fn new(cfg: &PredictorConfig, init: &mut Init, device: &B::Device) -> Self {
        let dp = cfg.predictor_embed_dim;
        let dims = BlockDims {
            dim: dp,
            num_heads: cfg.num_heads,
            mlp_hidden: cfg.mlp_hidden,
            qkv_bias: cfg.qkv_bias,
            eps: cfg.layer_norm_eps,
        };
        // Official creation order: embed, mask token, blocks, norm, proj.
        let predictor_embed = Linear::new(cfg.embed_dim, dp, true, init, device);
        let mask_token = Param::from_tensor(init.normal([1, 1, dp], device));
        let pos = sincos_2d(dp, cfg.grid);
        let predictor_blocks = (0..cfg.depth)
            .map(|_| Block::new(dims, init, device))
            .collect();
        let predictor_norm = LayerNorm::new(dp, cfg.layer_norm_eps, device);
        let predictor_proj = Linear::new(dp, cfg.embed_dim, true, init, device);
        // Drawn last, so that the official parameters' initial values do not depend on it.
        let invariance_head = (cfg.invariance_head > 0)
            .then(|| Mlp::new(cfg.embed_dim, cfg.invariance_head, init, device));
        let prototypes = (cfg.prototypes > 0)
            .then(|| Param::from_tensor(init.normal([cfg.prototypes, cfg.embed_dim], device)));
        let expander =
            (cfg.expander > 0).then(|| Mlp::new(cfg.embed_dim, cfg.expander, init, device));
        Self {
            predictor_embed,
            mask_token,
            predictor_pos_embed: Tensor::from_data(
                TensorData::new(pos, [cfg.num_patches(), dp]),
                device,
            ),
            predictor_blocks,
            predictor_norm,
            predictor_proj,
            invariance_head,
            prototypes,
            expander,
        }
    }

    /// The features SIGReg's and VICReg's terms see: the context tokens `[rows, K, D]`,
    /// through the expander when there is one.
    pub fn regularised_features(&self, z: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.expander {
            Some(expander) => expander.forward(z),
            None => z,
        }
    }

    /// The image-level features the invariance term compares with the target's mean token:
    /// the mean of each row's context tokens (`z [rows, K, D]` -> `[rows, 1, D]`), through the
    /// invariance head when there is one.
    pub fn invariance_features(&self, z: Tensor<B, 3>) -> Tensor<B, 3> {
        let pooled = z.mean_dim(1);
        match &self.invariance_head {
            Some(head) => head.forward(pooled),
            None => pooled,
        }
    }

    pub fn num_patches(&self) -> usize {
        self.predictor_pos_embed.dims()[0]
    }

    /// `predictor(z, masks_x, masks)`: `z [nenc*B, K_enc, D]` from the context encoder ->
    /// `[npred*nenc*B, K_pred, D]`, row `(j*nenc + i)*B + b` = target j of image b seen from
    /// context i (the official row order).
    ///
    /// With padded masks ([`MaskIndices::padded`]) the token sequence is laid out as
    /// `[real context | queries | context padding]` (the official `[context | queries]` when
    /// nothing is padded), so that the real tokens form a prefix, the only keys of the
    /// attention; the outputs at the real queries are those of the unpadded masks.
    pub fn forward(
        &self,
        z: Tensor<B, 3>,
        masks_x: &MaskIndices,
        masks: &MaskIndices,
    ) -> Tensor<B, 3> {
        self.forward_stop(z, masks_x, masks, None)
    }

    /// [`Self::forward`] with StoP: `noise` (`[npred*nenc*B, K_pred, D]`, already scaled to
    /// N(0, σ I)) perturbs the target queries' positions through `predictor_embed`'s weight.
    pub fn forward_stop(
        &self,
        z: Tensor<B, 3>,
        masks_x: &MaskIndices,
        masks: &MaskIndices,
        noise: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let nenc = masks_x.n_masks();
        let npred = masks.n_masks();
        let k_pred = masks.k();
        let pos = self.predictor_pos_embed.clone();

        // Context tokens, each with the position of its own patch (added by the fused op).
        let x = self
            .predictor_embed
            .forward_residual(z, gather_table(pos.clone(), masks_x, 1));
        // One query per target patch: mask token + the target's position, rows (j, i, b).
        let queries = stop_queries(
            self.mask_token.val(),
            gather_table(pos, masks, nenc),
            noise,
            self.predictor_embed.weight.val(),
        );
        // Context tiled once per target mask (`x.repeat(npred, 1, 1)`), queries appended.
        // (`cat` of copies rather than `repeat_dim`: burn 0.21's autodiff backward of
        // `repeat_dim` sums the copies as if they were interleaved, which is wrong for a tile.)
        let context = Tensor::cat(vec![x; npred], 0);
        let real_context = masks_x.valid();
        let x = if masks_x.is_padded() {
            let [rows, tokens, dp] = context.dims();
            Tensor::cat(
                vec![
                    context.clone().slice([0..rows, 0..real_context, 0..dp]),
                    queries,
                    context.slice([0..rows, real_context..tokens, 0..dp]),
                ],
                1,
            )
        } else {
            Tensor::cat(vec![context, queries], 1)
        };
        let keys = (masks_x.is_padded() || masks.is_padded()).then(|| real_context + masks.valid());
        self.predict_queries(x, keys, real_context..real_context + k_pred)
    }

    /// The blocks, norm and projection on `x` (`[rows, tokens, Dp]`, keys its first `keys`
    /// tokens when given), returning the outputs at the `queries` positions only: the last
    /// block computes those alone.
    fn predict_queries(
        &self,
        x: Tensor<B, 3>,
        keys: Option<usize>,
        queries: std::ops::Range<usize>,
    ) -> Tensor<B, 3> {
        let queries_only = |x: Tensor<B, 3>| {
            let [rows, _, dp] = x.dims();
            x.slice([0..rows, queries.clone(), 0..dp])
        };
        let x = match self.predictor_blocks.split_last() {
            Some((last, blocks)) => {
                let x = blocks
                    .iter()
                    .fold(x, |x, block| block.forward_keys(x, keys));
                last.forward_picked(x, keys, queries_only)
            }
            None => queries_only(x),
        };
        self.predictor_proj.forward(self.predictor_norm.forward(x))
    }

    /// The targets predicted from one token per context block: its mean `pooled`
    /// (`[nenc*B, 1, D]`, no position: it stands for the whole block) instead of the context
    /// tokens; rows as in [`Self::forward`]. This project's option
    /// (`regularization.pooled_prediction_weight`): what the target blocks hold must pass
    /// through the mean, the feature the evaluation protocol reads.
    pub fn forward_pooled(&self, pooled: Tensor<B, 3>, masks: &MaskIndices) -> Tensor<B, 3> {
        let [rows, _, _] = pooled.dims();
        let npred = masks.n_masks();
        let k_pred = masks.k();
        let x = self.predictor_embed.forward(pooled);
        let queries = self.mask_token.val()
            + gather_table(
                self.predictor_pos_embed.clone(),
                masks,
                rows / masks.batch(),
            );
        let x = Tensor::cat(vec![Tensor::cat(vec![x; npred], 0), queries], 1);
        let keys = masks.is_padded().then(|| 1 + masks.valid());
        self.predict_queries(x, keys, 1..1 + k_pred)
    }
}

/// The target queries: `mask_token + ψ_j`, plus `n_j A` when StoP noise is given (`A` the
/// `[D, Dp]` weight of `predictor_embed`, rows of `noise` in the encoder's width `D`).
pub fn stop_queries<B: crate::ops::IjepaBackend>(
    mask_token: Tensor<B, 3>,
    positions: Tensor<B, 3>,
    noise: Option<Tensor<B, 3>>,
    a: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let queries = mask_token + positions;
    match noise {
        None => queries,
        Some(n) => {
            let [rows, k, d] = n.dims();
            let dp = a.dims()[1];
            let shift = crate::ops::linear(n.reshape([rows * k, d]), a, None);
            queries + shift.reshape([rows, k, dp])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuAutodiff;

    type B = CpuAutodiff;

    fn t<const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
        let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        Tensor::from_data(TensorData::new(f, shape), &Default::default()).require_grad()
    }

    fn vals(n: usize, salt: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((i * 31 + salt * 17) % 23) as f64 / 11.0) - 1.0)
            .collect()
    }

    fn host<const D: usize>(x: Tensor<burn::backend::Flex, D>) -> Vec<f64> {
        x.into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// `q_rkc = m_c + ψ_rkc + Σ_i n_rki A_ic`, and for the loss `L = Σ w_rkc q_rkc` the
    /// gradients `∂L/∂m_c = Σ_rk w_rkc` and `∂L/∂A_ic = Σ_rk n_rki w_rkc`, in f64.
    #[test]
    fn stop_queries_and_gradients_match_f64() {
        let (r, k, d, dp) = (3, 4, 5, 6);
        let (m, psi, n, a, w) = (
            vals(dp, 1),
            vals(r * k * dp, 2),
            vals(r * k * d, 3),
            vals(d * dp, 4),
            vals(r * k * dp, 5),
        );
        let (mt, at) = (t(&m, [1, 1, dp]), t(&a, [d, dp]));
        let q = stop_queries(
            mt.clone(),
            t(&psi, [r, k, dp]).detach(),
            Some(t(&n, [r, k, d]).detach()),
            at.clone(),
        );
        let loss = (q.clone() * t(&w, [r, k, dp]).detach()).sum();
        let grads = loss.backward();
        let (got_q, got_m, got_a) = (
            host(q.inner()),
            host(mt.grad(&grads).unwrap()),
            host(at.grad(&grads).unwrap()),
        );
        let mut want_q = vec![0.0; r * k * dp];
        let mut want_m = vec![0.0; dp];
        let mut want_a = vec![0.0; d * dp];
        for row in 0..r * k {
            for c in 0..dp {
                let shift: f64 = (0..d).map(|i| n[row * d + i] * a[i * dp + c]).sum();
                want_q[row * dp + c] = m[c] + psi[row * dp + c] + shift;
                want_m[c] += w[row * dp + c];
                for i in 0..d {
                    want_a[i * dp + c] += n[row * d + i] * w[row * dp + c];
                }
            }
        }
        for (what, got, want) in [
            ("q", got_q, want_q),
            ("dm", got_m, want_m),
            ("dA", got_a, want_a),
        ] {
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{what}: {g} vs {w}"
                );
            }
        }
        // Without noise: the official mask token + position, and no gradient reaches A.
        let at = t(&a, [d, dp]);
        let q = stop_queries(t(&m, [1, 1, dp]), t(&psi, [r, k, dp]), None, at.clone());
        let grads = q.clone().sum().backward();
        assert!(at.grad(&grads).is_none());
        let plain: Vec<f64> = (0..r * k * dp).map(|i| m[i % dp] + psi[i]).collect();
        for (g, w) in host(q.inner()).iter().zip(&plain) {
            assert!((g - w).abs() <= 1e-6);
        }
    }

    /// The prediction from the mean context token is the official predictor run on one
    /// context token without a position (its row of the position table zeroed; no target
    /// sits there): same embedding, tiling over the target masks, query positions and keys,
    /// with the target masks as they are and padded.
    #[test]
    fn pooled_prediction_is_the_predictor_on_one_positionless_token() {
        type F = burn::backend::Flex;
        let device = Default::default();
        let cfg = PredictorConfig {
            embed_dim: 6,
            predictor_embed_dim: 8,
            depth: 2,
            num_heads: 2,
            mlp_hidden: 12,
            grid: 4,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            invariance_head: 0,
            prototypes: 0,
            expander: 0,
        };
        let pred = Predictor::<F>::new(&cfg, &mut Init::new(5), &device);
        let (nenc, b, d, free) = (2, 3, 6, 15);
        let pooled = Tensor::<F, 3>::from_data(
            TensorData::new(
                vals(nenc * b * d, 7)
                    .iter()
                    .map(|v| *v as f32)
                    .collect::<Vec<_>>(),
                [nenc * b, 1, d],
            ),
            &device,
        );
        let targets = |j: usize| -> Vec<Vec<usize>> {
            (0..b).map(|i| vec![j + i, 4 + j + i, 8 + i]).collect()
        };
        let masks = MaskIndices::new(&[targets(0), targets(1)], 16).unwrap();
        let context = MaskIndices::new(&vec![vec![vec![free]; b]; nenc], 16).unwrap();
        let mut table = host(pred.predictor_pos_embed.clone());
        table[free * 8..(free + 1) * 8].fill(0.0);
        let official = Predictor {
            predictor_pos_embed: Tensor::from_data(
                TensorData::new(table.iter().map(|v| *v as f32).collect(), [16, 8]),
                &device,
            ),
            ..pred.clone()
        };
        for padded in [false, true] {
            let masks = if padded {
                masks.padded(5).unwrap()
            } else {
                masks.clone()
            };
            let got = pred.forward_pooled(pooled.clone(), &masks);
            let want = official.forward(pooled.clone(), &context, &masks);
            assert_eq!(got.dims(), [2 * nenc * b, masks.k(), d]);
            let (got, want) = (host(got), host(want));
            let k = masks.k();
            for row in 0..2 * nenc * b {
                for q in 0..masks.valid() {
                    for c in 0..d {
                        let i = (row * k + q) * d + c;
                        assert!(
                            (got[i] - want[i]).abs() <= 1e-5,
                            "padded {padded} row {row} query {q}: {} vs {}",
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }
}
