//! Backward passes of the cubecl kernels: burn's autodiff records one node per fused op
//! (attention, LayerNorm, Linear + GELU) instead of the dozens of its decomposition. The
//! Linear + residual op stays composed under autodiff (a product and two additions, whose
//! backward burn already does in three kernels).

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::attention::{self, AttentionSaved};
use super::norm::{self, NormSaved};
use super::{attention_fused, contiguous, layer_norm_fused, linear_fused, pointwise, product};
use crate::ops::node::record;
use crate::ops::{IjepaBackend, composed};

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;
type Ad<R, F, I, BT, C> = Autodiff<Cube<R, F, I, BT>, C>;
/// The autodiff backend's float tensor.
type AdTensor<R, F, I, BT, C> = FloatTensor<Ad<R, F, I, BT, C>>;

fn matmul<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: CubeTensor<R>,
    b: CubeTensor<R>,
) -> CubeTensor<R> {
    <Cube<R, F, I, BT> as FloatTensorOps<Cube<R, F, I, BT>>>::float_matmul(a, b)
}

fn transpose<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: CubeTensor<R>,
) -> CubeTensor<R> {
    <Cube<R, F, I, BT> as FloatTensorOps<Cube<R, F, I, BT>>>::float_transpose(a)
}

/// Column sums of `[rows, n]`: `[n]`.
fn column_sums<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: CubeTensor<R>,
) -> CubeTensor<R> {
    type Ops<R, F, I, BT> = Cube<R, F, I, BT>;
    let n = a.meta.shape()[1];
    let s = <Ops<R, F, I, BT> as FloatTensorOps<Ops<R, F, I, BT>>>::float_sum_dim(a, 0);
    <Ops<R, F, I, BT> as FloatTensorOps<Ops<R, F, I, BT>>>::float_reshape(s, [n].into())
}

#[derive(Debug)]
struct LinearGeluBackward;

#[derive(Clone, Debug)]
struct LinearGeluState<R: CubeRuntime> {
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    /// The pre-activation `x w + b`.
    pre: CubeTensor<R>,
}

impl<R, F, I, BT, const N: usize> Backward<Cube<R, F, I, BT>, N> for LinearGeluBackward
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type State = LinearGeluState<R>;
    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(grads.consume::<Cube<R, F, I, BT>>(&ops.node));
        let s = ops.state;
        let dh = pointwise::gelu_grad(&s.pre, &dy);
        let parents = ops.parents;
        if let Some(p) = &parents[0] {
            let dx = matmul::<R, F, I, BT>(dh.clone(), transpose::<R, F, I, BT>(s.w));
            grads.register::<Cube<R, F, I, BT>>(p.id, dx);
        }
        if let Some(p) = &parents[1] {
            let dw = matmul::<R, F, I, BT>(transpose::<R, F, I, BT>(s.x), dh.clone());
            grads.register::<Cube<R, F, I, BT>>(p.id, dw);
        }
        if let Some(Some(p)) = parents.get(2) {
            grads.register::<Cube<R, F, I, BT>>(p.id, column_sums::<R, F, I, BT>(dh));
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

#[derive(Clone, Debug)]
struct AttentionState<R: CubeRuntime> {
    qkv: CubeTensor<R>,
    out: CubeTensor<R>,
    saved: AttentionSaved<R>,
}

impl<R, F, I, BT> Backward<Cube<R, F, I, BT>, 1> for AttentionBackward
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type State = AttentionState<R>;
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dout = contiguous(grads.consume::<Cube<R, F, I, BT>>(&ops.node));
        let Some(parent) = parent else { return };
        let s = ops.state;
        let dqkv = attention::backward(&s.qkv, &s.out, &s.saved, &dout);
        grads.register::<Cube<R, F, I, BT>>(parent.id, dqkv);
    }
}

#[derive(Debug)]
struct LayerNormBackward;

#[derive(Clone, Debug)]
struct LayerNormState<R: CubeRuntime> {
    x: CubeTensor<R>,
    w: Option<CubeTensor<R>>,
    saved: NormSaved<R>,
}

