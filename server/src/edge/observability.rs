//! The trace and logging extensions as Triton defines them (`/v2/trace/setting`,
//! `/v2/logging`, gRPC `TraceSetting` / `LogSettings`), over `telemetry::Controls`.
//! Both edges convert their wire values to these and back; the rules live here.
//!
//! Triton's trace settings map onto OpenTelemetry sampling: `trace_level`
//! `["OFF"]` samples nothing, `["TIMESTAMPS"]` samples; `trace_rate` N is one
//! trace in N (ratio 1/N); `trace_sample_ratio` gives the ratio exactly.
//! Triton's log switches map onto the tracing filter: `log_info`,
//! `log_warning`, `log_error` set the base level, `log_verbose_level` 1/2 turns
//! Switchyard's own debug/trace lines on; `log_filter` sets the filter itself.

use tracing::Level;
use tracing_subscriber::EnvFilter;

use crate::error::ApiError;
use crate::telemetry::{Controls, LogFormat};

/// One trace setting as the wire carries it: `trace_level` is a list, the rest single strings.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceValue {
    One(String),
    List(Vec<String>),
}

impl TraceValue {
    pub fn into_values(self) -> Vec<String> {
        match self {
            TraceValue::One(value) => vec![value],
            TraceValue::List(values) => values,
        }
    }
}

/// `None` clears a setting: it returns to what the process started with.
pub type TraceUpdate = (String, Option<Vec<String>>);

const TRACE_KEYS: &[&str] = &[
    "trace_level",
    "trace_rate",
    "trace_sample_ratio",
    "trace_count",
    "log_frequency",
    "trace_file",
    "trace_mode",
];

/// The trace settings in force, in Triton's key order.
pub fn trace_settings(controls: &Controls) -> Vec<(&'static str, TraceValue)> {
    let ratio = controls.sample_ratio();
    let level = if ratio > 0.0 { "TIMESTAMPS" } else { "OFF" };
    let rate = if ratio > 0.0 {
        (1.0 / ratio).round().max(1.0) as u64
    } else {
        0
    };
    let one = |value: String| TraceValue::One(value);
    vec![
        ("trace_level", TraceValue::List(vec![level.to_owned()])),
        ("trace_rate", one(rate.to_string())),
        ("trace_sample_ratio", one(ratio.to_string())),
        ("trace_count", one("-1".to_owned())),
        ("log_frequency", one("0".to_owned())),
        ("trace_file", one(String::new())),
        ("trace_mode", one("opentelemetry".to_owned())),
    ]
}

