//! Host-side named tensors: the common currency of every checkpoint format. Modules are
//! written to and loaded from a [`NamedTensors`] map under the *official* PyTorch names and
//! layouts (Linear weights `[out, in]`), with strict checks that list every missing or
//! unexpected key and every wrong shape.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::error::{CheckpointError, ShapeMismatch};
use crate::error::Result;

/// A dense f32 array on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn from_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        Self { shape, data }
    }

    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    /// 2-D transpose (PyTorch `[out, in]` <-> burn `[in, out]`).
    pub fn transposed(&self) -> Self {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self {
            shape: vec![c, r],
            data,
        }
    }

    pub fn max_abs_diff(&self, other: &HostTensor) -> f32 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}

/// Tensors by name, sorted.
pub type NamedTensors = BTreeMap<String, HostTensor>;

/// True for parameters that burn stores transposed: the weights of `Linear` layers.
pub(crate) fn is_linear_weight(name: &str, rank: usize) -> bool {
    rank == 2 && name.ends_with(".weight")
}

/// What [`named_parameters`] keeps of each parameter, told whether it is a Linear weight
/// (stored transposed by burn).
trait Keep<B: Backend> {
    type Out;
    fn keep<const D: usize>(param: &Param<Tensor<B, D>>, linear_weight: bool) -> Self::Out;
}

/// The visitor of [`named_parameters`]: the module path as it descends.
struct Named<B: Backend, K: Keep<B>> {
    path: Vec<String>,
    out: BTreeMap<String, K::Out>,
}

impl<B: Backend, K: Keep<B>> ModuleVisitor<B> for Named<B, K> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        let kept = K::keep(param, is_linear_weight(&name, D));
        self.out.insert(name, kept);
    }
}

/// `K`'s view of every trainable parameter of `module`, under its official name.
fn named_parameters<B: Backend, M: Module<B>, K: Keep<B>>(module: &M) -> BTreeMap<String, K::Out> {
    let mut v = Named::<B, K> {
        path: vec![],
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The values in PyTorch layout.
struct Values;

impl<B: Backend> Keep<B> for Values {
    type Out = HostTensor;
    fn keep<const D: usize>(param: &Param<Tensor<B, D>>, linear_weight: bool) -> HostTensor {
        let t = HostTensor::from_tensor(param.val());
        if linear_weight { t.transposed() } else { t }
    }
}

/// The shapes in PyTorch layout.
struct Shapes;

impl<B: Backend> Keep<B> for Shapes {
    type Out = Vec<usize>;
    fn keep<const D: usize>(param: &Param<Tensor<B, D>>, linear_weight: bool) -> Vec<usize> {
        let mut dims = param.shape().dims::<D>().to_vec();
        if linear_weight {
            dims.reverse();
        }
        dims
    }
}

/// Every trainable parameter of `module` under its official name and PyTorch layout.
pub fn module_to_named<B: Backend, M: Module<B>>(module: &M) -> NamedTensors {
    named_parameters::<B, M, Values>(module)
}

/// Names and PyTorch-layout shapes of the parameters of `module`.
pub fn parameter_shapes<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<usize>> {
    named_parameters::<B, M, Shapes>(module)
}

struct Load<'a, B: Backend> {
    path: Vec<String>,
    named: &'a NamedTensors,
    device: B::Device,
}

impl<B: Backend> ModuleMapper<B> for Load<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        // Keys and shapes were checked before mapping: every lookup succeeds.
        let require_grad = tensor.is_require_grad();
        let value = match self.named.get(&name) {
            Some(t) if is_linear_weight(&name, D) => t.transposed().to_tensor::<B, D>(&self.device),
            Some(t) => t.to_tensor::<B, D>(&self.device),
            None => tensor,
        };
        let value = if require_grad {
            value.require_grad()
        } else {
            value
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Check that `named` holds exactly the parameters of `module` with the right shapes.
/// `ignore` lists keys that may be present without being parameters (the fixed pos-embeds).
pub fn check_named<B: Backend, M: Module<B>>(
    module: &M,
    named: &NamedTensors,
    ignore: &[&str],
    what: &str,
) -> Result<()> {
    let expected = parameter_shapes::<B, M>(module);
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !named.contains_key(*k))
        .cloned()
        .collect();
    let unexpected: Vec<String> = named
        .keys()
        .filter(|k| !expected.contains_key(*k) && !ignore.contains(&k.as_str()))
        .cloned()
        .collect();
    let wrong_shapes: Vec<ShapeMismatch> = expected
        .iter()
        .filter_map(|(k, shape)| {
            let got = named.get(k)?;
            (got.shape != *shape).then(|| ShapeMismatch {
                key: k.clone(),
                expected: shape.clone(),
                found: got.shape.clone(),
            })
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && wrong_shapes.is_empty() {
        return Ok(());
    }
    Err(CheckpointError::Mismatch {
        what: what.into(),
        missing,
        unexpected,
        wrong_shapes,
    }
    .into())
}

/// Load `named` into `module` after [`check_named`].
pub fn load_named<B: Backend, M: Module<B>>(
    module: M,
    named: &NamedTensors,
    ignore: &[&str],
    what: &str,
) -> Result<M> {
    check_named::<B, M>(&module, named, ignore, what)?;
    let device = module.devices().into_iter().next().unwrap_or_default();
    let mut loader = Load::<B> {
        path: vec![],
        named,
        device,
    };
    Ok(module.map(&mut loader))
}
