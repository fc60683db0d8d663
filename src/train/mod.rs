//! Training: the objective, the schedules, AdamW with the official parameter groups, the EMA
//! target, and one iteration in the official order.

pub mod config;
pub mod curves;
pub mod distributed;
pub mod ema;
pub mod knn_monitor;
pub mod loss;
pub mod monitor;
pub mod objective;
pub mod optim;
pub mod schedule;
pub mod sigreg;
pub mod state;
pub mod step;
pub mod trainer;
pub mod vicreg;