/// Applies trace setting changes (all or none), then returns the settings in force.
/// Per-model settings are refused: sampling is one ratio for the process.
pub fn update_trace_settings(
    controls: &Controls,
    model: Option<&str>,
    updates: Vec<TraceUpdate>,
) -> Result<Vec<(&'static str, TraceValue)>, ApiError> {
    if let Some(model) = model
        && !updates.is_empty()
    {
        return Err(ApiError::invalid(format!(
            "per-model trace settings are not offered (asked for `{model}`): sampling is one \
             ratio for the whole server; change it with POST /v2/trace/setting"
        )));
    }
    let mut ratio = controls.sample_ratio();
    let mut enabled = ratio > 0.0;
    let mut chosen_ratio: Option<f64> = None;
    for (key, value) in updates {
        let single = |values: &Vec<String>| -> Result<String, ApiError> {
            match values.as_slice() {
                [value] => Ok(value.trim().to_owned()),
                _ => Err(ApiError::invalid(format!(
                    "trace setting `{key}` takes one value, got {}",
                    values.len()
                ))),
            }
        };
        match (key.as_str(), value) {
            ("trace_level", None) => enabled = controls.initial_sample_ratio() > 0.0,
            ("trace_level", Some(levels)) => {
                enabled = trace_level_enables(&levels)?;
            }
            ("trace_rate", None) | ("trace_sample_ratio", None) => {
                chosen_ratio = Some(controls.initial_sample_ratio());
            }
            ("trace_rate", Some(values)) => {
                let rate: u64 = single(&values)?.parse().map_err(|_| {
                    ApiError::invalid(format!(
                        "trace_rate is a whole number N (one trace in N), got {:?}",
                        values[0]
                    ))
                })?;
                if rate == 0 {
                    return Err(ApiError::invalid(
                        "trace_rate 0 samples nothing; set trace_level [\"OFF\"] to stop tracing",
                    ));
                }
                chosen_ratio = Some(1.0 / rate as f64);
            }
            ("trace_sample_ratio", Some(values)) => {
                let parsed: f64 = single(&values)?.parse().map_err(|_| {
                    ApiError::invalid(format!(
                        "trace_sample_ratio is a number between 0 and 1, got {:?}",
                        values[0]
                    ))
                })?;
                if !(0.0..=1.0).contains(&parsed) {
                    return Err(ApiError::invalid(format!(
                        "trace_sample_ratio is a number between 0 and 1, got {parsed}"
                    )));
                }
                chosen_ratio = Some(parsed);
            }
            ("trace_count", values) => require_fixed(
                &key,
                values,
                "-1",
                "traces are not counted down; every request is sampled at the ratio",
            )?,
            ("log_frequency", values) => require_fixed(
                &key,
                values,
                "0",
                "spans go to the OTLP collector (--otlp-endpoint), not to trace files",
            )?,
            ("trace_file", values) => require_fixed(
                &key,
                values,
                "",
                "spans go to the OTLP collector (--otlp-endpoint), not to a file",
            )?,
            ("trace_mode", values) => require_fixed(
                &key,
                values,
                "opentelemetry",
                "Switchyard traces with OpenTelemetry only",
            )?,
            (other, _) => {
                return Err(ApiError::invalid(format!(
                    "unknown trace setting `{other}`; the settings are {}",
                    TRACE_KEYS.join(", ")
                )));
            }
        }
    }
    if let Some(chosen) = chosen_ratio {
        ratio = chosen;
        // Asking for a rate means tracing on, unless the same request turns it off.
        enabled = enabled || chosen > 0.0;
    }
    if !enabled {
        ratio = 0.0;
    } else if ratio <= 0.0 {
        // Turned on with no ratio given: the start-up ratio, or every trace.
        let initial = controls.initial_sample_ratio();
        ratio = if initial > 0.0 { initial } else { 1.0 };
    }
    controls
        .set_sample_ratio(ratio)
        .map_err(ApiError::invalid)?;
    Ok(trace_settings(controls))
}

fn trace_level_enables(levels: &[String]) -> Result<bool, ApiError> {
    let mut enabled = false;
    for level in levels {
        match level.trim().to_ascii_uppercase().as_str() {
            "OFF" if levels.len() == 1 => return Ok(false),
            "TIMESTAMPS" => enabled = true,
            "TENSORS" => {
                return Err(ApiError::invalid(
                    "trace_level TENSORS is not offered: spans carry timings, not tensor values",
                ));
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "trace_level takes [\"OFF\"] or [\"TIMESTAMPS\"], got {other:?}"
                )));
            }
        }
    }
    Ok(enabled)
}

fn require_fixed(
    key: &str,
    values: Option<Vec<String>>,
    only: &str,
    why: &str,
) -> Result<(), ApiError> {
    match values {
        None => Ok(()),
        Some(values) if values.len() == 1 && values[0] == only => Ok(()),
        Some(values) => Err(ApiError::invalid(format!(
            "{key} {values:?} is not offered ({why}); it can only be {only:?}"
        ))),
    }
}

/// One logging setting as the wire carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum LogValue {
    Bool(bool),
    Uint(u32),
    Text(String),
}

const LOG_KEYS: &[&str] = &[
    "log_file",
    "log_info",
    "log_warning",
    "log_error",
    "log_verbose_level",
    "log_format",
    "log_filter",
];

fn format_name(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Text => "default",
        LogFormat::Json => "json",
    }
}

/// The most detailed level the filter lets through anywhere (`None` = off).
fn finest_level(filter: &str) -> Option<Level> {
    EnvFilter::try_new(filter)
        .ok()
        .and_then(|parsed| parsed.max_level_hint())
        .and_then(|hint| hint.into_level())
}

