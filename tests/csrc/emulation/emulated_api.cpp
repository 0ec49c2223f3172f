// The CUDA runtime calls of csrc/ answered by the emulated device, and C entry points for ctypes.
#include <cstring>

#include "cuda_emulation.h"
#include "htk.h"

extern "C" {
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  *value = attribute == cudaDevAttrMultiProcessorCount ? 132 : 227 * 1024;  // an H100
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "emulated device"; }
const char* cudaGetErrorName(cudaError_t) { return "emulated device"; }

static int report(const htk::Status& status, char* message, size_t capacity) {
  std::strncpy(message, status.message, capacity - 1);
  message[capacity - 1] = '\0';
  return static_cast<int>(status.code);
}

int emu_adapter_spatial(const void* z, void* g, int dtype, int64_t batch, int64_t h, int64_t w, int64_t channels,
                        int64_t noise_hidden, const float* spectral, const float* k3, const float* k5, const float* k7,
                        const float* conv_bias, const float* noise_w1, const float* noise_b1, const float* noise_w2,
                        const float* noise_b2, const float* proj, const float* proj_bias, void* workspace,
                        size_t workspace_bytes, char* message, size_t capacity) {
  return report(htk::adapter_spatial(z, g, static_cast<htk::DType>(dtype), batch, h, w, channels, noise_hidden,
                                     spectral, k3, k5, k7, conv_bias, noise_w1, noise_b1, noise_w2, noise_b2, proj,
                                     proj_bias, workspace, workspace_bytes, nullptr),
                message, capacity);
}

size_t emu_adapter_spatial_workspace_bytes(int64_t batch, int64_t h, int64_t w, int64_t channels, int spectral) {
  return htk::adapter_spatial_workspace_bytes(batch, h, w, channels, spectral != 0);
}

int emu_preprocess(const uint8_t* frames, const int32_t* row_weights, const int32_t* col_weights, void* images,
                   int out_dtype, double scale, int64_t batch, int64_t height, int64_t width, int64_t frame_channels,
                   int64_t out_h, int64_t out_w, void* workspace, size_t workspace_bytes, char* message,
                   size_t capacity) {
  return report(
      htk::preprocess(frames, row_weights, col_weights, images, static_cast<htk::DType>(out_dtype), scale, batch,
                      height, width, frame_channels, out_h, out_w, workspace, workspace_bytes, nullptr),
      message, capacity);
}

size_t emu_preprocess_workspace_bytes(int64_t batch, int64_t height, int64_t out_h, int64_t out_w) {
  return htk::preprocess_workspace_bytes(batch, height, out_h, out_w);
}
}
