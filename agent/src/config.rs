//! Agent configuration: defaults → TOML file → `EDGEFLEET_AGENT_*` environment. Validated once
//! at start-up; `edgefleet-agent check-config` prints every bad key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This device's id (lowercase letters, digits, '.', '_', '-').
    pub device_id: String,
    /// Tags for tag-wide assignments, e.g. ["shops-eu"].
    pub tags: Vec<String>,
    /// The hub's base URL.
    pub hub_url: String,
    /// Models, staging area, state, and the device key (device.key) live here.
    pub data_dir: PathBuf,
    /// The pinned root public key (PEM or hex).
    pub root_key: PathBuf,
    /// Pre-shared enrollment token (auto-approval); without it an admin approves the device.
    pub enrollment_token: Option<String>,
    /// Where the Open Inference Protocol v2 server listens.
    pub listen: SocketAddr,
    /// Long-poll wait for assignment changes, seconds.
    pub poll_interval_secs: u64,
    /// Slow-retrieval defence: abort a download slower than this over any rate window.
    pub download_min_bytes_per_sec: u64,
    /// Length of the window the download rate is judged over, seconds.
    pub download_rate_window_secs: u64,
    /// Slow-retrieval defence: abort a download that takes longer than this in total.
    pub download_deadline_secs: u64,
    /// Largest model this device accepts, whatever the manifest says.
    pub max_model_bytes: u64,
    /// A model whose assignment disappeared from the hub's bundle is served this many more
    /// seconds, then stopped and deleted from disk (0: at the next check). Reloadable.
    pub removal_grace_secs: u64,
    /// This device's time zone, an IANA name ("Europe/Berlin"), reported to the hub for
    /// rollouts' maintenance windows in the device's own zone. Unset: the system's (TZ,
    /// /etc/timezone, the /etc/localtime link). Reloadable.
    pub time_zone: Option<String>,
    /// The MQTT broker telemetry goes through: `mqtt://host:port` (plain TCP) or
    /// `mqtts://host:port` (TLS, system roots). The hub's embedded broker listens on 7883.
    pub mqtt_url: String,
    /// Broker credentials, when the broker asks for them.
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    /// Length of a telemetry window, seconds: each window becomes one signed record.
    pub telemetry_window_secs: u64,
    /// Interval between heartbeats (health, active models, outbox counters), seconds. The
    /// hub's `offline_after_secs` must be more than twice this; a lost connection is reported
    /// sooner by the MQTT last will.
    pub heartbeat_secs: u64,
    /// A record the hub has not acknowledged this long after it was published is sent again.
    pub telemetry_resend_secs: u64,
    /// Bound of the telemetry outbox, bytes of records: when full, the oldest are dropped
    /// (and counted).
    pub outbox_max_bytes: u64,
    /// Feedback (ground truth): most predictions kept for matching, by (model, request id).
    /// When over, the oldest go first, counted. 0 keeps none (feedback cannot match).
    pub feedback_max_predictions: u64,
    /// Feedback: a prediction older than this many seconds is no longer kept.
    pub feedback_max_age_secs: u64,
    /// Feedback: most bytes of predictions kept on disk (the data directory's
    /// `feedback.sqlite`). When over, the oldest go first, counted.
    pub feedback_max_bytes: u64,
    /// Log format: "text" or "json" (under journald, text lines carry no timestamps).
    pub log_format: String,
    /// Log level or filter directive, e.g. "info" or "edgefleet_agent=debug,info";
    /// `EDGEFLEET_LOG` overrides it. Reloadable.
    pub log_level: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            device_id: String::new(),
            tags: Vec::new(),
            hub_url: "http://127.0.0.1:7700".into(),
            data_dir: PathBuf::from("/var/lib/edgefleet-agent"),
            root_key: PathBuf::from("/etc/edgefleet/root.pub"),
            enrollment_token: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            poll_interval_secs: 30,
            download_min_bytes_per_sec: 1024,
            download_rate_window_secs: 10,
            download_deadline_secs: 3600,
            max_model_bytes: 1024 * 1024 * 1024,
            removal_grace_secs: 600,
            time_zone: None,
            mqtt_url: "mqtt://127.0.0.1:7883".into(),
            mqtt_username: None,
            mqtt_password: None,
            telemetry_window_secs: 900,
            heartbeat_secs: 300,
            telemetry_resend_secs: 60,
            outbox_max_bytes: 64 * 1024 * 1024,
            // A day at 10 requests a second is 864,000.
            feedback_max_predictions: 1_000_000,
            feedback_max_age_secs: 2 * 86_400,
            feedback_max_bytes: 256 * 1024 * 1024,
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

