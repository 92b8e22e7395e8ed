//! The side-by-side benchmark's report (`switchyard-load bench-report`): reads
//! `bench/run.py`'s results and draws, per protocol, throughput, server CPU
//! per request and latency against concurrency for every server, with the raw
//! runtime and the protocol floor as reference lines. Writes one
//! self-contained HTML page and the same charts as SVG files.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::chart::{Chart, Series, XAxis, YAxis};

/// One measured row, as `bench/run.py` writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub server: String,
    pub protocol: String,
    pub concurrency: u32,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_request: f64,
    #[serde(default)]
    pub errors: u64,
}

/// The in-process runtime at one batch size.
#[derive(Debug, Clone, Deserialize)]
pub struct Raw {
    pub batch: u32,
    pub rows_per_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Results {
    #[serde(default)]
    pub raw: Vec<Raw>,
    pub rows: Vec<Row>,
    /// The protocol alone: the server's health endpoint, no model (`http-live`, `grpc-live`).
    #[serde(default)]
    pub floor: Vec<Row>,
}

/// A chart file and its SVG.
pub struct Figure {
    pub file: String,
    pub svg: String,
}

/// Which floor measures a model protocol's own cost.
fn floor_protocol(protocol: &str) -> &'static str {
    if protocol.starts_with("grpc") {
        "grpc-live"
    } else {
        "http-live"
    }
}

fn flat(name: String, value: f64, concurrencies: &[f64]) -> Option<Series> {
    (value.is_finite() && value > 0.0 && !concurrencies.is_empty())
        .then(|| Series::reference(name, concurrencies.iter().map(|&c| (c, value)).collect()))
}

/// The three figures of every protocol in the results.
pub fn figures(results: &Results) -> Vec<Figure> {
    let protocols: BTreeSet<&str> = results.rows.iter().map(|r| r.protocol.as_str()).collect();
    let raw_b1 = results
        .raw
        .iter()
        .find(|r| r.batch == 1)
        .map(|r| r.rows_per_s);
    let raw_best = results
        .raw
        .iter()
        .map(|r| r.rows_per_s)
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        });
    let mut out = Vec::new();
    for protocol in protocols {
        let rows: Vec<&Row> = results
            .rows
            .iter()
            .filter(|r| r.protocol == protocol)
            .collect();
        let mut servers: Vec<&str> = Vec::new();
        for row in &rows {
            if !servers.contains(&row.server.as_str()) {
                servers.push(&row.server);
            }
        }
        let mut concurrencies: Vec<f64> = rows.iter().map(|r| f64::from(r.concurrency)).collect();
        concurrencies.sort_by(f64::total_cmp);
        concurrencies.dedup();
        let per_server = |value: fn(&Row) -> f64| -> Vec<Series> {
            servers
                .iter()
                .map(|server| {
                    let mut points: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| r.server == *server)
                        .map(|r| (f64::from(r.concurrency), value(r)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series::new(*server, points)
                })
                .collect()
        };
        let floor: Vec<&Row> = results
            .floor
            .iter()
            .filter(|r| r.protocol == floor_protocol(protocol))
            .collect();
        let floor_series = |value: fn(&Row) -> f64| -> Option<Series> {
            let mut points: Vec<(f64, f64)> = floor
                .iter()
                .map(|r| (f64::from(r.concurrency), value(r)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!points.is_empty())
                .then(|| Series::reference(format!("floor ({})", floor_protocol(protocol)), points))
        };

        let mut throughput = per_server(|r| r.rps);
        throughput
            .extend(raw_b1.and_then(|v| flat("raw runtime, batch 1".into(), v, &concurrencies)));
        throughput.extend(
            raw_best.and_then(|v| flat("raw runtime, best batch".into(), v, &concurrencies)),
        );
        throughput.extend(floor_series(|r| r.rps));
        let mut cpu = per_server(|r| r.cpu_us_per_request);
        cpu.extend(
            raw_b1.and_then(|v| flat("raw runtime, batch 1".into(), 1e6 / v, &concurrencies)),
        );
        cpu.extend(
            raw_best.and_then(|v| flat("raw runtime, per row".into(), 1e6 / v, &concurrencies)),
        );
        cpu.extend(floor_series(|r| r.cpu_us_per_request));
        let mut latency: Vec<Series> = Vec::new();
        for (group, series) in per_server(|r| r.p50_ms).into_iter().enumerate() {
            latency.push(Series {
                group: Some(group),
                ..Series::new(format!("{} p50", series.name), series.points)
            });
        }
        for (group, series) in per_server(|r| r.p99_ms).into_iter().enumerate() {
            latency.push(Series {
                group: Some(group),
                ..Series::reference(format!("{} p99", series.name), series.points)
            });
        }
        let title_t = format!("{protocol}: throughput");
        let title_c = format!("{protocol}: server CPU per request");
        let title_l = format!("{protocol}: latency (p50 solid, p99 dashed)");
        for (kind, title, y_label, y_axis, series) in [
            (
                "throughput",
                &title_t,
                "requests/s",
                YAxis::Linear,
                throughput,
            ),
            ("cpu", &title_c, "server CPU (µs/request)", YAxis::Auto, cpu),
            ("latency", &title_l, "latency (ms)", YAxis::Log, latency),
        ] {
            let chart = Chart {
                title,
                x_label: "concurrency",
                y_label,
                x_axis: XAxis::Log2,
                y_axis,
                series,
            };
            out.push(Figure {
                file: format!("{protocol}-{kind}.svg"),
                svg: chart.svg(),
            });
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole page: every figure inline, then the table of rows.
pub fn html(results: &Results, figures: &[Figure]) -> String {
    let mut body = String::new();
    for figure in figures {
        body.push_str(&figure.svg);
        body.push('\n');
    }
    let mut table = String::from(
        "<table><tr><th>server</th><th>protocol</th><th>concurrency</th><th>req/s</th>\
         <th>p50 ms</th><th>p99 ms</th><th>server CPU µs/req</th><th>errors</th></tr>\n",
    );
    for r in results.rows.iter().chain(&results.floor) {
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.3}</td><td>{:.3}</td><td>{:.0}</td><td>{}</td></tr>\n",
            escape(&r.server),
            escape(&r.protocol),
            r.concurrency,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us_per_request,
            r.errors
        ));
    }
    table.push_str("</table>\n");
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Switchyard side-by-side benchmark</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}svg{{display:block;margin:1em 0}}</style></head><body>
<h1>Side-by-side benchmark</h1>
<p>Same machine, one run; the server and the load generator pinned to different cores. Dashed: reference lines (the raw in-process runtime, the protocol floor) and p99.</p>
{body}<h2>All rows</h2>
{table}</body></html>
"#
    )
}

