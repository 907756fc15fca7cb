//! The automatic triggers a policy may name, judged from what the devices report:
//! - **drift**: on at least a share of the devices reporting the model, the watched columns
//!   drifted (each column's own test against the version's reference profile) for N
//!   consecutive windows in a row;
//! - **quality**: the champion's error from ground truth over the last hours is worse than
//!   its own baseline (the hours before) by a ratio, on enough matched feedback on both sides.
//!
//! Pure judgements over data handed in; the domain ([`super::Retrain::tick`]) reads the store.

use std::collections::{BTreeMap, HashMap};

use edgefleet_common::quality::ModelQuality;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::job::Trigger;
use crate::telemetry::DeviceTelemetry;

/// Longest list of watched features.
pub const MAX_FEATURES: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftTrigger {
    /// Columns watched (input features or outputs, as the drift report names them); empty:
    /// any column.
    #[serde(default)]
    pub features: Vec<String>,
    /// The share of reporting devices that must be drifting, (0, 1].
    #[serde(default = "default_share")]
    pub min_device_share: f64,
    /// Consecutive drifted windows a device needs to count as drifting.
    #[serde(default = "default_windows")]
    pub windows: u32,
    /// A device reports the model when its latest window with it arrived this recently.
    #[serde(default = "default_recent")]
    pub recent_secs: u64,
}

fn default_share() -> f64 {
    0.5
}
fn default_windows() -> u32 {
    3
}
fn default_recent() -> u64 {
    1800
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityMetric {
    /// Regression: mean absolute error; worse is higher.
    Mae,
    /// Classification: share of right labels; worse is lower.
    Accuracy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityTrigger {
    pub metric: QualityMetric,
    /// How much worse, as a ratio > 1: MAE now / MAE before ≥ ratio, or accuracy before /
    /// accuracy now ≥ ratio.
    pub ratio: f64,
    /// Fewest matched feedback rows on each side; fewer, and nothing is judged.
    #[serde(default = "default_min_matched")]
    pub min_matched: u64,
    /// "Now": the last this many hours.
    #[serde(default = "default_hours")]
    pub hours: u64,
    /// The baseline: this many hours before those.
    #[serde(default = "default_baseline_hours")]
    pub baseline_hours: u64,
}

fn default_min_matched() -> u64 {
    200
}
fn default_hours() -> u64 {
    1
}
fn default_baseline_hours() -> u64 {
    24
}

impl DriftTrigger {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if !(self.min_device_share > 0.0 && self.min_device_share <= 1.0) {
            errors.push("drift.min_device_share: a share in (0, 1]".into());
        }
        if !(1..=1000).contains(&self.windows) {
            errors.push("drift.windows: 1..=1000".into());
        }
        if !(10..=7 * 86_400).contains(&self.recent_secs) {
            errors.push("drift.recent_secs: 10..=604800".into());
        }
        if self.features.len() > MAX_FEATURES || self.features.iter().any(|f| f.len() > 128) {
            errors.push(format!(
                "drift.features: at most {MAX_FEATURES} names of at most 128 bytes"
            ));
        }
    }
}

impl QualityTrigger {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if !(self.ratio > 1.0 && self.ratio <= 100.0) {
            errors.push("quality.ratio: more than 1 (1.3: 30 % worse), at most 100".into());
        }
        if !(1..=10_000_000).contains(&self.min_matched) {
            errors.push("quality.min_matched: 1..=10000000".into());
        }
        if !(1..=24 * 30).contains(&self.hours) {
            errors.push("quality.hours: 1..=720".into());
        }
        if !(1..=24 * 90).contains(&self.baseline_hours) {
            errors.push("quality.baseline_hours: 1..=2160".into());
        }
    }
}

/// Each device's run of drifted windows, per model: (the window's sequence number, the run's
/// length). Kept in memory: after a hub restart the runs start again from the next window,
/// which errs on the side of not retraining.
#[derive(Debug, Default)]
pub struct Streaks(HashMap<(String, String), (u64, u32)>);

/// What the devices said about one model's drift, this round.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DriftTally {
    /// Devices whose latest window with the model is recent.
    pub reporting: u64,
    /// Of those, devices drifted in at least `windows` consecutive windows.
    pub drifting: u64,
    /// The highest score of each watched column that drifted, over the drifting devices.
    pub scores: BTreeMap<String, f64>,
}