pub const ENV_PREFIX: &str = "EDGEFLEET_AGENT_";

/// Bounds of the feedback keys.
pub const MAX_FEEDBACK_PREDICTIONS: u64 = 100_000_000;
pub const MAX_FEEDBACK_AGE_SECS: u64 = 30 * 86_400;
pub const MIN_FEEDBACK_BYTES: u64 = 1 << 20;

impl AgentConfig {
    /// The feedback store's bounds.
    pub fn feedback_limits(&self) -> crate::feedback::Limits {
        crate::feedback::Limits {
            max_predictions: self.feedback_max_predictions,
            max_age_ms: self.feedback_max_age_secs.saturating_mul(1000),
            max_bytes: self.feedback_max_bytes,
        }
    }

    /// The time zone to report: the configured one, else the system's.
    pub fn time_zone(&self) -> Option<String> {
        self.time_zone.clone().or_else(system_time_zone)
    }
}

/// The system's time zone name, as the C library would find it: `TZ` when it names a zone,
/// else /etc/timezone (Debian), else the zone /etc/localtime links to. None when none tells.
pub fn system_time_zone() -> Option<String> {
    use edgefleet_common::device::valid_time_zone;
    let from_env = std::env::var("TZ")
        .ok()
        .map(|tz| tz.trim_start_matches(':').to_owned());
    let from_file = || {
        std::fs::read_to_string("/etc/timezone")
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let from_link = || {
        let target = std::fs::read_link("/etc/localtime").ok()?;
        let target = target.to_str()?;
        target
            .split_once("zoneinfo/")
            .map(|(_, zone)| zone.to_owned())
    };
    from_env
        .filter(|z| valid_time_zone(z))
        .or_else(|| from_file().filter(|z| valid_time_zone(z)))
        .or_else(|| from_link().filter(|z| valid_time_zone(z)))
}

impl AgentConfig {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config {}", path.display()))?;
                toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("config {}: {}", path.display(), e.message().trim())
                })?
            }
            None => AgentConfig::default(),
        };
        config.apply_env(std::env::vars())?;
        Ok(config)
    }

    pub fn apply_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for (key, value) in vars {
            let Some(name) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let num = |v: &str| v.parse::<u64>().map_err(|e| e.to_string());
            let res: Result<(), String> = match name {
                "DEVICE_ID" => {
                    self.device_id = value.clone();
                    Ok(())
                }
                "TAGS" => {
                    self.tags = value
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect();
                    Ok(())
                }
                "HUB_URL" => {
                    self.hub_url = value.clone();
                    Ok(())
                }
                "DATA_DIR" => {
                    self.data_dir = value.clone().into();
                    Ok(())
                }
                "ROOT_KEY" => {
                    self.root_key = value.clone().into();
                    Ok(())
                }
                "ENROLLMENT_TOKEN" => {
                    self.enrollment_token = Some(value.clone());
                    Ok(())
                }
                "LISTEN" => value
                    .parse()
                    .map(|v| self.listen = v)
                    .map_err(|e| format!("{e}")),
                "POLL_INTERVAL_SECS" => num(&value).map(|v| self.poll_interval_secs = v),
                "DOWNLOAD_MIN_BYTES_PER_SEC" => {
                    num(&value).map(|v| self.download_min_bytes_per_sec = v)
                }
                "DOWNLOAD_RATE_WINDOW_SECS" => {
                    num(&value).map(|v| self.download_rate_window_secs = v)
                }
                "DOWNLOAD_DEADLINE_SECS" => num(&value).map(|v| self.download_deadline_secs = v),
                "MAX_MODEL_BYTES" => num(&value).map(|v| self.max_model_bytes = v),
                "REMOVAL_GRACE_SECS" => num(&value).map(|v| self.removal_grace_secs = v),
                "TIME_ZONE" => {
                    self.time_zone = Some(value.clone());
                    Ok(())
                }
                "MQTT_URL" => {
                    self.mqtt_url = value.clone();
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
                "TELEMETRY_WINDOW_SECS" => num(&value).map(|v| self.telemetry_window_secs = v),
                "HEARTBEAT_SECS" => num(&value).map(|v| self.heartbeat_secs = v),
                "TELEMETRY_RESEND_SECS" => num(&value).map(|v| self.telemetry_resend_secs = v),
                "OUTBOX_MAX_BYTES" => num(&value).map(|v| self.outbox_max_bytes = v),
                "FEEDBACK_MAX_PREDICTIONS" => {
                    num(&value).map(|v| self.feedback_max_predictions = v)
                }
                "FEEDBACK_MAX_AGE_SECS" => num(&value).map(|v| self.feedback_max_age_secs = v),
                "FEEDBACK_MAX_BYTES" => num(&value).map(|v| self.feedback_max_bytes = v),
                "LOG_LEVEL" => {
                    self.log_level = value.clone();
                    Ok(())
                }
                "LOG_FORMAT" => {
                    self.log_format = value.clone();
                    Ok(())
                }
                // Not config keys: the config path itself and the test-only fault switch.
                "CONFIG" | "FAULT" => Ok(()),
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

    /// Checks every key; reports all problems at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = edgefleet_common::name::validate(&self.device_id) {
            errors.push(format!("device_id: {e}"));
        }
        for t in &self.tags {
            if let Err(e) = edgefleet_common::name::validate(t) {
                errors.push(format!("tags: {e}"));
            }
        }
        match reqwest::Url::parse(&self.hub_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => errors.push(format!(
                "hub_url: scheme {:?} is not http or https",
                u.scheme()
            )),
            Err(e) => errors.push(format!("hub_url: {e}")),
        }
        if let Err(e) = std::fs::read_to_string(&self.root_key)
            .map_err(|e| e.to_string())
            .and_then(|t| edgefleet_common::PublicKey::parse(&t).map_err(|e| e.to_string()))
        {
            errors.push(format!("root_key: {}: {e}", self.root_key.display()));
        }
        if !(1..=300).contains(&self.poll_interval_secs) {
            errors.push("poll_interval_secs: must be 1..=300".into());
        }
        if !(1..=600).contains(&self.download_rate_window_secs) {
            errors.push("download_rate_window_secs: must be 1..=600".into());
        }
        if self.download_deadline_secs == 0 {
            errors.push("download_deadline_secs: must be positive".into());
        }
        if self.max_model_bytes == 0 {
            errors.push("max_model_bytes: must be positive".into());
        }
        if let Err(e) = edgefleet_common::telemetry::BrokerUrl::parse(&self.mqtt_url) {
            errors.push(format!("mqtt_url: {e}"));
        }
        if self.mqtt_password.is_some() && self.mqtt_username.is_none() {
            errors.push("mqtt_password: needs mqtt_username".into());
        }
        if self.removal_grace_secs > 7 * 86_400 {
            errors.push("removal_grace_secs: at most 604800 (a week)".into());
        }
        if let Some(zone) = &self.time_zone
            && !edgefleet_common::device::valid_time_zone(zone)
        {
            errors.push(format!(
                "time_zone: {zone:?} is not an IANA zone name such as \"Europe/Berlin\" (or remove the key to use the system's)"
            ));
        }
        if !(1..=86_400).contains(&self.telemetry_window_secs) {
            errors.push("telemetry_window_secs: must be 1..=86400 (a day)".into());
        }
        if !(1..=3600).contains(&self.heartbeat_secs) {
            errors.push("heartbeat_secs: must be 1..=3600".into());
        }
        if !(1..=86_400).contains(&self.telemetry_resend_secs) {
            errors.push("telemetry_resend_secs: must be 1..=86400".into());
        }
        if self.outbox_max_bytes < 16 * 1024 {
            errors.push("outbox_max_bytes: must be at least 16384 (a few records)".into());
        }
        if self.feedback_max_predictions > MAX_FEEDBACK_PREDICTIONS {
            errors.push(format!(
                "feedback_max_predictions: at most {MAX_FEEDBACK_PREDICTIONS} (0 keeps none)"
            ));
        }
        if !(1..=MAX_FEEDBACK_AGE_SECS).contains(&self.feedback_max_age_secs) {
            errors.push(format!(
                "feedback_max_age_secs: must be 1..={MAX_FEEDBACK_AGE_SECS} (30 days)"
            ));
        }
        if self.feedback_max_bytes < MIN_FEEDBACK_BYTES {
            errors.push(format!(
                "feedback_max_bytes: must be at least {MIN_FEEDBACK_BYTES} (1 MiB)"
            ));
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
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid configuration:\n  - {}", errors.join("\n  - "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_key_is_reported() {
        let c = AgentConfig {
            device_id: "Bad Id".into(),
            hub_url: "ftp://x".into(),
            root_key: "/nonexistent".into(),
            poll_interval_secs: 0,
            log_format: "xml".into(),
            time_zone: Some("../../etc/passwd".into()),
            feedback_max_predictions: MAX_FEEDBACK_PREDICTIONS + 1,
            feedback_max_age_secs: 0,
            feedback_max_bytes: 1000,
            ..AgentConfig::default()
        };
        let msg = c.validate().expect_err("invalid").to_string();
        for key in [
            "device_id",
            "hub_url",
            "root_key",
            "poll_interval_secs",
            "log_format",
            "time_zone",
            "feedback_max_predictions",
            "feedback_max_age_secs",
            "feedback_max_bytes",
        ] {
            assert!(msg.contains(key), "{key} missing in {msg}");
        }
        assert!(toml::from_str::<AgentConfig>("hub = \"x\"").is_err());
        let mut c = AgentConfig::default();
        let err = c
            .apply_env(
                [
                    ("EDGEFLEET_AGENT_LISTEN".to_owned(), "x".to_owned()),
                    ("EDGEFLEET_AGENT_NOPE".to_owned(), "1".to_owned()),
                ]
                .into_iter(),
            )
            .expect_err("bad env")
            .to_string();
        assert!(
            err.contains("EDGEFLEET_AGENT_LISTEN") && err.contains("EDGEFLEET_AGENT_NOPE"),
            "{err}"
        );
        c.apply_env([("EDGEFLEET_AGENT_TAGS".to_owned(), "a, b".to_owned())].into_iter())
            .expect("tags");
        assert_eq!(c.tags, vec!["a", "b"]);
        c.apply_env(
            [
                (
                    "EDGEFLEET_AGENT_FEEDBACK_MAX_PREDICTIONS".to_owned(),
                    "10".to_owned(),
                ),
                (
                    "EDGEFLEET_AGENT_FEEDBACK_MAX_AGE_SECS".to_owned(),
                    "60".to_owned(),
                ),
                (
                    "EDGEFLEET_AGENT_FEEDBACK_MAX_BYTES".to_owned(),
                    "2097152".to_owned(),
                ),
            ]
            .into_iter(),
        )
        .expect("feedback keys");
        assert_eq!(
            c.feedback_limits(),
            crate::feedback::Limits {
                max_predictions: 10,
                max_age_ms: 60_000,
                max_bytes: 2 << 20
            }
        );
        let t: AgentConfig =
            toml::from_str("feedback_max_predictions = 5\nfeedback_max_age_secs = 7")
                .expect("toml");
        assert_eq!(
            (t.feedback_max_predictions, t.feedback_max_age_secs),
            (5, 7)
        );
        c.apply_env(
            [(
                "EDGEFLEET_AGENT_TIME_ZONE".to_owned(),
                "Europe/Berlin".to_owned(),
            )]
            .into_iter(),
        )
        .expect("zone");
        assert_eq!(c.time_zone().as_deref(), Some("Europe/Berlin"));
    }
}
