//! Hub configuration: built-in defaults, then a TOML file, then `EDGEFLEET_HUB_*` environment
//! variables, then command-line flags. Validated once at start-up; every bad key is reported.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::keyfile;
use edgefleet_common::trust::Delegation;
use edgefleet_common::trust::RootRotation;
use edgefleet_common::{SecretKey, Signed, TrustRoot, armor, encoding};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Where sled metadata, artifacts and the admin token live.
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// The admins' root public key (PEM or hex), pinned like on devices.
    pub root_key: PathBuf,
    /// The hub's online private key (PKCS#8 PEM, mode 0600).
    pub signing_key: PathBuf,
    /// Root's delegation to the hub key (`edgefleet delegate`), needed to sign assignments.
    pub delegation: PathBuf,
    /// Root rotations (`edgefleet rotate-root`), in order, in one file. The hub trusts the
    /// newest root and hands the chain to devices, which still pin the first root.
    pub root_rotations: Option<PathBuf>,
    /// A pre-shared token; devices that present it are approved at enrollment.
    pub enrollment_token: Option<String>,
    /// How long a signed assignment stays valid; devices polling get fresh ones.
    pub assignment_ttl_secs: u64,
    /// Largest artifact accepted on upload.
    pub max_artifact_bytes: u64,
    /// How long a device session token lives.
    pub session_ttl_secs: u64,
    /// MQTT telemetry on or off. Off: no broker, no telemetry, assignments by HTTP only.
    pub mqtt_enabled: bool,
    /// Where the embedded MQTT broker (rumqttd, MQTT 3.1.1) listens, unless `mqtt_url` names
    /// an external one. Not 1883: a machine often runs Mosquitto there already. Listen on a
    /// non-loopback address for devices on the network.
    pub mqtt_listen: SocketAddr,
    /// An MQTT 5 listener for the embedded broker too (rumqttd needs one per version).
    pub mqtt_v5_listen: Option<SocketAddr>,
    /// An external broker (Mosquitto, EMQX, a cluster): `mqtt://host:port` or `mqtts://…`.
    /// Set, the embedded broker is not started.
    pub mqtt_url: Option<String>,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    /// Largest telemetry message accepted; bigger ones are counted and dropped.
    pub max_telemetry_bytes: u64,
    /// A device whose last heartbeat is older than this counts as offline: more than twice the
    /// agents' `heartbeat_secs` (default 300). An abrupt disconnect is seen sooner, through the
    /// device's MQTT last will.
    pub offline_after_secs: u64,
    /// Telemetry (aggregates, dedup markers) is kept this long; older records are refused.
    pub telemetry_retention_days: u64,
    /// Training samples devices captured (only for models whose capture an admin switched
    /// on) are kept this long.
    pub samples_retention_days: u64,
    /// And at most this many bytes per model: past it the oldest windows' samples go first.
    pub samples_max_bytes_per_model: u64,
    /// The retraining trainer: a program and its arguments (the job directory is appended).
    /// Empty: the reference trainer, `edgefleet-train`, beside the hub's own binary or on
    /// `PATH`. See docs/trainers.md for the contract.
    pub trainer_command: Vec<String>,
    /// A training run is killed (and counted as failed) past this.
    pub trainer_timeout_secs: u64,
    /// And when its job directory (the dataset included) grows past this.
    pub trainer_max_dir_bytes: u64,
    /// Training runs at once, over all models; more jobs wait in the queue.
    pub max_concurrent_trainings: u32,
    /// Log format: "text" or "json" (under journald, text lines carry no timestamps).
    pub log_format: String,
    /// Log level or filter directive, e.g. "info" or "edgefleet_agent=debug,info";
    /// `EDGEFLEET_LOG` overrides it. Reloadable.
    pub log_level: String,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/edgefleet-hub"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            root_key: PathBuf::from("/etc/edgefleet/root.pub"),
            signing_key: PathBuf::from("/etc/edgefleet/hub.key"),
            delegation: PathBuf::from("/etc/edgefleet/hub.delegation"),
            root_rotations: None,
            enrollment_token: None,
            assignment_ttl_secs: 24 * 3600,
            max_artifact_bytes: 1024 * 1024 * 1024,
            session_ttl_secs: 3600,
            mqtt_enabled: true,
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 7883)),
            mqtt_v5_listen: None,
            mqtt_url: None,
            mqtt_username: None,
            mqtt_password: None,
            max_telemetry_bytes: edgefleet_common::telemetry::DEFAULT_MAX_RECORD_BYTES as u64,
            offline_after_secs: 660,
            telemetry_retention_days: 30,
            samples_retention_days: 30,
            samples_max_bytes_per_model: 256 * 1024 * 1024,
            trainer_command: Vec::new(),
            trainer_timeout_secs: 3600,
            trainer_max_dir_bytes: 4 * 1024 * 1024 * 1024,
            max_concurrent_trainings: 1,
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

