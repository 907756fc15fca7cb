//! Ground truth: callers tell the agent what the right answer to an earlier prediction was,
//! and each telemetry window reports how good the predictions were (`ModelQuality`: MAE, RMSE,
//! MAPE for a regression; accuracy, log-loss and a confusion matrix for a classifier).
//!
//! ```text
//! infer (with an id) ─record─► queue (memory, bounded) ─drain every 200 ms─► Store (SQLite)
//!                                                          (writer thread, one transaction)
//! POST …/feedback ─parse─► look the ids up (queue, then store) ─► mark rows done ─► QualityBook
//!                                                        telemetry close_window ◄─take─┘
//! ```
//!
//! - [`plan`]: which output is scored (the manifest's first) and what a prediction keeps of it.
//! - [`store`]: recent predictions by (model, id) on disk (SQLite, bounded memory), bounded by
//!   count, age and bytes (oldest first, counted), surviving restarts.
//! - [`body`]: the feedback request body; [`truth`]: a truth read against its prediction.
//! - [`book`]: this window's quality per model version, taken by telemetry at each close.
//!
//! The inference path only pushes a small entry onto the queue ([`Feedback::record`]: a short
//! lock, no I/O); when the queue is full the entry is dropped and counted. The writer task
//! ([`Feedback::drain`]) moves the queue into the store. A feedback call holds
//! the store's lock from lookup to marking, and the writer holds it from taking the queue to
//! the end of its transaction, so a prediction is always found, in the queue or in the store,
//! and a row is scored at most once.
//!
//! The HTTP endpoint lives in `serve` (this module names no HTTP type): it maps a [`Refusal`]'s
//! [`Status`] to the status code.

pub mod body;
pub mod book;
pub mod capture;
pub mod plan;
pub mod store;
pub mod truth;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use edgefleet_common::Tensor;
use serde::Serialize;

pub use book::QualityBook;
pub use capture::Capture;
use plan::{Classes, Kept, Plan, Prediction, PredictionRef};
pub use store::{Evicted, Limits, Store};
use truth::RowTruth;

use crate::error::AgentResult;

/// Most predictions waiting in the queue for the writer.
pub const MAX_QUEUED: usize = 16_384;
/// Most bytes of predictions waiting in the queue (the last one recorded may go over).
pub const MAX_QUEUED_BYTES: usize = 4 << 20;
/// How often the writer moves the queue into the store.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// What went wrong with a feedback call, for the transport to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The body's shape or a truth is wrong (400).
    BadRequest,
    /// No item matched a prediction (404).
    NotFound,
    /// Every row named already received its feedback (409).
    Conflict,
    /// The body or the item count is over its bound (413).
    TooLarge,
    /// The store failed (500): nothing was scored.
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: Status,
    pub message: String,
    /// Ids no prediction held (404).
    pub unknown: Vec<String>,
    /// Ids whose rows already had feedback (409).
    pub duplicate: Vec<String>,
}

impl Refusal {
    pub fn new(status: Status, message: String) -> Self {
        Self {
            status,
            message,
            unknown: Vec::new(),
            duplicate: Vec::new(),
        }
    }
}

/// A call's result when at least one row matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Rows matched and scored.
    pub matched: u64,
    /// Of those, rows predicted before the current telemetry window started.
    pub late: u64,
    /// Ids no prediction held (never recorded, expired or evicted), each once.
    pub unknown: Vec<String>,
    /// Ids with rows that already had feedback (those rows were not scored again), each once.
    pub duplicate: Vec<String>,
}

/// The gauges and counters `/metrics` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Predictions in the store and their bytes.
    pub held: u64,
    pub held_bytes: u64,
    /// Predictions in the queue, not yet in the store.
    pub queued: u64,
    pub evicted: Evicted,
    /// Predictions dropped because the queue was full.
    pub dropped: u64,
    /// Predictions with an id that were not kept (the id too long, the output too large or
    /// not scorable).
    pub not_kept: u64,
    /// Feedback rows matched, of them late, for unknown ids, and already given.
    pub matched: u64,
    pub late: u64,
    pub unknown: u64,
    pub duplicate: u64,
    /// Models whose training samples are captured now (the hub's instructions in force).
    pub capturing: u64,
}

