//! Fleet telemetry: what devices report, accepted, merged and read back.
//!
//! - [`accept`]: a device message → one [`Verdict`] (stored, duplicate, acked but refused,
//!   retry, refused), counted in one place; batches committed before they are acked.
//! - [`writer`]: the one writer of the aggregates, latest windows and dedup markers.
//! - [`aggregate`]: merged windows of a model version, hour and scope.
//! - [`store`]: the telemetry trees and the reads over them.
//! - [`query`]: drift, a version's last hour, fleet metrics, device detail, drift rules.
//! - [`samples`]: training samples devices captured, summarised and exported as a dataset.
//! - Retention: [`Telemetry::prune`] drops what is older than `telemetry_retention_days`.
//!
//! Architecture invariant: a record's merge into every aggregate, its latest-window entry and
//! its dedup marker are written in one sled transaction (its group's, see [`TelemetryWriter`]),
//! and the database is flushed before the hub acks the record, so an acked record is stored
//! exactly once, and a record that was not acked is either wholly stored (its resend is then a
//! duplicate) or not at all.

pub mod accept;
mod aggregate;
pub mod query;
pub mod samples;
mod store;
mod writer;

use std::sync::Arc;

pub use accept::{Accept, BatchOutcome, IngestStats, Message, Rejected, Verdict};
pub use aggregate::{Aggregate, LatencyMs, Merged, MergedRef};
pub use query::{
    DeviceDetail, DriftQuery, DriftReport, FleetMetrics, QualityReport, VersionReport,
};
pub use store::{DeviceTelemetry, LatestModelWindow, Liveness, TelemetryStore};
pub use writer::{References, Staged, TelemetryWriter};

use crate::config::SharedConfig;
use crate::devices::Devices;
use crate::error::HubResult;
use crate::registry::Registry;

pub const HOUR: u64 = 3600;
/// The scope of the fleet-wide aggregate (a tag is never `*`).
pub const ALL: &str = "*";

/// The telemetry domain: its store, the registry and devices it checks records against, and
/// the ingest counters.
#[derive(Clone)]
pub struct Telemetry {
    store: TelemetryStore,
    registry: Registry,
    devices: Devices,
    config: SharedConfig,
    stats: Arc<IngestStats>,
}

impl Telemetry {
    pub fn open(
        db: &sled::Db,
        registry: Registry,
        devices: Devices,
        config: SharedConfig,
    ) -> HubResult<Self> {
        Ok(Self {
            store: TelemetryStore::open(db)?,
            registry,
            devices,
            config,
            stats: Default::default(),
        })
    }

    pub fn store(&self) -> &TelemetryStore {
        &self.store
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// The consumer. Only one may run: it owns the telemetry trees' one writer.
    pub fn accept(&self) -> Accept {
        Accept::new(
            self.store.clone(),
            self.registry.clone(),
            self.devices.clone(),
            self.config.clone(),
            self.stats.clone(),
        )
    }

    /// Drops dedup markers and aggregates past the retention, and samples past theirs or
    /// over their per-model cap; (markers, aggregates and sample batches) dropped.
    pub fn prune(&self, now: u64) -> HubResult<(usize, usize)> {
        let config = &self.config.load().config;
        let (markers, aggregates) = self
            .store
            .prune(now.saturating_sub(config.telemetry_retention_days * 86_400))?;
        let samples = self.store.prune_samples(
            now.saturating_sub(config.samples_retention_days * 86_400),
            config.samples_max_bytes_per_model,
        )?;
        Ok((markers, aggregates + samples))
    }
}
