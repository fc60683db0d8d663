//! The ViT encoder of the official `VisionTransformer` (spec 1.6): conv patch embedding (plus,
//! as this project's option, a projection of its own for every grid position),
//! fixed sin-cos positions, optional token selection *before* the blocks, pre-norm blocks,
//! final LayerNorm. No CLS token.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::TensorData;

use super::config::{EncoderConfig, PatchEmbedKind};
use super::gather::{MaskIndices, apply_masks};
use super::init::Init;
use super::layers::{Block, BlockDims, LayerNorm};
use super::pos_embed::sincos_2d;

/// The `Conv2d(C, D, kernel=p, stride=p)` of the official patch embedding, computed as
/// "cut into patches, flatten each in (channel, y, x) order, multiply": the same numbers as the
/// convolution and one GEMM on every backend.
#[derive(Module, Debug)]
pub struct PatchConv<B: crate::ops::IjepaBackend> {
    /// `[D, C, p, p]`, the PyTorch layout.
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
pub struct PatchEmbed<B: crate::ops::IjepaBackend> {
    pub proj: PatchConv<B>,
    /// `[N, C*p*p, D]`, each grid position's own projection added to the shared one
    /// ([`PatchEmbedKind::PerPosition`]); `None` in the official model.
    pub per_position: Option<Param<Tensor<B, 3>>>,
    pub patch_size: usize,
}

impl<B: crate::ops::IjepaBackend> PatchEmbed<B> {
    pub fn new(cfg: &EncoderConfig, init: &mut Init, device: &B::Device) -> Self {
        let (c, d, p) = (cfg.in_chans, cfg.embed_dim, cfg.patch_size);
        Self {
            proj: PatchConv {
                weight: Param::from_tensor(init.normal([d, c, p, p], device)),
                bias: Param::from_tensor(Tensor::zeros([d], device)),
            },
            // zeros, not drawn from `init`: training starts from the official model, whose
            // parameters get the values they get without the option
            per_position: (cfg.patch_embed == PatchEmbedKind::PerPosition).then(|| {
                Param::from_tensor(Tensor::zeros([cfg.num_patches(), c * p * p, d], device))
            }),
            patch_size: p,
        }
    }

    /// `[B, C, H, W]` -> `[B, N, D]`, tokens row-major over the patch grid.
    pub fn forward(&self, img: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = img.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let [d, ..] = self.proj.weight.dims();
        let patches = img
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * gh * gw, c * p * p]);
        // [N, B, Cpp] x [N, Cpp, D]: one small product per position (the official path keeps
        // `patches` unshared)
        let own = self.per_position.as_ref().map(|w| {
            patches
                .clone()
                .reshape([b, gh * gw, c * p * p])
                .swap_dims(0, 1)
                .matmul(w.val())
                .swap_dims(0, 1)
        });
        let weight = self.proj.weight.val().reshape([d, c * p * p]).transpose();
        let tokens = crate::ops::linear(patches, weight, Some(self.proj.bias.val()));
        let tokens = tokens.reshape([b, gh * gw, d]);
        match own {
            Some(own) => tokens + own,
            None => tokens,
        }
    }
}

#[derive(Module, Debug)]
pub struct VisionTransformer<B: crate::ops::IjepaBackend> {
    pub patch_embed: PatchEmbed<B>,
    /// Fixed `[N, D]` sin-cos table: a constant, not a parameter (`requires_grad=False`).
    pub pos_embed: Tensor<B, 2>,
    pub blocks: Vec<Block<B>>,
    pub norm: LayerNorm<B>,
}

impl<B: crate::ops::IjepaBackend> VisionTransformer<B> {
    /// A freshly initialised encoder (official init order: patch conv, blocks, norm).
    pub fn new(cfg: &EncoderConfig, init: &mut Init, device: &B::Device) -> Self {
        let dims = BlockDims {
            dim: cfg.embed_dim,
            num_heads: cfg.num_heads,
            mlp_hidden: cfg.mlp_hidden,
            qkv_bias: cfg.qkv_bias,
            eps: cfg.layer_norm_eps,
        };
        let patch_embed = PatchEmbed::new(cfg, init, device);
        let pos = sincos_2d(cfg.embed_dim, cfg.grid());
        Self {
            patch_embed,
            pos_embed: Tensor::from_data(
                TensorData::new(pos, [cfg.num_patches(), cfg.embed_dim]),
                device,
            ),
            blocks: (0..cfg.depth)
                .map(|_| Block::new(dims, init, device))
                .collect(),
            norm: LayerNorm::new(cfg.embed_dim, cfg.layer_norm_eps, device),
        }
    }

