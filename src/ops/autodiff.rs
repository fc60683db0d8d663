//! Hand-written backward passes for the fused CPU kernels: burn's autodiff records one node
//! per fused op instead of the dozens its decomposition would create.

use burn::tensor::ops::FloatTensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};

use super::flex::{
    LinearKind, RowValues, attention_fwd, dims, f32s, fused_precision, layer_norm_fwd, linear_fwd,
    linear_residual_fwd, tensor,
};
use super::kernels::{attention, layernorm, linear};
use super::node::record;
use super::{IjepaBackend, Precision, composed, fused_kernels};

type Ad<C> = Autodiff<Flex, C>;
/// The autodiff backend's float tensor.
type AdTensor<C> = FloatTensor<Ad<C>>;

/// Contiguous f32 view of a primitive the forward already checked to be f32 (the gradients
/// burn hands back are f32 too); copies only strided layouts.
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    f32s(t).unwrap_or_default()
}

/// State of a Linear (optionally + GELU) node.
#[derive(Clone, Debug)]
struct LinearState {
    x: FlexTensor,
    w: FlexTensor,
    /// GELU's slope at the pre-activation when the node includes the GELU.
    slope: Option<FlexTensor>,
    with_bias: bool,
    /// The precision of the forward's product, also that of the backward's.
    precision: Precision,
}

fn linear_grads(s: LinearState, dy: &FlexTensor) -> (FlexTensor, FlexTensor, Option<FlexTensor>) {
    let (m, k) = (dims(&s.x)[0], dims(&s.x)[1]);
    let n = dims(&s.w)[1];
    // the forward accepted x (f32, or bf16 under bf16 products)
    let xs = RowValues::of(&s.x).expect("a Linear's input is f32 or bf16");
    let (x, w, dy) = (xs.rows(), values(&s.w), values(dy));
    let (dx, dw, db) = match &s.slope {
        Some(slope) => {
            let slope = values(slope);
            linear::linear_gelu_backward(x, &w, &slope, &dy, m, k, n, s.with_bias, s.precision)
        }
        None => linear::linear_backward(x, &w, &dy, m, k, n, s.with_bias, s.precision),
    };
    (
        tensor(dx, vec![m, k]),
        tensor(dw, vec![k, n]),
        db.map(|db| tensor(db, vec![n])),
    )
}

#[derive(Debug)]
struct LinearBiasBackward;

impl Backward<Flex, 3> for LinearBiasBackward {
    type State = LinearState;
    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw, pb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dx, dw, db) = linear_grads(ops.state, &dy);
        if let Some(p) = px {
            grads.register::<Flex>(p.id, dx);
        }
        if let Some(p) = pw {
            grads.register::<Flex>(p.id, dw);
        }
        if let (Some(p), Some(db)) = (pb, db) {
            grads.register::<Flex>(p.id, db);
        }
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearState;
    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dx, dw, _) = linear_grads(ops.state, &dy);
        if let Some(p) = px {
            grads.register::<Flex>(p.id, dx);
        }
        if let Some(p) = pw {
            grads.register::<Flex>(p.id, dw);
        }
    }
}

/// `r + (x W + b)`: the Linear's gradients, and `dy` itself for `r`.
#[derive(Debug)]
struct LinearResidualBiasBackward;

impl Backward<Flex, 4> for LinearResidualBiasBackward {
    type State = LinearState;
    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw, pb, pr] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dx, dw, db) = linear_grads(ops.state, &dy);
        for (p, g) in [(px, Some(dx)), (pw, Some(dw)), (pb, db), (pr, Some(dy))] {
            if let (Some(p), Some(g)) = (p, g) {
                grads.register::<Flex>(p.id, g);
            }
        }
    }
}

#[derive(Debug)]
struct LinearResidualBackward;

