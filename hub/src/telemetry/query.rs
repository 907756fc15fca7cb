//! What the fleet reports, read off the stored telemetry: drift per model version and feature,
//! a version's last hour across the fleet, fleet metrics, a device's detail, drift rules.

use edgefleet_common::drift::{ColumnDrift, DriftConfig, Method, profile_drift};
use edgefleet_common::name;
use edgefleet_common::quality::{ModelQuality, Task};
use serde::{Deserialize, Serialize};

use super::accept::Rejected;
use super::aggregate::{LatencyMs, Merged};
use super::store::{DeviceTelemetry, Liveness};
use super::{ALL, HOUR, Telemetry};
use crate::error::{HubError, HubResult};
use crate::store::DeviceRecord;

/// Longest range a drift query may merge.
const MAX_RANGE_SECS: u64 = 400 * 24 * HOUR;

/// Which telemetry a drift query merges.
#[derive(Debug, Default, Deserialize)]
pub struct DriftQuery {
    /// Start, seconds since the epoch (default: 24 h before `to`).
    pub from: Option<u64>,
    /// End, exclusive (default: now).
    pub to: Option<u64>,
    /// A device tag: only devices with it (default: the whole fleet).
    pub tag: Option<String>,
    /// One input or output column (default: all).
    pub feature: Option<String>,
}

/// Drift of one model version over a time range.
#[derive(Debug, Serialize)]
pub struct DriftReport {
    pub model: String,
    pub version: u64,
    pub scope: String,
    pub from: u64,
    pub to: u64,
    /// Windows, requests and rows merged.
    pub windows: u64,
    pub requests: u64,
    pub rows: u64,
    pub has_reference: bool,
    pub drifted: Vec<String>,
    pub columns: Vec<ColumnDrift>,
    /// Prediction quality from ground truth over the same range and scope; none without
    /// feedback.
    pub quality: Option<QualityReport>,
}

/// Prediction quality of a model version, read off merged feedback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityReport {
    pub task: Option<Task>,
    /// Feedback rows matched to predictions and scored.
    pub matched: u64,
    /// Of `matched`, rows whose truth came in a later window than the prediction.
    pub late: u64,
    /// Feedback for predictions the devices no longer (or never) held.
    pub unknown: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    /// A fraction: 0.1 is 10 %.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mape: Option<f64>,
    /// Absolute error quantiles (p50, p90, p99) across the devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abs_error: Option<ErrorQuantiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    /// (truth, predicted, rows), at most 32 labels; rows beyond in `confusion_other`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub confusion: Vec<(String, String, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion_other: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorQuantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl QualityReport {
    pub fn of(q: &ModelQuality) -> Self {
        let abs_error = q.regression.as_ref().and_then(|r| {
            let view = r.abs_error.view();
            Some(ErrorQuantiles {
                p50: view.quantile(0.5)?,
                p90: view.quantile(0.9)?,
                p99: view.quantile(0.99)?,
            })
        });
        let c = q.classification.as_ref();
        QualityReport {
            task: q.task(),
            matched: q.matched,
            late: q.late,
            unknown: q.unknown,
            mae: q.mae(),
            rmse: q.rmse(),
            mape: q.mape(),
            abs_error,
            accuracy: q.accuracy(),
            log_loss: q.log_loss(),
            confusion: c
                .map(|c| {
                    c.cells()
                        .map(|(t, p, n)| (t.to_owned(), p.to_owned(), n))
                        .collect()
                })
                .unwrap_or_default(),
            confusion_other: c.map(|c| c.other),
        }
    }
}

/// One model version across the fleet over the last hour: what the hub republishes on
/// `edgefleet/v1/fleet/models/{model}/{version}/summary` and `/fleet/metrics` lists.
#[derive(Debug, Clone, Serialize)]
pub struct VersionReport {
    pub model: String,
    pub version: u64,
    pub from: u64,
    pub to: u64,
    pub windows: u64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub latency_ms: LatencyMs,
    pub drifted: Vec<String>,
    pub drift: Vec<FeatureDrift>,
    /// Prediction quality over the same hour; none without feedback.
    pub quality: Option<QualityReport>,
    pub updated_at: u64,
}

