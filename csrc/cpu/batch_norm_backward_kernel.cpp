// CPU kernels of batch_norm_backward and its backward: a pass of per-channel sums followed by one
// elementwise pass, which replaces the dozens of full-size elementwise ops that PyTorch's generic
// BatchNorm double backward issues. Both layouts users train in run natively (no copy): contiguous
// with one task per channel, channels_last with row blocks vectorized over channels.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "batch_norm_backward.h"

namespace edlcm_ext {
namespace {

// Layout of a contiguous (N, C, L) tensor: channel c of sample n is the row starting at (n * C + c) * L.
// Rows are summed in scalar_t with `omp simd` (vectorized without -ffast-math), and the row sums
// are then accumulated in acc_t (double for float), which keeps float32 sums accurate.
struct ChannelLayout {
  int64_t N, C, L;
  explicit ChannelLayout(const at::Tensor& input)
      : N(input.size(0)), C(input.size(1)), L(input.numel() / std::max<int64_t>(1, input.size(0) * input.size(1))) {}
  template <typename F>
  void for_each_row(int64_t c, F&& f) const {
    for (int64_t n = 0; n < N; ++n) f((n * C + c) * L);
  }
};

// Per-row sums and elementwise updates, kept out of the dispatch macro so `omp simd` applies.
template <typename scalar_t>
inline void backward_row_sums(const scalar_t* gy, const scalar_t* x, scalar_t mu, int64_t L, scalar_t sums[2]) {
  scalar_t s_gy = 0, s_gy_xc = 0;
#pragma omp simd reduction(+ : s_gy, s_gy_xc)
  for (int64_t l = 0; l < L; ++l) {
    s_gy += gy[l];
    s_gy_xc += gy[l] * (x[l] - mu);
  }
  sums[0] = s_gy;
  sums[1] = s_gy_xc;
}

template <typename scalar_t>
inline void backward_row_apply(const scalar_t* gy, const scalar_t* x, scalar_t mu, int64_t L, scalar_t k_gy,
                               scalar_t k_xc, scalar_t k_const, scalar_t* gx) {
#pragma omp simd
  for (int64_t l = 0; l < L; ++l) gx[l] = k_gy * gy[l] + k_xc * (x[l] - mu) + k_const;
}

template <typename scalar_t>
inline void double_backward_row_sums(const scalar_t* gy, const scalar_t* gg, const scalar_t* x, scalar_t mu,
                                     int64_t L, scalar_t sums[5]) {
  scalar_t s_gy = 0, s_gy_xc = 0, s_gg = 0, s_gg_xc = 0, s_gg_gy = 0;
#pragma omp simd reduction(+ : s_gy, s_gy_xc, s_gg, s_gg_xc, s_gg_gy)
  for (int64_t l = 0; l < L; ++l) {
    const scalar_t g = gy[l], gradgrad = gg[l], xc = x[l] - mu;
    s_gy += g;
    s_gy_xc += g * xc;
    s_gg += gradgrad;
    s_gg_xc += gradgrad * xc;
    s_gg_gy += gradgrad * g;
  }
  sums[0] = s_gy;
  sums[1] = s_gy_xc;
  sums[2] = s_gg;
  sums[3] = s_gg_xc;
  sums[4] = s_gg_gy;
}

// a_* / b_* as in DoubleBackwardCoefficients, with the xhat coefficients folded onto (x - mean).
template <typename scalar_t>
inline void double_backward_row_apply(const scalar_t* gy, const scalar_t* gg, const scalar_t* x, scalar_t mu,
                                      int64_t L, const scalar_t a[3], const scalar_t b[4], scalar_t* out_ggy,
                                      scalar_t* out_gx) {
  const scalar_t a_gg = a[0], a_xc = a[1], a_const = a[2], b_gy = b[0], b_gg = b[1], b_xc = b[2], b_const = b[3];
#pragma omp simd
  for (int64_t l = 0; l < L; ++l) {
    const scalar_t g = gy[l], gradgrad = gg[l], xc = x[l] - mu;
    out_ggy[l] = a_gg * gradgrad + a_xc * xc + a_const;
    out_gx[l] = b_gy * g + b_gg * gradgrad + b_xc * xc + b_const;
  }
}

// channels_last (NHWC / NDHWC): the tensor is a row-major (R, C) matrix, R = N * spatial, and
// channel c is column c. Per-channel sums run over rows with the inner loop over channels
// (vectorized); each element's contribution is accumulated in acc_t. Coefficients come as K
// arrays of C values, coef[k * C + c].
template <typename scalar_t, typename acc_t>
inline void backward_column_sums(const scalar_t* gy, const scalar_t* x, const scalar_t* mu, int64_t C, acc_t* sums) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    sums[c] += gy[c];
    sums[C + c] += static_cast<acc_t>(gy[c]) * (x[c] - mu[c]);
  }
}