impl Backward<Flex, 3> for LinearResidualBackward {
    type State = LinearState;
    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw, pr] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dx, dw, _) = linear_grads(ops.state, &dy);
        for (p, g) in [(px, dx), (pw, dw), (pr, dy)] {
            if let Some(p) = p {
                grads.register::<Flex>(p.id, g);
            }
        }
    }
}

fn linear_residual_node<C: CheckpointStrategy>(
    x: AdTensor<C>,
    w: AdTensor<C>,
    b: Option<AdTensor<C>>,
    r: AdTensor<C>,
    precision: Precision,
) -> AdTensor<C> {
    let Some(y) = linear_residual_fwd(
        &x.primitive,
        &w.primitive,
        b.as_ref().map(|b| &b.primitive),
        &r.primitive,
        precision,
    ) else {
        return composed::linear_residual::<Ad<C>>(x, w, b, r);
    };
    let with_bias = b.is_some();
    let state = |_: &_| LinearState {
        x: x.primitive.clone(),
        w: w.primitive.clone(),
        slope: None,
        with_bias,
        precision,
    };
    match &b {
        Some(b) => record::<Flex, C, _, 4>(LinearResidualBiasBackward, [&x, &w, b, &r], state, y),
        None => record::<Flex, C, _, 3>(LinearResidualBackward, [&x, &w, &r], state, y),
    }
}

fn linear_node<C: CheckpointStrategy>(
    x: AdTensor<C>,
    w: AdTensor<C>,
    b: Option<AdTensor<C>>,
    kind: LinearKind,
    precision: Precision,
) -> AdTensor<C> {
    let Some((y, slope)) = linear_fwd(
        &x.primitive,
        &w.primitive,
        b.as_ref().map(|b| &b.primitive),
        kind,
        true,
        precision,
    ) else {
        return if kind == LinearKind::Gelu {
            composed::linear_gelu::<Ad<C>>(x, w, b)
        } else {
            composed::linear::<Ad<C>>(x, w, b)
        };
    };
    let with_bias = b.is_some();
    let state = |_: &_| LinearState {
        x: x.primitive.clone(),
        w: w.primitive.clone(),
        slope,
        with_bias,
        precision,
    };
    match &b {
        Some(b) => record::<Flex, C, _, 3>(LinearBiasBackward, [&x, &w, b], state, y),
        None => record::<Flex, C, _, 2>(LinearBackward, [&x, &w], state, y),
    }
}

#[derive(Debug)]
struct AttentionBackward;

#[derive(Clone, Debug)]
struct AttentionState {
    qkv: FlexTensor,
    out: FlexTensor,
    lse: Vec<f32>,
    heads: usize,
    /// The precision of the forward's products, also that of the backward's.
    precision: Precision,
}

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let s = ops.state;
        let shape = dims(&s.qkv);
        let (out, dout) = (values(&s.out), values(&dout));
        let (b, n) = (shape[0], shape[1]);
        // the forward accepted qkv (f32, or bf16 under bf16 products)
        let dqkv = match RowValues::of(&s.qkv).expect("attention's qkv is f32 or bf16") {
            RowValues::F32(q) => {
                attention::attention_backward(&q, &out, &s.lse, &dout, b, n, s.heads, s.precision)
            }
            RowValues::Bf16(q) => {
                attention::attention_backward_rounded(&q, &out, &s.lse, &dout, b, n, s.heads)
            }
        };
        grads.register::<Flex>(parent.id, tensor(dqkv, shape));
    }
}

#[derive(Debug)]
struct LayerNormAffineBackward;

