//! The KServe v2 gRPC edge (`inference.GRPCInferenceService`, tonic): converts
//! typed `contents` or `raw_input_contents` into tensors, calls `infer`, and
//! answers with `raw_output_contents`. Also the repository extension RPCs.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_proto::grpc_inference_service_server::GrpcInferenceService;
use switchyard_proto::model_infer_request::InferInputTensor;
use switchyard_proto::model_infer_response::InferOutputTensor;
use switchyard_proto::model_metadata_response::TensorMetadata;
use switchyard_proto::repository_index_response::ModelIndex;
use switchyard_proto::*;
use switchyard_runtimes::{DataType, Tensor, TensorSpec};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::http::{EXTENSIONS, SERVER_NAME, SERVER_VERSION};
use crate::infer::{InferRequest, InferResponse, Served, infer};
use crate::state::AppState;

/// Codes for failures tonic detects before a handler runs, put right: an
/// undecodable message is the client's mistake (INTERNAL → INVALID_ARGUMENT)
/// and an oversize one is RESOURCE_EXHAUSTED, as gRPC itself reports it (not
/// OUT_OF_RANGE). Such errors travel in the headers of a trailers-only response.
pub fn classify_decode_errors<B>(mut response: http::Response<B>) -> http::Response<B> {
    const RULES: &[(&[u8], &[u8], &str)] = &[
        (b"13", b"failed to decode", "3"),
        (b"13", b"failed%20to%20decode", "3"),
        (b"11", b"Error, decoded message length too large", "8"),
        (
            b"11",
            b"Error,%20decoded%20message%20length%20too%20large",
            "8",
        ),
    ];
    let headers = response.headers_mut();
    let (Some(status), Some(message)) = (headers.get("grpc-status"), headers.get("grpc-message"))
    else {
        return response;
    };
    let replacement = RULES
        .iter()
        .find(|(code, prefix, _)| {
            status.as_bytes() == *code && message.as_bytes().starts_with(prefix)
        })
        .map(|(_, _, new)| *new);
    if let Some(new) = replacement {
        headers.insert("grpc-status", http::HeaderValue::from_static(new));
    }
    response
}

pub struct GrpcService {
    state: Arc<AppState>,
}

impl GrpcService {
    pub fn new(state: Arc<AppState>) -> Self {
        GrpcService { state }
    }

    fn authorize<T>(&self, request: &Request<T>, scope: crate::auth::Scope) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.state
            .settings
            .tokens
            .check(authorization, scope)
            .map_err(Status::from)
    }
}

