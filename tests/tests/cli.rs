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

#[test]
fn quickstart_script_runs_end_to_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let bin_dir = bin("edgefleet").parent().expect("dir").to_path_buf();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("quickstart.sh");
    let (ok, out) = run(Command::new("bash")
        .arg(script)
        .env("EDGEFLEET_BIN", &bin_dir)
        .env("EDGEFLEET_DEMO_DIR", dir.path())
        .env("EDGEFLEET_DEMO_EXIT", "1"));
    assert!(
        ok,
        "{out}\n--- hub.log\n{}\n--- agent.log\n{}",
        std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    assert!(out.contains("\"model_version\":\"1\""), "{out}");
    assert!(out.contains("quick start OK"), "{out}");
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
