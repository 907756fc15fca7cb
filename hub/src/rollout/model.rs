//! What a rollout is: the spec an admin writes, the record the hub keeps, its states, and
//! which devices each wave holds.

use std::collections::BTreeMap;

use edgefleet_common::{Digest, name};
use serde::{Deserialize, Serialize};

use super::gates::{GateConfig, GateVerdict, Outcome};
use crate::store::DeviceRecord;

/// Most waves a rollout may have.
pub const MAX_WAVES: usize = 20;
/// Longest bake of a wave (a week).
pub const MAX_BAKE_SECS: u64 = 7 * 86_400;

/// Which devices a rollout covers (approved devices only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Every device.
    #[default]
    All,
    /// Devices with any of these tags.
    Tags(Vec<String>),
    /// These devices.
    Devices(Vec<String>),
}

impl Selector {
    pub fn matches(&self, d: &DeviceRecord) -> bool {
        match self {
            Selector::All => true,
            Selector::Tags(tags) => tags.iter().any(|t| d.tags.contains(t)),
            Selector::Devices(ids) => ids.contains(&d.id),
        }
    }

    /// Whether a device could be in both.
    pub fn overlaps(&self, other: &Selector) -> bool {
        match (self, other) {
            (Selector::All, _) | (_, Selector::All) => true,
            (Selector::Tags(a), Selector::Tags(b))
            | (Selector::Devices(a), Selector::Devices(b)) => a.iter().any(|x| b.contains(x)),
            // A tag and an id list may share a device; the hub cannot rule it out for devices
            // that enroll later.
            (Selector::Tags(_), Selector::Devices(_))
            | (Selector::Devices(_), Selector::Tags(_)) => true,
        }
    }

    fn names(&self) -> &[String] {
        match self {
            Selector::All => &[],
            Selector::Tags(n) | Selector::Devices(n) => n,
        }
    }
}

/// How far a wave reaches: a number of devices or a percentage of the selected ones,
/// cumulative (wave 3 of `1, 5 %, 25 %, 100 %` holds a quarter of the fleet).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    Devices(u64),
    Percent(f64),
}

impl WaveSize {
    /// Devices covered when `selected` devices are selected.
    pub fn reach(self, selected: usize) -> usize {
        match self {
            WaveSize::Devices(n) => (n as usize).min(selected),
            WaveSize::Percent(p) => {
                let n = (p / 100.0 * selected as f64).ceil() as usize;
                // Any positive percentage of a non-empty fleet is at least one device.
                if p > 0.0 { n.max(1).min(selected) } else { 0 }
            }
        }
    }

    /// `1`, `5%`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .map(WaveSize::Percent)
                .map_err(|_| format!("wave {s:?}: not a percentage")),
            None => s
                .parse::<u64>()
                .map(WaveSize::Devices)
                .map_err(|_| format!("wave {s:?}: give a device count (5) or a percentage (5%)")),
        }
    }
}

fn default_waves() -> Vec<WaveSize> {
    vec![
        WaveSize::Devices(1),
        WaveSize::Percent(5.0),
        WaveSize::Percent(25.0),
        WaveSize::Percent(100.0),
    ]
}

fn default_bake() -> u64 {
    600
}

fn default_bake_window() -> u64 {
    60
}

fn default_install_timeout() -> u64 {
    900
}

/// What a failed gate (or an inconclusive one past its longest bake) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Every device the rollout moved gets its previous version back.
    #[default]
    Rollback,
    /// Stop where it is (`paused`) and wait for an operator to resume or roll back.
    Pause,
    /// Stop for good (`failed`): the devices moved so far keep the version, nothing else
    /// moves, and an operator may still roll back.
    Halt,
}

/// What an admin asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub model: String,
    pub version: u64,
    #[serde(default)]
    pub selector: Selector,
    #[serde(default = "default_waves")]
    pub waves: Vec<WaveSize>,
    /// How long a wave runs on the new version before its gates judge it. 0: the install
    /// gate alone decides (no metric gates).
    #[serde(default = "default_bake")]
    pub bake_secs: u64,
    /// While a wave installs and bakes, its devices and an equal sample of baseline devices
    /// close telemetry windows every this many seconds (a signed instruction in their
    /// bundle), so a bake judges minutes of data, not one 15-minute window. 0: leave the
    /// devices' windows alone. Unused without a bake.
    #[serde(default = "default_bake_window")]
    pub bake_window_secs: u64,
    /// How long an inconclusive bake may be extended (default: three bakes).
    #[serde(default)]
    pub max_bake_secs: Option<u64>,
    /// How long a wave's devices may take to install before the install gate gives up.
    #[serde(default = "default_install_timeout")]
    pub install_timeout_secs: u64,
    #[serde(default)]
    pub gates: GateConfig,
    #[serde(default)]
    pub on_failure: Policy,
    /// Times of day in which devices may be moved (each window in UTC, a named zone, or each
    /// device's own zone); none: any time. A wave starts only inside one (a device-zone window
    /// is open somewhere at any time), and each device moves only once a window is open for
    /// it; a wave whose devices wait for their window is not installed yet.
    #[serde(default)]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// A running rollout this one replaces (it is aborted); without it, an overlap is refused.
    #[serde(default)]
    pub supersedes: Option<u64>,
}

