//! What every device of a fleet shares: the configuration, the trust root, the HTTP client and
//! its concurrency bound, the outbox database, one download per artifact digest, one traffic
//! plan per model version and each model's world, the input shifts in force, and the counters a [`crate::Fleet`] snapshot reads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use edgefleet_agent::download::{self, Limits};
use edgefleet_agent::error::{AgentError, AgentResult};
use edgefleet_agent::hub_client::HubClient;
use edgefleet_agent::telemetry::Outbox;
use edgefleet_common::telemetry::BrokerUrl;
use edgefleet_common::{Digest, ModelManifest, TrustRoot};
use tokio::sync::{OnceCell, Semaphore};

use crate::config::SimConfig;
use crate::traffic::{Plan, Shifts};

/// Counters the devices keep, read by [`crate::Fleet::snapshot`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub enrolled: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub records_sent: AtomicU64,
    pub records_acked: AtomicU64,
    /// Requests whose simulated truth came back (`--feedback`).
    pub feedback: AtomicU64,
    /// Devices whose last update failed (their `last_error` is set).
    pub failing: AtomicI64,
    /// Devices serving each model version.
    active: Mutex<BTreeMap<(String, u64), i64>>,
}

impl Stats {
    /// Devices serving each model version (those served by at least one).
    pub fn active(&self) -> BTreeMap<(String, u64), u64> {
        self.active
            .lock()
            .map(|a| {
                a.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| (k.clone(), *n as u64))
                    .collect()
            })
            .unwrap_or_default()
    }

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

#[derive(Default)]
struct Plans {
    by_version: HashMap<(String, u64), Arc<Plan>>,
    /// Per model, the plan of the first version a device of this process served: the world.
    worlds: HashMap<String, Arc<Plan>>,
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
    /// One traffic plan per model version, and the world each model's requests come from.
    plans: Mutex<Plans>,
    /// The input shifts in force.
    shifts: RwLock<Shifts>,
}

impl Shared {
    pub fn new(
        config: SimConfig,
        root: TrustRoot,
        broker: BrokerUrl,
        http: reqwest::Client,
        failing: Vec<bool>,
        db: sled::Db,
        staging: PathBuf,
    ) -> Self {
        // The outboxes' database lives until the process exits: the last `sled::Db` clone
        // flushes in its drop, and sled 0.34's flush can wait forever (seen when a device
        // task dropped the last clone inside the runtime: the test's runtime never shut
        // down). The simulator's outboxes are not durable anyway.
        std::mem::forget(db.clone());
        Self {
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
            shifts: RwLock::default(),
            config,
        }
    }

    /// `m`'s plan (made once per version): its requests come from the world of the model's
    /// first version served (the first a device of this process activated).
    pub fn plan(&self, m: &ModelManifest) -> Arc<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let Plans { by_version, worlds } = &mut *plans;
        let key = (m.name.clone(), m.version);
        if let Some(p) = by_version.get(&key) {
            return p.clone();
        }
        let plan = Arc::new(Plan::new(
            m,
            worlds.get(&m.name).map(|w| &**w),
            &self.config,
        ));
        worlds.entry(m.name.clone()).or_insert_with(|| plan.clone());
        by_version.insert(key, plan.clone());
        plan
    }

    /// The input shifts in force now.
    pub fn shifts(&self) -> Shifts {
        self.shifts
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// From now on, `column`'s values move by `delta` (0: back to the world as it was).
    pub fn set_shift(&self, column: &str, delta: f64) {
        let mut s = self.shifts.write().unwrap_or_else(|p| p.into_inner());
        if delta == 0.0 {
            s.remove(column);
        } else {
            s.insert(column.to_owned(), delta);
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
