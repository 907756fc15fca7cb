//! Sketch accuracy and merge properties on 10^6-value streams, drift metrics from sketches
//! against the same metrics computed exactly from the raw data (within tolerances derived from
//! the sketches' documented error bounds), and decoding of hostile bytes.

use edgefleet_common::drift::{self, psi_js};
use edgefleet_common::sketch::{
    CategoricalSketch, ColumnKind, ColumnSpec, LatencySketch, NumericSketch, Profile,
};

/// xorshift64* with Box–Muller: deterministic data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

const N: usize = 1_000_000;

fn streams() -> Vec<(&'static str, Vec<f64>)> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    vec![
        ("normal", (0..N).map(|_| 10.0 + 3.0 * r.normal()).collect()),
        (
            "log-normal",
            (0..N).map(|_| (1.0 + 0.8 * r.normal()).exp()).collect(),
        ),
        (
            "bimodal",
            (0..N)
                .map(|_| {
                    if r.uniform() < 0.3 {
                        -5.0 + r.normal()
                    } else {
                        8.0 + 2.0 * r.normal()
                    }
                })
                .collect(),
        ),
        ("constant", vec![42.0; N]),
        (
            "heavy ties",
            (0..N).map(|_| (r.uniform() * 7.0).floor()).collect(),
        ),
    ]
}

/// Worst |rank error| of the sketch's quantiles at 99 ranks, against the sorted data. With
/// ties a quantile x is right for any rank between F(x−) and F(x).
fn max_rank_error(sketch: &NumericSketch, sorted: &[f32]) -> f64 {
    let n = sorted.len() as f64;
    let mut worst: f64 = 0.0;
    for i in 1..100 {
        let r = f64::from(i) / 100.0;
        let x = sketch.quantile(r).expect("non-empty") as f32;
        let below = sorted.partition_point(|v| *v < x) as f64 / n;
        let upto = sorted.partition_point(|v| *v <= x) as f64 / n;
        let err = if r < below {
            below - r
        } else if r > upto {
            r - upto
        } else {
            0.0
        };
        worst = worst.max(err);
    }
    worst
}

fn sketch_of(values: &[f64]) -> NumericSketch {
    let mut s = NumericSketch::default();
    for &v in values {
        s.update(v);
    }
    s
}

fn sorted_f32(values: &[f64]) -> Vec<f32> {
    let mut v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    v.sort_by(f32::total_cmp);
    v
}

#[test]
fn kll_rank_error_is_within_the_documented_bound_on_a_million_values() {
    for (name, data) in streams() {
        let s = sketch_of(&data);
        let bound = NumericSketch::default().rank_error_bound();
        let err = max_rank_error(&s, &sorted_f32(&data));
        eprintln!("{name}: max rank error {err:.4} over 99 ranks (bound {bound:.4})");
        assert!(
            err <= bound,
            "{name}: rank error {err:.4} > bound {bound:.4}"
        );
        assert_eq!(s.count(), N as u64);
        let mean = data.iter().sum::<f64>() / N as f64;
        let m = s.mean().expect("mean");
        assert!(
            (m - mean).abs() <= 1e-9 * mean.abs().max(1.0),
            "{name}: mean {m} vs {mean}"
        );
        let min = data.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(s.min(), Some(min), "{name}");
    }
}

#[test]
fn merging_two_streams_equals_sketching_their_concatenation() {
    for (name, data) in streams() {
        let (a, b) = data.split_at(N / 3);
        let mut merged = sketch_of(a);
        merged.merge(&sketch_of(b)).expect("merge");
        let whole = sketch_of(&data);
        assert_eq!(merged.count(), whole.count(), "{name}");
        assert_eq!(merged.min(), whole.min(), "{name}");
        assert_eq!(merged.max(), whole.max(), "{name}");
        let (m1, m2) = (merged.mean().expect("m"), whole.mean().expect("m"));
        assert!(
            (m1 - m2).abs() <= 1e-9 * m2.abs().max(1.0),
            "{name}: {m1} vs {m2}"
        );
        let (s1, s2) = (merged.std().expect("s"), whole.std().expect("s"));
        assert!(
            (s1 - s2).abs() <= 1e-9 * s2.max(1.0),
            "{name}: {s1} vs {s2}"
        );
        let bound = merged.rank_error_bound();
        let err = max_rank_error(&merged, &sorted_f32(&data));
        eprintln!("{name}: merged max rank error {err:.4} (bound {bound:.4})");
        assert!(
            err <= bound,
            "{name}: merged rank error {err:.4} > {bound:.4}"
        );
    }
}

