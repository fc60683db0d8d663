//! The building blocks shared by the encoder and the predictor: Linear (weights stored
//! `[in, out]`, as burn does), LayerNorm with an explicit epsilon, the fused-qkv attention,
//! the MLP and the pre-norm transformer block of the official `vision_transformer.py`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::ops::{self, IjepaBackend};

use super::init::Init;

/// A 2-D linear kernel: `(x, W, b) -> y`.
type LinearOp<B> = fn(Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>) -> Tensor<B, 2>;

/// `y = x W + b` with `W` stored `[d_in, d_out]` (the transpose of PyTorch's layout).
#[derive(Module, Debug)]
pub struct Linear<B: IjepaBackend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: IjepaBackend> Linear<B> {
    /// Official init: weight ~ trunc_normal(std 0.02), bias 0.
    pub fn new(d_in: usize, d_out: usize, bias: bool, init: &mut Init, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(init.normal([d_in, d_out], device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.apply(x, ops::linear)
    }

    /// `r + (x W + b)` in one fused op: a residual branch closed by this layer.
    pub fn forward_residual<const D: usize>(
        &self,
        x: Tensor<B, D>,
        r: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let dims = r.dims();
        let d_out = dims[D - 1];
        let rows = r.shape().num_elements() / d_out.max(1);
        let d_in = x.dims()[D - 1];
        ops::linear_residual(
            x.reshape([rows, d_in]),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            r.reshape([rows, d_out]),
        )
        .reshape(dims)
    }

    /// [`Linear::forward`] for an output that only bf16 autocast's products read (the qkv
    /// projection): under bf16 autocast a backend may keep it in bf16
    /// ([`ops::linear_into_products`]).
    pub fn forward_into_products<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.apply(x, ops::linear_into_products)
    }

    /// `gelu(x W + b)` in one fused op (the MLP's first half).
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.apply(x, ops::linear_gelu)
    }

    /// Run a 2-D op over all leading axes at once (one GEMM over every token).
    fn apply<const D: usize>(&self, x: Tensor<B, D>, op: LinearOp<B>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let rows = x.shape().num_elements() / d_in.max(1);
        let y = op(
            x.reshape([rows, d_in]),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }
}

/// LayerNorm over the last axis with affine weight and bias.
#[derive(Module, Debug)]
pub struct LayerNorm<B: IjepaBackend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: IjepaBackend> LayerNorm<B> {
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            bias: Param::from_tensor(Tensor::zeros([dim], device)),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.apply(x, ops::layer_norm)
    }

    /// [`LayerNorm::forward`] for an output that only bf16 autocast's products read (a block's
    /// norm1 and norm2, read by qkv and fc1): under bf16 autocast a backend may keep it in bf16
    /// ([`ops::layer_norm_into_products`]).
    pub fn forward_into_products<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.apply(x, ops::layer_norm_into_products)
    }

    fn apply<const D: usize>(&self, x: Tensor<B, D>, op: LayerNormOp<B>) -> Tensor<B, D> {
        let dims = x.dims();
        let d = dims[D - 1];
        let rows = x.shape().num_elements() / d.max(1);
        op(
            x.reshape([rows, d]),
            Some(self.weight.val()),
            Some(self.bias.val()),
            self.eps,
        )
        .reshape(dims)
    }
}

/// A 2-D LayerNorm kernel: `(x, weight, bias, eps) -> y`.
type LayerNormOp<B> =
    fn(Tensor<B, 2>, Option<Tensor<B, 1>>, Option<Tensor<B, 1>>, f64) -> Tensor<B, 2>;

/// Parameter-free layer norm (`F.layer_norm(h, (D,))`, eps 1e-5), applied to the targets.
pub fn layer_norm_no_affine<B: IjepaBackend, const D: usize>(
    x: Tensor<B, D>,
    eps: f64,
) -> Tensor<B, D> {
    let dims = x.dims();
    let d = dims[D - 1];
    let rows = x.shape().num_elements() / d.max(1);
    ops::layer_norm(x.reshape([rows, d]), None, None, eps).reshape(dims)
}

/// Multi-head self-attention with one fused `qkv` Linear(D, 3D): output rows `[0, D)` are q,
/// `[D, 2D)` k, `[2D, 3D)` v; head h uses columns `h*hd .. (h+1)*hd` of each.
#[derive(Module, Debug)]
pub struct Attention<B: IjepaBackend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: IjepaBackend> Attention<B> {
    pub fn new(
        dim: usize,
        num_heads: usize,
        qkv_bias: bool,
        init: &mut Init,
        device: &B::Device,
    ) -> Self {
        Self {
            qkv: Linear::new(dim, 3 * dim, qkv_bias, init, device),
            proj: Linear::new(dim, dim, true, init, device),
            num_heads,
        }
    }

