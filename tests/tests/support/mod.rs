//! The end-to-end harness: a real hub and real agents (in-process on 127.0.0.1:0, or as real
//! processes for kill -9 tests), real HTTP, temp dirs, deadlines instead of sleeps.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_common::trust::{Delegation, Permission};
use edgefleet_common::{
    ArtifactRef, ModelManifest, SecretKey, Signed, armor, manifest::ModelFormat,
};
use edgefleet_tests::Mlp;
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn now() -> u64 {
    edgefleet_hub::now()
}

/// What a check passed to [`eventually`] returns: `Some(v)` / `Ok(v)` when satisfied;
/// `None`, or better `Err(what it saw)`, when not yet (the timeout message shows the last).
pub trait Outcome {
    type Value;
    /// The value, or a description of what was seen instead.
    fn outcome(self) -> Result<Self::Value, String>;
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.ok_or_else(|| {
            "None (the check shows nothing it saw: return Err(value) instead of None)".into()
        })
    }
}

impl<T, E: std::fmt::Debug> Outcome for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// A JSON value a check saw, shown as JSON (not as `Object {…}`) in a timeout message.
pub struct Seen(pub Value);

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `v` if `cond` holds, else `v` as what was seen: `eventually(…, || async { let d = …;
/// when(d["online"] == true, d) })`.
pub fn when(cond: bool, v: Value) -> Result<Value, Seen> {
    if cond { Ok(v) } else { Err(Seen(v)) }
}

/// `Some(x)` as is, `None` as `v` seen: for a check that extracts something from `v`.
pub fn found<T>(x: Option<T>, v: &Value) -> Result<T, Seen> {
    x.ok_or_else(|| Seen(v.clone()))
}

