//! The real binaries: the quick start script (keygen → delegate → hub → sign → push → agent →
//! assign → infer with curl), and the CLI's refusals of bad input.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::bin;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Run inside the quick start (`EDGEFLEET_DEMO_THEN`): the device listing shows shop-1 serving
/// demand@1 with no error, every 0.2 s for 3 s (an old bundle racing a new one used to show up
/// there as "replayed assignment"); then a second agent starts from inside the quick start's
/// environment (its variables once clashed with the agent's `EDGEFLEET_AGENT_` prefix).
const INSIDE_QUICKSTART: &str = r#"
set -euo pipefail
for _ in $(seq 15); do
  "$EDGEFLEET_DEMO_BIN/edgefleet" --json devices > "$EDGEFLEET_DEMO_DIR/devices.json"
  python3 - "$EDGEFLEET_DEMO_DIR/devices.json" <<'PY'
import json, sys
devices = json.load(open(sys.argv[1]))
shop = [d for d in devices if d["id"] == "shop-1"][0]
active = [(m["name"], m["version"]) for m in shop["status"]["active"]]
assert active == [("demand", 1)], active
assert shop["status"]["last_error"] is None, "healthy device listed with an error: %s" % shop["status"]["last_error"]
PY
  sleep 0.2
done
echo "device listing: shop-1 demand@1, no error"
cat > "$EDGEFLEET_DEMO_DIR/agent2.toml" <<TOML
device_id = "shop-2"
hub_url = "$EDGEFLEET_HUB"
data_dir = "$EDGEFLEET_DEMO_DIR/agent2"
root_key = "$EDGEFLEET_DEMO_DIR/keys/root.key.pub"
enrollment_token = "$EDGEFLEET_DEMO_ENROLL"
listen = "127.0.0.1:0"
TOML
"$EDGEFLEET_DEMO_BIN/edgefleet-agent" check-config --config "$EDGEFLEET_DEMO_DIR/agent2.toml"
"$EDGEFLEET_DEMO_BIN/edgefleet-agent" run --config "$EDGEFLEET_DEMO_DIR/agent2.toml" > "$EDGEFLEET_DEMO_DIR/agent2.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  grep -q "agent serving OIP v2" "$EDGEFLEET_DEMO_DIR/agent2.log" && break
  kill -0 $pid 2>/dev/null || { cat "$EDGEFLEET_DEMO_DIR/agent2.log"; exit 1; }
  sleep 0.1
done
grep -q "agent serving OIP v2" "$EDGEFLEET_DEMO_DIR/agent2.log" || { cat "$EDGEFLEET_DEMO_DIR/agent2.log"; exit 1; }
kill $pid
echo "second agent started inside the quick start"
"#;