template <typename scalar_t>
inline void backward_columns_apply(const scalar_t* gy, const scalar_t* x, const scalar_t* mu, int64_t C,
                                   const scalar_t* coef, scalar_t* gx) {
  const scalar_t *k_gy = coef, *k_xc = coef + C, *k_const = coef + 2 * C;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) gx[c] = k_gy[c] * gy[c] + k_xc[c] * (x[c] - mu[c]) + k_const[c];
}

template <typename scalar_t, typename acc_t>
inline void double_backward_column_sums(const scalar_t* gy, const scalar_t* gg, const scalar_t* x, const scalar_t* mu,
                                        int64_t C, acc_t* sums) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const acc_t g = gy[c], gradgrad = gg[c], xc = x[c] - mu[c];
    sums[c] += g;
    sums[C + c] += g * xc;
    sums[2 * C + c] += gradgrad;
    sums[3 * C + c] += gradgrad * xc;
    sums[4 * C + c] += gradgrad * g;
  }
}

template <typename scalar_t>
inline void double_backward_columns_apply(const scalar_t* gy, const scalar_t* gg, const scalar_t* x,
                                          const scalar_t* mu, int64_t C, const scalar_t* coef, scalar_t* out_ggy,
                                          scalar_t* out_gx) {
  const scalar_t *a_gg = coef, *a_xc = coef + C, *a_const = coef + 2 * C;
  const scalar_t *b_gy = coef + 3 * C, *b_gg = coef + 4 * C, *b_xc = coef + 5 * C, *b_const = coef + 6 * C;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t g = gy[c], gradgrad = gg[c], xc = x[c] - mu[c];
    out_ggy[c] = a_gg[c] * gradgrad + a_xc[c] * xc + a_const[c];
    out_gx[c] = b_gy[c] * g + b_gg[c] * gradgrad + b_xc[c] * xc + b_const[c];
  }
}

// Sums over the R rows of a channels_last tensor: a few tasks each accumulate `K * C` sums over a
// block of rows (add_row(r, sums)), then the blocks are added in a fixed order (deterministic).
template <typename acc_t, int K, typename AddRow>
std::vector<acc_t> column_sums(int64_t R, int64_t C, const AddRow& add_row) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R * C / (1 << 14)));
  std::vector<acc_t> partial(blocks * K * C, acc_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      for (int64_t r = R * block / blocks; r < R * (block + 1) / blocks; ++r) add_row(r, partial.data() + block * K * C);
    }
  });
  std::vector<acc_t> total(K * C, acc_t(0));
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t i = 0; i < K * C; ++i) total[i] += partial[block * K * C + i];
  }
  return total;
}

// Rows per task of the elementwise pass.
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, C)); }

template <typename scalar_t>
using acc = at::acc_type<scalar_t, /*is_cuda=*/false>;

template <typename scalar_t>
acc<scalar_t> channel_value(const std::optional<at::Tensor>& t, int64_t c, acc<scalar_t> fallback) {
  return t.has_value() ? static_cast<acc<scalar_t>>(t->const_data_ptr<scalar_t>()[c]) : fallback;
}

