// htkernels._C: the launchers of htk.h for Python. Pointers and the stream travel as integers (torch's
// data_ptr() and cuda_stream). A launcher returns its Status as a (code, message) tuple: 0 ok, 1 bad argument,
// 2 CUDA failure; htkernels/cuda_ops.py raises the typed error. No C++ exception crosses this module, so an
// error path does not depend on exception unwinding working between this module, libstdc++ and the interpreter.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>

#include "htk.h"

namespace py = pybind11;

namespace {

template <typename T>
T* as_pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

using StatusTuple = std::pair<int, std::string>;

StatusTuple as_tuple(const htk::Status& status) { return {static_cast<int>(status.code), std::string(status.message)}; }

htk::DType dtype_from_code(int code) { return static_cast<htk::DType>(code); }

StatusTuple adapter_spatial(std::uintptr_t z, std::uintptr_t g, int dtype, int64_t batch, int64_t h, int64_t w,
                            int64_t channels, int64_t noise_hidden, std::uintptr_t spectral, std::uintptr_t k3,
                            std::uintptr_t k5, std::uintptr_t k7, std::uintptr_t conv_bias, std::uintptr_t noise_w1,
                            std::uintptr_t noise_b1, std::uintptr_t noise_w2, std::uintptr_t noise_b2,
                            std::uintptr_t proj, std::uintptr_t proj_bias, std::uintptr_t workspace,
                            std::size_t workspace_bytes, std::uintptr_t stream) {
  return as_tuple(htk::adapter_spatial(
      as_pointer<const void>(z), as_pointer<void>(g), dtype_from_code(dtype), batch, h, w, channels, noise_hidden,
      as_pointer<const float>(spectral), as_pointer<const float>(k3), as_pointer<const float>(k5),
      as_pointer<const float>(k7), as_pointer<const float>(conv_bias), as_pointer<const float>(noise_w1),
      as_pointer<const float>(noise_b1), as_pointer<const float>(noise_w2), as_pointer<const float>(noise_b2),
      as_pointer<const float>(proj), as_pointer<const float>(proj_bias), as_pointer<void>(workspace), workspace_bytes,
      as_pointer<CUstream_st>(stream)));
}

StatusTuple preprocess(std::uintptr_t frames, std::uintptr_t row_weights, std::uintptr_t col_weights,
                       std::uintptr_t images, int out_dtype, double scale, int64_t batch, int64_t height, int64_t width,
                       int64_t frame_channels, int64_t out_h, int64_t out_w, std::uintptr_t workspace,
                       std::size_t workspace_bytes, std::uintptr_t stream) {
  return as_tuple(htk::preprocess(as_pointer<const uint8_t>(frames), as_pointer<const int32_t>(row_weights),
                                  as_pointer<const int32_t>(col_weights), as_pointer<void>(images),
                                  dtype_from_code(out_dtype), scale, batch, height, width, frame_channels, out_h, out_w,
                                  as_pointer<void>(workspace), workspace_bytes, as_pointer<CUstream_st>(stream)));
}

// Number of visible CUDA devices, 0 (not an error) where there is no GPU or driver.
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // the failed query must not poison the next call
    return 0;
  }
  return count;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "HT CUDA C++ kernels (csrc/): adapter_spatial and preprocess over raw device pointers";
  m.attr("FLOAT32") = static_cast<int>(htk::DType::kFloat32);
  m.attr("FLOAT16") = static_cast<int>(htk::DType::kFloat16);
  m.attr("BFLOAT16") = static_cast<int>(htk::DType::kBFloat16);
  m.attr("MAX_GRID_SIDE") = htk::kMaxGridSide;
  m.attr("MAX_ADAPTER_CHANNELS") = htk::kMaxAdapterChannels;
  m.attr("CUDART_VERSION") = CUDART_VERSION;
  m.attr("STATUS_OK") = static_cast<int>(htk::StatusCode::kOk);
  m.attr("STATUS_INVALID_ARGUMENT") = static_cast<int>(htk::StatusCode::kInvalidArgument);
  m.attr("STATUS_CUDA_ERROR") = static_cast<int>(htk::StatusCode::kCudaError);

  m.def("adapter_spatial_workspace_bytes", &htk::adapter_spatial_workspace_bytes, py::arg("batch"), py::arg("h"),
        py::arg("w"), py::arg("channels"), py::arg("spectral"));
  m.def("adapter_spatial", &adapter_spatial,
        "(code, message) of g = adapter_spatial(z, ...) into g; see htkernels/README.md", py::arg("z"), py::arg("g"),
        py::arg("dtype"), py::arg("batch"), py::arg("h"), py::arg("w"), py::arg("channels"), py::arg("noise_hidden"),
        py::arg("spectral"), py::arg("k3"), py::arg("k5"), py::arg("k7"), py::arg("conv_bias"), py::arg("noise_w1"),
        py::arg("noise_b1"), py::arg("noise_w2"), py::arg("noise_b2"), py::arg("proj"), py::arg("proj_bias"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));
  m.def("preprocess_workspace_bytes", &htk::preprocess_workspace_bytes, py::arg("batch"), py::arg("height"),
        py::arg("out_h"), py::arg("out_w"));
  m.def("preprocess", &preprocess, "(code, message) of images = preprocess(frames, ...); see htkernels/README.md",
        py::arg("frames"), py::arg("row_weights"), py::arg("col_weights"), py::arg("images"), py::arg("out_dtype"),
        py::arg("scale"), py::arg("batch"), py::arg("height"), py::arg("width"), py::arg("frame_channels"),
        py::arg("out_h"), py::arg("out_w"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));
  m.def("device_count", &device_count, "visible CUDA devices; 0 without a GPU or driver");
}