#[test]
fn quickstart_script_runs_end_to_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let bin_dir = bin("edgefleet").parent().expect("dir").to_path_buf();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("quickstart.sh");
    let (ok, out) = run(Command::new("bash")
        .arg(script)
        .env("EDGEFLEET_BIN", &bin_dir)
        .env("EDGEFLEET_DEMO_DIR", dir.path())
        .env("EDGEFLEET_DEMO_THEN", INSIDE_QUICKSTART));
    assert!(
        ok,
        "{out}\n--- hub.log\n{}\n--- agent.log\n{}",
        std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    assert!(out.contains("\"model_version\":\"1\""), "{out}");
    assert!(
        out.contains("device listing: shop-1 demand@1, no error"),
        "{out}"
    );
    assert!(
        out.contains("second agent started inside the quick start"),
        "{out}"
    );
    let mode = std::fs::metadata(dir.path().join("keys/root.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(dir.path().join("hub/admin-token"))
        .expect("token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn cli_refuses_bad_input_with_a_useful_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("root.key");
    let ef = || Command::new(bin("edgefleet"));
    assert!(run(ef().args(["keygen", "--role", "root", "--out"]).arg(&key)).0);
    let (ok, out) = run(ef().args(["keygen", "--role", "root", "--out"]).arg(&key));
    assert!(!ok && out.contains("already exists"), "{out}");

    // A private key others can read is refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, out) = run(ef()
        .args(["delegate", "--root-key"])
        .arg(&key)
        .arg("--to")
        .arg(dir.path().join("root.key.pub"))
        .arg("--out")
        .arg(dir.path().join("d")));
    assert!(!ok && out.contains("chmod 600"), "{out}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // Bad durations, patterns and permissions.
    let delegate = |extra: &[&str]| {
        let mut c = ef();
        c.args(["delegate", "--root-key"])
            .arg(&key)
            .arg("--to")
            .arg(dir.path().join("root.key.pub"))
            .arg("--out")
            .arg(dir.path().join("d"))
            .args(extra);
        run(&mut c)
    };
    let (ok, out) = delegate(&["--expires-in", "3w"]);
    assert!(!ok && out.contains("unknown unit"), "{out}");
    let (ok, out) = delegate(&["--models", "../*"]);
    assert!(!ok && out.contains("invalid name"), "{out}");
    let (ok, out) = delegate(&["--permission", "everything"]);
    assert!(!ok && out.contains("unknown permission"), "{out}");
    assert!(delegate(&[]).0);

    // A spec that is not valid JSON, and one with unknown fields.
    std::fs::write(dir.path().join("model.onnx"), b"x").expect("write");
    for (spec, needle) in [
        ("{", "not valid"),
        (
            "{\"name\":\"a\",\"version\":1,\"inputs\":[],\"outputs\":[],\"bogus\":1}",
            "not valid",
        ),
    ] {
        std::fs::write(dir.path().join("spec.json"), spec).expect("write");
        let (ok, out) = run(ef()
            .args(["sign", "--key"])
            .arg(&key)
            .arg("--spec")
            .arg(dir.path().join("spec.json"))
            .arg("--model")
            .arg(dir.path().join("model.onnx"))
            .arg("--out")
            .arg(dir.path().join("m")));
        assert!(!ok && out.contains(needle), "{out}");
    }
    // Talking to a hub: no token, a bad URL, a hub that is not there.
    let (ok, out) = run(ef().env_remove("EDGEFLEET_TOKEN").arg("models"));
    assert!(!ok && out.contains("no admin token"), "{out}");
    let (ok, out) = run(ef().args(["--hub", "ftp://x", "--token", "t", "models"]));
    assert!(!ok && out.contains("must start with http"), "{out}");
    let (ok, out) = run(ef().args(["--hub", "http://127.0.0.1:9", "--token", "t", "models"]));
    assert!(!ok && out.contains("cannot reach the hub"), "{out}");
    let (ok, out) = run(ef().args(["--token", "t", "approve", "../x"]));
    assert!(!ok && out.contains("invalid name"), "{out}");
    // Sample capture and export: refused before anything is sent.
    let hub = ["--hub", "http://127.0.0.1:9", "--token", "t"];
    for (args, needle) in [
        (
            &["capture", "demand", "--rate", "0", "--max-rows", "10"][..],
            "--rate 0 must be in (0, 1]",
        ),
        (
            &["capture", "demand", "--rate", "1.5", "--max-rows", "10"],
            "must be in (0, 1]",
        ),
        (
            &["capture", "demand", "--rate", "NaN", "--max-rows", "10"],
            "must be in (0, 1]",
        ),
        (
            &["capture", "demand", "--rate", "0.1", "--max-rows", "0"],
            "--max-rows 0 must be 1..=10000",
        ),
        (
            &["capture", "demand", "--rate", "0.1", "--max-rows", "10001"],
            "must be 1..=10000",
        ),
        (&["capture", "demand", "--rate", "0.1"], "--max-rows"),
        (
            &[
                "capture",
                "demand",
                "--off",
                "--rate",
                "0.1",
                "--max-rows",
                "5",
            ],
            "cannot be used with",
        ),
        (&["capture", "../x", "--off"], "invalid name"),
        (&["samples", "demand", "--version", "2"], "--export"),
        (
            &["samples", "demand", "--export", "x.csv", "--version", "two"],
            "invalid value",
        ),
        (&["samples", "Bad Name"], "invalid name"),
    ] {
        let (ok, out) = run(ef().args(hub).args(args));
        assert!(!ok && out.contains(needle), "{args:?}: {out}");
        assert!(
            !out.contains("cannot reach the hub"),
            "{args:?} was sent: {out}"
        );
    }
}

#[test]
fn check_config_names_every_bad_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "device_id = \"Bad Id\"\nhub_url = \"nope\"\nroot_key = \"/nonexistent\"\n",
    )
    .expect("write");
    let (ok, out) = run(Command::new(bin("edgefleet-agent"))
        .args(["check-config", "--config"])
        .arg(&cfg));
    assert!(!ok);
    for key in ["device_id", "hub_url", "root_key"] {
        assert!(out.contains(key), "{key}: {out}");
    }
    std::fs::write(&cfg, "device_idd = \"x\"\n").expect("write");
    let (ok, out) = run(Command::new(bin("edgefleet-agent"))
        .args(["check-config", "--config"])
        .arg(&cfg));
    assert!(!ok && out.contains("device_idd"), "{out}");

    let hub_cfg = dir.path().join("hub.toml");
    std::fs::write(&hub_cfg, "log_format = \"xml\"\n").expect("write");
    let (ok, out) = run(Command::new(bin("edgefleet-hub"))
        .args(["check-config", "--config"])
        .arg(&hub_cfg));
    assert!(!ok);
    for key in ["log_format", "root_key", "signing_key", "delegation"] {
        assert!(out.contains(key), "{key}: {out}");
    }
    // The training samples' retention and cap, from the file and from the environment.
    std::fs::write(
        &hub_cfg,
        "samples_retention_days = 0\nsamples_max_bytes_per_model = 1000\n",
    )
    .expect("write");
    let (ok, out) = run(Command::new(bin("edgefleet-hub"))
        .args(["check-config", "--config"])
        .arg(&hub_cfg));
    assert!(!ok);
    for needle in [
        "samples_retention_days: must be 1..=3650",
        "samples_max_bytes_per_model: must be at least 1 MiB",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    std::fs::write(&hub_cfg, "").expect("write");
    let (ok, out) = run(Command::new(bin("edgefleet-hub"))
        .args(["check-config", "--config"])
        .arg(&hub_cfg)
        .env("EDGEFLEET_HUB_SAMPLES_RETENTION_DAYS", "a month"));
    assert!(!ok && out.contains("SAMPLES_RETENTION_DAYS"), "{out}");
    let (ok, out) =
        run(Command::new(bin("edgefleet-hub")).args(["serve", "--listen", "not-an-address"]));
    assert!(!ok && out.contains("invalid"), "{out}");
}

#[test]
fn profile_training_data_and_sign_it_into_the_manifest() {
    use edgefleet_common::{ModelManifest, Signed};
    let dir = tempfile::tempdir().expect("tmp");
    let p = |name: &str| dir.path().join(name);
    let ef = || Command::new(bin("edgefleet"));
    // Training data: the demand model's 8 features, with a header, and a few missing cells.
    let mut csv = edgefleet_tests::FEATURE_NAMES.join(",") + "\n";
    for (i, row) in edgefleet_tests::probe_rows(2_000, 7).iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, v)| match (j, i % 97) {
                (2, _) => format!("{}", (v.abs() * 2.0).floor() % 7.0),
                (0, 0) => String::new(),
                _ => format!("{v}"),
            })
            .collect();
        csv += &(cells.join(",") + "\n");
    }
    std::fs::write(p("train.csv"), &csv).expect("write");
    let schema = r#"[{"name": "fuel_price"}, {"name": "temperature"},
        {"name": "day_of_week", "kind": "categorical"}, {"name": "lag_1d"}]"#;
    std::fs::write(p("schema.json"), schema).expect("write");
    let (ok, out) = run(ef()
        .args(["--json", "profile"])
        .arg(p("train.csv"))
        .arg("--schema")
        .arg(p("schema.json"))
        .arg("--out")
        .arg(p("ref.profile")));
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["rows"], 2000);
    let (ok, out) = run(ef()
        .arg("profile")
        .arg(p("train.csv"))
        .arg("--out")
        .arg(p("all.profile")));
    assert!(
        ok && out.contains("day_of_week") && out.contains("p50="),
        "{out}"
    );

    // Sign with the profile: it travels inside the signed manifest.
    assert!(
        run(ef()
            .args(["keygen", "--role", "root", "--out"])
            .arg(p("root.key")))
        .0
    );
    let mlp = edgefleet_tests::Mlp::new(1);
    std::fs::write(p("model.onnx"), edgefleet_tests::onnx::mlp(&mlp, 0)).expect("write");
    let spec = serde_json::json!({
        "name": "demand", "version": 1,
        "inputs": [edgefleet_tests::input_spec()],
        "outputs": [edgefleet_tests::output_spec()],
    });
    std::fs::write(p("spec.json"), spec.to_string()).expect("write");
    let sign = |profile: &str| {
        let mut c = ef();
        c.args(["sign", "--key"])
            .arg(p("root.key"))
            .arg("--spec")
            .arg(p("spec.json"))
            .arg("--model")
            .arg(p("model.onnx"))
            .arg("--reference")
            .arg(p(profile))
            .arg("--out")
            .arg(p("demand.manifest"));
        run(&mut c)
    };
    let (ok, out) = sign("ref.profile");
    assert!(ok, "{out}");
    let doc =
        edgefleet_hub::keyfile::read_document(&p("demand.manifest"), "MANIFEST").expect("read");
    let m: ModelManifest = Signed::<ModelManifest>::from_bytes(&doc)
        .expect("decode")
        .decode_unverified()
        .expect("manifest");
    let profile = edgefleet_common::sketch::Profile::from_bytes(
        m.reference_profile.as_deref().expect("profile attached"),
    )
    .expect("profile");
    assert_eq!(profile.rows, 2000);
    assert_eq!(profile.columns.len(), 4);

    // Refusals: a cell that is not a number, a schema column the CSV lacks, a profile whose
    // columns the model does not have, a file that is not a profile.
    std::fs::write(p("bad.csv"), "fuel_price,price\n1.5,2\n1.6,abc\n").expect("write");
    let (ok, out) = run(ef()
        .arg("profile")
        .arg(p("bad.csv"))
        .arg("--out")
        .arg(p("x")));
    assert!(
        !ok && out.contains("line 3") && out.contains("\"price\"") && out.contains("abc"),
        "{out}"
    );
    std::fs::write(p("s2.json"), r#"[{"name": "footfall_typo"}]"#).expect("write");
    let (ok, out) = run(ef()
        .arg("profile")
        .arg(p("train.csv"))
        .arg("--schema")
        .arg(p("s2.json"))
        .arg("--out")
        .arg(p("x")));
    assert!(
        !ok && out.contains("footfall_typo") && out.contains("is not in"),
        "{out}"
    );
    std::fs::write(p("other.csv"), "bogus\n1\n2\n").expect("write");
    assert!(
        run(ef()
            .arg("profile")
            .arg(p("other.csv"))
            .arg("--out")
            .arg(p("other.profile")))
        .0
    );
    let (ok, out) = sign("other.profile");
    assert!(
        !ok && out.contains("bogus") && out.contains("feature_names"),
        "{out}"
    );
    let (ok, out) = sign("train.csv");
    assert!(!ok && out.contains("not a profile"), "{out}");
    // A profile file over the size limit is refused before it is read.
    let big = std::fs::File::create(p("big.profile")).expect("create");
    big.set_len(edgefleet_common::sketch::MAX_PROFILE_BYTES as u64 + 1)
        .expect("grow");
    let (ok, out) = sign("big.profile");
    assert!(!ok && out.contains("the limit is"), "{out}");
    // A schema that is not the expected JSON, and a KLL k out of range.
    std::fs::write(p("s3.json"), r#"{"fuel_price": "numeric"}"#).expect("write");
    let (ok, out) = run(ef()
        .arg("profile")
        .arg(p("train.csv"))
        .arg("--schema")
        .arg(p("s3.json"))
        .arg("--out")
        .arg(p("x")));
    assert!(!ok && out.contains("expected [{\"name\""), "{out}");
    let (ok, out) = run(ef()
        .arg("profile")
        .arg(p("train.csv"))
        .args(["--k", "3", "--out"])
        .arg(p("x")));
    assert!(!ok && out.contains("invalid sketch"), "{out}");
}

/// `sign` reads smoke tests written like an inference request's tensors (nested or flat), and
/// still the older `{"Fp32": [...]}` form; anything else is refused naming the expected shape.
#[test]
fn sign_reads_smoke_tests_in_the_request_form_and_the_old_form() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("root.key");
    let ef = || Command::new(bin("edgefleet"));
    assert!(run(ef().args(["keygen", "--role", "root", "--out"]).arg(&key)).0);
    let mlp = edgefleet_tests::Mlp::new(1);
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, mlp.to_onnx()).expect("model");
    let row = edgefleet_tests::probe_rows(1, 7).remove(0);
    let y = mlp.predict(&row);
    let (r1, r2) = row.split_at(4);
    let spec = |smoke: serde_json::Value| {
        serde_json::json!({
            "name": "demand", "version": 1,
            "inputs": [edgefleet_tests::input_spec()],
            "outputs": [edgefleet_tests::output_spec()],
            "smoke_tests": [smoke],
        })
    };
    let sign = |name: &str, spec: serde_json::Value| {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, spec.to_string()).expect("spec");
        let out = dir.path().join(format!("{name}.manifest"));
        let (ok, text) = run(ef()
            .args(["sign", "--key"])
            .arg(&key)
            .arg("--spec")
            .arg(&path)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&out));
        let manifest = ok.then(|| {
            let bytes = edgefleet_common::armor::decode(
                "MANIFEST",
                &std::fs::read(&out).expect("manifest"),
            )
            .expect("armored");
            edgefleet_common::Signed::<edgefleet_common::ModelManifest>::from_bytes(&bytes)
                .expect("signed")
                .decode_unverified()
                .expect("manifest")
        });
        (manifest, text)
    };
    let expected_tests = vec![edgefleet_common::SmokeTest {
        inputs: vec![edgefleet_common::Tensor {
            name: "x".into(),
            shape: vec![1, 8],
            data: edgefleet_common::TensorData::Fp32(row.clone()),
        }],
        expected: vec![edgefleet_common::Tensor {
            name: "y".into(),
            shape: vec![1, 1],
            data: edgefleet_common::TensorData::Fp32(vec![y]),
        }],
        tolerance: 1e-4,
    }];

    // The request form, nested.
    let (m, out) = sign(
        "nested",
        spec(serde_json::json!({
            "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [[r1, r2]]}],
            "expected": [{"name": "y", "shape": [1, 1], "datatype": "FP32", "data": [[y]]}],
            "tolerance": 1e-4,
        })),
    );
    assert_eq!(m.expect(&out).smoke_tests, expected_tests);
    // The request form, flat.
    let (m, out) = sign(
        "flat",
        spec(serde_json::json!({
            "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": row}],
            "expected": [{"name": "y", "shape": [1, 1], "datatype": "FP32", "data": [y]}],
            "tolerance": 1e-4,
        })),
    );
    assert_eq!(m.expect(&out).smoke_tests, expected_tests);
    // The older externally tagged form.
    let (m, out) = sign(
        "old",
        spec(serde_json::json!({
            "inputs": [{"name": "x", "shape": [1, 8], "data": {"Fp32": row}}],
            "expected": [{"name": "y", "shape": [1, 1], "data": {"Fp32": [y]}}],
            "tolerance": 1e-4,
        })),
    );
    assert_eq!(m.expect(&out).smoke_tests, expected_tests);

    // Refusals name the tensor and the expected form.
    for (name, smoke, needles) in [
        (
            "no-datatype",
            serde_json::json!({"inputs": [{"name": "x", "shape": [1, 8], "data": row}], "expected": [], "tolerance": 0.1}),
            vec![
                "smoke_tests[0].inputs",
                "\"x\"",
                "has no \"datatype\"",
                "\"datatype\": \"FP32\"",
            ],
        ),
        (
            "bad-datatype",
            serde_json::json!({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FLOAT", "data": row}], "expected": [], "tolerance": 0.1}),
            vec!["unknown datatype \"FLOAT\""],
        ),
        (
            "bad-element",
            serde_json::json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, "a"]}], "expected": [], "tolerance": 0.1}),
            vec!["\"x\"", "element 1", "not a valid FP32"],
        ),
        (
            "out-of-range",
            serde_json::json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1e300]}], "expected": [], "tolerance": 0.1}),
            vec!["out of range for FP32"],
        ),
        (
            "bad-shape",
            serde_json::json!({"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": row}], "expected": [], "tolerance": 0.1}),
            vec!["needs 16 elements"],
        ),
        (
            "bad-old-form",
            serde_json::json!({"inputs": [{"name": "x", "shape": [1, 8], "data": {"Float": row}}], "expected": [], "tolerance": 0.1}),
            vec!["\"x\"", "\"datatype\": \"FP32\""],
        ),
    ] {
        let (m, out) = sign(name, spec(smoke));
        assert!(m.is_none(), "{name}: accepted");
        for needle in needles {
            assert!(
                out.contains(needle),
                "{name}: {out:?} should contain {needle:?}"
            );
        }
    }
}
