//! One trainer run under the trainer contract (docs/trainers.md).
//!
//! The trainer is a command the hub does not trust to behave: it may crash, hang, fill the
//! disk, print without end or write no model. The runner:
//! - starts it in its own process group (so a timeout or a full directory kills everything it
//!   started, not only the first process), in the job directory, with an empty environment
//!   but `PATH`, `HOME` (the job directory) and `LANG` — no hub key, token or configuration
//!   reaches it;
//! - keeps the last [`TrainerCommand::max_log_bytes`] of its stdout and stderr, interleaved;
//! - kills the group after the timeout, or when the job directory grows past its cap
//!   (checked every [`SIZE_CHECK_INTERVAL`]);
//! - on exit 0, requires `model.onnx` (non-empty, within the model size bound) and a
//!   `metrics.json` that is a JSON object; anything else is a [`Failure`] that says what was
//!   wrong. A failed run yields no model.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout};

/// How often the job directory's size is checked while the trainer runs.
pub const SIZE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Largest `metrics.json` read.
pub const MAX_METRICS_BYTES: u64 = 1 << 20;

/// The configured trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerCommand {
    /// The program and its arguments; the job directory is appended as the last argument.
    pub command: Vec<String>,
    pub timeout: Duration,
    /// The job directory may not grow past this (inputs included).
    pub max_dir_bytes: u64,
    /// The largest model accepted.
    pub max_model_bytes: u64,
    /// How much of the trainer's output is kept (its end).
    pub max_log_bytes: usize,
}

/// Why a run produced no model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Failure {
    #[error("the trainer could not be started: {0}")]
    NotStarted(String),
    #[error("the trainer exited with {0}")]
    Exited(String),
    #[error("the trainer ran past its timeout of {0} s and was killed")]
    TimedOut(u64),
    #[error("the job directory grew past {0} bytes and the trainer was killed")]
    DirectoryTooLarge(u64),
    #[error("the trainer exited 0 but {0}")]
    BadOutput(String),
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub outcome: Result<(), Failure>,
    pub duration_ms: u64,
    /// The end of the trainer's stdout and stderr.
    pub log: String,
    /// The model's bytes and the trainer's metrics, on success only.
    #[serde(skip)]
    pub model: Option<Vec<u8>>,
    pub metrics: Option<serde_json::Value>,
}

/// Bytes under `dir` (files only, symlinks not followed).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// The end of a stream, at most `max` bytes.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    max: usize,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > self.max {
            let cut = self.bytes.len() - self.max;
            self.bytes.drain(..cut);
        }
    }
}

/// Reads `r` into `buf`: Some(n) for n bytes, None at its end (or an error); never completes
/// once `r` is closed (None).
async fn read_pipe<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match r {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// The trainer's stdout and stderr, read as they come into one bounded tail.
struct Output {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    tail: Tail,
}

impl Output {
    fn open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// Reads the next chunk of either stream into the tail (a stream at its end is closed).
    async fn read_some(&mut self) {
        let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
        tokio::select! {
            n = read_pipe(&mut self.stdout, &mut a) => match n {
                Some(n) => self.tail.push(&a[..n]),
                None => self.stdout = None,
            },
            n = read_pipe(&mut self.stderr, &mut b) => match n {
                Some(n) => self.tail.push(&b[..n]),
                None => self.stderr = None,
            },
        }
    }
}

/// Kills the process group `pgid` (the trainer and everything it started).
fn kill_group(pgid: u32) {
    let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL) {
        // Already gone (ESRCH) is the usual case after the leader exited on its own.
        tracing::debug!(error = %e, pgid, "killing the trainer's process group");
    }
}

fn read_small(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{} is missing ({e})", name(path)))?
        .len();
    if len > max {
        return Err(format!(
            "{} is {len} bytes, over the {max}-byte bound",
            name(path)
        ));
    }
    std::fs::read(path).map_err(|e| format!("{} cannot be read ({e})", name(path)))
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks what a trainer that exited 0 left: (model, metrics).
fn collect(job: &Path, t: &TrainerCommand) -> Result<(Vec<u8>, serde_json::Value), String> {
    let model = read_small(&job.join("model.onnx"), t.max_model_bytes)?;
    if model.is_empty() {
        return Err("model.onnx is empty".into());
    }
    let metrics = read_small(&job.join("metrics.json"), MAX_METRICS_BYTES)?;
    let metrics: serde_json::Value =
        serde_json::from_slice(&metrics).map_err(|e| format!("metrics.json is not JSON ({e})"))?;
    if !metrics.is_object() {
        return Err("metrics.json is not a JSON object".into());
    }
    Ok((model, metrics))
}

/// Runs `t` on `job` (a prepared job directory). Never panics on what the trainer does.
pub async fn run(t: &TrainerCommand, job: &Path) -> RunReport {
    let started = Instant::now();
    let report = |outcome, log: &Tail, model, metrics| RunReport {
        outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        log: String::from_utf8_lossy(&log.bytes).into_owned(),
        model,
        metrics,
    };
    let log = Tail {
        bytes: Vec::new(),
        max: t.max_log_bytes,
    };
    let Some((program, args)) = t.command.split_first() else {
        return report(
            Err(Failure::NotStarted(
                "no trainer command is configured".into(),
            )),
            &log,
            None,
            None,
        );
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg(job)
        .current_dir(job)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", job)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return report(
                Err(Failure::NotStarted(format!("{program}: {e}"))),
                &log,
                None,
                None,
            );
        }
    };
    let pgid = child.id().unwrap_or(0);
    let mut output = Output {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        tail: log,
    };
    let deadline = tokio::time::sleep(t.timeout);
    tokio::pin!(deadline);
    let mut check = tokio::time::interval(SIZE_CHECK_INTERVAL);
    let status = loop {
        tokio::select! {
            _ = output.read_some(), if output.open() => {}
            status = child.wait() => break status,
            _ = &mut deadline => {
                kill_group(pgid);
                let _ = child.wait().await;
                return report(Err(Failure::TimedOut(t.timeout.as_secs())), &output.tail, None, None);
            }
            _ = check.tick() => {
                let dir = job.to_path_buf();
                let size = tokio::task::spawn_blocking(move || dir_bytes(&dir)).await.unwrap_or(0);
                if size > t.max_dir_bytes {
                    kill_group(pgid);
                    let _ = child.wait().await;
                    return report(Err(Failure::DirectoryTooLarge(t.max_dir_bytes)), &output.tail, None, None);
                }
            }
        }
    };
    // Whatever the trainer left running in its group goes with it (and with it the pipes'
    // last writers); then the output still buffered is read, briefly.
    kill_group(pgid);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while output.open() {
            output.read_some().await;
        }
    })
    .await;
    let log = output.tail;
    let status = match status {
        Ok(s) => s,
        Err(e) => return report(Err(Failure::Exited(e.to_string())), &log, None, None),
    };
    if !status.success() {
        return report(Err(Failure::Exited(status.to_string())), &log, None, None);
    }
    if dir_bytes(job) > t.max_dir_bytes {
        return report(
            Err(Failure::DirectoryTooLarge(t.max_dir_bytes)),
            &log,
            None,
            None,
        );
    }
    match collect(job, t) {
        Ok((model, metrics)) => report(Ok(()), &log, Some(model), Some(metrics)),
        Err(why) => report(Err(Failure::BadOutput(why)), &log, None, None),
    }
}