#[test]
fn non_finite_values_are_counted_not_sketched() {
    let mut s = NumericSketch::default();
    for v in [
        1.0,
        f64::NAN,
        f64::INFINITY,
        2.0,
        f64::NEG_INFINITY,
        1e160,
        -1e300,
    ] {
        s.update(v);
    }
    assert_eq!((s.count(), s.nonfinite()), (2, 5));
    // What was kept still encodes and decodes (huge values would have overflowed M2).
    let p = {
        let mut p = Profile::new(
            &[ColumnSpec {
                name: "x".into(),
                kind: ColumnKind::Numeric,
            }],
            200,
        )
        .expect("profile");
        for v in [1e38, -1e38, 3.0e38] {
            p.update_row(&[v]).expect("row");
        }
        p
    };
    Profile::from_bytes(&p.to_bytes()).expect("extreme but finite values round-trip");
    assert_eq!((s.min(), s.max()), (Some(1.0), Some(2.0)));
    let empty = NumericSketch::default();
    assert_eq!(
        (empty.quantile(0.5), empty.mean(), empty.min()),
        (None, None, None)
    );
}

#[test]
fn categorical_counts_are_exact_for_small_vocabularies_and_merge() {
    let mut r = Rng(7);
    let data: Vec<i64> = (0..100_000).map(|_| (r.uniform() * 7.0) as i64).collect();
    let (a, b) = data.split_at(40_000);
    let mut sa = CategoricalSketch::default();
    a.iter().for_each(|&c| sa.update(c));
    let mut sb = CategoricalSketch::default();
    b.iter().for_each(|&c| sb.update(c));
    sa.merge(&sb);
    for k in 0..7 {
        let exact = data.iter().filter(|&&c| c == k).count() as u64;
        let got = sa
            .frequencies()
            .iter()
            .find(|(c, _)| *c == k)
            .map(|(_, n)| *n);
        assert_eq!(got, Some(exact), "category {k}");
    }
    assert_eq!(sa.max_error(), 0);
    assert!((sa.distinct() - 7.0).abs() < 0.5);
    // Many distinct values: the HLL estimate is within 5 %.
    let mut many = CategoricalSketch::default();
    (0..100_000i64).for_each(|c| many.update(c * 7919));
    assert!(
        (many.distinct() / 100_000.0 - 1.0).abs() < 0.05,
        "{}",
        many.distinct()
    );
}

#[test]
fn latency_quantiles_are_within_one_percent_and_merge() {
    let mut r = Rng(11);
    let data: Vec<f64> = (0..200_000)
        .map(|_| (5.0 + 0.6 * r.normal()).exp())
        .collect();
    let (a, b) = data.split_at(50_000);
    let mut sa = LatencySketch::default();
    a.iter().for_each(|&x| sa.record_us(x));
    let mut sb = LatencySketch::default();
    b.iter().for_each(|&x| sb.record_us(x));
    sa.merge(&sb).expect("merge");
    let mut sorted = data.clone();
    sorted.sort_by(f64::total_cmp);
    for q in [0.5, 0.9, 0.99, 0.999] {
        let exact = sorted[((sorted.len() - 1) as f64 * q) as usize];
        let got = sa.quantile_us(q).expect("quantile");
        assert!(
            (got / exact - 1.0).abs() <= 0.0101,
            "q{q}: {got} vs {exact}"
        );
    }
    // Round trip through the wire.
    let bytes = postcard::to_stdvec(&sa).expect("encode");
    let back: LatencySketch = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(back.count(), sa.count());
    assert_eq!(back.quantile_us(0.99), sa.quantile_us(0.99));
}