/// Polls `f` until it returns `Some`/`Ok`, or panics after the deadline with `what` and the
/// last thing `f` saw (its `Err`).
pub async fn eventually<O, F, Fut>(what: &str, mut f: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = O>,
{
    let start = tokio::time::Instant::now();
    loop {
        // The check itself is bounded too: a request that never returns (a hung server) must
        // fail the test with this message, not hang the whole run.
        let left = DEADLINE
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        let Ok(outcome) = tokio::time::timeout(left, f()).await else {
            panic!(
                "timed out after {} s waiting for {what}: the check itself did not return",
                DEADLINE.as_secs()
            );
        };
        let last = match outcome.outcome() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out after {} s waiting for {what}; last seen: {last}",
                DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's answer once it serves `version` of `model`; else which version answered (or
/// that none did), for [`eventually`].
pub async fn infer_version(
    http: &reqwest::Client,
    agent_url: &str,
    model: &str,
    rows: &[Vec<f32>],
    version: u64,
) -> Result<(u64, Vec<f32>), String> {
    match infer_ok(http, agent_url, model, rows).await {
        Some((v, out)) if v == version => Ok((v, out)),
        Some((v, _)) => Err(format!("{model} v{v} served, not v{version}")),
        None => Err(format!("no successful answer for {model}")),
    }
}

pub fn write_private(path: &Path, key: &SecretKey) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, key.to_pem().expect("pem")).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

pub struct Hub {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub addr: SocketAddr,
    pub token: String,
    pub root: SecretKey,
    pub hub_key: SecretKey,
    pub root_pub_path: PathBuf,
    pub http: reqwest::Client,
    pub config: edgefleet_hub::HubConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A loopback address whose port was free a moment ago: for rumqttd, which binds addresses
/// itself and cannot take port 0.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

pub const ENROLL_TOKEN: &str = "enroll-token-for-tests-0123456789";

impl Hub {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A hub with its embedded MQTT broker on a free port.
    pub async fn start_mqtt() -> Self {
        Self::start_with(|c| {
            c.mqtt_enabled = true;
            c.mqtt_listen = free_addr();
        })
        .await
    }

    /// MQTT is off unless `tweak` turns it on (tests about telemetry do).
    pub async fn start_with(tweak: impl FnOnce(&mut edgefleet_hub::HubConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = SecretKey::generate().expect("root");
        let hub_key = SecretKey::generate().expect("hub key");
        let root_pub_path = dir.path().join("root.pub");
        std::fs::write(&root_pub_path, root.public().to_pem().expect("pem")).expect("write");
        write_private(&dir.path().join("hub.key"), &hub_key);
        let d = Delegation {
            key: hub_key.public(),
            label: "hub".into(),
            patterns: vec!["*".into()],
            permissions: vec![Permission::Manifests, Permission::Assignments],
            issued_at: now() - 60,
            expires_at: now() + 86400,
        };
        let signed = Signed::sign(&d, &root, None).expect("sign");
        std::fs::write(
            dir.path().join("hub.delegation"),
            armor::encode("DELEGATION", &signed.to_bytes().expect("bytes")),
        )
        .expect("write");
        let mut config = edgefleet_hub::HubConfig {
            data_dir: dir.path().join("data"),
            root_key: root_pub_path.clone(),
            signing_key: dir.path().join("hub.key"),
            delegation: dir.path().join("hub.delegation"),
            enrollment_token: Some(ENROLL_TOKEN.into()),
            mqtt_enabled: false,
            ..Default::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, task) = Self::launch(&config, listener);
        let url = format!("http://{addr}");
        let http = client();
        let token_path = dir
            .path()
            .join("data")
            .join(edgefleet_hub::ADMIN_TOKEN_FILE);
        let token = eventually("the hub's admin token", || {
            let p = token_path.clone();
            async move {
                std::fs::read_to_string(p)
                    .ok()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
            }
        })
        .await;
        Hub {
            dir,
            url,
            addr,
            token,
            root,
            hub_key,
            root_pub_path,
            http,
            config,
            stop: Some(tx),
            task: Some(task),
        }
    }

    #[allow(clippy::type_complexity)]
    fn launch(
        config: &edgefleet_hub::HubConfig,
        listener: tokio::net::TcpListener,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let loaded = config.clone().validate().expect("valid config");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(edgefleet_hub::run(loaded, listener, async {
            let _ = rx.await;
        }));
        (tx, task)
    }

    /// Stops the hub and starts it again on the same address and data dir with `config`.
    /// The old instance's sled database may take a moment to release its lock after the task
    /// ends (background flusher), so a start that fails is retried until the deadline.
    pub async fn restart(&mut self, config: edgefleet_hub::HubConfig) {
        self.stop().await;
        let addr = self.addr;
        let start = tokio::time::Instant::now();
        loop {
            let listener = eventually("the hub's port to be free again", || async move {
                tokio::net::TcpListener::bind(addr).await.ok()
            })
            .await;
            let (tx, task) = Self::launch(&config, listener);
            let healthy = eventually("the restarted hub to answer or fail", || {
                let http = self.http.clone();
                let url = self.api("health");
                let finished = task.is_finished();
                async move {
                    if finished {
                        return Some(false);
                    }
                    let ok = http
                        .get(url)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    ok.then_some(true)
                }
            })
            .await;
            if healthy {
                self.config = config;
                self.stop = Some(tx);
                self.task = Some(task);
                return;
            }
            let error = task
                .await
                .expect("join")
                .expect_err("a finished hub failed");
            assert!(
                start.elapsed() < DEADLINE,
                "the hub does not restart: {error:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("the hub did not stop within the deadline")
                .expect("join")
                .expect("hub run");
        }
    }

    /// A handle on a hub running elsewhere (a separate process) with `fixture`'s keys: the
    /// admin helpers (push, assign, device) then talk to it.
    pub fn attach(
        fixture: &Hub,
        url: String,
        data_dir: &Path,
        config: edgefleet_hub::HubConfig,
    ) -> Self {
        let token = std::fs::read_to_string(data_dir.join(edgefleet_hub::ADMIN_TOKEN_FILE))
            .expect("the hub's admin token")
            .trim()
            .to_owned();
        Hub {
            dir: tempfile::tempdir().expect("tempdir"),
            addr: url.trim_start_matches("http://").parse().expect("addr"),
            url,
            token,
            root: fixture.root.clone(),
            hub_key: fixture.hub_key.clone(),
            root_pub_path: fixture.root_pub_path.clone(),
            http: client(),
            config,
            stop: None,
            task: None,
        }
    }

    /// The broker devices use: the embedded one, the external one, or (MQTT off) a closed port.
    pub fn mqtt_url(&self) -> String {
        match (&self.config.mqtt_url, self.config.mqtt_enabled) {
            (Some(u), true) => u.clone(),
            (None, true) => format!("mqtt://{}", self.config.mqtt_listen),
            _ => "mqtt://127.0.0.1:9".into(),
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.url)
    }

    /// Manifest for an artifact, as a data scientist's `edgefleet sign` would build it.
    pub fn manifest(&self, name: &str, version: u64, mlp: &Mlp, artifact: &[u8]) -> ModelManifest {
        ModelManifest {
            name: name.into(),
            version,
            artifact: ArtifactRef {
                sha256: edgefleet_common::Digest::of(artifact),
                size: artifact.len() as u64,
                format: ModelFormat::Onnx,
            },
            inputs: vec![edgefleet_tests::input_spec()],
            outputs: vec![edgefleet_tests::output_spec()],
            // The smoke tests `edgefleet-testmodel` writes into its spec.
            smoke_tests: edgefleet_tests::smoke_tests(mlp, 4),
            created_at: now(),
            lineage: Default::default(),
            reference_profile: None,
            description: String::new(),
        }
    }

    pub async fn put_blob(&self, artifact: &[u8]) -> reqwest::Response {
        let sha = edgefleet_common::Digest::of(artifact);
        self.http
            .put(self.api(&format!("blobs/{sha}")))
            .bearer_auth(&self.token)
            .body(artifact.to_vec())
            .send()
            .await
            .expect("put blob")
    }

    pub async fn post_manifest(&self, signed: &Signed<ModelManifest>) -> reqwest::Response {
        self.http
            .post(self.api("models"))
            .bearer_auth(&self.token)
            .body(signed.to_bytes().expect("bytes"))
            .send()
            .await
            .expect("post manifest")
    }

    /// Signs (with root) and pushes a model version; returns the artifact bytes.
    pub async fn push_mlp(&self, name: &str, version: u64, seed: u64) -> (Mlp, Vec<u8>) {
        let mlp = Mlp::new(seed);
        let artifact = mlp.to_onnx();
        let m = self.manifest(name, version, &mlp, &artifact);
        self.push(&m, &artifact).await;
        (mlp, artifact)
    }

    /// Pushes a 4 MB version (the MLP with an unused padding initializer): big enough to be
    /// interrupted, throttled or to fill a small disk. Returns the model and its manifest.
    pub async fn push_big(&self, name: &str, version: u64, seed: u64) -> (Mlp, ModelManifest) {
        let mlp = Mlp::new(seed);
        let artifact = mlp.to_onnx_padded(1_000_000);
        let m = self.manifest(name, version, &mlp, &artifact);
        self.push(&m, &artifact).await;
        (mlp, m)
    }

    pub async fn push(&self, m: &ModelManifest, artifact: &[u8]) {
        let r = self.put_blob(artifact).await;
        assert!(
            r.status().is_success(),
            "blob upload: {}",
            r.text().await.unwrap_or_default()
        );
        let signed = Signed::sign(m, &self.root, None).expect("sign");
        let r = self.post_manifest(&signed).await;
        assert!(
            r.status().is_success(),
            "manifest upload: {}",
            r.text().await.unwrap_or_default()
        );
    }

    pub async fn assign(&self, device: &str, model: &str, version: u64) {
        let r = self
            .http
            .post(self.api("assignments"))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"target": {"device": device}, "model": model, "version": version}))
            .send()
            .await
            .expect("assign");
        assert!(
            r.status().is_success(),
            "assign: {}",
            r.text().await.unwrap_or_default()
        );
    }

    pub async fn device(&self, id: &str) -> Option<Value> {
        let r = self
            .http
            .get(self.api(&format!("devices/{id}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The device detail, or (for [`eventually`]) what the hub answered instead.
    pub async fn try_device(&self, id: &str) -> Result<Value, Seen> {
        let r = self
            .http
            .get(self.api(&format!("devices/{id}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Seen(Value::String(format!("GET devices/{id}: {e}"))))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        match serde_json::from_str(&text) {
            Ok(v) if status.is_success() => Ok(v),
            _ => Err(Seen(Value::String(format!(
                "GET devices/{id}: {status} {text}"
            )))),
        }
    }

    /// Waits until the device reports an update error containing `needle`.
    pub async fn wait_error(&self, id: &str, needle: &str) -> String {
        eventually(
            &format!("device {id} to report an error containing {needle:?}"),
            || async {
                let d = self.try_device(id).await?;
                match d["status"]["last_error"].as_str() {
                    Some(e) if e.contains(needle) => Ok(e.to_owned()),
                    _ => Err(Seen(d)),
                }
            },
        )
        .await
    }

    pub fn agent_config(&self, device_id: &str, data_dir: &Path) -> edgefleet_agent::AgentConfig {
        edgefleet_agent::AgentConfig {
            device_id: device_id.into(),
            hub_url: self.url.clone(),
            data_dir: data_dir.into(),
            root_key: self.root_pub_path.clone(),
            enrollment_token: Some(ENROLL_TOKEN.into()),
            poll_interval_secs: 2,
            mqtt_url: self.mqtt_url(),
            ..Default::default()
        }
    }
}

/// An agent running in this process.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    pub async fn start(hub: &Hub, device_id: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(hub, device_id, dir).await
    }

    pub async fn start_in(hub: &Hub, device_id: &str, dir: tempfile::TempDir) -> Self {
        Self::start_with(hub, device_id, dir, |_| {}).await
    }

    pub async fn start_with(
        hub: &Hub,
        device_id: &str,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut edgefleet_agent::AgentConfig),
    ) -> Self {
        let mut config = hub.agent_config(device_id, dir.path());
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(edgefleet_agent::run(config, listener, async {
            let _ = rx.await;
        }));
        Agent {
            dir,
            url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("agent run");
        }
        self.dir
    }
}

/// `POST /v2/models/{model}/infer` with one row per input vector.
pub async fn infer(
    http: &reqwest::Client,
    agent_url: &str,
    model: &str,
    rows: &[Vec<f32>],
) -> reqwest::Response {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let body = serde_json::json!({
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [rows.len(), edgefleet_tests::FEATURES], "datatype": "FP32", "data": data}]
    });
    http.post(format!("{agent_url}/v2/models/{model}/infer"))
        .json(&body)
        .send()
        .await
        .expect("infer request")
}

/// The served model version and outputs, if the agent answers 200.
pub async fn infer_ok(
    http: &reqwest::Client,
    agent_url: &str,
    model: &str,
    rows: &[Vec<f32>],
) -> Option<(u64, Vec<f32>)> {
    let r = infer(http, agent_url, model, rows).await;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    let version = v["model_version"].as_str()?.parse().ok()?;
    let out = v["outputs"][0]["data"]
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect::<Option<Vec<_>>>()?;
    Some((version, out))
}

pub fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "got {got:?}, want {want:?}");
    }
}

