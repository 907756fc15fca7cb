//! Sample capture: the hub's signed instructions in force, and each window's reservoir of
//! (inputs, prediction, truth) rows per model version.
//!
//! Off unless the hub's bundle carries a capture instruction for this device and model, signed
//! under the root's delegation for the model and unexpired (`update` verifies it and calls
//! [`Capture::set`]). While one is in force, predictions with an id keep their inputs, and each
//! matched feedback row is offered to the window's reservoir with probability `rate`; the
//! reservoir keeps a uniform sample of at most `max_rows` of the offered rows (Vitter's
//! algorithm R), so a flood of feedback costs a counter, not memory. At each telemetry close
//! [`Capture::take`] empties the reservoirs into [`SampleBatch`]es.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use edgefleet_common::sample::{CaptureInstruction, SampleBatch, SampleRow};

/// One window's reservoir of one model version.
#[derive(Debug)]
struct Reservoir {
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Rows offered (passed the rate), of which `rows` is a uniform sample.
    offered: u64,
    max_rows: u32,
    rows: Vec<SampleRow>,
}

#[derive(Debug, Default)]
struct State {
    /// Model → the instruction in force.
    policies: HashMap<String, CaptureInstruction>,
    /// Model → the newest serial accepted: an older instruction (a replay) is refused.
    newest: HashMap<String, u64>,
    reservoirs: BTreeMap<(String, u64), Reservoir>,
    window_start: u64,
    /// xorshift64* state: sampling needs no cryptographic randomness.
    rng: u64,
}

#[derive(Debug)]
pub struct Capture {
    state: Mutex<State>,
    /// Some instruction is held: the inference path asks [`Capture::wants`] only then (capture
    /// is off on almost every device, and a lock per request would be for nothing).
    any: std::sync::atomic::AtomicBool,
}

/// What a reservoir's columns are called.
pub struct Columns<'a> {
    pub inputs: &'a [String],
    pub outputs: &'a [String],
}