/// The logging settings in force, in Triton's keys plus `log_filter`.
pub fn log_settings(controls: &Controls) -> Vec<(&'static str, LogValue)> {
    let filter = controls.log_filter();
    let finest = finest_level(&filter);
    let at_least = |level: Level| finest.is_some_and(|finest| finest >= level);
    let verbose = match finest {
        Some(Level::TRACE) => 2,
        Some(Level::DEBUG) => 1,
        _ => 0,
    };
    vec![
        ("log_file", LogValue::Text(String::new())),
        ("log_info", LogValue::Bool(at_least(Level::INFO))),
        ("log_warning", LogValue::Bool(at_least(Level::WARN))),
        ("log_error", LogValue::Bool(at_least(Level::ERROR))),
        ("log_verbose_level", LogValue::Uint(verbose)),
        (
            "log_format",
            LogValue::Text(format_name(controls.log_format()).to_owned()),
        ),
        ("log_filter", LogValue::Text(filter)),
    ]
}

/// Applies logging changes (all or none), then returns the settings in force.
/// Levels are nested as in `tracing`: `log_info` false with `log_warning`
/// true keeps warnings and errors.
pub fn update_log_settings(
    controls: &Controls,
    updates: Vec<(String, LogValue)>,
) -> Result<Vec<(&'static str, LogValue)>, ApiError> {
    let current = log_settings(controls);
    let flag = |key: &str| {
        current
            .iter()
            .any(|(name, value)| *name == key && *value == LogValue::Bool(true))
    };
    let (mut info, mut warning, mut error) =
        (flag("log_info"), flag("log_warning"), flag("log_error"));
    let mut verbose = match current
        .iter()
        .find(|(name, _)| *name == "log_verbose_level")
    {
        Some((_, LogValue::Uint(level))) => *level,
        _ => 0,
    };
    let mut levels_changed = false;
    let mut filter: Option<String> = None;
    let wrong_type = |key: &str, wanted: &str| {
        ApiError::invalid(format!("logging setting `{key}` takes a {wanted}"))
    };
    for (key, value) in updates {
        match key.as_str() {
            "log_info" | "log_warning" | "log_error" => {
                let LogValue::Bool(on) = value else {
                    return Err(wrong_type(&key, "boolean"));
                };
                match key.as_str() {
                    "log_info" => info = on,
                    "log_warning" => warning = on,
                    _ => error = on,
                }
                levels_changed = true;
            }
            "log_verbose_level" => {
                let LogValue::Uint(level) = value else {
                    return Err(wrong_type(&key, "whole number"));
                };
                verbose = level;
                levels_changed = true;
            }
            "log_filter" => {
                let LogValue::Text(text) = value else {
                    return Err(wrong_type(&key, "string"));
                };
                filter = Some(text);
            }
            "log_file" => match value {
                LogValue::Text(path) if path.is_empty() => {}
                _ => {
                    return Err(ApiError::invalid(
                        "log_file is not offered: logs go to stderr, where the container runtime collects them",
                    ));
                }
            },
            "log_format" => match value {
                LogValue::Text(format) if format == format_name(controls.log_format()) => {}
                _ => {
                    return Err(ApiError::invalid(format!(
                        "log_format is set at start with --log-format (text → \"default\", json → \"json\"); \
                         it is {:?} now",
                        format_name(controls.log_format())
                    )));
                }
            },
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown logging setting `{other}`; the settings are {}",
                    LOG_KEYS.join(", ")
                )));
            }
        }
    }
    let new_filter = match (filter, levels_changed) {
        (Some(_), true) => {
            return Err(ApiError::invalid(
                "give either log_filter or the log_info/log_warning/log_error/log_verbose_level switches, not both",
            ));
        }
        (Some(filter), false) => Some(filter),
        (None, true) => Some(filter_for(info, warning, error, verbose)),
        (None, false) => None,
    };
    if let Some(filter) = new_filter {
        controls
            .set_log_filter(&filter)
            .map_err(ApiError::invalid)?;
    }
    Ok(log_settings(controls))
}