impl<R, F, I, BT, const N: usize> Backward<Cube<R, F, I, BT>, N> for LayerNormBackward
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type State = LayerNormState<R>;
    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(grads.consume::<Cube<R, F, I, BT>>(&ops.node));
        let s = ops.state;
        let (dx, dyn_) = norm::backward(&s.x, s.w.as_ref(), &s.saved, &dy);
        let parents = ops.parents;
        if let Some(p) = &parents[0] {
            grads.register::<Cube<R, F, I, BT>>(p.id, dx);
        }
        if let (Some(Some(p)), Some(dyn_)) = (parents.get(1), dyn_) {
            grads.register::<Cube<R, F, I, BT>>(p.id, column_sums::<R, F, I, BT>(dyn_));
        }
        if let Some(Some(p)) = parents.get(2) {
            grads.register::<Cube<R, F, I, BT>>(p.id, column_sums::<R, F, I, BT>(dy));
        }
    }
}

impl<R, F, I, BT, C> IjepaBackend for Ad<R, F, I, BT, C>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
    C: CheckpointStrategy,
{
    fn ijepa_linear_gelu(
        x: AdTensor<R, F, I, BT, C>,
        w: AdTensor<R, F, I, BT, C>,
        b: Option<AdTensor<R, F, I, BT, C>>,
    ) -> AdTensor<R, F, I, BT, C> {
        if !linear_fused(&x.primitive, &w.primitive, b.as_ref().map(|b| &b.primitive)) {
            return composed::linear_gelu::<Self>(x, w, b);
        }
        let p = product::<R, F, I, BT>(x.primitive.clone(), w.primitive.clone());
        let bias = b.as_ref().map(|b| contiguous(b.primitive.clone()));
        let (act, pre) = pointwise::bias_gelu_forward(&p, bias.as_ref(), true);
        let state = |_: &_| LinearGeluState {
            x: x.primitive.clone(),
            w: w.primitive.clone(),
            pre: pre.unwrap_or_else(|| p.clone()),
        };
        match &b {
            Some(b) => {
                record::<Cube<R, F, I, BT>, C, _, 3>(LinearGeluBackward, [&x, &w, b], state, act)
            }
            None => record::<Cube<R, F, I, BT>, C, _, 2>(LinearGeluBackward, [&x, &w], state, act),
        }
    }

    fn ijepa_attention_masked(
        qkv: AdTensor<R, F, I, BT, C>,
        heads: usize,
        keys: usize,
    ) -> AdTensor<R, F, I, BT, C> {
        if !attention_fused(&qkv.primitive, heads, keys) {
            return composed::attention_masked::<Self>(qkv, heads, keys);
        }
        let input = contiguous(qkv.primitive.clone());
        let (out, saved) = attention::forward(&input, heads, keys);
        let state = |out: &CubeTensor<R>| AttentionState {
            qkv: input,
            out: out.clone(),
            saved,
        };
        record::<Cube<R, F, I, BT>, C, _, 1>(AttentionBackward, [&qkv], state, out)
    }

    fn ijepa_layer_norm(
        x: AdTensor<R, F, I, BT, C>,
        w: Option<AdTensor<R, F, I, BT, C>>,
        b: Option<AdTensor<R, F, I, BT, C>>,
        eps: f64,
    ) -> AdTensor<R, F, I, BT, C> {
        let (wp, bp) = (
            w.as_ref().map(|w| &w.primitive),
            b.as_ref().map(|b| &b.primitive),
        );
        if !layer_norm_fused(&x.primitive, wp, bp) {
            return composed::layer_norm::<Self>(x, w, b, eps);
        }
        let input = contiguous(x.primitive.clone());
        let affine = w.as_ref().zip(b.as_ref()).map(|(w, b)| {
            (
                contiguous(w.primitive.clone()),
                contiguous(b.primitive.clone()),
            )
        });
        let (y, saved) = norm::forward(&input, affine.as_ref().map(|(w, b)| (w, b)), eps);
        let state = |_: &_| LayerNormState {
            x: input,
            w: affine.map(|(w, _)| w),
            saved,
        };
        match (&w, &b) {
            (Some(w), Some(b)) => {
                record::<Cube<R, F, I, BT>, C, _, 3>(LayerNormBackward, [&x, w, b], state, y)
            }
            _ => record::<Cube<R, F, I, BT>, C, _, 1>(LayerNormBackward, [&x], state, y),
        }
    }
}
