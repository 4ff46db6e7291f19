//! The scheduling simulator's parts; `benches/scheduler_sim.rs` runs them.

pub mod bound;
pub mod cluster;
pub mod latency;
pub mod relay;
pub mod report;
pub mod rng;
pub mod runs;
pub mod stock;
pub mod workload;
