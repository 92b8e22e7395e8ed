//! The KServe v2 gRPC edge (`inference.GRPCInferenceService`, tonic): each
//! method checks its `Operation`'s scope, then calls what both edges share
//! (`edge`: the inference wrapper, model info, control rules). Message
//! conversion lives in `codec`.

pub mod codec;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use switchyard_proto::grpc_inference_service_server::GrpcInferenceService;
use switchyard_proto::model_metadata_response::TensorMetadata;
use switchyard_proto::repository_index_response::ModelIndex;
use switchyard_proto::*;
use switchyard_runtimes::TensorSpec;
use tonic::{Request, Response, Status, Streaming};

use crate::edge::{Edge, Operation, Protocol, model_info, observability};
pub use codec::decode_request;
use codec::{encode_response, version_arg};

pub struct GrpcService {
    edge: Arc<Edge>,
}

impl GrpcService {
    pub fn new(edge: Arc<Edge>) -> Self {
        GrpcService { edge }
    }

    fn authorize<T>(&self, request: &Request<T>, operation: Operation) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.edge
            .authorize(operation, authorization)
            .map_err(Status::from)
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

/// Requests of one stream that may run at once; further messages wait to be read.
const STREAM_IN_FLIGHT: usize = 64;

fn shared_memory_not_offered() -> Status {
    Status::unimplemented(
        "shared memory is not offered by Switchyard: send tensors in the request \
         (raw_input_contents), which the binary data path carries without extra copies",
    )
}

/// One streamed request, answered as `ModelStreamInfer` does: errors in the message, not the status.
async fn stream_one(
    edge: &Edge,
    headers: ::http::HeaderMap,
    request: ModelInferRequest,
) -> ModelStreamInferResponse {
    let model = request.model_name.clone();
    let decode = async { decode_request(request).map(|decoded| (decoded, ())) };
    let (result, _) = crate::edge::infer(
        edge,
        Protocol::Grpc,
        &model,
        headers,
        decode,
        |response, ()| Ok(encode_response(response)),
    )
    .await;
    match result {
        Ok(encoded) => ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(encoded),
        },
        Err(err) => ModelStreamInferResponse {
            error_message: Status::from(err).message().to_owned(),
            infer_response: None,
        },
    }
}

