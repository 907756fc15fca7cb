//! Background drivers: tasks that act on their own schedule through the same domain API the
//! transports call. Each is `run(hub, stop)`; none imports a transport.
//!
//! - [`prune`]: drops telemetry past the retention, hourly.

pub mod prune;
