//! The CloudEvents sink, in KServe's logger format: each record becomes an
//! `org.kubeflow.serving.inference.request` and an `….response` event with the
//! same `ce-id` (binary content mode: `ce-*` headers, the v2 JSON body), plus
//! KServe's `ce-inferenceservicename`, `ce-component`, `ce-endpoint`. Up to
//! `concurrency` deliveries run at once over one keep-alive client; a failing
//! delivery is retried with backoff for `retry_for`, then dropped and counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{CaptureSettings, Record, next_batch};
use crate::metrics::CaptureSinkMetrics;

pub(super) struct CloudEventsSink {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    source: String,
    retry_for: Duration,
    concurrency: usize,
    metrics: CaptureSinkMetrics,
}

const REQUEST_TYPE: &str = "org.kubeflow.serving.inference.request";
const RESPONSE_TYPE: &str = "org.kubeflow.serving.inference.response";

impl CloudEventsSink {
    pub(super) fn new(
        url: &str,
        settings: &CaptureSettings,
        metrics: CaptureSinkMetrics,
    ) -> Result<Self, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--capture-url {url}: an http:// or https:// URL"));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("--capture-ca-file {}: {e}", ca.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("--capture-ca-file {}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(certificate);
        }
        Ok(CloudEventsSink {
            client: builder.build().map_err(|e| format!("--capture-url: {e}"))?,
            url: url.to_owned(),
            token: settings.token.clone(),
            source: settings.source.clone(),
            retry_for: settings.retry_for,
            concurrency: settings.concurrency.max(1),
            metrics,
        })
    }

    pub(super) async fn run(
        self,
        mut records: mpsc::Receiver<Arc<Record>>,
        stop: CancellationToken,
    ) {
        let sink = Arc::new(self);
        while let Some(batch) = next_batch(&mut records, &stop, sink.concurrency).await {
            sink.metrics.queue.sub(batch.len() as i64);
            let deliveries = batch.into_iter().map(|record| {
                let sink = sink.clone();
                let stop = stop.clone();
                async move { sink.deliver(&record, &stop).await }
            });
            futures::future::join_all(deliveries).await;
        }
    }

    async fn deliver(&self, record: &Record, stop: &CancellationToken) {
        let events = [
            (REQUEST_TYPE, record.request_body()),
            (RESPONSE_TYPE, record.response_body()),
        ];
        let mut delivered = true;
        for (kind, body) in events {
            let Some(body) = body else { continue };
            let body = serde_json::to_vec(&body).unwrap_or_default();
            if !self.post(record, kind, body, stop).await {
                delivered = false;
            }
        }
        if delivered {
            self.metrics.records.inc();
        } else {
            self.metrics.sink_error.inc();
        }
    }

    /// Posts one event, retrying with backoff; false when it never got through.
    async fn post(
        &self,
        record: &Record,
        kind: &str,
        body: Vec<u8>,
        stop: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut request = self
                .client
                .post(&self.url)
                .header("ce-specversion", "1.0")
                .header("ce-id", &record.id)
                .header("ce-source", &self.source)
                .header("ce-type", kind)
                .header(
                    "ce-time",
                    humantime::format_rfc3339_micros(record.time).to_string(),
                )
                .header(
                    "ce-inferenceservicename",
                    record.endpoint.as_deref().unwrap_or(&record.model),
                )
                .header("ce-component", "predictor")
                .header(
                    "ce-endpoint",
                    record.variant.as_deref().unwrap_or("default"),
                )
                .header("ce-model", &record.model)
                .header("ce-modelversion", &record.version)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => return true,
                Ok(response) => format!("the receiver answered {}", response.status()),
                Err(err) => err.to_string(),
            };
            let errors = self.metrics.error();
            if errors.is_power_of_two() {
                warn!(url = %self.url, reason = %failure, errors, "Capture delivery failed; retrying, then dropping.");
            }
            if started.elapsed() + backoff > self.retry_for || stop.is_cancelled() {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
