// CUDA kernel of max_pool2d_gather: one thread per output element (grid-stride), visiting elements
// in the output's memory order so that writes and index reads are coalesced in either layout;
// every tensor is addressed through its strides (no copy of either layout). An index outside the
// input plane is a device-side assert, the CUDA form of the CPU kernel's check (a host check would
// need a sync per call).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "max_pool2d_gather.h"

namespace edlcm_ext {
namespace {

constexpr int kThreads = 256;

struct Strides4 {
  int64_t s[4];
};

template <typename scalar_t>
__global__ void max_pool2d_gather_kernel(const scalar_t* __restrict__ values, const int64_t* __restrict__ indices,
                                         scalar_t* __restrict__ out, int64_t numel, int64_t C, int64_t OH,
                                         int64_t OW, int64_t H, int64_t W, bool channels_last, Strides4 vs, Strides4 is,
                                         Strides4 os) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < numel;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, i, j, rest = e;
    if (channels_last) {  // e enumerates (n, i, j, c)
      c = rest % C; rest /= C; j = rest % OW; rest /= OW; i = rest % OH; n = rest / OH;
    } else {  // e enumerates (n, c, i, j)
      j = rest % OW; rest /= OW; i = rest % OH; rest /= OH; c = rest % C; n = rest / C;
    }
    const int64_t p = indices[n * is.s[0] + c * is.s[1] + i * is.s[2] + j * is.s[3]];
    CUDA_KERNEL_ASSERT(p >= 0 && p < H * W);
    out[n * os.s[0] + c * os.s[1] + i * os.s[2] + j * os.s[3]] =
        values[n * vs.s[0] + c * vs.s[1] + (p / W) * vs.s[2] + (p % W) * vs.s[3]];
  }
}

Strides4 strides_of(const at::Tensor& t) {
  return {{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

at::Tensor max_pool2d_gather_cuda(const at::Tensor& values, const at::Tensor& indices) {
  at::Tensor out = check_max_pool2d_gather_inputs(values, indices);
  TORCH_CHECK(values.is_cuda(), "max_pool2d_gather: expected CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(values.device());
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const bool channels_last = indices.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min((numel + kThreads - 1) / kThreads, cap)));
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "max_pool2d_gather_cuda", [&] {
    max_pool2d_gather_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        values.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), numel,
        indices.size(1), indices.size(2), indices.size(3), values.size(2), values.size(3), channels_last, strides_of(values),
        strides_of(indices), strides_of(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edlcm_ext, CUDA, m) {
  m.impl("max_pool2d_gather", &max_pool2d_gather_cuda);
}

}  // namespace edlcm_ext