    pub fn embed_dim(&self) -> usize {
        self.pos_embed.dims()[1]
    }

    pub fn num_patches(&self) -> usize {
        self.pos_embed.dims()[0]
    }

    /// Patch embedding plus positions: `[B, N, D]` (HF's `hidden_states[0]`).
    pub fn embed(&self, img: Tensor<B, 4>) -> Tensor<B, 3> {
        let x = self.patch_embed.forward(img);
        let [b, n, d] = x.dims();
        // as [B, N*D] + [1, N*D]: a broadcast over rows only, which burn-flex runs row by row
        // (over [B, N, D] it walks a strided index per element)
        let pos = self.pos_embed.clone().reshape([1, n * d]);
        (x.reshape([b, n * d]) + pos).reshape([b, n, d])
    }

    /// `encoder(imgs, masks)`: keep the listed tokens (concatenated over masks along the batch),
    /// then blocks and the final norm. `None` runs the full image.
    /// Padded masks ([`MaskIndices::padded`]) give padded rows: the outputs of the real
    /// tokens are those of the unpadded masks (the padding is kept out of the attention's keys),
    /// the padding rows hold finite values of no meaning.
    pub fn forward(&self, img: Tensor<B, 4>, masks: Option<&MaskIndices>) -> Tensor<B, 3> {
        let mut x = self.embed(img);
        let mut keys = None;
        if let Some(masks) = masks {
            x = apply_masks(x, masks, 1);
            keys = masks.is_padded().then(|| masks.valid());
        }
        for block in &self.blocks {
            x = block.forward_keys(x, keys);
        }
        self.norm.forward(x)
    }

    /// `apply_masks(encoder(imgs), masks, repeat)`: the full image's tokens, kept only at the
    /// listed positions (the targets of training, `[n_masks * repeat * B, k, D]`). The last
    /// block and the final norm run on the kept tokens alone when they are fewer than the
    /// image's (same values: see [`Block::forward_picked`]).
    pub fn forward_kept(
        &self,
        img: Tensor<B, 4>,
        masks: &MaskIndices,
        repeat: usize,
    ) -> Tensor<B, 3> {
        let kept_rows = masks.n_masks() * repeat * masks.k();
        match self.blocks.split_last() {
            Some((last, blocks)) if kept_rows < self.num_patches() => {
                let x = blocks
                    .iter()
                    .fold(self.embed(img), |x, block| block.forward(x));
                let x = last.forward_picked(x, None, |t| apply_masks(t, masks, repeat));
                self.norm.forward(x)
            }
            _ => apply_masks(self.forward(img, None), masks, repeat),
        }
    }

