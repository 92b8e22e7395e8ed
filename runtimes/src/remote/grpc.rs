//! Calling a KServe v2 upstream over gRPC (tonic): one HTTP/2 channel per
//! upstream, TLS when configured, the pool's headers on every call.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard_proto::infer_parameter::ParameterChoice;
use switchyard_proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use switchyard_proto::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
};
use tonic::codegen::http::HeaderMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{Failure, Outgoing};
use crate::{DataType, Parameter, Signature, Tensor, TensorSpec};

pub(super) struct GrpcUpstream {
    channel: Channel,
    headers: HeaderMap,
}

impl GrpcUpstream {
    pub(super) fn new(
        addr: &str,
        options: &super::Settings<'_>,
        headers: HeaderMap,
    ) -> Result<Self, String> {
        let tls = options.tls.as_ref();
        let uri = super::upstream_url(addr, tls.is_some());
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("upstream `{addr}`: {e}"))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            // Dead peers are noticed between requests too.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if uri.starts_with("https://") {
            let mut config = ClientTlsConfig::new().with_enabled_roots();
            if let Some(tls) = tls {
                if let Some(ca) = &tls.ca_pem {
                    config = config.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = &tls.identity_pem {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                if let Some(name) = &tls.server_name {
                    config = config.domain_name(name.clone());
                }
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| format!("upstream `{addr}`: TLS settings: {e}"))?;
        }
        Ok(GrpcUpstream {
            channel: endpoint.connect_lazy(),
            headers,
        })
    }

    fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(self.headers.clone()),
            tonic::Extensions::default(),
            message,
        );
        // Sent as `grpc-timeout`: the upstream stops work nobody waits for.
        request.set_timeout(timeout);
        request
    }

    pub(super) async fn infer(&self, call: &Outgoing<'_>) -> Result<Vec<Tensor>, Failure> {
        let message = ModelInferRequest {
            model_name: call.model.to_owned(),
            model_version: call.version.unwrap_or_default().to_owned(),
            parameters: call
                .parameters
                .iter()
                .map(|(key, value)| (key.clone(), parameter(value)))
                .collect(),
            inputs: call
                .inputs
                .iter()
                .map(|t| InferInputTensor {
                    name: t.name().to_owned(),
                    datatype: t.datatype().as_str().to_owned(),
                    shape: t.shape().to_vec(),
                    ..Default::default()
                })
                .collect(),
            outputs: call
                .outputs
                .iter()
                .map(|name| InferRequestedOutputTensor {
                    name: name.clone(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: call.inputs.iter().map(|t| t.data().clone()).collect(),
            ..Default::default()
        };
        let mut request = self.request(message, call.timeout);
        if let Some(value) = call.traceparent.and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("traceparent", value);
        }
        let response =
            match tokio::time::timeout(call.timeout, self.client().model_infer(request)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => return Err(failure(status)),
                Err(_) => return Err(Failure::TimedOut),
            };
        decode_response(response, call.outputs).map_err(Failure::Failed)
    }

    pub(super) async fn ready(
        &self,
        model: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<bool, String> {
        let request = self.request(
            ModelReadyRequest {
                name: model.to_owned(),
                version: version.unwrap_or_default().to_owned(),
            },
            timeout,
        );
        match tokio::time::timeout(timeout, self.client().model_ready(request)).await {
            Ok(Ok(ready)) => Ok(ready.get_ref().ready),
            Ok(Err(status)) => Err(status.message().to_owned()),
            Err(_) => Err("readiness probe timed out".to_owned()),
        }
    }

    pub(super) async fn metadata(
        &self,
        model: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<Signature, String> {
        let request = self.request(
            ModelMetadataRequest {
                name: model.to_owned(),
                version: version.unwrap_or_default().to_owned(),
            },
            timeout,
        );
        let meta = match tokio::time::timeout(timeout, self.client().model_metadata(request)).await
        {
            Ok(Ok(meta)) => meta.into_inner(),
            Ok(Err(status)) => return Err(status.message().to_owned()),
            Err(_) => return Err("timed out".to_owned()),
        };
        let convert = |t: &switchyard_proto::model_metadata_response::TensorMetadata| {
            t.datatype
                .parse::<DataType>()
                .map(|dt| TensorSpec::new(t.name.clone(), dt, t.shape.clone()))
                .map_err(|e| e.to_string())
        };
        Ok(Signature {
            inputs: meta.inputs.iter().map(convert).collect::<Result<_, _>>()?,
            outputs: meta.outputs.iter().map(convert).collect::<Result<_, _>>()?,
        })
    }
}

fn parameter(value: &Parameter) -> InferParameter {
    let choice = match value {
        Parameter::Bool(b) => ParameterChoice::BoolParam(*b),
        Parameter::Int(i) => ParameterChoice::Int64Param(*i),
        Parameter::Double(d) => ParameterChoice::DoubleParam(*d),
        Parameter::Text(s) => ParameterChoice::StringParam(s.clone()),
    };
    InferParameter {
        parameter_choice: Some(choice),
    }
}

fn failure(status: tonic::Status) -> Failure {
    let message = status.message().to_owned();
    match status.code() {
        tonic::Code::Unavailable => Failure::Unreachable(message),
        tonic::Code::InvalidArgument | tonic::Code::NotFound => Failure::Invalid(message),
        tonic::Code::ResourceExhausted => Failure::Overloaded(message),
        tonic::Code::DeadlineExceeded => Failure::TimedOut,
        _ => Failure::Failed(message),
    }
}
/// Typed gRPC contents (as some servers answer) as a raw little-endian buffer.
fn contents_to_raw(datatype: DataType, c: &InferTensorContents) -> Bytes {
    let mut buf = BytesMut::new();
    match datatype {
        DataType::Bool => c
            .bool_contents
            .iter()
            .for_each(|&b| buf.put_u8(u8::from(b))),
        DataType::Int8 => c.int_contents.iter().for_each(|&v| buf.put_i8(v as i8)),
        DataType::Int16 => c
            .int_contents
            .iter()
            .for_each(|&v| buf.put_i16_le(v as i16)),
        DataType::Int32 => c.int_contents.iter().for_each(|&v| buf.put_i32_le(v)),
        DataType::Int64 => c.int64_contents.iter().for_each(|&v| buf.put_i64_le(v)),
        DataType::Uint8 => c.uint_contents.iter().for_each(|&v| buf.put_u8(v as u8)),
        DataType::Uint16 => c
            .uint_contents
            .iter()
            .for_each(|&v| buf.put_u16_le(v as u16)),
        DataType::Uint32 => c.uint_contents.iter().for_each(|&v| buf.put_u32_le(v)),
        DataType::Uint64 => c.uint64_contents.iter().for_each(|&v| buf.put_u64_le(v)),
        DataType::Fp32 => c.fp32_contents.iter().for_each(|&v| buf.put_f32_le(v)),
        DataType::Fp64 => c.fp64_contents.iter().for_each(|&v| buf.put_f64_le(v)),
        DataType::Bytes => c.bytes_contents.iter().for_each(|v| {
            buf.put_u32_le(v.len() as u32);
            buf.put_slice(v);
        }),
        DataType::Fp16 | DataType::Bf16 => {}
    }
    buf.freeze()
}

/// The requested outputs, in the order asked for.
fn decode_response(
    response: switchyard_proto::ModelInferResponse,
    wanted: &[String],
) -> Result<Vec<Tensor>, String> {
    let raw = !response.raw_output_contents.is_empty();
    let mut outputs = Vec::with_capacity(wanted.len());
    for name in wanted {
        let index = response
            .outputs
            .iter()
            .position(|o| o.name == *name)
            .ok_or_else(|| format!("it returned no output `{name}`"))?;
        let output = &response.outputs[index];
        let datatype: DataType = output.datatype.parse().map_err(|e| format!("{e}"))?;
        let data = if raw {
            response
                .raw_output_contents
                .get(index)
                .cloned()
                .unwrap_or_default()
        } else {
            contents_to_raw(
                datatype,
                output
                    .contents
                    .as_ref()
                    .unwrap_or(&InferTensorContents::default()),
            )
        };
        let tensor = Tensor::new(name.clone(), datatype, output.shape.clone(), data)
            .map_err(|e| format!("{e}"))?;
        outputs.push(tensor);
    }
    Ok(outputs)
}