/// One column's drift in a [`VersionReport`].
#[derive(Debug, Clone, Serialize)]
pub struct FeatureDrift {
    pub column: String,
    pub method: Method,
    pub score: f64,
    pub threshold: f64,
    pub drifted: bool,
}

#[derive(Debug, Serialize)]
pub struct FleetMetrics {
    pub devices: DeviceCounts,
    pub models: Vec<VersionReport>,
    pub ingest: IngestReport,
}

#[derive(Debug, Serialize)]
pub struct DeviceCounts {
    pub enrolled: usize,
    pub approved: usize,
    pub online: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct IngestReport {
    pub broker: Option<String>,
    pub connected: bool,
    pub stored: u64,
    pub duplicates: u64,
    pub heartbeats: u64,
    pub acks: u64,
    pub bytes: u64,
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
}

/// A device as the admin API shows it: the registry record, liveness and the latest window.
#[derive(Debug, Serialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: DeviceRecord,
    pub online: bool,
    pub liveness: Option<Liveness>,
    pub telemetry: Option<DeviceTelemetry>,
    /// Records its outbox dropped because it was full (latest report).
    pub outbox_dropped: u64,
}

fn drifted(columns: &[ColumnDrift]) -> Vec<String> {
    columns
        .iter()
        .filter(|c| c.drifted)
        .map(|c| c.column.clone())
        .collect()
}

impl Telemetry {
    /// Drift per column of what `merged` holds against the version's reference; whether the
    /// version has a reference at all.
    fn drift_of(
        &self,
        model: &str,
        version: u64,
        merged: Option<&Merged>,
    ) -> HubResult<(bool, Vec<ColumnDrift>)> {
        let facts = self
            .registry
            .facts(model, version)?
            .ok_or_else(|| HubError::NotFound(format!("no model {model} v{version}")))?;
        let columns = match (&facts.reference, merged) {
            (Some(r), Some(m)) => profile_drift(r, &m.profile, &self.store.drift_config(model)?),
            _ => vec![],
        };
        Ok((facts.reference.is_some(), columns))
    }

    /// Drift of a model version over a range, fleet-wide or for a tag, all columns or one.
    pub fn drift(&self, model: &str, version: u64, q: &DriftQuery) -> HubResult<DriftReport> {
        name::validate(model)?;
        let to = q.to.unwrap_or_else(|| crate::now() + 1);
        let from = q.from.unwrap_or(to.saturating_sub(24 * HOUR));
        if from >= to || to - from > MAX_RANGE_SECS {
            return Err(HubError::Invalid(format!(
                "from={from} to={to}: the range must be non-empty and at most 400 days"
            )));
        }
        let scope = match &q.tag {
            Some(t) => {
                name::validate(t)?;
                t.clone()
            }
            None => ALL.to_owned(),
        };
        let merged = self.store.aggregate(model, version, &scope, from, to)?;
        let quality = self.store.quality(model, version, &scope, from, to)?;
        let (has_reference, mut columns) = self.drift_of(model, version, merged.as_ref())?;
        if let Some(f) = &q.feature {
            columns.retain(|c| &c.column == f);
        }
        Ok(DriftReport {
            drifted: drifted(&columns),
            model: model.to_owned(),
            version,
            scope,
            from,
            to,
            windows: merged.as_ref().map_or(0, |m| m.windows),
            requests: merged.as_ref().map_or(0, |m| m.requests),
            rows: merged.as_ref().map_or(0, |m| m.profile.rows),
            has_reference,
            columns,
            quality: quality.as_ref().map(QualityReport::of),
        })
    }

    /// A version across the fleet over the hour buckets that overlap the last hour.
    pub fn version_report(&self, model: &str, version: u64, now: u64) -> HubResult<VersionReport> {
        let (from, to) = (now.saturating_sub(HOUR), now + 1);
        let merged = self.store.aggregate(model, version, ALL, from, to)?;
        let quality = self.store.quality(model, version, ALL, from, to)?;
        let (_, columns) = self.drift_of(model, version, merged.as_ref())?;
        let (requests, errors) = merged.as_ref().map_or((0, 0), |m| (m.requests, m.errors));
        Ok(VersionReport {
            model: model.to_owned(),
            version,
            from,
            to,
            windows: merged.as_ref().map_or(0, |m| m.windows),
            requests,
            errors,
            error_rate: if requests + errors == 0 {
                0.0
            } else {
                errors as f64 / (requests + errors) as f64
            },
            latency_ms: merged
                .as_ref()
                .map(|m| LatencyMs::of(&m.latency))
                .unwrap_or_default(),
            drifted: drifted(&columns),
            drift: columns
                .into_iter()
                .map(|c| FeatureDrift {
                    column: c.column,
                    method: c.method,
                    score: c.score,
                    threshold: c.threshold,
                    drifted: c.drifted,
                })
                .collect(),
            quality: quality.as_ref().map(QualityReport::of),
            updated_at: now,
        })
    }

