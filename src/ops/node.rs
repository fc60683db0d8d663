//! Recording a fused op in burn's autodiff graph: one node whose backward is hand-written
//! (the CPU kernels' [`super::autodiff`], the cubecl kernels' `cube::autodiff`).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::ops::{Backward, OpsKind};

/// `y`, computed by the inner backend from `parents`, as the output of a `backward` node
/// (compute-bound: recomputing it is not cheaper than keeping it). The `state` the backward
/// needs is built, from the output, only when some parent is tracked.
pub(crate) fn record<B, C, T, const N: usize>(
    backward: T,
    parents: [&FloatTensor<Autodiff<B, C>>; N],
    state: impl FnOnce(&FloatTensor<B>) -> T::State,
    y: FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    T: Backward<B, N>,
{
    match backward
        .prepare::<C>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(&y), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}