impl RolloutSpec {
    pub fn max_bake(&self) -> u64 {
        self.max_bake_secs
            .unwrap_or(self.bake_secs.saturating_mul(3))
            .max(self.bake_secs)
    }

    /// Every problem at once, each naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = name::validate(&self.model) {
            out.push(format!("model: {e}"));
        }
        for n in self.selector.names() {
            if let Err(e) = name::validate(n) {
                out.push(format!("selector: {e}"));
            }
        }
        if matches!(&self.selector, Selector::Tags(t) | Selector::Devices(t) if t.is_empty()) {
            out.push("selector: name at least one tag or device (or select all)".into());
        }
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            out.push(format!("waves: give 1 to {MAX_WAVES} waves"));
        }
        for w in &self.waves {
            if let WaveSize::Percent(p) = w
                && !(p.is_finite() && *p > 0.0 && *p <= 100.0)
            {
                out.push(format!("waves: {p} % is not within 0 < p ≤ 100"));
            }
            if *w == WaveSize::Devices(0) {
                out.push("waves: a wave of 0 devices".into());
            }
        }
        if self.waves.last() != Some(&WaveSize::Percent(100.0)) {
            out.push("waves: the last wave must be 100% (a rollout ends with every selected device on the version)".into());
        }
        if self.bake_secs > MAX_BAKE_SECS || self.max_bake() > MAX_BAKE_SECS {
            out.push(format!("bake_secs, max_bake_secs: at most {MAX_BAKE_SECS}"));
        }
        let windows = edgefleet_common::device::INSTRUCTED_WINDOW_SECS;
        if self.bake_window_secs != 0 && !windows.contains(&self.bake_window_secs) {
            out.push(format!(
                "bake_window_secs: 0 (devices keep their own windows) or {}..={}",
                windows.start(),
                windows.end()
            ));
        }
        if self.install_timeout_secs == 0 || self.install_timeout_secs > MAX_BAKE_SECS {
            out.push(format!("install_timeout_secs: 1..={MAX_BAKE_SECS}"));
        }
        for w in &self.maintenance_windows {
            for e in w.problems() {
                out.push(format!("maintenance_windows: {e}"));
            }
        }
        if self.maintenance_windows.len() > 24 {
            out.push("maintenance_windows: at most 24".into());
        }
        out.extend(self.gates.problems());
        out
    }

    /// Whether a wave may start at `now` (unix seconds): a window of a fixed zone is open, or
    /// a window follows the devices' zones (each device then waits for its own).
    pub fn may_start_wave(&self, now: u64) -> bool {
        self.maintenance_windows.is_empty()
            || self
                .maintenance_windows
                .iter()
                .any(|w| w.follows_device() || w.contains(now, None))
    }

    /// Whether a device in `device_zone` (its reported IANA zone, if any) may be moved at
    /// `now`.
    pub fn may_move(&self, now: u64, device_zone: Option<&str>) -> bool {
        self.maintenance_windows.is_empty()
            || self
                .maintenance_windows
                .iter()
                .any(|w| w.contains(now, device_zone))
    }
}

/// A daily time range, `from` to `to` as "HH:MM"; past midnight when `to` < `from`
/// ("22:00" to "04:00"). In `zone`: UTC when absent, `"device"` for each device's own zone (as
/// its agent reports it; UTC for a device that reports none or one the hub does not know), or
/// an IANA name (`"Europe/Berlin"`), daylight saving time included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The `zone` that follows each device.
pub const DEVICE_ZONE: &str = "device";

