// adapter_spatial: filter (identity or spectral), noise estimation, dynamic 7x7 depthwise conv + residual, (I+P),
// GELU. Three steps per batch:
//   1. pooled means of the filtered grid per (image, channel); for a spectral filter the filtered grid itself,
//      computed per channel with small DFT matrix products in shared memory (no FFT library, any h, w <= 32);
//   2. (inside the mix kernel) alpha = softmax of the noise MLP, and per channel one 7x7 kernel
//      sum_k alpha_k pad(K_k) plus one bias, so the three convolutions cost one;
//   3. per tile of pixels: T = S + DW7(F) + bias for every channel in shared memory, then O = proj T + proj_bias
//      and the erf GELU, written token-major like z.
#include "common.cuh"

namespace htk {
namespace {

constexpr int kThreads = 256;
constexpr int kTaps = 49;
constexpr int kMaxTilePixels = 32;
// The projection step gives each thread kMaxTilePixels / (kThreads / channels) pixels at most.
constexpr int kMaxPixelsPerThread = kMaxTilePixels / (kThreads / static_cast<int>(kMaxAdapterChannels));
static_assert(kThreads / kMaxAdapterChannels >= 1, "a block must cover every output channel");

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Sum of `value` over the block; every thread gets the total. `scratch` holds kThreads floats.
__device__ float block_sum(float value, float* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();
  return total;
}

// Identity filter: pooled[b, c] = mean over the grid of S. Threads stripe (pixel, channel) with the channel fastest,
// so the loads of one warp are contiguous in z.
template <typename T>
__global__ void __launch_bounds__(kThreads) pool_kernel(const T* __restrict__ z,     // [batch, 1 + hw, channels]
                                                        float* __restrict__ pooled,  // [batch, channels]
                                                        int hw, int channels) {
  __shared__ float partial[kThreads];
  const int64_t b = blockIdx.x;
  const int rows = kThreads / channels;
  const int c = threadIdx.x % channels;
  const int row = threadIdx.x / channels;
  float sum = 0.0f;
  if (row < rows) {
    const T* image = z + (b * (1 + hw) + 1) * channels;
    for (int p = row; p < hw; p += rows) sum += detail::to_float(image[static_cast<int64_t>(p) * channels + c]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < channels) {
    float total = 0.0f;
    for (int r = 0; r < rows; ++r) total += partial[r * channels + threadIdx.x];
    pooled[b * channels + threadIdx.x] = total / static_cast<float>(hw);
  }
}

// Spectral filter of one (image, channel): F = irfft2(rfft2(S) * phi, s=(h, w)) as four small DFT products, with
// the C2R convention of irfft (imaginary parts of the DC and Nyquist columns ignored). Writes F channel-last and the
// mean of F.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    spectral_filter_kernel(const T* __restrict__ z,             // [batch, 1 + h*w, channels]
                           const float* __restrict__ spectral,  // [channels, h, w/2 + 1, 2]
                           float* __restrict__ filtered,        // [batch, h*w, channels]
                           float* __restrict__ pooled,          // [batch, channels]
                           int h, int w, int channels) {
  extern __shared__ float shared[];
  const int hw = h * w;
  const int half = w / 2 + 1;
  const int spectrum = h * half;
  float* grid = shared;              // [hw]
  float* cos_w = grid + hw;          // [w] cos(2 pi j / w)
  float* sin_w = cos_w + w;          // [w]
  float* cos_h = sin_w + w;          // [h]
  float* sin_h = cos_h + h;          // [h]
  float* a_re = sin_h + h;           // [h, half]
  float* a_im = a_re + spectrum;     // [h, half]
  float* x_re = a_im + spectrum;     // [h, half]
  float* x_im = x_re + spectrum;     // [h, half]
  float* scratch = x_im + spectrum;  // [kThreads]

  const int64_t b = blockIdx.x;
  const int c = blockIdx.y;
  const T* image = z + (b * (1 + hw) + 1) * channels + c;
  for (int p = threadIdx.x; p < hw; p += kThreads)
    grid[p] = detail::to_float(image[static_cast<int64_t>(p) * channels]);
  for (int j = threadIdx.x; j < w; j += kThreads) sincospif(2.0f * j / w, &sin_w[j], &cos_w[j]);
  for (int j = threadIdx.x; j < h; j += kThreads) sincospif(2.0f * j / h, &sin_h[j], &cos_h[j]);
  __syncthreads();

  // Rows: A[y, k] = sum_x S[y, x] e^{-2 pi i k x / w}.
  for (int index = threadIdx.x; index < spectrum; index += kThreads) {
    const int y = index / half;
    const int k = index % half;
    float re = 0.0f;
    float im = 0.0f;
    for (int x = 0, j = 0; x < w; ++x, j = (j + k) % w) {
      const float value = grid[y * w + x];
      re += value * cos_w[j];
      im -= value * sin_w[j];
    }
    a_re[index] = re;
    a_im[index] = im;
  }
  __syncthreads();

  // Columns: X[ky, k] = sum_y A[y, k] e^{-2 pi i ky y / h}, times phi[c, ky, k].
  const float* phi = spectral + static_cast<int64_t>(c) * spectrum * 2;
  for (int index = threadIdx.x; index < spectrum; index += kThreads) {
    const int ky = index / half;
    const int k = index % half;
    float re = 0.0f;
    float im = 0.0f;
    for (int y = 0, j = 0; y < h; ++y, j = (j + ky) % h) {
      const float ar = a_re[y * half + k];
      const float ai = a_im[y * half + k];
      re += ar * cos_h[j] + ai * sin_h[j];
      im += ai * cos_h[j] - ar * sin_h[j];
    }
    const float pr = phi[2 * index];
    const float pi = phi[2 * index + 1];
    x_re[index] = re * pr - im * pi;
    x_im[index] = re * pi + im * pr;
  }
  __syncthreads();

  // Inverse columns: B[y, k] = (1/h) sum_ky X[ky, k] e^{+2 pi i ky y / h} (into a_re/a_im).
  const float inv_h = 1.0f / static_cast<float>(h);
  for (int index = threadIdx.x; index < spectrum; index += kThreads) {
    const int y = index / half;
    const int k = index % half;
    float re = 0.0f;
    float im = 0.0f;
    for (int ky = 0, j = 0; ky < h; ++ky, j = (j + y) % h) {
      const float xr = x_re[ky * half + k];
      const float xi = x_im[ky * half + k];
      re += xr * cos_h[j] - xi * sin_h[j];
      im += xr * sin_h[j] + xi * cos_h[j];
    }
    a_re[index] = re * inv_h;
    a_im[index] = im * inv_h;
  }
  __syncthreads();

  // Inverse rows, real output: F[y, x] = (1/w) sum_k m_k Re(B[y, k] e^{+2 pi i k x / w}), m_k = 2 for the bins
  // that stand for a conjugate pair, 1 for DC and Nyquist.
  const float inv_w = 1.0f / static_cast<float>(w);
  float sum = 0.0f;
  float* out = filtered + b * hw * channels + c;
  for (int p = threadIdx.x; p < hw; p += kThreads) {
    const int y = p / w;
    const int x = p % w;
    float value = 0.0f;
    for (int k = 0, j = 0; k < half; ++k, j = (j + x) % w) {
      const float weight = (k == 0 || 2 * k == w) ? 1.0f : 2.0f;
      value += weight * (a_re[y * half + k] * cos_w[j] - a_im[y * half + k] * sin_w[j]);
    }
    value *= inv_w;
    out[static_cast<int64_t>(p) * channels] = value;
    sum += value;
  }
  const float total = block_sum(sum, scratch);
  if (threadIdx.x == 0) pooled[b * channels + c] = total / static_cast<float>(hw);
}

struct MixParams {
  const float* pooled;     // [batch, channels]
  const float* k3;         // [channels, 3, 3]
  const float* k5;         // [channels, 5, 5]
  const float* k7;         // [channels, 7, 7]
  const float* conv_bias;  // [3, channels]
  const float* noise_w1;   // [noise_hidden, channels]
  const float* noise_b1;   // [noise_hidden]
  const float* noise_w2;   // [3, noise_hidden]
  const float* noise_b2;   // [3]
  const float* proj;       // [channels, channels]
  const float* proj_bias;  // [channels]
  int h, w, channels, noise_hidden, tile_pixels;
};

size_t mix_shared_bytes(int channels, int noise_hidden, int tile_pixels) {
  const size_t floats = static_cast<size_t>(channels) * channels + static_cast<size_t>(channels) * kTaps + channels +
                        static_cast<size_t>(tile_pixels) * channels + noise_hidden + 4;
  return floats * sizeof(float);
}

// One block per (image, tile of pixels). `filtered` is S itself (TF = T, image stride (1 + hw) * channels, CLS
// skipped by the caller) or the spectral kernel's output (TF = float, image stride hw * channels).
template <typename T, typename TF>
__global__ void __launch_bounds__(kThreads)
    mix_kernel(const T* __restrict__ z,          // [batch, 1 + hw, channels]
               const TF* __restrict__ filtered,  // [batch, hw, channels] with image stride filtered_stride
               int64_t filtered_stride, MixParams params,
               T* __restrict__ g) {  // [batch, 1 + hw, channels]
  extern __shared__ float shared[];
  const int channels = params.channels;
  const int hidden_size = params.noise_hidden;
  const int h = params.h;
  const int w = params.w;
  const int hw = h * w;
  float* proj_t = shared;                                // [channels (in), channels (out)]
  float* kernel = proj_t + channels * channels;          // [channels, 49]
  float* beta = kernel + channels * kTaps;               // [channels]
  float* tile = beta + channels;                         // [tile_pixels, channels]
  float* hidden = tile + params.tile_pixels * channels;  // [noise_hidden]
  float* alpha = hidden + hidden_size;                   // [3]

  const int64_t b = blockIdx.x;
  const int p0 = blockIdx.y * params.tile_pixels;
  const float* pooled = params.pooled + b * channels;

  for (int j = threadIdx.x; j < hidden_size; j += kThreads) {
    const float* row = params.noise_w1 + static_cast<int64_t>(j) * channels;
    float value = params.noise_b1[j];
    for (int c = 0; c < channels; ++c) value += row[c] * pooled[c];
    hidden[j] = fmaxf(value, 0.0f);
  }
  for (int index = threadIdx.x; index < channels * channels; index += kThreads) {
    const int o = index / channels;
    const int c = index % channels;
    proj_t[c * channels + o] = params.proj[index];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float logits[3];
    for (int k = 0; k < 3; ++k) {
      float value = params.noise_b2[k];
      for (int j = 0; j < hidden_size; ++j) value += params.noise_w2[k * hidden_size + j] * hidden[j];
      logits[k] = value;
    }
    const float top = fmaxf(logits[0], fmaxf(logits[1], logits[2]));
    float total = 0.0f;
    for (int k = 0; k < 3; ++k) {
      logits[k] = expf(logits[k] - top);
      total += logits[k];
    }
    for (int k = 0; k < 3; ++k) alpha[k] = logits[k] / total;
  }
  __syncthreads();

  const float a3 = alpha[0];
  const float a5 = alpha[1];
  const float a7 = alpha[2];
  for (int index = threadIdx.x; index < channels * kTaps; index += kThreads) {
    const int c = index / kTaps;
    const int tap = index % kTaps;
    const int dy = tap / 7 - 3;
    const int dx = tap % 7 - 3;
    float value = a7 * params.k7[index];
    if (abs(dy) <= 2 && abs(dx) <= 2) value += a5 * params.k5[c * 25 + (dy + 2) * 5 + dx + 2];
    if (abs(dy) <= 1 && abs(dx) <= 1) value += a3 * params.k3[c * 9 + (dy + 1) * 3 + dx + 1];
    kernel[index] = value;
  }
  for (int c = threadIdx.x; c < channels; c += kThreads) {
    beta[c] = a3 * params.conv_bias[c] + a5 * params.conv_bias[channels + c] + a7 * params.conv_bias[2 * channels + c];
  }
  __syncthreads();

  const T* spatial = z + (b * (1 + hw) + 1) * channels;
  const TF* source = filtered + b * filtered_stride;
  for (int index = threadIdx.x; index < params.tile_pixels * channels; index += kThreads) {
    const int local = index / channels;
    const int c = index % channels;
    const int p = p0 + local;
    if (p >= hw) continue;
    const int y = p / w;
    const int x = p % w;
    float value = beta[c] + detail::to_float(spatial[static_cast<int64_t>(p) * channels + c]);
    const float* taps = kernel + c * kTaps;
    for (int dy = -3; dy <= 3; ++dy) {
      const int yy = y + dy;
      if (yy < 0 || yy >= h) continue;
      for (int dx = -3; dx <= 3; ++dx) {
        const int xx = x + dx;
        if (xx < 0 || xx >= w) continue;
        value +=
            taps[(dy + 3) * 7 + dx + 3] * detail::to_float(source[static_cast<int64_t>(yy * w + xx) * channels + c]);
      }
    }
    tile[local * channels + c] = value;
  }
  __syncthreads();

  // O = proj T + proj_bias and GELU. Each thread owns one output channel and every `groups`-th pixel of the tile,
  // so one load of a projection weight serves up to kMaxPixelsPerThread pixels.
  T* out = g + b * (1 + hw) * channels;
  const int groups = kThreads / channels;
  const int o = threadIdx.x % channels;
  const int group = threadIdx.x / channels;
  const int limit = min(params.tile_pixels, hw - p0);
  const int count = group < min(groups, limit) ? (limit - group + groups - 1) / groups : 0;
  float acc[kMaxPixelsPerThread];
#pragma unroll
  for (int i = 0; i < kMaxPixelsPerThread; ++i) acc[i] = count > 0 ? params.proj_bias[o] : 0.0f;
  if (count > 0) {
    for (int c = 0; c < channels; ++c) {
      const float weight = proj_t[c * channels + o];
#pragma unroll
      for (int i = 0; i < kMaxPixelsPerThread; ++i) {
        if (i < count) acc[i] += weight * tile[(group + i * groups) * channels + c];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxPixelsPerThread; ++i) {
    if (i < count) {
      const int64_t token = 1 + p0 + group + i * groups;
      out[token * channels + o] = detail::from_float<T>(gelu_erf(acc[i]));
    }
  }
  if (blockIdx.y == 0) {
    const T* cls = z + b * (1 + hw) * channels;
    for (int c = threadIdx.x; c < channels; c += kThreads)
      out[c] = detail::from_float<T>(gelu_erf(detail::to_float(cls[c])));
  }
}

constexpr const char* kOp = "adapter_spatial";

// Blocks above the default 48 KiB of dynamic shared memory need an opt-in; skipping the call below that keeps
// launches cheap and free of non-stream API calls inside CUDA graph capture.
template <typename Kernel>
cudaError_t allow_dynamic_shared(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

size_t pooled_bytes(int64_t batch, int64_t channels) {
  return detail::align_up(static_cast<size_t>(batch) * channels * sizeof(float), 256);
}

template <typename T>
Status launch(const void* z_raw, void* g_raw, int64_t batch, int h, int w, int channels, int noise_hidden,
              const float* spectral, MixParams params, void* workspace, const detail::DeviceLimits& limits,
              cudaStream_t stream) {
  const T* z = static_cast<const T*>(z_raw);
  T* g = static_cast<T*>(g_raw);
  const int hw = h * w;
  float* pooled = static_cast<float*>(workspace);
  float* filtered = reinterpret_cast<float*>(static_cast<char*>(workspace) + pooled_bytes(batch, channels));
  params.pooled = pooled;

  // Tiles of 32 pixels amortize each block's prologue (alpha, folded kernels, projection); smaller ones keep the
  // GPU busy when there are few images (batch 1: 7 blocks of 32 pixels for a 14x14 grid, 25 of 8).
  const size_t max_shared = static_cast<size_t>(limits.max_shared_bytes);
  const int64_t enough_blocks = 2 * static_cast<int64_t>(limits.multiprocessors);
  int tile_pixels = kMaxTilePixels;
  while (tile_pixels > 8 && batch * ((hw + tile_pixels - 1) / tile_pixels) < enough_blocks) tile_pixels /= 2;
  while (tile_pixels > 1 && mix_shared_bytes(channels, noise_hidden, tile_pixels) > max_shared) tile_pixels /= 2;
  const size_t mix_bytes = mix_shared_bytes(channels, noise_hidden, tile_pixels);
  if (mix_bytes > max_shared) {
    return detail::invalid_argument(kOp, channels, " channels need ", mix_bytes,
                                    " bytes of shared memory per block; this GPU allows ", max_shared);
  }
  params.tile_pixels = tile_pixels;
  const dim3 mix_grid(static_cast<unsigned>(batch), static_cast<unsigned>((hw + tile_pixels - 1) / tile_pixels));

  cudaError_t error = cudaSuccess;
  if (spectral == nullptr) {
    error = allow_dynamic_shared(mix_kernel<T, T>, mix_bytes);
    if (error != cudaSuccess) return detail::cuda_failure(kOp, "cudaFuncSetAttribute", error);
    pool_kernel<T><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(z, pooled, hw, channels);
    mix_kernel<T, T><<<mix_grid, kThreads, mix_bytes, stream>>>(z, z + channels,
                                                                static_cast<int64_t>(1 + hw) * channels, params, g);
  } else {
    error = allow_dynamic_shared(mix_kernel<T, float>, mix_bytes);
    if (error != cudaSuccess) return detail::cuda_failure(kOp, "cudaFuncSetAttribute", error);
    const int half = w / 2 + 1;
    const size_t filter_bytes = (static_cast<size_t>(hw) + 2 * (h + w) + 4 * h * half + kThreads) * sizeof(float);
    const dim3 filter_grid(static_cast<unsigned>(batch), static_cast<unsigned>(channels));
    spectral_filter_kernel<T>
        <<<filter_grid, kThreads, filter_bytes, stream>>>(z, spectral, filtered, pooled, h, w, channels);
    mix_kernel<T, float>
        <<<mix_grid, kThreads, mix_bytes, stream>>>(z, filtered, static_cast<int64_t>(hw) * channels, params, g);
  }
  error = cudaGetLastError();
  if (error != cudaSuccess) return detail::cuda_failure(kOp, "kernel launch", error);
  return Status{};
}

}  // namespace

size_t adapter_spatial_workspace_bytes(int64_t batch, int64_t h, int64_t w, int64_t channels, bool spectral) {
  if (batch <= 0 || h <= 0 || w <= 0 || channels <= 0) return 0;
  size_t bytes = pooled_bytes(batch, channels);
  if (spectral) bytes += static_cast<size_t>(batch) * h * w * channels * sizeof(float);
  return bytes;
}

Status adapter_spatial(const void* z, void* g, DType dtype, int64_t batch, int64_t h, int64_t w, int64_t channels,
                       int64_t noise_hidden, const float* spectral, const float* k3, const float* k5, const float* k7,
                       const float* conv_bias, const float* noise_w1, const float* noise_b1, const float* noise_w2,
                       const float* noise_b2, const float* proj, const float* proj_bias, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream) {
  if (!detail::dtype_valid(dtype)) {
    return detail::invalid_argument(kOp, "dtype code ", static_cast<int>(dtype),
                                    " is not one of float32 (0), float16 (1), bfloat16 (2)");
  }
  if (batch < 0 || batch > INT32_MAX) return detail::invalid_argument(kOp, "batch ", batch, " is not in [0, 2^31)");
  if (h < 1 || h > kMaxGridSide || w < 1 || w > kMaxGridSide) {
    return detail::invalid_argument(kOp, "grid ", h, "x", w, " is out of range; h and w must be in [1, ", kMaxGridSide,
                                    "]");
  }
  if (channels < 1 || channels > kMaxAdapterChannels) {
    return detail::invalid_argument(kOp, "channels ", channels, " is out of range; expected [1, ", kMaxAdapterChannels,
                                    "]");
  }
  if (noise_hidden < 1 || noise_hidden > kMaxNoiseHidden) {
    return detail::invalid_argument(kOp, "noise_hidden ", noise_hidden, " is out of range; expected [1, ",
                                    kMaxNoiseHidden, "]");
  }
  const std::pair<const char*, const void*> required[] = {{"z", z},
                                                          {"g", g},
                                                          {"k3", k3},
                                                          {"k5", k5},
                                                          {"k7", k7},
                                                          {"conv_bias", conv_bias},
                                                          {"noise_w1", noise_w1},
                                                          {"noise_b1", noise_b1},
                                                          {"noise_w2", noise_w2},
                                                          {"noise_b2", noise_b2},
                                                          {"proj", proj},
                                                          {"proj_bias", proj_bias},
                                                          {"workspace", workspace}};
  for (const auto& [name, pointer] : required) {
    if (pointer == nullptr) return detail::invalid_argument(kOp, name, " is a null pointer");
  }
  if (z == g) return detail::invalid_argument(kOp, "g must not alias z (the convolution reads neighbours of z)");
  const size_t needed = adapter_spatial_workspace_bytes(batch, h, w, channels, spectral != nullptr);
  if (workspace_bytes < needed) {
    return detail::invalid_argument(kOp, "workspace has ", workspace_bytes, " bytes, needs ", needed);
  }
  if (batch == 0) return Status{};

  detail::DeviceLimits limits;
  Status status = detail::device_limits(kOp, &limits);
  if (!status.ok()) return status;
  MixParams params{nullptr,
                   k3,
                   k5,
                   k7,
                   conv_bias,
                   noise_w1,
                   noise_b1,
                   noise_w2,
                   noise_b2,
                   proj,
                   proj_bias,
                   static_cast<int>(h),
                   static_cast<int>(w),
                   static_cast<int>(channels),
                   static_cast<int>(noise_hidden),
                   0};
  const int hi = static_cast<int>(h);
  const int wi = static_cast<int>(w);
  const int ci = static_cast<int>(channels);
  const int ni = static_cast<int>(noise_hidden);
  switch (dtype) {
    case DType::kFloat32:
      return launch<float>(z, g, batch, hi, wi, ci, ni, spectral, params, workspace, limits, stream);
    case DType::kFloat16:
      return launch<__half>(z, g, batch, hi, wi, ci, ni, spectral, params, workspace, limits, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(z, g, batch, hi, wi, ci, ni, spectral, params, workspace, limits, stream);
  }
  return detail::invalid_argument(kOp, "unreachable dtype");
}

}  // namespace htk
