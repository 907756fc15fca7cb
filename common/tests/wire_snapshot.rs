//! Snapshot tests of the canonical bytes: a changed byte here must be a deliberate format change
//! (bump `encoding::FORMAT_VERSION` and say so in docs/formats.md).

use std::collections::BTreeMap;

use edgefleet_common::encoding::{self, Document};
use edgefleet_common::manifest::ModelFormat;
use edgefleet_common::trust::RootRotation;
use edgefleet_common::{
    ArtifactRef, Assignment, DataType, Delegation, Digest, Lineage, ModelManifest, Permission,
    SecretKey, Signed, SmokeTest, Target, Tensor, TensorData, TensorSpec,
};
use expect_test::expect;

fn manifest() -> ModelManifest {
    ModelManifest {
        name: "demand".into(),
        version: 2,
        artifact: ArtifactRef {
            sha256: Digest([0xab; 32]),
            size: 1234,
            format: ModelFormat::Onnx,
        },
        inputs: vec![TensorSpec {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 2],
            feature_names: vec!["fuel".into(), "temp".into()],
        }],
        outputs: vec![TensorSpec {
            name: "y".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 1],
            feature_names: vec![],
        }],
        smoke_tests: vec![SmokeTest {
            inputs: vec![Tensor {
                name: "x".into(),
                shape: vec![1, 2],
                data: TensorData::Fp32(vec![1.0, -2.5]),
            }],
            expected: vec![Tensor {
                name: "y".into(),
                shape: vec![1, 1],
                data: TensorData::Fp32(vec![0.5]),
            }],
            tolerance: 1e-4,
        }],
        created_at: 1_700_000_000,
        lineage: Lineage {
            parent_version: Some(1),
            training_data_digest: None,
            code_revision: Some("abc".into()),
            params: BTreeMap::from([("lr".into(), "0.1".into())]),
            metrics: BTreeMap::from([("mae".into(), 1.5)]),
        },
        reference_profile: None,
        description: "d".into(),
    }
}

