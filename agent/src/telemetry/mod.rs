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
use std::collections::btree_map::Entry;
use std::sync::{Arc, Mutex};

use edgefleet_common::SecretKey;
use edgefleet_common::Signed;
use edgefleet_common::device::ModelRef;
use edgefleet_common::quality::ModelQuality;
use edgefleet_common::telemetry::{
    self, Health, Heartbeat, ModelWindow, OutboxStats, TelemetryRecord,
};

use crate::active::ActiveModels;
use crate::error::{AgentError, AgentResult};
use crate::feedback::Feedback;
use crate::window::Window;

pub use outbox::Outbox;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds, signs and queues this device's telemetry.
pub struct Telemetry {
    pub device_id: String,
    pub outbox: Outbox,
    key: SecretKey,
    models: Arc<ActiveModels>,
    health: Mutex<health::HealthSampler>,
    /// When this run started (heartbeats and the last will carry it).
    started_at: u64,
    /// Prediction quality from ground truth: each close takes the window's into the record.
    feedback: Option<Arc<Feedback>>,
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
        models: Arc<ActiveModels>,
        data_dir: &std::path::Path,
    ) -> Self {
        Self {
            device_id,
            outbox,
            key,
            models,
            health: Mutex::new(health::HealthSampler::new(data_dir)),
            started_at: crate::now(),
            feedback: None,
        }
    }

    /// Reports the quality `feedback` scores: each window's record carries it.
    pub fn with_quality(mut self, feedback: Arc<Feedback>) -> Self {
        self.feedback = Some(feedback);
        self
    }

    /// The feedback this telemetry reports the quality of, if any.
    pub fn feedback(&self) -> Option<&Arc<Feedback>> {
        self.feedback.as_ref()
    }

    fn sample_health(&self) -> edgefleet_common::telemetry::Health {
        self.health
            .lock()
            .map(|mut h| h.sample())
            .unwrap_or_default()
    }

    /// Closes every served model's window (and the windows of models swapped out since the
    /// last close) and the quality book's window, and queues one signed record if any saw a
    /// request or feedback. Returns its sequence.
    pub fn close_window(&self, now: u64) -> AgentResult<Option<u64>> {
        // Samples first: their sequence numbers come before the record's, but the uplink
        // publishes records ahead of samples, so drift telemetry never waits behind them.
        self.queue_samples(now);
        let windows = self.collect_windows(now)?;
        // The book's window ends now to the millisecond: a prediction made after this is not
        // late for the next window's feedback.
        let (quality, quality_start) = match &self.feedback {
            Some(f) => {
                let start = f.book().window_start_ms() / 1000;
                (f.book().take(crate::now_ms()), start)
            }
            None => (Vec::new(), now),
        };
        if windows.is_empty() && quality.is_empty() {
            return Ok(None);
        }
        let window_start = windows
            .values()
            .map(|w| w.started_at)
            .min()
            .unwrap_or(quality_start);
        let models: Vec<ModelWindow> = windows
            .into_iter()
            .map(|((model, version), w)| model_window(model, version, w))
            .collect();
        let bounds = (window_start.min(now), now);
        let seq = self.append_windows(models, quality, bounds, &self.sample_health())?;
        tracing::debug!(seq, "telemetry window closed and queued");
        Ok(Some(seq))
    }

    /// Signs the window's captured samples (one batch per model version) into the outbox,
    /// marked [`outbox::SAMPLES`]. A batch that cannot be queued is dropped and counted.
    fn queue_samples(&self, now: u64) {
        let Some(f) = &self.feedback else { return };
        for mut batch in f.capture().take(now) {
            batch.device_id = self.device_id.clone();
            let (model, version, rows) = (batch.model.clone(), batch.version, batch.rows.len());
            let appended = self.outbox.append(|seq, _| {
                batch.seq = seq;
                let signed = Signed::sign(&batch, &self.key, None)?.to_bytes()?;
                let packed = telemetry::pack_record(&signed);
                if packed.len() > telemetry::DEFAULT_MAX_RECORD_BYTES {
                    return Err(AgentError::Other(format!(
                        "a sample batch of {} bytes is over the {} the hub accepts; lower the capture's max_rows",
                        packed.len(),
                        telemetry::DEFAULT_MAX_RECORD_BYTES
                    )));
                }
                Ok([&[outbox::SAMPLES][..], &packed].concat())
            });
            match appended {
                Ok(seq) => tracing::debug!(seq, %model, version, rows, "samples queued"),
                Err(error) => {
                    self.outbox.count_dropped(1);
                    tracing::warn!(%error, %model, version, "samples dropped");
                }
            }
        }
    }

    /// The retired windows and the served models' current ones, closed at `now`, one per model
    /// version; windows that saw no request are left out.
    fn collect_windows(&self, now: u64) -> AgentResult<BTreeMap<(String, u64), Window>> {
        let mut windows: BTreeMap<(String, u64), Window> = BTreeMap::new();
        let mut add = |model: String, version: u64, w: Window| -> AgentResult<()> {
            match windows.entry((model, version)) {
                Entry::Vacant(e) => {
                    e.insert(w);
                }
                // The same version swapped out and back in within one window.
                Entry::Occupied(mut e) => {
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
        for r in self.models.take_retired() {
            add(r.model, r.version, r.window)?;
        }
        for s in self.models.snapshot().values() {
            if let Some(w) = s.window.close(now) {
                add(s.model.manifest.name.clone(), s.model.manifest.version, w)?;
            }
        }
        windows.retain(|_, w| w.requests > 0 || w.errors > 0);
        Ok(windows)
    }

    /// Queues the windows and the quality: one record; if it would be over the hub's limit
    /// (many models, very wide ones), one record per model and one for the quality. A single
    /// model's window over the limit can never be accepted and is dropped, counted. Returns the
    /// last sequence queued.
    fn append_windows(
        &self,
        models: Vec<ModelWindow>,
        quality: Vec<ModelQuality>,
        bounds: (u64, u64),
        health: &Health,
    ) -> AgentResult<u64> {
        let estimate: usize = models
            .iter()
            .map(|m| m.profile.len() + m.latency.len())
            .sum::<usize>()
            + quality
                .iter()
                .map(|q| postcard::to_allocvec(q).map_or(0, |b| b.len()))
                .sum::<usize>();
        if estimate < telemetry::DEFAULT_MAX_RECORD_BYTES * 3 / 4
            || models.len() + usize::from(!quality.is_empty()) == 1
        {
            let contents = Contents {
                models,
                quality,
                bounds,
            };
            return self
                .outbox
                .append(|seq, outbox| self.pack(seq, outbox, contents, health.clone()))
                .inspect_err(|_| self.outbox.count_dropped(1));
        }
        let mut last = 0;
        let parts = models
            .into_iter()
            .map(|m| Contents {
                models: vec![m],
                quality: Vec::new(),
                bounds,
            })
            .chain((!quality.is_empty()).then(|| Contents {
                models: Vec::new(),
                quality,
                bounds,
            }));
        for contents in parts {
            let what = contents
                .models
                .first()
                .map_or("prediction quality".to_owned(), |m| {
                    format!("model {} v{}", m.model, m.version)
                });
            match self
                .outbox
                .append(|seq, outbox| self.pack(seq, outbox, contents, health.clone()))
            {
                Ok(seq) => last = seq,
                Err(error) => {
                    self.outbox.count_dropped(1);
                    tracing::error!(%error, %what, "telemetry window dropped");
                }
            }
        }
        Ok(last)
    }

    /// One signed, packed record with sequence number `seq` (see [`pack_record`]).
    fn pack(
        &self,
        seq: u64,
        outbox: OutboxStats,
        contents: Contents,
        health: Health,
    ) -> AgentResult<Vec<u8>> {
        pack_record(&self.device_id, &self.key, seq, outbox, contents, health)
    }

    /// A signed heartbeat: with health when online, without (the last will) when not.
    pub fn heartbeat(&self, online: bool, now: u64) -> AgentResult<Vec<u8>> {
        let active = self
            .models
            .snapshot()
            .values()
            .map(|s| ModelRef {
                name: s.model.manifest.name.clone(),
                version: s.model.manifest.version,
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

/// A closed window of `model` `version` as a record carries it.
pub fn model_window(model: String, version: u64, w: Window) -> ModelWindow {
    ModelWindow {
        model,
        version,
        profile: w.profile.to_bytes(),
        latency: Vec::<u8>::from(w.latency),
        requests: w.requests,
        errors: w.errors,
    }
}

/// What one record reports: the closed windows, the quality from feedback, the bounds.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub models: Vec<ModelWindow>,
    pub quality: Vec<ModelQuality>,
    /// (window start, window end), seconds.
    pub bounds: (u64, u64),
}

/// One record of `device_id` with sequence number `seq`, signed with `key` and packed for the
/// wire (deflated); refused if it is over the size the hub accepts.
pub fn pack_record(
    device_id: &str,
    key: &SecretKey,
    seq: u64,
    outbox: OutboxStats,
    contents: Contents,
    health: Health,
) -> AgentResult<Vec<u8>> {
    let record = TelemetryRecord {
        device_id: device_id.to_owned(),
        seq,
        window_start: contents.bounds.0,
        window_end: contents.bounds.1,
        models: contents.models,
        health,
        outbox,
        agent_version: AGENT_VERSION.into(),
        quality: contents.quality,
    };
    let packed = Signed::sign(&record, key, None)
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

/// The agent's Prometheus exposition: served models, the current windows' counts, and, when
/// given, the outbox, the count of stale assignments the updater ignored and the feedback
/// store's gauges and counters.
pub fn exposition(
    models: &ActiveModels,
    outbox: Option<OutboxStats>,
    stale_assignments: Option<u64>,
    feedback: Option<crate::feedback::Stats>,
) -> Result<String, std::fmt::Error> {
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
    for s in models.snapshot().values() {
        let labels: Labels = vec![
            ("model".into(), s.model.manifest.name.clone()),
            ("version".into(), s.model.manifest.version.to_string()),
        ];
        info.get_or_create(&labels).set(1);
        let (req, err) = s.window.counts();
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
    if let Some(stats) = outbox {
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
    if let Some(n) = stale_assignments {
        let stale = Counter::<u64>::default();
        stale.inc_by(n);
        r.register(
            "stale_assignments",
            "Older assignments ignored because they name the version already served",
            stale,
        );
    }
    if let Some(f) = feedback {
        register_feedback(&mut r, f);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r)?;
    Ok(text)
}

/// The feedback store's gauges and counters.
fn register_feedback(r: &mut prometheus_client::registry::Registry, f: crate::feedback::Stats) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    r.register(
        "feedback_predictions",
        "Predictions held for feedback (in the store)",
        gauge(f.held),
    );
    r.register(
        "feedback_predictions_bytes",
        "Bytes of the predictions held for feedback",
        gauge(f.held_bytes),
    );
    r.register(
        "feedback_queued",
        "Predictions queued for the feedback store, not yet written",
        gauge(f.queued),
    );
    r.register(
        "capture_models",
        "Models whose training samples the hub asked this device to capture (instructions in force)",
        gauge(f.capturing),
    );
    let evicted = Family::<Vec<(String, String)>, Counter>::default();
    for (bound, n) in [
        ("feedback_max_predictions", f.evicted.count),
        ("feedback_max_bytes", f.evicted.bytes),
        ("feedback_max_age_secs", f.evicted.age),
    ] {
        evicted
            .get_or_create(&vec![("bound".into(), bound.into())])
            .inc_by(n);
    }
    r.register(
        "feedback_evicted",
        "Predictions removed without feedback to stay within a bound, by bound",
        evicted,
    );
    r.register(
        "feedback_dropped",
        "Predictions dropped because the feedback queue was full",
        counter(f.dropped),
    );
    r.register(
        "feedback_not_kept",
        "Predictions with an id not kept (id too long, output too large or not scorable)",
        counter(f.not_kept),
    );
    r.register(
        "feedback_matched",
        "Feedback rows matched to a prediction and scored",
        counter(f.matched),
    );
    r.register(
        "feedback_late",
        "Matched feedback rows whose prediction was made in an earlier telemetry window",
        counter(f.late),
    );
    r.register(
        "feedback_unknown",
        "Feedback items for ids no prediction held (never recorded, expired or evicted)",
        counter(f.unknown),
    );
    r.register(
        "feedback_duplicate",
        "Feedback rows refused because the row already had its feedback",
        counter(f.duplicate),
    );
}
