//! Data parallelism: one replica per device, processes and machines, gradients averaged by
//! burn-collective's all-reduce before every AdamW step so that all replicas stay identical
//! (the EMA target too, as every peer applies the same update).
//!
//! Peers are numbered `node_rank * devices_per_node + local_index`; peer `p` of a run with
//! `world` peers and `accum` accumulation steps trains on the loader's replicas
//! `p*accum .. (p+1)*accum` of every step, so a run on `world` peers draws exactly what one
//! process with `world * accum` accumulation steps draws.

use std::time::Duration;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::optim::TensorMap;
use crate::error::{ConfigError, Result};

/// Why a data-parallel run stopped: a peer died, the network failed, or a thread panicked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[cfg(feature = "collective")]
    #[error(
        "data-parallel run stopped: burn-collective failed while {what} ({error:?}): another peer stopped or the network failed"
    )]
    Failed {
        what: &'static str,
        error: burn_collective::CollectiveError,
    },
    /// The helper thread ended without an answer (burn-collective panics on a dropped peer).
    #[error(
        "data-parallel run stopped: burn-collective failed while {what}: another peer stopped or the network failed"
    )]
    Disconnected { what: &'static str },
    #[error(
        "data-parallel run stopped: no answer from the other peers within {secs} s while {what}: a peer died or the network failed (--peer-timeout)"
    )]
    Timeout { what: &'static str, secs: u64 },
    #[error("data-parallel run stopped: a training thread panicked")]
    Panicked,
}

/// What a run on several nodes needs besides `--nodes`.
fn multi_node_needs() -> ConfigError {
    ConfigError::needs(
        "a multi-node run",
        "--coordinator HOST:PORT and this node's --node-address HOST:PORT",
    )
}

/// Averages gradients (and the loss) over all peers; the identity for one process.
pub trait GradReducer<B: Backend>: Send {
    /// Global index of this peer (0 writes checkpoints and logs).
    fn rank(&self) -> usize;
    /// Number of peers.
    fn world(&self) -> usize;
    /// Mean of `grads` and `loss` over all peers.
    fn all_reduce_mean(&self, grads: TensorMap<B>, loss: f64) -> Result<(TensorMap<B>, f64)>;
}

/// A run in one process on one device.
pub struct Single;

impl<B: Backend> GradReducer<B> for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_mean(&self, grads: TensorMap<B>, loss: f64) -> Result<(TensorMap<B>, f64)> {
        Ok((grads, loss))
    }
}

/// Pack every gradient and the loss into one flat tensor (one all-reduce per step), and back.
pub fn pack<B: Backend>(grads: &TensorMap<B>, loss: f64) -> (Tensor<B, 1>, Vec<(String, usize)>) {
    let sizes: Vec<(String, usize)> = grads
        .iter()
        .map(|(k, v)| (k.clone(), v.dims()[0]))
        .collect();
    let device = grads
        .values()
        .next()
        .map(|t| t.device())
        .unwrap_or_default();
    let mut parts: Vec<Tensor<B, 1>> = grads.values().cloned().collect();
    parts.push(Tensor::from_floats([loss as f32], &device));
    (Tensor::cat(parts, 0), sizes)
}

pub fn unpack<B: Backend>(flat: Tensor<B, 1>, sizes: &[(String, usize)]) -> (TensorMap<B>, f64) {
    let mut out = TensorMap::new();
    let mut at = 0;
    for (name, n) in sizes {
        out.insert(name.clone(), flat.clone().narrow(0, at, *n));
        at += n;
    }
    let loss = flat.narrow(0, at, 1).into_scalar();
    (out, burn::tensor::ElementConversion::elem::<f64>(loss))
}

/// Where the peers of a run are.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub nodes: usize,
    pub node_rank: usize,
    /// Devices (peers) in this process.
    pub local_devices: usize,
    /// `host:port` of the global orchestrator (multi-node runs).
    pub coordinator: Option<String>,
    /// `host:port` other nodes reach this node's tensor service at (multi-node runs).
    pub node_address: Option<String>,
    /// How long a peer waits for the others before giving up.
    pub timeout: Duration,
}

impl Cluster {
    pub fn world(&self) -> usize {
        self.nodes * self.local_devices
    }

