// CUDA kernels of batch_norm_backward and its backward. Per op, two launches: one block per
// channel sums that channel (cub block reduction of a ChannelSums struct) and turns the sums into
// the channel's coefficients; then one elementwise pass over all elements applies them. Both
// layouts users train in are taken as they are (no copy): contiguous (N, C, L) and channels_last
// (N, L, C) differ only in where element (n, c, l) lives. In channels_last the reduction reads with
// stride C (not coalesced); whether a (rows x channels) tiled reduction pays is for a GPU bench.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "batch_norm_backward.h"

namespace edlcm_ext {
namespace {

constexpr int kReduceThreads = 512;
constexpr int kElementwiseThreads = 256;

template <typename acc_t>
struct AddSums {
  __device__ ChannelSums<acc_t> operator()(const ChannelSums<acc_t>& a, const ChannelSums<acc_t>& b) const {
    return {a.gy + b.gy, a.gy_xhat + b.gy_xhat, a.gg + b.gg, a.gg_xhat + b.gg_xhat, a.gg_gy + b.gg_gy};
  }
};

// Linear index of element j = n * L + l of channel c.
__device__ __forceinline__ int64_t element_index(int64_t j, int64_t c, int64_t C, int64_t L, bool channels_last) {
  return channels_last ? j * C + c : ((j / L) * C + c) * L + j % L;
}

// Channel of linear index i.
__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t C, int64_t L, bool channels_last) {
  return channels_last ? i % C : (i / L) % C;
}

// Sums of channel blockIdx.x over its N * L elements; gg may be null.
template <typename scalar_t, typename acc_t>
__device__ ChannelSums<acc_t> channel_sums(
    const scalar_t* __restrict__ gy, const scalar_t* __restrict__ gg, const scalar_t* __restrict__ x,
    acc_t mu, acc_t sigma, int64_t N, int64_t C, int64_t L, bool channels_last) {
  using BlockReduce = cub::BlockReduce<ChannelSums<acc_t>, kReduceThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t c = blockIdx.x;
  ChannelSums<acc_t> sums;
  for (int64_t j = threadIdx.x; j < N * L; j += blockDim.x) {
    const int64_t i = element_index(j, c, C, L, channels_last);
    const acc_t g = gy[i];
    const acc_t xhat = (static_cast<acc_t>(x[i]) - mu) * sigma;
    sums.gy += g;
    sums.gy_xhat += g * xhat;
    if (gg != nullptr) {
      const acc_t gradgrad = gg[i];
      sums.gg += gradgrad;
      sums.gg_xhat += gradgrad * xhat;
      sums.gg_gy += gradgrad * g;
    }
  }
  return BlockReduce(temp).Reduce(sums, AddSums<acc_t>());  // valid in thread 0
}

template <typename scalar_t, typename acc_t>
__global__ void backward_reduce_kernel(
    const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
    const scalar_t* __restrict__ mean, const scalar_t* __restrict__ invstd, bool training, int64_t N, int64_t C,
    int64_t L, bool channels_last, BackwardCoefficients<acc_t>* __restrict__ coefficients,
    scalar_t* __restrict__ grad_weight, scalar_t* __restrict__ grad_bias) {
  const int64_t c = blockIdx.x;
  const acc_t mu = mean[c], sigma = invstd[c];
  const ChannelSums<acc_t> sums = channel_sums<scalar_t, acc_t>(gy, nullptr, x, mu, sigma, N, C, L, channels_last);
  if (threadIdx.x == 0) {
    const acc_t w = weight != nullptr ? static_cast<acc_t>(weight[c]) : acc_t(1);
    coefficients[c] = batch_norm_backward_coefficients<acc_t>(sums, static_cast<acc_t>(N * L), w, sigma, training);
    grad_weight[c] = static_cast<scalar_t>(sums.gy_xhat);
    grad_bias[c] = static_cast<scalar_t>(sums.gy);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_apply_kernel(
    const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ mean,
    const scalar_t* __restrict__ invstd, const BackwardCoefficients<acc_t>* __restrict__ coefficients,
    int64_t numel, int64_t C, int64_t L, bool channels_last, scalar_t* __restrict__ gx) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, C, L, channels_last);
    const BackwardCoefficients<acc_t> k = coefficients[c];
    const acc_t xhat = (static_cast<acc_t>(x[i]) - static_cast<acc_t>(mean[c])) * static_cast<acc_t>(invstd[c]);
    gx[i] = static_cast<scalar_t>(k.k_gy * static_cast<acc_t>(gy[i]) + k.k_xhat * xhat + k.k_const);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void double_backward_reduce_kernel(
    const scalar_t* __restrict__ gg, const scalar_t* __restrict__ ggw, const scalar_t* __restrict__ ggb,
    const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
    const scalar_t* __restrict__ mean, const scalar_t* __restrict__ invstd, bool training, int64_t N, int64_t C,
    int64_t L, bool channels_last, DoubleBackwardCoefficients<acc_t>* __restrict__ coefficients,
    scalar_t* __restrict__ grad_weight) {
  const int64_t c = blockIdx.x;
  const acc_t mu = mean[c], sigma = invstd[c];
  const ChannelSums<acc_t> sums = channel_sums<scalar_t, acc_t>(gy, gg, x, mu, sigma, N, C, L, channels_last);
  if (threadIdx.x == 0) {
    const acc_t w = weight != nullptr ? static_cast<acc_t>(weight[c]) : acc_t(1);
    const auto k = batch_norm_double_backward_coefficients<acc_t>(
        sums, static_cast<acc_t>(N * L), w, sigma, static_cast<acc_t>(ggw[c]), static_cast<acc_t>(ggb[c]), training);
    coefficients[c] = k;
    grad_weight[c] = static_cast<scalar_t>(k.grad_weight);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void double_backward_apply_kernel(
    const scalar_t* __restrict__ gg, const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ mean, const scalar_t* __restrict__ invstd,
    const DoubleBackwardCoefficients<acc_t>* __restrict__ coefficients, int64_t numel, int64_t C, int64_t L,
    bool channels_last, scalar_t* __restrict__ grad_grad_out, scalar_t* __restrict__ grad_input) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, C, L, channels_last);
    const DoubleBackwardCoefficients<acc_t> k = coefficients[c];
    const acc_t xhat = (static_cast<acc_t>(x[i]) - static_cast<acc_t>(mean[c])) * static_cast<acc_t>(invstd[c]);
    const acc_t g = gy[i], gradgrad = gg[i];
    grad_grad_out[i] = static_cast<scalar_t>(k.a_gg * gradgrad + k.a_xhat * xhat + k.a_const);
    grad_input[i] = static_cast<scalar_t>(k.b_gy * g + k.b_gg * gradgrad + k.b_xhat * xhat + k.b_const);
  }
}

struct Launch {
  int64_t N, C, L, numel;
  at::MemoryFormat format;  // channels_last (2-d or 3-d) when input is, else contiguous
  bool channels_last;
  explicit Launch(const at::Tensor& input)
      : N(input.size(0)), C(input.size(1)), L(input.numel() / std::max<int64_t>(1, input.size(0) * input.size(1))),
        numel(input.numel()), format(kernel_layout(input)), channels_last(format != at::MemoryFormat::Contiguous) {}
  unsigned elementwise_blocks() const {
    const int64_t wanted = (numel + kElementwiseThreads - 1) / kElementwiseThreads;
    const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
    return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, cap)));
  }
};

