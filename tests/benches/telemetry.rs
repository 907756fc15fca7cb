//! Telemetry figures (BENCHMARKS.md): sketch update cost per value, the bytes a device sends
//! per window and per day, and the hub's ingest rate (verify + decode + merge + commit)
//! against a plain postcard decode of the same records, side by side in one run.
//!
//! `cargo bench --profile release -p edgefleet-tests --bench telemetry`
//! (`BENCH_RECORDS`, default 2000: records ingested per round.)

use std::time::{Duration, Instant};

use edgefleet_common::device::ModelRef;
use edgefleet_common::sketch::{
    CategoricalSketch, ColumnKind, ColumnSpec, DEFAULT_K, LatencySketch, NumericSketch, Profile,
};
use edgefleet_common::telemetry::{
    Health, Heartbeat, ModelWindow, OutboxStats, TelemetryAck, TelemetryRecord,
    open_device_message, pack_record, topic, unpack_record,
};
use edgefleet_common::{Delegation, Permission, SecretKey, Signed, encoding};
use edgefleet_hub::telemetry::{References, Staged, TelemetryStore, TelemetryWriter};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn per_value(what: &str, n: usize, mut f: impl FnMut(usize)) -> f64 {
    // Best of 3: the machine is shared.
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed()
        })
        .min()
        .unwrap_or(Duration::ZERO);
    let ns = best.as_nanos() as f64 / n as f64;
    println!("sketch update\t{what}\t{ns:.1} ns/value");
    ns
}

/// The demand model's window: 8 input features and one output, `rows` requests of one row.
fn window(rows: usize, rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let mut schema: Vec<ColumnSpec> = edgefleet_tests::FEATURE_NAMES
        .iter()
        .map(|n| ColumnSpec {
            name: (*n).into(),
            kind: ColumnKind::Numeric,
        })
        .collect();
    schema.push(ColumnSpec {
        name: "y".into(),
        kind: ColumnKind::Numeric,
    });
    let mut p = Profile::new(&schema, DEFAULT_K).expect("profile");
    let mut latency = LatencySketch::default();
    for _ in 0..rows {
        let row: Vec<f64> = (0..schema.len())
            .map(|j| 10.0 * j as f64 + rng.normal())
            .collect();
        p.update_row(&row).expect("row");
        latency.record_us(80.0 * (0.3 * rng.normal()).exp());
    }
    (p.to_bytes(), latency.into())
}

fn record(device: &str, seq: u64, rows: usize, rng: &mut Rng) -> TelemetryRecord {
    let (profile, latency) = window(rows, rng);
    TelemetryRecord {
        device_id: device.into(),
        seq,
        window_start: 1_795_000_000 + seq * 900,
        window_end: 1_795_000_000 + (seq + 1) * 900,
        models: vec![ModelWindow {
            model: "demand".into(),
            version: 1,
            profile,
            latency,
            requests: rows as u64,
            errors: 0,
        }],
        health: Health {
            cpu_percent: 12.5,
            memory_used_bytes: 300 << 20,
            memory_total_bytes: 2 << 30,
            disk_used_bytes: 3 << 30,
            disk_total_bytes: 16 << 30,
            uptime_secs: 86_400,
            temperature_celsius: Some(51.0),
        },
        outbox: OutboxStats::default(),
        agent_version: "0.1.0".into(),
        quality: vec![],
    }
}

/// MQTT 3.1.1 PUBLISH QoS 1 framing around `payload` on `topic`: fixed header (1 byte plus
/// 1–4 length bytes), topic (2 + len), packet id (2); the PUBACK back is 4 bytes.
fn publish_bytes(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining
}

