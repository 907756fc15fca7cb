//! The quality book: this window's prediction quality per model version, in memory until
//! telemetry closes the window and takes it into the record.

use std::collections::BTreeMap;
use std::sync::Mutex;

use edgefleet_common::quality::ModelQuality;

#[derive(Debug)]
struct Inner {
    /// When the current telemetry window started, ms: a prediction made before it is late.
    window_start_ms: u64,
    models: BTreeMap<(String, u64), ModelQuality>,
}

/// This window's quality accumulators, by (model, version).
#[derive(Debug)]
pub struct QualityBook {
    inner: Mutex<Inner>,
}

/// Access to the current window's accumulators ([`QualityBook::with`]).
pub struct Window<'a> {
    inner: &'a mut Inner,
}

impl Window<'_> {
    pub fn start_ms(&self) -> u64 {
        self.inner.window_start_ms
    }

    /// The accumulator of `model` `version`, created empty.
    pub fn quality(&mut self, model: &str, version: u64) -> &mut ModelQuality {
        self.inner
            .models
            .entry((model.to_owned(), version))
            .or_insert_with(|| ModelQuality::new(model, version))
    }
}

impl QualityBook {
    /// A book whose first window starts at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                window_start_ms: now_ms,
                models: BTreeMap::new(),
            }),
        }
    }

    /// Runs `f` on the current window, atomically with respect to [`QualityBook::take`].
    pub fn with<R>(&self, f: impl FnOnce(&mut Window<'_>) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut Window { inner: &mut guard })
    }

    pub fn window_start_ms(&self) -> u64 {
        self.with(|w| w.start_ms())
    }

    /// Ends the window at `now_ms`: its accumulators that saw feedback, sorted by model and
    /// version; the next window starts empty at `now_ms`.
    pub fn take(&self, now_ms: u64) -> Vec<ModelQuality> {
        self.with(|w| {
            w.inner.window_start_ms = now_ms;
            std::mem::take(&mut w.inner.models)
                .into_values()
                .filter(|q| !q.is_empty())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_what_saw_feedback_and_starts_a_new_window() {
        let book = QualityBook::new(1_000);
        book.with(|w| {
            w.quality("b", 1).unknown += 1;
            w.quality("a", 2)
                .score_values(&[1.0], &[3.0], false)
                .expect("score");
            w.quality("c", 1);
        });
        let taken = book.take(5_000);
        assert_eq!(
            taken
                .iter()
                .map(|q| (q.model.as_str(), q.version))
                .collect::<Vec<_>>(),
            vec![("a", 2), ("b", 1)]
        );
        assert_eq!(book.window_start_ms(), 5_000);
        assert!(book.take(6_000).is_empty());
    }
}
