//! The outbox: signed telemetry records waiting for the hub's acknowledgement, in sled.
//!
//! A record enters with the next sequence number in one sled transaction (record, next
//! sequence, drop counter) and the database is flushed before [`Outbox::append`] returns, so
//! a record that was appended survives kill -9 and power loss. It leaves only when the hub acks
//! its sequence number ([`Outbox::ack`]) — a broker's PUBACK is not enough — or when the outbox
//! is over its byte bound, oldest first, counted in `dropped` and reported in every record and
//! heartbeat. rumqttc's in-memory queue is never the source of truth: after a reconnect the
//! uplink publishes again from here.

use std::path::Path;
use std::sync::Mutex;

use edgefleet_common::telemetry::OutboxStats;
use sled::Transactional;

use crate::error::{AgentError, AgentResult};

/// First byte of an outbox entry that is a sample batch (the packed batch follows), published
/// on `…/samples`; a telemetry record's packed bytes start with 0x01 or 0x02.
pub const SAMPLES: u8 = b'S';

const NEXT_SEQ: &[u8] = b"next_seq";
const DROPPED: &[u8] = b"dropped";

#[derive(Debug)]
struct Counters {
    next_seq: u64,
    bytes: u64,
    count: u64,
    dropped: u64,
}

pub struct Outbox {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    /// Prepended to every key: empty for the agent's own database; a device's prefix when
    /// many outboxes share one database ([`Outbox::shared`], the fleet simulator).
    prefix: Vec<u8>,
    /// Whether [`Outbox::append`] flushes the database before it returns.
    durable: bool,
    max_bytes: u64,
    /// Serialises appends and acks, and mirrors what is on disk.
    counters: Mutex<Counters>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outbox({:?})", self.stats())
    }
}

fn sled_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Other(format!("outbox: {e}"))
}

/// sled's page cache for the outbox.
pub const OUTBOX_CACHE_BYTES: u64 = 4 << 20;