fn main() -> anyhow::Result<()> {
    let mut rng = Rng(42);

    // 1. Sketch updates.
    let n = 1_000_000;
    let values: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let mut kll = NumericSketch::new(DEFAULT_K).expect("kll");
    per_value("numeric (KLL k=200 + moments)", n, |i| {
        kll.update(values[i])
    });
    let mut cat = CategoricalSketch::default();
    per_value("categorical (frequent items + HLL)", n, |i| {
        cat.update_f64((values[i] * 10.0).round())
    });
    let mut lat = LatencySketch::default();
    per_value("latency (DDSketch 1 %)", n, |i| {
        lat.record_us(values[i].abs() * 100.0)
    });

    // 2. Bytes per window and per day, default 15-minute windows (96 a day).
    let device = SecretKey::from_seed([9; 32]);
    let hub = SecretKey::from_seed([8; 32]);
    let root = SecretKey::from_seed([7; 32]);
    for (rows, with_quality) in [
        (900usize, false),
        (900, true),
        (9_000, false),
        (9_000, true),
    ] {
        let mut r = record("shop-00001", 1, rows, &mut rng);
        if with_quality {
            // Ground truth for every request of the window: a regression's errors.
            let mut q = edgefleet_common::quality::ModelQuality::new("demand", 1);
            for _ in 0..rows {
                let truth = 50.0 + 10.0 * rng.normal();
                q.score_values(&[truth + 3.0 * rng.normal()], &[truth], false)?;
            }
            r.quality = vec![q];
        }
        let profile_bytes = r.models[0].profile.len();
        let signed = Signed::sign(&r, &device, None)?.to_bytes()?;
        let packed = pack_record(&signed);
        let up_record = publish_bytes(&topic::telemetry("shop-00001"), packed.len()) + 4;
        let delegation = Signed::sign(
            &Delegation {
                key: hub.public(),
                label: "hub".into(),
                patterns: vec!["*".into()],
                permissions: vec![Permission::Manifests, Permission::Assignments],
                issued_at: 1,
                expires_at: 2,
            },
            &root,
            None,
        )?;
        let ack = Signed::sign(
            &TelemetryAck {
                device_id: "shop-00001".into(),
                seqs: vec![1],
                at: 1_795_000_000,
            },
            &hub,
            Some(delegation),
        )?
        .to_bytes()?;
        let down_ack = publish_bytes(&topic::ack("shop-00001"), ack.len()) + 4;
        let heartbeat = Signed::sign(
            &Heartbeat {
                device_id: "shop-00001".into(),
                at: 1_795_000_000,
                started_at: 1_794_000_000,
                online: true,
                health: Some(r.health.clone()),
                active: vec![ModelRef {
                    name: "demand".into(),
                    version: 1,
                }],
                outbox: OutboxStats::default(),
                agent_version: "0.1.0".into(),
            },
            &device,
            None,
        )?
        .to_bytes()?;
        let hb = publish_bytes(&topic::health("shop-00001"), heartbeat.len()) + 4;
        let per_day_up = 96 * up_record + 288 * hb + 2880 * 2; // heartbeat every 300 s, PINGREQ every 30 s
        let per_day_down = 96 * down_ack + 2880 * 2;
        println!(
            "bytes\t{rows} requests/window{}\tprofile {profile_bytes} B ({} B per column)\tsigned record {} B, deflated {} B, heartbeat {} B, ack {} B\tper day up {:.2} MB (records {:.2} MB, heartbeats {:.2} MB) down {:.2} MB",
            if with_quality { ", truth for each" } else { "" },
            profile_bytes / 9,
            signed.len(),
            packed.len(),
            heartbeat.len(),
            ack.len(),
            per_day_up as f64 / 1e6,
            (96 * up_record) as f64 / 1e6,
            (288 * hb) as f64 / 1e6,
            per_day_down as f64 / 1e6,
        );
    }

    // 2b. Training samples at 100 rows a window (sample capture on): one signed batch of the
    // demand model's 8 inputs, prediction and truth per window, as the agent queues it.
    {
        use edgefleet_common::sample::{SampleBatch, SampleRow, Value};
        let rows: Vec<SampleRow> = (0..100u64)
            .map(|i| SampleRow {
                made_at: 1_795_000_000 + i * 9,
                inputs: (0..8).map(|j| 10.0 * j as f64 + rng.normal()).collect(),
                predicted: vec![Value::Number(50.0 + 10.0 * rng.normal())],
                truth: vec![Value::Number(50.0 + 10.0 * rng.normal())],
            })
            .collect();
        let batch = SampleBatch {
            device_id: "shop-00001".into(),
            seq: 2,
            model: "demand".into(),
            version: 1,
            window_start: 1_795_000_000,
            window_end: 1_795_000_900,
            offered: 900,
            inputs: (0..8).map(|j| format!("f{j}")).collect(),
            outputs: vec!["y".into()],
            rows,
        };
        let signed = Signed::sign(&batch, &device, None)?.to_bytes()?;
        let packed = pack_record(&signed);
        let up = publish_bytes(&topic::samples("shop-00001"), packed.len()) + 4;
        println!(
            "bytes\tsamples, 100 rows/window (8 inputs, prediction, truth)\tsigned batch {} B, deflated {} B\tper day up {:.2} MB more (96 windows; each batch's ack as a record's)",
            signed.len(),
            packed.len(),
            (96 * up) as f64 / 1e6,
        );
    }

    // 3. Hub ingest against a plain decode of the same records.
    let count: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let devices: Vec<(String, SecretKey)> = (0..20)
        .map(|i| {
            (
                format!("shop-{i:05}"),
                SecretKey::from_seed([i as u8 + 1; 32]),
            )
        })
        .collect();
    let records: Vec<(usize, Vec<u8>)> = (0..count)
        .map(|i| {
            let d = i % devices.len();
            let r = record(&devices[d].0, (i / devices.len()) as u64 + 1, 900, &mut rng);
            let signed = Signed::sign(&r, &devices[d].1, None)
                .and_then(|s| s.to_bytes())
                .expect("sign");
            (d, pack_record(&signed))
        })
        .collect();
    let tags = vec!["shops-eu".to_owned()];
    for round in 0..3 {
        let t = Instant::now();
        for (_, bytes) in &records {
            let s: Signed<TelemetryRecord> = Signed::from_bytes(&unpack_record(bytes, 1 << 20)?)?;
            let r: TelemetryRecord = encoding::from_bytes("record", &s.body)?;
            std::hint::black_box(r);
        }
        let plain = t.elapsed();
        // (Both sides inflate: the comparison is verify + decode + merge + commit.)
        let dir = tempfile::tempdir()?;
        let db = sled::Config::new().path(dir.path().join("db")).open()?;
        let mut writer = TelemetryWriter::new(TelemetryStore::open(&db)?);
        let references = References::new();
        // Where the time goes: inflate, verify + decode, check the sketches, merge, commit.
        let mut steps = [Duration::ZERO; 5];
        let mut step = |i: usize, t: &mut Instant| {
            let now = Instant::now();
            steps[i] += now - *t;
            *t = now;
        };
        let t = Instant::now();
        // As the hub's consumer does: groups of up to a batch, each committed and flushed.
        for group in records.chunks(edgefleet_hub::mqtt::MAX_BATCH) {
            let mut at = Instant::now();
            for (d, bytes) in group {
                let (id, key) = &devices[*d];
                let signed = unpack_record(bytes, 1 << 20)?;
                step(0, &mut at);
                let r: TelemetryRecord = open_device_message(&signed, 1 << 20, &key.public())?;
                assert_eq!(&r.device_id, id);
                step(1, &mut at);
                let windows = r.validate()?;
                step(2, &mut at);
                let staged = writer.stage(&r, &windows, &tags, &references, 0)?;
                assert_eq!(staged, Staged::Stored);
                step(3, &mut at);
            }
            assert_eq!(writer.commit()?, group.len());
            db.flush()?;
            step(4, &mut at);
        }
        let ingest = t.elapsed();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / count as f64;
        println!(
            "ingest\tround {round}\tper record: inflate {:.0} µs, verify+decode {:.0} µs, check sketches {:.0} µs, merge {:.0} µs, commit+flush {:.0} µs",
            per(steps[0]),
            per(steps[1]),
            per(steps[2]),
            per(steps[3]),
            per(steps[4])
        );
        let rate = |d: Duration| count as f64 / d.as_secs_f64();
        println!(
            "ingest\tround {round}\t{count} records\tverify+decode+merge+commit {:.0} records/s\tplain postcard decode {:.0} records/s\tratio {:.1}x",
            rate(ingest),
            rate(plain),
            ingest.as_secs_f64() / plain.as_secs_f64()
        );
    }
    Ok(())
}