fn version_arg(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

/// Converts one input's typed `contents` into the tensor buffer layout.
fn contents_to_bytes(input: &InferInputTensor, datatype: DataType) -> Result<Bytes, ApiError> {
    let empty = InferTensorContents::default();
    let contents = input.contents.as_ref().unwrap_or(&empty);
    let name = &input.name;
    let mut buf = BytesMut::new();
    let range = |value: i128| {
        ApiError::invalid(format!(
            "input `{name}`: {value} is out of range for {datatype}"
        ))
    };
    match datatype {
        DataType::Bool => contents
            .bool_contents
            .iter()
            .for_each(|&b| buf.put_u8(u8::from(b))),
        DataType::Int8 => {
            for &v in &contents.int_contents {
                buf.put_i8(i8::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Int16 => {
            for &v in &contents.int_contents {
                buf.put_i16_le(i16::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Int32 => contents
            .int_contents
            .iter()
            .for_each(|&v| buf.put_i32_le(v)),
        DataType::Int64 => contents
            .int64_contents
            .iter()
            .for_each(|&v| buf.put_i64_le(v)),
        DataType::Uint8 => {
            for &v in &contents.uint_contents {
                buf.put_u8(u8::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Uint16 => {
            for &v in &contents.uint_contents {
                buf.put_u16_le(u16::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Uint32 => contents
            .uint_contents
            .iter()
            .for_each(|&v| buf.put_u32_le(v)),
        DataType::Uint64 => contents
            .uint64_contents
            .iter()
            .for_each(|&v| buf.put_u64_le(v)),
        DataType::Fp32 => contents
            .fp32_contents
            .iter()
            .for_each(|&v| buf.put_f32_le(v)),
        DataType::Fp64 => contents
            .fp64_contents
            .iter()
            .for_each(|&v| buf.put_f64_le(v)),
        DataType::Bytes => {
            for element in &contents.bytes_contents {
                let len = u32::try_from(element.len()).map_err(|_| {
                    ApiError::invalid(format!("input `{name}`: an element is longer than 4 GiB"))
                })?;
                buf.put_u32_le(len);
                buf.put_slice(element);
            }
        }
        DataType::Fp16 | DataType::Bf16 => {
            return Err(ApiError::invalid(format!(
                "input `{name}`: {datatype} has no typed contents field; send it in raw_input_contents"
            )));
        }
    }
    Ok(buf.freeze())
}

fn int_param(
    parameters: &std::collections::HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<i128>, ApiError> {
    use switchyard_proto::infer_parameter::ParameterChoice;
    match parameters
        .get(key)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(v)) => Ok(Some(i128::from(*v))),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(i128::from(*v))),
        Some(other) => Err(ApiError::invalid(format!(
            "request parameter `{key}` must be an integer, got {other:?}"
        ))),
    }
}

/// Decodes a gRPC request, enforcing the all-or-nothing rule for raw contents.
pub fn decode_request(request: ModelInferRequest) -> Result<InferRequest, ApiError> {
    let ModelInferRequest {
        model_name,
        model_version,
        id,
        inputs,
        outputs,
        raw_input_contents,
        parameters,
    } = request;
    let use_raw = !raw_input_contents.is_empty();
    if use_raw && raw_input_contents.len() != inputs.len() {
        return Err(ApiError::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs; give one per input, in order",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let datatype: DataType = input
            .datatype
            .parse()
            .map_err(|err| ApiError::invalid(format!("input `{}`: {err}", input.name)))?;
        let data = if use_raw {
            if input.contents.is_some() {
                return Err(ApiError::invalid(format!(
                    "input `{}` has `contents` while raw_input_contents is used; use one form for all inputs",
                    input.name
                )));
            }
            raw_input_contents[index].clone()
        } else {
            contents_to_bytes(input, datatype)?
        };
        tensors.push(Tensor::new(
            input.name.clone(),
            datatype,
            input.shape.clone(),
            data,
        )?);
    }
    let outputs = if outputs.is_empty() {
        None
    } else {
        let mut names = Vec::with_capacity(outputs.len());
        for output in outputs {
            if output.parameters.contains_key("classification") {
                return Err(ApiError::invalid(format!(
                    "output `{}`: the `classification` parameter is not supported; request the raw output",
                    output.name
                )));
            }
            names.push(output.name);
        }
        Some(names)
    };
    let (priority, timeout) = crate::infer::queue_parameters(
        int_param(&parameters, "priority")?,
        int_param(&parameters, "timeout")?,
    )?;
    Ok(InferRequest {
        model: model_name,
        version: version_arg(&model_version).map(str::to_owned),
        id: (!id.is_empty()).then_some(id),
        inputs: tensors,
        outputs,
        priority,
        timeout,
        headers: http::HeaderMap::new(),
        parameters: parameters
            .iter()
            .filter_map(|(k, v)| {
                use switchyard_proto::infer_parameter::ParameterChoice;
                let text = match v.parameter_choice.as_ref()? {
                    ParameterChoice::StringParam(s) => s.clone(),
                    ParameterChoice::Int64Param(i) => i.to_string(),
                    ParameterChoice::Uint64Param(u) => u.to_string(),
                    _ => return None,
                };
                Some((k.clone(), text))
            })
            .collect(),
    })
}

fn encode_response(response: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        outputs.push(InferOutputTensor {
            name: tensor.name().to_owned(),
            datatype: tensor.datatype().as_str().to_owned(),
            shape: tensor.shape().to_vec(),
            ..Default::default()
        });
        raw.push(tensor.data().clone());
    }
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        outputs,
        raw_output_contents: raw,
        ..Default::default()
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|spec| TensorMetadata {
            name: spec.name.clone(),
            datatype: spec.datatype.as_str().to_owned(),
            shape: spec.shape.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request, crate::auth::Scope::Inference)?;
        let request = request.into_inner();
        let ready = match self
            .state
            .catalog()
            .lookup(&request.name, version_arg(&request.version))
        {
            Ok(_) => true,
            Err(err) if err.kind == crate::error::ErrorKind::Unavailable => false,
            Err(err) => return Err(err.into()),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request, crate::auth::Scope::Inference)?;
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.to_owned(),
            version: SERVER_VERSION.to_owned(),
            extensions: EXTENSIONS.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request, crate::auth::Scope::Inference)?;
        let request = request.into_inner();
        let catalog = self.state.catalog();
        let found = catalog.lookup(&request.name, version_arg(&request.version))?;
        let versions = catalog
            .models
            .get(&request.name)
            .map(|entry| entry.versions.keys().map(u64::to_string).collect())
            .unwrap_or_default();
        Ok(Response::new(ModelMetadataResponse {
            name: found.name.clone(),
            versions,
            platform: found.config.platform.as_str().to_owned(),
            inputs: tensor_metadata(&found.signature.inputs),
            outputs: tensor_metadata(&found.signature.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(&request, crate::auth::Scope::Inference)?;
        let mut served = Served {
            model: None,
            started: Instant::now(),
        };
        let headers = request.metadata().clone().into_headers();
        let span =
            tracing::info_span!("infer", model = %request.get_ref().model_name, protocol = "grpc");
        crate::telemetry::adopt_parent(&span, &headers);
        let decoded = span.in_scope(|| {
            tracing::info_span!("decode").in_scope(|| decode_request(request.into_inner()))
        });
        let result = match decoded {
            Ok(mut decoded) => {
                decoded.headers = headers;
                tracing::Instrument::instrument(
                    infer(&self.state, decoded, &mut served),
                    span.clone(),
                )
                .await
            }
            Err(err) => Err(err),
        };
        served.record(&self.state, "grpc", &result);
        let response = result?;
        let routed = response.routed.clone();
        let mut reply = Response::new(
            span.in_scope(|| tracing::info_span!("encode").in_scope(|| encode_response(response))),
        );
        if let Some((endpoint, variant)) = routed
            && let (Ok(endpoint), Ok(variant)) = (endpoint.parse(), variant.parse())
        {
            reply
                .metadata_mut()
                .insert("x-switchyard-endpoint", endpoint);
            reply.metadata_mut().insert("x-switchyard-variant", variant);
        }
        Ok(reply)
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.authorize(&request, crate::auth::Scope::Inference)?;
        let request = request.into_inner();
        let models = self
            .state
            .catalog()
            .index(request.ready)
            .into_iter()
            .map(|row| ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.to_owned(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.authorize(&request, crate::auth::Scope::Admin)?;
        let request = request.into_inner();
        if let Some(key) = request.parameters.keys().next() {
            return Err(ApiError::invalid(format!(
                "parameter `{key}` is not supported; models load from the repository as they are"
            ))
            .into());
        }
        self.state.load_model(&request.model_name).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.authorize(&request, crate::auth::Scope::Admin)?;
        let request = request.into_inner();
        self.state.unload_model(&request.model_name).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
