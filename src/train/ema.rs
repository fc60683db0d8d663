//! The EMA target encoder (spec 1.9 step 4): after every step, for every encoder parameter,
//! `target = m * target + (1 - m) * online`, in f32 with the scalars rounded to f32 first
//! (PyTorch's `param_k.mul_(m).add_((1 - m) * param_q)`).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::model::VisionTransformer;

struct Collect<B: crate::ops::IjepaBackend> {
    tensors: Vec<TensorPrimitive<B>>,
}

impl<B: crate::ops::IjepaBackend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.tensors.push(param.val().into_primitive());
    }
}

struct Update<B: crate::ops::IjepaBackend> {
    online: std::vec::IntoIter<TensorPrimitive<B>>,
    momentum: f64,
}

impl<B: crate::ops::IjepaBackend> ModuleMapper<B> for Update<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, target, mapper) = param.consume();
        let Some(online) = self.online.next() else {
            return Param::from_mapped_value(id, target, mapper);
        };
        let shape = target.shape();
        let flat = |t: Tensor<B, D>| t.flatten::<1>(0, D - 1).into_primitive().tensor();
        let online = Tensor::<B, D>::from_primitive(online);
        let updated = B::ijepa_ema(flat(target), flat(online), self.momentum);
        let updated = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(updated));
        Param::from_mapped_value(id, updated.reshape(shape), mapper)
    }
}

/// One EMA step of `target` towards `online` (same architecture, same parameter order).
/// The fixed position table is a constant equal in both and is left as it is.
pub fn ema_update<B: crate::ops::IjepaBackend>(
    target: VisionTransformer<B>,
    online: &VisionTransformer<B>,
    momentum: f64,
) -> VisionTransformer<B> {
    let mut collect = Collect::<B> {
        tensors: Vec::new(),
    };
    online.visit(&mut collect);
    let mut update = Update::<B> {
        online: collect.tensors.into_iter(),
        momentum,
    };
    target.map(&mut update)
}
