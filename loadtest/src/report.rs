//! Human-readable and HTML reports of a `Summary`. The HTML report is one
//! self-contained file with inline SVG charts (`chart`; no scripts, no network).

use std::fmt::Write as _;

use crate::chart::{Chart, Series, XAxis, YAxis};
use crate::stats::{Summary, TimelinePoint};

pub fn text(summary: &Summary, label: &str) -> String {
    let l = &summary.latency_ms;
    let mut out = String::new();
    let _ = writeln!(out, "{label}");
    let _ = writeln!(
        out,
        "  requests {} (ok {}, errors {}) in {:.2}s: {:.1} req/s",
        summary.requests, summary.ok, summary.errors, summary.elapsed_s, summary.throughput_rps
    );
    let _ = writeln!(
        out,
        "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
    let _ = writeln!(
        out,
        "  client CPU {:.2}s ({:.1} µs/request)",
        summary.client_cpu_s, summary.client_cpu_us_per_request
    );
    for (kind, count) in &summary.errors_by_kind {
        let _ = writeln!(out, "  error {kind}: {count}");
    }
    if summary.errors > 0 {
        let e = &summary.error_latency_ms;
        let _ = writeln!(
            out,
            "  error latency ms: p50 {:.3}  p99 {:.3}  max {:.3}",
            e.p50, e.p99, e.max
        );
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Per-second counts as rates: a last, partial second is scaled by the part
/// of it that was measured (left out when under a fifth of a second, where
/// scaling would only amplify noise).
pub fn per_second(summary: &Summary, count: impl Fn(&TimelinePoint) -> u64) -> Vec<(f64, f64)> {
    summary
        .timeline
        .iter()
        .filter_map(|p| {
            let covered = (summary.elapsed_s - p.second as f64).clamp(0.0, 1.0);
            if covered < 0.2 {
                return None;
            }
            Some((p.second as f64 + covered / 2.0, count(p) as f64 / covered))
        })
        .collect()
}

/// A quantile as "nines": 0.99 → 2, 0.999 → 3; the maximum sits at 5.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        5.0
    } else {
        (-(1.0 - q).log10()).clamp(0.0, 5.0)
    }
}

/// The report's three charts, as SVG.
pub fn charts(summary: &Summary) -> [String; 3] {
    let seconds = |f: fn(&TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        summary
            .timeline
            .iter()
            .filter(|p| (summary.elapsed_s - p.second as f64) >= 0.2 && p.ok > 0)
            .map(|p| (p.second as f64 + 0.5, f(p)))
            .collect()
    };
    let throughput = Chart {
        title: "Throughput per second",
        x_label: "time (s)",
        y_label: "requests/s",
        x_axis: XAxis::Linear,
        y_axis: YAxis::Linear,
        series: vec![
            Series::new("ok", per_second(summary, |p| p.ok)),
            Series::new("errors", per_second(summary, |p| p.errors)),
        ],
    };
    let latency = Chart {
        title: "Latency per second",
        x_label: "time (s)",
        y_label: "latency (ms)",
        x_axis: XAxis::Linear,
        y_axis: YAxis::Auto,
        series: vec![
            Series::new("p50", seconds(|p| p.p50_ms)),
            Series::new("p99", seconds(|p| p.p99_ms)),
        ],
    };
    let labels: Vec<(f64, String)> = [
        (0.5, "p50"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
        (1.0, "max"),
    ]
    .iter()
    .map(|&(q, name)| (nines(q), name.to_owned()))
    .collect();
    let distribution = Chart {
        title: "Latency by percentile",
        x_label: "percentile",
        y_label: "latency (ms)",
        x_axis: XAxis::Labelled(labels),
        y_axis: YAxis::Log,
        series: vec![Series::new(
            "latency",
            summary
                .distribution
                .iter()
                .filter(|(q, _)| *q >= 0.5)
                .map(|&(q, ms)| (nines(q), ms))
                .collect(),
        )],
    };
    [throughput.svg(), latency.svg(), distribution.svg()]
}

pub fn html(summary: &Summary, label: &str) -> String {
    let [c1, c2, c3] = charts(summary);
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>switchyard-load: {t}</title>
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em}}svg{{display:block;margin:1em 0}}</style></head><body>
<h1>switchyard-load</h1><pre>{text}</pre>
{c1}{c2}{c3}
<h2>Raw summary</h2><pre>{json}</pre></body></html>
"#,
        t = escape(label),
        text = escape(&text(summary, label)),
        json = escape(&serde_json::to_string_pretty(summary).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

    /// (pixel y, value) of every numeric label left of the plot: the y axis's ticks.
    fn y_ticks(svg: &str) -> Vec<(f64, f64)> {
        let value = |text: &str| -> Option<f64> {
            let (digits, scale) = match text.strip_suffix('k') {
                Some(d) => (d, 1e3),
                None => match text.strip_suffix('M') {
                    Some(d) => (d, 1e6),
                    None => (text, 1.0),
                },
            };
            digits.parse::<f64>().ok().map(|v| v * scale)
        };
        crate::chart::texts(svg)
            .into_iter()
            .filter(|(x, _, _)| *x < 80.0)
            .filter_map(|(_, y, content)| Some((y, value(&content)?)))
            .collect()
    }

    /// The y ticks increase upwards and span the data.
    fn assert_axis_spans(svg: &str, values: &[f64], what: &str) {
        let mut ticks = y_ticks(svg);
        assert!(ticks.len() >= 3, "{what}: ticks {ticks:?}");
        ticks.sort_by(|a, b| b.0.total_cmp(&a.0)); // bottom first
        for pair in ticks.windows(2) {
            assert!(
                pair[1].1 > pair[0].1,
                "{what}: ticks must grow upwards: {ticks:?}"
            );
        }
        let top = ticks.last().map_or(0.0, |t| t.1);
        let bottom = ticks[0].1;
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            top >= max,
            "{what}: highest tick {top} is below the data's {max}: {ticks:?}"
        );
        assert!(
            bottom <= min,
            "{what}: lowest tick {bottom} is above the data's {min}: {ticks:?}"
        );
    }

    /// ~16,400 req/s for 6.5 s, latencies 3-22 ms: the run the pixel-coordinate bug was seen on.
    fn busy_run() -> Summary {
        let mut r = Recorder::default();
        let mut n = 0u64;
        for ms in 0..6500u64 {
            for _ in 0..16 {
                let latency = Duration::from_micros(3000 + (n * 7919) % 19_000);
                r.ok(latency, Duration::from_millis(ms));
                n += 1;
            }
            if ms % 500 == 0 {
                r.error(
                    "http_429",
                    Duration::from_micros(80),
                    Duration::from_millis(ms),
                );
            }
        }
        r.summary(Duration::from_millis(6500), 0.1)
    }

    #[test]
    fn axes_read_the_data_not_pixels() {
        let summary = busy_run();
        let [throughput, latency, distribution] = charts(&summary);
        let rates: Vec<f64> = per_second(&summary, |p| p.ok).iter().map(|p| p.1).collect();
        assert_axis_spans(&throughput, &rates, "throughput");
        let p99: Vec<f64> = summary.timeline.iter().map(|p| p.p99_ms).collect();
        let p50: Vec<f64> = summary.timeline.iter().map(|p| p.p50_ms).collect();
        assert_axis_spans(&latency, &[p50, p99].concat(), "latency");
        let quantiles: Vec<f64> = summary
            .distribution
            .iter()
            .filter(|(q, _)| *q >= 0.5)
            .map(|p| p.1)
            .collect();
        assert_axis_spans(&distribution, &quantiles, "percentiles");
        let labels = crate::chart::texts(&distribution);
        for label in ["p50", "p90", "p99", "p99.9", "max"] {
            assert!(
                labels.iter().any(|t| t.2 == label),
                "{label} missing: {labels:?}"
            );
        }
        assert!(throughput.contains("requests/s") && latency.contains("latency (ms)"));
    }

    #[test]
    fn a_partial_last_second_is_scaled_not_a_drop_to_zero() {
        let summary = busy_run();
        let rates = per_second(&summary, |p| p.ok);
        assert_eq!(rates.len(), 7, "six whole seconds and the half one");
        for (at, rate) in &rates {
            assert!((rate - 16_000.0).abs() < 200.0, "{at}: {rate} req/s");
        }
    }

    #[test]
    fn html_report_is_self_contained_with_three_charts() {
        let mut r = Recorder::default();
        for i in 0..100u64 {
            r.ok(
                Duration::from_micros(100 + i),
                Duration::from_millis(i * 20),
            );
        }
        r.error(
            "http_429",
            Duration::from_micros(80),
            Duration::from_millis(5),
        );
        let page = html(&r.summary(Duration::from_secs(2), 0.1), "mlp <grpc>");
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(page.contains("mlp &lt;grpc&gt;"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
        assert!(page.contains("http_429"));
    }
}
