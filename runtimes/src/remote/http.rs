//! Calling a KServe v2 upstream over HTTP/REST (reqwest): JSON tensors by
//! default (every v2 server reads them, MLServer included), or the binary
//! tensor extension (`remote.binary_data: true`, Triton and Switchyard) that
//! sends raw little-endian buffers after a JSON header.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::{Failure, Outgoing};
use crate::{DataType, Signature, Tensor, TensorSpec};

const HEADER_LENGTH: &str = "inference-header-content-length";

pub(super) struct HttpUpstream {
    client: reqwest::Client,
    base: String,
    binary: bool,
}

impl HttpUpstream {
    pub(super) fn new(
        addr: &str,
        options: &super::Settings<'_>,
        headers: HeaderMap,
    ) -> Result<Self, String> {
        let tls = options.tls.as_ref();
        let base = super::upstream_url(addr, tls.is_some());
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(tls) = tls {
            if tls.server_name.is_some() {
                return Err(
                    "remote.tls.server_name is for gRPC upstreams; an HTTP upstream is checked against the host in its URL"
                        .to_owned(),
                );
            }
            if let Some(ca) = &tls.ca_pem {
                let certificate = reqwest::Certificate::from_pem(ca)
                    .map_err(|e| format!("remote.tls.ca_file: {e}"))?;
                builder = builder.add_root_certificate(certificate);
            }
            if let Some((cert, key)) = &tls.identity_pem {
                let mut pem = cert.clone();
                pem.push(b'\n');
                pem.extend_from_slice(key);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| format!("remote.tls client certificate: {e}"))?;
                builder = builder.identity(identity);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("upstream `{addr}`: {e}"))?;
        Ok(HttpUpstream {
            client,
            base,
            binary: options.binary_data,
        })
    }

    fn model_path(&self, model: &str, version: Option<&str>) -> String {
        match version {
            Some(version) => format!("{}/v2/models/{model}/versions/{version}", self.base),
            None => format!("{}/v2/models/{model}", self.base),
        }
    }

    pub(super) async fn infer(&self, call: &Outgoing<'_>) -> Result<Vec<Tensor>, Failure> {
        let url = format!("{}/infer", self.model_path(call.model, call.version));
        let mut parameters: Map<String, Value> = call
            .parameters
            .iter()
            .map(|(key, value)| (key.clone(), value.to_json()))
            .collect();
        let mut inputs = Vec::with_capacity(call.inputs.len());
        for tensor in call.inputs {
            let mut input = json!({
                "name": tensor.name(),
                "datatype": tensor.datatype().as_str(),
                "shape": tensor.shape(),
            });
            if self.binary {
                input["parameters"] = json!({"binary_data_size": tensor.data().len()});
            } else {
                input["data"] =
                    Value::Array(crate::json::tensor_data(tensor).map_err(Failure::Invalid)?);
            }
            inputs.push(input);
        }
        if self.binary {
            parameters.insert("binary_data_output".to_owned(), Value::Bool(true));
        }
        let outputs: Vec<Value> = call
            .outputs
            .iter()
            .map(|name| match self.binary {
                true => json!({"name": name, "parameters": {"binary_data": true}}),
                false => json!({"name": name}),
            })
            .collect();
        let mut head = json!({"inputs": inputs, "outputs": outputs});
        if !parameters.is_empty() {
            head["parameters"] = Value::Object(parameters);
        }
        let head = serde_json::to_vec(&head).map_err(|e| Failure::Failed(e.to_string()))?;
        let mut request = self.client.post(url).timeout(call.timeout);
        if let Some(traceparent) = call.traceparent {
            request = request.header("traceparent", traceparent);
        }
        request = if self.binary {
            let mut body = BytesMut::with_capacity(
                head.len() + call.inputs.iter().map(|t| t.data().len()).sum::<usize>(),
            );
            body.put_slice(&head);
            for tensor in call.inputs {
                body.put_slice(tensor.data());
            }
            request
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )
                .header(HEADER_LENGTH, head.len())
                .body(body.freeze())
        } else {
            request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(head)
        };
        let response = request.send().await.map_err(send_failure)?;
        let status = response.status();
        let header_length = response
            .headers()
            .get(HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body = response.bytes().await.map_err(send_failure)?;
        if !status.is_success() {
            return Err(status_failure(status, &body));
        }
        decode_response(&body, header_length, call.outputs).map_err(Failure::Failed)
    }