/// DDSketch bytes from the network: whatever passes the check survives quantiles, merge and
/// re-encoding; keys far outside the latency range, negative stores, foreign mappings and
/// fractional or huge counts are refused (the crate's store would index out of bounds or
/// overflow on them).
#[test]
fn hostile_latency_bytes_are_refused_or_safe() {
    let mut good = LatencySketch::default();
    for us in [0.0, 0.5, 3.0, 120.0, 9_000.0, 1e6] {
        good.record_us(us);
    }
    let bytes: Vec<u8> = good.clone().into();
    assert!(LatencySketch::try_from(bytes.clone()).is_ok());
    let empty: Vec<u8> = LatencySketch::default().into();
    assert!(LatencySketch::try_from(empty).is_ok());
    let mut r = Rng(99);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut m = bytes.clone();
        for _ in 0..1 + r.next() % 4 {
            let i = (r.next() as usize) % m.len();
            match r.next() % 3 {
                0 => m[i] = r.next() as u8,
                1 => m[i] ^= 1 << (r.next() % 8),
                _ => m.insert(i, r.next() as u8),
            }
        }
        if let Ok(mut s) = LatencySketch::try_from(m) {
            accepted += 1;
            let merged = s.merge(&good).is_ok();
            let _ = s.quantile_us(0.99);
            if !merged {
                continue;
            }
            let again: Vec<u8> = s.into();
            LatencySketch::try_from(again).expect("re-encoded sketch decodes");
        }
    }
    assert!(accepted > 0, "some mutations are harmless");
    // A bin key of 2^31 - 1: outside every latency we can record.
    let mut hostile = vec![0xA0, 0x02];
    hostile.push(0x02);
    hostile.extend_from_slice(&((1.01f64 / 0.99).to_le_bytes()));
    hostile.extend_from_slice(&0f64.to_le_bytes());
    hostile.extend_from_slice(&[0x05, 0x01, 0xFE, 0xFF, 0xFF, 0xFF, 0x0F, 0x02]);
    let err = LatencySketch::try_from(hostile).expect_err("refused");
    assert!(format!("{err}").contains("DDSketch"), "{err}");
    // A negative store (latencies are never negative).
    let mut negative = bytes.clone();
    negative.extend_from_slice(&[0x07, 0x01, 0x02, 0x02]);
    assert!(LatencySketch::try_from(negative).is_err());
}

fn schema() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec {
            name: "fuel_price".into(),
            kind: ColumnKind::Numeric,
        },
        ColumnSpec {
            name: "day_of_week".into(),
            kind: ColumnKind::Categorical,
        },
    ]
}

fn profile(seed: u64, rows: usize, shift: f64) -> Profile {
    let mut r = Rng(seed);
    let mut p = Profile::new(&schema(), 200).expect("profile");
    for _ in 0..rows {
        p.update_row(&[1.6 + shift + 0.25 * r.normal(), (r.uniform() * 7.0).floor()])
            .expect("row");
    }
    p
}

#[test]
fn profiles_round_trip_merge_and_refuse_mismatched_columns() {
    let mut a = profile(1, 10_000, 0.0);
    let b = profile(2, 5_000, 0.0);
    let bytes = a.to_bytes();
    let back = Profile::from_bytes(&bytes).expect("decode");
    assert_eq!(back.to_bytes(), bytes, "decode → encode is the identity");
    a.merge(&b).expect("merge");
    assert_eq!(a.rows, 15_000);
    let other = Profile::new(
        &[ColumnSpec {
            name: "x".into(),
            kind: ColumnKind::Numeric,
        }],
        200,
    )
    .expect("profile");
    assert!(a.merge(&other).is_err());
    assert!(a.update_row(&[1.0]).is_err(), "a row of the wrong width");
    assert!(
        Profile::new(
            &[
                ColumnSpec {
                    name: "x".into(),
                    kind: ColumnKind::Numeric
                },
                ColumnSpec {
                    name: "x".into(),
                    kind: ColumnKind::Numeric
                }
            ],
            200
        )
        .is_err(),
        "duplicate column"
    );
}

