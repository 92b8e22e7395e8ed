// CUDA streams for the libtorch runtime: tch has no stream API, so each
// instance takes a stream from libtorch's per-device pool through these three
// C functions and makes it current on its worker thread before each call.
// Compiled by runtimes/build.rs only when LIBTORCH has libc10_cuda.so.
#include <c10/cuda/CUDAStream.h>

extern "C" {

// A stream from `device`'s pool (normal priority); 0 on success.
int switchyard_cuda_stream_from_pool(int device, void** stream) {
  try {
    auto pooled = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
    *stream = new c10::cuda::CUDAStream(pooled);
    return 0;
  } catch (...) {
    return 1;
  }
}

// Makes `stream` the calling thread's current stream on its device; 0 on success.
int switchyard_cuda_stream_make_current(void* stream) {
  try {
    c10::cuda::setCurrentCUDAStream(*static_cast<c10::cuda::CUDAStream*>(stream));
    return 0;
  } catch (...) {
    return 1;
  }
}

// Frees the handle; pool streams themselves live as long as the process.
void switchyard_cuda_stream_free(void* stream) {
  delete static_cast<c10::cuda::CUDAStream*>(stream);
}

}  // extern "C"
