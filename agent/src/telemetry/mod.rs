//! Telemetry: the device half of the monitoring loop.
//!
//! Every `telemetry_window_secs` (default 15 minutes) [`Telemetry::close_window`] closes each
//! served model's window ([`crate::window`]), builds one [`TelemetryRecord`] (device, sequence
//! number, window bounds, per-model profiles, latency, counters, health from sysinfo, outbox
//! counters), signs it with the device key, deflates it and appends it to the sled
//! [`outbox::Outbox`] (so the bound counts bytes as they travel). The
//! uplink ([`uplink`]) publishes what the outbox holds, QoS 1, on
//! `edgefleet/v1/devices/{id}/telemetry`, and removes a record only when the hub's signed ack
//! for its sequence number arrives on `…/ack`. Heartbeats go to `…/health`; the MQTT last will
//! is a signed `online: false` heartbeat. The hub's retained signed assignment bundle on
//! `…/assignment` is applied like one fetched over HTTP (which stays as the fallback).
//!
//! ```text
//! requests ─► WindowRecorder ─close─► TelemetryRecord ─sign─► Outbox (sled, fsync)
//!                                                               │ publish QoS 1 (resend until acked)
//!                                               hub ack ◄─ MQTT ┘
//! ```

pub mod health;
pub mod outbox;
pub mod uplink;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use edgefleet_common::SecretKey;
use edgefleet_common::Signed;
use edgefleet_common::device::ModelRef;
use edgefleet_common::telemetry::{self, Heartbeat, ModelWindow, TelemetryRecord};

use crate::error::{AgentError, AgentResult};
use crate::serve::Registry;
use crate::window::Window;

pub use outbox::Outbox;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds, signs and queues this device's telemetry.
pub struct Telemetry {
    pub device_id: String,
    pub outbox: Outbox,
    key: SecretKey,
    registry: Arc<Registry>,
    health: Mutex<health::HealthSampler>,
    /// When this run started (heartbeats and the last will carry it).
    started_at: u64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Telemetry({}, {:?})", self.device_id, self.outbox)
    }
}

impl Telemetry {
    pub fn new(
        device_id: String,
        key: SecretKey,
        outbox: Outbox,
        registry: Arc<Registry>,
        data_dir: &std::path::Path,
    ) -> Self {
        Self {
            device_id,
            outbox,
            key,
            registry,
            health: Mutex::new(health::HealthSampler::new(data_dir)),
            started_at: crate::now(),
        }
    }

    fn sample_health(&self) -> edgefleet_common::telemetry::Health {
        self.health
            .lock()
            .map(|mut h| h.sample())
            .unwrap_or_default()
    }