/// (model, version) → its plan.
type PlansByVersion = HashMap<(Arc<str>, u64), Arc<Plan>>;

/// A prediction waiting for the writer: where its bytes are in [`Queue::buf`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its plan: an index into [`Queue::plans`].
    plan: u32,
    /// `buf[start..start + id_len]` is the request id, `buf[start + id_len..end]` the
    /// prediction (postcard of a [`Prediction`]).
    start: u32,
    id_len: u32,
    end: u32,
}

/// Predictions waiting for the writer, as flat bytes: recording one copies its id and what it
/// keeps into `buf` and allocates nothing, so the inference path pays a short lock and a copy.
#[derive(Default)]
struct Queue {
    /// The plans of the queued predictions (a few: the versions served since the last drain).
    plans: Vec<Arc<Plan>>,
    entries: Vec<Entry>,
    buf: Vec<u8>,
    /// Done marks given by feedback while a prediction waits, by entry index.
    done: HashMap<usize, Vec<u8>>,
}

impl Queue {
    /// Empties the queue for reuse, keeping its buffers while they are of the size recording
    /// needs: a burst's buffers are given back once the rounds are small again.
    fn recycle(&mut self) {
        let (entries, bytes) = (self.entries.len(), self.buf.len());
        self.plans.clear();
        self.entries.clear();
        self.buf.clear();
        self.done.clear();
        if self.entries.capacity() > 4 * entries.max(64) {
            self.entries.shrink_to(2 * entries.max(64));
        }
        if self.buf.capacity() > 4 * bytes.max(4096) {
            self.buf.shrink_to(2 * bytes.max(4096));
        }
    }

    fn bytes(&self) -> usize {
        self.buf.len() + self.entries.len() * std::mem::size_of::<Entry>()
    }

    fn plan(&self, e: &Entry) -> Option<&Arc<Plan>> {
        self.plans.get(e.plan as usize)
    }

    fn id(&self, e: &Entry) -> &[u8] {
        let start = e.start as usize;
        self.buf
            .get(start..start + e.id_len as usize)
            .unwrap_or_default()
    }

    /// Entry `i`'s prediction with the marks feedback gave it while it waited.
    fn prediction(&self, i: usize) -> Option<Prediction> {
        let e = self.entries.get(i)?;
        let bytes = self
            .buf
            .get((e.start + e.id_len) as usize..e.end as usize)?;
        let mut p: Prediction = postcard::from_bytes(bytes).ok()?;
        if let Some(done) = self.done.get(&i) {
            p.done.clone_from(done);
        }
        Some(p)
    }

    /// Appends a prediction; false (and the queue unchanged) if it does not encode.
    fn push(&mut self, plan: &Arc<Plan>, id: &str, p: &PredictionRef<'_>) -> bool {
        let plan_index = match self.plans.iter().rposition(|q| Arc::ptr_eq(q, plan)) {
            Some(i) => i,
            None => {
                self.plans.push(plan.clone());
                self.plans.len() - 1
            }
        };
        let start = self.buf.len();
        self.buf.extend_from_slice(id.as_bytes());
        // A small prediction (the usual one) is encoded on the stack and copied once; a
        // larger one straight into the buffer (`&mut Vec<u8>` is an `io::Write`).
        let mut small = [0u8; 256];
        let encoded = match postcard::to_slice(p, &mut small) {
            Ok(bytes) => {
                self.buf.extend_from_slice(bytes);
                true
            }
            Err(_) => postcard::to_io(p, &mut self.buf).is_ok(),
        };
        let (Ok(plan), Ok(start_u32), Ok(end)) = (
            u32::try_from(plan_index),
            u32::try_from(start),
            u32::try_from(self.buf.len()),
        ) else {
            self.buf.truncate(start);
            return false;
        };
        if !encoded {
            self.buf.truncate(start);
            return false;
        }
        self.entries.push(Entry {
            plan,
            start: start_u32,
            id_len: id.len() as u32,
            end,
        });
        true
    }
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    not_kept: AtomicU64,
    matched: AtomicU64,
    late: AtomicU64,
    unknown: AtomicU64,
    duplicate: AtomicU64,
    held: AtomicU64,
    held_bytes: AtomicU64,
    evicted_count: AtomicU64,
    evicted_bytes: AtomicU64,
    evicted_age: AtomicU64,
}

