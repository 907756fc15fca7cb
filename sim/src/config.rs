//! The simulator's command line (also what a test builds to start a fleet in-process).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs N simulated Edgefleet devices in one process against a real hub and MQTT broker.
///
/// Each device does what the agent does, with the agent's own code: it makes an ed25519 key
/// (derived from --seed, so a run is reproducible), enrolls with the enrollment token, opens a
/// session, receives its signed assignment bundle (the retained MQTT message, with an HTTP
/// poll as fallback), verifies it against the pinned root key (delegation, expiry, serial
/// policy, manifest signature and digest), "installs" the version (no tract; the artifact is
/// downloaded once per digest with --download), reports its status, serves synthetic seeded
/// traffic around the reference profile of the model's first version served (moved by
/// --shift; with --feedback, simulated ground truth), and sends signed telemetry windows
/// through an outbox over MQTT QoS 1 until the hub acks them.
///
/// Example: 1,000 shops, one request per second each, version 3 slower and failing half of
/// its installs:
///
///   edgefleet-sim --hub http://127.0.0.1:7700 --mqtt mqtt://127.0.0.1:7883
///   --root-key keys/root.key.pub --enroll-token a-long-shared-secret --devices 1000
///   --tag shops --slow-version 3 --slow-factor 3 --fail-install-version 3
///   --fail-install-fraction 0.5 --report-every 10
///
/// Device ids are PREFIX-00000, PREFIX-00001, …; the same --seed and --id-prefix give the same
/// ids and keys, so a second run re-enrolls the same devices. The hub keeps each device's
/// telemetry sequence numbers: to re-run the same devices with telemetry, keep --data-dir.
/// 10,000 devices hold 10,000 MQTT connections: the simulator raises its open-file limit to
/// the hard limit (`ulimit -Hn`), and the hub (and an external broker) need as many.
#[derive(Debug, Clone, Parser)]
#[command(name = "edgefleet-sim", version, verbatim_doc_comment)]
pub struct SimConfig {
    /// The hub's base URL.
    #[arg(long, value_name = "URL", env = "EDGEFLEET_HUB")]
    pub hub: String,
    /// The MQTT broker devices use: mqtt://host:port (mqtts:// for TLS); the hub's embedded
    /// broker listens on 127.0.0.1:7883 by default.
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:7883")]
    pub mqtt: String,
    /// The pinned root public key (PEM), as on every device.
    #[arg(long, value_name = "FILE")]
    pub root_key: PathBuf,
    /// The hub's enrollment token: devices are approved at once. Without it they wait for
    /// `edgefleet approve`.
    #[arg(long, value_name = "TOKEN")]
    pub enroll_token: Option<String>,
    /// How many devices.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// Tag of every device (repeat for more).
    #[arg(long = "tag", value_name = "TAG", default_value = "sim")]
    pub tags: Vec<String>,
    /// Device ids are PREFIX-NNNNN.
    #[arg(long, value_name = "PREFIX", default_value = "sim")]
    pub id_prefix: String,
    /// Seeds keys, traffic and faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests per second per device (Poisson), spread over its models.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub rate: f64,
    /// Telemetry window length.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub window_secs: u64,
    /// Heartbeat interval (the agent's default: 300).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_secs: u64,
    /// Fallback HTTP poll for assignments, each device every SECS (jittered), without waiting:
    /// the retained MQTT bundle is the fast path.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_secs: u64,
    /// Unacked telemetry records are published again after SECS (the agent's default: 60).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub resend_secs: u64,
    /// Devices start over this many seconds (0: all at once).
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = non_negative)]
    pub ramp_secs: f64,
    /// Most HTTP requests to the hub in flight at once, over all devices.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http_concurrency: u32,
    /// Download each assigned artifact (once per digest, shared by all devices) and check its
    /// SHA-256 and size before the first install.
    #[arg(long)]
    pub download: bool,
    /// Median latency of a request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2.0, value_parser = positive)]
    pub latency_ms: f64,
    /// Fraction of requests that fail on every version.
    #[arg(long, value_name = "P", default_value_t = 0.001, value_parser = fraction)]
    pub base_error_rate: f64,
    /// Fault: this version answers slower…
    #[arg(long, value_name = "VERSION", requires = "slow_factor")]
    pub slow_version: Option<u64>,
    /// …by this factor.
    #[arg(long, value_name = "F", requires = "slow_version", value_parser = positive)]
    pub slow_factor: Option<f64>,
    /// Fault: this version fails more requests…
    #[arg(long, value_name = "VERSION", requires = "error_rate")]
    pub error_version: Option<u64>,
    /// …this fraction of them (on top of --base-error-rate).
    #[arg(long, value_name = "P", requires = "error_version", value_parser = fraction)]
    pub error_rate: Option<f64>,
    /// Fault: installs of this version fail (a smoke-test failure, reported as the agent
    /// reports it) …
    #[arg(long, value_name = "VERSION", requires = "fail_install_fraction")]
    pub fail_install_version: Option<u64>,
    /// …on exactly this fraction of the devices (rounded), chosen by --seed.
    #[arg(long, value_name = "P", requires = "fail_install_version", value_parser = fraction)]
    pub fail_install_fraction: Option<f64>,
    /// Input shift: from SECS after the start (at once without @SECS), the values of input
    /// column COLUMN are moved by DELTA on every device (repeat for more columns or later
    /// steps; a later step of a column replaces the earlier one). Drifts the devices'
    /// sketches away from the model's training reference, e.g. --shift fuel_price=0.8@600.
    #[arg(long = "shift", value_name = "COLUMN=DELTA[@SECS]", value_parser = parse_shift)]
    pub shifts: Vec<Shift>,
    /// Simulated ground truth: this fraction of requests gets its true value back, scored in
    /// the window's quality as the agent scores feedback (regression models; the first
    /// output). The truth is off from the prediction by --error-per-iqr for every
    /// interquartile range an input falls outside the served version's training range, plus
    /// --truth-sd of noise.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fraction)]
    pub feedback: f64,
    /// Standard deviation of the simulated truth around the prediction.
    #[arg(long, value_name = "SD", default_value_t = 1.0, value_parser = non_negative)]
    pub truth_sd: f64,
    /// Error added per interquartile range that an input lies outside the served version's
    /// training range (its reference's 1st–99th percentiles): a model errs where it never
    /// learned.
    #[arg(long, value_name = "K", default_value_t = 1.0, value_parser = non_negative)]
    pub error_per_iqr: f64,
    /// Stop after SECS (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub run_secs: Option<u64>,
    /// Print one line every SECS: devices enrolled, devices per model version, records
    /// sent/acked, outbox backlog (0: only at the end).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub report_every: u64,
    /// Where the devices' shared outbox database lives (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// One `--shift`: from `after_secs` on, `column`'s values move by `delta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    pub column: String,
    pub delta: f64,
    pub after_secs: u64,
}

