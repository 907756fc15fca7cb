//! The matching store: recent predictions by (model, request id), in sled.
//!
//! Trees (in the agent's one sled database, beside the outbox's):
//! - `feedback_predictions`: `model \0 id` → [`Stored`] (postcard, a format byte first);
//! - `feedback_by_time`: `at_ms ‖ seq` (big-endian) → `size ‖ model \0 id`, oldest first: what
//!   eviction and expiry walk;
//! - `feedback_meta`: the count, the bytes and the next sequence number;
//! - `feedback_plans`: `model \0 version` → a classifier's class names, which scoring needs
//!   after the version has stopped serving.
//!
//! Every change is one sled transaction over the trees it touches, so the counters always
//! agree with what is held, across kill -9. The store does not flush: its owner does, off the
//! request path. It is not thread-safe on its own: [`super::Feedback`] holds it in a mutex.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::plan::Prediction;
use crate::error::{AgentError, AgentResult};

/// The store's bounds (the agent configuration's `feedback_*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_predictions: u64,
    pub max_age_ms: u64,
    pub max_bytes: u64,
}

/// Most entries one write removes to get back within the bounds beyond those its own new
/// entries displace (a bound lowered at a restart is reached over a few writes, not in one
/// huge transaction).
pub const MAX_EVICT_PER_WRITE: usize = 20_000;

const FORMAT: u8 = 1;
const COUNT: &[u8] = b"count";
const BYTES: &[u8] = b"bytes";
const NEXT_SEQ: &[u8] = b"next_seq";

/// A prediction as stored: its index key's sequence number with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub seq: u64,
    pub prediction: Prediction,
}

/// Why entries left the store without feedback, since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Over `feedback_max_predictions`.
    pub count: u64,
    /// Over `feedback_max_bytes`.
    pub bytes: u64,
    /// Older than `feedback_max_age_secs`.
    pub age: u64,
}

/// The bound an entry was evicted for.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Count,
    Bytes,
    Age,
}

impl Evicted {
    fn add(&mut self, bound: Bound) {
        match bound {
            Bound::Count => self.count += 1,
            Bound::Bytes => self.bytes += 1,
            Bound::Age => self.age += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.count + self.bytes + self.age
    }
}

fn sled_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Other(format!("feedback store: {e}"))
}

fn be(v: Option<sled::IVec>) -> Option<u64> {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
}