impl Streaks {
    /// Takes in every device's latest window (a window already seen changes nothing) and
    /// counts the devices reporting `model` and those drifting.
    pub fn tally(
        &mut self,
        model: &str,
        t: &DriftTrigger,
        latest: &[(String, DeviceTelemetry)],
        now: u64,
    ) -> DriftTally {
        let mut tally = DriftTally::default();
        for (device, w) in latest {
            let Some(m) = w.models.iter().find(|m| m.model == model) else {
                continue;
            };
            let watched: Vec<_> = m
                .drift
                .iter()
                .filter(|c| c.drifted && (t.features.is_empty() || t.features.contains(&c.column)))
                .collect();
            let key = (model.to_owned(), device.clone());
            let entry = self.0.entry(key).or_insert((0, 0));
            if entry.0 != w.seq {
                entry.1 = if watched.is_empty() { 0 } else { entry.1 + 1 };
                entry.0 = w.seq;
            }
            if w.received_at.saturating_add(t.recent_secs) < now {
                continue;
            }
            tally.reporting += 1;
            if entry.1 >= t.windows {
                tally.drifting += 1;
                for c in watched {
                    let s = tally.scores.entry(c.column.clone()).or_insert(c.score);
                    *s = s.max(c.score);
                }
            }
        }
        tally
    }
}