/// The hub binary (`edgefleet-hub serve`) on `http` and `mqtt`, over `data`, with `fixture`'s
/// keys and enrollment token: for tests that kill it with kill -9 and start it again.
pub fn spawn_hub_binary(
    fixture: &Hub,
    http: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
    data: &Path,
) -> AgentProcess {
    let mut cmd = tokio::process::Command::new(bin("edgefleet-hub"));
    cmd.args(["serve", "--listen", &http.to_string()])
        .args(["--mqtt-listen", &mqtt.to_string(), "--data-dir"])
        .arg(data)
        .env("EDGEFLEET_HUB_ROOT_KEY", &fixture.root_pub_path)
        .env("EDGEFLEET_HUB_SIGNING_KEY", &fixture.config.signing_key)
        .env("EDGEFLEET_HUB_DELEGATION", &fixture.config.delegation)
        .env("EDGEFLEET_HUB_ENROLLMENT_TOKEN", ENROLL_TOKEN)
        .env("EDGEFLEET_LOG", "info");
    AgentProcess::spawn_command(cmd)
}

/// Waits until the hub at `url` answers its health check.
pub async fn wait_hub_up(url: &str) {
    eventually("the hub binary to answer", || async {
        match client().get(format!("{url}/api/v1/health")).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("health: {}", r.status())),
            Err(e) => Err(format!("health: {e}")),
        }
    })
    .await;
}