/// Values that override the file (from flags).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub mqtt_listen: Option<SocketAddr>,
    pub mqtt_url: Option<String>,
}

/// What the hub needs at run time, loaded and checked: the configuration and the keys it
/// names. SIGHUP swaps in a newly validated one as a whole ([`SharedConfig`]).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub config: HubConfig,
    pub trust: TrustRoot,
    pub signing_key: SecretKey,
    pub delegation: Signed<Delegation>,
    pub rotations: Vec<RootRotation>,
}

/// The running configuration, shared by the domain modules; a reload swaps it whole, so a
/// reader that loads it once sees one consistent set of keys and settings.
pub type SharedConfig = std::sync::Arc<arc_swap::ArcSwap<RuntimeConfig>>;

const ENV_PREFIX: &str = "EDGEFLEET_HUB_";

impl HubConfig {
    /// Defaults → file (if given) → environment → flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config {}", path.display()))?;
                toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("config {}: {}", path.display(), e.message().trim())
                })?
            }
            None => HubConfig::default(),
        };
        config.apply_env(std::env::vars())?;
        if let Some(d) = &overrides.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(l) = overrides.listen {
            config.listen = l;
        }
        if let Some(l) = overrides.mqtt_listen {
            config.mqtt_listen = l;
        }
        if let Some(u) = &overrides.mqtt_url {
            config.mqtt_url = Some(u.clone());
        }
        Ok(config)
    }

    fn apply_env(&mut self, vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for (key, value) in vars {
            let Some(name) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let res: Result<(), String> = match name {
                "DATA_DIR" => {
                    self.data_dir = value.clone().into();
                    Ok(())
                }
                "LISTEN" => value
                    .parse()
                    .map(|v| self.listen = v)
                    .map_err(|e| format!("{e}")),
                "ROOT_KEY" => {
                    self.root_key = value.clone().into();
                    Ok(())
                }
                "SIGNING_KEY" => {
                    self.signing_key = value.clone().into();
                    Ok(())
                }
                "ROOT_ROTATIONS" => {
                    self.root_rotations = Some(value.clone().into());
                    Ok(())
                }
                "DELEGATION" => {
                    self.delegation = value.clone().into();
                    Ok(())
                }
                "ENROLLMENT_TOKEN" => {
                    self.enrollment_token = Some(value.clone());
                    Ok(())
                }
                "ASSIGNMENT_TTL_SECS" => value
                    .parse()
                    .map(|v| self.assignment_ttl_secs = v)
                    .map_err(|e| format!("{e}")),
                "MAX_ARTIFACT_BYTES" => value
                    .parse()
                    .map(|v| self.max_artifact_bytes = v)
                    .map_err(|e| format!("{e}")),
                "SESSION_TTL_SECS" => value
                    .parse()
                    .map(|v| self.session_ttl_secs = v)
                    .map_err(|e| format!("{e}")),
                "MQTT_ENABLED" => value
                    .parse()
                    .map(|v| self.mqtt_enabled = v)
                    .map_err(|e| format!("{e} (true or false)")),
                "MQTT_LISTEN" => value
                    .parse()
                    .map(|v| self.mqtt_listen = v)
                    .map_err(|e| format!("{e}")),
                "MQTT_V5_LISTEN" => value
                    .parse()
                    .map(|v| self.mqtt_v5_listen = Some(v))
                    .map_err(|e| format!("{e}")),
                "MQTT_URL" => {
                    self.mqtt_url = Some(value.clone());
                    Ok(())
                }
                "MQTT_USERNAME" => {
                    self.mqtt_username = Some(value.clone());
                    Ok(())
                }
                "MQTT_PASSWORD" => {
                    self.mqtt_password = Some(value.clone());
                    Ok(())
                }
                "MAX_TELEMETRY_BYTES" => value
                    .parse()
                    .map(|v| self.max_telemetry_bytes = v)
                    .map_err(|e| format!("{e}")),
                "OFFLINE_AFTER_SECS" => value
                    .parse()
                    .map(|v| self.offline_after_secs = v)
                    .map_err(|e| format!("{e}")),
                "TELEMETRY_RETENTION_DAYS" => value
                    .parse()
                    .map(|v| self.telemetry_retention_days = v)
                    .map_err(|e| format!("{e}")),
                "SAMPLES_RETENTION_DAYS" => value
                    .parse()
                    .map(|v| self.samples_retention_days = v)
                    .map_err(|e| format!("{e}")),
                "SAMPLES_MAX_BYTES_PER_MODEL" => value
                    .parse()
                    .map(|v| self.samples_max_bytes_per_model = v)
                    .map_err(|e| format!("{e}")),
                "TRAINER_COMMAND" => {
                    // Words split on whitespace; a path with spaces belongs in the file.
                    self.trainer_command = value.split_whitespace().map(str::to_owned).collect();
                    Ok(())
                }
                "TRAINER_TIMEOUT_SECS" => value
                    .parse()
                    .map(|v| self.trainer_timeout_secs = v)
                    .map_err(|e| format!("{e}")),
                "TRAINER_MAX_DIR_BYTES" => value
                    .parse()
                    .map(|v| self.trainer_max_dir_bytes = v)
                    .map_err(|e| format!("{e}")),
                "MAX_CONCURRENT_TRAININGS" => value
                    .parse()
                    .map(|v| self.max_concurrent_trainings = v)
                    .map_err(|e| format!("{e}")),
                "LOG_LEVEL" => {
                    self.log_level = value.clone();
                    Ok(())
                }
                "LOG_FORMAT" => {
                    self.log_format = value.clone();
                    Ok(())
                }
                "CONFIG" => Ok(()),
                _ => Err("unknown variable".into()),
            };
            if let Err(e) = res {
                errors.push(format!("{key}={value:?}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("bad environment: {}", errors.join("; "))
        }
    }

    /// Checks every value and loads the keys; reports all problems at once.
    pub fn validate(self) -> anyhow::Result<RuntimeConfig> {
        let mut errors = Vec::new();
        if self.assignment_ttl_secs < 60 {
            errors.push("assignment_ttl_secs: must be at least 60".to_owned());
        }
        if self.session_ttl_secs < 60 {
            errors.push("session_ttl_secs: must be at least 60".to_owned());
        }
        if self.max_artifact_bytes == 0 {
            errors.push("max_artifact_bytes: must be positive".to_owned());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            errors.push(format!("log_level: {e}"));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            errors.push(format!(
                "log_format: {:?} is neither \"text\" nor \"json\"",
                self.log_format
            ));
        }
        if let Some(url) = &self.mqtt_url
            && let Err(e) = edgefleet_common::telemetry::BrokerUrl::parse(url)
        {
            errors.push(format!("mqtt_url: {e}"));
        }
        if self.mqtt_password.is_some() && self.mqtt_username.is_none() {
            errors.push("mqtt_password: needs mqtt_username".to_owned());
        }
        if self.mqtt_v5_listen.is_some_and(|v5| v5 == self.mqtt_listen) {
            errors.push("mqtt_v5_listen: must differ from mqtt_listen".to_owned());
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.max_telemetry_bytes) {
            errors.push("max_telemetry_bytes: must be 4096..=67108864".to_owned());
        }
        if self.offline_after_secs < 10 {
            errors.push("offline_after_secs: must be at least 10".to_owned());
        }
        if !(1..=3650).contains(&self.telemetry_retention_days) {
            errors.push("telemetry_retention_days: must be 1..=3650".to_owned());
        }
        if !(1..=3650).contains(&self.samples_retention_days) {
            errors.push("samples_retention_days: must be 1..=3650".to_owned());
        }
        if self.samples_max_bytes_per_model < 1024 * 1024 {
            errors.push("samples_max_bytes_per_model: must be at least 1 MiB (1048576)".to_owned());
        }
        if !(10..=7 * 24 * 3600).contains(&self.trainer_timeout_secs) {
            errors.push("trainer_timeout_secs: must be 10..=604800".to_owned());
        }
        if self.trainer_max_dir_bytes < 1024 * 1024 {
            errors.push("trainer_max_dir_bytes: must be at least 1 MiB (1048576)".to_owned());
        }
        if !(1..=64).contains(&self.max_concurrent_trainings) {
            errors.push("max_concurrent_trainings: must be 1..=64".to_owned());
        }
        if self.trainer_command.first().is_some_and(|p| p.is_empty()) {
            errors.push("trainer_command: the program must not be empty".to_owned());
        }
        if let Some(t) = &self.enrollment_token
            && t.len() < 16
        {
            errors.push("enrollment_token: use at least 16 characters".to_owned());
        }
        let root = keyfile::load_public_key(&self.root_key)
            .map_err(|e| {
                errors.push(format!(
                    "root_key: {e:#} (create it with `edgefleet keygen --role root`)"
                ))
            })
            .ok();
        let signing_key = keyfile::load_secret_key(&self.signing_key)
            .map_err(|e| {
                errors.push(format!(
                    "signing_key: {e:#} (create it with `edgefleet keygen --role hub`)"
                ))
            })
            .ok();
        let delegation = keyfile::read_document(&self.delegation, "DELEGATION")
            .and_then(|b| Ok(Signed::<Delegation>::from_bytes(&b)?))
            .map_err(|e| {
                errors.push(format!(
                    "delegation: {e:#} (create it with `edgefleet delegate`)"
                ))
            })
            .ok();
        let rotations: Vec<RootRotation> = match &self.root_rotations {
            None => Vec::new(),
            Some(path) => keyfile::read_bounded(path)
                .and_then(|b| Ok(String::from_utf8(b)?))
                .and_then(|text| Ok(armor::decode_all("ROOT ROTATION", &text)?))
                .and_then(|blocks| {
                    blocks
                        .iter()
                        .map(|b| Ok(encoding::from_bytes("root rotation", b)?))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
                .map_err(|e| errors.push(format!("root_rotations: {e:#}")))
                .unwrap_or_default(),
        };
        // The hub trusts the newest root reached through the rotation chain.
        let trust = root.and_then(|r| {
            TrustRoot::new(r)
                .rotate_all(&rotations)
                .map_err(|e| errors.push(format!("root_rotations: {e}")))
                .ok()
        });
        if let (Some(trust), Some(key), Some(d)) = (&trust, &signing_key, &delegation) {
            match d.verify(trust, crate::now()) {
                Ok(body) if body.key != key.public() => errors.push(format!(
                    "delegation: it delegates to key {}, but signing_key is {}",
                    body.key.short(),
                    key.public().short()
                )),
                Ok(_) => {}
                Err(e) => errors.push(format!("delegation: {e}")),
            }
        }
        match (errors.is_empty(), trust, signing_key, delegation) {
            (true, Some(trust), Some(signing_key), Some(delegation)) => Ok(RuntimeConfig {
                trust,
                signing_key,
                delegation,
                rotations,
                config: self,
            }),
            _ => anyhow::bail!("invalid configuration:\n  - {}", errors.join("\n  - ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_env_are_reported() {
        let err = toml::from_str::<HubConfig>("data_dirr = \"x\"").expect_err("unknown key");
        assert!(err.to_string().contains("data_dirr"), "{err}");
        let mut c = HubConfig::default();
        let err = c
            .apply_env(
                [
                    ("EDGEFLEET_HUB_LISTEN".to_owned(), "nope".to_owned()),
                    ("EDGEFLEET_HUB_BOGUS".to_owned(), "1".to_owned()),
                ]
                .into_iter(),
            )
            .expect_err("bad env");
        let msg = err.to_string();
        assert!(
            msg.contains("EDGEFLEET_HUB_LISTEN") && msg.contains("EDGEFLEET_HUB_BOGUS"),
            "{msg}"
        );
    }

    #[test]
    fn validation_reports_every_problem() {
        let c = HubConfig {
            root_key: "/nonexistent/root.pub".into(),
            assignment_ttl_secs: 1,
            log_format: "xml".into(),
            trainer_timeout_secs: 0,
            trainer_max_dir_bytes: 10,
            max_concurrent_trainings: 0,
            trainer_command: vec![String::new()],
            ..HubConfig::default()
        };
        let msg = format!("{:#}", c.validate().expect_err("invalid"));
        for key in [
            "assignment_ttl_secs",
            "log_format",
            "trainer_timeout_secs",
            "trainer_max_dir_bytes",
            "max_concurrent_trainings",
            "trainer_command",
            "root_key",
            "signing_key",
            "delegation",
        ] {
            assert!(msg.contains(key), "{key} missing from {msg}");
        }
    }
}