    pub fn validate(&self) -> Result<()> {
        if self.nodes == 0 || self.local_devices == 0 || self.node_rank >= self.nodes {
            return Err(ConfigError::value(
                "--node-rank",
                format!("below --nodes {} (and both positive)", self.nodes),
                self.node_rank,
            )
            .into());
        }
        if self.nodes > 1 && (self.coordinator.is_none() || self.node_address.is_none()) {
            return Err(multi_node_needs().into());
        }
        Ok(())
    }
}

#[cfg(feature = "collective")]
pub use collective::{CollectivePeer, run_coordinator};

#[cfg(feature = "collective")]
mod collective {
    use std::str::FromStr;
    use std::sync::mpsc;

    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorPrimitive};
    use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
    use burn_communication::Address;

    use super::{Cluster, GradReducer, PeerError, TensorMap, pack, unpack};
    use crate::error::{ConfigError, Error, Result};

    fn ws(addr: &str) -> Result<Address> {
        let full = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("ws://{addr}")
        };
        Address::from_str(&full).map_err(|e| {
            ConfigError::value("address", "HOST:PORT", format!("'{addr}' ({e})")).into()
        })
    }

    /// Run the global orchestrator of a multi-node run until the process ends.
    pub fn run_coordinator(port: u16) -> Result<()> {
        let rt = tokio::runtime::Runtime::new().map_err(|error| Error::Thread {
            what: "the coordinator runtime",
            error,
        })?;
        rt.block_on(burn_collective::start_global_orchestrator(port));
        Ok(())
    }

    /// One peer of a burn-collective run.
    pub struct CollectivePeer {
        id: PeerId,
        rank: usize,
        world: usize,
        timeout: std::time::Duration,
    }

    impl CollectivePeer {
        /// Register this peer (device `local_index` of this node) with the collective.
        pub fn join<B: Backend>(
            cluster: &Cluster,
            local_index: usize,
            device: B::Device,
        ) -> Result<Self> {
            cluster.validate()?;
            let rank = cluster.node_rank * cluster.local_devices + local_index;
            let mut config = CollectiveConfig::default().with_num_devices(cluster.local_devices);
            if cluster.nodes > 1 {
                let (Some(coord), Some(node)) = (&cluster.coordinator, &cluster.node_address)
                else {
                    return Err(super::multi_node_needs().into());
                };
                let port = node
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| ConfigError::value("--node-address", "HOST:PORT", node))?;
                config = config
                    .with_num_nodes(cluster.nodes as u32)
                    .with_global_address(ws(coord)?)
                    .with_node_address(ws(node)?)
                    .with_data_service_port(port)
                    .with_global_all_reduce_strategy(
                        match std::env::var("IJEPA_GLOBAL_STRATEGY").as_deref() {
                            Ok("ring") => AllReduceStrategy::Ring,
                            Ok("tree") => AllReduceStrategy::Tree(2),
                            _ => AllReduceStrategy::Centralized,
                        },
                    );
            }
            let id = PeerId(rank as u32);
            let timeout = cluster.timeout;
            with_timeout(timeout, "joining the other peers", move || {
                burn_collective::register::<B>(id, device, config)
            })?;
            Ok(Self {
                id,
                rank,
                world: cluster.world(),
                timeout,
            })
        }
    }

    /// Run `f` on a helper thread; give up after `timeout` (a peer died or the network broke).
    fn with_timeout<T: Send + 'static>(
        timeout: std::time::Duration,
        what: &'static str,
        f: impl FnOnce() -> std::result::Result<T, burn_collective::CollectiveError> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => Err(PeerError::Failed { what, error }.into()),
            // The helper thread dies with a panic inside burn-collective when a peer's
            // connection drops: the channel is closed without an answer.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(PeerError::Disconnected { what }.into())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(PeerError::Timeout {
                what,
                secs: timeout.as_secs(),
            }
            .into()),
        }
    }

    impl<B: Backend> GradReducer<B> for CollectivePeer {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.world
        }
        fn all_reduce_mean(&self, grads: TensorMap<B>, loss: f64) -> Result<(TensorMap<B>, f64)> {
            let (flat, sizes) = pack(&grads, loss);
            let id = self.id;
            let primitive = flat.into_primitive().tensor();
            let reduced = with_timeout(self.timeout, "averaging gradients", move || {
                burn_collective::all_reduce::<B>(id, primitive, ReduceOperation::Mean)
            })?;
            Ok(unpack(
                Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced)),
                &sizes,
            ))
        }
    }
}
