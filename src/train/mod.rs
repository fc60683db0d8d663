//! Training: the objective, the schedules, AdamW with the official parameter groups, the EMA
//! target, and one iteration in the official order ([`step::train_step`]); around it the run
//! built from the config ([`run`]), resume-or-start ([`resume`]), the log ([`log`]), the
//! checkpoint policy ([`checkpoints`]) and the loop ([`trainer`]).

pub mod checkpoints;
pub mod config;
pub mod curves;
pub mod distributed;
pub mod ema;
pub mod knn_monitor;
pub mod log;
pub mod loss;
pub mod monitor;
pub mod msn;
pub mod objective;
pub mod optim;
pub mod resume;
pub mod run;
pub mod schedule;
pub mod sigreg;
pub mod state;
pub mod step;
pub mod trainer;
pub mod vicreg;
