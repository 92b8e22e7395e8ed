//! A formed batch: the requests' row blocks per input, handed to a worker,
//! and how its outputs are split back to each request (row-exact, padded
//! dims cut back). Dropping a batch without completing it fails its requests.

use std::sync::Arc;
use std::time::Duration;

use switchyard_runtimes::Tensor;
use tokio::sync::oneshot;

use super::Reply;
use super::adaptive::Adaptive;
use super::padding::resize_dim;
use super::queue::Shared;
use crate::error::ApiError;

/// A formed batch, handed to a worker. Dropping it without `complete` fails its requests.
pub struct Batch {
    /// Per signature input, the requests' row blocks in request order (padded
    /// when padding applies); the runtime joins them (`Runtime::run_blocks`).
    pub blocks: Vec<Vec<Tensor>>,
    pub(super) requests: Vec<(usize, Vec<i64>, oneshot::Sender<Reply>)>,
    pub(super) cut: Vec<(String, usize, usize)>,
    pub(super) compute: ComputeTable,
    /// The spans of the requests in the batch, for the worker's runtime span.
    pub spans: Vec<tracing::Span>,
    /// The requests' context, for runtimes that forward requests.
    pub context: Option<Arc<switchyard_runtimes::RequestContext>>,
    /// The latest deadline among the requests: nobody waits for an answer after it.
    pub deadline: Option<std::time::Instant>,
    /// `None` once the slot went back (`complete_and_take_next`).
    pub(super) slot: Option<SlotGuard>,
}

/// Measured compute seconds per batch size, shared by the workers and the adaptive rule.
pub type ComputeTable = Arc<std::sync::Mutex<Vec<(usize, f64)>>>;

impl Batch {
    /// The blocks joined along dimension 0, one tensor per input.
    pub fn joined_inputs(&self) -> Result<Vec<Tensor>, switchyard_runtimes::TensorError> {
        self.blocks
            .iter()
            .map(|parts| Tensor::concat_rows(parts))
            .collect()
    }

    pub fn rows(&self) -> usize {
        self.requests.iter().map(|(rows, _, _)| rows).sum()
    }

    /// Whether some input of the whole batch has no elements (zero rows, or a
    /// zero non-batch dimension): a runtime that refuses it refuses the input,
    /// not a fault of the model.
    pub fn has_empty_input(&self) -> bool {
        self.blocks
            .iter()
            .any(|parts| parts.iter().all(|t| t.element_count() == 0))
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Records how long the runtime took for this batch (feeds the adaptive delay).
    pub fn record_compute(&self, elapsed: Duration) {
        Adaptive::observe_compute(&self.compute, self.rows(), elapsed.as_secs_f64());
    }

    /// Splits the outputs back to each request (row-exact) and answers them.
    /// The slot goes back, and a batch due then goes to an idle instance.
    pub fn complete(mut self, result: Result<Vec<Tensor>, ApiError>) {
        self.answer(result);
    }

    /// `complete`, then the slot goes back to the caller's own next batch, if
    /// one is due: a busy instance goes on without waking anybody.
    pub fn complete_and_take_next(
        mut self,
        result: Result<Vec<Tensor>, ApiError>,
    ) -> Option<Batch> {
        self.answer(result);
        let slot = self.slot.take();
        drop(self);
        slot.and_then(SlotGuard::take_next)
    }

    fn answer(&mut self, result: Result<Vec<Tensor>, ApiError>) {
        let requests = std::mem::take(&mut self.requests);
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(err) => {
                for (_, _, reply) in requests {
                    let _ = reply.send(Err(err.clone()));
                }
                return;
            }
        };
        if requests.len() == 1 && self.cut.is_empty() {
            if let Some((_, _, reply)) = requests.into_iter().next() {
                let _ = reply.send(Ok(outputs));
            }
            return;
        }
        let rows: Vec<usize> = requests.iter().map(|(rows, _, _)| *rows).collect();
        let mut per_request: Vec<Vec<Tensor>> = requests
            .iter()
            .map(|_| Vec::with_capacity(outputs.len()))
            .collect();
        for output in &outputs {
            let parts = match output.split_rows(&rows) {
                Ok(parts) => parts,
                Err(_) => {
                    let err = ApiError::internal(format!(
                        "output `{}` has shape {:?}, which does not split into the batch's {} rows",
                        output.name(),
                        output.shape(),
                        rows.iter().sum::<usize>()
                    ));
                    for (_, _, reply) in requests {
                        let _ = reply.send(Err(err.clone()));
                    }
                    return;
                }
            };
            for (i, part) in parts.into_iter().enumerate() {
                per_request[i].push(part);
            }
        }
        for ((_, lengths, reply), mut outputs) in requests.into_iter().zip(per_request) {
            let cut = self.cut_outputs(&mut outputs, &lengths);
            let _ = reply.send(cut.map(|()| outputs));
        }
    }

    /// Cuts padded outputs back to this request's own lengths.
    fn cut_outputs(&self, outputs: &mut [Tensor], lengths: &[i64]) -> Result<(), ApiError> {
        for (name, dim, length_index) in &self.cut {
            let Some(output) = outputs.iter_mut().find(|t| t.name() == name) else {
                continue;
            };
            let length = lengths.get(*length_index).copied().unwrap_or(0);
            if output.shape().get(*dim).is_some_and(|&have| have > length) {
                *output = resize_dim(output, *dim, length, 0.0)?;
            }
        }
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for (_, _, reply) in self.requests.drain(..) {
            let _ = reply.send(Err(ApiError::internal(
                "the batch was dropped before it ran",
            )));
        }
    }
}

/// Keeps a worker slot counted as busy until the batch is gone; then the
/// next batch due goes to an idle instance.
pub(super) struct SlotGuard {
    shared: Option<Arc<Shared>>,
}

impl SlotGuard {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        SlotGuard {
            shared: Some(shared),
        }
    }

    /// Gives the slot back and takes the next batch due for the caller.
    fn take_next(mut self) -> Option<Batch> {
        let shared = self.shared.take()?;
        if !shared.full_batch_waiting() {
            // The I/O threads were just woken with the answers; on a shared
            // core they run only when this thread lets them. A turn first lets
            // the requests they have read join the next batch (still holding
            // the slot, so nothing goes early); without it a busy instance
            // runs ever smaller batches.
            std::thread::yield_now();
        }
        shared.release()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take()
            && let Some(next) = shared.release()
        {
            shared.hand_off(next);
        }
    }
}