fn trace_reply(settings: Vec<(&'static str, observability::TraceValue)>) -> TraceSettingResponse {
    TraceSettingResponse {
        settings: settings
            .into_iter()
            .map(|(key, value)| {
                (
                    key.to_owned(),
                    trace_setting_response::SettingValue {
                        value: value.into_values(),
                    },
                )
            })
            .collect(),
    }
}

fn log_reply(settings: Vec<(&'static str, observability::LogValue)>) -> LogSettingsResponse {
    use log_settings_response::setting_value::ParameterChoice;
    LogSettingsResponse {
        settings: settings
            .into_iter()
            .map(|(key, value)| {
                let choice = match value {
                    observability::LogValue::Bool(on) => ParameterChoice::BoolParam(on),
                    observability::LogValue::Uint(level) => ParameterChoice::Uint32Param(level),
                    observability::LogValue::Text(text) => ParameterChoice::StringParam(text),
                };
                (
                    key.to_owned(),
                    log_settings_response::SettingValue {
                        parameter_choice: Some(choice),
                    },
                )
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    type ModelStreamInferStream =
        Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

    /// Requests are read in order and run concurrently (up to `STREAM_IN_FLIGHT`),
    /// so responses may come back out of order; each carries its request's `id`.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        self.authorize(&request, Operation::ModelInfer)?;
        let headers = request.metadata().clone().into_headers();
        let mut incoming = request.into_inner();
        let edge = self.edge.clone();
        let (replies, receiver) = tokio::sync::mpsc::channel(STREAM_IN_FLIGHT);
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
            loop {
                let message = match incoming.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = replies.send(Err(status)).await;
                        break;
                    }
                };
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let (edge, headers, replies) = (edge.clone(), headers.clone(), replies.clone());
                tokio::spawn(async move {
                    let reply = stream_one(&edge, headers, message).await;
                    // A closed stream only means the client went away.
                    let _ = replies.send(Ok(reply)).await;
                    drop(permit);
                });
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|reply| (reply, receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn trace_setting(
        &self,
        request: Request<TraceSettingRequest>,
    ) -> Result<Response<TraceSettingResponse>, Status> {
        self.authorize(&request, Operation::TraceSettings)?;
        let request = request.into_inner();
        let model = (!request.model_name.is_empty()).then_some(request.model_name.as_str());
        if let Some(model) = model {
            self.edge.serving.catalog.snapshot().lookup(model, None)?;
        }
        let updates = request
            .settings
            .into_iter()
            .map(|(key, value)| {
                let values = (!value.value.is_empty()).then_some(value.value);
                (key, values)
            })
            .collect();
        let settings = observability::update_trace_settings(&self.edge.telemetry, model, updates)?;
        Ok(Response::new(trace_reply(settings)))
    }

    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> Result<Response<LogSettingsResponse>, Status> {
        use log_settings_request::setting_value::ParameterChoice;
        self.authorize(&request, Operation::LogSettings)?;
        let updates = request
            .into_inner()
            .settings
            .into_iter()
            .map(|(key, value)| {
                let value = match value.parameter_choice {
                    Some(ParameterChoice::BoolParam(on)) => observability::LogValue::Bool(on),
                    Some(ParameterChoice::Uint32Param(level)) => {
                        observability::LogValue::Uint(level)
                    }
                    Some(ParameterChoice::StringParam(text)) => observability::LogValue::Text(text),
                    None => {
                        return Err(Status::invalid_argument(format!(
                            "logging setting `{key}` has no value"
                        )));
                    }
                };
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let settings = observability::update_log_settings(&self.edge.telemetry, updates)?;
        Ok(Response::new(log_reply(settings)))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<SystemSharedMemoryStatusResponse>, Status> {
        Err(shared_memory_not_offered())
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<SystemSharedMemoryRegisterResponse>, Status> {
        Err(shared_memory_not_offered())
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<SystemSharedMemoryUnregisterResponse>, Status> {
        Err(shared_memory_not_offered())
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<CudaSharedMemoryStatusResponse>, Status> {
        Err(shared_memory_not_offered())
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<CudaSharedMemoryRegisterResponse>, Status> {
        Err(shared_memory_not_offered())
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<CudaSharedMemoryUnregisterResponse>, Status> {
        Err(shared_memory_not_offered())
    }

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
            ready: self.edge.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request, Operation::ModelReady)?;
        let request = request.into_inner();
        let ready = model_info::ready(
            &self.edge.serving.catalog.snapshot(),
            &request.name,
            version_arg(&request.version),
        )?;
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request, Operation::ServerMetadata)?;
        Ok(Response::new(ServerMetadataResponse {
            name: crate::edge::SERVER_NAME.to_owned(),
            version: crate::edge::SERVER_VERSION.to_owned(),
            extensions: crate::edge::EXTENSIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request, Operation::ModelMetadata)?;
        let request = request.into_inner();
        let found = model_info::metadata(
            &self.edge.serving.catalog.snapshot(),
            &request.name,
            version_arg(&request.version),
        )?;
        Ok(Response::new(ModelMetadataResponse {
            name: found.name,
            versions: found.versions,
            platform: found.platform.to_owned(),
            inputs: tensor_metadata(&found.inputs),
            outputs: tensor_metadata(&found.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(&request, Operation::ModelInfer)?;
        let headers = request.metadata().clone().into_headers();
        let model = request.get_ref().model_name.clone();
        let decode = async { decode_request(request.into_inner()).map(|decoded| (decoded, ())) };
        let (result, routed) = crate::edge::infer(
            &self.edge,
            Protocol::Grpc,
            &model,
            headers,
            decode,
            |response, ()| Ok(encode_response(response)),
        )
        .await;
        let name_route = |metadata: &mut tonic::metadata::MetadataMap| {
            if let Some((endpoint, variant)) = &routed
                && let (Ok(endpoint), Ok(variant)) = (endpoint.parse(), variant.parse())
            {
                metadata.insert(crate::edge::ENDPOINT_HEADER, endpoint);
                metadata.insert(crate::edge::VARIANT_HEADER, variant);
            }
        };
        match result {
            Ok(encoded) => {
                let mut reply = Response::new(encoded);
                name_route(reply.metadata_mut());
                Ok(reply)
            }
            Err(err) => {
                let mut status = Status::from(err);
                name_route(status.metadata_mut());
                Err(status)
            }
        }
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        self.authorize(&request, Operation::ModelConfig)?;
        let request = request.into_inner();
        let found = self
            .edge
            .serving
            .catalog
            .snapshot()
            .lookup(&request.name, version_arg(&request.version))?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(model_info::triton_config(&found)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        self.authorize(&request, Operation::ModelStatistics)?;
        let request = request.into_inner();
        let model_stats = model_info::statistics(
            &self.edge.serving.catalog.snapshot(),
            &request.name,
            version_arg(&request.version),
        )?;
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.authorize(&request, Operation::RepositoryIndex)?;
        let request = request.into_inner();
        let models = self
            .edge
            .serving
            .catalog
            .snapshot()
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
        self.authorize(&request, Operation::ModelLoad)?;
        let request = request.into_inner();
        crate::edge::check_control_parameters(
            Operation::ModelLoad,
            request.parameters.keys().map(String::as_str),
        )?;
        self.edge.control.load_model(&request.model_name).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.authorize(&request, Operation::ModelUnload)?;
        let request = request.into_inner();
        // The same rule as HTTP's: unknown parameters are refused, not ignored.
        crate::edge::check_control_parameters(
            Operation::ModelUnload,
            request.parameters.keys().map(String::as_str),
        )?;
        self.edge.control.unload_model(&request.model_name).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
