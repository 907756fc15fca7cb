//! The fleet: the handle a caller starts, queries and stops; it opens what every device
//! shares ([`Shared`]) and starts the devices.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use edgefleet_agent::hub_client::HubClient;
use edgefleet_common::telemetry::BrokerUrl;
use edgefleet_common::{PublicKey, TrustRoot};
use tokio::sync::watch;

use crate::config::SimConfig;
use crate::device::Device;
use crate::shared::Shared;

/// What the fleet looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub devices: u64,
    /// Devices that enrolled and opened a session.
    pub enrolled: u64,
    /// Devices serving each (model, version).
    pub active: BTreeMap<(String, u64), u64>,
    /// Devices whose last update failed.
    pub failing: u64,
    pub requests: u64,
    pub errors: u64,
    /// Telemetry records published (once each; resends not counted) and acked by the hub.
    pub records_sent: u64,
    pub records_acked: u64,
    /// Requests whose simulated truth came back (`--feedback`).
    pub feedback: u64,
    /// Records in the outboxes, waiting for an ack.
    pub outbox_backlog: u64,
    pub outbox_dropped: u64,
}

impl Snapshot {
    /// Devices serving `model` `version`.
    pub fn active(&self, model: &str, version: u64) -> u64 {
        self.active
            .get(&(model.to_owned(), version))
            .copied()
            .unwrap_or(0)
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "enrolled {}/{}; active", self.enrolled, self.devices)?;
        if self.active.is_empty() {
            write!(f, " none")?;
        }
        for ((m, v), n) in &self.active {
            write!(f, " {m} v{v}: {n}")?;
        }
        write!(
            f,
            "; failing {}; requests {} (errors {}, feedback {}); records sent {} acked {}; outbox backlog {} dropped {}",
            self.failing,
            self.requests,
            self.errors,
            self.feedback,
            self.records_sent,
            self.records_acked,
            self.outbox_backlog,
            self.outbox_dropped
        )
    }
}

/// A running fleet of simulated devices.
pub struct Fleet {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The task applying the `--shift` steps still to come.
    shift_timers: Vec<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fleet({})", self.snapshot())
    }
}

/// How long [`Fleet::stop`] waits for the devices to close their windows.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

impl Fleet {
    /// Starts `config.devices` devices (each enrolls, then follows its assignments).
    pub async fn start(config: SimConfig) -> anyhow::Result<Fleet> {
        config.validate().map_err(anyhow::Error::msg)?;
        raise_open_files(config.devices);
        let pem = tokio::fs::read_to_string(&config.root_key)
            .await
            .with_context(|| format!("cannot read --root-key {}", config.root_key.display()))?;
        let root = TrustRoot::new(
            PublicKey::parse(&pem)
                .with_context(|| format!("--root-key {}", config.root_key.display()))?,
        );
        let broker = BrokerUrl::parse(&config.mqtt).map_err(anyhow::Error::msg)?;
        let (tmp, dir) = match &config.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new().prefix("edgefleet-sim").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let staging = dir.join("staging");
        tokio::fs::create_dir_all(&staging)
            .await
            .with_context(|| format!("cannot create {}", staging.display()))?;
        let db_path = dir.join("outboxes");
        let db = tokio::task::spawn_blocking(move || {
            sled::Config::new()
                .path(&db_path)
                .cache_capacity(64 << 20)
                .open()
                .with_context(|| format!("cannot open the outbox database {}", db_path.display()))
        })
        .await??;
        let http = HubClient::http_client()?;
        let failing = match (config.fail_install_version, config.fail_install_fraction) {
            (Some(_), Some(f)) => crate::rng::failing_set(config.seed, config.devices as usize, f),
            _ => vec![false; config.devices as usize],
        };
        let shared = Arc::new(Shared::new(
            config, root, broker, http, failing, db, staging,
        ));
        // Steps at 0 s are in force before any device draws a request.
        for s in shared.config.shifts.iter().filter(|s| s.after_secs == 0) {
            shared.set_shift(&s.column, s.delta);
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(shared.config.devices as usize);
        for i in 0..shared.config.devices as usize {
            let device = Device::new(shared.clone(), i)?;
            tasks.push(tokio::spawn(device.run(stop_rx.clone())));
        }
        let shift_timers = shift_steps(&shared).into_iter().collect();
        Ok(Fleet {
            shared,
            stop,
            tasks,
            shift_timers,
            _tmp: tmp,
        })
    }

    /// From now on, every device's values of input column `column` move by `delta` (0: back
    /// to the world the fleet started in), as `--shift` does at its time.
    pub fn shift(&self, column: &str, delta: f64) {
        self.shared.set_shift(column, delta);
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = &self.shared.stats;
        let (mut backlog, mut dropped) = (0, 0);
        if let Ok(outboxes) = self.shared.outboxes.lock() {
            for o in outboxes.iter() {
                let st = o.stats();
                backlog += st.queued;
                dropped += st.dropped;
            }
        }
        Snapshot {
            devices: u64::from(self.shared.config.devices),
            enrolled: s.enrolled.load(Ordering::Relaxed),
            active: s.active(),
            failing: s.failing.load(Ordering::Relaxed).max(0) as u64,
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            records_sent: s.records_sent.load(Ordering::Relaxed),
            records_acked: s.records_acked.load(Ordering::Relaxed),
            feedback: s.feedback.load(Ordering::Relaxed),
            outbox_backlog: backlog,
            outbox_dropped: dropped,
        }
    }

    /// Stops every device (each closes its current window into the outbox and disconnects)
    /// and returns the last snapshot.
    pub async fn stop(mut self) -> Snapshot {
        let _ = self.stop.send(true);
        for t in self.shift_timers.drain(..) {
            t.abort();
        }
        let tasks = std::mem::take(&mut self.tasks);
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(STOP_DEADLINE, all).await.is_err() {
            tracing::warn!("some devices did not stop within {STOP_DEADLINE:?}");
        }
        let db = self.shared.db.clone();
        let _ = tokio::task::spawn_blocking(move || db.flush()).await;
        self.snapshot()
    }
}

/// The task that applies the later `--shift` steps in order of time, steps of the same time
/// in the order given (the later one wins); none if there are none.
fn shift_steps(shared: &Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let mut steps: Vec<_> = shared
        .config
        .shifts
        .iter()
        .filter(|s| s.after_secs > 0)
        .cloned()
        .collect();
    if steps.is_empty() {
        return None;
    }
    // Stable: steps of the same time keep their command-line order.
    steps.sort_by_key(|s| s.after_secs);
    let shared = shared.clone();
    let start = tokio::time::Instant::now();
    Some(tokio::spawn(async move {
        for s in steps {
            tokio::time::sleep_until(start + Duration::from_secs(s.after_secs)).await;
            tracing::info!(column = %s.column, delta = s.delta, "input shift");
            shared.set_shift(&s.column, s.delta);
        }
    }))
}

/// Each device holds one MQTT connection (and HTTP ones while it talks to the hub): raises the
/// soft open-file limit to the hard one, and warns if that is still too low.
fn raise_open_files(devices: u32) {
    let need = u64::from(devices) + 1024;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < need => tracing::warn!(
            limit = n,
            need,
            "the open-file limit is lower than the devices need; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}
