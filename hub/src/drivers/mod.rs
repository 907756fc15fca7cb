//! Background drivers: tasks that act on their own schedule through the same domain API the
//! transports call. Each is `run(hub, stop)`; none imports a transport.
//!
//! - [`prune`]: drops telemetry past the retention, hourly.
//! - [`rollout`]: advances the staged rollouts, every second.
//! - [`retrain`]: makes scheduled retraining jobs and starts queued ones, every second.

pub mod prune;
pub mod retrain;
pub mod rollout;
