// Host API of the HT CUDA kernels. Plain C++ over raw device pointers and a cudaStream_t: no libtorch, so the same
// launchers serve the Python extension (bindings.cpp), a TensorRT plugin or a C++ program. The op contracts are in
// htkernels/README.md; every launcher checks its arguments before touching the GPU and reports failures through
// the returned Status instead of aborting.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace htk {

// Storage dtype of activations and images. Math is fp32 whatever the storage.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

enum class StatusCode : int { kOk = 0, kInvalidArgument = 1, kCudaError = 2 };

// A launcher's result. Plain data (no heap, no std::string), so it crosses library and compiler boundaries intact:
// the message is NUL-terminated, empty when ok, cut at kStatusMessageCapacity - 1 characters.
constexpr size_t kStatusMessageCapacity = 512;

struct Status {
  StatusCode code = StatusCode::kOk;
  char message[kStatusMessageCapacity] = {};

  bool ok() const { return code == StatusCode::kOk; }
};

// Limits the launchers accept (the op contract promises grids up to 32x32).
constexpr int64_t kMaxGridSide = 32;
constexpr int64_t kMaxAdapterChannels = 128;
constexpr int64_t kMaxNoiseHidden = 1024;
constexpr int64_t kMaxFrameSide = 16384;
constexpr int64_t kMaxImageSide = 4096;

// Bytes of scratch device memory adapter_spatial needs (pooled means, and the filtered grid for spectral filters).
size_t adapter_spatial_workspace_bytes(int64_t batch, int64_t h, int64_t w, int64_t channels, bool spectral);

// g = adapter_spatial(z, ...) as in htkernels/README.md. Activations z, g in `dtype`; every parameter fp32.
Status adapter_spatial(const void* z,  // [batch, 1 + h*w, channels] dtype
                       void* g,        // [batch, 1 + h*w, channels] dtype
                       DType dtype, int64_t batch, int64_t h, int64_t w, int64_t channels, int64_t noise_hidden,
                       const float* spectral,   // [channels, h, w/2 + 1, 2] (real, imag) or nullptr
                       const float* k3,         // [channels, 3, 3]
                       const float* k5,         // [channels, 5, 5]
                       const float* k7,         // [channels, 7, 7]
                       const float* conv_bias,  // [3, channels]
                       const float* noise_w1,   // [noise_hidden, channels]
                       const float* noise_b1,   // [noise_hidden]
                       const float* noise_w2,   // [3, noise_hidden]
                       const float* noise_b2,   // [3]
                       const float* proj,       // [channels, channels]
                       const float* proj_bias,  // [channels]
                       void* workspace,         // [adapter_spatial_workspace_bytes(...)] bytes
                       size_t workspace_bytes, cudaStream_t stream);

// Bytes of scratch device memory preprocess needs (tap ranges and the horizontally resized uint8 frames).
size_t preprocess_workspace_bytes(int64_t batch, int64_t height, int64_t out_h, int64_t out_w);

// images = preprocess(frames, ...) as in htkernels/README.md: Pillow-exact luma, bicubic resize, scale, 3 channels.
Status preprocess(const uint8_t* frames,       // [batch, height, width, frame_channels] uint8, frame_channels 1 or 3
                  const int32_t* row_weights,  // [out_h, height] fixed point, 22 fractional bits
                  const int32_t* col_weights,  // [out_w, width] fixed point, 22 fractional bits
                  void* images,                // [batch, 3, out_h, out_w] out_dtype
                  DType out_dtype, double scale, int64_t batch, int64_t height, int64_t width, int64_t frame_channels,
                  int64_t out_h, int64_t out_w,
                  void* workspace,  // [preprocess_workspace_bytes(...)] bytes
                  size_t workspace_bytes, cudaStream_t stream);

}  // namespace htk
