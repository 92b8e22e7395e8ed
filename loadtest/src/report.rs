//! Human-readable and HTML reports of a `Summary`. The HTML report is one
//! self-contained file with inline SVG charts (no scripts, no network).

use std::fmt::Write as _;

use crate::stats::Summary;

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

/// One line of a chart: name, colour, (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart of `series` over a shared x axis.
fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 300.0, 70.0, 40.0, 30.0, 20.0);
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let (mut x_max, mut y_max) = (0f64, 0f64);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let sx = |x: f64| left + (x / x_max) * (w - left - right);
    let sy = |y: f64| h - bottom - (y / y_max) * (h - bottom - top);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<text x="{left}" y="18" font-size="13" font-weight="bold">{}</text>
<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#333"/>
<text x="{cx}" y="{lx}" text-anchor="middle">{}</text>
<text x="14" y="{cy}" text-anchor="middle" transform="rotate(-90 14 {cy})">{}</text>
"##,
        escape(title),
        escape(x_label),
        escape(y_label),
        b = h - bottom,
        r = w - right,
        cx = (left + w - right) / 2.0,
        lx = h - 6.0,
        cy = (top + h - bottom) / 2.0,
    );
    for i in 0..=4 {
        let y = y_max * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{:.3}</text><line x1="{left}" y1="{2}" x2="{}" y2="{2}" stroke="#eee"/>"##,
            left - 4.0,
            sy(y) + 4.0,
            sy(y),
            w - right,
        );
        let _ = y;
    }
    for i in 0..=4 {
        let x = x_max * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.4}</text>"#,
            sx(x),
            h - bottom + 14.0,
            x
        );
    }
    for (n, (name, colour, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{colour}">{}</text>"#,
            path.join(" "),
            w - right - 120.0,
            top + 14.0 * (n as f64 + 1.0),
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn html(summary: &Summary, label: &str) -> String {
    let throughput: Vec<(f64, f64)> = summary
        .timeline
        .iter()
        .map(|p| (p.second as f64, p.ok as f64))
        .collect();
    let errors: Vec<(f64, f64)> = summary
        .timeline
        .iter()
        .map(|p| (p.second as f64, p.errors as f64))
        .collect();
    let p50: Vec<(f64, f64)> = summary
        .timeline
        .iter()
        .map(|p| (p.second as f64, p.p50_ms))
        .collect();
    let p99: Vec<(f64, f64)> = summary
        .timeline
        .iter()
        .map(|p| (p.second as f64, p.p99_ms))
        .collect();
    // Percentile distribution on a "nines" axis: 0.99 → 2, 0.999 → 3.
    let dist: Vec<(f64, f64)> = summary
        .distribution
        .iter()
        .map(|&(q, ms)| {
            (
                if q >= 1.0 {
                    5.0
                } else {
                    (-(1.0 - q).log10()).min(5.0)
                },
                ms,
            )
        })
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>switchyard-load: {t}</title>
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>switchyard-load</h1><pre>{text}</pre>
{c1}{c2}{c3}
<h2>Raw summary</h2><pre>{json}</pre></body></html>
"#,
        t = escape(label),
        text = escape(&text(summary, label)),
        c1 = line_chart(
            "Throughput per second",
            "second",
            "requests",
            &[("ok", "#1f77b4", throughput), ("errors", "#d62728", errors)]
        ),
        c2 = line_chart(
            "Latency per second",
            "second",
            "ms",
            &[("p50", "#2ca02c", p50), ("p99", "#ff7f0e", p99)]
        ),
        c3 = line_chart(
            "Latency by percentile (x: number of nines, 2 = p99)",
            "nines",
            "ms",
            &[("latency", "#9467bd", dist)]
        ),
        json = escape(&serde_json::to_string_pretty(summary).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

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
        assert!(page.contains("http_429"));
    }
}
