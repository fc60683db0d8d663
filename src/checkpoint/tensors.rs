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

struct Collect {
    path: Vec<String>,
    out: NamedTensors,
}

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        let t = HostTensor::from_tensor(param.val());
        let t = if is_linear_weight(&name, D) {
            t.transposed()
        } else {
            t
        };
        self.out.insert(name, t);
    }
}

/// Every trainable parameter of `module` under its official name and PyTorch layout.
pub fn module_to_named<B: Backend, M: Module<B>>(module: &M) -> NamedTensors {
    let mut c = Collect {
        path: vec![],
        out: NamedTensors::new(),
    };
    module.visit::<Collect>(&mut c);
    c.out
}

/// Names and PyTorch-layout shapes of the parameters of `module`.
pub fn parameter_shapes<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<usize>> {
    struct Shapes {
        path: Vec<String>,
        out: BTreeMap<String, Vec<usize>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let name = self.path.join(".");
            let mut dims = param.shape().dims::<D>().to_vec();
            if is_linear_weight(&name, D) {
                dims.reverse();
            }
            self.out.insert(name, dims);
        }
    }
    let mut s = Shapes {
        path: vec![],
        out: BTreeMap::new(),
    };
    module.visit::<Shapes>(&mut s);
    s.out
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
