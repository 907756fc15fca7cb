//! The active models' window profiles: every inference's inputs (one column per feature
//! name), outputs and latency, with request and error counts — the data the telemetry upload
//! sends when a window closes.
//!
//! The inference path only appends the request's numbers to a buffer (a short lock, a copy).
//! Sketching happens in [`WindowRecorder::fold`], which the agent's folding task runs every
//! 500 ms and whenever a buffer fills ([`BUFFER_ROWS`] rows, 72 KiB for 9 columns; [`FULL`]
//! wakes it). Emptied buffers are reused, so in steady state a request never allocates. Full
//! buffers queue for the folder; only if [`MAX_PENDING`] are already waiting (the folder cannot
//! keep up) does a request fold inline, so memory stays bounded however fast requests come.
//! Folding order does not matter: the sketches summarise the same multiset either way.

use std::sync::Mutex;

use edgefleet_common::sketch::{
    ColumnKind, ColumnSpec, DEFAULT_K, LatencySketch, ModelColumn, Profile, model_columns,
};
use edgefleet_common::{ModelManifest, Tensor};

/// Rows per buffer.
pub const BUFFER_ROWS: usize = 1024;
/// Full buffers waiting for the folder before requests fold inline.
pub const MAX_PENDING: usize = 4;

/// Woken when a buffer fills: the agent's folding task waits on it.
pub static FULL: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A closed (or current) window.
#[derive(Debug, Clone)]
pub struct Window {
    pub started_at: u64,
    pub profile: Profile,
    pub latency: LatencySketch,
    pub requests: u64,
    pub errors: u64,
}

impl Window {
    fn empty(profile: Profile, started_at: u64) -> Self {
        Window {
            started_at,
            profile,
            latency: LatencySketch::default(),
            requests: 0,
            errors: 0,
        }
    }
}

struct Buffer {
    /// Row-major values, `columns` per row.
    values: Vec<f64>,
    latencies_us: Vec<f64>,
    requests: u64,
    errors: u64,
}

pub struct WindowRecorder {
    /// Where each profile column's value comes from.
    sources: Vec<ModelColumn>,
    /// Tensor names: the manifest's inputs then outputs.
    tensors: Vec<String>,
    n_inputs: usize,
    /// The input whose first dimension counts a request's rows (none: one row).
    batch_input: Option<usize>,
    /// Rows per buffer ([`BUFFER_ROWS`] in the agent).
    buffer_rows: usize,
    buffer: Mutex<Buffer>,
    /// Full buffers waiting to be folded.
    pending: Mutex<Vec<Buffer>>,
    /// Emptied buffers, capacity kept: in steady state requests never allocate.
    spare: Mutex<Vec<Buffer>>,
    window: Mutex<Window>,
}

impl WindowRecorder {
    /// Columns: each input's feature names (or `name[i]`), each output's `name` (one value per
    /// row) or `name[j]`. A column the reference profile marks categorical is categorical.
    pub fn for_manifest(m: &ModelManifest, now: u64) -> Self {
        Self::with_buffer_rows(m, now, BUFFER_ROWS)
    }

    /// [`WindowRecorder::for_manifest`] with buffers of `buffer_rows` rows: the fleet
    /// simulator keeps thousands of windows, each folded by its owner, and small buffers.
    pub fn with_buffer_rows(m: &ModelManifest, now: u64, buffer_rows: usize) -> Self {
        let buffer_rows = buffer_rows.max(1);
        let reference = m
            .reference_profile
            .as_deref()
            .and_then(|b| Profile::from_bytes(b).ok());
        let kind_of = |name: &str| {
            reference
                .as_ref()
                .and_then(|p| p.column(name))
                .map_or(ColumnKind::Numeric, |c| c.sketch.kind())
        };
        let mut sources = model_columns(m);
        let specs: Vec<ColumnSpec> = sources
            .iter()
            .map(|c| ColumnSpec {
                name: c.name.clone(),
                kind: kind_of(&c.name),
            })
            .collect();
        // Rows per request: the first batched input's first dimension.
        let batch_input = sources
            .iter()
            .find(|c| c.batched && c.tensor < m.inputs.len())
            .map(|c| c.tensor);
        // Names that cannot be profile columns (a control character, say): profile nothing
        // rather than refuse to serve.
        let profile = Profile::new(&specs, DEFAULT_K).unwrap_or_else(|_| {
            sources.clear();
            Profile {
                rows: 0,
                columns: vec![],
            }
        });
        WindowRecorder {
            buffer: Mutex::new(Buffer::with_capacity(buffer_rows, sources.len())),
            buffer_rows,
            sources,
            tensors: m
                .inputs
                .iter()
                .chain(&m.outputs)
                .map(|t| t.name.clone())
                .collect(),
            n_inputs: m.inputs.len(),
            batch_input,
            pending: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            window: Mutex::new(Window::empty(profile, now)),
        }
    }

    pub fn schema(&self) -> Vec<ColumnSpec> {
        self.window
            .lock()
            .map(|w| w.profile.schema())
            .unwrap_or_default()
    }

