//! The admin CLI `edgefleet`: keys, delegations and offline signing (no hub needed), and the
//! hub's admin API (push, models, devices, approve, assign, rollout, status, drift, fleet).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use edgefleet_common::manifest::ModelFormat;
use edgefleet_common::trust::{Delegation, Permission, RootRotation};
use edgefleet_common::{
    ArtifactRef, DataType, Digest, Lineage, ModelManifest, Signed, SmokeTest, Tensor, TensorData,
    TensorSpec, name,
};
use serde::Deserialize;

use crate::keyfile;

mod retrain;
mod rollout;

pub use retrain::RetrainCommand;
pub use rollout::RolloutCommand;

#[derive(Parser, Debug)]
#[command(
    name = "edgefleet",
    version,
    about = "Edgefleet admin CLI: keys, signing, and the hub's admin API",
    long_about = "Edgefleet admin CLI.\n\nOffline (no hub): keygen, delegate, sign, profile, rotate-root, demo (the closed loop on this machine).\nAgainst a hub (--hub/EDGEFLEET_HUB, --token/EDGEFLEET_TOKEN): push, models, devices, approve, assign, rollout, status, drift, fleet, capture, samples, retrain, runs, lineage, approve-model.\n\nTypical first run:\n  edgefleet keygen --role root --out keys/root.key\n  edgefleet keygen --role hub --out keys/hub.key\n  edgefleet delegate --root-key keys/root.key --to keys/hub.key.pub --out keys/hub.delegation\n  edgefleet sign --key keys/root.key --spec model.json --model model.onnx --out model.manifest\n  edgefleet push model.manifest model.onnx\n  edgefleet assign --device shop-1 demand 1"
)]
pub struct Cli {
    /// Hub base URL.
    #[arg(
        long,
        global = true,
        env = "EDGEFLEET_HUB",
        default_value = "http://127.0.0.1:7700"
    )]
    pub hub: String,
    /// Admin token (printed by the hub on first start; in DATA_DIR/admin-token).
    #[arg(long, global = true, env = "EDGEFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Root,
    Hub,
    Device,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an ed25519 key pair: OUT (PKCS#8 PEM, mode 0600) and OUT.pub (SPKI PEM).
    Keygen {
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign, with the root key, a delegation letting another key sign for some models.
    Delegate {
        /// The root private key.
        #[arg(long)]
        root_key: PathBuf,
        /// The delegated public key (PEM or hex), e.g. the hub's.
        #[arg(long)]
        to: PathBuf,
        /// Model name patterns: exact names, `prefix*` or `*`. Repeatable.
        #[arg(long = "models", default_value = "*")]
        models: Vec<String>,
        /// What the key may sign: manifests, assignments. Repeatable.
        #[arg(long = "permission", default_values = ["manifests", "assignments"])]
        permissions: Vec<String>,
        /// Validity, e.g. 365d, 12h, 30m.
        #[arg(long, default_value = "365d")]
        expires_in: String,
        #[arg(long, default_value = "hub")]
        label: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a model manifest offline from a spec (JSON) and the ONNX file.
    Sign {
        /// Private key: root, or a delegated key together with --delegation.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        delegation: Option<PathBuf>,
        /// JSON spec: name, version, inputs, outputs, smoke_tests, lineage, description.
        #[arg(long)]
        spec: PathBuf,
        /// The ONNX model file.
        #[arg(long)]
        model: PathBuf,
        /// The training data's profile (from `edgefleet profile`), signed into the manifest:
        /// devices and the hub measure drift against it.
        #[arg(long)]
        reference: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Profile training data (CSV with a header) with the sketches devices use; the output
    /// goes to `sign --reference`.
    Profile {
        /// The CSV file.
        data: PathBuf,
        /// JSON `[{"name": "fuel_price", "kind": "numeric"}, {"name": "day", "kind":
        /// "categorical"}]`: which columns, and how to summarise them (default: every column,
        /// numeric). Names must be the model's feature names.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// KLL accuracy parameter (rank error ≈ 1.65 % at 200, 0.68 % at 400).
        #[arg(long, default_value_t = edgefleet_common::sketch::DEFAULT_K)]
        k: u16,
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the root key: a rotation signed by the old root and countersigned by the new.
    RotateRoot {
        #[arg(long)]
        old_key: PathBuf,
        #[arg(long)]
        new_key: PathBuf,
        /// The new root version (the first root is version 1).
        #[arg(long)]
        version: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Upload a signed manifest and its artifact to the hub.
    Push { manifest: PathBuf, model: PathBuf },
    /// List models and versions.
    Models { name: Option<String> },
    /// List devices.
    Devices,
    /// Approve a device that enrolled without a token.
    Approve { device: String },
    /// Set which model version a device, or every device with a tag, should serve.
    Assign {
        #[arg(long, conflicts_with = "tag", required_unless_present = "tag")]
        device: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        model: String,
        version: u64,
    },
    /// Remove a device's or a tag's assignment of a model. A device left with no version of
    /// the model serves it for its removal grace period (agent `removal_grace_secs`, 10 min by
    /// default), then stops and deletes it.
    Unassign {
        /// The device whose own assignment is removed (its tags' assignments stay).
        #[arg(long, conflicts_with = "tag", required_unless_present = "tag")]
        device: Option<String>,
        /// The tag whose assignment is removed.
        #[arg(long)]
        tag: Option<String>,
        /// The model name, e.g. demand.
        model: String,
    },
    /// Show one device's status, or the fleet's.
    Status { device: Option<String> },
    /// Drift of a model version's inputs and outputs against its training reference,
    /// merged over the last HOURS of fleet telemetry (or only devices with TAG), and its
    /// prediction quality from ground truth (MAE, RMSE, MAPE, error quantiles; accuracy,
    /// log-loss, confusion matrix) when devices received feedback.
    Drift {
        model: String,
        version: u64,
        #[arg(long, default_value_t = 24)]
        hours: u64,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Training samples of MODEL: switch capture on (--rate, --max-rows) or off (--off), or
    /// show the policy. Devices serving the model then keep a reservoir of (inputs,
    /// prediction, truth) rows per window, from matched ground truth, and upload it. Off by
    /// default: nothing but sketches leaves a device until an admin switches it on.
    Capture {
        model: String,
        /// The share of matched feedback rows offered to each window's reservoir, (0, 1].
        #[arg(long, requires = "max_rows", conflicts_with = "off")]
        rate: Option<f64>,
        /// Rows kept per window and device, 1..=10000.
        #[arg(long, requires = "rate", conflicts_with = "off")]
        max_rows: Option<u32>,
        /// Switch capture off.
        #[arg(long)]
        off: bool,
    },
    /// Samples of MODEL the hub holds (batches, rows, bytes, columns), or with --export FILE
    /// the dataset as CSV, checked against the SHA-256 the hub computed, which it prints, and
    /// its column types (a Frictionless Table Schema) in FILE.schema.json.
    Samples {
        model: String,
        /// Write the CSV here (and its schema to FILE.schema.json).
        #[arg(long)]
        export: Option<std::path::PathBuf>,
        /// Only this version's samples.
        #[arg(long, requires = "export")]
        version: Option<u64>,
    },
    /// Fleet metrics of the last hour: devices online, per model version requests, errors,
    /// latency, drift and quality from ground truth, and the hub's telemetry ingest counters.
    Fleet,
    /// Staged rollouts: create, list, status (--watch), pause, resume, abort, rollback, audit.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Retraining: a model's policy, a job now, the jobs and the runs (what each trained on,
    /// with which params and seed, and what it made).
    Retrain {
        #[command(subcommand)]
        command: RetrainCommand,
    },
    /// The closed loop on this machine, in about a minute: a hub, a fleet of shops, a fuel-price
    /// shock, drift, retraining, the champion/challenger gate, signing and a staged rollout,
    /// printed as they happen (runs `edgefleet-demo`; `edgefleet demo -- --help` for its
    /// options).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// MODEL's training runs (the same as `edgefleet retrain runs MODEL`).
    Runs { model: String },
    /// Where MODEL VERSION came from, back to the first model: data digests, params, seed,
    /// trainer, metrics, the gate, what triggered each retraining, and the rollouts.
    Lineage { model: String, version: u64 },
    /// Start the rollout of a retrained version that waits for an admin (its policy says
    /// `"release": "approval"`), with the policy's rollout or the one in --rollout.
    ApproveModel {
        model: String,
        version: u64,
        /// A JSON rollout spec without model and version (waves, bake_secs, gates, …).
        #[arg(long)]
        rollout: Option<PathBuf>,
    },
}

/// The spec a data scientist writes next to the model; `sign` adds hash, size and time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    version: u64,
    #[serde(default)]
    description: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    #[serde(default)]
    smoke_tests: Vec<SpecSmokeTest>,
    #[serde(default)]
    lineage: Lineage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecSmokeTest {
    inputs: Vec<SpecTensor>,
    expected: Vec<SpecTensor>,
    /// Absolute tolerance per element.
    tolerance: f64,
}

/// A smoke-test tensor as a user writes it: like a tensor of an inference request
/// (`"datatype": "FP32", "data": [...]`, flat or nested, row-major), or in the older form
/// with the datatype as the data's key (`"data": {"Fp32": [...]}`), which is still read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecTensor {
    name: String,
    shape: Vec<u64>,
    datatype: Option<String>,
    data: serde_json::Value,
}

/// Largest smoke-test tensor read from a spec (the spec file itself is bounded too).
const MAX_SPEC_ELEMENTS: usize = 1 << 20;

impl SpecTensor {
    fn into_tensor(self) -> anyhow::Result<Tensor> {
        let name = self.name;
        let expected_form = "write it like a tensor of an inference request: \
             {\"name\": …, \"shape\": [1, 8], \"datatype\": \"FP32\", \"data\": [0.1, …]} \
             (data flat or nested, row-major; FP32, FP64, INT32, INT64 or BOOL)";
        let data = match (self.datatype, self.data) {
            (Some(datatype), data) => {
                let dt = DataType::parse(&datatype).with_context(|| {
                    format!("tensor {name:?}: unknown datatype {datatype:?}; {expected_form}")
                })?;
                TensorData::from_json(dt, &data, MAX_SPEC_ELEMENTS)
                    .with_context(|| format!("tensor {name:?}"))?
            }
            (None, data @ serde_json::Value::Object(_)) => serde_json::from_value(data)
                .with_context(|| format!("tensor {name:?}: {expected_form}"))?,
            (None, _) => bail!("tensor {name:?} has no \"datatype\"; {expected_form}"),
        };
        let tensor = Tensor {
            name,
            shape: self.shape,
            data,
        };
        tensor.validate()?;
        Ok(tensor)
    }
}

impl SpecSmokeTest {
    fn into_smoke_test(self, i: usize) -> anyhow::Result<SmokeTest> {
        let tensors = |ts: Vec<SpecTensor>, what: &str| {
            ts.into_iter()
                .map(SpecTensor::into_tensor)
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("smoke_tests[{i}].{what}"))
        };
        Ok(SmokeTest {
            inputs: tensors(self.inputs, "inputs")?,
            expected: tensors(self.expected, "expected")?,
            tolerance: self.tolerance,
        })
    }
}

pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected e.g. 365d, 12h, 30m, 90s"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("{s:?}: unknown unit {unit:?} (use s, m, h or d)"),
    };
    n.checked_mul(mult).context("duration overflows")
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any HTTP client is built (the commands against a hub).
    crate::install_crypto_provider();
    match &cli.command {
        Command::Keygen { role, out } => keygen(*role, out, cli.json),
        Command::Delegate {
            root_key,
            to,
            models,
            permissions,
            expires_in,
            label,
            out,
        } => delegate(
            root_key,
            to,
            models,
            permissions,
            expires_in,
            label,
            out,
            cli.json,
        ),
        Command::Sign {
            key,
            delegation,
            spec,
            model,
            reference,
            out,
        } => sign(
            key,
            delegation.as_deref(),
            spec,
            model,
            reference.as_deref(),
            out,
            cli.json,
        ),
        Command::Profile {
            data,
            schema,
            k,
            out,
        } => profile(data, schema.as_deref(), *k, out, cli.json),
        Command::RotateRoot {
            old_key,
            new_key,
            version,
            out,
        } => rotate_root(old_key, new_key, *version, out, cli.json),
        Command::Demo { args } => demo(args),
        _ => remote(&cli).await,
    }
}

/// `edgefleet demo …`: runs `edgefleet-demo` (beside this program, else on PATH) with the
/// arguments, and ends as it ends.
fn demo(args: &[String]) -> anyhow::Result<()> {
    let program = std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("edgefleet-demo"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("edgefleet-demo"));
    let status = std::process::Command::new(&program)
        .args(args)
        .status()
        .with_context(|| {
            format!(
                "cannot run {} (build it: cargo build -p edgefleet-demo -p edgefleet-trainer)",
                program.display()
            )
        })?;
    if !status.success() {
        bail!("the demo ended with {status}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn delegate(
    root_key: &Path,
    to: &Path,
    models: &[String],
    permissions: &[String],
    expires_in: &str,
    label: &str,
    out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let root = keyfile::load_secret_key(root_key)?;
    let key = keyfile::load_public_key(to)?;
    let permissions = permissions
        .iter()
        .map(|p| {
            Permission::parse(p)
                .with_context(|| format!("unknown permission {p:?} (manifests, assignments)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = crate::now();
    let d = Delegation {
        key,
        label: label.to_owned(),
        patterns: models.to_vec(),
        permissions,
        issued_at: now.saturating_sub(300), // tolerate devices whose clock is a little behind
        expires_at: now + parse_duration(expires_in)?,
    };
    d.validate()?;
    let signed = Signed::sign(&d, &root, None)?;
    keyfile::write_document(out, "DELEGATION", &signed.to_bytes()?)?;
    say(
        json,
        &format!(
            "wrote {} (key {} may sign {:?} until {})",
            out.display(),
            key.short(),
            d.patterns,
            d.expires_at
        ),
        serde_json::json!({"out": out, "key": key, "patterns": d.patterns, "expires_at": d.expires_at}),
    );
    Ok(())
}

fn profile(
    data: &Path,
    schema: Option<&Path>,
    k: u16,
    out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let profile = crate::reference::profile_csv(data, schema, k)?;
    let bytes = profile.to_bytes();
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    say(
        json,
        &format!(
            "{}→ {} ({} bytes)",
            crate::reference::describe(&profile),
            out.display(),
            bytes.len()
        ),
        serde_json::json!({"rows": profile.rows, "columns": profile.schema(), "bytes": bytes.len(), "out": out}),
    );
    Ok(())
}

fn rotate_root(
    old_key: &Path,
    new_key: &Path,
    version: u64,
    out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let old = keyfile::load_secret_key(old_key)?;
    let new = keyfile::load_secret_key(new_key)?;
    let rot = RootRotation::create(&old, &new, version, crate::now())?;
    keyfile::write_document(
        out,
        "ROOT ROTATION",
        &edgefleet_common::encoding::to_bytes(&rot)?,
    )?;
    say(
        json,
        &format!(
            "wrote {}: root version {version} is {}",
            out.display(),
            new.public().short()
        ),
        serde_json::json!({"out": out, "version": version, "new_root": new.public()}),
    );
    Ok(())
}

fn say(json: bool, human: &str, value: serde_json::Value) {
    if json {
        println!("{value}");
    } else {
        println!("{human}");
    }
}

fn keygen(role: Role, out: &Path, json: bool) -> anyhow::Result<()> {
    let key = edgefleet_common::SecretKey::generate()?;
    keyfile::write_atomic(out, key.to_pem()?.as_bytes(), 0o600, false)?;
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    keyfile::write_atomic(&pub_path, key.public().to_pem()?.as_bytes(), 0o644, false)?;
    say(
        json,
        &format!(
            "{role:?} key written to {} (private, 0600) and {} (public {})",
            out.display(),
            pub_path.display(),
            key.public()
        ),
        serde_json::json!({"role": format!("{role:?}").to_lowercase(), "private": out, "public": pub_path, "public_key": key.public()}),
    );
    Ok(())
}

fn sign(
    key: &Path,
    delegation: Option<&Path>,
    spec: &Path,
    model: &Path,
    reference: Option<&Path>,
    out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let key = keyfile::load_secret_key(key)?;
    let delegation = delegation
        .map(|p| -> anyhow::Result<_> {
            Ok(Signed::<Delegation>::from_bytes(&keyfile::read_document(
                p,
                "DELEGATION",
            )?)?)
        })
        .transpose()?;
    let spec_path = spec;
    let spec_text = keyfile::read_bounded(spec)?;
    let spec: Spec = serde_json::from_slice(&spec_text)
        .with_context(|| format!("spec {} is not valid", spec.display()))?;
    let (sha256, size) = hash_file(model)?;
    let manifest = ModelManifest {
        name: spec.name,
        version: spec.version,
        artifact: ArtifactRef {
            sha256,
            size,
            format: ModelFormat::Onnx,
        },
        inputs: spec.inputs,
        outputs: spec.outputs,
        smoke_tests: spec
            .smoke_tests
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.into_smoke_test(i))
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("spec {}", spec_path.display()))?,
        created_at: crate::now(),
        lineage: spec.lineage,
        reference_profile: None,
        description: spec.description,
    };
    let mut manifest = manifest;
    manifest.reference_profile = reference
        .map(|p| check_reference(p, &manifest))
        .transpose()?;
    manifest.validate()?;
    let signed = Signed::sign(&manifest, &key, delegation)?;
    keyfile::write_document(out, "MANIFEST", &signed.to_bytes()?)?;
    say(
        json,
        &format!(
            "signed {} v{} (artifact {sha256}, {size} bytes) → {}",
            manifest.name,
            manifest.version,
            out.display()
        ),
        serde_json::json!({"name": manifest.name, "version": manifest.version, "manifest_digest": signed.digest(), "out": out}),
    );
    Ok(())
}

/// Reads a profile for `sign --reference`: it must decode, and its columns must be columns the
/// devices profile for this model (`sketch::model_columns`: feature names, output names), or
/// drift could never be computed for them.
fn check_reference(path: &Path, manifest: &ModelManifest) -> anyhow::Result<Vec<u8>> {
    let bytes = keyfile::read_at_most(path, edgefleet_common::sketch::MAX_PROFILE_BYTES as u64)?;
    let profile = edgefleet_common::sketch::Profile::from_bytes(&bytes).with_context(|| {
        format!(
            "{} is not a profile from `edgefleet profile`",
            path.display()
        )
    })?;
    let known: Vec<String> = edgefleet_common::sketch::model_columns(manifest)
        .into_iter()
        .map(|c| c.name)
        .collect();
    let unknown: Vec<&str> = profile
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| !known.iter().any(|k| k == n))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "the reference profile has columns {unknown:?} that the devices do not profile for \
             this model (its columns: {known:?}); name the CSV columns after the spec's \
             feature_names"
        );
    }
    Ok(bytes)
}

fn hash_file(path: &Path) -> anyhow::Result<(Digest, u64)> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = edgefleet_common::digest::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((h.finish(), size))
}

struct Remote {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Remote {
    fn new(cli: &Cli) -> anyhow::Result<Self> {
        let token = cli.token.clone().context("no admin token: pass --token or set EDGEFLEET_TOKEN (it is in the hub's DATA_DIR/admin-token)")?;
        let base = cli.hub.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--hub {base:?} must start with http:// or https://");
        }
        Ok(Self {
            http: reqwest::Client::new(),
            base,
            token,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no details");
            bail!("hub answered {status}: {msg}");
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }
}

async fn remote(cli: &Cli) -> anyhow::Result<()> {
    let r = Remote::new(cli)?;
    let get = |path: &str| r.send(r.http.get(r.url(path)));
    let value = match &cli.command {
        Command::Push { manifest, model } => push(&r, manifest, model, cli.json).await?,
        Command::Models { name: Some(n) } => {
            name::validate(n)?;
            Some(get(&format!("models/{n}")).await?)
        }
        Command::Models { name: None } => models_table(get("models").await?, cli.json),
        Command::Devices => devices_table(get("devices").await?, cli.json),
        Command::Approve { device } => {
            name::validate(device)?;
            Some(
                r.send(r.http.post(r.url(&format!("devices/{device}/approve"))))
                    .await?,
            )
        }
        Command::Assign {
            device,
            tag,
            model,
            version,
        } => Some(assign(&r, device.as_deref(), tag.as_deref(), model, *version).await?),
        Command::Unassign { device, tag, model } => {
            Some(unassign(&r, device.as_deref(), tag.as_deref(), model).await?)
        }
        Command::Status { device: Some(d) } => {
            name::validate(d)?;
            Some(get(&format!("devices/{d}")).await?)
        }
        Command::Drift {
            model,
            version,
            hours,
            tag,
        } => Some(drift(&r, model, *version, *hours, tag.as_deref()).await?),
        Command::Fleet => Some(get("fleet/metrics").await?),
        Command::Capture {
            model,
            rate,
            max_rows,
            off,
        } => Some(capture(&r, model, *rate, *max_rows, *off).await?),
        Command::Samples {
            model,
            export,
            version,
        } => Some(samples(&r, model, export.as_deref(), *version).await?),
        Command::Rollout { command } => rollout::run(&r, command, cli.json).await?,
        Command::Retrain { command } => retrain::run(&r, command, cli.json).await?,
        Command::Runs { model } => {
            let c = RetrainCommand::Runs {
                model: model.clone(),
            };
            retrain::run(&r, &c, cli.json).await?
        }
        Command::Lineage { model, version } => {
            retrain::lineage(&r, model, *version, cli.json).await?
        }
        Command::ApproveModel {
            model,
            version,
            rollout,
        } => retrain::approve(&r, model, *version, rollout.as_deref(), cli.json).await?,
        Command::Status { device: None } => {
            let devices = get("devices").await?;
            let desired = get("assignments").await?;
            Some(serde_json::json!({"devices": devices, "desired": desired}))
        }
        _ => unreachable!("offline commands are handled in run()"),
    };
    if let Some(value) = value {
        println!(
            "{}",
            if cli.json {
                value.to_string()
            } else {
                serde_json::to_string_pretty(&value)?
            }
        );
    }
    Ok(())
}

/// Uploads the artifact (checked against the manifest first), then the signed manifest.
async fn push(
    r: &Remote,
    manifest: &Path,
    model: &Path,
    json: bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let bytes = keyfile::read_document(manifest, "MANIFEST")?;
    let signed = Signed::<ModelManifest>::from_bytes(&bytes)?;
    let m = signed.decode_unverified()?;
    let (sha, size) = hash_file(model)?;
    if sha != m.artifact.sha256 || size != m.artifact.size {
        bail!(
            "{} (sha256 {sha}, {size} bytes) is not the artifact the manifest signs ({}, {} bytes)",
            model.display(),
            m.artifact.sha256,
            m.artifact.size
        );
    }
    let file = tokio::fs::File::open(model).await?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    r.send(r.http.put(r.url(&format!("blobs/{sha}"))).body(body))
        .await?;
    let v = r
        .send(
            r.http
                .post(r.url("models"))
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await?;
    if !json {
        println!(
            "pushed {} v{} (manifest {})",
            m.name,
            m.version,
            signed.digest()
        );
        return Ok(None);
    }
    Ok(Some(v))
}

/// `edgefleet models`: a table, or the JSON with `--json`.
fn models_table(v: serde_json::Value, json: bool) -> Option<serde_json::Value> {
    if json {
        return Some(v);
    }
    for m in v.as_array().into_iter().flatten() {
        let versions: Vec<String> = m["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["version"].to_string())
            .collect();
        println!(
            "{:<24} versions {}",
            m["name"].as_str().unwrap_or("?"),
            versions.join(", ")
        );
    }
    None
}

/// `edgefleet devices`: a table, or the JSON with `--json`.
fn devices_table(v: serde_json::Value, json: bool) -> Option<serde_json::Value> {
    if json {
        return Some(v);
    }

    println!(
        "{:<20} {:<9} {:<24} {:<12} LAST ERROR",
        "DEVICE", "APPROVED", "ACTIVE", "LAST SEEN"
    );
    for d in v.as_array().into_iter().flatten() {
        let active: Vec<String> = d["status"]["active"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| format!("{}@{}", m["name"].as_str().unwrap_or("?"), m["version"]))
            .collect();
        println!(
            "{:<20} {:<9} {:<24} {:<12} {}",
            d["id"].as_str().unwrap_or("?"),
            d["approved"].to_string(),
            active.join(","),
            d["last_seen"]
                .as_u64()
                .map(|t| format!("{}s ago", crate::now().saturating_sub(t)))
                .unwrap_or("never".into()),
            d["status"]["last_error"].as_str().unwrap_or("-")
        );
    }
    None
}

async fn assign(
    r: &Remote,
    device: Option<&str>,
    tag: Option<&str>,
    model: &str,
    version: u64,
) -> anyhow::Result<serde_json::Value> {
    let target = match (device, tag) {
        (Some(d), _) => serde_json::json!({"device": d}),
        (None, Some(t)) => serde_json::json!({"tag": t}),
        (None, None) => bail!("give --device ID or --tag TAG"),
    };
    r.send(
        r.http
            .post(r.url("assignments"))
            .json(&serde_json::json!({"target": target, "model": model, "version": version})),
    )
    .await
}

async fn unassign(
    r: &Remote,
    device: Option<&str>,
    tag: Option<&str>,
    model: &str,
) -> anyhow::Result<serde_json::Value> {
    name::validate(model)?;
    let target = match (device, tag) {
        (Some(d), _) => serde_json::json!({"device": name::validate(d).map(|()| d)?}),
        (None, Some(t)) => serde_json::json!({"tag": name::validate(t).map(|()| t)?}),
        (None, None) => bail!("give --device ID or --tag TAG"),
    };
    r.send(
        r.http
            .delete(r.url("assignments"))
            .json(&serde_json::json!({"target": target, "model": model})),
    )
    .await
}

async fn capture(
    r: &Remote,
    model: &str,
    rate: Option<f64>,
    max_rows: Option<u32>,
    off: bool,
) -> anyhow::Result<serde_json::Value> {
    name::validate(model)?;
    let url = r.url(&format!("models/{model}/capture"));
    match (rate, max_rows) {
        (Some(rate), Some(max_rows)) => {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1.0) {
                bail!("--rate {rate} must be in (0, 1], e.g. 0.1");
            }
            if !(1..=edgefleet_common::sample::MAX_ROWS_PER_WINDOW).contains(&max_rows) {
                bail!("--max-rows {max_rows} must be 1..=10000");
            }
            r.send(
                r.http
                    .put(url)
                    .json(&serde_json::json!({"rate": rate, "max_rows": max_rows})),
            )
            .await
        }
        _ if off => r.send(r.http.delete(url)).await,
        _ => r.send(r.http.get(url)).await,
    }
}

async fn samples(
    r: &Remote,
    model: &str,
    export: Option<&std::path::Path>,
    version: Option<u64>,
) -> anyhow::Result<serde_json::Value> {
    name::validate(model)?;
    let Some(path) = export else {
        return r
            .send(r.http.get(r.url(&format!("models/{model}/samples"))))
            .await;
    };
    let mut url = r.url(&format!("models/{model}/samples/export"));
    if let Some(v) = version {
        url.push_str(&format!("?version={v}"));
    }
    let schema_url = format!(
        "{url}{}format=schema",
        if version.is_some() { '&' } else { '?' }
    );
    // The CSV, then the schema of the same export: they describe the same rows when their
    // digests agree (a batch stored between the two calls changes both; try again).
    for _ in 0..3 {
        let (csv, claimed, rows) = export_csv(r, &url).await?;
        let sha256 = edgefleet_common::Digest::of(&csv).to_string();
        if sha256 != claimed {
            bail!("the dataset's SHA-256 is {sha256}, the hub said {claimed}: not written");
        }
        let described = r.send(r.http.get(&schema_url)).await?;
        if described.get("sha256").and_then(|v| v.as_str()) != Some(sha256.as_str()) {
            continue;
        }
        let schema = described.get("schema").cloned().unwrap_or_default();
        let schema_path = schema_file(path);
        std::fs::write(path, &csv).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::write(&schema_path, serde_json::to_vec_pretty(&schema)?)
            .with_context(|| format!("cannot write {}", schema_path.display()))?;
        return Ok(serde_json::json!({
            "file": path.display().to_string(), "schema": schema_path.display().to_string(),
            "rows": rows, "bytes": csv.len(), "sha256": sha256,
        }));
    }
    bail!(
        "samples of {model} kept arriving while exporting (the CSV and its schema differed three times): try again, or narrow it with --version"
    )
}

/// `FILE.schema.json` beside `FILE`.
fn schema_file(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".schema.json");
    path.with_file_name(name)
}

/// One CSV export: its bytes, the digest the hub claims, and the row count.
async fn export_csv(r: &Remote, url: &str) -> anyhow::Result<(Vec<u8>, String, u64)> {
    let resp = r
        .http
        .get(url)
        .bearer_auth(&r.token)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", r.base))?;
    let status = resp.status();
    if !status.is_success() {
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let msg = body
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no details");
        bail!("hub answered {status}: {msg}");
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let claimed = header("x-edgefleet-dataset-sha256")
        .context("the hub sent no dataset digest (x-edgefleet-dataset-sha256)")?;
    let rows = header("x-edgefleet-dataset-rows")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let csv = resp.bytes().await.context("reading the dataset")?;
    Ok((csv.to_vec(), claimed, rows))
}

async fn drift(
    r: &Remote,
    model: &str,
    version: u64,
    hours: u64,
    tag: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    name::validate(model)?;
    if !(1..=24 * 400).contains(&hours) {
        anyhow::bail!("--hours must be 1..=9600 (400 days)");
    }
    let to = crate::now() + 1;
    let mut path = format!(
        "models/{model}/versions/{version}/drift?from={}&to={to}",
        to.saturating_sub(hours * 3600)
    );
    if let Some(t) = tag {
        name::validate(t)?;
        path.push_str(&format!("&tag={t}"));
    }
    r.send(r.http.get(r.url(&path))).await
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("365d").expect("d"), 365 * 86400);
        assert_eq!(parse_duration("90").expect("s"), 90);
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
