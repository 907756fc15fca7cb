//! The MAE curve as a PNG, drawn pixel by pixel (a line chart needs no plotting library, and
//! without text it needs no font): the fleet's MAE per day in blue, the fuel-price shock as a
//! red line, the day the new version reached every shop as a green one, a grey grid line every
//! 2 units of MAE and a tick every 10 days.

use std::io::BufWriter;
use std::path::Path;

const W: u32 = 900;
const H: u32 = 360;
const MARGIN: u32 = 30;
const WHITE: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [225, 225, 225];
const AXIS: [u8; 3] = [60, 60, 60];
const BLUE: [u8; 3] = [31, 119, 180];
const RED: [u8; 3] = [214, 39, 40];
const GREEN: [u8; 3] = [44, 160, 44];

struct Canvas(Vec<u8>);

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            let i = ((y as u32 * W + x as u32) * 3) as usize;
            self.0[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line `width` pixels thick (Bresenham, thickened by a square brush).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], width: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..width {
                for oy in 0..width {
                    self.set(x + ox - width / 2, y + oy - width / 2, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
}

/// Writes the chart of `mae` (one value per day, day 1 first) to `path`.
pub fn write(
    path: &Path,
    mae: &[f64],
    shock_day: u64,
    rolled_out_day: Option<u64>,
) -> std::io::Result<()> {
    let mut c = Canvas([WHITE; (W * H) as usize].concat());
    let (left, right, top, bottom) = (
        MARGIN as i64,
        (W - MARGIN) as i64,
        MARGIN as i64,
        (H - MARGIN) as i64,
    );
    let days = mae.len().max(2) as f64;
    let top_mae = mae
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(2.0f64, f64::max)
        * 1.1;
    let x_of = |day: f64| left + ((day - 1.0) / (days - 1.0) * (right - left) as f64) as i64;
    let y_of = |v: f64| bottom - (v / top_mae * (bottom - top) as f64) as i64;
    let mut g = 2.0;
    while g < top_mae {
        c.line((left, y_of(g)), (right, y_of(g)), GRID, 1);
        g += 2.0;
    }
    c.line((left, bottom), (right, bottom), AXIS, 2);
    c.line((left, top), (left, bottom), AXIS, 2);
    for d in (10..=mae.len()).step_by(10) {
        let x = x_of(d as f64);
        c.line((x, bottom), (x, bottom + 6), AXIS, 2);
    }
    let mark = |c: &mut Canvas, day: u64, colour| {
        let x = x_of(day as f64);
        // Dashed: 8 on, 6 off.
        let mut y = top;
        while y < bottom {
            c.line((x, y), (x, (y + 8).min(bottom)), colour, 2);
            y += 14;
        }
    };
    mark(&mut c, shock_day, RED);
    if let Some(d) = rolled_out_day {
        mark(&mut c, d, GREEN);
    }
    let points: Vec<(i64, i64)> = mae
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, v)| (x_of(i as f64 + 1.0), y_of(*v)))
        .collect();
    for pair in points.windows(2) {
        c.line(pair[0], pair[1], BLUE, 3);
    }
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), W, H);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(&c.0)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}