int64_t channel_grain(const ChannelLayout& layout) {
  return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, layout.N * layout.L));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_channels_last(
    const at::Tensor& grad_out_in, const at::Tensor& input_in, const std::optional<at::Tensor>& weight,
    const at::Tensor& mean, const at::Tensor& invstd, bool training, at::MemoryFormat format) {
  const at::Tensor grad_out = grad_out_in.contiguous(format), input = input_in.contiguous(format);
  const int64_t C = input.size(1), R = input.numel() / std::max<int64_t>(1, C);
  at::Tensor grad_input = at::empty_like(input, format);
  at::Tensor grad_weight = at::empty({C}, input.options());
  at::Tensor grad_bias = at::empty({C}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_backward_cpu_channels_last", [&] {
    using acc_t = acc<scalar_t>;
    const scalar_t* gy = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* mu = mean.const_data_ptr<scalar_t>();
    const std::vector<acc_t> sums = column_sums<acc_t, 2>(
        R, C, [&](int64_t r, acc_t* s) { backward_column_sums(gy + r * C, x + r * C, mu, C, s); });
    std::vector<scalar_t> coef(3 * C);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t sigma = invstd.const_data_ptr<scalar_t>()[c];
      ChannelSums<acc_t> channel;
      channel.gy = sums[c];
      channel.gy_xhat = sums[C + c] * sigma;
      const auto k = batch_norm_backward_coefficients<acc_t>(
          channel, static_cast<acc_t>(R), channel_value<scalar_t>(weight, c, 1), sigma, training);
      coef[c] = static_cast<scalar_t>(k.k_gy);
      coef[C + c] = static_cast<scalar_t>(k.k_xhat * sigma);
      coef[2 * C + c] = static_cast<scalar_t>(k.k_const);
      grad_weight.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(channel.gy_xhat);
      grad_bias.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(channel.gy);
    }
    scalar_t* gx = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, R, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) backward_columns_apply(gy + r * C, x + r * C, mu, C, coef.data(), gx + r * C);
    });
  });
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_backward_channels_last(
    const at::Tensor& gg_in, const at::Tensor& ggw, const at::Tensor& ggb, const at::Tensor& grad_out_in,
    const at::Tensor& input_in, const std::optional<at::Tensor>& weight, const at::Tensor& mean,
    const at::Tensor& invstd, bool training, at::MemoryFormat format) {
  const at::Tensor gg_t = gg_in.contiguous(format), grad_out = grad_out_in.contiguous(format),
                   input = input_in.contiguous(format);
  const int64_t C = input.size(1), R = input.numel() / std::max<int64_t>(1, C);
  at::Tensor grad_grad_out = at::empty_like(input, format);
  at::Tensor grad_input = at::empty_like(input, format);
  at::Tensor grad_weight = at::empty({C}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_backward_backward_cpu_channels_last", [&] {
    using acc_t = acc<scalar_t>;
    const scalar_t* gy = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* gg = gg_t.const_data_ptr<scalar_t>();
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* mu = mean.const_data_ptr<scalar_t>();
    const std::vector<acc_t> sums = column_sums<acc_t, 5>(R, C, [&](int64_t r, acc_t* s) {
      double_backward_column_sums(gy + r * C, gg + r * C, x + r * C, mu, C, s);
    });
    std::vector<scalar_t> coef(7 * C);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t sigma = invstd.const_data_ptr<scalar_t>()[c];
      ChannelSums<acc_t> channel;
      channel.gy = sums[c];
      channel.gy_xhat = sums[C + c] * sigma;
      channel.gg = sums[2 * C + c];
      channel.gg_xhat = sums[3 * C + c] * sigma;
      channel.gg_gy = sums[4 * C + c];
      const auto k = batch_norm_double_backward_coefficients<acc_t>(
          channel, static_cast<acc_t>(R), channel_value<scalar_t>(weight, c, 1), sigma,
          ggw.const_data_ptr<scalar_t>()[c], ggb.const_data_ptr<scalar_t>()[c], training);
      const acc_t values[7] = {k.a_gg, k.a_xhat * sigma, k.a_const, k.b_gy, k.b_gg, k.b_xhat * sigma, k.b_const};
      for (int64_t i = 0; i < 7; ++i) coef[i * C + c] = static_cast<scalar_t>(values[i]);
      grad_weight.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(k.grad_weight);
    }
    scalar_t* out_ggy = grad_grad_out.mutable_data_ptr<scalar_t>();
    scalar_t* out_gx = grad_input.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, R, row_grain(C), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        double_backward_columns_apply(gy + r * C, gg + r * C, x + r * C, mu, C, coef.data(), out_ggy + r * C,
                                      out_gx + r * C);
      }
    });
  });
  return {grad_grad_out, grad_input, grad_weight};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& input_in, const std::optional<at::Tensor>& weight_in,
    const at::Tensor& mean_in, const at::Tensor& invstd_in, bool training) {
  check_batch_norm_backward_inputs("batch_norm_backward", grad_out_in, input_in, weight_in, mean_in, invstd_in);
  if (const auto format = kernel_layout(input_in); format != at::MemoryFormat::Contiguous) {
    return batch_norm_backward_channels_last(grad_out_in, input_in, contiguous_or_none(weight_in), mean_in.contiguous(),
                                             invstd_in.contiguous(), training, format);
  }
  const at::Tensor grad_out = grad_out_in.contiguous(), input = input_in.contiguous(),
                   mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const ChannelLayout layout(input);
  at::Tensor grad_input = at::empty_like(input);
  at::Tensor grad_weight = at::empty({layout.C}, input.options());
  at::Tensor grad_bias = at::empty({layout.C}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_backward_cpu", [&] {
    using acc_t = acc<scalar_t>;
    const scalar_t* gy = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_input.mutable_data_ptr<scalar_t>();
    const acc_t count = static_cast<acc_t>(layout.N * layout.L);
    at::parallel_for(0, layout.C, channel_grain(layout), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const scalar_t mu = mean.const_data_ptr<scalar_t>()[c];
        const acc_t sigma = invstd.const_data_ptr<scalar_t>()[c];
        ChannelSums<acc_t> sums;
        layout.for_each_row(c, [&](int64_t row) {
          scalar_t row_sums[2];
          backward_row_sums(gy + row, x + row, mu, layout.L, row_sums);
          sums.gy += row_sums[0];
          sums.gy_xhat += static_cast<acc_t>(row_sums[1]) * sigma;
        });
        const auto k = batch_norm_backward_coefficients<acc_t>(
            sums, count, channel_value<scalar_t>(weight, c, 1), sigma, training);
        layout.for_each_row(c, [&](int64_t row) {
          backward_row_apply<scalar_t>(gy + row, x + row, mu, layout.L, k.k_gy, k.k_xhat * sigma, k.k_const, gx + row);
        });
        grad_weight.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(sums.gy_xhat);
        grad_bias.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(sums.gy);
      }
    });
  });
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_backward_cpu(
    const at::Tensor& grad_grad_input_in, const at::Tensor& grad_grad_weight_in, const at::Tensor& grad_grad_bias_in,
    const at::Tensor& grad_out_in, const at::Tensor& input_in, const std::optional<at::Tensor>& weight_in,
    const at::Tensor& mean_in, const at::Tensor& invstd_in, bool training) {
  const char* op = "_batch_norm_backward_backward";
  check_batch_norm_backward_backward_inputs(op, grad_grad_input_in, grad_grad_weight_in, grad_grad_bias_in,
                                            grad_out_in, input_in, weight_in, mean_in, invstd_in);
  if (const auto format = kernel_layout(input_in); format != at::MemoryFormat::Contiguous) {
    return batch_norm_backward_backward_channels_last(
        grad_grad_input_in, grad_grad_weight_in.contiguous(), grad_grad_bias_in.contiguous(), grad_out_in, input_in,
        contiguous_or_none(weight_in), mean_in.contiguous(), invstd_in.contiguous(), training, format);
  }
  const at::Tensor gg_in = grad_grad_input_in.contiguous(), ggw_in = grad_grad_weight_in.contiguous(),
                   ggb_in = grad_grad_bias_in.contiguous(), grad_out = grad_out_in.contiguous(),
                   input = input_in.contiguous(), mean = mean_in.contiguous(), invstd = invstd_in.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const ChannelLayout layout(input);
  at::Tensor grad_grad_out = at::empty_like(input);
  at::Tensor grad_input = at::empty_like(input);
  at::Tensor grad_weight = at::empty({layout.C}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "batch_norm_backward_backward_cpu", [&] {
    using acc_t = acc<scalar_t>;
    const scalar_t* gy = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* gg = gg_in.const_data_ptr<scalar_t>();
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* out_ggy = grad_grad_out.mutable_data_ptr<scalar_t>();
    scalar_t* out_gx = grad_input.mutable_data_ptr<scalar_t>();
    const acc_t count = static_cast<acc_t>(layout.N * layout.L);
    at::parallel_for(0, layout.C, channel_grain(layout), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const scalar_t mu = mean.const_data_ptr<scalar_t>()[c];
        const acc_t sigma = invstd.const_data_ptr<scalar_t>()[c];
        ChannelSums<acc_t> sums;
        layout.for_each_row(c, [&](int64_t row) {
          scalar_t row_sums[5];
          double_backward_row_sums(gy + row, gg + row, x + row, mu, layout.L, row_sums);
          sums.gy += row_sums[0];
          sums.gy_xhat += static_cast<acc_t>(row_sums[1]) * sigma;
          sums.gg += row_sums[2];
          sums.gg_xhat += static_cast<acc_t>(row_sums[3]) * sigma;
          sums.gg_gy += row_sums[4];
        });
        const auto k = batch_norm_double_backward_coefficients<acc_t>(
            sums, count, channel_value<scalar_t>(weight, c, 1), sigma, ggw_in.const_data_ptr<scalar_t>()[c],
            ggb_in.const_data_ptr<scalar_t>()[c], training);
        const scalar_t a[3] = {static_cast<scalar_t>(k.a_gg), static_cast<scalar_t>(k.a_xhat * sigma),
                               static_cast<scalar_t>(k.a_const)};
        const scalar_t b[4] = {static_cast<scalar_t>(k.b_gy), static_cast<scalar_t>(k.b_gg),
                               static_cast<scalar_t>(k.b_xhat * sigma), static_cast<scalar_t>(k.b_const)};
        layout.for_each_row(c, [&](int64_t row) {
          double_backward_row_apply(gy + row, gg + row, x + row, mu, layout.L, a, b, out_ggy + row, out_gx + row);
        });
        grad_weight.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(k.grad_weight);
      }
    });
  });
  return {grad_grad_out, grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(edlcm_ext, CPU, m) {
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
  m.impl("_batch_norm_backward_backward", &batch_norm_backward_backward_cpu);
}

}  // namespace edlcm_ext