fn filter_for(info: bool, warning: bool, error: bool, verbose: u32) -> String {
    let base = if info {
        "info"
    } else if warning {
        "warn"
    } else if error {
        "error"
    } else {
        "off"
    };
    match verbose {
        0 => base.to_owned(),
        1 => format!("{base},switchyard=debug"),
        _ => format!("{base},switchyard=trace"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TelemetryConfig;

    fn controls(ratio: f64) -> std::sync::Arc<Controls> {
        Controls::detached(&TelemetryConfig {
            log: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            trace_sample_ratio: ratio,
        })
    }

    fn value<'a, V>(settings: &'a [(&'static str, V)], key: &str) -> &'a V {
        &settings.iter().find(|(name, _)| *name == key).unwrap().1
    }

    #[test]
    fn trace_rate_and_level_map_onto_the_sampling_ratio() {
        let c = controls(1.0);
        let set = |key: &str, v: &[&str]| {
            (
                key.to_owned(),
                Some(v.iter().map(|s| s.to_string()).collect()),
            )
        };
        let s = update_trace_settings(&c, None, vec![set("trace_rate", &["100"])]).unwrap();
        assert_eq!(c.sample_ratio(), 0.01);
        assert_eq!(*value(&s, "trace_rate"), TraceValue::One("100".into()));
        update_trace_settings(&c, None, vec![set("trace_level", &["OFF"])]).unwrap();
        assert_eq!(c.sample_ratio(), 0.0);
        let s = update_trace_settings(&c, None, vec![set("trace_level", &["TIMESTAMPS"])]).unwrap();
        assert_eq!(c.sample_ratio(), 1.0, "back on at the start-up ratio");
        assert_eq!(
            *value(&s, "trace_level"),
            TraceValue::List(vec!["TIMESTAMPS".into()])
        );
        update_trace_settings(&c, None, vec![set("trace_sample_ratio", &["0.25"])]).unwrap();
        assert_eq!(c.sample_ratio(), 0.25);
        update_trace_settings(&c, None, vec![("trace_sample_ratio".into(), None)]).unwrap();
        assert_eq!(c.sample_ratio(), 1.0, "cleared → start-up value");
    }

    #[test]
    fn bad_trace_settings_change_nothing_and_say_why() {
        let c = controls(0.5);
        let set = |key: &str, v: &str| (key.to_owned(), Some(vec![v.to_owned()]));
        for (update, needle) in [
            (set("trace_rate", "x"), "whole number"),
            (set("trace_rate", "0"), "OFF"),
            (set("trace_sample_ratio", "1.5"), "between 0 and 1"),
            (set("trace_level", "TENSORS"), "not offered"),
            (set("trace_file", "/tmp/t.json"), "OTLP"),
            (set("trace_count", "10"), "not offered"),
            (set("bogus", "1"), "unknown trace setting `bogus`"),
        ] {
            let err =
                update_trace_settings(&c, None, vec![set("trace_rate", "2"), update]).unwrap_err();
            assert!(err.message.contains(needle), "{}", err.message);
            assert_eq!(c.sample_ratio(), 0.5, "all or nothing");
        }
        let err = update_trace_settings(&c, Some("mlp"), vec![set("trace_rate", "2")]).unwrap_err();
        assert!(err.message.contains("per-model"), "{}", err.message);
        assert!(update_trace_settings(&c, Some("mlp"), vec![]).is_ok());
    }

    #[test]
    fn log_switches_build_a_filter_and_a_filter_reads_back_as_switches() {
        let c = controls(1.0);
        let s = log_settings(&c);
        assert_eq!(*value(&s, "log_info"), LogValue::Bool(true));
        assert_eq!(*value(&s, "log_verbose_level"), LogValue::Uint(0));
        update_log_settings(&c, vec![("log_verbose_level".into(), LogValue::Uint(1))]).unwrap();
        assert_eq!(c.log_filter(), "info,switchyard=debug");
        update_log_settings(
            &c,
            vec![
                ("log_info".into(), LogValue::Bool(false)),
                ("log_verbose_level".into(), LogValue::Uint(0)),
            ],
        )
        .unwrap();
        assert_eq!(c.log_filter(), "warn");
        let s = update_log_settings(
            &c,
            vec![("log_filter".into(), LogValue::Text("trace".into()))],
        )
        .unwrap();
        assert_eq!(*value(&s, "log_verbose_level"), LogValue::Uint(2));
        for (update, needle) in [
            (
                ("log_filter".into(), LogValue::Text("=[".into())),
                "log filter",
            ),
            (
                ("log_file".into(), LogValue::Text("/tmp/x".into())),
                "stderr",
            ),
            (
                ("log_format".into(), LogValue::Text("ISO8601".into())),
                "--log-format",
            ),
            (("log_info".into(), LogValue::Uint(1)), "boolean"),
            (
                ("nope".into(), LogValue::Bool(true)),
                "unknown logging setting",
            ),
        ] {
            let err = update_log_settings(&c, vec![update]).unwrap_err();
            assert!(err.message.contains(needle), "{}", err.message);
            assert_eq!(c.log_filter(), "trace");
        }
    }
}