    /// `proj(softmax(q k^T / sqrt(hd)) v)` with heads split from and merged back into the
    /// fused qkv output (see [`ops::attention`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.proj.forward(self.mix(x, None))
    }

    /// The heads' outputs, merged, before the output projection: `[B, N, D]`. With
    /// `keys: Some(k)` only the first `k` tokens are attended to (the rest is padding).
    /// Without padding keys the fused attention is the qkv output's only reader (its products
    /// alone read q, k and v), so the projection may keep it in bf16 under bf16 autocast; the
    /// padded (masked) attention runs the composed ops, which take f32.
    pub fn mix(&self, x: Tensor<B, 3>, keys: Option<usize>) -> Tensor<B, 3> {
        let qkv = match keys.filter(|&k| k < x.dims()[1]) {
            None => self.qkv.forward_into_products(x),
            Some(_) => self.qkv.forward(x),
        };
        ops::attention(qkv, self.num_heads, keys)
    }
}

/// fc1 -> exact (erf) GELU -> fc2.
#[derive(Module, Debug)]
pub struct Mlp<B: IjepaBackend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: IjepaBackend> Mlp<B> {
    pub fn new(dim: usize, hidden: usize, init: &mut Init, device: &B::Device) -> Self {
        Self {
            fc1: Linear::new(dim, hidden, true, init, device),
            fc2: Linear::new(hidden, dim, true, init, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2.forward(self.fc1.forward_gelu(x))
    }

    /// `r + forward(x)`, the addition done by fc2's fused op.
    pub fn forward_residual(&self, x: Tensor<B, 3>, r: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2.forward_residual(self.fc1.forward_gelu(x), r)
    }
}

/// Pre-norm block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: IjepaBackend> {
    pub norm1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

/// Shapes of one transformer block.
#[derive(Clone, Copy, Debug)]
pub struct BlockDims {
    pub dim: usize,
    pub num_heads: usize,
    pub mlp_hidden: usize,
    pub qkv_bias: bool,
    pub eps: f64,
}

impl<B: IjepaBackend> Block<B> {
    pub fn new(dims: BlockDims, init: &mut Init, device: &B::Device) -> Self {
        // Same creation order as the official constructor: norm1, attn (qkv, proj), norm2, mlp.
        Self {
            norm1: LayerNorm::new(dims.dim, dims.eps, device),
            attn: Attention::new(dims.dim, dims.num_heads, dims.qkv_bias, init, device),
            norm2: LayerNorm::new(dims.dim, dims.eps, device),
            mlp: Mlp::new(dims.dim, dims.mlp_hidden, init, device),
        }
    }

    /// The residual additions are done by the closing Linear of each branch (the attention's
    /// output projection, the MLP's fc2): the same floats as adding afterwards, in the
    /// products' parallel pass instead of one of their own.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_keys(x, None)
    }

    /// [`Block::forward`] with only the first `keys` tokens as the attention's keys and
    /// values (`None`: all). Every other step is row-wise, so the outputs of those tokens are
    /// what the block gives on them alone, whatever the remaining (padding) rows hold.
    pub fn forward_keys(&self, x: Tensor<B, 3>, keys: Option<usize>) -> Tensor<B, 3> {
        let mixed = self
            .attn
            .mix(self.norm1.forward_into_products(x.clone()), keys);
        let x = self.attn.proj.forward_residual(mixed, x);
        self.mlp
            .forward_residual(self.norm2.forward_into_products(x.clone()), x)
    }

    /// `pick(forward_keys(x, keys))` for a `pick` that selects tokens (rows of the last axis stay whole),
    /// computing only the picked tokens' output: every token still feeds the attention (as key
    /// and value), but the output projection, the MLP and both residual adds run on the picked
    /// rows alone. Everything after the attention is row-wise, so the values are the same as
    /// picking afterwards; the work saved is that of the rows dropped.
    pub fn forward_picked(
        &self,
        x: Tensor<B, 3>,
        keys: Option<usize>,
        pick: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let mixed = pick(
            self.attn
                .mix(self.norm1.forward_into_products(x.clone()), keys),
        );
        let x = self.attn.proj.forward_residual(mixed, pick(x));
        self.mlp
            .forward_residual(self.norm2.forward_into_products(x.clone()), x)
    }
}