    /// Closes every served model's window (and the windows of models swapped out since the
    /// last close) and queues one signed record if any saw a request. Returns its sequence.
    pub fn close_window(&self, now: u64) -> AgentResult<Option<u64>> {
        let mut windows: BTreeMap<(String, u64), Window> = BTreeMap::new();
        let mut add = |model: String, version: u64, w: Window| -> AgentResult<()> {
            match windows.entry((model, version)) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(w);
                }
                // The same version swapped out and back in within one window.
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let have = e.get_mut();
                    have.profile
                        .merge(&w.profile)
                        .map_err(|e| AgentError::Other(e.to_string()))?;
                    have.latency
                        .merge(&w.latency)
                        .map_err(|e| AgentError::Other(e.to_string()))?;
                    have.requests += w.requests;
                    have.errors += w.errors;
                    have.started_at = have.started_at.min(w.started_at);
                }
            }
            Ok(())
        };
        for r in self.registry.take_retired() {
            add(r.model, r.version, r.window)?;
        }
        for m in self.registry.snapshot().values() {
            if let Some(w) = m.window.close(now) {
                add(m.manifest.name.clone(), m.manifest.version, w)?;
            }
        }
        windows.retain(|_, w| w.requests > 0 || w.errors > 0);
        if windows.is_empty() {
            return Ok(None);
        }
        let window_start = windows.values().map(|w| w.started_at).min().unwrap_or(now);
        let models: Vec<ModelWindow> = windows
            .into_iter()
            .map(|((model, version), w)| ModelWindow {
                model,
                version,
                profile: w.profile.to_bytes(),
                latency: Vec::<u8>::from(w.latency),
                requests: w.requests,
                errors: w.errors,
            })
            .collect();
        let health = self.sample_health();
        let build = |models: Vec<ModelWindow>| {
            let health = health.clone();
            move |seq, outbox| -> AgentResult<Vec<u8>> {
                let record = TelemetryRecord {
                    device_id: self.device_id.clone(),
                    seq,
                    window_start: window_start.min(now),
                    window_end: now,
                    models,
                    health,
                    outbox,
                    agent_version: AGENT_VERSION.into(),
                };
                let packed = Signed::sign(&record, &self.key, None)
                    .and_then(|s| s.to_bytes())
                    .map(|signed| telemetry::pack_record(&signed))?;
                if packed.len() > telemetry::DEFAULT_MAX_RECORD_BYTES {
                    return Err(AgentError::Other(format!(
                        "a telemetry record of {} bytes is over the {} the hub accepts",
                        packed.len(),
                        telemetry::DEFAULT_MAX_RECORD_BYTES
                    )));
                }
                Ok(packed)
            }
        };
        // One record for the window; if it would be over the hub's limit (many models, very
        // wide ones), one record per model; a single model's window over the limit can never
        // be accepted and is dropped, counted.
        let estimate: usize = models
            .iter()
            .map(|m| m.profile.len() + m.latency.len())
            .sum();
        let seq = if estimate < telemetry::DEFAULT_MAX_RECORD_BYTES * 3 / 4 || models.len() == 1 {
            match self.outbox.append(build(models)) {
                Ok(seq) => seq,
                Err(e) => {
                    self.outbox.count_dropped(1);
                    return Err(e);
                }
            }
        } else {
            let mut last = 0;
            for m in models {
                let (name, version) = (m.model.clone(), m.version);
                match self.outbox.append(build(vec![m])) {
                    Ok(seq) => last = seq,
                    Err(error) => {
                        self.outbox.count_dropped(1);
                        tracing::error!(%error, model = %name, version, "telemetry window dropped");
                    }
                }
            }
            last
        };
        tracing::debug!(seq, "telemetry window closed and queued");
        Ok(Some(seq))
    }

    /// A signed heartbeat: with health when online, without (the last will) when not.
    pub fn heartbeat(&self, online: bool, now: u64) -> AgentResult<Vec<u8>> {
        let active = self
            .registry
            .snapshot()
            .values()
            .map(|m| ModelRef {
                name: m.manifest.name.clone(),
                version: m.manifest.version,
            })
            .collect();
        let hb = Heartbeat {
            device_id: self.device_id.clone(),
            at: now,
            started_at: self.started_at,
            online,
            health: online.then(|| self.sample_health()),
            active,
            outbox: self.outbox.stats(),
            agent_version: AGENT_VERSION.into(),
        };
        Ok(Signed::sign(&hb, &self.key, None)?.to_bytes()?)
    }
}

/// A closed window of a model that was swapped out.
#[derive(Debug)]
pub struct RetiredWindow {
    pub model: String,
    pub version: u64,
    pub window: Window,
}

/// The agent's Prometheus exposition: served models, the current windows' counts, the outbox.
pub fn exposition(registry: &Registry) -> Result<String, std::fmt::Error> {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type Labels = Vec<(String, String)>;
    let mut r = prometheus_client::registry::Registry::with_prefix("edgefleet_agent");
    let (info, requests, errors) = (
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
    );
    for m in registry.snapshot().values() {
        let labels: Labels = vec![
            ("model".into(), m.manifest.name.clone()),
            ("version".into(), m.manifest.version.to_string()),
        ];
        info.get_or_create(&labels).set(1);
        let (req, err) = m.window.counts();
        requests.get_or_create(&labels).set(req as i64);
        errors.get_or_create(&labels).set(err as i64);
    }
    r.register("model_info", "Models served (1 per model version)", info);
    r.register(
        "window_requests",
        "Successful inferences in the current telemetry window",
        requests,
    );
    r.register(
        "window_errors",
        "Refused or failed inferences in the current telemetry window",
        errors,
    );
    if let Some(t) = registry.telemetry.get().and_then(std::sync::Weak::upgrade) {
        let stats = t.outbox.stats();
        let gauge = |v: u64| {
            let g = Gauge::<i64>::default();
            g.set(v as i64);
            g
        };
        r.register(
            "outbox_queued",
            "Telemetry records waiting for the hub's ack",
            gauge(stats.queued),
        );
        r.register(
            "outbox_bytes",
            "Bytes of telemetry records waiting",
            gauge(stats.queued_bytes),
        );
        let dropped = Counter::<u64>::default();
        dropped.inc_by(stats.dropped);
        r.register(
            "outbox_dropped",
            "Telemetry records dropped because the outbox was full",
            dropped,
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r)?;
    Ok(text)
}
