//! The matching store: recent predictions by (model, request id), on disk in SQLite.
//!
//! A busy shop keeps a day of predictions (10 requests/s: 864,000) to match the truths that
//! arrive a day later. sled held them at +14–25 MB of RSS by 200,000 and ~415 bytes of disk
//! each (BENCHMARKS.md "Ground truth"); SQLite keeps them in a file with a bounded page cache
//! ([`CACHE_KIB`]), so memory does not grow with what is held.
//!
//! Tables (the file `feedback.sqlite` in the data directory, WAL mode):
//! - `prediction`: `key` (`model \0 id`) → `at_ms`, `seq`, `size`, `value` ([`Stored`]'s
//!   prediction, postcard), indexed by `(at_ms, seq)`: what eviction and expiry walk, oldest
//!   first;
//! - `plan`: `model \0 version` → a classifier's class names, which scoring needs after the
//!   version has stopped serving;
//! - `meta`: the count, the bytes and the next sequence number, so opening a full store does
//!   not scan it.
//!
//! Every change is one transaction, so the counters always agree with what is held. The WAL
//! runs with `synchronous = NORMAL`: a committed transaction survives the agent's own crash
//! (kill -9: it is in the WAL, in the kernel's cache) at once, and power loss once the WAL is
//! synced at the next checkpoint; power loss before that rolls back the last transactions
//! whole, never half. `FULL` would add an fsync to every feedback call (~330 µs here: 3,000
//! calls/s against ~17,000), to save at most a moment of predictions whose truth would then
//! count as unknown.
//! A file that is not a store of this format (corrupt, or written by a newer agent) is moved
//! aside as `feedback.sqlite.unreadable-<ms>` and a new store starts: feedback is worth less
//! than serving. The store is not thread-safe on its own: [`super::Feedback`] holds it in a
//! mutex.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

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

/// SQLite's page cache for the store, in KiB: lookups of a day-old id and appends touch a
/// few pages each; the rest stays on disk.
pub const CACHE_KIB: u32 = 512;

/// The schema's version (`PRAGMA user_version`).
const FORMAT: i64 = 1;
const COUNT: &str = "count";
const BYTES: &str = "bytes";
const NEXT_SEQ: &str = "next_seq";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS prediction (
    key BLOB PRIMARY KEY NOT NULL,
    at_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS prediction_by_time ON prediction (at_ms, seq);
CREATE TABLE IF NOT EXISTS plan (key BLOB PRIMARY KEY NOT NULL, classes BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
";

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

fn db_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Other(format!("feedback store: {e}"))
}

/// SQLite integers are i64; times and counters stay far below 2^63.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The key of `id` of `model` (model names never hold a 0 byte).
pub fn key(model: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + 1 + id.len());
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn plan_key(model: &str, version: u64) -> Vec<u8> {
    let mut k = key(model, "");
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Bytes an entry is counted as on disk: its key twice (the row and the time index), its
/// value and the index's two integers.
fn entry_size(key: &[u8], value: &[u8]) -> u64 {
    (2 * key.len() + value.len() + 24) as u64
}

fn encode(p: &Prediction) -> AgentResult<Vec<u8>> {
    postcard::to_allocvec(p).map_err(db_err)
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
    conn: Connection,
    limits: Limits,
    count: u64,
    bytes: u64,
    next_seq: u64,
    evicted: Evicted,
    /// (model, version) whose plan is stored.
    plans_stored: HashSet<Vec<u8>>,
}

/// Opens `path` as a store of this format, creating it if new.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -i64::from(CACHE_KIB))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > FORMAT {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
            Some(format!(
                "format {version}, newer than this agent's {FORMAT}"
            )),
        ));
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", FORMAT)?;
    // A store whose pages do not read back is not one: find out now, not at the first lookup.
    conn.query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))?;
    Ok(conn)
}