    /// Records one successful inference: its rows' values and its latency.
    pub fn record(&self, inputs: &[Tensor], outputs: &[Tensor], latency_us: f64) {
        // Each tensor looked up once per request, not once per column; `width` is one row's
        // length (the whole tensor when it is not batched).
        let found: tract_onnx::prelude::TVec<Option<(&Tensor, usize)>> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(t, name)| {
                let pool = if t < self.n_inputs { inputs } else { outputs };
                pool.iter().find(|x| &x.name == name).map(|x| {
                    let width = x
                        .shape
                        .get(1..)
                        .map_or(1, |d| d.iter().product::<u64>().max(1));
                    (x, width as usize)
                })
            })
            .collect();
        let rows = self
            .batch_input
            .and_then(|t| found.get(t).copied().flatten())
            .and_then(|(t, _)| t.shape.first().copied())
            .unwrap_or(1) as usize;
        let full = {
            let Ok(mut b) = self.buffer.lock() else {
                return;
            };
            b.requests += 1;
            b.latencies_us.push(latency_us);
            let start = b.values.len();
            b.values.resize(start + rows * self.sources.len(), f64::NAN);
            for (c, s) in self.sources.iter().enumerate() {
                let Some(Some((t, width))) = found.get(s.tensor).copied() else {
                    continue;
                };
                // An unbatched tensor is one row: it fills the request's first row only.
                let (rows_here, width) = if s.batched { (rows, width) } else { (1, 0) };
                for r in 0..rows_here {
                    if let Some(v) = t.data.get_f64(r * width + s.element) {
                        b.values[start + r * self.sources.len() + c] = v;
                    }
                }
            }
            if b.values.len() >= self.buffer_rows * self.sources.len().max(1)
                || b.latencies_us.len() >= self.buffer_rows
            {
                Some(std::mem::replace(&mut *b, self.fresh_buffer()))
            } else {
                None
            }
        };
        if let Some(full) = full {
            let backlog = match self.pending.lock() {
                Ok(mut p) => {
                    p.push(full);
                    p.len()
                }
                Err(_) => return,
            };
            if backlog > MAX_PENDING {
                self.fold();
            } else {
                FULL.notify_one();
            }
        }
    }

    /// Requests and errors so far in the current window (buffered ones included).
    pub fn counts(&self) -> (u64, u64) {
        let (mut req, mut err) = self
            .window
            .lock()
            .map(|w| (w.requests, w.errors))
            .unwrap_or_default();
        if let Ok(b) = self.buffer.lock() {
            req += b.requests;
            err += b.errors;
        }
        if let Ok(p) = self.pending.lock() {
            for b in p.iter() {
                req += b.requests;
                err += b.errors;
            }
        }
        (req, err)
    }

    /// Records a failed inference (bad request or model error).
    pub fn record_error(&self) {
        if let Ok(mut b) = self.buffer.lock() {
            b.errors += 1;
        }
    }

    /// Moves the queued and buffered rows into the window's sketches.
    pub fn fold(&self) {
        let mut batches = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        // The replacement is found here, off the request path, before taking the lock.
        let fresh = self.fresh_buffer();
        if let Ok(mut b) = self.buffer.lock() {
            batches.push(std::mem::replace(&mut *b, fresh));
        }
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let n = self.sources.len();
        for mut taken in batches {
            if n > 0 {
                for row in taken.values.chunks_exact(n) {
                    for (c, &v) in row.iter().enumerate() {
                        w.profile.update_column(c, v);
                    }
                }
                w.profile.add_rows((taken.values.len() / n) as u64);
            }
            for &l in &taken.latencies_us {
                w.latency.record_us(l);
            }
            w.requests += taken.requests;
            w.errors += taken.errors;
            taken.clear();
            // Two spares cover the steady state; more would only hold memory.
            if let Ok(mut spare) = self.spare.lock()
                && spare.len() < 2
            {
                spare.push(taken);
            }
        }
    }

    /// Closes the current window (folding what is buffered) and starts the next at `now`.
    pub fn close(&self, now: u64) -> Option<Window> {
        self.fold();
        let mut w = self.window.lock().ok()?;
        let fresh = Window::empty(Profile::new(&w.profile.schema(), DEFAULT_K).ok()?, now);
        Some(std::mem::replace(&mut *w, fresh))
    }

    /// A spare buffer if one is free, else a new one.
    fn fresh_buffer(&self) -> Buffer {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_else(|| Buffer::with_capacity(self.buffer_rows, self.sources.len()))
    }
}

impl Buffer {
    fn with_capacity(rows: usize, columns: usize) -> Self {
        Buffer {
            values: Vec::with_capacity(rows * columns),
            latencies_us: Vec::with_capacity(rows),
            requests: 0,
            errors: 0,
        }
    }

    /// Empties the buffer, keeping its capacity.
    fn clear(&mut self) {
        self.values.clear();
        self.latencies_us.clear();
        (self.requests, self.errors) = (0, 0);
    }
}