template <typename scalar_t>
const scalar_t* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& input_in, const std::optional<at::Tensor>& weight_in,
    const at::Tensor& mean_in, const at::Tensor& invstd_in, bool training) {
  check_batch_norm_backward_inputs("batch_norm_backward", grad_out_in, input_in, weight_in, mean_in, invstd_in);
  TORCH_CHECK(input_in.is_cuda(), "batch_norm_backward: expected CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(input_in.device());
  const Launch launch(input_in);
  const at::Tensor grad_out = grad_out_in.contiguous(launch.format), input = input_in.contiguous(launch.format),
                   mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  at::Tensor grad_input = at::empty_like(input, launch.format);
  at::Tensor grad_weight = at::empty({launch.C}, input.options());
  at::Tensor grad_bias = at::empty({launch.C}, input.options());
  if (launch.numel == 0) return {grad_input, grad_weight.zero_(), grad_bias.zero_()};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    at::Tensor coefficients = at::empty(
        {launch.C * static_cast<int64_t>(sizeof(BackwardCoefficients<acc_t>))}, input.options().dtype(at::kByte));
    auto* k = reinterpret_cast<BackwardCoefficients<acc_t>*>(coefficients.mutable_data_ptr());
    backward_reduce_kernel<scalar_t, acc_t><<<launch.C, kReduceThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(weight),
        mean.const_data_ptr<scalar_t>(), invstd.const_data_ptr<scalar_t>(), training, launch.N, launch.C, launch.L,
        launch.channels_last, k, grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_apply_kernel<scalar_t, acc_t><<<launch.elementwise_blocks(), kElementwiseThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), mean.const_data_ptr<scalar_t>(),
        invstd.const_data_ptr<scalar_t>(), k, launch.numel, launch.C, launch.L, launch.channels_last,
        grad_input.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_backward_cuda(
    const at::Tensor& grad_grad_input_in, const at::Tensor& grad_grad_weight_in, const at::Tensor& grad_grad_bias_in,
    const at::Tensor& grad_out_in, const at::Tensor& input_in, const std::optional<at::Tensor>& weight_in,
    const at::Tensor& mean_in, const at::Tensor& invstd_in, bool training) {
  const char* op = "_batch_norm_backward_backward";
  check_batch_norm_backward_backward_inputs(op, grad_grad_input_in, grad_grad_weight_in, grad_grad_bias_in,
                                            grad_out_in, input_in, weight_in, mean_in, invstd_in);
  TORCH_CHECK(input_in.is_cuda(), op, ": expected CUDA tensors");
  const c10::cuda::CUDAGuard device_guard(input_in.device());
  const Launch launch(input_in);
  const at::Tensor gg = grad_grad_input_in.contiguous(launch.format), ggw = grad_grad_weight_in.contiguous(),
                   ggb = grad_grad_bias_in.contiguous(), grad_out = grad_out_in.contiguous(launch.format),
                   input = input_in.contiguous(launch.format), mean = mean_in.contiguous(),
                   invstd = invstd_in.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  at::Tensor grad_grad_out = at::empty_like(input, launch.format);
  at::Tensor grad_input = at::empty_like(input, launch.format);
  at::Tensor grad_weight = at::empty({launch.C}, input.options());
  if (launch.numel == 0) return {grad_grad_out, grad_input, grad_weight.zero_()};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_backward_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    at::Tensor coefficients = at::empty(
        {launch.C * static_cast<int64_t>(sizeof(DoubleBackwardCoefficients<acc_t>))}, input.options().dtype(at::kByte));
    auto* k = reinterpret_cast<DoubleBackwardCoefficients<acc_t>*>(coefficients.mutable_data_ptr());
    double_backward_reduce_kernel<scalar_t, acc_t><<<launch.C, kReduceThreads, 0, stream>>>(
        gg.const_data_ptr<scalar_t>(), ggw.const_data_ptr<scalar_t>(), ggb.const_data_ptr<scalar_t>(),
        grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(weight),
        mean.const_data_ptr<scalar_t>(), invstd.const_data_ptr<scalar_t>(), training, launch.N, launch.C, launch.L,
        launch.channels_last, k, grad_weight.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    double_backward_apply_kernel<scalar_t, acc_t><<<launch.elementwise_blocks(), kElementwiseThreads, 0, stream>>>(
        gg.const_data_ptr<scalar_t>(), grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
        mean.const_data_ptr<scalar_t>(), invstd.const_data_ptr<scalar_t>(), k, launch.numel, launch.C, launch.L,
        launch.channels_last, grad_grad_out.mutable_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_grad_out, grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(edlcm_ext, CUDA, m) {
  m.impl("batch_norm_backward", &batch_norm_backward_cuda);
  m.impl("_batch_norm_backward_backward", &batch_norm_backward_backward_cuda);
}

}  // namespace edlcm_ext
