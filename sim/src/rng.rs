//! A small seeded generator (SplitMix64): the same seed gives the same fleet, traffic and
//! faults, with no dependency and nothing to keep in sync with another crate's algorithm.

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, good enough to
/// draw traffic from.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator for one purpose of one entity, independent of the others: `mix(seed,
    /// stream, index)`.
    pub fn derive(seed: u64, stream: &str, index: u64) -> Self {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in stream.bytes() {
            h = mix(h ^ u64::from(b));
        }
        Rng(mix(h ^ mix(index)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(f64::MIN_POSITIVE);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson with mean `lambda` (Knuth's method below 30, a rounded normal above).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let limit = (-lambda).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.f64();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The devices (of `n`) that fail installs: exactly `round(fraction × n)` of them, chosen by a
/// seeded shuffle, so a test can count them.
pub fn failing_set(seed: u64, n: usize, fraction: f64) -> Vec<bool> {
    let k = ((fraction * n as f64).round() as usize).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::derive(seed, "fail-install", 0);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut out = vec![false; n];
    for &i in &order[..k] {
        out[i] = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let a: Vec<u64> = (0..5).map(|_| Rng::derive(7, "x", 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::derive(7, "x", 3).next_u64(),
            Rng::derive(7, "x", 4).next_u64()
        );
    }

    #[test]
    fn draws_have_the_right_moments() {
        let mut r = Rng::new(1);
        let n = 20_000;
        let mean = (0..n).map(|_| r.normal()).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        let p = (0..n).map(|_| r.poisson(3.0)).sum::<u64>() as f64 / n as f64;
        assert!((p - 3.0).abs() < 0.1, "{p}");
    }

    #[test]
    fn the_failing_set_has_exactly_the_fraction() {
        let s = failing_set(7, 50, 0.5);
        assert_eq!(s.iter().filter(|&&f| f).count(), 25);
        assert_eq!(s, failing_set(7, 50, 0.5));
        assert_eq!(failing_set(7, 10, 0.0).iter().filter(|&&f| f).count(), 0);
        assert_eq!(failing_set(7, 10, 1.0).iter().filter(|&&f| f).count(), 10);
    }
}
