//! The narrow predictor of the official `VisionTransformerPredictor` (spec 1.7).

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};

use super::config::PredictorConfig;
use super::gather::{MaskIndices, gather_table};
use super::init::Init;
use super::layers::{Block, BlockDims, LayerNorm, Linear};
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
        Self {
            predictor_embed,
            mask_token,
            predictor_pos_embed: Tensor::from_data(
                TensorData::new(pos, [cfg.num_patches(), dp]),
                device,
            ),
            predictor_blocks,
            predictor_norm: LayerNorm::new(dp, cfg.layer_norm_eps, device),
            predictor_proj: Linear::new(dp, cfg.embed_dim, true, init, device),
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
        let nenc = masks_x.n_masks();
        let npred = masks.n_masks();
        let k_pred = masks.k();
        let pos = self.predictor_pos_embed.clone();

        // Context tokens, each with the position of its own patch (added by the fused op).
        let x = self
            .predictor_embed
            .forward_residual(z, gather_table(pos.clone(), masks_x, 1));
        // One query per target patch: mask token + the target's position, rows (j, i, b).
        let queries = self.mask_token.val() + gather_table(pos, masks, nenc);
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

        // Only the queries' outputs are used: the last block computes those alone.
        let queries_only = |x: Tensor<B, 3>| {
            let [rows, _, dp] = x.dims();
            x.slice([0..rows, real_context..real_context + k_pred, 0..dp])
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
}
