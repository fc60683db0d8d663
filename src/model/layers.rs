//! The building blocks shared by the encoder and the predictor: Linear (weights stored
//! `[in, out]`, as burn does), LayerNorm with an explicit epsilon, the fused-qkv attention,
//! the MLP and the pre-norm transformer block of the official `vision_transformer.py`.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::init::Init;

/// `y = x W + b` with `W` stored `[d_in, d_out]` (the transpose of PyTorch's layout).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Official init: weight ~ trunc_normal(std 0.02), bias 0.
    pub fn new(d_in: usize, d_out: usize, bias: bool, init: &mut Init, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(init.normal([d_in, d_out], device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        burn::tensor::module::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// LayerNorm over the last axis with affine weight and bias.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            bias: Param::from_tensor(Tensor::zeros([dim], device)),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            x.into_primitive().tensor(),
            self.weight.val().into_primitive().tensor(),
            Some(self.bias.val().into_primitive().tensor()),
            self.eps,
        )))
    }
}

/// Parameter-free layer norm (`F.layer_norm(h, (D,))`, eps 1e-5), applied to the targets.
pub fn layer_norm_no_affine<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let dim = x.dims()[D - 1];
    let ones = Tensor::<B, 1>::ones([dim], &x.device());
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        ones.into_primitive().tensor(),
        None,
        eps,
    )))
}

/// Multi-head self-attention with one fused `qkv` Linear(D, 3D): output rows `[0, D)` are q,
/// `[D, 2D)` k, `[2D, 3D)` v; head h uses columns `h*hd .. (h+1)*hd` of each.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> Attention<B> {
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

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        // [B, N, 3, H, hd] -> [3, B, H, N, hd]
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, n, 3, h, hd])
            .permute([2, 0, 3, 1, 4]);
        let q = qkv.clone().narrow(0, 0, 1).reshape([b, h, n, hd]);
        let k = qkv.clone().narrow(0, 1, 1).reshape([b, h, n, hd]);
        let v = qkv.narrow(0, 2, 1).reshape([b, h, n, hd]);
        let scale = (hd as f64).powf(-0.5);
        let attn = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, n, d]);
        self.proj.forward(out)
    }
}

/// fc1 -> exact (erf) GELU -> fc2.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn new(dim: usize, hidden: usize, init: &mut Init, device: &B::Device) -> Self {
        Self {
            fc1: Linear::new(dim, hidden, true, init, device),
            fc2: Linear::new(hidden, dim, true, init, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// Pre-norm block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
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

impl<B: Backend> Block<B> {
    pub fn new(dims: BlockDims, init: &mut Init, device: &B::Device) -> Self {
        // Same creation order as the official constructor: norm1, attn (qkv, proj), norm2, mlp.
        Self {
            norm1: LayerNorm::new(dims.dim, dims.eps, device),
            attn: Attention::new(dims.dim, dims.num_heads, dims.qkv_bias, init, device),
            norm2: LayerNorm::new(dims.dim, dims.eps, device),
            mlp: Mlp::new(dims.dim, dims.mlp_hidden, init, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}