impl Capture {
    /// Nothing in force; the first window starts at `now` (seconds).
    pub fn new(now: u64, seed: u64) -> Self {
        Self {
            state: Mutex::new(State {
                window_start: now,
                rng: seed | 1,
                ..State::default()
            }),
            any: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instructions of the bundle just applied, each verified (signature, delegation,
    /// device, expiry) by the caller. A model the bundle names no instruction for stops
    /// capturing; an instruction older than one accepted before is refused and the newer one
    /// stands. Returns the models capturing now.
    pub fn set(&self, verified: Vec<CaptureInstruction>) -> Vec<String> {
        let mut s = self.lock();
        let mut next: HashMap<String, CaptureInstruction> = HashMap::new();
        for c in verified {
            let newest = s.newest.get(&c.model).copied().unwrap_or(0);
            if c.serial < newest {
                tracing::warn!(model = %c.model, serial = c.serial, newest, "an older capture instruction refused");
                if let Some(current) = s.policies.get(&c.model) {
                    next.insert(c.model.clone(), current.clone());
                }
                continue;
            }
            s.newest.insert(c.model.clone(), c.serial);
            next.insert(c.model.clone(), c);
        }
        for (model, c) in &next {
            if s.policies.get(model) != Some(c) {
                tracing::info!(%model, rate = c.rate(), max_rows = c.max_rows, "sample capture on");
            }
        }
        for model in s.policies.keys() {
            if !next.contains_key(model) {
                tracing::info!(%model, "sample capture off");
            }
        }
        s.policies = next;
        self.any
            .store(!s.policies.is_empty(), std::sync::atomic::Ordering::Release);
        let mut on: Vec<String> = s.policies.keys().cloned().collect();
        on.sort();
        on
    }

    /// Models whose samples are captured at `now`.
    pub fn capturing(&self, now: u64) -> u64 {
        self.lock()
            .policies
            .values()
            .filter(|c| now < c.expires_at)
            .count() as u64
    }

    /// Whether `model`'s predictions should keep their inputs now.
    pub fn wants(&self, model: &str, now: u64) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        self.lock()
            .policies
            .get(model)
            .is_some_and(|c| now < c.expires_at)
    }

    /// Offers one matched row of `model` `version`.
    pub fn offer(&self, model: &str, version: u64, columns: Columns<'_>, row: SampleRow, now: u64) {
        let mut s = self.lock();
        let Some(c) = s.policies.get(model).filter(|c| now < c.expires_at) else {
            return;
        };
        let (rate_ppm, max_rows) = (c.rate_ppm, c.max_rows);
        if next(&mut s.rng) % 1_000_000 >= u64::from(rate_ppm) {
            return;
        }
        let draw = next(&mut s.rng);
        let r = s
            .reservoirs
            .entry((model.to_owned(), version))
            .or_insert_with(|| Reservoir {
                inputs: columns.inputs.to_vec(),
                outputs: columns.outputs.to_vec(),
                offered: 0,
                max_rows,
                rows: Vec::new(),
            });
        r.offered += 1;
        if r.rows.len() < r.max_rows as usize {
            r.rows.push(row);
        } else {
            // Algorithm R: the n-th offered row replaces a kept one with probability k/n.
            let j = draw % r.offered;
            if let Some(slot) = r.rows.get_mut(j as usize) {
                *slot = row;
            }
        }
    }

    /// Empties the reservoirs into batches for the window ending `now` (device and sequence
    /// numbers are the caller's to fill), and starts the next window.
    pub fn take(&self, now: u64) -> Vec<SampleBatch> {
        let mut s = self.lock();
        let start = std::mem::replace(&mut s.window_start, now);
        std::mem::take(&mut s.reservoirs)
            .into_iter()
            .filter(|(_, r)| !r.rows.is_empty())
            .map(|((model, version), r)| SampleBatch {
                device_id: String::new(),
                seq: 0,
                model,
                version,
                window_start: start.min(now),
                window_end: now,
                offered: r.offered,
                inputs: r.inputs,
                outputs: r.outputs,
                rows: r.rows,
            })
            .collect()
    }
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cfg(test)]
mod tests {
    use edgefleet_common::sample::Value;

    use super::*;

    fn instruction(model: &str, rate_ppm: u32, max_rows: u32, serial: u64) -> CaptureInstruction {
        CaptureInstruction {
            device: "shop-1".into(),
            model: model.into(),
            rate_ppm,
            max_rows,
            serial,
            issued_at: 0,
            expires_at: 1000,
        }
    }

    fn row(i: u64) -> SampleRow {
        SampleRow {
            made_at: i,
            inputs: vec![i as f64],
            predicted: vec![Value::Number(1.0)],
            truth: vec![Value::Number(2.0)],
        }
    }

    fn offer(c: &Capture, n: u64, now: u64) {
        let (inputs, outputs) = (vec!["x".to_owned()], vec!["y".to_owned()]);
        for i in 0..n {
            let columns = Columns {
                inputs: &inputs,
                outputs: &outputs,
            };
            c.offer("demand", 1, columns, row(i), now);
        }
    }

    #[test]
    fn off_without_an_instruction_and_capped_under_a_flood() {
        let c = Capture::new(0, 7);
        offer(&c, 100, 10);
        assert!(c.take(20).is_empty(), "no instruction: nothing captured");
        assert!(!c.wants("demand", 20));
        assert_eq!(
            c.set(vec![instruction("demand", 1_000_000, 10, 5)]),
            ["demand"]
        );
        assert!(c.wants("demand", 20));
        offer(&c, 10_000, 30);
        let batches = c.take(40);
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!((b.rows.len(), b.offered), (10, 10_000));
        assert_eq!((b.window_start, b.window_end), (20, 40));
        // A uniform sample: not just the first ten rows.
        assert!(b.rows.iter().any(|r| r.made_at >= 10), "{:?}", b.rows);
        // Expired: off.
        offer(&c, 10, 2000);
        assert!(c.take(2000).is_empty());
        assert!(!c.wants("demand", 2000));
    }

    #[test]
    fn the_rate_thins_rows_and_a_replayed_older_instruction_is_refused() {
        let c = Capture::new(0, 11);
        c.set(vec![instruction("demand", 100_000, 10_000, 5)]);
        offer(&c, 10_000, 1);
        let kept = c.take(2)[0].rows.len();
        assert!((800..1200).contains(&kept), "{kept} of 10000 at 10 %");
        // An older serial does not replace the newer one; absence switches it off.
        c.set(vec![instruction("demand", 1_000_000, 1, 4)]);
        offer(&c, 1000, 3);
        assert!(
            c.take(4)[0].rows.len() > 1,
            "the older instruction did not apply"
        );
        assert!(c.set(vec![]).is_empty());
        offer(&c, 10, 5);
        assert!(c.take(6).is_empty());
    }
}
