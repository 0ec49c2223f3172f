// preprocess: uint8 frames (gray or RGB) -> Pillow-exact bicubic resize -> scaled 3-channel images.
// Pillow resizes horizontally first, rounds to uint8, then vertically; the coefficient matrices are dense
// [out, in] but each row has a short run of non-zero taps, so a first kernel finds each row's tap range and the
// passes only visit those. Integer accumulation (int64) makes every step exact, as the float64 reference is.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace htk {
namespace {

constexpr int kThreads = 256;
constexpr int kFractionBits = 22;
constexpr const char* kOp = "preprocess";

// ranges[2 * i], ranges[2 * i + 1] = first and last index of a non-zero coefficient of weight row i (first > last
// for an all-zero row). Rows 0..out_w-1 come from col_weights, the next out_h from row_weights.
__global__ void __launch_bounds__(kThreads)
    tap_range_kernel(const int32_t* __restrict__ col_weights,  // [out_w, width]
                     const int32_t* __restrict__ row_weights,  // [out_h, height]
                     int32_t* __restrict__ ranges,             // [out_w + out_h, 2]
                     int out_w, int width, int height) {
  __shared__ int first;
  __shared__ int last;
  const int row = blockIdx.x;
  const bool horizontal = row < out_w;
  const int length = horizontal ? width : height;
  const int32_t* weights = horizontal ? col_weights + static_cast<int64_t>(row) * width
                                      : row_weights + static_cast<int64_t>(row - out_w) * height;
  if (threadIdx.x == 0) {
    first = length;
    last = -1;
  }
  __syncthreads();
  int local_first = length;
  int local_last = -1;
  for (int i = threadIdx.x; i < length; i += kThreads) {
    if (weights[i] != 0) {
      local_first = min(local_first, i);
      local_last = max(local_last, i);
    }
  }
  if (local_last >= 0) {
    atomicMin(&first, local_first);
    atomicMax(&last, local_last);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    ranges[2 * row] = first;
    ranges[2 * row + 1] = last;
  }
}

__device__ __forceinline__ int luma(const uint8_t* __restrict__ pixel, int frame_channels) {
  if (frame_channels == 1) return pixel[0];
  return (pixel[0] * 19595 + pixel[1] * 38470 + pixel[2] * 7471 + 0x8000) >> 16;
}

// Pillow's fixed-point rounding: floor((acc + 2^21) / 2^22) clipped to [0, 255].
__device__ __forceinline__ int round_fixed_point(int64_t acc) {
  const int64_t value = (acc + (int64_t{1} << (kFractionBits - 1))) >> kFractionBits;
  return static_cast<int>(value < 0 ? 0 : (value > 255 ? 255 : value));
}

// Horizontal pass (with the luma conversion): rows[b, y, xo] uint8.
__global__ void __launch_bounds__(kThreads)
    horizontal_kernel(const uint8_t* __restrict__ frames,       // [batch, height, width, frame_channels]
                      const int32_t* __restrict__ col_weights,  // [out_w, width]
                      const int32_t* __restrict__ ranges,       // [out_w + out_h, 2]
                      uint8_t* __restrict__ rows,               // [batch, height, out_w]
                      int64_t total, int height, int width, int frame_channels, int out_w) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= total) return;
  const int xo = static_cast<int>(index % out_w);
  const int64_t line = index / out_w;  // b * height + y
  const uint8_t* source = frames + line * width * frame_channels;
  if (width == out_w) {
    rows[index] = static_cast<uint8_t>(luma(source + static_cast<int64_t>(xo) * frame_channels, frame_channels));
    return;
  }
  const int32_t* weights = col_weights + static_cast<int64_t>(xo) * width;
  int64_t acc = 0;
  for (int x = ranges[2 * xo]; x <= ranges[2 * xo + 1]; ++x) {
    acc += static_cast<int64_t>(weights[x]) * luma(source + static_cast<int64_t>(x) * frame_channels, frame_channels);
  }
  rows[index] = static_cast<uint8_t>(round_fixed_point(acc));
}

// Vertical pass, scale and the 3-channel repeat: images[b, :, yo, xo].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    vertical_kernel(const uint8_t* __restrict__ rows,         // [batch, height, out_w]
                    const int32_t* __restrict__ row_weights,  // [out_h, height]
                    const int32_t* __restrict__ ranges,       // [out_w + out_h, 2]
                    T* __restrict__ images,                   // [batch, 3, out_h, out_w]
                    int64_t total, int height, int out_h, int out_w, double scale) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= total) return;
  const int xo = static_cast<int>(index % out_w);
  const int yo = static_cast<int>((index / out_w) % out_h);
  const int64_t b = index / (static_cast<int64_t>(out_w) * out_h);
  const uint8_t* column = rows + b * height * out_w + xo;
  int value;
  if (height == out_h) {
    value = column[static_cast<int64_t>(yo) * out_w];
  } else {
    const int32_t* weights = row_weights + static_cast<int64_t>(yo) * height;
    const int32_t* range = ranges + 2 * (out_w + yo);
    int64_t acc = 0;
    for (int y = range[0]; y <= range[1]; ++y)
      acc += static_cast<int64_t>(weights[y]) * column[static_cast<int64_t>(y) * out_w];
    value = round_fixed_point(acc);
  }
  const T pixel = detail::from_double<T>(static_cast<double>(value) * scale);
  const int64_t plane = static_cast<int64_t>(out_h) * out_w;
  T* out = images + b * 3 * plane + static_cast<int64_t>(yo) * out_w + xo;
  out[0] = pixel;
  out[plane] = pixel;
  out[2 * plane] = pixel;
}

