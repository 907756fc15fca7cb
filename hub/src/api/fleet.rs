//! What the fleet reports: drift per model version and feature, fleet metrics, device detail,
//! drift rules, and the Prometheus exposition at `/metrics`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use edgefleet_common::drift::{ColumnDrift, DriftConfig, profile_drift};
use edgefleet_common::name;
use edgefleet_common::sketch::Profile;
use serde::{Deserialize, Serialize};

use super::{Admin, SharedState};
use crate::error::{HubError, HubResult};
use crate::store::DeviceRecord;
use crate::telemetry::{ALL, DeviceTelemetry, HOUR, LatencyMs, Liveness, Merged, TelemetryStore};

/// Longest range a drift query may merge.
const MAX_RANGE_SECS: u64 = 400 * 24 * HOUR;

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    /// Start, seconds since the epoch (default: 24 h before `to`).
    from: Option<u64>,
    /// End, exclusive (default: now).
    to: Option<u64>,
    /// A device tag: only devices with it (default: the whole fleet).
    tag: Option<String>,
    /// One input or output column (default: all).
    feature: Option<String>,
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
}

fn reference(s: &SharedState, model: &str, version: u64) -> HubResult<Option<Profile>> {
    let Some(record) = s.store.model(model, version)? else {
        return Err(HubError::NotFound(format!("no model {model} v{version}")));
    };
    let manifest = record.manifest.decode_unverified()?;
    Ok(manifest
        .reference_profile
        .and_then(|b| Profile::from_bytes(&b).ok()))
}

fn drift_of(
    s: &SharedState,
    telemetry: &TelemetryStore,
    model: &str,
    version: u64,
    merged: Option<&Merged>,
) -> HubResult<(bool, Vec<ColumnDrift>)> {
    let reference = reference(s, model, version)?;
    let columns = match (&reference, merged) {
        (Some(r), Some(m)) => profile_drift(r, &m.profile, &telemetry.drift_config(model)?),
        _ => vec![],
    };
    Ok((reference.is_some(), columns))
}

