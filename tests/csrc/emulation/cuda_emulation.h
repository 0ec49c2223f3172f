// A CPU emulation of the few CUDA constructs csrc/ uses, so the kernels' own source runs (and is tested) on a
// machine without a GPU: each block runs in turn, each of its threads is a std::thread, __syncthreads is a
// std::barrier, __shared__ variables are statics (one block at a time), and dynamic shared memory is a NaN-filled
// buffer (a read before a write shows up as NaN in the output). Kernel launches `k<<<grid, block, smem, stream>>>(...)`
// are rewritten to `emu::launch(k, grid, block, smem, stream)(...)` by emulation/__init__.py. It checks logic
// (indexing, reductions, barriers, numerics), not GPU-only behaviour: memory model, occupancy, timing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdlib>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static

using std::max;
using std::min;

namespace emu {

inline thread_local uint3 thread_index;
inline thread_local uint3 block_index;
inline std::barrier<>* block_barrier = nullptr;
inline float* dynamic_shared = nullptr;

template <typename... KernelArgs>
struct Launch {
  void (*kernel)(KernelArgs...);
  dim3 grid;
  dim3 block;
  size_t shared_bytes;

  template <typename... Args>
  void operator()(Args&&... args) const {
    std::vector<float> storage(shared_bytes / sizeof(float) + 1);
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::fill(storage.begin(), storage.end(), std::nanf(""));
        dynamic_shared = storage.data();
        std::barrier<> barrier(block.x);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block.x; ++t) {
          threads.emplace_back([&, t] {
            thread_index = uint3{t, 0, 0};
            block_index = uint3{bx, by, 0};
            kernel(KernelArgs(args)...);
            block_barrier->arrive_and_drop();  // a thread that returned early must not hold the others
          });
        }
        for (auto& thread : threads) thread.join();
      }
    }
  }
};

template <typename... KernelArgs>
Launch<KernelArgs...> launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes = 0,
                             cudaStream_t = nullptr) {
  return Launch<KernelArgs...>{kernel, grid, block, shared_bytes};
}

inline void atomic_min(int* address, int value) {
  std::atomic_ref<int> target(*address);
  int current = target.load();
  while (value < current && !target.compare_exchange_weak(current, value)) {
  }
}

inline void atomic_max(int* address, int value) {
  std::atomic_ref<int> target(*address);
  int current = target.load();
  while (value > current && !target.compare_exchange_weak(current, value)) {
  }
}

inline void sincospi(float x, float* sine, float* cosine) {
  const double angle = M_PI * static_cast<double>(x);
  *sine = static_cast<float>(std::sin(angle));
  *cosine = static_cast<float>(std::cos(angle));
}

}  // namespace emu

#define threadIdx emu::thread_index
#define blockIdx emu::block_index
#define atomicMin emu::atomic_min
#define atomicMax emu::atomic_max
#define sincospif emu::sincospi

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

// The emulated device: one GPU with H100's shared memory per block; nothing can fail.
template <class Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel*, cudaFuncAttribute, int) {
  return cudaSuccess;
}
