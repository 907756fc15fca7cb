//! A deterministic food-demand table, as a shop's captured samples would export it: the
//! motivating case's features and a demand that depends on them non-linearly, plus noise.

use serde_json::json;

pub use edgefleet_demo::shop::FEATURES;

pub use edgefleet_demo::shop::{FUEL_AFTER, FUEL_BEFORE, Shop};

/// A deterministic demand table of `rows` days before the shock, with a few missing cells.
pub fn demand_csv(rows: usize, seed: u64) -> String {
    let mut shop = Shop::new(seed, FUEL_BEFORE);
    let mut csv = String::from("device,version,made_at,");
    csv += &FEATURES.join(",");
    csv += ",predicted_y,truth_y\n";
    for i in 0..rows {
        let (features, demand) = shop.day();
        let cell = |v: f32, j: usize| {
            if (i * 7 + j).is_multiple_of(53) {
                String::new()
            } else {
                format!("{}", f64::from(v))
            }
        };
        let cells: Vec<String> = features
            .iter()
            .enumerate()
            .map(|(j, v)| cell(*v, j))
            .collect();
        csv += &format!(
            "shop-{},1,{},{},0,{demand}\n",
            i % 5,
            1_700_000_000 + i,
            cells.join(",")
        );
    }
    csv
}

/// The Table Schema `edgefleet samples --export` writes for [`demand_csv`].
pub fn schema() -> serde_json::Value {
    edgefleet_demo::shop::table_schema()
}

/// The demand model's spec: one FP32 input of the [`FEATURES`], one FP32 output `y`.
pub fn parent() -> serde_json::Value {
    json!({
        "name": "demand", "version": 1,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 7], "feature_names": FEATURES}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    })
}

/// The demand table as a binary question: is the day's demand above the table's median (1) or
/// not (0)?
pub fn busy_day_csv(rows: usize, seed: u64) -> String {
    let csv = demand_csv(rows, seed);
    let mut lines = csv.lines();
    let header = lines.next().expect("header");
    let rows: Vec<(&str, f64)> = lines
        .map(|l| {
            let (cells, truth) = l.rsplit_once(',').expect("a truth cell");
            (cells, truth.parse().expect("a number"))
        })
        .collect();
    let mut sorted: Vec<f64> = rows.iter().map(|r| r.1).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mut out = format!("{header}\n");
    for (cells, demand) in rows {
        out += &format!("{cells},{}\n", u8::from(demand > median));
    }
    out
}

/// A binary classifier with the demand model's input: labels `y` (INT64), probabilities `p`.
pub fn classifier_parent() -> serde_json::Value {
    json!({
        "name": "busy", "version": 1,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 7], "feature_names": FEATURES}],
        "outputs": [
            {"name": "y", "datatype": "INT64", "shape": [-1]},
            {"name": "p", "datatype": "FP32", "shape": [-1, 2], "feature_names": ["0", "1"]},
        ],
    })
}
