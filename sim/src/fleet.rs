//! The fleet: what every device shares (configuration, trust root, HTTP client and its
//! concurrency bound, the outbox database, caches) and the handle a caller queries and stops.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use edgefleet_agent::download::{self, Limits};
use edgefleet_agent::error::{AgentError, AgentResult};
use edgefleet_agent::hub_client::HubClient;
use edgefleet_agent::telemetry::Outbox;
use edgefleet_common::telemetry::BrokerUrl;
use edgefleet_common::{Digest, ModelManifest, PublicKey, TrustRoot};
use tokio::sync::{OnceCell, Semaphore, watch};

use crate::config::SimConfig;
use crate::device::Device;
use crate::traffic::Plan;

/// Counters the devices keep, read by [`Fleet::snapshot`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub enrolled: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub records_sent: AtomicU64,
    pub records_acked: AtomicU64,
    /// Devices whose last update failed (their `last_error` is set).
    pub failing: AtomicI64,
    /// Devices serving each model version.
    active: Mutex<BTreeMap<(String, u64), i64>>,
}

impl Stats {
    pub fn count_active(&self, model: &str, version: u64, delta: i64) {
        if let Ok(mut a) = self.active.lock() {
            let n = a.entry((model.to_owned(), version)).or_insert(0);
            *n += delta;
            if *n == 0 {
                a.remove(&(model.to_owned(), version));
            }
        }
    }
}

/// The outcome of one artifact's download, shared by every device that installs it.
type Download = OnceCell<Result<(), String>>;

pub(crate) struct Shared {
    pub config: SimConfig,
    pub root: TrustRoot,
    pub broker: BrokerUrl,
    pub http: reqwest::Client,
    /// Bounds the HTTP requests in flight over all devices.
    pub permits: Semaphore,
    pub stats: Stats,
    /// Which devices fail installs of `--fail-install-version`.
    pub failing: Vec<bool>,
    pub db: sled::Db,
    pub outboxes: Mutex<Vec<Arc<Outbox>>>,
    staging: PathBuf,
    /// One download per artifact digest, whatever the number of devices.
    artifacts: Mutex<HashMap<Digest, Arc<Download>>>,
    /// One traffic plan per model version.
    plans: Mutex<HashMap<(String, u64), Arc<Plan>>>,
}

impl Shared {
    pub fn plan(&self, m: &ModelManifest) -> Arc<Plan> {
        let key = (m.name.clone(), m.version);
        match self.plans.lock() {
            Ok(mut plans) => plans
                .entry(key)
                .or_insert_with(|| Arc::new(Plan::new(m, &self.config)))
                .clone(),
            Err(_) => Arc::new(Plan::new(m, &self.config)),
        }
    }

    /// Downloads `m`'s artifact with the agent's resumable, capped, verified download — once
    /// per digest: every other device waits for that download and shares its outcome.
    pub async fn download(&self, hub: &HubClient, m: &ModelManifest, now: u64) -> AgentResult<()> {
        let cell = self
            .artifacts
            .lock()
            .map_err(|_| AgentError::Other("artifact cache poisoned".into()))?
            .entry(m.artifact.sha256)
            .or_default()
            .clone();
        let outcome = cell
            .get_or_init(|| async {
                let _permit = self.permits.acquire().await;
                let defaults = edgefleet_agent::AgentConfig::default();
                let limits = Limits {
                    min_bytes_per_sec: defaults.download_min_bytes_per_sec,
                    window: Duration::from_secs(defaults.download_rate_window_secs),
                    deadline: Duration::from_secs(defaults.download_deadline_secs),
                    max_bytes: defaults.max_model_bytes,
                };
                let url = hub.url(&format!(
                    "models/{}/versions/{}/artifact",
                    m.name, m.version
                ));
                match download::fetch(hub, now, &url, &self.staging, &m.artifact, &limits).await {
                    Ok(path) => {
                        let _ = tokio::fs::remove_file(path).await;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .clone();
        outcome.map_err(AgentError::Download)
    }
}

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
            "; failing {}; requests {} (errors {}); records sent {} acked {}; outbox backlog {} dropped {}",
            self.failing,
            self.requests,
            self.errors,
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
        let shared = Arc::new(Shared {
            permits: Semaphore::new(config.http_concurrency as usize),
            root,
            broker,
            http,
            stats: Stats::default(),
            failing,
            db,
            outboxes: Mutex::new(Vec::with_capacity(config.devices as usize)),
            staging,
            artifacts: Mutex::default(),
            plans: Mutex::default(),
            config,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(shared.config.devices as usize);
        for i in 0..shared.config.devices as usize {
            let device = Device::new(shared.clone(), i)?;
            tasks.push(tokio::spawn(device.run(stop_rx.clone())));
        }
        Ok(Fleet {
            shared,
            stop,
            tasks,
            _tmp: tmp,
        })
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
            active: s
                .active
                .lock()
                .map(|a| {
                    a.iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(k, n)| (k.clone(), *n as u64))
                        .collect()
                })
                .unwrap_or_default(),
            failing: s.failing.load(Ordering::Relaxed).max(0) as u64,
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            records_sent: s.records_sent.load(Ordering::Relaxed),
            records_acked: s.records_acked.load(Ordering::Relaxed),
            outbox_backlog: backlog,
            outbox_dropped: dropped,
        }
    }

    /// Stops every device (each closes its current window into the outbox and disconnects)
    /// and returns the last snapshot.
    pub async fn stop(mut self) -> Snapshot {
        let _ = self.stop.send(true);
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