/// The agent's feedback: the queue, the store, the quality book.
pub struct Feedback {
    store: Mutex<Store>,
    queue: Mutex<Queue>,
    /// The buffers of the queue the writer last drained, cleared: the next drain swaps them in,
    /// so recording writes into pages already touched instead of faulting in fresh ones.
    spare: Mutex<Queue>,
    book: QualityBook,
    capture: Arc<Capture>,
    /// The plans of model versions whose predictions kept inputs: a captured row's columns.
    captured_plans: Mutex<PlansByVersion>,
    limits: Limits,
    counters: Counters,
}

impl std::fmt::Debug for Feedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Feedback({:?})", self.stats())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feedback {
    /// Opens the store at `path` (the data directory's `feedback.sqlite`); the first window
    /// starts at `now_ms`.
    pub fn open(path: &std::path::Path, limits: Limits, now_ms: u64) -> AgentResult<Self> {
        let store = Store::open(path, limits)?;
        let fb = Self {
            store: Mutex::new(store),
            queue: Mutex::new(Queue::default()),
            spare: Mutex::new(Queue::default()),
            book: QualityBook::new(now_ms),
            capture: Arc::new(Capture::new(now_ms / 1000, now_ms)),
            captured_plans: Mutex::new(HashMap::new()),
            limits,
            counters: Counters::default(),
        };
        fb.mirror(&lock(&fb.store));
        Ok(fb)
    }

    pub fn book(&self) -> &QualityBook {
        &self.book
    }

    /// Sample capture: the hub's instructions in force and this window's reservoirs.
    pub fn capture(&self) -> &Arc<Capture> {
        &self.capture
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether predictions are kept at all (`feedback_max_predictions` > 0).
    pub fn enabled(&self) -> bool {
        self.limits.max_predictions > 0
    }

    /// The inference path: keeps what scoring `id`'s prediction (`outputs`, every output the
    /// model computed) will need, as `plan` says, and its `inputs` while the model's samples
    /// are captured. No I/O, a short lock; dropped (and counted) when the queue is full.
    pub fn record(&self, plan: &Arc<Plan>, id: &str, inputs: &[Tensor], outputs: &[Tensor]) {
        self.record_made_at(plan, id, inputs, outputs, crate::now_ms());
    }

    /// [`Feedback::record`] of a prediction made at `at_ms`.
    fn record_made_at(
        &self,
        plan: &Arc<Plan>,
        id: &str,
        inputs: &[Tensor],
        outputs: &[Tensor],
        at_ms: u64,
    ) {
        if !self.enabled() {
            return;
        }
        if id.is_empty() || id.len() > plan::MAX_ID_BYTES {
            self.counters.not_kept.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (rows, kept) = match plan.keep(outputs) {
            Ok(k) => k,
            Err(why) => {
                if self.counters.not_kept.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(model = %plan.model, version = plan.version, why, "a prediction with an id is not kept for feedback");
                }
                return;
            }
        };
        let captured = if self.capture.wants(&plan.model, at_ms / 1000) {
            lock(&self.captured_plans)
                .entry((plan.model.clone(), plan.version))
                .or_insert_with(|| plan.clone());
            plan.input_rows(inputs, rows)
        } else {
            Vec::new()
        };
        let prediction = PredictionRef {
            version: plan.version,
            at_ms,
            rows,
            done: &[],
            kept,
            inputs: &captured,
        };
        let mut q = lock(&self.queue);
        if q.entries.len() >= MAX_QUEUED
            || q.bytes() >= MAX_QUEUED_BYTES
            || !q.push(plan, id, &prediction)
        {
            drop(q);
            if self
                .counters
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                tracing::warn!(
                    "the feedback queue is full (the store cannot keep up): predictions are dropped and counted"
                );
            }
        }
    }

    /// The writer: moves the queue into the store and applies the bounds at `now_ms`
    /// (blocking: its own thread). What the gauges then count as held is committed: safe from
    /// the agent's own crash at once, from power loss at the store's next WAL sync.
    pub fn drain(&self, now_ms: u64) -> AgentResult<store::Written> {
        let mut store = lock(&self.store);
        let mut taken = {
            let fresh = std::mem::take(&mut *lock(&self.spare));
            std::mem::replace(&mut *lock(&self.queue), fresh)
        };
        let mut result = Ok(());
        let mut new = Vec::with_capacity(taken.entries.len());
        let mut classes_stored = vec![false; taken.plans.len()];
        for (i, e) in taken.entries.iter().enumerate() {
            let (Some(plan), Some(prediction)) = (taken.plan(e), taken.prediction(i)) else {
                // Not expected: the queue's own bytes.
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if prediction.all_done() {
                // Every row had its feedback while it waited.
                continue;
            }
            if let Some(stored @ false) = classes_stored.get_mut(e.plan as usize) {
                *stored = true;
                if !plan.classes().is_empty()
                    && let Err(err) = store.put_classes(&plan.model, plan.version, plan.classes())
                {
                    result = Err(err);
                }
            }
            let id = String::from_utf8_lossy(taken.id(e));
            new.push(store::New {
                key: store::key(&plan.model, &id),
                prediction,
            });
        }
        let lost = new.len() as u64;
        let written = result.and_then(|()| store.write(new, now_ms));
        taken.recycle();
        *lock(&self.spare) = taken;
        match &written {
            Ok(w) => {
                if w.evicted.count + w.evicted.bytes > 0 {
                    tracing::debug!(evicted = ?w.evicted, "feedback store over a bound: oldest predictions evicted");
                }
            }
            Err(e) => {
                self.counters.dropped.fetch_add(lost, Ordering::Relaxed);
                tracing::error!(error = %e, lost, "cannot store predictions for feedback; dropped");
            }
        }
        self.mirror(&store);
        written
    }

    fn mirror(&self, store: &Store) {
        let (held, bytes) = store.held();
        let e = store.evicted();
        let c = &self.counters;
        c.held.store(held, Ordering::Relaxed);
        c.held_bytes.store(bytes, Ordering::Relaxed);
        c.evicted_count.store(e.count, Ordering::Relaxed);
        c.evicted_bytes.store(e.bytes, Ordering::Relaxed);
        c.evicted_age.store(e.age, Ordering::Relaxed);
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            held: get(&c.held),
            held_bytes: get(&c.held_bytes),
            queued: lock(&self.queue).entries.len() as u64,
            evicted: Evicted {
                count: get(&c.evicted_count),
                bytes: get(&c.evicted_bytes),
                age: get(&c.evicted_age),
            },
            dropped: get(&c.dropped),
            not_kept: get(&c.not_kept),
            matched: get(&c.matched),
            late: get(&c.late),
            unknown: get(&c.unknown),
            duplicate: get(&c.duplicate),
            capturing: self.capture.capturing(crate::now()),
        }
    }

    /// One feedback call for `model` (blocking: run it on the blocking pool). `served` is the
    /// version of `model` served now (unknown ids count against it); `header_id` the request
    /// id header, for the single-item form.
    pub fn submit(
        &self,
        model: &str,
        served: Option<u64>,
        header_id: Option<&str>,
        body: &[u8],
    ) -> Result<Outcome, Refusal> {
        let items = body::parse(body, header_id)?;
        if !self.enabled() {
            return Err(Refusal::new(
                Status::NotFound,
                "this device keeps no predictions (feedback_max_predictions = 0 in its configuration): feedback cannot match".into(),
            ));
        }
        if edgefleet_common::name::validate(model).is_err() {
            return Err(Refusal::new(
                Status::NotFound,
                format!("{model:?} is not a model name"),
            ));
        }
        let mut store = lock(&self.store);
        let mut found = self.look_up(&store, model, &items)?;
        // Read every item against its prediction before anything changes: a bad item refuses
        // the whole call.
        let mut ops: Vec<(usize, u32, RowTruth)> = Vec::new();
        let (mut unknown, mut duplicate) = (Vec::<&str>::new(), Vec::<&str>::new());
        let mut unknown_items = 0u64;
        let mut duplicate_rows = 0u64;
        let mut first_duplicate = None;
        let single = items.len() == 1;
        for (i, item) in items.iter().enumerate() {
            let Some(&f) = found.index.get(item.id.as_str()) else {
                unknown_items += 1;
                if !unknown.contains(&item.id.as_str()) {
                    unknown.push(&item.id);
                }
                continue;
            };
            let m = &mut found.matches[f];
            let classes = Classes::new(&m.classes);
            let rows = truth::resolve(item, &m.prediction, classes).map_err(|e| {
                let at = if single {
                    format!("id {:?}", item.id)
                } else {
                    format!("feedback[{i}] (id {:?})", item.id)
                };
                Refusal::new(Status::BadRequest, format!("{at}: {e}"))
            })?;
            for (r, t) in rows {
                if m.prediction.is_done(r) {
                    if !was_done(&m.before, r) {
                        return Err(Refusal::new(
                            Status::BadRequest,
                            format!("row {r} of id {:?} is given twice in this call", item.id),
                        ));
                    }
                    duplicate_rows += 1;
                    first_duplicate.get_or_insert((item.id.clone(), r));
                    if !duplicate.contains(&item.id.as_str()) {
                        duplicate.push(&item.id);
                    }
                    continue;
                }
                m.prediction.mark_done(r);
                m.touched = true;
                ops.push((f, r, t));
            }
        }
        let unknown: Vec<String> = unknown.into_iter().map(str::to_owned).collect();
        let duplicate: Vec<String> = duplicate.into_iter().map(str::to_owned).collect();
        self.counters
            .duplicate
            .fetch_add(duplicate_rows, Ordering::Relaxed);
        if ops.is_empty() {
            drop(store);
            self.count_unknown(model, served, unknown_items);
            if let Some((id, row)) = first_duplicate {
                return Err(Refusal {
                    status: Status::Conflict,
                    message: format!(
                        "row {row} of id {id:?} already received its feedback (each row is scored once); nothing in this call was new"
                    ),
                    unknown,
                    duplicate,
                });
            }
            return Err(Refusal {
                status: Status::NotFound,
                message: self.not_found_message(model, served, &unknown),
                unknown,
                duplicate,
            });
        }
        // Marks first, in one transaction; then the scores. A failed store scores nothing.
        let stored: Vec<(Vec<u8>, store::Stored)> = found
            .matches
            .iter()
            .filter(|m| m.touched)
            .filter_map(|m| match m.source {
                Source::Stored(seq) => Some((
                    store::key(model, &m.id),
                    store::Stored {
                        seq,
                        prediction: m.prediction.clone(),
                    },
                )),
                Source::Queued(_) => None,
            })
            .collect();
        if !stored.is_empty() {
            if let Err(e) = store.update(&stored) {
                tracing::error!(error = %e, "cannot store feedback marks");
                return Err(Refusal::new(
                    Status::Internal,
                    format!(
                        "the device cannot store feedback now ({e}); nothing was scored: send it again"
                    ),
                ));
            }
            self.mirror(&store);
        }
        {
            let mut q = lock(&self.queue);
            for m in found.matches.iter().filter(|m| m.touched) {
                if let Source::Queued(i) = m.source {
                    q.done.insert(i, m.prediction.done.clone());
                }
            }
        }
        drop(store);
        let (matched, late) = self.score(model, &found.matches, ops);
        self.count_unknown(model, served, unknown_items);
        Ok(Outcome {
            matched,
            late,
            unknown,
            duplicate,
        })
    }

    /// Finds each distinct id of `items`: in the queue (the newest entry), else in the store.
    fn look_up(&self, store: &Store, model: &str, items: &[body::Item]) -> Result<Found, Refusal> {
        let mut found = Found::default();
        let mut wanted: HashMap<&str, Option<usize>> =
            items.iter().map(|i| (i.id.as_str(), None)).collect();
        {
            let q = lock(&self.queue);
            for (i, e) in q.entries.iter().enumerate().rev() {
                let Some(plan) = q.plan(e).filter(|p| &*p.model == model) else {
                    continue;
                };
                let Ok(id) = std::str::from_utf8(q.id(e)) else {
                    continue;
                };
                if let Some(slot @ None) = wanted.get_mut(id)
                    && let Some(prediction) = q.prediction(i)
                {
                    *slot = Some(found.matches.len());
                    found.matches.push(Match {
                        id: id.to_owned(),
                        source: Source::Queued(i),
                        before: prediction.done.clone(),
                        prediction,
                        classes: plan.classes().to_vec(),
                        touched: false,
                    });
                }
            }
        }
        let internal = |e: crate::error::AgentError| {
            Refusal::new(
                Status::Internal,
                format!(
                    "the device cannot read its predictions now ({e}): send the feedback again"
                ),
            )
        };
        for (id, slot) in wanted.iter_mut() {
            if slot.is_some() {
                continue;
            }
            let Some(s) = store.get(&store::key(model, id)).map_err(internal)? else {
                continue;
            };
            let classes = match &s.prediction.kept {
                Kept::Labels { .. } => store
                    .classes(model, s.prediction.version)
                    .map_err(internal)?
                    .unwrap_or_default(),
                Kept::Values { .. } => Vec::new(),
            };
            *slot = Some(found.matches.len());
            found.matches.push(Match {
                id: (*id).to_owned(),
                source: Source::Stored(s.seq),
                before: s.prediction.done.clone(),
                prediction: s.prediction,
                classes,
                touched: false,
            });
        }
        found.index = wanted
            .into_iter()
            .filter_map(|(id, slot)| slot.map(|s| (id.to_owned(), s)))
            .collect();
        Ok(found)
    }

    /// Scores the rows into the book; returns (matched, late).
    fn score(
        &self,
        model: &str,
        matches: &[Match],
        ops: Vec<(usize, u32, RowTruth)>,
    ) -> (u64, u64) {
        let (mut matched, mut late) = (0, 0);
        self.book.with(|w| {
            let start = w.start_ms();
            for (f, r, t) in ops {
                let m = &matches[f];
                let p = &m.prediction;
                let is_late = p.at_ms < start;
                let q = w.quality(model, p.version);
                let classes = Classes::new(&m.classes);
                let scored = match (&p.kept, &t) {
                    (Kept::Values { width, values }, RowTruth::Values(truth)) => {
                        let w = *width as usize;
                        q.score_values(&values.row(r as usize * w, w), truth, is_late)
                    }
                    (Kept::Labels { labels, probs }, RowTruth::Label(truth)) => {
                        let predicted = labels
                            .get(r as usize)
                            .map(|l| l.text(classes))
                            .unwrap_or_default();
                        let p_true = probs.as_ref().and_then(|(c, values)| {
                            let c = *c as usize;
                            truth
                                .column(classes, c)
                                .and_then(|k| values.get(r as usize * c + k))
                        });
                        q.score_label(&predicted, &truth.text(classes), p_true, is_late)
                    }
                    _ => Err(edgefleet_common::Error::Malformed {
                        what: "feedback",
                        detail: "a truth of the wrong kind".into(),
                    }),
                };
                match scored {
                    Ok(()) => {
                        matched += 1;
                        late += u64::from(is_late);
                        self.offer_sample(model, m, r, &t);
                    }
                    // Every truth was checked against its prediction: not expected.
                    Err(e) => {
                        tracing::error!(error = %e, model, "a feedback row could not be scored")
                    }
                }
            }
        });
        self.counters.matched.fetch_add(matched, Ordering::Relaxed);
        self.counters.late.fetch_add(late, Ordering::Relaxed);
        (matched, late)
    }

    /// Offers a scored row to the capture's reservoir when its prediction kept its inputs.
    fn offer_sample(&self, model: &str, m: &Match, r: u32, truth: &RowTruth) {
        use edgefleet_common::sample::{SampleRow, Value};
        let p = &m.prediction;
        if p.inputs.is_empty() {
            return;
        }
        let plan = lock(&self.captured_plans)
            .get(&(Arc::from(model), p.version))
            .cloned();
        let Some(plan) = plan else { return };
        let width = plan.input_names.len();
        let Some(inputs) = p.inputs.get(r as usize * width..(r as usize + 1) * width) else {
            return;
        };
        let classes = Classes::new(&m.classes);
        let (predicted, truth) = match (&p.kept, truth) {
            (Kept::Values { width, values }, RowTruth::Values(t)) => {
                let w = *width as usize;
                (
                    values
                        .row(r as usize * w, w)
                        .into_iter()
                        .map(Value::Number)
                        .collect(),
                    t.iter().copied().map(Value::Number).collect(),
                )
            }
            (Kept::Labels { labels, .. }, RowTruth::Label(t)) => (
                labels
                    .get(r as usize)
                    .map(|l| vec![Value::Label(l.text(classes))])
                    .unwrap_or_default(),
                vec![Value::Label(t.text(classes))],
            ),
            _ => return,
        };
        let columns = capture::Columns {
            inputs: &plan.input_names,
            outputs: &plan.output_names,
        };
        let row = SampleRow {
            made_at: p.at_ms / 1000,
            inputs: inputs.to_vec(),
            predicted,
            truth,
        };
        if row.predicted.len() == plan.output_names.len() {
            self.capture
                .offer(model, p.version, columns, row, crate::now());
        }
    }

    fn count_unknown(&self, model: &str, served: Option<u64>, n: u64) {
        if n == 0 {
            return;
        }
        self.counters.unknown.fetch_add(n, Ordering::Relaxed);
        if let Some(version) = served {
            self.book.with(|w| {
                let q = w.quality(model, version);
                q.unknown = q.unknown.saturating_add(n);
            });
        }
    }

    fn not_found_message(&self, model: &str, served: Option<u64>, unknown: &[String]) -> String {
        let l = self.limits;
        let e = self.stats().evicted;
        let shown: Vec<&String> = unknown.iter().take(10).collect();
        let more = if unknown.len() > 10 {
            format!(" and {} more", unknown.len() - 10)
        } else {
            String::new()
        };
        let serving = if served.is_none() {
            format!(" Model {model:?} is not served here.")
        } else {
            String::new()
        };
        format!(
            "no prediction of model {model:?} with id {shown:?}{more} is held on this device: the \
             inference request carried no id (set \"id\" in its body or the x-request-id header), \
             or the prediction expired (older than feedback_max_age_secs = {} s; {} expired so \
             far), or it was evicted to stay within feedback_max_predictions = {} and \
             feedback_max_bytes = {} ({} evicted so far).{serving}",
            l.max_age_ms / 1000,
            e.age,
            l.max_predictions,
            l.max_bytes,
            e.count + e.bytes
        )
    }
}

/// Where a prediction was found.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// At this index of the queue (stable while the store lock is held: only the writer,
    /// under that lock, takes entries out).
    Queued(usize),
    /// In the store, under this sequence number.
    Stored(u64),
}

struct Match {
    id: String,
    source: Source,
    /// A copy, marked as the call goes; written back once every item is read.
    prediction: Prediction,
    classes: Vec<String>,
    /// The done marks before this call.
    before: Vec<u8>,
    /// Whether this call marked a row.
    touched: bool,
}

fn was_done(before: &[u8], row: u32) -> bool {
    before
        .get(row as usize / 8)
        .is_some_and(|b| b & (1 << (row % 8)) != 0)
}

#[derive(Default)]
struct Found {
    matches: Vec<Match>,
    /// id → index into `matches`.
    index: HashMap<String, usize>,
}

#[cfg(test)]
mod tests;