/// `GET /api/v1/models/{name}/versions/{version}/drift?from=&to=&tag=&feature=`
pub async fn drift(
    _: Admin,
    State(s): State<SharedState>,
    Path((model, version)): Path<(String, u64)>,
    Query(q): Query<RangeQuery>,
) -> HubResult<Json<DriftReport>> {
    name::validate(&model)?;
    let to = q.to.unwrap_or_else(|| crate::now() + 1);
    let from = q.from.unwrap_or(to.saturating_sub(24 * HOUR));
    if from >= to || to - from > MAX_RANGE_SECS {
        return Err(HubError::BadRequest(format!(
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
    let merged = s.telemetry.aggregate(&model, version, &scope, from, to)?;
    let (has_reference, mut columns) =
        drift_of(&s, &s.telemetry, &model, version, merged.as_ref())?;
    if let Some(f) = &q.feature {
        columns.retain(|c| &c.column == f);
    }
    Ok(Json(DriftReport {
        drifted: columns
            .iter()
            .filter(|c| c.drifted)
            .map(|c| c.column.clone())
            .collect(),
        model,
        version,
        scope,
        from,
        to,
        windows: merged.as_ref().map_or(0, |m| m.windows),
        requests: merged.as_ref().map_or(0, |m| m.requests),
        rows: merged.as_ref().map_or(0, |m| m.profile.rows),
        has_reference,
        columns,
    }))
}

/// One model version across the fleet over the last hour: what the hub republishes on
/// `edgefleet/v1/fleet/models/{model}/{version}/summary` and `/fleet/metrics` lists.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
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
    pub drift: Vec<SummaryDrift>,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SummaryDrift {
    pub column: String,
    pub method: edgefleet_common::drift::Method,
    pub score: f64,
    pub threshold: f64,
    pub drifted: bool,
}

/// The summary over the hour buckets that overlap the last hour.
pub fn summary(
    s: &SharedState,
    telemetry: &TelemetryStore,
    model: &str,
    version: u64,
    now: u64,
) -> HubResult<FleetSummary> {
    let (from, to) = (now.saturating_sub(HOUR), now + 1);
    let merged = telemetry.aggregate(model, version, ALL, from, to)?;
    let (_, columns) = drift_of(s, telemetry, model, version, merged.as_ref())?;
    let (requests, errors) = merged.as_ref().map_or((0, 0), |m| (m.requests, m.errors));
    Ok(FleetSummary {
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
        drifted: columns
            .iter()
            .filter(|c| c.drifted)
            .map(|c| c.column.clone())
            .collect(),
        drift: columns
            .into_iter()
            .map(|c| SummaryDrift {
                column: c.column,
                method: c.method,
                score: c.score,
                threshold: c.threshold,
                drifted: c.drifted,
            })
            .collect(),
        updated_at: now,
    })
}

#[derive(Debug, Serialize)]
pub struct FleetMetrics {
    pub devices: DeviceCounts,
    pub models: Vec<FleetSummary>,
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

fn online(s: &SharedState, l: &Liveness, now: u64) -> bool {
    l.online && l.received_at + s.loaded.load().config.offline_after_secs > now
}

fn ingest_report(s: &SharedState) -> IngestReport {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(m) = s.mqtt.get() else {
        return IngestReport::default();
    };
    let c = &m.counters;
    IngestReport {
        broker: Some(m.broker_url.clone()),
        connected: m.connected.load(Relaxed),
        stored: c.stored.load(Relaxed),
        duplicates: c.duplicates.load(Relaxed),
        heartbeats: c.heartbeats.load(Relaxed),
        acks: c.acks.load(Relaxed),
        bytes: c.bytes.load(Relaxed),
        rejected: crate::mqtt::Rejected::ALL
            .iter()
            .map(|r| (r.label(), c.rejected(*r)))
            .collect(),
    }
}

fn fleet_metrics(s: &SharedState) -> HubResult<FleetMetrics> {
    let now = crate::now();
    let devices = s.store.devices()?;
    let live = s.telemetry.all_liveness()?;
    let models = s
        .telemetry
        .versions_with_data(now.saturating_sub(HOUR) / HOUR * HOUR, now + 1)?
        .into_iter()
        // One version that cannot be summarised (its model record gone) must not take the
        // whole fleet view down with it.
        .filter_map(|(m, v)| {
            summary(s, &s.telemetry, &m, v, now)
                .map_err(
                    |error| tracing::warn!(%error, model = %m, version = v, "no fleet summary"),
                )
                .ok()
        })
        .collect::<Vec<_>>();
    Ok(FleetMetrics {
        devices: DeviceCounts {
            enrolled: devices.len(),
            approved: devices.iter().filter(|d| d.approved).count(),
            online: live.iter().filter(|(_, l)| online(s, l, now)).count(),
        },
        models,
        ingest: ingest_report(s),
    })
}

/// `GET /api/v1/fleet/metrics`: devices online, per model version requests, errors, latency
/// and drift over the last hour, ingest counters.
pub async fn metrics(_: Admin, State(s): State<SharedState>) -> HubResult<Json<FleetMetrics>> {
    Ok(Json(fleet_metrics(&s)?))
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

pub fn device_detail(s: &SharedState, device: DeviceRecord) -> HubResult<DeviceDetail> {
    let liveness = s.telemetry.liveness(&device.id)?;
    let telemetry = s.telemetry.latest(&device.id)?;
    let now = crate::now();
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
        online: liveness.as_ref().is_some_and(|l| online(s, l, now)),
        device,
        liveness,
        telemetry,
        outbox_dropped,
    })
}

/// `GET /api/v1/models/{name}/drift-config`
pub async fn get_drift_config(
    _: Admin,
    State(s): State<SharedState>,
    Path(model): Path<String>,
) -> HubResult<Json<DriftConfig>> {
    name::validate(&model)?;
    Ok(Json(s.telemetry.drift_config(&model)?))
}

/// `PUT /api/v1/models/{name}/drift-config`: methods and thresholds, per column if needed.
pub async fn put_drift_config(
    _: Admin,
    State(s): State<SharedState>,
    Path(model): Path<String>,
    Json(c): Json<DriftConfig>,
) -> HubResult<Json<DriftConfig>> {
    name::validate(&model)?;
    for (column, rule) in std::iter::once(("numeric", &c.numeric))
        .chain(std::iter::once(("categorical", &c.categorical)))
        .chain(c.columns.iter().map(|(k, v)| (k.as_str(), v)))
    {
        if !rule.threshold.is_finite() || rule.threshold < 0.0 {
            return Err(HubError::BadRequest(format!(
                "{column}: threshold {} must be a non-negative number",
                rule.threshold
            )));
        }
    }
    if c.columns.len() > edgefleet_common::sketch::MAX_COLUMNS {
        return Err(HubError::BadRequest("too many column rules".into()));
    }
    s.telemetry.put_drift_config(&model, &c)?;
    Ok(Json(c))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text. Unauthenticated, like most exporters;
/// it shows counts and scores, no identities beyond model names.
pub async fn prometheus(State(s): State<SharedState>) -> HubResult<impl IntoResponse> {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::AtomicU64;

    type Labels = Vec<(String, String)>;
    type FGauge = Family<Labels, Gauge<f64, AtomicU64>>;
    let m = fleet_metrics(&s)?;
    let mut r = Registry::with_prefix("edgefleet_hub");
    let count = |v: usize| {
        let g = Gauge::<i64>::default();
        g.set(v as i64);
        g
    };
    r.register(
        "devices_enrolled",
        "Enrolled devices",
        count(m.devices.enrolled),
    );
    r.register(
        "devices_online",
        "Devices whose last heartbeat is recent and online",
        count(m.devices.online),
    );
    let (requests, errors, error_rate, latency, drift, drifted) = (
        FGauge::default(),
        FGauge::default(),
        FGauge::default(),
        FGauge::default(),
        FGauge::default(),
        FGauge::default(),
    );
    for sm in &m.models {
        let base: Labels = vec![
            ("model".into(), sm.model.clone()),
            ("version".into(), sm.version.to_string()),
        ];
        requests.get_or_create(&base).set(sm.requests as f64);
        errors.get_or_create(&base).set(sm.errors as f64);
        error_rate.get_or_create(&base).set(sm.error_rate);
        for (q, v) in [
            ("0.5", sm.latency_ms.p50),
            ("0.95", sm.latency_ms.p95),
            ("0.99", sm.latency_ms.p99),
        ] {
            if let Some(v) = v {
                let mut l = base.clone();
                l.push(("quantile".into(), q.into()));
                latency.get_or_create(&l).set(v / 1000.0);
            }
        }
        for d in &sm.drift {
            let mut l = base.clone();
            l.push(("feature".into(), d.column.clone()));
            l.push(("method".into(), format!("{:?}", d.method).to_lowercase()));
            drift.get_or_create(&l).set(d.score);
            drifted
                .get_or_create(&l)
                .set(if d.drifted { 1.0 } else { 0.0 });
        }
    }
    r.register(
        "requests_last_hour",
        "Inference requests reported over the last hour",
        requests,
    );
    r.register(
        "errors_last_hour",
        "Failed inference requests reported over the last hour",
        errors,
    );
    r.register(
        "error_rate_last_hour",
        "Errors / (requests + errors) over the last hour",
        error_rate,
    );
    r.register(
        "latency_seconds",
        "Inference latency quantiles over the last hour (DDSketch, 1 % relative error)",
        latency,
    );
    r.register(
        "drift_score",
        "Drift score per feature against the training reference, last hour",
        drift,
    );
    r.register(
        "drifted",
        "1 if the feature's drift score crosses its threshold",
        drifted,
    );
    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    r.register(
        "telemetry_stored",
        "Telemetry records stored",
        counter(m.ingest.stored),
    );
    r.register(
        "telemetry_duplicates",
        "Duplicate telemetry records (acked again)",
        counter(m.ingest.duplicates),
    );
    r.register(
        "telemetry_heartbeats",
        "Heartbeats received",
        counter(m.ingest.heartbeats),
    );
    r.register("telemetry_acks", "Acks published", counter(m.ingest.acks));
    r.register(
        "telemetry_bytes",
        "Telemetry payload bytes received",
        counter(m.ingest.bytes),
    );
    let rejected = Family::<Labels, Counter<u64>>::default();
    for (reason, n) in &m.ingest.rejected {
        rejected
            .get_or_create(&vec![("reason".into(), (*reason).into())])
            .inc_by(*n);
    }
    r.register(
        "telemetry_rejected",
        "Telemetry messages refused, by reason",
        rejected,
    );
    let mut text = String::new();
    encode(&mut text, &r).map_err(|e| HubError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}