#[test]
fn manifest_canonical_bytes() {
    let body = encoding::to_bytes(&manifest()).expect("encode");
    let bytes = encoding::signing_bytes(ModelManifest::KIND, &body);
    expect![[r#"
        45444745464c454554006d616e69666573740001066465
        6d616e6402abababababababababababababababababab
        ababababababababababababababd209000101780a0201
        0402046675656c0474656d700101790a0201020001
    "#]]
    .assert_eq(&wrap(&hex::encode(&bytes[..90])));
    assert_eq!(
        encoding::from_bytes::<ModelManifest>("m", &body).expect("decode"),
        manifest()
    );
}

#[test]
fn assignment_delegation_rotation_canonical_bytes() {
    let a = Assignment {
        target: Target::Tag("eu".into()),
        model: "demand".into(),
        version: 2,
        manifest_digest: Digest([1; 32]),
        serial: 300,
        issued_at: 5,
        expires_at: 6,
    };
    expect![[r#"
        45444745464c4545540061737369676e6d656e74000101
        026575066465...
    "#]]
    .assert_eq(&wrap(&format!(
        "{}...",
        hex::encode(
            &encoding::signing_bytes(Assignment::KIND, &encoding::to_bytes(&a).expect("a"))[..29]
        )
    )));
    let key = SecretKey::from_seed([5; 32]);
    let d = Delegation {
        key: key.public(),
        label: "hub".into(),
        patterns: vec!["*".into()],
        permissions: vec![Permission::Manifests, Permission::Assignments],
        issued_at: 1,
        expires_at: 2,
    };
    // ed25519 signatures are deterministic, so the whole signed document is stable.
    let signed = Signed::sign(&d, &key, None).expect("sign");
    expect![[r#"
        e67f85718f390853d4ae968fa4d93300b917050a7ad15349bf61e0851b006ae9
    "#]]
    .assert_eq(&format!("{}\n", signed.digest().to_hex()));
    let rot = RootRotation::create(&key, &SecretKey::from_seed([6; 32]), 2, 9).expect("rotation");
    expect![[r#"
        22
    "#]]
    .assert_eq(&format!("{:x}\n", rot.body.len()));
}

fn wrap(hex: &str) -> String {
    let mut out = String::new();
    for chunk in hex.as_bytes().chunks(46) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out
}

#[test]
fn profile_bytes() {
    use edgefleet_common::sketch::{ColumnKind, ColumnSpec, Profile};
    let mut p = Profile::new(
        &[
            ColumnSpec {
                name: "fuel".into(),
                kind: ColumnKind::Numeric,
            },
            ColumnSpec {
                name: "day".into(),
                kind: ColumnKind::Categorical,
            },
        ],
        200,
    )
    .expect("profile");
    for row in [[1.5, 3.0], [1.75, 3.0], [f64::NAN, 6.0]] {
        p.update_row(&row).expect("row");
    }
    let bytes = p.to_bytes();
    expect![[r#"
        010302046675656c000201000000000000f83f00000000
        0000fc3f000000000000fa3f000000000000a03f280501
        0f00c80008000200000000000000c8000100c600000000
        00c03f0000e03f0000e03f0000c03f0364617901030040
        04010a0703000000020000000000000003000000000000
        0000000000000000000100000000000000020000000000
        000006000000000000000300000000000000100201070a
        0308020875816607fc2d420a
    "#]]
    .assert_eq(&wrap(&hex::encode(&bytes)));
    let back = Profile::from_bytes(&bytes).expect("decode");
    assert_eq!(back.to_bytes(), bytes);
}

#[test]
fn telemetry_record_heartbeat_and_ack_bytes() {
    use edgefleet_common::device::ModelRef;
    use edgefleet_common::quality::ModelQuality;
    use edgefleet_common::sketch::{ColumnKind, ColumnSpec, LatencySketch, Profile};
    use edgefleet_common::telemetry::{
        Health, Heartbeat, ModelWindow, OutboxStats, TelemetryAck, TelemetryRecord,
    };
    let device = SecretKey::from_seed([5; 32]);
    let mut profile = Profile::new(
        &[ColumnSpec {
            name: "fuel".into(),
            kind: ColumnKind::Numeric,
        }],
        200,
    )
    .expect("profile");
    profile.update_row(&[1.5]).expect("row");
    let mut latency = LatencySketch::default();
    latency.record_us(250.0);
    let health = Health {
        cpu_percent: 12.5,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 4 << 30,
        disk_used_bytes: 5 << 30,
        disk_total_bytes: 32 << 30,
        uptime_secs: 3600,
        temperature_celsius: Some(48.0),
    };
    let outbox = OutboxStats {
        queued: 2,
        queued_bytes: 4096,
        dropped: 1,
    };
    let window = ModelWindow {
        model: "demand".into(),
        version: 2,
        profile: profile.to_bytes(),
        latency: latency.into(),
        requests: 1,
        errors: 0,
    };
    // Layout 1, as agents before ground truth sign it: these bytes must still be accepted.
    let v1 = RecordV1 {
        device_id: "shop-1".into(),
        seq: 7,
        window_start: 1_700_000_000,
        window_end: 1_700_000_900,
        models: vec![window.clone()],
        health: health.clone(),
        outbox: outbox.clone(),
        agent_version: "0.1.0".into(),
    };
    let signed_v1 = Signed::sign(&v1, &device, None).expect("sign");
    expect![[r#"
        0673686f702d310780e2cfaa0684e9cfaa06010664656d
        616e640238010101046675656c000100000000000000f8
        3f000000000000f83f000000000000f83f000000000000
        00000c02020f04c80008000000c03f33a0028800000000
        00406f408c0000000000406f40840000000000406f4002
        fd4a815abf52f03f00000000000000000501a804020100
        0000484180808080048080808010808080801480808080
        8001901c01000040420280200105302e312e30
    "#]]
    .assert_eq(&wrap(&hex::encode(&signed_v1.body)));
    let as_v2: Signed<TelemetryRecord> =
        Signed::from_bytes(&signed_v1.to_bytes().expect("bytes")).expect("envelope");
    let read = as_v2
        .verify_by(&device.public())
        .expect("a layout-1 record verifies");
    assert!(read.quality.is_empty());
    assert_eq!(read.models, vec![window.clone()]);
    // Layout 2: the same record with the quality of one version from ground truth.
    let mut quality = ModelQuality::new("demand", 2);
    quality
        .score_values(&[10.0], &[12.0], false)
        .expect("score");
    quality.score_values(&[5.0], &[4.0], true).expect("score");
    quality.unknown = 1;
    let record = TelemetryRecord {
        device_id: "shop-1".into(),
        seq: 7,
        window_start: 1_700_000_000,
        window_end: 1_700_000_900,
        models: vec![window],
        health: health.clone(),
        outbox: outbox.clone(),
        agent_version: "0.1.0".into(),
        quality: vec![quality],
    };
    record.validate().expect("valid");
    let signed = Signed::sign(&record, &device, None).expect("sign");
    expect![[r#"
        0673686f702d310780e2cfaa0684e9cfaa06010664656d
        616e640238010101046675656c000100000000000000f8
        3f000000000000f83f000000000000f83f000000000000
        00000c02020f04c80008000000c03f33a0028800000000
        00406f408c0000000000406f40840000000000406f4002
        fd4a815abf52f03f00000000000000000501a804020100
        0000484180808080048080808010808080801480808080
        8001901c01000040420280200105302e312e3001066465
        6d616e6402020101010200000000000000f03f00000000
        00000040000000000000f83f000000000000e03f280501
        0f00640008000200000000000000640001006200000000
        00803f000000400000803f00000040aaaaaaaaaaaada3f
        0200
    "#]]
    .assert_eq(&wrap(&hex::encode(&signed.body)));
    assert_eq!(
        signed.verify_by(&device.public()).expect("verifies"),
        record
    );
    let heartbeat = Heartbeat {
        device_id: "shop-1".into(),
        at: 1_700_000_950,
        started_at: 1_699_990_000,
        online: true,
        health: Some(health),
        active: vec![ModelRef {
            name: "demand".into(),
            version: 2,
        }],
        outbox,
        agent_version: "0.1.0".into(),
    };
    let body = encoding::to_bytes(&heartbeat).expect("encode");
    expect![[r#"
        0673686f702d31b6e9cfaa06f093cfaa06010100004841
        808080800480808080108080808014808080808001901c
        0100004042010664656d616e64020280200105302e312e
        30
    "#]]
    .assert_eq(&wrap(&hex::encode(&body)));
    let ack = TelemetryAck {
        device_id: "shop-1".into(),
        seqs: vec![6, 7],
        at: 1_700_000_960,
    };
    let body = encoding::to_bytes(&ack).expect("encode");
    expect![[r#"
        0673686f702d31020607c0e9cfaa06
    "#]]
    .assert_eq(&wrap(&hex::encode(&body)));
    assert_eq!(
        encoding::domain_prefix(TelemetryRecord::KIND),
        b"EDGEFLEET\0telemetry\0\x01"
    );
}

/// Bundle format 2 (the signed telemetry-window instruction) and its compatibility both ways:
/// format 1 bytes are exactly what agents before format 2 decode, and a format-2 reader reads
/// them; format-2 bytes are refused by a format-1 reader (so the hub sends format 1 to agents
/// that do not report `bundle_format`).
#[test]
fn bundle_formats_and_window_instruction_bytes() {
    use edgefleet_common::device::{AssignmentBundle, WindowInstruction};
    let key = SecretKey::from_seed([5; 32]);
    let a = Assignment {
        target: Target::Device("shop-1".into()),
        model: "demand".into(),
        version: 2,
        manifest_digest: Digest([1; 32]),
        serial: 300,
        issued_at: 5,
        expires_at: 6,
    };
    let w = WindowInstruction {
        device: "shop-1".into(),
        window_secs: 60,
        reason: "rollout 4 wave 2".into(),
        serial: 301,
        issued_at: 5,
        expires_at: 600,
    };
    expect![[r#"
        0673686f702d313c10726f6c6c6f757420342077617665
        2032ad0205d804
    "#]]
    .assert_eq(&wrap(&hex::encode(encoding::to_bytes(&w).expect("w"))));
    let bundle = AssignmentBundle {
        assignments: vec![Signed::sign(&a, &key, None).expect("sign")],
        rotations: vec![],
        window: Some(Signed::sign(&w, &key, None).expect("sign")),
        assigned: Some(
            Signed::sign(
                &edgefleet_common::device::AssignedSet {
                    device: "shop-1".into(),
                    models: vec!["demand".into()],
                    serial: 302,
                    issued_at: 5,
                    expires_at: 600,
                },
                &key,
                None,
            )
            .expect("sign"),
        ),
        capture: vec![],
        format: 0,
    };
    let v2 = bundle.to_wire(2).expect("v2");
    let v1 = bundle.to_wire(1).expect("v1");
    expect![[r#"
        v1 153 bytes, v2 403 bytes
    "#]]
    .assert_eq(&format!("v1 {} bytes, v2 {} bytes\n", v1.len(), v2.len()));
    // Format 1 is the format-2 bytes without the instruction and the set, minus their tags.
    let none = AssignmentBundle {
        window: None,
        assigned: None,
        ..bundle.clone()
    };
    assert_eq!(
        none.to_wire(2).expect("v2"),
        [v1.clone(), vec![0, 0]].concat()
    );
    // What a format-1 agent decodes: the same struct it always had.
    #[derive(serde::Deserialize)]
    struct OldBundle {
        #[allow(dead_code)]
        assignments: Vec<Signed<Assignment>>,
        #[allow(dead_code)]
        rotations: Vec<RootRotation>,
    }
    assert!(encoding::from_bytes::<OldBundle>("bundle", &v1).is_ok());
    assert!(encoding::from_bytes::<OldBundle>("bundle", &v2).is_err());
    // A new reader reads both.
    let read = |bytes: &[u8]| AssignmentBundle {
        format: 0,
        ..AssignmentBundle::from_wire(bytes).expect("decodes")
    };
    assert_eq!(read(&v2), bundle);
    assert_eq!(read(&v1), none);
    assert_eq!(AssignmentBundle::from_wire(&v1).expect("v1").format, 1);
    let bad = AssignmentBundle::from_wire(&v2[..v2.len() - 3]).expect_err("truncated");
    assert!(bad.to_string().contains("assignment bundle"), "{bad}");
    // Format 3 adds the capture instructions at the end: format 2 is format 3 without them,
    // minus their (empty) length byte, and a format-3 reader reads all three.
    let capture = edgefleet_common::sample::CaptureInstruction {
        device: "shop-1".into(),
        model: "demand".into(),
        rate_ppm: 250_000,
        max_rows: 100,
        serial: 303,
        issued_at: 5,
        expires_at: 600,
    };
    expect![[r#"
        0673686f702d310664656d616e6490a10f64af0205d804
    "#]]
    .assert_eq(&wrap(&hex::encode(
        encoding::to_bytes(&capture).expect("c"),
    )));
    let with_capture = AssignmentBundle {
        capture: vec![Signed::sign(&capture, &key, None).expect("sign")],
        ..bundle.clone()
    };
    let v3 = with_capture.to_wire(3).expect("v3");
    assert_eq!(
        bundle.to_wire(3).expect("v3"),
        [v2.clone(), vec![0]].concat()
    );
    assert_eq!(with_capture.to_wire(2).expect("v2"), v2);
    assert_eq!(read(&v3), with_capture);
    assert_eq!(read(&v2), bundle);
    assert_eq!(AssignmentBundle::from_wire(&v3).expect("v3").format, 3);
    assert_eq!(AssignmentBundle::from_wire(&v2).expect("v2").format, 2);
    assert_eq!(
        encoding::domain_prefix(edgefleet_common::sample::SampleBatch::KIND),
        b"EDGEFLEET\0samples\0\x01"
    );
    // The instruction's own checks.
    let ok = w.validate_for("shop-1", 10);
    assert!(ok.is_ok(), "{ok:?}");
    for (device, now, window, want) in [
        ("shop-2", 10, 60, "not shop-2"),
        ("shop-1", 600, 60, "expired"),
        ("shop-1", 10, 1, "allowed 5..=3600"),
        ("shop-1", 10, 86_400, "allowed 5..=3600"),
    ] {
        let w = WindowInstruction {
            window_secs: window,
            ..w.clone()
        };
        let e = w.validate_for(device, now).expect_err(want);
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// Status reports: an older agent's JSON (no installs, no bundle format, no time zone) is
/// still accepted.
#[test]
fn device_status_reads_older_agents_reports() {
    use edgefleet_common::device::{DeviceStatus, InstallPhase, InstallStatus};
    let old = r#"{"active":[{"name":"demand","version":1}],"previous":[],"last_error":null,"agent_version":"0.1.0"}"#;
    let s: DeviceStatus = serde_json::from_str(old).expect("old status");
    assert_eq!(s.bundle_format, 0);
    assert!(s.installs.is_empty());
    let new = DeviceStatus {
        installs: vec![InstallStatus {
            model: "demand".into(),
            version: 2,
            phase: InstallPhase::SmokeTestFailed,
            reason: Some("case 0: output differs".into()),
            at: 7,
        }],
        bundle_format: 2,
        window_secs: Some(60),
        time_zone: Some("Europe/Berlin".into()),
        ..s
    };
    assert_eq!(s.time_zone, None, "an older agent reports no zone");
    expect![[r#"
        {"active":[{"name":"demand","version":1}],"previous":[],"last_error":null,"agent_version":"0.1.0","installs":[{"model":"demand","version":2,"phase":"smoke_test_failed","reason":"case 0: output differs","at":7}],"bundle_format":2,"window_secs":60,"time_zone":"Europe/Berlin"}
    "#]]
    .assert_eq(&format!("{}\n", serde_json::to_string(&new).expect("json")));
}

/// The telemetry record's first layout (before ground truth), as a device of that version
/// signs it.
#[derive(serde::Serialize, serde::Deserialize)]
struct RecordV1 {
    device_id: String,
    seq: u64,
    window_start: u64,
    window_end: u64,
    models: Vec<edgefleet_common::telemetry::ModelWindow>,
    health: edgefleet_common::telemetry::Health,
    outbox: edgefleet_common::telemetry::OutboxStats,
    agent_version: String,
}

impl Document for RecordV1 {
    const KIND: &'static str = "telemetry";
    const WHAT: &'static str = "telemetry record";
}

/// A sample batch: one captured row of (inputs, prediction, truth).
#[test]
fn sample_batch_bytes() {
    use edgefleet_common::sample::{SampleBatch, SampleRow, Value};
    let batch = SampleBatch {
        device_id: "shop-1".into(),
        seq: 3,
        model: "demand".into(),
        version: 2,
        window_start: 1_700_000_000,
        window_end: 1_700_000_900,
        offered: 5,
        inputs: vec!["fuel".into(), "temp".into()],
        outputs: vec!["y".into()],
        rows: vec![SampleRow {
            made_at: 1_700_000_100,
            inputs: vec![1.5, 20.0],
            predicted: vec![Value::Number(10.0)],
            truth: vec![Value::Label("12".into())],
        }],
    };
    batch.validate().expect("valid");
    let body = encoding::to_bytes(&batch).expect("encode");
    expect![[r#"
        0673686f702d31030664656d616e640280e2cfaa0684e9
        cfaa060502046675656c0474656d7001017901e4e2cfaa
        0602000000000000f83f00000000000034400100000000
        00000024400101023132
    "#]]
    .assert_eq(&wrap(&hex::encode(&body)));
    let back: SampleBatch = encoding::from_bytes("sample batch", &body).expect("decode");
    assert_eq!(back, batch);
}
