//! Aggregates: windows of one model version merged across devices and windows, and the
//! figures read off them.

use edgefleet_common::sketch::{LatencySketch, Profile};
use edgefleet_common::telemetry::DecodedWindow;
use serde::{Deserialize, Serialize};

use crate::error::{HubError, HubResult};

/// Merged windows of one model version, hour and scope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregate {
    #[serde(with = "serde_bytes")]
    pub profile: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub latency: Vec<u8>,
    pub requests: u64,
    pub errors: u64,
    pub windows: u64,
    pub first_window_start: u64,
    pub last_window_end: u64,
}

/// An [`Aggregate`] with its sketches decoded.
#[derive(Debug, Clone)]
pub struct Merged {
    pub profile: Profile,
    pub latency: LatencySketch,
    pub requests: u64,
    pub errors: u64,
    pub windows: u64,
    pub first_window_start: u64,
    pub last_window_end: u64,
}

/// What merges into an aggregate: a window's (or another aggregate's) figures, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MergedRef<'a> {
    pub profile: &'a Profile,
    pub latency: &'a LatencySketch,
    pub requests: u64,
    pub errors: u64,
    pub windows: u64,
    pub first_window_start: u64,
    pub last_window_end: u64,
}

impl<'a> MergedRef<'a> {
    pub(super) fn window(w: &'a DecodedWindow, start: u64, end: u64) -> Self {
        MergedRef {
            profile: &w.profile,
            latency: &w.latency,
            requests: w.requests,
            errors: w.errors,
            windows: 1,
            first_window_start: start,
            last_window_end: end,
        }
    }
}

impl Merged {
    pub(super) fn from_window(w: &DecodedWindow, start: u64, end: u64) -> Self {
        Merged {
            profile: w.profile.clone(),
            latency: w.latency.clone(),
            requests: w.requests,
            errors: w.errors,
            windows: 1,
            first_window_start: start,
            last_window_end: end,
        }
    }

    pub fn as_ref(&self) -> MergedRef<'_> {
        MergedRef {
            profile: &self.profile,
            latency: &self.latency,
            requests: self.requests,
            errors: self.errors,
            windows: self.windows,
            first_window_start: self.first_window_start,
            last_window_end: self.last_window_end,
        }
    }

    pub(super) fn decode(a: &Aggregate) -> HubResult<Self> {
        Ok(Merged {
            profile: Profile::from_bytes(&a.profile)
                .map_err(|e| HubError::Internal(format!("stored aggregate: {e}")))?,
            latency: LatencySketch::try_from(a.latency.clone())
                .map_err(|e| HubError::Internal(format!("stored aggregate: {e}")))?,
            requests: a.requests,
            errors: a.errors,
            windows: a.windows,
            first_window_start: a.first_window_start,
            last_window_end: a.last_window_end,
        })
    }

    pub(super) fn encode(&self) -> Aggregate {
        Aggregate {
            profile: self.profile.to_bytes(),
            latency: self.latency.clone().into(),
            requests: self.requests,
            errors: self.errors,
            windows: self.windows,
            first_window_start: self.first_window_start,
            last_window_end: self.last_window_end,
        }
    }

    /// Whether [`merge`](Self::merge) would accept `other`; changes nothing.
    pub fn check_merge(&self, other: MergedRef<'_>) -> Result<(), String> {
        self.profile
            .check_merge(other.profile)
            .map_err(|e| e.to_string())?;
        self.latency
            .check_merge(other.latency)
            .map_err(|e| e.to_string())
    }

    /// Adds `other` in; refused (with a reason, nothing changed) when the profiles' columns
    /// differ or a count would overflow.
    pub fn merge(&mut self, other: MergedRef<'_>) -> Result<(), String> {
        self.check_merge(other)?;
        // Each merge refuses only what the check refused, and changes nothing when it does:
        // after the check, neither can leave the other half done.
        self.profile
            .merge(other.profile)
            .map_err(|e| e.to_string())?;
        self.latency
            .merge(other.latency)
            .map_err(|e| e.to_string())?;
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.windows += other.windows;
        self.first_window_start = self.first_window_start.min(other.first_window_start);
        self.last_window_end = self.last_window_end.max(other.last_window_end);
        Ok(())
    }
}

/// Latency quantiles, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl LatencyMs {
    pub fn of(s: &LatencySketch) -> Self {
        let q = |q| s.quantile_us(q).map(|us| us / 1000.0);
        LatencyMs {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}