    /// Whether a device counts as online: its last word was "online" and it is recent.
    pub fn online(&self, l: &Liveness, now: u64) -> bool {
        l.online && l.received_at + self.config.load().config.offline_after_secs > now
    }

    fn ingest_report(&self) -> IngestReport {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let Some(broker) = s.broker.get() else {
            return IngestReport::default();
        };
        IngestReport {
            broker: Some(broker.clone()),
            connected: s.connected.load(Relaxed),
            stored: s.stored.load(Relaxed),
            duplicates: s.duplicates.load(Relaxed),
            heartbeats: s.heartbeats.load(Relaxed),
            acks: s.acks.load(Relaxed),
            bytes: s.bytes.load(Relaxed),
            rejected: Rejected::ALL
                .iter()
                .map(|r| (r.label(), s.rejected(*r)))
                .collect(),
        }
    }

    /// Devices, every version with data in the last hour, ingest counters.
    pub fn fleet_metrics(&self) -> HubResult<FleetMetrics> {
        let now = crate::now();
        let devices = self.devices.list()?;
        let live = self.store.all_liveness()?;
        let models = self
            .store
            .versions_with_data(now.saturating_sub(HOUR) / HOUR * HOUR, now + 1)?
            .into_iter()
            // One version that cannot be reported (its model record gone) must not take the
            // whole fleet view down with it.
            .filter_map(|(m, v)| {
                self.version_report(&m, v, now)
                    .map_err(
                        |error| tracing::warn!(%error, model = %m, version = v, "no fleet report"),
                    )
                    .ok()
            })
            .collect::<Vec<_>>();
        Ok(FleetMetrics {
            devices: DeviceCounts {
                enrolled: devices.len(),
                approved: devices.iter().filter(|d| d.approved).count(),
                online: live.iter().filter(|(_, l)| self.online(l, now)).count(),
            },
            models,
            ingest: self.ingest_report(),
        })
    }

    /// A device with its liveness and latest window.
    pub fn device_detail(&self, device: DeviceRecord) -> HubResult<DeviceDetail> {
        let liveness = self.store.liveness(&device.id)?;
        let telemetry = self.store.latest(&device.id)?;
        let now = crate::now();
        // The newest report of the outbox's drops, from a heartbeat or a window.
        let outbox_dropped = [
            liveness.as_ref().map(|l| (l.received_at, l.outbox.dropped)),
            telemetry
                .as_ref()
                .map(|t| (t.received_at, t.outbox.dropped)),
        ]
        .into_iter()
        .flatten()
        .max()
        .map_or(0, |(_, d)| d);
        Ok(DeviceDetail {
            online: liveness.as_ref().is_some_and(|l| self.online(l, now)),
            device,
            liveness,
            telemetry,
            outbox_dropped,
        })
    }

    pub fn drift_config(&self, model: &str) -> HubResult<DriftConfig> {
        name::validate(model)?;
        self.store.drift_config(model)
    }

    /// Sets a model's drift methods and thresholds (per column if needed), checked first.
    pub fn set_drift_config(&self, model: &str, c: &DriftConfig) -> HubResult<()> {
        name::validate(model)?;
        for (column, rule) in std::iter::once(("numeric", &c.numeric))
            .chain(std::iter::once(("categorical", &c.categorical)))
            .chain(c.columns.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if !rule.threshold.is_finite() || rule.threshold < 0.0 {
                return Err(HubError::Invalid(format!(
                    "{column}: threshold {} must be a non-negative number",
                    rule.threshold
                )));
            }
        }
        if c.columns.len() > edgefleet_common::sketch::MAX_COLUMNS {
            return Err(HubError::Invalid("too many column rules".into()));
        }
        self.store.put_drift_config(model, c)
    }
}