/// Reads `input`, writes the page to `html_path` and each figure into `svg_dir`.
pub fn write(input: &Path, html_path: &Path, svg_dir: Option<&Path>) -> Result<usize> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let results: Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", input.display()))?;
    let figures = figures(&results);
    std::fs::write(html_path, html(&results, &figures))
        .with_context(|| format!("writing {}", html_path.display()))?;
    if let Some(dir) = svg_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for figure in &figures {
            let path = dir.join(&figure.file);
            std::fs::write(&path, &figure.svg)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(figures.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(server: &str, protocol: &str, concurrency: u32, rps: f64, cpu: f64) -> Row {
        Row {
            server: server.into(),
            protocol: protocol.into(),
            concurrency,
            rps,
            p50_ms: 64.0 / rps * 1000.0,
            p99_ms: 2.0 * 64.0 / rps * 1000.0,
            cpu_us_per_request: cpu,
            errors: 0,
        }
    }

    #[test]
    fn every_protocol_gets_three_figures_with_every_server_and_the_references() {
        let mut rows = Vec::new();
        for c in [1, 8, 64, 256] {
            rows.push(row("switchyard", "grpc", c, 5000.0 + f64::from(c), 180.0));
            rows.push(row(
                "switchyard+batching",
                "grpc",
                c,
                15000.0 + f64::from(c),
                60.0,
            ));
            rows.push(row("mlserver", "grpc", c, 900.0, 600.0));
            rows.push(row("switchyard", "http-json", c, 5200.0, 170.0));
        }
        let results = Results {
            raw: vec![
                Raw {
                    batch: 1,
                    rows_per_s: 14_200.0,
                },
                Raw {
                    batch: 32,
                    rows_per_s: 39_000.0,
                },
            ],
            rows,
            floor: vec![row("floor", "grpc-live", 64, 90_000.0, 12.0)],
        };
        let figures = figures(&results);
        let names: Vec<&str> = figures.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(
            names,
            [
                "grpc-throughput.svg",
                "grpc-cpu.svg",
                "grpc-latency.svg",
                "http-json-throughput.svg",
                "http-json-cpu.svg",
                "http-json-latency.svg"
            ]
        );
        let grpc = &figures[0].svg;
        for label in [
            "switchyard+batching",
            "mlserver",
            "raw runtime, batch 1",
            "raw runtime, best batch",
            "floor (grpc-live)",
        ] {
            assert!(grpc.contains(label), "{label} missing");
        }
        // The concurrency axis names the concurrencies measured.
        let labels = crate::chart::texts(grpc);
        for c in ["1", "8", "64", "256"] {
            assert!(
                labels.iter().any(|t| t.2 == c),
                "concurrency {c} not labelled: {labels:?}"
            );
        }
        let page = html(&results, &figures);
        assert_eq!(page.matches("<svg").count(), 6);
        assert!(!page.contains("<script"));
    }
}