#[derive(Clone, Debug)]
struct LayerNormState {
    x: FlexTensor,
    w: Option<FlexTensor>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl Backward<Flex, 3> for LayerNormAffineBackward {
    type State = LayerNormState;
    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw, pb] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let shape = dims(&s.x);
        let d = shape[1];
        let w = s.w.as_ref().map(values).unwrap_or_default();
        let (dx, dw, db) = layernorm::layer_norm_affine_backward(
            &values(&s.x),
            &w,
            &s.mean,
            &s.rstd,
            &values(&dy),
            d,
        );
        if let Some(p) = px {
            grads.register::<Flex>(p.id, tensor(dx, shape));
        }
        if let Some(p) = pw {
            grads.register::<Flex>(p.id, tensor(dw, vec![d]));
        }
        if let Some(p) = pb {
            grads.register::<Flex>(p.id, tensor(db, vec![d]));
        }
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 1> for LayerNormBackward {
    type State = LayerNormState;
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(p) = px else { return };
        let s = ops.state;
        let shape = dims(&s.x);
        let dx =
            layernorm::layer_norm_backward(&values(&s.x), &s.mean, &s.rstd, &values(&dy), shape[1]);
        grads.register::<Flex>(p.id, tensor(dx, shape));
    }
}

impl<C: CheckpointStrategy> IjepaBackend for Ad<C> {
    fn ijepa_linear(x: AdTensor<C>, w: AdTensor<C>, b: Option<AdTensor<C>>) -> AdTensor<C> {
        match fused_precision() {
            Some(p) => linear_node::<C>(x, w, b, LinearKind::Plain, p),
            None => composed::linear::<Self>(x, w, b),
        }
    }

    fn ijepa_linear_into_products(
        x: AdTensor<C>,
        w: AdTensor<C>,
        b: Option<AdTensor<C>>,
    ) -> AdTensor<C> {
        match fused_precision() {
            Some(p) => linear_node::<C>(x, w, b, LinearKind::IntoProducts, p),
            None => composed::linear::<Self>(x, w, b),
        }
    }

    fn ijepa_linear_residual(
        x: AdTensor<C>,
        w: AdTensor<C>,
        b: Option<AdTensor<C>>,
        r: AdTensor<C>,
    ) -> AdTensor<C> {
        match fused_precision() {
            Some(p) => linear_residual_node::<C>(x, w, b, r, p),
            None => composed::linear_residual::<Self>(x, w, b, r),
        }
    }

    fn ijepa_linear_gelu(x: AdTensor<C>, w: AdTensor<C>, b: Option<AdTensor<C>>) -> AdTensor<C> {
        match fused_precision() {
            Some(p) => linear_node::<C>(x, w, b, LinearKind::Gelu, p),
            None => composed::linear_gelu::<Self>(x, w, b),
        }
    }

    fn ijepa_attention(qkv: AdTensor<C>, heads: usize) -> AdTensor<C> {
        let Some(precision) = fused_precision() else {
            return composed::attention::<Self>(qkv, heads);
        };
        let Some((out, lse)) = attention_fwd(&qkv.primitive, heads, precision) else {
            return composed::attention::<Self>(qkv, heads);
        };
        let state = |out: &FlexTensor| AttentionState {
            qkv: qkv.primitive.clone(),
            out: out.clone(),
            lse,
            heads,
            precision,
        };
        record::<Flex, C, _, 1>(AttentionBackward, [&qkv], state, out)
    }

    fn ijepa_layer_norm(
        x: AdTensor<C>,
        w: Option<AdTensor<C>>,
        b: Option<AdTensor<C>>,
        eps: f64,
    ) -> AdTensor<C> {
        layer_norm_node::<C>(x, w, b, eps, false)
    }

    /// In bf16 under bf16 products; the backward is the same (it reads `x`, not `y`, and the
    /// gradient it receives from the product's `dx` is f32).
    fn ijepa_layer_norm_into_products(
        x: AdTensor<C>,
        w: Option<AdTensor<C>>,
        b: Option<AdTensor<C>>,
        eps: f64,
    ) -> AdTensor<C> {
        layer_norm_node::<C>(x, w, b, eps, true)
    }
}

