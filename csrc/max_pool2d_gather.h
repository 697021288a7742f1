// Shared by the CPU and CUDA kernels of max_pool2d_gather: argument checks and the output.
#pragma once
#include <ATen/ATen.h>

namespace edlcm_ext {

// out[n, c, i, j] = values[n, c, p / W, p % W], p = indices[n, c, i, j], in the indices' layout.
inline at::Tensor check_max_pool2d_gather_inputs(const at::Tensor& values, const at::Tensor& indices) {
  TORCH_CHECK(values.dim() == 4, "max_pool2d_gather: values must have shape (N, C, H, W), got ", values.sizes());
  TORCH_CHECK(indices.dim() == 4 && indices.size(0) == values.size(0) && indices.size(1) == values.size(1),
              "max_pool2d_gather: indices must have shape (N, C, H_out, W_out) with values' N and C, got ",
              indices.sizes(), " for values ", values.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "max_pool2d_gather: indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(values.device() == indices.device(), "max_pool2d_gather: values and indices must be on one device");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "max_pool2d_gather: values must be float32 or float64, got ", values.scalar_type());
  return at::empty(indices.sizes(), values.options().memory_format(indices.suggest_memory_format()));
}

}  // namespace edlcm_ext
