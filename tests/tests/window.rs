//! The agent's window profiles: every served inference's inputs, outputs and latency end up in
//! the window's sketches, errors are counted, nothing is lost when buffers fill faster than the
//! folder empties them, and the reference profile decides which columns are categorical.

use edgefleet_agent::active::{ActiveModels, Served};
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
    let served =
        Served::new(LoadedModel::load(f.manifest().expect("manifest"), &f.path).expect("load"));
    let n = f.input.shape[0] as usize;
    for r in 0..n {
        let row = [f.row(r)];
        let out = served.model.infer(&row, &[]).expect("infer");
        served.window.record(&row, &out, 10.0 + r as f64);
    }
    served.window.record_error();
    served.window.record_error();
    let w = served.window.close(123).expect("window");
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
    let next = served.window.close(124).expect("window");
    assert_eq!(
        (next.requests, next.profile.rows, next.started_at),
        (0, 0, 123)
    );
}

#[test]
fn nothing_is_lost_when_buffers_fill_faster_than_they_are_folded() {
    let f = rf_binary();
    let served =
        Served::new(LoadedModel::load(f.manifest().expect("manifest"), &f.path).expect("load"));
    let row = [f.row(0)];
    let out = served.model.infer(&row, &[]).expect("infer");
    // No folder runs: buffers queue up to MAX_PENDING, then requests fold inline.
    let total = BUFFER_ROWS * (MAX_PENDING + 3) + 17;
    for _ in 0..total {
        served.window.record(&row, &out, 5.0);
    }
    let w = served.window.close(1).expect("window");
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
    let served = Served::new(LoadedModel::load(manifest, &f.path).expect("load"));
    let schema = served.window.schema();
    let kind = |n: &str| schema.iter().find(|c| c.name == n).map(|c| c.kind);
    assert_eq!(kind("input[2]"), Some(ColumnKind::Categorical));
    assert_eq!(kind("input[0]"), Some(ColumnKind::Numeric));
    assert_eq!(kind("output_label"), Some(ColumnKind::Numeric));
}

/// Serves `model` from a model set of its own on 127.0.0.1:0; returns the base URL.
async fn serve(model: std::sync::Arc<Served>) -> String {
    let models = std::sync::Arc::new(ActiveModels::default());
    models.swap_in(model);
    models.set_ready();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let router = edgefleet_agent::serve::router(models, Default::default());
        let _ = axum::serve(listener, router).await;
    });
    url
}

/// A request sent as binary tensors is profiled exactly as the same request sent as JSON: the
/// same rows, the same sketches byte for byte, the same counts (errors included).
#[tokio::test(flavor = "multi_thread")]
async fn binary_and_json_requests_give_the_same_window_profile() {
    let f = rf_binary();
    let load = || {
        std::sync::Arc::new(Served::new(
            LoadedModel::load(f.manifest().expect("manifest"), &f.path).expect("load"),
        ))
    };
    let (json_model, binary_model) = (load(), load());
    let (json_url, binary_url) = (
        serve(json_model.clone()).await,
        serve(binary_model.clone()).await,
    );
    let name = f.manifest().expect("manifest").name;
    let http = reqwest::Client::new();
    let n = f.input.shape[0] as usize;
    for r in 0..n {
        let row = f.row(r);
        let TensorData::Fp32(values) = &row.data else {
            panic!("rf_binary takes FP32");
        };
        let body = serde_json::json!({"inputs": [edgefleet_tests::oip_json(&row)]});
        let a = http
            .post(format!("{json_url}/v2/models/{name}/infer"))
            .json(&body)
            .send()
            .await
            .expect("json");
        assert_eq!(a.status(), 200);
        let mut bin = serde_json::to_vec(&serde_json::json!({"inputs": [{
            "name": row.name, "shape": row.shape, "datatype": "FP32",
            "parameters": {"binary_data_size": values.len() * 4}}]}))
        .expect("header");
        let header = bin.len();
        bin.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        let b = http
            .post(format!("{binary_url}/v2/models/{name}/infer"))
            .header("Inference-Header-Content-Length", header)
            .body(bin)
            .send()
            .await
            .expect("binary");
        assert_eq!(b.status(), 200);
    }
    // One refused request each: both count it.
    for url in [&json_url, &binary_url] {
        let r = http
            .post(format!("{url}/v2/models/{name}/infer"))
            .header("Inference-Header-Content-Length", "5")
            .body("{\"in")
            .send()
            .await
            .expect("bad");
        assert_eq!(r.status(), 400);
    }
    let (wj, wb) = (
        json_model.window.close(1).expect("json window"),
        binary_model.window.close(1).expect("binary window"),
    );
    assert_eq!((wj.requests, wj.errors), (n as u64, 1));
    assert_eq!((wb.requests, wb.errors), (wj.requests, wj.errors));
    assert_eq!(wj.profile.rows, n as u64);
    assert_eq!(wb.profile.to_bytes(), wj.profile.to_bytes());
    assert_eq!(wb.latency.count(), wj.latency.count());
}