fn layer_norm_node<C: CheckpointStrategy>(
    x: AdTensor<C>,
    w: Option<AdTensor<C>>,
    b: Option<AdTensor<C>>,
    eps: f64,
    into_products: bool,
) -> AdTensor<C> {
    if !fused_kernels() {
        return composed::layer_norm::<Ad<C>>(x, w, b, eps);
    }
    let Some((y, mean, rstd)) = layer_norm_fwd(
        &x.primitive,
        w.as_ref().map(|w| &w.primitive),
        b.as_ref().map(|b| &b.primitive),
        eps,
        into_products,
    ) else {
        return composed::layer_norm::<Ad<C>>(x, w, b, eps);
    };
    let state = |_: &_| LayerNormState {
        x: x.primitive.clone(),
        w: w.as_ref().map(|w| w.primitive.clone()),
        mean,
        rstd,
    };
    match (&w, &b) {
        (Some(w), Some(b)) => {
            record::<Flex, C, _, 3>(LayerNormAffineBackward, [&x, w, b], state, y)
        }
        _ => record::<Flex, C, _, 1>(LayerNormBackward, [&x], state, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::testutil::{bits, rng, uniform};
    use burn::tensor::{Tensor, TensorData};

    type B = Autodiff<Flex>;

    fn param(v: Vec<f32>, shape: Vec<usize>) -> Tensor<B, 2> {
        Tensor::<B, 2>::from_data(TensorData::new(v, shape), &Default::default()).require_grad()
    }

    fn floats(t: Tensor<Flex, 2>) -> Vec<f32> {
        t.into_data().to_vec().expect("f32")
    }

    /// The fused `r + (x W + b)` node against the fused Linear followed by burn's addition (what
    /// the blocks ran before): the same output floats and the same gradient floats (`dr` is
    /// `dy` itself), with and without bias.
    #[test]
    fn residual_linear_node_is_bitwise_the_linear_then_the_addition() {
        let mut rg = rng(61);
        let (m, k, n) = (37, 24, 20);
        let (x, w, b, r) = (
            uniform(&mut rg, m * k, 1.0),
            uniform(&mut rg, k * n, 1.0),
            uniform(&mut rg, n, 1.0),
            uniform(&mut rg, m * n, 1.0),
        );
        let probe = uniform(&mut rg, m * n, 1.0);
        for with_bias in [true, false] {
            let run = |fused: bool| {
                let (xt, wt) = (param(x.clone(), vec![m, k]), param(w.clone(), vec![k, n]));
                let bt = Tensor::<B, 1>::from_data(
                    TensorData::new(b.clone(), vec![n]),
                    &Default::default(),
                )
                .require_grad();
                let rt = param(r.clone(), vec![m, n]);
                let bias = with_bias.then(|| bt.clone().into_primitive().tensor());
                let args = (
                    xt.clone().into_primitive().tensor(),
                    wt.clone().into_primitive().tensor(),
                    bias,
                    rt.clone().into_primitive().tensor(),
                );
                let y = if fused {
                    B::ijepa_linear_residual(args.0, args.1, args.2, args.3)
                } else {
                    let y = B::ijepa_linear(args.0, args.1, args.2);
                    <B as burn::tensor::ops::FloatTensorOps<B>>::float_add(args.3, y)
                };
                let y = Tensor::<B, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(y));
                let probe = Tensor::<B, 2>::from_data(
                    TensorData::new(probe.clone(), vec![m, n]),
                    &Default::default(),
                );
                let grads = (y.clone() * probe).sum().backward();
                let mut out = vec![
                    floats(y.inner()),
                    floats(xt.grad(&grads).unwrap()),
                    floats(wt.grad(&grads).unwrap()),
                ];
                out.push(floats(rt.grad(&grads).unwrap()));
                if with_bias {
                    out.push(bt.grad(&grads).unwrap().into_data().to_vec().unwrap());
                }
                out
            };
            let (fused, composed) = (run(true), run(false));
            assert_eq!(fused.len(), composed.len());
            for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
                let what = ["y", "dx", "dW", "dr", "db"][i];
                assert_eq!(bits(f), bits(c), "{what}, bias {with_bias}");
            }
        }
    }
}