#[test]
fn hostile_profile_bytes_are_errors_never_panics() {
    let good = profile(3, 3_000, 0.0).to_bytes();
    assert!(Profile::from_bytes(&[]).is_err());
    assert!(Profile::from_bytes(&[9]).is_err(), "unknown format");
    assert!(
        Profile::from_bytes(&good[..good.len() / 2]).is_err(),
        "truncated"
    );
    let mut r = Rng(99);
    let mut decoded = 0;
    for _ in 0..3_000 {
        let mut bad = good.clone();
        for _ in 0..1 + r.next() % 4 {
            let i = (r.next() as usize) % bad.len();
            bad[i] = r.next() as u8;
        }
        let outcome = std::panic::catch_unwind(|| {
            if let Ok(p) = Profile::from_bytes(&bad) {
                // Whatever decodes must be usable: query, merge, re-encode.
                let mut q = p.clone();
                let _ = q.merge(&p);
                for c in &p.columns {
                    if let edgefleet_common::sketch::ColumnSketch::Numeric(s) = &c.sketch {
                        let _ = (s.quantile(0.5), s.cdf(1.0), s.view().quantile(0.9));
                    }
                }
                let _ = p.to_bytes();
                return true;
            }
            false
        });
        match outcome {
            Ok(true) => decoded += 1,
            Ok(false) => {}
            Err(_) => panic!("a mutated profile made the decoder or a sketch panic"),
        }
    }
    eprintln!("{decoded} of 3000 mutations still decoded (and were usable)");
}

// ---- drift metrics: sketch vs exact -------------------------------------------------------

fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn exact_cdf(sorted: &[f64], x: f64) -> f64 {
    sorted.partition_point(|v| *v <= x) as f64 / sorted.len() as f64
}

/// How much `f` can move when each proportion moves by `eps`: Σ |∂f/∂p_i|·eps, numerically.
fn sensitivity(f: impl Fn(&[f64]) -> f64, p: &[f64], eps: f64) -> f64 {
    let base = f(p);
    let h = 1e-7;
    (0..p.len())
        .map(|i| {
            let mut q = p.to_vec();
            q[i] += h;
            ((f(&q) - base) / h).abs() * eps
        })
        .sum()
}