size_t ranges_bytes(int64_t out_h, int64_t out_w) {
  return detail::align_up(static_cast<size_t>(out_h + out_w) * 2 * sizeof(int32_t), 256);
}

unsigned blocks_for(int64_t total) { return static_cast<unsigned>((total + kThreads - 1) / kThreads); }

}  // namespace

size_t preprocess_workspace_bytes(int64_t batch, int64_t height, int64_t out_h, int64_t out_w) {
  if (batch <= 0 || height <= 0 || out_h <= 0 || out_w <= 0) return 0;
  return ranges_bytes(out_h, out_w) + static_cast<size_t>(batch) * height * out_w;
}

Status preprocess(const uint8_t* frames, const int32_t* row_weights, const int32_t* col_weights, void* images,
                  DType out_dtype, double scale, int64_t batch, int64_t height, int64_t width, int64_t frame_channels,
                  int64_t out_h, int64_t out_w, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (!detail::dtype_valid(out_dtype)) {
    return detail::invalid_argument(kOp, "out_dtype code ", static_cast<int>(out_dtype),
                                    " is not one of float32 (0), float16 (1), bfloat16 (2)");
  }
  if (frame_channels != 1 && frame_channels != 3) {
    return detail::invalid_argument(kOp, "frames have ", frame_channels, " channels; expected 1 (gray) or 3 (RGB)");
  }
  if (batch < 0) return detail::invalid_argument(kOp, "batch ", batch, " is negative");
  if (height < 1 || height > kMaxFrameSide || width < 1 || width > kMaxFrameSide) {
    return detail::invalid_argument(kOp, "frame size ", height, "x", width,
                                    " is out of range; each side must be in [1, ", kMaxFrameSide, "]");
  }
  if (out_h < 1 || out_h > kMaxImageSide || out_w < 1 || out_w > kMaxImageSide) {
    return detail::invalid_argument(kOp, "output size ", out_h, "x", out_w,
                                    " is out of range; each side must be in [1, ", kMaxImageSide, "]");
  }
  if (!std::isfinite(scale)) return detail::invalid_argument(kOp, "scale ", scale, " is not finite");
  // Every index fits int64 and every grid fits a launch below this many elements per buffer.
  constexpr int64_t kMaxElements = int64_t{1} << 38;
  if (batch > kMaxElements / (height * std::max(width * frame_channels, out_w)) ||
      batch > kMaxElements / (3 * out_h * out_w)) {
    return detail::invalid_argument(kOp, "batch ", batch, " of ", height, "x", width,
                                    " frames is too large for one launch; split it");
  }
  const std::pair<const char*, const void*> required[] = {{"frames", frames},
                                                          {"row_weights", row_weights},
                                                          {"col_weights", col_weights},
                                                          {"images", images},
                                                          {"workspace", workspace}};
  for (const auto& [name, pointer] : required) {
    if (pointer == nullptr) return detail::invalid_argument(kOp, name, " is a null pointer");
  }
  const size_t needed = preprocess_workspace_bytes(batch, height, out_h, out_w);
  if (workspace_bytes < needed) {
    return detail::invalid_argument(kOp, "workspace has ", workspace_bytes, " bytes, needs ", needed);
  }
  if (batch == 0) return Status{};

  int32_t* ranges = static_cast<int32_t*>(workspace);
  uint8_t* rows = static_cast<uint8_t*>(workspace) + ranges_bytes(out_h, out_w);
  const int h = static_cast<int>(height);
  const int w = static_cast<int>(width);
  const int oh = static_cast<int>(out_h);
  const int ow = static_cast<int>(out_w);
  tap_range_kernel<<<static_cast<unsigned>(out_h + out_w), kThreads, 0, stream>>>(col_weights, row_weights, ranges, ow,
                                                                                  w, h);
  const int64_t row_total = batch * height * out_w;
  horizontal_kernel<<<blocks_for(row_total), kThreads, 0, stream>>>(frames, col_weights, ranges, rows, row_total, h, w,
                                                                    static_cast<int>(frame_channels), ow);
  const int64_t out_total = batch * out_h * out_w;
  switch (out_dtype) {
    case DType::kFloat32:
      vertical_kernel<float><<<blocks_for(out_total), kThreads, 0, stream>>>(
          rows, row_weights, ranges, static_cast<float*>(images), out_total, h, oh, ow, scale);
      break;
    case DType::kFloat16:
      vertical_kernel<__half><<<blocks_for(out_total), kThreads, 0, stream>>>(
          rows, row_weights, ranges, static_cast<__half*>(images), out_total, h, oh, ow, scale);
      break;
    case DType::kBFloat16:
      vertical_kernel<__nv_bfloat16><<<blocks_for(out_total), kThreads, 0, stream>>>(
          rows, row_weights, ranges, static_cast<__nv_bfloat16*>(images), out_total, h, oh, ow, scale);
      break;
  }
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return detail::cuda_failure(kOp, "kernel launch", error);
  return Status{};
}

}  // namespace htk
