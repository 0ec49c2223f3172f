// Helpers shared by the kernels' translation units: argument errors, CUDA error reporting, dtype conversions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <type_traits>

#include "htk.h"

namespace htk {
namespace detail {

// Status messages are built with snprintf into the Status itself: no iostreams, no locale, no heap.
inline void append(Status& status, size_t& used, const char* text) {
  if (used + 1 >= kStatusMessageCapacity) return;
  const int written = std::snprintf(status.message + used, kStatusMessageCapacity - used, "%s", text);
  if (written > 0) used = std::min(kStatusMessageCapacity - 1, used + static_cast<size_t>(written));
}

template <typename T>
void append(Status& status, size_t& used, T value) {
  char text[32];
  if constexpr (std::is_floating_point_v<T>) {
    std::snprintf(text, sizeof(text), "%g", static_cast<double>(value));
  } else if constexpr (std::is_signed_v<T>) {
    std::snprintf(text, sizeof(text), "%lld", static_cast<long long>(value));
  } else {
    std::snprintf(text, sizeof(text), "%llu", static_cast<unsigned long long>(value));
  }
  append(status, used, static_cast<const char*>(text));
}

template <typename... Parts>
Status make_status(StatusCode code, const char* op, const Parts&... parts) {
  Status status;
  status.code = code;
  size_t used = 0;
  append(status, used, op);
  append(status, used, ": ");
  (append(status, used, parts), ...);
  return status;
}

template <typename... Parts>
Status invalid_argument(const char* op, const Parts&... parts) {
  return make_status(StatusCode::kInvalidArgument, op, parts...);
}

// A CUDA failure with the op and the step named, plus the hint a user without a GPU needs.
inline Status cuda_failure(const char* op, const char* step, cudaError_t error) {
  const bool no_gpu = error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver;
  return make_status(StatusCode::kCudaError, op, step, " failed: ", cudaGetErrorString(error), " (",
                     cudaGetErrorName(error), ")", no_gpu ? "; this kernel needs a CUDA GPU and its driver" : "");
}

inline bool dtype_valid(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

inline size_t align_up(size_t bytes, size_t alignment) { return (bytes + alignment - 1) / alignment * alignment; }

struct DeviceLimits {
  int max_shared_bytes = 0;  // dynamic shared memory one block may use (after opting in)
  int multiprocessors = 0;
};

inline Status device_limits(const char* op, DeviceLimits* limits) {
  int device = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return cuda_failure(op, "cudaGetDevice", error);
  error = cudaDeviceGetAttribute(&limits->max_shared_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&limits->multiprocessors, cudaDevAttrMultiProcessorCount, device);
  }
  if (error != cudaSuccess) return cuda_failure(op, "cudaDeviceGetAttribute", error);
  return Status{};
}

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) {
  return value;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float value) {
  return __float2half_rn(value);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

// One rounding from double, as torch's `(float64 tensor).to(dtype)` does.
template <typename T>
__device__ __forceinline__ T from_double(double value);
template <>
__device__ __forceinline__ float from_double<float>(double value) {
  return static_cast<float>(value);
}
template <>
__device__ __forceinline__ __half from_double<__half>(double value) {
  return __double2half(value);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double value) {
  return __double2bfloat16(value);
}

}  // namespace detail
}  // namespace htk