impl Store {
    /// Opens (or creates) the store at `path`. A file that cannot be read as a store is moved
    /// aside (logged) and a new one starts; an error is left only when the directory itself
    /// fails (no space, no permission).
    pub fn open(path: &Path, limits: Limits) -> AgentResult<Self> {
        let conn = match connect(path) {
            Ok(c) => c,
            Err(error) if unreadable(&error) => {
                let aside =
                    PathBuf::from(format!("{}.unreadable-{}", path.display(), crate::now_ms()));
                tracing::error!(%error, path = %path.display(), aside = %aside.display(),
                    "the feedback store cannot be read; moved aside, starting a new one (the predictions it held cannot be scored)");
                std::fs::rename(path, &aside)
                    .map_err(|e| db_err(format!("cannot move {} aside: {e}", path.display())))?;
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
                }
                connect(path).map_err(|e| db_err(format!("{}: {e}", path.display())))?
            }
            Err(e) => return Err(db_err(format!("{}: {e}", path.display()))),
        };
        let meta = |name: &str| -> AgentResult<Option<u64>> {
            conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.map(uint))
            .map_err(db_err)
        };
        let (count, bytes, next_seq) = match (meta(COUNT)?, meta(BYTES)?, meta(NEXT_SEQ)?) {
            (Some(c), Some(b), Some(s)) => (c, b, s),
            // Never written (a new store): count what is there, which is normally nothing.
            _ => conn
                .query_row(
                    "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq) + 1, 0) FROM prediction",
                    [],
                    |r| Ok((uint(r.get(0)?), uint(r.get(1)?), uint(r.get(2)?))),
                )
                .map_err(db_err)?,
        };
        Ok(Self {
            conn,
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
        let row = self
            .conn
            .prepare_cached("SELECT seq, value FROM prediction WHERE key = ?1")
            .and_then(|mut s| {
                s.query_row([key], |r| Ok((uint(r.get(0)?), r.get::<_, Vec<u8>>(1)?)))
                    .optional()
            })
            .map_err(db_err)?;
        let Some((seq, value)) = row else {
            return Ok(None);
        };
        match postcard::from_bytes(&value) {
            Ok(prediction) => Ok(Some(Stored { seq, prediction })),
            Err(_) => {
                tracing::warn!("feedback store: an entry does not decode; treated as unknown");
                Ok(None)
            }
        }
    }

    /// A classifier's class names for `model` `version`, if stored.
    pub fn classes(&self, model: &str, version: u64) -> AgentResult<Option<Vec<String>>> {
        let v: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT classes FROM plan WHERE key = ?1")
            .and_then(|mut s| {
                s.query_row([plan_key(model, version)], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)?;
        Ok(v.and_then(|v| postcard::from_bytes(&v).ok()))
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
        let v = postcard::to_allocvec(classes).map_err(db_err)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO plan (key, classes) VALUES (?1, ?2)",
                params![k, v],
            )
            .map_err(db_err)?;
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
        let limits = self.limits;
        let (mut count, mut bytes, mut seq) = (self.count, self.bytes, self.next_seq);
        let first_new = seq;
        let tx = self.conn.transaction().map_err(db_err)?;
        {
            let mut old_size = tx
                .prepare_cached("SELECT size FROM prediction WHERE key = ?1")
                .map_err(db_err)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO prediction (key, at_ms, seq, size, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db_err)?;
            for n in &new {
                if let Some(old) = old_size
                    .query_row([&n.key], |r| r.get::<_, i64>(0))
                    .optional()
                    .map_err(db_err)?
                {
                    count = count.saturating_sub(1);
                    bytes = bytes.saturating_sub(uint(old));
                    w.replaced += 1;
                }
                let value = encode(&n.prediction)?;
                let size = entry_size(&n.key, &value);
                put.execute(params![
                    n.key,
                    int(n.prediction.at_ms),
                    int(seq),
                    int(size),
                    value
                ])
                .map_err(db_err)?;
                count += 1;
                bytes += size;
                seq += 1;
            }
        }
        // Oldest first until within every bound (new entries included: a clock step can make
        // one older than what is held).
        let over = |count: u64, bytes: u64| {
            if count > limits.max_predictions {
                Some(Bound::Count)
            } else if bytes > limits.max_bytes {
                Some(Bound::Bytes)
            } else {
                None
            }
        };
        let cap = MAX_EVICT_PER_WRITE + new.len();
        let mut victims: Vec<Vec<u8>> = Vec::new();
        let mut new_evicted = 0u64;
        {
            let mut oldest = tx
                .prepare_cached(
                    "SELECT key, at_ms, seq, size FROM prediction ORDER BY at_ms, seq LIMIT ?1",
                )
                .map_err(db_err)?;
            let mut rows = oldest.query([int(cap as u64)]).map_err(db_err)?;
            while let Some(row) = rows.next().map_err(db_err)? {
                let at = uint(row.get(1).map_err(db_err)?);
                let reason = if at < cutoff {
                    Some(Bound::Age)
                } else {
                    over(count, bytes)
                };
                let Some(reason) = reason else { break };
                count -= 1;
                bytes = bytes.saturating_sub(uint(row.get(3).map_err(db_err)?));
                w.evicted.add(reason);
                if uint(row.get(2).map_err(db_err)?) >= first_new {
                    new_evicted += 1;
                }
                victims.push(row.get(0).map_err(db_err)?);
            }
        }
        w.added = new.len() as u64 - new_evicted;
        if new.is_empty() && victims.is_empty() {
            // Nothing changes: no write (an idle agent must not write to its disk every round).
            drop(tx);
            self.count_evicted(w.evicted);
            return Ok(w);
        }
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM prediction WHERE key = ?1")
                .map_err(db_err)?;
            for k in &victims {
                delete.execute([k]).map_err(db_err)?;
            }
        }
        put_counters(&tx, count, bytes, seq)?;
        tx.commit().map_err(db_err)?;
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
        let (mut count, mut bytes) = (self.count, self.bytes);
        let tx = self.conn.transaction().map_err(db_err)?;
        {
            let mut old_size = tx
                .prepare_cached("SELECT size FROM prediction WHERE key = ?1")
                .map_err(db_err)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM prediction WHERE key = ?1")
                .map_err(db_err)?;
            let mut put = tx
                .prepare_cached("UPDATE prediction SET size = ?2, value = ?3 WHERE key = ?1")
                .map_err(db_err)?;
            for (k, s) in changed {
                // Gone meanwhile (evicted): nothing to mark.
                let Some(old) = old_size
                    .query_row([k], |r| r.get::<_, i64>(0))
                    .optional()
                    .map_err(db_err)?
                else {
                    continue;
                };
                bytes = bytes.saturating_sub(uint(old));
                if s.prediction.all_done() {
                    count = count.saturating_sub(1);
                    delete.execute([k]).map_err(db_err)?;
                } else {
                    let value = encode(&s.prediction)?;
                    let size = entry_size(k, &value);
                    bytes += size;
                    put.execute(params![k, int(size), value]).map_err(db_err)?;
                }
            }
        }
        put_counters(&tx, count, bytes, self.next_seq)?;
        tx.commit().map_err(db_err)?;
        (self.count, self.bytes) = (count, bytes);
        Ok(())
    }
}

/// Drops the trees in which earlier agents kept the store in the outbox's sled database (their
/// predictions are not carried over: at most a day of feedback is lost once, at the upgrade).
pub fn drop_sled_trees(db: &sled::Db) {
    for tree in [
        "feedback_predictions",
        "feedback_by_time",
        "feedback_meta",
        "feedback_plans",
    ] {
        match db.drop_tree(tree) {
            Ok(true) => tracing::info!(tree, "dropped an earlier agent's feedback tree"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, tree, "cannot drop an earlier agent's feedback tree")
            }
        }
    }
}

/// A failure that says the file is not a readable store (as opposed to I/O on a good one).
fn unreadable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn put_counters(
    tx: &rusqlite::Transaction<'_>,
    count: u64,
    bytes: u64,
    seq: u64,
) -> AgentResult<()> {
    let mut put = tx
        .prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")
        .map_err(db_err)?;
    for (name, v) in [(COUNT, count), (BYTES, bytes), (NEXT_SEQ, seq)] {
        put.execute(params![name, int(v)]).map_err(db_err)?;
    }
    Ok(())
}
