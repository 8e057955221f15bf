// c = a + b through tvm-ffi: TensorView arguments, the stream tvm-ffi was handed by the caller.
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/error.h>

__global__ void vector_add_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                  float* __restrict__ c, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    c[i] = a[i] + b[i];
  }
}

void run(tvm::ffi::TensorView a, tvm::ffi::TensorView b, tvm::ffi::TensorView c) {
  TVM_FFI_ICHECK_EQ(a.ndim(), 1) << "a must be 1-D";
  TVM_FFI_ICHECK(a.dtype().code == kDLFloat && a.dtype().bits == 32) << "float32 expected";
  TVM_FFI_ICHECK_EQ(c.device().device_type, kDLCUDA) << "CUDA tensors expected";
  const int64_t n = a.size(0);
  if (n == 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>((n + threads - 1) / threads < 65535 ? (n + threads - 1) / threads : 65535);
  auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(c.device().device_type, c.device().device_id));
  vector_add_kernel<<<blocks, threads, 0, stream>>>(static_cast<const float*>(a.data_ptr()),
                                                     static_cast<const float*>(b.data_ptr()),
                                                     static_cast<float*>(c.data_ptr()), n);
}

TVM_FFI_DLL_EXPORT_TYPED_FUNC(run, run);
