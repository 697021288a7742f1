// CUDA kernels of curvature_stats. Forward: one block per sample b, whose threads stride over D
// and block-reduce each of the M(M+1)/2 dot products. Backward: blocks tile (B, D); each block
// derives its sample's M*M coefficients in shared memory, then writes grad_u for its slice of D.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "curvature_stats.h"

namespace edlcm_ext {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void curvature_stats_forward_kernel(
    const scalar_t* __restrict__ u, scalar_t* __restrict__ sq_norms, scalar_t* __restrict__ cosines,
    int64_t M, int64_t B, int64_t D, acc_t eps) {
  using BlockReduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* gram = reinterpret_cast<acc_t*>(shared_bytes);  // M*M, upper triangle used
  const int64_t b = blockIdx.x;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = i; j < M; ++j) {
      const scalar_t* u_i = u + (i * B + b) * D;
      const scalar_t* u_j = u + (j * B + b) * D;
      acc_t partial = 0;
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        partial += static_cast<acc_t>(u_i[d]) * static_cast<acc_t>(u_j[d]);
      }
      const acc_t dot = BlockReduce(temp).Sum(partial);
      if (threadIdx.x == 0) gram[i * M + j] = dot;
      __syncthreads();  // temp storage is reused by the next reduction
    }
  }
  if (threadIdx.x == 0) {
    int64_t pair = 0;
    for (int64_t i = 0; i < M; ++i) {
      sq_norms[i * B + b] = static_cast<scalar_t>(gram[i * M + i]);
      const acc_t a_i = max(sqrt(gram[i * M + i]), eps);
      for (int64_t j = i + 1; j < M; ++j, ++pair) {
        const acc_t a_j = max(sqrt(gram[j * M + j]), eps);
        cosines[pair * B + b] = static_cast<scalar_t>(gram[i * M + j] / (a_i * a_j));
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void curvature_stats_backward_kernel(
    const scalar_t* __restrict__ grad_sq_norms, const scalar_t* __restrict__ grad_cosines,
    const scalar_t* __restrict__ u, const scalar_t* __restrict__ sq_norms,
    const scalar_t* __restrict__ cosines, scalar_t* __restrict__ grad_u, int64_t M, int64_t B,
    int64_t D, acc_t eps) {
  extern __shared__ unsigned char shared_bytes[];
  acc_t* coeff = reinterpret_cast<acc_t*>(shared_bytes);  // M*M
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) {
    curvature_stats_backward_coefficients<scalar_t, acc_t>(
        M, B, grad_sq_norms + b, grad_cosines + b, sq_norms + b, cosines + b, eps, coeff);
  }
  __syncthreads();
  // grid.y is capped at 65535 blocks: loop over the rest of D.
  for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; d < D;
       d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    for (int64_t m = 0; m < M; ++m) {
      acc_t value = 0;
      for (int64_t k = 0; k < M; ++k) value += coeff[m * M + k] * static_cast<acc_t>(u[(k * B + b) * D + d]);
      grad_u[(m * B + b) * D + d] = static_cast<scalar_t>(value);
    }
  }
}

// Both kernels keep an M x M matrix of acc_t per sample in dynamic shared memory.
void check_shared_memory(int64_t M, size_t acc_bytes, const char* op) {
  constexpr size_t kDefaultSharedBytes = 48 * 1024;  // usable without an opt-in attribute
  const size_t needed = static_cast<size_t>(M) * static_cast<size_t>(M) * acc_bytes;
  TORCH_CHECK(needed <= kDefaultSharedBytes, op, ": ", M, " members need ", needed,
              " bytes of shared memory per block (M*M accumulators), more than the ", kDefaultSharedBytes,
              " available; use at most ", static_cast<int64_t>(std::sqrt(kDefaultSharedBytes / acc_bytes)),
              " members in this dtype");
}

std::tuple<at::Tensor, at::Tensor> curvature_stats_cuda(const at::Tensor& u_in, double eps) {
  check_curvature_stats_input(u_in);
  TORCH_CHECK(u_in.is_cuda(), "curvature_stats: expected a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(u_in.device());
  const at::Tensor u = u_in.contiguous();
  const int64_t M = u.size(0), B = u.size(1), D = u.size(2);
  at::Tensor sq_norms = at::empty({M, B}, u.options());
  at::Tensor cosines = at::empty({M * (M - 1) / 2, B}, u.options());
  if (M == 0 || B == 0) return {sq_norms, cosines};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "curvature_stats_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    check_shared_memory(M, sizeof(acc_t), "curvature_stats");
    curvature_stats_forward_kernel<scalar_t, acc_t>
        <<<B, kThreads, M * M * sizeof(acc_t), at::cuda::getCurrentCUDAStream()>>>(
            u.const_data_ptr<scalar_t>(), sq_norms.mutable_data_ptr<scalar_t>(),
            cosines.mutable_data_ptr<scalar_t>(), M, B, D, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sq_norms, cosines};
}

at::Tensor curvature_stats_backward_cuda(
    const at::Tensor& grad_sq_norms_in, const at::Tensor& grad_cosines_in, const at::Tensor& u_in,
    const at::Tensor& sq_norms_in, const at::Tensor& cosines_in, double eps) {
  check_curvature_stats_backward_inputs(grad_sq_norms_in, grad_cosines_in, u_in, sq_norms_in, cosines_in);
  TORCH_CHECK(u_in.is_cuda(), "_curvature_stats_backward: expected CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(u_in.device());
  const at::Tensor u = u_in.contiguous(), grad_sq_norms = grad_sq_norms_in.contiguous(),
                   grad_cosines = grad_cosines_in.contiguous(), sq_norms = sq_norms_in.contiguous(),
                   cosines = cosines_in.contiguous();
  const int64_t M = u.size(0), B = u.size(1), D = u.size(2);
  at::Tensor grad_u = at::empty_like(u);
  if (u.numel() == 0) return grad_u;
  // B on x (limit 2^31 - 1); D on y, whose limit is 65535 blocks: the kernel loops over the excess.
  const dim3 grid(B, std::min<int64_t>((D + kThreads - 1) / kThreads, 65535));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "curvature_stats_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    check_shared_memory(M, sizeof(acc_t), "_curvature_stats_backward");
    curvature_stats_backward_kernel<scalar_t, acc_t>
        <<<grid, kThreads, M * M * sizeof(acc_t), at::cuda::getCurrentCUDAStream()>>>(
            grad_sq_norms.const_data_ptr<scalar_t>(), grad_cosines.const_data_ptr<scalar_t>(),
            u.const_data_ptr<scalar_t>(), sq_norms.const_data_ptr<scalar_t>(),
            cosines.const_data_ptr<scalar_t>(), grad_u.mutable_data_ptr<scalar_t>(), M, B, D,
            static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_u;
}

}  // namespace

TORCH_LIBRARY_IMPL(edlcm_ext, CUDA, m) {
  m.impl("curvature_stats", &curvature_stats_cuda);
  m.impl("_curvature_stats_backward", &curvature_stats_backward_cuda);
}

}  // namespace edlcm_ext
