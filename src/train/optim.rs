//! AdamW exactly as `torch.optim.AdamW` with the official parameter groups (spec 1.10):
//! betas (0.9, 0.999), eps 1e-8, decoupled weight decay `p <- p (1 - lr wd)` before the Adam
//! update, no decay for biases and 1-D parameters (the mask token, 3-D, is decayed).
//!
//! Gradients and moments are kept by parameter *name* (official names), flattened, so that
//! they can be accumulated, averaged across ranks, clipped, saved and compared with the
//! official reference independently of burn's parameter ids.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

use crate::checkpoint::HostTensor;
use crate::checkpoint::tensors::is_linear_weight;
use crate::ops::IjepaBackend;

/// Flattened tensors by parameter name (burn layout: Linear weights `[in, out]`).
pub type TensorMap<B> = BTreeMap<String, Tensor<B, 1>>;

/// True for the parameters the official `init_opt` decays.
pub fn is_decayed(name: &str, rank: usize) -> bool {
    // MSN's prototypes are L2-normalised where used: decay would only shrink their norm
    // and so raise their effective step (MSN does not decay them either).
    !name.contains("bias") && rank != 1 && !name.contains("prototypes")
}

struct Path(Vec<String>);

impl Path {
    fn name(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            self.0.join(".")
        } else {
            format!("{prefix}.{}", self.0.join("."))
        }
    }
}

/// The gradient of every parameter of `module` that has one, as `prefix.name`.
pub fn collect_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &B::Gradients,
    prefix: &str,
) -> TensorMap<B::InnerBackend> {
    struct Collect<'a, B: AutodiffBackend> {
        path: Path,
        prefix: &'a str,
        grads: &'a B::Gradients,
        out: TensorMap<B::InnerBackend>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = param.val().grad(self.grads) {
                self.out
                    .insert(self.path.name(self.prefix), g.flatten::<1>(0, D - 1));
            }
        }
    }
    let mut c = Collect::<B> {
        path: Path(vec![]),
        prefix,
        grads,
        out: TensorMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Global L2 norm of a set of gradients.
pub fn grad_norm<B: Backend>(grads: &TensorMap<B>) -> f64 {
    grads
        .values()
        .map(|g| (g.clone() * g.clone()).sum().into_scalar().elem::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// Host copies in the official layout (Linear weights transposed back to `[out, in]`).
pub fn to_host<B: Backend>(
    map: &TensorMap<B>,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> BTreeMap<String, HostTensor> {
    map.iter()
        .filter_map(|(name, t)| {
            let shape = shapes.get(name)?.clone();
            let flat = HostTensor::from_tensor(t.clone());
            let burn_shape: Vec<usize> = if is_linear_weight(name, shape.len()) {
                vec![shape[1], shape[0]]
            } else {
                shape.clone()
            };
            let t = HostTensor::new(burn_shape, flat.data);
            Some((
                name.clone(),
                if is_linear_weight(name, shape.len()) {
                    t.transposed()
                } else {
                    t
                },
            ))
        })
        .collect()
}

/// Hyper-parameters of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepHyper {
    pub lr: f64,
    pub weight_decay: f64,
}

/// AdamW state: the step count and the two moments of every parameter that had a gradient.
pub struct AdamW<B: Backend> {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Optimizer steps taken (torch keeps one per parameter; here they are always equal).
    pub step: u64,
    pub exp_avg: TensorMap<B>,
    pub exp_avg_sq: TensorMap<B>,
}

impl<B: Backend> Default for AdamW<B> {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            exp_avg: TensorMap::new(),
            exp_avg_sq: TensorMap::new(),
        }
    }
}

impl<B: Backend> AdamW<B> {
    /// Start optimizer step `t + 1` (call once per step, before the updates).
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Update every parameter of `module` named in `grads` (`prefix.name`).
    pub fn update<AD, M>(
        &mut self,
        module: M,
        prefix: &str,
        grads: &TensorMap<B>,
        hyper: StepHyper,
    ) -> M
    where
        B: IjepaBackend,
        AD: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AD>,
    {
        let mut mapper = Update::<AD> {
            path: Path(vec![]),
            prefix,
            grads,
            adam: self,
            hyper,
        };
        module.map(&mut mapper)
    }
}

struct Update<'a, AD: AutodiffBackend> {
    path: Path,
    prefix: &'a str,
    grads: &'a TensorMap<AD::InnerBackend>,
    adam: &'a mut AdamW<AD::InnerBackend>,
    hyper: StepHyper,
}

impl<AD: AutodiffBackend> ModuleMapper<AD> for Update<'_, AD>
where
    AD::InnerBackend: IjepaBackend,
{
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.0.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AD, D>>) -> Param<Tensor<AD, D>> {
        let (id, tensor, mapper) = param.consume();
        let name = self.path.name(self.prefix);
        let Some(grad) = self.grads.get(&name) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let p = tensor.inner();
        let shape = p.shape();
        let flat =
            |t: Tensor<AD::InnerBackend, D>| t.flatten::<1>(0, D - 1).into_primitive().tensor();
        let a = &mut *self.adam;
        let zeros = || Tensor::<AD::InnerBackend, 1>::zeros([shape.num_elements()], &grad.device());
        let m = a.exp_avg.remove(&name).unwrap_or_else(zeros);
        let v = a.exp_avg_sq.remove(&name).unwrap_or_else(zeros);
        let hp = crate::ops::kernels::optim::AdamW {
            lr: self.hyper.lr,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            weight_decay: if is_decayed(&name, D) {
                self.hyper.weight_decay
            } else {
                0.0
            },
        };
        let unwrap = |t: Tensor<AD::InnerBackend, 1>| t.into_primitive().tensor();
        let (p, m, v) = AD::InnerBackend::ijepa_adamw(
            flat(p),
            unwrap(grad.clone()),
            unwrap(m),
            unwrap(v),
            &hp,
            a.step,
        );
        let wrap = |t| Tensor::<AD::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(t));
        a.exp_avg.insert(name.clone(), wrap(m));
        a.exp_avg_sq.insert(name, wrap(v));
        let p = wrap(p).reshape(shape);
        let mut out = Tensor::<AD, D>::from_inner(p);
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}
