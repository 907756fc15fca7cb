//! The motivating case's data: a shop's days of food demand, deterministic from a seed. Demand
//! depends on the day of the week, price, promotion, temperature, holiday, fuel price and last
//! week's sales, non-linearly, plus noise; past a fuel price of 1.5 every unit of fuel costs 20
//! units of demand, so a fuel-price shock takes a model trained on calm days far outside what
//! it learned.

/// The features, in the model's column order.
pub const FEATURES: [&str; 7] = [
    "day_of_week",
    "price",
    "promotion",
    "temperature",
    "holiday",
    "fuel_price",
    "last_week_sales",
];

/// Fuel prices before the shock: uniform on [1.4, 1.8).
pub const FUEL_BEFORE: (f32, f32) = (1.4, 0.4);
/// Fuel prices after the shock: uniform on [2.2, 2.6).
pub const FUEL_AFTER: (f32, f32) = (2.2, 0.4);

/// A deterministic stream of a shop's days: features (in [`FEATURES`] order) and the true
/// demand, a non-linear function of them plus noise. `fuel` is (lowest, range) of the fuel
/// price: past 1.5 every unit of fuel costs 20 units of demand.
pub struct Shop {
    state: u64,
    fuel: (f32, f32),
    day: usize,
}

impl Shop {
    pub fn new(seed: u64, fuel: (f32, f32)) -> Self {
        Self {
            state: seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
            fuel,
            day: 0,
        }
    }

    fn next(&mut self) -> f64 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.state >> 33) as f64) / (1u64 << 31) as f64
    }

    /// From now on, fuel prices in `fuel` (lowest, range).
    pub fn set_fuel(&mut self, fuel: (f32, f32)) {
        self.fuel = fuel;
    }

    /// The next day: its features and its true demand.
    pub fn day(&mut self) -> ([f32; 7], f64) {
        let dow = (self.day % 7) as f64;
        self.day += 1;
        let price = (2.0 + 3.0 * self.next()) as f32;
        let promo = if self.next() < 0.2 { 1.0f32 } else { 0.0 };
        let temp = (5.0 + 25.0 * self.next()) as f32;
        let holiday = if self.next() < 0.05 { 1.0f32 } else { 0.0 };
        let fuel = self.fuel.0 + (f64::from(self.fuel.1) * self.next()) as f32;
        let last = (80.0 + 60.0 * self.next()) as f32;
        let demand = 40.0 + 0.5 * f64::from(last) - 9.0 * f64::from(price)
            + 25.0 * f64::from(promo)
            + if dow >= 5.0 { 15.0 } else { 0.0 }
            + 0.03 * (f64::from(temp) - 18.0).powi(2)
            - 20.0 * (f64::from(fuel) - 1.5).max(0.0)
            + 30.0 * f64::from(holiday)
            + 4.0 * (self.next() - 0.5);
        (
            [dow as f32, price, promo, temp, holiday, fuel, last],
            demand,
        )
    }
}

/// The Table Schema of a shop's days as the hub's sample export writes them (`device`,
/// `version`, `made_at`, the [`FEATURES`], `predicted_y`, `truth_y`): what a trainer's
/// `dataset.schema.json` says.
pub fn table_schema() -> serde_json::Value {
    use serde_json::json;
    let mut fields = vec![
        json!({"name": "device", "type": "string", "role": "meta"}),
        json!({"name": "version", "type": "integer", "role": "meta"}),
        json!({"name": "made_at", "type": "integer", "role": "meta"}),
    ];
    fields.extend(
        FEATURES
            .iter()
            .map(|f| json!({"name": f, "type": "number", "role": "input"})),
    );
    fields.push(json!({"name": "predicted_y", "type": "number", "role": "predicted"}));
    fields.push(json!({"name": "truth_y", "type": "number", "role": "truth"}));
    json!({"fields": fields, "missingValues": [""], "primaryKey": []})
}
