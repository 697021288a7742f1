// CPU kernel of max_pool2d_gather: one task per sample; within it, the loop order follows the
// indices' layout (channels innermost for channels_last), and every tensor is read through its
// strides, so neither layout is copied.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "max_pool2d_gather.h"

namespace edlcm_ext {
namespace {

at::Tensor max_pool2d_gather_cpu(const at::Tensor& values, const at::Tensor& indices) {
  at::Tensor out = check_max_pool2d_gather_inputs(values, indices);
  TORCH_CHECK(values.device().is_cpu(), "max_pool2d_gather: expected CPU tensors");
  const int64_t N = indices.size(0), C = indices.size(1), OH = indices.size(2), OW = indices.size(3);
  const int64_t W = values.size(3), plane = values.size(2) * W;
  const bool channels_last = indices.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "max_pool2d_gather_cpu", [&] {
    const scalar_t* v = values.const_data_ptr<scalar_t>();
    const int64_t* idx = indices.const_data_ptr<int64_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const auto vs = values.strides(), is = indices.strides(), os = out.strides();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      auto gather = [&](int64_t n, int64_t c, int64_t i, int64_t j) {
        const int64_t p = idx[n * is[0] + c * is[1] + i * is[2] + j * is[3]];
        TORCH_CHECK(p >= 0 && p < plane, "max_pool2d_gather: index ", p, " outside the ", plane, "-element plane");
        o[n * os[0] + c * os[1] + i * os[2] + j * os[3]] = v[n * vs[0] + c * vs[1] + (p / W) * vs[2] + (p % W) * vs[3]];
      };
      for (int64_t n = begin; n < end; ++n) {
        if (channels_last) {
          for (int64_t i = 0; i < OH; ++i)
            for (int64_t j = 0; j < OW; ++j)
              for (int64_t c = 0; c < C; ++c) gather(n, c, i, j);
        } else {
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < OH; ++i)
              for (int64_t j = 0; j < OW; ++j) gather(n, c, i, j);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edlcm_ext, CPU, m) {
  m.impl("max_pool2d_gather", &max_pool2d_gather_cpu);
}

}  // namespace edlcm_ext