impl MaintenanceWindow {
    /// Parses the CLI's form: "22:00-04:00" (UTC), "22:00-04:00@device",
    /// "22:00-04:00@Europe/Berlin".
    pub fn parse(s: &str) -> Result<Self, String> {
        let (range, zone) = match s.split_once('@') {
            Some((range, zone)) => (range, Some(zone.trim().to_owned())),
            None => (s, None),
        };
        let (from, to) = range.split_once('-').ok_or_else(|| {
            format!("{s:?}: give HH:MM-HH:MM[@ZONE], e.g. 22:00-04:00 (UTC), 22:00-04:00@device or 22:00-04:00@Europe/Berlin")
        })?;
        let w = Self {
            from: from.trim().to_owned(),
            to: to.trim().to_owned(),
            zone,
        };
        w.minutes()?;
        w.check_zone()?;
        Ok(w)
    }

    /// Every problem with the window, for the spec's checks.
    pub fn problems(&self) -> Vec<String> {
        [self.minutes().err(), self.check_zone().err()]
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn follows_device(&self) -> bool {
        self.zone.as_deref() == Some(DEVICE_ZONE)
    }

    fn check_zone(&self) -> Result<(), String> {
        match self.zone.as_deref() {
            None | Some(DEVICE_ZONE) => Ok(()),
            Some(z) => zone(z).map(|_| ()).ok_or_else(|| {
                format!("zone {z:?} is not a time zone the hub knows: give an IANA name (Europe/Berlin), UTC, or \"device\"")
            }),
        }
    }

    /// Minutes after midnight of `from` and `to`.
    pub fn minutes(&self) -> Result<(u64, u64), String> {
        let one = |t: &str| -> Result<u64, String> {
            let bad = || format!("{t:?} is not a time of day HH:MM");
            let (h, m) = t.split_once(':').ok_or_else(bad)?;
            let (h, m): (u64, u64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 || t.len() > 5 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (from, to) = (one(&self.from)?, one(&self.to)?);
        if from == to {
            return Err(format!("{}-{} is empty", self.from, self.to));
        }
        Ok((from, to))
    }

    /// Whether the window is open at `now` (unix seconds) for a device in `device_zone`.
    pub fn contains(&self, now: u64, device_zone: Option<&str>) -> bool {
        let Ok((from, to)) = self.minutes() else {
            return false;
        };
        let zone_name = match self.zone.as_deref() {
            Some(DEVICE_ZONE) => device_zone,
            other => other,
        };
        let minute = minute_of_day(now, zone_name.and_then(zone));
        if from < to {
            (from..to).contains(&minute)
        } else {
            minute >= from || minute < to
        }
    }
}

/// A time zone by IANA name (bounded: a device reports it).
fn zone(name: &str) -> Option<jiff::tz::TimeZone> {
    if name.is_empty() || name.len() > 64 {
        return None;
    }
    jiff::tz::TimeZone::get(name).ok()
}

/// Minutes after local midnight at `now` in `zone` (UTC when none).
fn minute_of_day(now: u64, zone: Option<jiff::tz::TimeZone>) -> u64 {
    let utc = (now / 60) % (24 * 60);
    let (Some(tz), Ok(secs)) = (zone, i64::try_from(now)) else {
        return utc;
    };
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => {
            let local = t.to_zoned(tz);
            local.hour() as u64 * 60 + local.minute() as u64
        }
        Err(_) => utc,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created; the driver starts the first wave on its next step.
    Pending,
    /// The current wave's devices are installing.
    Running,
    /// The current wave runs the new version; its gates judge it at the end of the bake.
    Baking,
    Paused,
    Succeeded,
    /// A gate failed (or stayed inconclusive) and the policy (`halt`) stopped it for good:
    /// the moved devices keep the version; an operator may still roll back.
    Failed,
    RollingBack,
    RolledBack,
    Aborted,
}

impl State {
    /// The state as the API spells it (`rolling_back`).
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Baking => "baking",
            State::Paused => "paused",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RollingBack => "rolling_back",
            State::RolledBack => "rolled_back",
            State::Aborted => "aborted",
        }
    }

    /// Nothing more happens on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::RolledBack | State::Aborted | State::Failed
        )
    }

    /// Holds its devices: another rollout may not take them.
    pub fn is_active(self) -> bool {
        !self.is_terminal()
    }
}

/// A device the rollout moved to the new version, and what it served before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub wave: usize,
    pub at: u64,
    /// Its desired version of the model before, if any: what a rollback restores.
    pub previous: Option<u64>,
}