fn be(v: Option<sled::IVec>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The sequence number of a record key under `prefix`.
fn seq_of(prefix: &[u8], key: &[u8]) -> u64 {
    key.get(prefix.len()..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`, bounded to `max_bytes` of records.
    pub fn open(path: &Path, max_bytes: u64) -> AgentResult<Self> {
        // sled's page cache defaults to 1 GiB, sized for servers. The outbox writes a record,
        // reads it back once to publish it and deletes it on the ack: a small cache serves
        // that, and bounds what a long outage with a full outbox can hold in memory.
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(OUTBOX_CACHE_BYTES)
            .open()
            .map_err(|e| {
                AgentError::Other(format!("cannot open the outbox {}: {e}", path.display()))
            })?;
        Self::on(db, Vec::new(), true, max_bytes)
    }

    /// One of many outboxes in one database `db`, its keys under `prefix` (which must not be
    /// a prefix of another's: end it with a separator). Appends are flushed only if `durable`:
    /// the fleet simulator's outboxes live as long as its process.
    pub fn shared(
        db: &sled::Db,
        prefix: &[u8],
        durable: bool,
        max_bytes: u64,
    ) -> AgentResult<Self> {
        Self::on(db.clone(), prefix.to_vec(), durable, max_bytes)
    }

    fn on(db: sled::Db, prefix: Vec<u8>, durable: bool, max_bytes: u64) -> AgentResult<Self> {
        let records = db.open_tree("records").map_err(sled_err)?;
        let meta = db.open_tree("meta").map_err(sled_err)?;
        let (mut bytes, mut count, mut last) = (0u64, 0u64, 0u64);
        for item in records.scan_prefix(&prefix) {
            let (k, v) = item.map_err(sled_err)?;
            bytes += v.len() as u64;
            count += 1;
            last = seq_of(&prefix, &k);
        }
        let key = |name: &[u8]| [prefix.as_slice(), name].concat();
        // The stored counter is authoritative; the last key only guards against a counter
        // that a bug left behind (a reused sequence number would be dropped as a duplicate).
        let next_seq = be(meta.get(key(NEXT_SEQ)).map_err(sled_err)?)
            .max(last + 1)
            .max(1);
        let dropped = be(meta.get(key(DROPPED)).map_err(sled_err)?);
        Ok(Self {
            db,
            records,
            meta,
            prefix,
            durable,
            max_bytes,
            counters: Mutex::new(Counters {
                next_seq,
                bytes,
                count,
                dropped,
            }),
        })
    }

    /// The key of `name` (a record's sequence number, or a counter) in this outbox.
    fn key(&self, name: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), name].concat()
    }

    fn counters(&self) -> AgentResult<std::sync::MutexGuard<'_, Counters>> {
        self.counters
            .lock()
            .map_err(|_| AgentError::Other("outbox lock poisoned".into()))
    }

    /// The sled database the outbox lives in: the agent keeps its other small trees (the
    /// feedback store) in it too, so the process has one page cache and one log.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    pub fn stats(&self) -> OutboxStats {
        self.counters()
            .map(|c| OutboxStats {
                queued: c.count,
                queued_bytes: c.bytes,
                dropped: c.dropped,
            })
            .unwrap_or_default()
    }

    /// Appends the record `build(seq, stats)` returns, durably, under the next sequence
    /// number, dropping the oldest records first if it would not fit. Returns the sequence.
    pub fn append(
        &self,
        build: impl FnOnce(u64, OutboxStats) -> AgentResult<Vec<u8>>,
    ) -> AgentResult<u64> {
        let mut c = self.counters()?;
        let seq = c.next_seq;
        let stats = OutboxStats {
            queued: c.count,
            queued_bytes: c.bytes,
            dropped: c.dropped,
        };
        let bytes = build(seq, stats)?;
        let len = bytes.len() as u64;
        if len > self.max_bytes {
            return Err(AgentError::Other(format!(
                "a telemetry record of {len} bytes does not fit the outbox of {} bytes; raise outbox_max_bytes",
                self.max_bytes
            )));
        }
        // Oldest first, until the new record fits.
        let mut evict = Vec::new();
        let mut freed = 0u64;
        for item in self.records.scan_prefix(&self.prefix) {
            if c.bytes - freed + len <= self.max_bytes {
                break;
            }
            let (k, v) = item.map_err(sled_err)?;
            freed += v.len() as u64;
            evict.push(k);
        }
        let dropped = c.dropped + evict.len() as u64;
        let (seq_key, next_key, dropped_key) = (
            self.key(&seq.to_be_bytes()),
            self.key(NEXT_SEQ),
            self.key(DROPPED),
        );
        (&self.records, &self.meta)
            .transaction(|(records, meta)| {
                for k in &evict {
                    records.remove(k)?;
                }
                records.insert(seq_key.as_slice(), bytes.as_slice())?;
                meta.insert(next_key.as_slice(), &(seq + 1).to_be_bytes())?;
                meta.insert(dropped_key.as_slice(), &dropped.to_be_bytes())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| sled_err(format!("{e:?}")))?;
        // The transaction is in: the counters follow it whatever the flush says, so a
        // sequence number is never handed out twice.
        c.next_seq = seq + 1;
        c.bytes = c.bytes - freed + len;
        c.count = c.count - evict.len() as u64 + 1;
        c.dropped = dropped;
        if self.durable {
            self.db.flush().map_err(sled_err)?;
        }
        if !evict.is_empty() {
            tracing::warn!(
                dropped = evict.len(),
                total_dropped = dropped,
                max_bytes = self.max_bytes,
                "telemetry outbox full: dropped the oldest records"
            );
        }
        Ok(seq)
    }

    /// Counts records that never made it in (a window that could not be recorded).
    pub fn count_dropped(&self, n: u64) {
        let Ok(mut c) = self.counters() else {
            return;
        };
        c.dropped += n;
        if let Err(error) = self
            .meta
            .insert(self.key(DROPPED), &c.dropped.to_be_bytes())
        {
            tracing::warn!(%error, "cannot store the outbox drop count");
        }
    }

    /// Records in sequence order, starting after `after`, at most `limit`.
    pub fn pending(&self, after: u64, limit: usize) -> AgentResult<Vec<(u64, Vec<u8>)>> {
        let start = self.key(&after.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in self.records.range(start..) {
            let (k, v) = item.map_err(sled_err)?;
            if out.len() == limit || !k.starts_with(&self.prefix) {
                break;
            }
            out.push((seq_of(&self.prefix, &k), v.to_vec()));
        }
        Ok(out)
    }

    /// Removes acknowledged records; returns how many were still here.
    pub fn ack(&self, seqs: &[u64]) -> AgentResult<usize> {
        let mut c = self.counters()?;
        let mut removed = 0;
        for seq in seqs {
            if let Some(v) = self
                .records
                .remove(self.key(&seq.to_be_bytes()))
                .map_err(sled_err)?
            {
                c.bytes -= v.len() as u64;
                c.count -= 1;
                removed += 1;
            }
        }
        // Not flushed: an ack lost in a crash only means the record is sent once more, and
        // the hub removes the duplicate.
        Ok(removed)
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.records
            .contains_key(self.key(&seq.to_be_bytes()))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> impl FnOnce(u64, OutboxStats) -> AgentResult<Vec<u8>> {
        move |seq, _| Ok(vec![seq as u8; n])
    }

    #[test]
    fn sequence_survives_reopen_and_acks_remove() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("outbox");
        {
            let o = Outbox::open(&path, 1 << 20).expect("open");
            assert_eq!(o.append(record(10)).expect("append"), 1);
            assert_eq!(o.append(record(10)).expect("append"), 2);
            assert_eq!(o.append(record(10)).expect("append"), 3);
            assert_eq!(o.ack(&[2, 99]).expect("ack"), 1);
        }
        let o = Outbox::open(&path, 1 << 20).expect("reopen");
        let seqs: Vec<u64> = o
            .pending(0, 10)
            .expect("pending")
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(o.pending(1, 10).expect("pending")[0].0, 3);
        assert_eq!(o.stats().queued, 2);
        assert_eq!(o.stats().queued_bytes, 20);
        // Acked sequence numbers are never reused.
        o.ack(&[1, 3]).expect("ack");
        assert_eq!(o.append(record(10)).expect("append"), 4);
    }

    #[test]
    fn shared_outboxes_keep_their_own_records_and_counters() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = sled::Config::new()
            .path(dir.path().join("fleet"))
            .open()
            .expect("db");
        let a = Outbox::shared(&db, b"a/", false, 1 << 20).expect("a");
        let b = Outbox::shared(&db, b"b/", false, 1 << 20).expect("b");
        assert_eq!(a.append(record(10)).expect("append"), 1);
        assert_eq!(a.append(record(10)).expect("append"), 2);
        assert_eq!(b.append(record(7)).expect("append"), 1);
        let seqs = |o: &Outbox, after| -> Vec<u64> {
            o.pending(after, 10)
                .expect("pending")
                .iter()
                .map(|r| r.0)
                .collect()
        };
        assert_eq!(seqs(&a, 0), vec![1, 2]);
        assert_eq!(seqs(&b, 0), vec![1]);
        assert_eq!(seqs(&b, 1), Vec::<u64>::new());
        assert_eq!(b.ack(&[2]).expect("ack"), 0, "b has no record 2");
        assert_eq!(a.ack(&[1]).expect("ack"), 1);
        assert!(b.contains(1) && !a.contains(1));
        drop((a, b));
        let a = Outbox::shared(&db, b"a/", false, 1 << 20).expect("reopen a");
        assert_eq!(a.stats().queued, 1);
        assert_eq!(a.append(record(10)).expect("append"), 3);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().expect("tmp");
        let o = Outbox::open(&dir.path().join("outbox"), 100).expect("open");
        for _ in 0..4 {
            o.append(record(30)).expect("append");
        }
        // 4 × 30 > 100: the first had to go.
        let seqs: Vec<u64> = o
            .pending(0, 10)
            .expect("pending")
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(o.stats().dropped, 1);
        // The drop count the next record is built with includes it.
        let mut seen = None;
        o.append(|seq, stats| {
            seen = Some(stats.dropped);
            Ok(vec![seq as u8; 30])
        })
        .expect("append");
        assert_eq!(seen, Some(1));
        assert_eq!(o.stats().dropped, 2);
        let err = o.append(record(101)).expect_err("too big").to_string();
        assert!(err.contains("outbox_max_bytes"), "{err}");
        drop(o);
        let o = Outbox::open(&dir.path().join("outbox"), 100).expect("reopen");
        assert_eq!(o.stats().dropped, 2);
        assert_eq!(o.stats().queued, 3);
    }
}
