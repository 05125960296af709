//! Latency percentile plots as self-contained SVG files, in the style of HdrHistogram/wrk2 plots:
//! the x axis is the percentile on a log scale of 1/(1-p) (0%, 90%, 99%, 99.9%, ...), the y axis
//! the latency in microseconds. Hand-written SVG, no dependencies; it does not embed fonts or
//! scripts, and opens in any browser.

use std::fmt::Write;
use std::path::Path;

use hdrhistogram::Histogram;

use super::BenchError;

/// One line of the plot.
pub struct Series<'a> {
    pub name: &'a str,
    pub histogram: &'a Histogram<u64>,
}

const W: f64 = 900.0;
const H: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Renders the series as an SVG document.
pub fn render(title: &str, series: &[Series<'_>]) -> String {
    // Decades of 1/(1-p) to show: enough for the sample count, 2..=6 (99% .. 99.9999%).
    let max_count = series.iter().map(|s| s.histogram.len()).max().unwrap_or(0);
    let decades = ((max_count.max(1) as f64).log10().ceil() as u32).clamp(2, 6);
    let x_max = f64::from(decades);
    let max_us = series
        .iter()
        .map(|s| s.histogram.max() as f64 / 1_000.0)
        .fold(0.0, f64::max);
    let min_us = series
        .iter()
        .filter(|s| !s.histogram.is_empty())
        .map(|s| s.histogram.min() as f64 / 1_000.0)
        .fold(f64::INFINITY, f64::min);
    let median_us = series
        .iter()
        .filter(|s| !s.histogram.is_empty())
        .map(|s| s.histogram.value_at_quantile(0.5) as f64 / 1_000.0)
        .fold(f64::INFINITY, f64::min);
    // A tail far above the median flattens a linear plot: switch to a log y axis then.
    let log_y = median_us.is_finite() && max_us > 20.0 * median_us.max(1e-3);
    let (y_lo, y_hi) = if log_y {
        (
            10f64.powf(min_us.max(0.1).log10().floor()),
            10f64.powf(max_us.log10().ceil()),
        )
    } else {
        (0.0, nice_ceiling(max_us))
    };
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + x.clamp(0.0, x_max) / x_max * plot_w;
    let frac = |us: f64| {
        if log_y {
            (us.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10())
        } else {
            (us - y_lo) / (y_hi - y_lo)
        }
    };
    let py = |us: f64| TOP + plot_h - frac(us).clamp(0.0, 1.0) * plot_h;
    let y_ticks: Vec<f64> = if log_y {
        let mut t = Vec::new();
        let mut decade = y_lo;
        while decade < y_hi * 1.001 {
            for m in [1.0, 2.0, 5.0] {
                if m * decade <= y_hi * 1.001 {
                    t.push(m * decade);
                }
            }
            decade *= 10.0;
        }
        t
    } else {
        (0..=5).map(|i| y_hi * f64::from(i) / 5.0).collect()
    };

    let mut s = String::with_capacity(16 * 1024);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Vertical grid: one line per decade of the percentile axis.
    for d in 0..=decades {
        let x = px(f64::from(d));
        let label = percentile_label(d);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    // Horizontal grid.
    for &us in &y_ticks {
        let y = py(us);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            format_us(us)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        H - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency (µs{})</text>"#,
        TOP + plot_h / 2.0,
        if log_y { ", log scale" } else { "" }
    );
    for (i, serie) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        if !serie.histogram.is_empty() {
            for v in serie.histogram.iter_quantiles(10) {
                let q = v.quantile_iterated_to();
                let x = if q >= 1.0 {
                    x_max
                } else {
                    (1.0 / (1.0 - q)).log10()
                };
                let us = v.value_iterated_to() as f64 / 1_000.0;
                let _ = write!(points, "{:.1},{:.1} ", px(x), py(us));
                if x >= x_max {
                    break;
                }
            }
            // The maximum, drawn at the right edge.
            let _ = write!(
                points,
                "{:.1},{:.1}",
                px(x_max),
                py(serie.histogram.max() as f64 / 1_000.0)
            );
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>"#
        );
        let ly = TOP + 18.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{} (n={})</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(serie.name),
            serie.histogram.len()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes the plot to `path`.
pub fn write(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), BenchError> {
    std::fs::write(path, render(title, series)).map_err(|source| BenchError::Plot {
        path: path.display().to_string(),
        source,
    })
}

fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".into(),
        1 => "90%".into(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace("99.%", "99%"),
    }
}

fn format_us(us: f64) -> String {
    if us >= 100.0 || us == 0.0 || us.fract() == 0.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `v` (at least 1 µs).
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1.0);
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::new_histogram;

    #[test]
    fn labels_and_scale() {
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(4), "99.99%");
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
    }

    #[test]
    fn renders_a_document() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap();
        }
        let svg = render(
            "a <title>",
            &[Series {
                name: "rtt",
                histogram: &h,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;title&gt;") && svg.contains("<polyline"));
        assert!(svg.contains("99.9%"));
    }
}
