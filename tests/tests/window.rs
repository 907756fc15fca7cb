//! The agent's window profiles: every served inference's inputs, outputs and latency end up in
//! the window's sketches, errors are counted, nothing is lost when buffers fill faster than the
//! folder empties them, and the reference profile decides which columns are categorical.

use edgefleet_agent::model::LoadedModel;
use edgefleet_agent::window::{BUFFER_ROWS, MAX_PENDING};
use edgefleet_common::TensorData;
use edgefleet_common::sketch::{ColumnKind, ColumnSketch, ColumnSpec, Profile};
use edgefleet_tests::fixtures;

fn rf_binary() -> fixtures::Fixture {
    fixtures::load()
        .expect("fixtures")
        .into_iter()
        .find(|f| f.name == "rf_binary")
        .expect("rf_binary")
}

#[test]
fn a_window_profiles_every_input_and_output_and_counts_errors() {
    let f = rf_binary();
    let model = LoadedModel::load(f.manifest().expect("manifest"), &f.path).expect("load");
    let n = f.input.shape[0] as usize;
    for r in 0..n {
        let row = [f.row(r)];
        let out = model.infer(&row, &[]).expect("infer");
        model.window.record(&row, &out, 10.0 + r as f64);
    }
    model.window.record_error();
    model.window.record_error();
    let w = model.window.close(123).expect("window");
    assert_eq!(
        (w.requests, w.errors, w.profile.rows),
        (n as u64, 2, n as u64)
    );
    assert_eq!(w.latency.count(), n as u64);
    let names: Vec<&str> = w.profile.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "input[0]",
            "input[1]",
            "input[2]",
            "input[3]",
            "input[4]",
            "input[5]",
            "input[6]",
            "input[7]",
            "output_label",
            "output_probability[0]",
            "output_probability[1]"
        ]
    );
    let TensorData::Fp32(x) = &f.input.data else {
        panic!("fp32")
    };
    for j in 0..8 {
        let exact = (0..n).map(|r| f64::from(x[r * 8 + j])).sum::<f64>() / n as f64;
        let ColumnSketch::Numeric(s) = &w.profile.columns[j].sketch else {
            panic!("numeric")
        };
        let m = s.mean().expect("mean");
        assert!(
            (m - exact).abs() <= 1e-9 * exact.abs().max(1.0),
            "column {j}: {m} vs {exact}"
        );
        assert_eq!(s.count(), n as u64);
    }
    // The next window starts empty.
    let next = model.window.close(124).expect("window");
    assert_eq!(
        (next.requests, next.profile.rows, next.started_at),
        (0, 0, 123)
    );
}

#[test]
fn nothing_is_lost_when_buffers_fill_faster_than_they_are_folded() {
    let f = rf_binary();
    let model = LoadedModel::load(f.manifest().expect("manifest"), &f.path).expect("load");
    let row = [f.row(0)];
    let out = model.infer(&row, &[]).expect("infer");
    // No folder runs: buffers queue up to MAX_PENDING, then requests fold inline.
    let total = BUFFER_ROWS * (MAX_PENDING + 3) + 17;
    for _ in 0..total {
        model.window.record(&row, &out, 5.0);
    }
    let w = model.window.close(1).expect("window");
    assert_eq!(w.requests, total as u64);
    assert_eq!(w.profile.rows, total as u64);
    assert_eq!(w.latency.count(), total as u64);
}

#[test]
fn the_reference_profile_decides_which_columns_are_categorical() {
    let f = rf_binary();
    let mut manifest = f.manifest().expect("manifest");
    let reference = Profile::new(
        &[
            ColumnSpec {
                name: "input[2]".into(),
                kind: ColumnKind::Categorical,
            },
            ColumnSpec {
                name: "input[0]".into(),
                kind: ColumnKind::Numeric,
            },
        ],
        200,
    )
    .expect("profile");
    manifest.reference_profile = Some(reference.to_bytes());
    let model = LoadedModel::load(manifest, &f.path).expect("load");
    let schema = model.window.schema();
    let kind = |n: &str| schema.iter().find(|c| c.name == n).map(|c| c.kind);
    assert_eq!(kind("input[2]"), Some(ColumnKind::Categorical));
    assert_eq!(kind("input[0]"), Some(ColumnKind::Numeric));
    assert_eq!(kind("output_label"), Some(ColumnKind::Numeric));
}