/// The key of `id` of `model` (model names never hold a 0 byte).
pub fn key(model: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + 1 + id.len());
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn time_key(at_ms: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn plan_key(model: &str, version: u64) -> Vec<u8> {
    let mut k = key(model, "");
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Bytes an entry occupies: its key and value, and its index entry.
fn entry_size(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len() + 16 + 4 + key.len()) as u64
}

fn encode(s: &Stored) -> AgentResult<Vec<u8>> {
    let mut out = vec![FORMAT];
    out.extend(postcard::to_allocvec(s).map_err(sled_err)?);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Option<Stored> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// One new prediction for [`Store::write`].
pub struct New {
    pub key: Vec<u8>,
    pub prediction: Prediction,
}

/// What one [`Store::write`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub added: u64,
    /// Entries whose id came again (the newer prediction replaced the older).
    pub replaced: u64,
    pub evicted: Evicted,
}

pub struct Store {
    predictions: sled::Tree,
    by_time: sled::Tree,
    meta: sled::Tree,
    plans: sled::Tree,
    limits: Limits,
    count: u64,
    bytes: u64,
    next_seq: u64,
    evicted: Evicted,
    /// (model, version) whose plan is stored.
    plans_stored: HashSet<Vec<u8>>,
}

impl Store {
    /// Opens the store's trees in `db`.
    pub fn open(db: &sled::Db, limits: Limits) -> AgentResult<Self> {
        let predictions = db.open_tree("feedback_predictions").map_err(sled_err)?;
        let by_time = db.open_tree("feedback_by_time").map_err(sled_err)?;
        let meta = db.open_tree("feedback_meta").map_err(sled_err)?;
        let plans = db.open_tree("feedback_plans").map_err(sled_err)?;
        let count = be(meta.get(COUNT).map_err(sled_err)?);
        let bytes = be(meta.get(BYTES).map_err(sled_err)?);
        let (count, bytes) = match (count, bytes) {
            (Some(c), Some(b)) => (c, b),
            // Never written (a new store): count what is there, which is normally nothing.
            _ => {
                let (mut c, mut b) = (0, 0);
                for item in predictions.iter() {
                    let (k, v) = item.map_err(sled_err)?;
                    c += 1;
                    b += entry_size(&k, &v);
                }
                (c, b)
            }
        };
        let last = by_time
            .last()
            .map_err(sled_err)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(&k[8..]).ok())
            .map_or(0, u64::from_be_bytes);
        let next_seq = be(meta.get(NEXT_SEQ).map_err(sled_err)?)
            .unwrap_or(0)
            .max(last + 1);
        Ok(Self {
            predictions,
            by_time,
            meta,
            plans,
            limits,
            count,
            bytes,
            next_seq,
            evicted: Evicted::default(),
            plans_stored: HashSet::new(),
        })
    }

    /// Predictions held and their bytes.
    pub fn held(&self) -> (u64, u64) {
        (self.count, self.bytes)
    }

    pub fn evicted(&self) -> Evicted {
        self.evicted
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn get(&self, key: &[u8]) -> AgentResult<Option<Stored>> {
        let Some(v) = self.predictions.get(key).map_err(sled_err)? else {
            return Ok(None);
        };
        match decode(&v) {
            Some(s) => Ok(Some(s)),
            None => {
                tracing::warn!("feedback store: an entry does not decode; treated as unknown");
                Ok(None)
            }
        }
    }

    /// A classifier's class names for `model` `version`, if stored.
    pub fn classes(&self, model: &str, version: u64) -> AgentResult<Option<Vec<String>>> {
        Ok(self
            .plans
            .get(plan_key(model, version))
            .map_err(sled_err)?
            .and_then(|v| postcard::from_bytes(&v).ok()))
    }

    /// Stores a version's class names once (a no-op when already stored).
    pub fn put_classes(
        &mut self,
        model: &str,
        version: u64,
        classes: &[String],
    ) -> AgentResult<()> {
        let k = plan_key(model, version);
        if self.plans_stored.contains(&k) {
            return Ok(());
        }
        let v = postcard::to_allocvec(classes).map_err(sled_err)?;
        self.plans.insert(k.as_slice(), v).map_err(sled_err)?;
        self.plans_stored.insert(k);
        Ok(())
    }

    /// Adds `new` predictions (a later one of an id replaces the earlier), then removes the
    /// oldest entries until the store is within its bounds and nothing is older than the age
    /// bound at `now_ms`. One transaction.
    pub fn write(&mut self, mut new: Vec<New>, now_ms: u64) -> AgentResult<Written> {
        let mut w = Written::default();
        // Within the batch, the last prediction of an id wins; then oldest first.
        {
            let mut seen = HashSet::new();
            let mut keep = vec![false; new.len()];
            for (i, n) in new.iter().enumerate().rev() {
                keep[i] = seen.insert(n.key.clone());
            }
            let mut it = keep.into_iter();
            new.retain(|_| it.next().unwrap_or(false));
        }
        new.sort_by_key(|n| n.prediction.at_ms);
        let cutoff = now_ms.saturating_sub(self.limits.max_age_ms);
        // Too old already (a clock step): expired before it is stored.
        let before = new.len();
        new.retain(|n| n.prediction.at_ms >= cutoff);
        w.evicted.age += (before - new.len()) as u64;
        let mut encoded = Vec::with_capacity(new.len());
        let (mut count, mut bytes) = (self.count, self.bytes);
        // Old entries the new ones replace: their index entries go.
        let mut replaced: Vec<[u8; 16]> = Vec::new();
        let mut replaced_keys: HashSet<Vec<u8>> = HashSet::new();
        for n in &new {
            if let Some(old) = self.predictions.get(&n.key).map_err(sled_err)? {
                count -= 1;
                bytes -= entry_size(&n.key, &old).min(bytes);
                if let Some(s) = decode(&old) {
                    replaced.push(time_key(s.prediction.at_ms, s.seq));
                }
                replaced_keys.insert(n.key.clone());
                w.replaced += 1;
            }
        }
        let mut seq = self.next_seq;
        for n in new {
            let stored = Stored {
                seq,
                prediction: n.prediction,
            };
            let value = encode(&stored)?;
            count += 1;
            bytes += entry_size(&n.key, &value);
            encoded.push((n.key, value, time_key(stored.prediction.at_ms, seq)));
            seq += 1;
        }
        // Oldest first until within every bound.
        let limits = self.limits;
        let over = |count: u64, bytes: u64| {
            if count > limits.max_predictions {
                Some(Bound::Count)
            } else if bytes > limits.max_bytes {
                Some(Bound::Bytes)
            } else {
                None
            }
        };
        let cap = MAX_EVICT_PER_WRITE + encoded.len();
        let mut victims: Vec<(sled::IVec, Vec<u8>)> = Vec::new();
        for item in self.by_time.iter() {
            if victims.len() >= cap {
                break;
            }
            let (tk, tv) = item.map_err(sled_err)?;
            let at = <[u8; 8]>::try_from(&tk[..8]).map_or(0, u64::from_be_bytes);
            let reason = if at < cutoff {
                Some(Bound::Age)
            } else {
                over(count, bytes)
            };
            let Some(reason) = reason else { break };
            let primary = tv.get(4..).unwrap_or_default().to_vec();
            if replaced_keys.contains(&primary) {
                // Already accounted for: the new prediction of that id replaces it.
                continue;
            }
            let size = <[u8; 4]>::try_from(&tv[..4.min(tv.len())])
                .map_or(0, |b| u64::from(u32::from_be_bytes(b)));
            count -= 1;
            bytes -= size.min(bytes);
            w.evicted.add(reason);
            victims.push((tk, primary));
        }
        // Still over with every old entry gone: the oldest new ones go too.
        let mut first_new = 0;
        while let Some(reason) = over(count, bytes) {
            let Some((k, v, _)) = encoded.get(first_new) else {
                break;
            };
            count -= 1;
            bytes -= entry_size(k, v).min(bytes);
            w.evicted.add(reason);
            first_new += 1;
        }
        let encoded = &encoded[first_new..];
        w.added = encoded.len() as u64;
        if encoded.is_empty() && victims.is_empty() && replaced.is_empty() {
            // Nothing changes: no write (an idle agent must not write to its disk every round).
            self.count_evicted(w.evicted);
            return Ok(w);
        }
        (&self.predictions, &self.by_time, &self.meta)
            .transaction(|(p, t, m)| {
                for tk in &replaced {
                    t.remove(tk.as_slice())?;
                }
                for (tk, primary) in &victims {
                    t.remove(tk)?;
                    p.remove(primary.as_slice())?;
                }
                for (k, v, tk) in encoded {
                    p.insert(k.as_slice(), v.as_slice())?;
                    let mut index = Vec::with_capacity(4 + k.len());
                    let size = u32::try_from(entry_size(k, v)).unwrap_or(u32::MAX);
                    index.extend_from_slice(&size.to_be_bytes());
                    index.extend_from_slice(k);
                    t.insert(tk.as_slice(), index)?;
                }
                put_counters(m, count, bytes, seq)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| sled_err(format!("{e:?}")))?;
        (self.count, self.bytes, self.next_seq) = (count, bytes, seq);
        self.count_evicted(w.evicted);
        Ok(w)
    }

    fn count_evicted(&mut self, e: Evicted) {
        self.evicted.count += e.count;
        self.evicted.bytes += e.bytes;
        self.evicted.age += e.age;
    }

    /// Stores the done marks of predictions that received feedback; a prediction whose every
    /// row is done is removed. One transaction.
    pub fn update(&mut self, changed: &[(Vec<u8>, Stored)]) -> AgentResult<()> {
        let mut ops = Vec::with_capacity(changed.len());
        let (mut count, mut bytes) = (self.count, self.bytes);
        for (k, s) in changed {
            let tk = time_key(s.prediction.at_ms, s.seq);
            // The size as counted: the index entry has it.
            let old = self
                .by_time
                .get(tk)
                .map_err(sled_err)?
                .and_then(|v| <[u8; 4]>::try_from(v.get(..4)?).ok())
                .map_or(0, |b| u64::from(u32::from_be_bytes(b)));
            bytes -= old.min(bytes);
            if s.prediction.all_done() {
                count = count.saturating_sub(1);
                ops.push((k, None, tk));
            } else {
                let value = encode(s)?;
                let size = entry_size(k, &value);
                bytes += size;
                let mut index = Vec::with_capacity(4 + k.len());
                index.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
                index.extend_from_slice(k);
                ops.push((k, Some((value, index)), tk));
            }
        }
        (&self.predictions, &self.by_time, &self.meta)
            .transaction(|(p, t, m)| {
                for (k, v, tk) in &ops {
                    match v {
                        Some((v, index)) => {
                            p.insert(k.as_slice(), v.as_slice())?;
                            t.insert(tk.as_slice(), index.as_slice())?;
                        }
                        None => {
                            p.remove(k.as_slice())?;
                            t.remove(tk.as_slice())?;
                        }
                    }
                }
                put_counters(m, count, bytes, self.next_seq)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| sled_err(format!("{e:?}")))?;
        (self.count, self.bytes) = (count, bytes);
        Ok(())
    }
}

fn put_counters(
    m: &TransactionalTree,
    count: u64,
    bytes: u64,
    seq: u64,
) -> Result<(), ConflictableTransactionError<()>> {
    m.insert(COUNT, &count.to_be_bytes())?;
    m.insert(BYTES, &bytes.to_be_bytes())?;
    m.insert(NEXT_SEQ, &seq.to_be_bytes())?;
    Ok(())
}