    pub(super) async fn ready(
        &self,
        model: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<bool, String> {
        let url = format!("{}/ready", self.model_path(model, version));
        match self.client.get(url).timeout(timeout).send().await {
            Ok(response) if response.status().is_success() => Ok(true),
            Ok(response) if response.status().as_u16() == 503 => Ok(false),
            Ok(response) => Err(format!("readiness answered {}", response.status())),
            Err(err) => Err(error_text(&err)),
        }
    }

    pub(super) async fn metadata(
        &self,
        model: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<Signature, String> {
        let response = self
            .client
            .get(self.model_path(model, version))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| error_text(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| error_text(&e))?;
        if !status.is_success() {
            return Err(format!(
                "metadata answered {status}: {}",
                error_message(&body)
            ));
        }
        let meta: Value =
            serde_json::from_slice(&body).map_err(|e| format!("metadata is not JSON: {e}"))?;
        let specs = |key: &str| -> Result<Vec<TensorSpec>, String> {
            meta.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| {
                    let name = t["name"].as_str().ok_or("a tensor without a name")?;
                    let datatype: DataType = t["datatype"]
                        .as_str()
                        .unwrap_or_default()
                        .parse()
                        .map_err(|e| format!("{e}"))?;
                    let shape = t["shape"]
                        .as_array()
                        .map(|dims| dims.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default();
                    Ok(TensorSpec::new(name.to_owned(), datatype, shape))
                })
                .collect()
        };
        Ok(Signature {
            inputs: specs("inputs")?,
            outputs: specs("outputs")?,
        })
    }
}

fn error_text(err: &reqwest::Error) -> String {
    // reqwest's own message hides the cause (connection refused, TLS) one level down.
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn send_failure(err: reqwest::Error) -> Failure {
    if err.is_timeout() {
        Failure::TimedOut
    } else if err.is_connect() {
        // Never reached the upstream: safe to try another.
        Failure::Unreachable(error_text(&err))
    } else {
        Failure::Failed(error_text(&err))
    }
}

/// The `error` of a v2 error body, or the body itself.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned())
}

fn status_failure(status: reqwest::StatusCode, body: &[u8]) -> Failure {
    let message = format!("{status}: {}", error_message(body));
    match status.as_u16() {
        400 | 404 | 422 => Failure::Invalid(message),
        429 => Failure::Overloaded(message),
        502..=504 => Failure::Unreachable(message),
        _ => Failure::Failed(message),
    }
}

/// The requested outputs of a JSON or binary-extension answer, in the order asked for.
fn decode_response(
    body: &Bytes,
    header_length: Option<usize>,
    wanted: &[String],
) -> Result<Vec<Tensor>, String> {
    let head_len = header_length.unwrap_or(body.len());
    if head_len > body.len() {
        return Err(format!(
            "its Inference-Header-Content-Length {head_len} is past the body's {} bytes",
            body.len()
        ));
    }
    let head: Value = serde_json::from_slice(&body[..head_len])
        .map_err(|e| format!("its answer is not JSON: {e}"))?;
    let outputs = head["outputs"]
        .as_array()
        .ok_or("its answer has no `outputs`")?;
    // Binary outputs follow the header in the order the outputs are listed.
    let mut offset = head_len;
    let mut decoded: Vec<Tensor> = Vec::with_capacity(outputs.len());
    for output in outputs {
        let name = output["name"].as_str().ok_or("an output without a name")?;
        let datatype: DataType = output["datatype"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("output `{name}`: {e}"))?;
        let shape: Vec<i64> = output["shape"]
            .as_array()
            .map(|dims| dims.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let data = match output["parameters"]["binary_data_size"].as_u64() {
            Some(size) => {
                let end = offset
                    .checked_add(size as usize)
                    .filter(|&end| end <= body.len())
                    .ok_or_else(|| {
                        format!("output `{name}`: its binary data runs past the body")
                    })?;
                let data = body.slice(offset..end);
                offset = end;
                data
            }
            None => crate::json::data_from_json(datatype, &output["data"])
                .map_err(|e| format!("output `{name}`: {e}"))?,
        };
        decoded.push(
            Tensor::new(name.to_owned(), datatype, shape, data)
                .map_err(|e| format!("output `{name}`: {e}"))?,
        );
    }
    wanted
        .iter()
        .map(|name| {
            let index = decoded
                .iter()
                .position(|t| t.name() == name)
                .ok_or_else(|| format!("it returned no output `{name}`"))?;
            Ok(decoded.swap_remove(index))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datatype_survives_json_both_ways() {
        let cases: Vec<(DataType, Vec<u8>)> = vec![
            (DataType::Bool, vec![1, 0, 1]),
            (DataType::Int8, vec![0xff, 7]),
            (DataType::Uint16, 513u16.to_le_bytes().to_vec()),
            (DataType::Int32, (-5i32).to_le_bytes().to_vec()),
            (DataType::Int64, i64::MIN.to_le_bytes().to_vec()),
            (DataType::Uint64, u64::MAX.to_le_bytes().to_vec()),
            (DataType::Fp32, 0.1f32.to_le_bytes().to_vec()),
            (DataType::Fp64, 0.1f64.to_le_bytes().to_vec()),
            (
                DataType::Fp16,
                half::f16::from_f32(1.5).to_le_bytes().to_vec(),
            ),
            (DataType::Bytes, [&3u32.to_le_bytes()[..], b"abc"].concat()),
        ];
        for (datatype, raw) in cases {
            let count = match datatype {
                DataType::Bytes => 1,
                other => raw.len() / other.element_size().unwrap_or(1),
            };
            let tensor =
                Tensor::new("t", datatype, vec![count as i64], Bytes::from(raw.clone())).unwrap();
            let json = Value::Array(crate::json::tensor_data(&tensor).unwrap());
            assert_eq!(
                crate::json::data_from_json(datatype, &json).unwrap(),
                Bytes::from(raw),
                "{datatype:?}"
            );
        }
    }

    #[test]
    fn binary_answers_are_cut_by_their_sizes_and_returned_as_asked() {
        let head = br#"{"outputs":[{"name":"a","datatype":"INT32","shape":[1],"parameters":{"binary_data_size":4}},{"name":"b","datatype":"FP32","shape":[2],"data":[1.0,2.0]}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&9i32.to_le_bytes());
        let outputs = decode_response(
            &Bytes::from(body.clone()),
            Some(head.len()),
            &["b".into(), "a".into()],
        )
        .unwrap();
        assert_eq!(outputs[0].name(), "b");
        assert_eq!(&outputs[1].data()[..], &9i32.to_le_bytes());
        let err = decode_response(&Bytes::from(body), Some(head.len()), &["c".into()]).unwrap_err();
        assert!(err.contains("no output `c`"), "{err}");
        let err = decode_response(&Bytes::from_static(b"{}"), Some(99), &[]).unwrap_err();
        assert!(err.contains("past the body"), "{err}");
    }
}