#[test]
fn drift_metrics_from_sketches_match_the_exact_values_within_their_error_bounds() {
    let mut r = Rng(2024);
    let reference: Vec<f64> = (0..200_000).map(|_| 1.6 + 0.25 * r.normal()).collect();
    for (label, shift, scale) in [
        ("same", 0.0, 1.0),
        ("fuel jump", 0.3, 1.4),
        ("slight", 0.01, 1.0),
    ] {
        let current: Vec<f64> = (0..100_000)
            .map(|_| 1.6 + shift + 0.25 * scale * r.normal())
            .collect();
        let (rs, cs) = (sketch_of(&reference), sketch_of(&current));
        let got = drift::numeric_drift(&rs, &cs).expect("drift");
        let eps = rs.rank_error_bound() + cs.rank_error_bound();

        let mut ref_sorted = reference.clone();
        ref_sorted.sort_by(f64::total_cmp);
        let mut cur_sorted = current.clone();
        cur_sorted.sort_by(f64::total_cmp);

        // KS over the same candidate points, exactly.
        let mut ks: f64 = 0.0;
        for x in ref_sorted.iter().chain(&cur_sorted).step_by(97) {
            ks = ks.max((exact_cdf(&ref_sorted, *x) - exact_cdf(&cur_sorted, *x)).abs());
        }
        assert!(
            (got.ks - ks).abs() <= eps + 0.005,
            "{label}: KS {} vs exact {ks}",
            got.ks
        );

        // PSI and JS over bins at the exact reference deciles.
        let edges: Vec<f64> = (1..10)
            .map(|i| exact_quantile(&ref_sorted, f64::from(i) / 10.0))
            .collect();
        let props = |sorted: &[f64]| {
            let mut out = Vec::new();
            let mut prev = 0.0;
            for &e in &edges {
                let f = exact_cdf(sorted, e);
                out.push(f - prev);
                prev = f;
            }
            out.push(1.0 - prev);
            out
        };
        let (rp, cp) = (props(&ref_sorted), props(&cur_sorted));
        let (psi, js) = psi_js(&rp, &cp);
        // Each bin proportion is off by at most 2·ε per sketch (one ε per edge).
        let joint: Vec<f64> = rp.iter().chain(&cp).copied().collect();
        let k = rp.len();
        let psi_tol = sensitivity(|p| psi_js(&p[..k], &p[k..]).0, &joint, 2.0 * eps) + 1e-3;
        let js_tol = sensitivity(|p| psi_js(&p[..k], &p[k..]).1, &joint, 2.0 * eps) + 1e-3;
        assert!(
            (got.psi - psi).abs() <= psi_tol,
            "{label}: PSI {} vs {psi} ± {psi_tol}",
            got.psi
        );
        assert!(
            (got.js - js).abs() <= js_tol,
            "{label}: JS {} vs {js} ± {js_tol}",
            got.js
        );

        // Wasserstein over the same quantile grid; a rank error ε moves a quantile by at most
        // the exact quantile function's change over ±ε.
        let std = {
            let m = reference.iter().sum::<f64>() / reference.len() as f64;
            (reference.iter().map(|x| (x - m).powi(2)).sum::<f64>() / reference.len() as f64).sqrt()
        };
        let (mut w, mut tol) = (0.0, 0.0);
        for i in 0..100 {
            let q = (f64::from(i) + 0.5) / 100.0;
            w += (exact_quantile(&ref_sorted, q) - exact_quantile(&cur_sorted, q)).abs();
            for s in [&ref_sorted, &cur_sorted] {
                tol +=
                    exact_quantile(s, (q + eps).min(1.0)) - exact_quantile(s, (q - eps).max(0.0));
            }
        }
        let (w, tol) = (w / 100.0 / std, tol / 100.0 / std + 1e-3);
        assert!(
            (got.wasserstein_norm - w).abs() <= tol,
            "{label}: Wasserstein {} vs {w} ± {tol}",
            got.wasserstein_norm
        );
        let expect_drift = label == "fuel jump";
        assert_eq!(
            got.wasserstein_norm >= 0.1,
            expect_drift,
            "{label}: {got:?}"
        );
    }
}

#[test]
fn categorical_drift_sees_a_changed_mix_and_not_an_unchanged_one() {
    let mut r = Rng(5);
    let mut reference = CategoricalSketch::default();
    let mut same = CategoricalSketch::default();
    let mut shifted = CategoricalSketch::default();
    for _ in 0..50_000 {
        reference.update((r.uniform() * 7.0) as i64);
        same.update((r.uniform() * 7.0) as i64);
        // Weekends twice as busy.
        let d = (r.uniform() * 9.0) as i64;
        shifted.update(if d >= 7 { d - 2 } else { d });
    }
    let a = drift::categorical_drift(&reference, &same).expect("drift");
    let b = drift::categorical_drift(&reference, &shifted).expect("drift");
    assert!(a.js < 0.02 && a.p_value > 0.001, "{a:?}");
    assert!(b.js > 0.1 && b.p_value < 1e-6, "{b:?}");
    // The chi-square tail against known values: P(X ≥ 3.84 | 1 df) = 0.05.
    assert!((drift::chi_square_sf(3.841_458_8, 1.0) - 0.05).abs() < 1e-6);
    assert!((drift::chi_square_sf(18.307, 10.0) - 0.05).abs() < 1e-4);
}

