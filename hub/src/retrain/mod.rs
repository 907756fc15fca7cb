//! Retraining: the closed loop's hub side (issue: the closed loop). Built so far: the trainer
//! runner, which runs a trainer command on a job directory under the contract of
//! docs/trainers.md and reports exactly one of a whole model or a reason. Policies, triggers,
//! runs and lineage, champion/challenger and signing come next and call it.
//!
//! - [`runner`]: one trainer run: its own process group, an empty environment but `PATH`, a
//!   timeout, a cap on the job directory's size, its output kept (bounded), the model and
//!   metrics checked before anything is reported as a success.

pub mod runner;

pub use runner::{Failure, RunReport, TrainerCommand};

#[cfg(test)]
mod tests;
