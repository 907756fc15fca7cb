//! The demo's fleet on this machine: keys made for the occasion, an embedded hub (its broker on
//! loopback), real agents, each in this process on a port of its own, and simulated shops from
//! the fleet simulator (`edgefleet-sim`) in this process too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_common::trust::{Delegation, Permission};
use edgefleet_common::{SecretKey, Signed, armor};

/// The token the demo's agents enroll with (approved at once).
const ENROLL_TOKEN: &str = "edgefleet-demo-enrollment-token";

/// Something running in this process until told to stop.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub struct Fleet {
    pub hub_url: String,
    pub token: String,
    pub root: SecretKey,
    pub http: reqwest::Client,
    /// Each shop's id and OIP base URL.
    pub shops: Vec<(String, String)>,
    /// The simulated shops' ids, and the simulator running them.
    pub sim_shops: Vec<String>,
    pub sim: Option<edgefleet_sim::Fleet>,
    hub: Running,
    agents: Vec<Running>,
}

/// A loopback address whose port was free a moment ago (the broker binds it itself).
fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn write_private(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, key.to_pem()?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

impl Fleet {
    /// Starts the hub in `dir` (keys, data) with `trainer` as its trainer, then `shops` agents
    /// and `sim_shops` simulated ones.
    pub async fn start(
        dir: &Path,
        trainer: PathBuf,
        shops: usize,
        sim_shops: usize,
        window_secs: u64,
    ) -> anyhow::Result<Self> {
        let root = SecretKey::generate()?;
        let hub_key = SecretKey::generate()?;
        let root_pub = dir.join("root.pub");
        std::fs::write(&root_pub, root.public().to_pem()?)?;
        write_private(&dir.join("hub.key"), &hub_key)?;
        let now = edgefleet_hub::now();
        let delegation = Signed::sign(
            &Delegation {
                key: hub_key.public(),
                label: "demo hub".into(),
                patterns: vec!["*".into()],
                permissions: vec![Permission::Manifests, Permission::Assignments],
                issued_at: now - 60,
                expires_at: now + 7 * 86_400,
            },
            &root,
            None,
        )?;
        std::fs::write(
            dir.join("hub.delegation"),
            armor::encode("DELEGATION", &delegation.to_bytes()?),
        )?;
        let config = edgefleet_hub::HubConfig {
            data_dir: dir.join("hub"),
            root_key: root_pub.clone(),
            signing_key: dir.join("hub.key"),
            delegation: dir.join("hub.delegation"),
            enrollment_token: Some(ENROLL_TOKEN.into()),
            mqtt_enabled: true,
            mqtt_listen: free_addr()?,
            trainer_command: vec![trainer.display().to_string()],
            ..Default::default()
        };
        let mqtt = format!("mqtt://{}", config.mqtt_listen);
        let loaded = config
            .clone()
            .validate()
            .map_err(|e| anyhow::anyhow!("the demo hub's configuration: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let hub_url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(edgefleet_hub::run(loaded, listener, async {
            let _ = rx.await;
        }));
        let hub = Running {
            stop: Some(tx),
            task,
        };
        let token_path = config.data_dir.join(edgefleet_hub::ADMIN_TOKEN_FILE);
        let token = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&token_path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        })
        .await
        .context("the hub did not start (no admin token)")?;
        let mut fleet = Fleet {
            hub_url,
            token,
            root,
            // Every call is bounded: a hung hub or shop ends the demo with an error, never a hang.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            shops: Vec::new(),
            sim_shops: Vec::new(),
            sim: None,
            hub,
            agents: Vec::new(),
        };
        for i in 1..=shops {
            let id = format!("shop-{i}");
            let data_dir = dir.join(&id);
            std::fs::create_dir_all(&data_dir)?;
            let agent = edgefleet_agent::AgentConfig {
                device_id: id.clone(),
                tags: vec!["shops".into()],
                hub_url: fleet.hub_url.clone(),
                data_dir,
                root_key: root_pub.clone(),
                enrollment_token: Some(ENROLL_TOKEN.into()),
                poll_interval_secs: 2,
                mqtt_url: mqtt.clone(),
                telemetry_window_secs: window_secs,
                heartbeat_secs: 1,
                telemetry_resend_secs: 2,
                ..Default::default()
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(edgefleet_agent::run(agent, listener, async {
                let _ = rx.await;
            }));
            fleet.agents.push(Running {
                stop: Some(tx),
                task,
            });
            fleet.shops.push((id, url));
        }
        if sim_shops > 0 {
            let config = sim_config(
                &fleet.hub_url,
                &mqtt,
                &root_pub,
                dir,
                sim_shops,
                window_secs,
            );
            fleet.sim_shops = (0..sim_shops).map(|i| config.device_id(i)).collect();
            fleet.sim = Some(
                edgefleet_sim::Fleet::start(config)
                    .await
                    .context("starting the simulated shops")?,
            );
        }
        Ok(fleet)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.hub_url)
    }

    /// An admin API call; the JSON answer, or the hub's error.
    pub async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let r = req.bearer_auth(&self.token).send().await?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("{status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(self.http.get(self.api(path))).await
    }

    pub async fn stop(self) {
        if let Some(sim) = self.sim {
            sim.stop().await;
        }
        for a in self.agents {
            a.stop().await;
        }
        self.hub.stop().await;
    }
}

/// The simulated shops: the agent's own enrollment, assignment, telemetry and rollout code
/// without tract, 20 requests a second each with their truth at once. Their inputs come from
/// v1's training reference until the scenario's shock moves fuel prices as the real shops' move;
/// their error grows with how far the inputs fall outside the served version's training range
/// (the simulator's `--error-per-iqr`), so, like the real shops, they err on v1 after the shock
/// and recover on a version trained on it.
fn sim_config(
    hub_url: &str,
    mqtt: &str,
    root_pub: &Path,
    dir: &Path,
    devices: usize,
    window_secs: u64,
) -> edgefleet_sim::SimConfig {
    let mut c =
        edgefleet_sim::SimConfig::new(hub_url, mqtt, root_pub.to_path_buf(), devices as u32);
    c.enroll_token = Some(ENROLL_TOKEN.into());
    c.tags = vec!["shops".into()];
    c.id_prefix = "sim-shop".into();
    c.seed = 7;
    c.rate = 20.0;
    c.window_secs = window_secs;
    c.heartbeat_secs = 1;
    c.poll_secs = 2;
    c.resend_secs = 2;
    c.report_every = 0;
    // About a shop's own latency, so the rollout's latency gate compares like with like.
    c.latency_ms = 5.0;
    c.base_error_rate = 0.0;
    c.feedback = 1.0;
    // The real shops' demand noise (±2 units) and their v1 error after the shock (fuel 0.4–0.8
    // above what v1 saw, its reference's interquartile range 0.2: 2–4 units of 4).
    c.truth_sd = 1.2;
    c.error_per_iqr = 4.0;
    c.data_dir = Some(dir.join("sim"));
    c
}

/// Polls `f` every 100 ms until it gives a value or `within` passes.
pub async fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