fn parse_shift(s: &str) -> Result<Shift, String> {
    let (column, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: give COLUMN=DELTA or COLUMN=DELTA@SECS"))?;
    if column.is_empty() || column.len() > 128 {
        return Err(format!(
            "{s:?}: the column name must be 1 to 128 characters"
        ));
    }
    let (delta, after) = match rest.split_once('@') {
        Some((d, a)) => (d, Some(a)),
        None => (rest, None),
    };
    let delta = number(delta.strip_prefix('+').unwrap_or(delta))?;
    let after_secs = match after {
        Some(a) => a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} after @ is not a whole number of seconds"))?,
        None => 0,
    };
    Ok(Shift {
        column: column.to_owned(),
        delta,
        after_secs,
    })
}

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() {
        return Err(format!("{s} is not a finite number"));
    }
    Ok(v)
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v < 0.0 {
        return Err(format!("{s} is negative; give 0 or more"));
    }
    Ok(v)
}

fn positive(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v <= 0.0 {
        return Err(format!("{s} must be greater than 0"));
    }
    Ok(v)
}

fn fraction(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s} is not a fraction between 0 and 1"));
    }
    Ok(v)
}

impl SimConfig {
    /// A configuration for tests: `devices` devices against `hub` and `mqtt`, everything else
    /// at its default.
    pub fn new(hub: &str, mqtt: &str, root_key: PathBuf, devices: u32) -> Self {
        let mut c = SimConfig::parse_from(
            ["edgefleet-sim", "--hub", hub, "--mqtt", mqtt, "--root-key"]
                .into_iter()
                .map(String::from)
                .chain([root_key.display().to_string()]),
        );
        c.root_key = root_key;
        c.devices = devices;
        c
    }

    /// Checks what clap cannot: names, URLs, and that the root key reads.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if !self.hub.starts_with("http://") && !self.hub.starts_with("https://") {
            errors.push(format!(
                "--hub {:?} must be an http:// or https:// URL",
                self.hub
            ));
        }
        if let Err(e) = edgefleet_common::telemetry::BrokerUrl::parse(&self.mqtt) {
            errors.push(format!("--mqtt: {e}"));
        }
        for t in &self.tags {
            if let Err(e) = edgefleet_common::name::validate(t) {
                errors.push(format!("--tag {t:?}: {e}"));
            }
        }
        let last_id = self.device_id(self.devices.saturating_sub(1) as usize);
        if let Err(e) = edgefleet_common::name::validate(&last_id) {
            errors.push(format!("--id-prefix {:?}: {e}", self.id_prefix));
        }
        if self.tags.len() > edgefleet_common::device::MAX_TAGS {
            errors.push(format!(
                "at most {} tags",
                edgefleet_common::device::MAX_TAGS
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Device `i`'s id.
    pub fn device_id(&self, i: usize) -> String {
        format!("{}-{i:05}", self.id_prefix)
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_reads_column_delta_and_start() {
        let s = parse_shift("fuel_price=+0.8@600").expect("shift");
        assert_eq!(
            s,
            Shift {
                column: "fuel_price".into(),
                delta: 0.8,
                after_secs: 600
            }
        );
        let s = parse_shift("x[3]=-2").expect("shift");
        assert_eq!(
            (s.column.as_str(), s.delta, s.after_secs),
            ("x[3]", -2.0, 0)
        );
    }

    #[test]
    fn a_bad_shift_says_what_is_wrong() {
        for (bad, says) in [
            ("fuel_price", "COLUMN=DELTA"),
            ("=1", "column name"),
            ("fuel_price=up", "not a number"),
            ("fuel_price=NaN", "finite"),
            ("fuel_price=1@soon", "whole number of seconds"),
            ("fuel_price=1@-5", "whole number of seconds"),
        ] {
            let e = parse_shift(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("{}=1", "c".repeat(129));
        assert!(parse_shift(&long).is_err());
    }
}
