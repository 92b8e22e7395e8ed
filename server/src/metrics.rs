//! Every metric the server exports: names, label sets and buckets live here
//! and nowhere else. Labels stay low-cardinality (model, version, protocol,
//! outcome); unknown model names are never used as label values.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    model_ready: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Inference requests by outcome.",
            ),
            &["model", "version", "protocol", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from a decoded inference request to its response, in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "version", "protocol"],
        )?;
        let model_ready = IntGaugeVec::new(
            Opts::new(
                "switchyard_model_ready",
                "1 when the model version is loaded and serving.",
            ),
            &["model", "version"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(model_ready.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            model_ready,
        })
    }

    /// Records one finished inference request. `model`/`version` are empty when
    /// the request named no known model.
    pub fn observe_request(
        &self,
        model: &str,
        version: &str,
        protocol: &str,
        outcome: &str,
        elapsed: Duration,
    ) {
        self.requests
            .with_label_values(&[model, version, protocol, outcome])
            .inc();
        if outcome == "success" {
            self.latency
                .with_label_values(&[model, version, protocol])
                .observe(elapsed.as_secs_f64());
        }
    }

    pub fn set_model_ready(&self, model: &str, version: &str, ready: bool) {
        if ready {
            self.model_ready.with_label_values(&[model, version]).set(1);
        } else {
            // Dropping the series keeps unloaded versions from lingering.
            let _ = self.model_ready.remove_label_values(&[model, version]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
