//! The KServe v2 gRPC edge (`inference.GRPCInferenceService`, tonic): each
//! method checks its `Operation`'s scope, then calls what both edges share
//! (`edge`: the inference wrapper, model info, control rules). Message
//! conversion lives in `codec`.

pub mod codec;

use std::sync::Arc;

use switchyard_proto::grpc_inference_service_server::GrpcInferenceService;
use switchyard_proto::model_metadata_response::TensorMetadata;
use switchyard_proto::repository_index_response::ModelIndex;
use switchyard_proto::*;
use switchyard_runtimes::TensorSpec;
use tonic::{Request, Response, Status};

use crate::edge::{Edge, Operation, Protocol, model_info};
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
        let (encoded, routed) = crate::edge::infer(
            &self.edge,
            Protocol::Grpc,
            &model,
            headers,
            decode,
            |response, ()| Ok(encode_response(response)),
        )
        .await?;
        let mut reply = Response::new(encoded);
        if let Some((endpoint, variant)) = routed
            && let (Ok(endpoint), Ok(variant)) = (endpoint.parse(), variant.parse())
        {
            reply
                .metadata_mut()
                .insert(crate::edge::ENDPOINT_HEADER, endpoint);
            reply
                .metadata_mut()
                .insert(crate::edge::VARIANT_HEADER, variant);
        }
        Ok(reply)
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
