//! `GET /metrics`: the fleet view as Prometheus (OpenMetrics) text.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::error::ApiResult;
use crate::error::HubError;
use crate::telemetry::{FleetMetrics, QualityReport};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;
type FGauge = Family<Labels, Gauge<f64, AtomicU64>>;
/// One figure of a quality report, if it has it.
type ReadQuality = fn(&QualityReport) -> Option<f64>;

/// `GET /metrics`: Prometheus (OpenMetrics) text. Unauthenticated, like most exporters;
/// it shows counts and scores, no identities beyond model names.
pub async fn exposition(State(hub): State<AppState>) -> ApiResult<impl IntoResponse> {
    let m = hub.telemetry.fleet_metrics()?;
    let mut r = Registry::with_prefix("edgefleet_hub");
    register_devices(&mut r, &m);
    register_versions(&mut r, &m);
    register_quality(&mut r, &m);
    register_ingest(&mut r, &m);
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

fn register_devices(r: &mut Registry, m: &FleetMetrics) {
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
}

/// Per model version over the last hour: counts, latency quantiles, drift per feature.
fn register_versions(r: &mut Registry, m: &FleetMetrics) {
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
}

/// Per model version over the last hour, from ground truth: `edgefleet_hub_model_mae{model,
/// version}` and the like. A version without feedback has none of these series.
fn register_quality(r: &mut Registry, m: &FleetMetrics) {
    let metrics: [(&str, &str, ReadQuality); 8] = [
        (
            "model_mae",
            "Mean absolute error against ground truth, last hour",
            |q| q.mae,
        ),
        (
            "model_rmse",
            "Root mean squared error against ground truth, last hour",
            |q| q.rmse,
        ),
        (
            "model_mape",
            "Mean absolute percentage error (a fraction) against ground truth, last hour",
            |q| q.mape,
        ),
        (
            "model_accuracy",
            "Share of classifications that matched ground truth, last hour",
            |q| q.accuracy,
        ),
        (
            "model_log_loss",
            "Mean log-loss of the served probabilities against ground truth, last hour",
            |q| q.log_loss,
        ),
        (
            "model_feedback_matched",
            "Feedback rows matched to a prediction and scored, last hour",
            |q| Some(q.matched as f64),
        ),
        (
            "model_feedback_late",
            "Matched feedback rows whose truth came in a later window, last hour",
            |q| Some(q.late as f64),
        ),
        (
            "model_feedback_unknown",
            "Feedback rows for predictions the devices did not hold, last hour",
            |q| Some(q.unknown as f64),
        ),
    ];
    for (name, help, read) in metrics {
        let family = FGauge::default();
        for sm in &m.models {
            if let Some(v) = sm.quality.as_ref().and_then(read) {
                let labels: Labels = vec![
                    ("model".into(), sm.model.clone()),
                    ("version".into(), sm.version.to_string()),
                ];
                family.get_or_create(&labels).set(v);
            }
        }
        r.register(name, help, family);
    }
}

fn register_ingest(r: &mut Registry, m: &FleetMetrics) {
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
}