/// The tests' HTTP client: every request bounded, so a hung server fails a test instead of
/// hanging the run.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Path of a workspace binary (built by `cargo test --workspace` / `cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (cargo test --workspace does)",
        p.display()
    );
    p
}

/// An agent as a real process (for kill -9), its log lines collected.
pub struct AgentProcess {
    pub child: tokio::process::Child,
    pub url: Option<String>,
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl AgentProcess {
    /// Spawns `edgefleet-agent run` configured by environment variables.
    pub fn spawn(
        hub_url: &str,
        root_pub: &Path,
        device_id: &str,
        data_dir: &Path,
        fault: Option<&str>,
    ) -> Self {
        let mut cmd = tokio::process::Command::new(bin("edgefleet-agent"));
        cmd.arg("run")
            .env("EDGEFLEET_AGENT_DEVICE_ID", device_id)
            .env("EDGEFLEET_AGENT_HUB_URL", hub_url)
            .env("EDGEFLEET_AGENT_DATA_DIR", data_dir)
            .env("EDGEFLEET_AGENT_ROOT_KEY", root_pub)
            .env("EDGEFLEET_AGENT_ENROLLMENT_TOKEN", ENROLL_TOKEN)
            .env("EDGEFLEET_AGENT_LISTEN", "127.0.0.1:0")
            .env("EDGEFLEET_AGENT_POLL_INTERVAL_SECS", "2")
            .env("EDGEFLEET_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(f) = fault {
            cmd.env("EDGEFLEET_AGENT_FAULT", f);
        }
        Self::spawn_command(cmd)
    }

    /// Spawns a prepared `edgefleet-agent` command, collecting its output.
    pub fn spawn_command(mut cmd: tokio::process::Command) -> Self {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn edgefleet-agent");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    logs.lock().expect("lock").push(l);
                }
            });
        }
        AgentProcess {
            child,
            url: None,
            logs,
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.logs
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn dump(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }

    /// Waits for the "serving" log line and returns the OIP base URL.
    pub async fn wait_listening(&mut self) -> String {
        let logs = self.logs.clone();
        let dump = self.logs.clone();
        let exited = self.child.try_wait().ok().flatten();
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep(DEADLINE - Duration::from_millis(500)).await;
            eprintln!(
                "the agent is not listening yet (exited: {exited:?}); its log so far:\n{}",
                dump.lock().expect("lock").join("\n")
            );
        });
        let url = eventually("the agent to listen", || {
            let logs = logs.clone();
            async move {
                let logs = logs.lock().expect("lock");
                logs.iter()
                    .find(|l| l.contains("agent serving OIP v2"))
                    .and_then(|l| {
                        let addr = l.split("addr=").nth(1)?.split_whitespace().next()?;
                        Some(format!("http://{addr}"))
                    })
            }
        })
        .await;
        watchdog.abort();
        self.url = Some(url.clone());
        url
    }

    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    /// Waits for the process to exit by itself (a fault-injection abort).
    pub async fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("agent did not exit")
            .expect("wait");
        // Let the log readers drain.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dump = self.dump();
        (status, dump)
    }
}

/// A URL where nothing listens: the hub is "down".
pub const DEAD_HUB: &str = "http://127.0.0.1:9";

/// Where an agent keeps the partial download of a manifest's artifact.
pub fn staging_part(data_dir: &Path, m: &ModelManifest) -> PathBuf {
    data_dir
        .join("staging")
        .join(format!("{}.part", m.artifact.sha256))
}