/// A wave as it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveRecord {
    pub index: usize,
    pub started_at: u64,
    /// When every device had installed (within the ratio): the bake started.
    pub baking_since: Option<u64>,
    pub verdicts: Vec<GateVerdict>,
    pub outcome: Option<Outcome>,
    /// An inconclusive bake was extended (the audit log says so once).
    #[serde(default)]
    pub extended: bool,
}

/// What the hub keeps about a rollout (JSON in the `rollouts` tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub spec: RolloutSpec,
    pub state: State,
    /// Index of the current (or last) wave.
    pub wave: usize,
    pub waves: Vec<WaveRecord>,
    pub moved: BTreeMap<String, Moved>,
    /// What each selected tag was assigned before the rollout succeeded and handed its version
    /// over to the tags (none: the tag had no assignment): what rolling back a succeeded
    /// rollout restores.
    #[serde(default)]
    pub tags_before: BTreeMap<String, Option<u64>>,
    /// Why it stopped, paused or failed.
    pub reason: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl Rollout {
    /// The telemetry cohort of the current wave: its devices' windows merge into this scope,
    /// so the gates compare exactly the wave's canaries with its baseline. Never a tag (tags
    /// cannot start with `~`).
    pub fn cohort(&self) -> String {
        format!("~rollout-{}-{}", self.id, self.wave)
    }

    pub fn current(&self) -> Option<&WaveRecord> {
        self.waves.get(self.wave)
    }
}

/// The selected devices in the rollout's fixed order: by a hash of the rollout id and the
/// device id, so membership is deterministic, spread across the fleet, and stable when the
/// hub restarts or devices join (a resumed rollout keeps its canaries).
pub fn ordered(rollout_id: u64, devices: &[DeviceRecord]) -> Vec<String> {
    let mut ranked: Vec<(Digest, &str)> = devices
        .iter()
        .map(|d| {
            let mut bytes = rollout_id.to_be_bytes().to_vec();
            bytes.extend_from_slice(d.id.as_bytes());
            (Digest::of(&bytes), d.id.as_str())
        })
        .collect();
    ranked.sort_by(|a, b| a.0.0.cmp(&b.0.0).then(a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, id)| id.to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            public_key: edgefleet_common::SecretKey::generate()
                .expect("key")
                .public(),
            tags: vec![],
            hostname: String::new(),
            agent_version: String::new(),
            approved: true,
            enrolled_at: 0,
            last_seen: None,
            status: None,
        }
    }

    #[test]
    fn membership_is_stable_and_a_joiner_does_not_reshuffle_the_canaries() {
        let fleet: Vec<DeviceRecord> = (0..50).map(|i| device(&format!("shop-{i}"))).collect();
        let order = ordered(7, &fleet);
        assert_eq!(order, ordered(7, &fleet), "deterministic");
        assert_ne!(order, ordered(8, &fleet), "another rollout, other canaries");
        let mut grown = fleet.clone();
        grown.push(device("shop-late"));
        let regrown = ordered(7, &grown);
        let without: Vec<&String> = regrown.iter().filter(|d| *d != "shop-late").collect();
        assert_eq!(
            without,
            order.iter().collect::<Vec<_>>(),
            "relative order kept"
        );
    }

    #[test]
    fn waves_reach_counts_and_percentages() {
        assert_eq!(WaveSize::Devices(1).reach(50), 1);
        assert_eq!(WaveSize::Devices(80).reach(50), 50);
        assert_eq!(WaveSize::Percent(5.0).reach(50), 3);
        assert_eq!(WaveSize::Percent(1.0).reach(20), 1, "at least one device");
        assert_eq!(WaveSize::Percent(100.0).reach(50), 50);
        assert_eq!(WaveSize::Percent(100.0).reach(0), 0);
        assert_eq!(WaveSize::parse("5%"), Ok(WaveSize::Percent(5.0)));
        assert_eq!(WaveSize::parse(" 3 "), Ok(WaveSize::Devices(3)));
        assert!(WaveSize::parse("x%").is_err());
    }

    #[test]
    fn a_spec_reports_every_problem() {
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "model": "Bad Name", "version": 2, "selector": {"tags": []},
            "waves": [{"percent": 150.0}], "gates": {"max_p95_ratio": 0.5}
        }))
        .expect("parse");
        let problems = spec.problems().join("\n");
        for want in ["model:", "selector:", "150", "last wave", "max_p95_ratio"] {
            assert!(problems.contains(want), "{want} missing in:\n{problems}");
        }
        let unknown = serde_json::from_value::<RolloutSpec>(serde_json::json!({
            "model": "m", "version": 1, "wavez": []
        }));
        assert!(unknown.is_err());
    }
}