    /// [`VisionTransformer::forward_kept`] with targets averaged over the last `layers` blocks:
    /// `(1/L) Σ norm(h_l)` over the outputs `h_l` of the last `layers` blocks, each through the
    /// final norm (as the last-4-layers evaluation reads them), kept at the listed positions.
    /// `layers = 1` is `forward_kept` (the official target).
    pub fn forward_kept_layers(
        &self,
        img: Tensor<B, 4>,
        masks: &MaskIndices,
        repeat: usize,
        layers: usize,
    ) -> Tensor<B, 3> {
        let depth = self.blocks.len();
        if layers <= 1 || depth == 0 {
            return self.forward_kept(img, masks, repeat);
        }
        let layers = layers.min(depth);
        let mut x = self.embed(img);
        let mut sum: Option<Tensor<B, 3>> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if i + layers >= depth {
                let h = self.norm.forward(apply_masks(x.clone(), masks, repeat));
                sum = Some(match sum {
                    Some(s) => s + h,
                    None => h,
                });
            }
        }
        sum.expect("layers >= 1").div_scalar(layers as f64)
    }

    /// [`VisionTransformer::forward_kept_layers`] and the full image's average-pooled final
    /// output (`[B, 1, D]`, as `forward(img, None).mean_dim(1)`) from one pass: the targets
    /// and the `same`-view invariance target of a step share the target encoder's blocks
    /// (the last block then runs on every token, not the kept ones alone).
    pub fn forward_kept_layers_pooled(
        &self,
        img: Tensor<B, 4>,
        masks: &MaskIndices,
        repeat: usize,
        layers: usize,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let depth = self.blocks.len();
        if depth == 0 {
            let x = self.forward(img, None);
            return (apply_masks(x.clone(), masks, repeat), x.mean_dim(1));
        }
        let layers = layers.clamp(1, depth);
        let mut x = self.embed(img);
        let mut sum: Option<Tensor<B, 3>> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if i + layers >= depth {
                let h = self.norm.forward(apply_masks(x.clone(), masks, repeat));
                sum = Some(match sum {
                    Some(s) => s + h,
                    None => h,
                });
            }
        }
        let kept = sum.expect("layers >= 1").div_scalar(layers as f64);
        (kept, self.norm.forward(x).mean_dim(1))
    }

    /// Average-pooled features of the full image: the final (normed) output (`layers = 1`), or
    /// the concatenation of the last `layers` blocks' outputs, each passed through the final
    /// norm and pooled (the paper's "last 4 layers" protocol), `[B, layers * D]`.
    pub fn pooled(&self, img: Tensor<B, 4>, layers: usize) -> Tensor<B, 2> {
        let mut x = self.embed(img);
        let depth = self.blocks.len();
        let layers = layers.clamp(1, depth);
        let mut kept = Vec::with_capacity(layers);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if i + layers >= depth {
                kept.push(self.norm.forward(x.clone()).mean_dim(1).squeeze_dim::<2>(1));
            }
        }
        Tensor::cat(kept, 1)
    }

    /// Full-image forward that also returns the input to every block and the last block's
    /// output (before the final norm): `depth + 1` tensors, as HF's `hidden_states`.
    pub fn forward_hidden(&self, img: Tensor<B, 4>) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let mut x = self.embed(img);
        let mut hidden = vec![x.clone()];
        for block in &self.blocks {
            x = block.forward(x);
            hidden.push(x.clone());
        }
        (self.norm.forward(x), hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;

    /// Largest |got - want| over two tensors' elements.
    fn max_abs_diff(got: Tensor<Cpu, 3>, want: Tensor<Cpu, 3>) -> f32 {
        let (got, want) = (
            got.into_data().to_vec::<f32>().unwrap(),
            want.into_data().to_vec::<f32>().unwrap(),
        );
        got.iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    }

    /// `forward_kept` gives the full forward's tokens at the kept positions (the rows it
    /// skips only ever fed themselves after the attention), on the skipping path (kept rows
    /// fewer than the patches) and on the fallback (repeat 3: 18 rows for 16 patches).
    #[test]
    fn kept_tokens_are_the_full_forward_gathered() {
        let cfg = EncoderConfig {
            image_size: 32,
            patch_size: 8,
            in_chans: 2,
            embed_dim: 32,
            depth: 2,
            num_heads: 2,
            mlp_hidden: 64,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            patch_embed: PatchEmbedKind::Shared,
        };
        let device = Default::default();
        let vit = VisionTransformer::<Cpu>::new(&cfg, &mut Init::new(3), &device);
        let values: Vec<f32> = (0..3 * 2 * 32 * 32)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let img = Tensor::<Cpu, 4>::from_data(TensorData::new(values, [3, 2, 32, 32]), &device);
        let masks = MaskIndices::new(
            &[
                vec![vec![0, 5, 9], vec![1, 2, 3], vec![15, 14, 4]],
                vec![vec![7, 8, 9], vec![0, 1, 15], vec![2, 6, 10]],
            ],
            16,
        )
        .unwrap();
        for repeat in [1, 2, 3] {
            let want = apply_masks(vit.forward(img.clone(), None), &masks, repeat);
            let got = vit.forward_kept(img.clone(), &masks, repeat);
            assert_eq!(got.dims(), [2 * repeat * 3, 3, 32]);
            assert_eq!(got.dims(), want.dims());
            let max_diff = max_abs_diff(got, want);
            assert!(max_diff <= 1e-6, "repeat {repeat}: max diff {max_diff}");
        }
    }

    /// Targets averaged over the last blocks against float64 written from the definition:
    /// each of the last `L` blocks' outputs through the final LayerNorm (a non-trivial weight
    /// and bias), averaged, then gathered at the kept positions; `L = 1` is `forward_kept`.
    #[test]
    fn kept_layers_are_the_mean_of_the_normed_last_blocks() {
        let (d, depth, eps) = (16, 3, 1e-6);
        let cfg = EncoderConfig {
            image_size: 16,
            patch_size: 4,
            in_chans: 1,
            embed_dim: d,
            depth,
            num_heads: 2,
            mlp_hidden: 32,
            qkv_bias: true,
            layer_norm_eps: eps,
            patch_embed: PatchEmbedKind::Shared,
        };
        let device = Default::default();
        let mut vit = VisionTransformer::<Cpu>::new(&cfg, &mut Init::new(5), &device);
        let (w, b): (Vec<f32>, Vec<f32>) = (0..d)
            .map(|i| (0.5 + i as f32 * 0.07, (i as f32 - 7.0) * 0.03))
            .unzip();
        let vec1 =
            |v: &[f32]| Tensor::<Cpu, 1>::from_data(TensorData::new(v.to_vec(), [d]), &device);
        vit.norm.weight = burn::module::Param::from_tensor(vec1(&w));
        vit.norm.bias = burn::module::Param::from_tensor(vec1(&b));
        let values: Vec<f32> = (0..2 * 16 * 16)
            .map(|i| ((i * 29 % 97) as f32 / 48.0) - 1.0)
            .collect();
        let img = Tensor::<Cpu, 4>::from_data(TensorData::new(values, [2, 1, 16, 16]), &device);
        let masks = MaskIndices::new(&[vec![vec![0, 5, 9], vec![15, 14, 4]]], 16).unwrap();
        let (_, hidden) = vit.forward_hidden(img.clone());
        let hidden: Vec<Vec<f32>> = hidden
            .into_iter()
            .map(|h| h.into_data().to_vec::<f32>().unwrap())
            .collect();
        for layers in 1..=depth {
            let rows = 2 * 16;
            let mut want = vec![0.0f64; rows * d];
            for h in &hidden[depth + 1 - layers..] {
                for (r, row) in h.chunks(d).enumerate() {
                    let mean = row.iter().map(|&x| x as f64).sum::<f64>() / d as f64;
                    let var =
                        row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                    for (j, &x) in row.iter().enumerate() {
                        let y = (x as f64 - mean) / (var + eps).sqrt() * w[j] as f64 + b[j] as f64;
                        want[r * d + j] += y / layers as f64;
                    }
                }
            }
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let want = Tensor::<Cpu, 3>::from_data(TensorData::new(want, [2, 16, d]), &device);
            let want = apply_masks(want, &masks, 1);
            let got = vit.forward_kept_layers(img.clone(), &masks, 1, layers);
            assert_eq!(got.dims(), [2, 3, d]);
            let max_diff = max_abs_diff(got, want.clone());
            assert!(max_diff <= 1e-5, "{layers} layers: max diff {max_diff}");
            // The one-pass variant gives the same targets, and the pooled final output.
            let (got, pooled) = vit.forward_kept_layers_pooled(img.clone(), &masks, 1, layers);
            let max_diff = max_abs_diff(got, want);
            assert!(
                max_diff <= 1e-5,
                "{layers} layers, one pass: max diff {max_diff}"
            );
            assert_eq!(pooled.dims(), [2, 1, d]);
            let max_diff = max_abs_diff(pooled, vit.forward(img.clone(), None).mean_dim(1));
            assert!(
                max_diff <= 1e-6,
                "{layers} layers, pooled: max diff {max_diff}"
            );
        }
    }

    /// `per_position` against float64 written from its definition: token `n` of image `b` is
    /// `bias + Σ_k (W[:, k] + P[n, k, :]) x_bk` over the patch's pixels `k` in (channel, y, x)
    /// order; the gradient of `Σ r ⊙ tokens` on `P[n]` is `Σ_b x_bn ⊗ r_bn`. Zero-initialised,
    /// it is the official embedding.
    #[test]
    fn per_position_patch_embed_matches_f64() {
        type A = crate::CpuAutodiff;
        let (b, c, p, g, d) = (2, 2, 2, 3, 4);
        let (n, k) = (g * g, c * p * p);
        let mut cfg = EncoderConfig {
            image_size: g * p,
            patch_size: p,
            in_chans: c,
            embed_dim: d,
            depth: 1,
            num_heads: 1,
            mlp_hidden: 8,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            patch_embed: PatchEmbedKind::Shared,
        };
        let device = Default::default();
        let shared = PatchEmbed::<A>::new(&cfg, &mut Init::new(2), &device);
        cfg.patch_embed = PatchEmbedKind::PerPosition;
        let mut pe = PatchEmbed::<A>::new(&cfg, &mut Init::new(2), &device);
        let side = g * p;
        let x: Vec<f32> = (0..b * c * side * side)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let img =
            || Tensor::<A, 4>::from_data(TensorData::new(x.clone(), [b, c, side, side]), &device);
        let diff = |a: Tensor<A, 3>, w: Tensor<A, 3>| max_abs_diff(a.inner(), w.inner());
        assert_eq!(diff(pe.forward(img()), shared.forward(img())), 0.0);

        let own: Vec<f32> = (0..n * k * d)
            .map(|i| ((i * 29 % 53) as f32 / 26.0) - 1.0)
            .collect();
        let own_t = Tensor::<A, 3>::from_data(TensorData::new(own.clone(), [n, k, d]), &device);
        pe.per_position = Some(Param::from_tensor(own_t.require_grad()));
        pe.proj.bias = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.1f32, -0.2, 0.3, 0.05], [d]),
            &device,
        ));
        let w = pe.proj.weight.val().into_data().to_vec::<f32>().unwrap();
        let bias = [0.1f64, -0.2, 0.3, 0.05];
        let r: Vec<f32> = (0..b * n * d)
            .map(|i| ((i * 13 % 17) as f32 / 8.0) - 1.0)
            .collect();
        // pixel k of patch (gy, gx) of image bi
        let pixel = |bi: usize, pos: usize, kk: usize| {
            let (gy, gx, ch, yy, xx) = (pos / g, pos % g, kk / (p * p), kk / p % p, kk % p);
            x[((bi * c + ch) * side + gy * p + yy) * side + gx * p + xx] as f64
        };
        let mut want = vec![0.0f64; b * n * d];
        let mut want_grad = vec![0.0f64; n * k * d];
        for bi in 0..b {
            for pos in 0..n {
                for dd in 0..d {
                    let row = (bi * n + pos) * d + dd;
                    want[row] = bias[dd];
                    for kk in 0..k {
                        let px = pixel(bi, pos, kk);
                        want[row] +=
                            (w[dd * k + kk] as f64 + own[(pos * k + kk) * d + dd] as f64) * px;
                        want_grad[(pos * k + kk) * d + dd] += px * r[row] as f64;
                    }
                }
            }
        }
        let got = pe.forward(img());
        let close = |what: &str, got: Vec<f32>, want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (i, (a, w)) in got.iter().zip(want).enumerate() {
                assert!((*a as f64 - w).abs() <= 1e-5, "{what}[{i}]: {a} vs {w}");
            }
        };
        close("tokens", got.clone().into_data().to_vec().unwrap(), &want);
        let weights = Tensor::<A, 3>::from_data(TensorData::new(r, [b, n, d]), &device);
        let grads = (got * weights).sum().backward();
        let grad = pe.per_position.as_ref().unwrap().grad(&grads).unwrap();
        close("gradient", grad.into_data().to_vec().unwrap(), &want_grad);
    }
}