#[test]
fn profile_drift_applies_the_configured_rules() {
    let reference = profile(1, 20_000, 0.0);
    let current = profile(2, 5_000, 0.3);
    let config = drift::DriftConfig::default();
    let report = drift::profile_drift(&reference, &current, &config);
    let fuel = report
        .iter()
        .find(|c| c.column == "fuel_price")
        .expect("fuel");
    assert!(
        fuel.drifted && fuel.method == drift::Method::Wasserstein,
        "{fuel:?}"
    );
    let day = report
        .iter()
        .find(|c| c.column == "day_of_week")
        .expect("day");
    assert!(!day.drifted && day.method == drift::Method::Js, "{day:?}");
    // A per-column override: PSI with a high threshold does not fire.
    let mut config = drift::DriftConfig::default();
    config.columns.insert(
        "fuel_price".into(),
        drift::Rule {
            method: drift::Method::Psi,
            threshold: 100.0,
        },
    );
    let report = drift::profile_drift(&reference, &current, &config);
    let fuel = report
        .iter()
        .find(|c| c.column == "fuel_price")
        .expect("fuel");
    assert!(
        !fuel.drifted && fuel.method == drift::Method::Psi,
        "{fuel:?}"
    );
}

#[test]
fn a_frequent_items_header_cannot_demand_a_huge_map() {
    // A categorical column whose frequent-items header declares a 2^30 map: refused before the
    // decoder allocates it.
    let mut p = Profile::new(
        &[ColumnSpec {
            name: "day".into(),
            kind: ColumnKind::Categorical,
        }],
        200,
    )
    .expect("profile");
    p.update_row(&[3.0]).expect("row");
    let mut bytes = p.to_bytes();
    let mut sketch = CategoricalSketch::default();
    sketch.update(3);
    let wire = postcard::to_stdvec(&sketch).expect("encode");
    // Locate the frequent-items image inside the profile and raise lg_max and lg_cur.
    let freq = {
        let mut f = datasketches_header(&wire);
        f[3] = 30;
        f[4] = 30;
        f
    };
    let pos = bytes
        .windows(5)
        .position(|w| w == &datasketches_header(&wire)[..5])
        .expect("header inside the profile");
    bytes[pos + 3] = freq[3];
    bytes[pos + 4] = freq[4];
    // Refused at once (without the header check the decoder would try to allocate ~26 GiB).
    assert!(Profile::from_bytes(&bytes).is_err());
}

/// The first bytes of the frequent-items image inside an encoded categorical sketch: count and
/// nulls are one varint byte each here, then the image's varint length (one byte), then the
/// image.
fn datasketches_header(wire: &[u8]) -> Vec<u8> {
    wire[3..8].to_vec()
}

#[test]
fn model_columns_follow_one_naming_rule() {
    use edgefleet_common::manifest::ModelFormat;
    use edgefleet_common::{ArtifactRef, DataType, Digest, ModelManifest, TensorSpec};
    let spec = |name: &str, shape: Vec<i64>, features: &[&str]| TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape,
        feature_names: features.iter().map(|s| s.to_string()).collect(),
    };
    let m = ModelManifest {
        name: "m".into(),
        version: 1,
        artifact: ArtifactRef {
            sha256: Digest([0; 32]),
            size: 1,
            format: ModelFormat::Onnx,
        },
        inputs: vec![
            spec("x", vec![-1, 2], &["fuel", "temp"]),
            spec("image", vec![-1, 3, 32, 32], &[]),
            spec("wide", vec![-1, 1000], &[]),
            spec("bias", vec![2], &[]),
        ],
        outputs: vec![
            spec("label", vec![-1], &[]),
            spec("proba", vec![-1, 2], &[]),
            spec("fuel", vec![-1, 1], &[]),
        ],
        smoke_tests: vec![],
        created_at: 0,
        lineage: Default::default(),
        reference_profile: None,
        description: String::new(),
    };
    let cols = edgefleet_common::sketch::model_columns(&m);
    let names: Vec<(&str, bool)> = cols.iter().map(|c| (c.name.as_str(), c.batched)).collect();
    // Rank > 2 and over-wide tensors are not profiled; a repeated name keeps its first column.
    assert_eq!(
        names,
        [
            ("fuel", true),
            ("temp", true),
            ("bias[0]", false),
            ("bias[1]", false),
            ("label", true),
            ("proba[0]", true),
            ("proba[1]", true),
        ]
    );
}