/// The trigger, if the tally passes the policy.
pub fn drift_fires(t: &DriftTrigger, tally: &DriftTally) -> Option<Trigger> {
    if tally.reporting == 0 || tally.drifting == 0 {
        return None;
    }
    let share = tally.drifting as f64 / tally.reporting as f64;
    (share >= t.min_device_share).then(|| Trigger {
        kind: "drift".into(),
        detail: format!(
            "{} of {} reporting devices drifted for {} windows in a row ({:.0} % ≥ {:.0} %) on {}",
            tally.drifting,
            tally.reporting,
            t.windows,
            share * 100.0,
            t.min_device_share * 100.0,
            tally.scores.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        values: json!({
            "devices_reporting": tally.reporting,
            "devices_drifting": tally.drifting,
            "share": share,
            "min_device_share": t.min_device_share,
            "windows": t.windows,
            "scores": tally.scores,
        }),
    })
}

/// The trigger, if the champion's quality now is worse than its baseline by the ratio.
pub fn quality_fires(
    t: &QualityTrigger,
    version: u64,
    baseline: Option<&ModelQuality>,
    now: Option<&ModelQuality>,
) -> Option<Trigger> {
    let (baseline, now) = (baseline?, now?);
    if baseline.matched < t.min_matched || now.matched < t.min_matched {
        return None;
    }
    let (before, after, worse) = match t.metric {
        QualityMetric::Mae => {
            let (b, a) = (baseline.mae()?, now.mae()?);
            (b, a, if b > 0.0 { a / b } else { f64::INFINITY })
        }
        QualityMetric::Accuracy => {
            let (b, a) = (baseline.accuracy()?, now.accuracy()?);
            (b, a, if a > 0.0 { b / a } else { f64::INFINITY })
        }
    };
    let name = match t.metric {
        QualityMetric::Mae => "MAE",
        QualityMetric::Accuracy => "accuracy",
    };
    (worse >= t.ratio && worse.is_finite() || worse.is_infinite() && before != after).then(|| {
        Trigger {
            kind: "quality".into(),
            detail: format!(
                "{name} of version {version} went from {before:.4} to {after:.4} ({worse:.2}× worse ≥ {:.2}×) on {} and {} matched rows",
                t.ratio, baseline.matched, now.matched
            ),
            values: json!({
                "metric": t.metric,
                "version": version,
                "baseline": before,
                "now": after,
                "ratio": worse,
                "min_ratio": t.ratio,
                "baseline_matched": baseline.matched,
                "now_matched": now.matched,
                "hours": t.hours,
                "baseline_hours": t.baseline_hours,
            }),
        }
    })
}

#[cfg(test)]
mod tests {
    use edgefleet_common::drift::{ColumnDrift, Method};

    use super::*;
    use crate::telemetry::LatestModelWindow;

    fn column(name: &str, score: f64, drifted: bool) -> ColumnDrift {
        ColumnDrift {
            column: name.into(),
            method: Method::Wasserstein,
            score,
            threshold: 0.1,
            drifted,
            numeric: None,
            categorical: None,
            count: 10,
        }
    }

    /// `device`'s window `seq`, received at `at`, with these columns' drift.
    fn window(
        device: &str,
        seq: u64,
        at: u64,
        drift: Vec<ColumnDrift>,
    ) -> (String, DeviceTelemetry) {
        (
            device.into(),
            DeviceTelemetry {
                seq,
                window_start: at - 10,
                window_end: at,
                received_at: at,
                health: Default::default(),
                outbox: Default::default(),
                agent_version: "t".into(),
                models: vec![LatestModelWindow {
                    model: "demand".into(),
                    version: 1,
                    requests: 10,
                    errors: 0,
                    latency_ms: Default::default(),
                    drift,
                }],
            },
        )
    }

    fn trigger(features: &[&str]) -> DriftTrigger {
        DriftTrigger {
            features: features.iter().map(|f| (*f).into()).collect(),
            min_device_share: 0.5,
            windows: 3,
            recent_secs: 60,
        }
    }

    #[test]
    fn drift_fires_only_after_n_windows_in_a_row_on_enough_devices() {
        let t = trigger(&["fuel_price"]);
        let mut s = Streaks::default();
        let drifted = || vec![column("fuel_price", 0.4, true), column("temp", 0.01, false)];
        let calm = || vec![column("fuel_price", 0.02, false)];
        // Windows 1..=3 of shop-1 drift; shop-2 stays calm; the same window seen twice
        // counts once.
        for seq in 1..=3 {
            let latest = [
                window("shop-1", seq, 100 + seq, drifted()),
                window("shop-2", seq, 100 + seq, calm()),
            ];
            let tally = s.tally("demand", &t, &latest, 100 + seq);
            let again = s.tally("demand", &t, &latest, 100 + seq);
            assert_eq!(tally, again, "a window already seen changes nothing");
            assert_eq!(tally.reporting, 2);
            assert_eq!(tally.drifting, u64::from(seq == 3), "window {seq}");
        }
        let latest = [
            window("shop-1", 3, 103, drifted()),
            window("shop-2", 3, 103, calm()),
        ];
        let tally = s.tally("demand", &t, &latest, 103);
        let fired = drift_fires(&t, &tally).expect("1 of 2 devices is 50 %");
        assert_eq!(fired.kind, "drift");
        assert_eq!(fired.values["devices_drifting"], 1);
        assert_eq!(fired.values["scores"]["fuel_price"], 0.4);
        assert!(
            fired.detail.contains("1 of 2 reporting devices"),
            "{}",
            fired.detail
        );
        // At 75 % it does not fire; a calm window breaks the run.
        let strict = DriftTrigger {
            min_device_share: 0.75,
            ..t.clone()
        };
        assert!(drift_fires(&strict, &tally).is_none());
        let latest = [window("shop-1", 4, 104, calm())];
        assert_eq!(s.tally("demand", &t, &latest, 104).drifting, 0);
    }

    #[test]
    fn unwatched_columns_and_silent_devices_do_not_count() {
        let t = trigger(&["price"]);
        let mut s = Streaks::default();
        for seq in 1..=5 {
            let latest = [
                // Drifting, but only on a column the policy does not watch.
                window("shop-1", seq, 100 + seq, vec![column("temp", 0.9, true)]),
                // Drifting on price, but its last window is older than recent_secs.
                window("shop-2", seq, 10, vec![column("price", 0.9, true)]),
            ];
            let tally = s.tally("demand", &t, &latest, 110);
            assert_eq!((tally.reporting, tally.drifting), (1, 0), "window {seq}");
        }
        // Any column, when none is named; a model the device does not serve, never.
        let any = trigger(&[]);
        let mut s = Streaks::default();
        for seq in 1..=3 {
            let latest = [window(
                "shop-1",
                seq,
                100 + seq,
                vec![column("temp", 0.9, true)],
            )];
            assert_eq!(s.tally("other", &any, &latest, 103).reporting, 0);
            let tally = s.tally("demand", &any, &latest, 103);
            assert_eq!(tally.drifting, u64::from(seq == 3));
        }
    }

    fn quality(matched: u64, abs_errors: &[f64]) -> ModelQuality {
        let mut q = ModelQuality::new("demand", 1);
        for e in abs_errors {
            q.score_values(&[10.0 + e], &[10.0], false).expect("score");
        }
        q.matched = matched;
        q
    }

    #[test]
    fn quality_fires_when_worse_by_the_ratio_on_enough_feedback() {
        let t = QualityTrigger {
            metric: QualityMetric::Mae,
            ratio: 1.5,
            min_matched: 4,
            hours: 1,
            baseline_hours: 24,
        };
        let before = quality(4, &[1.0, 1.0, 1.0, 1.0]);
        let worse = quality(4, &[2.0, 2.0, 2.0, 2.0]);
        let bit_worse = quality(4, &[1.2, 1.2, 1.2, 1.2]);
        let fired = quality_fires(&t, 1, Some(&before), Some(&worse)).expect("2× worse");
        assert_eq!(fired.kind, "quality");
        assert_eq!(fired.values["baseline"], 1.0);
        assert_eq!(fired.values["now"], 2.0);
        assert!(
            fired
                .detail
                .contains("MAE of version 1 went from 1.0000 to 2.0000"),
            "{}",
            fired.detail
        );
        assert!(quality_fires(&t, 1, Some(&before), Some(&bit_worse)).is_none());
        // Too little feedback on either side, or none: nothing is judged.
        let few = quality(3, &[2.0, 2.0, 2.0]);
        assert!(quality_fires(&t, 1, Some(&before), Some(&few)).is_none());
        assert!(quality_fires(&t, 1, None, Some(&worse)).is_none());
        // A perfect baseline that turns imperfect is infinitely worse.
        let perfect = quality(4, &[0.0, 0.0, 0.0, 0.0]);
        assert!(quality_fires(&t, 1, Some(&perfect), Some(&worse)).is_some());
        assert!(quality_fires(&t, 1, Some(&perfect), Some(&perfect)).is_none());
        // Accuracy on a regression has nothing to read.
        let acc = QualityTrigger {
            metric: QualityMetric::Accuracy,
            ..t
        };
        assert!(quality_fires(&acc, 1, Some(&before), Some(&worse)).is_none());
    }
}
