// Shared by the CPU and CUDA kernels of batch_norm_backward: argument checks and the per-channel
// coefficients that turn a few per-channel sums into one elementwise pass.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace edlcm_ext {

inline void check_channel_vector(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(1), op, ": ", name, " must have shape (C,) = (",
              input.size(1), "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(), op, ": ", name,
              " must have input's dtype and device");
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK(t.sizes() == input.sizes(), op, ": ", name, " must have input's shape ", input.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(), op, ": ", name,
              " must have input's dtype and device");
}

inline void check_batch_norm_backward_inputs(
    const char* op, const at::Tensor& grad_out, const at::Tensor& input,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd) {
  TORCH_CHECK(input.dim() >= 2, op, ": input must have shape (N, C, ...), got ", input.sizes());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              op, ": input must be float32 or float64, got ", input.scalar_type());
  check_same_shape(op, "grad_out", grad_out, input);
  check_channel_vector(op, "mean", mean, input);
  check_channel_vector(op, "invstd", invstd, input);
  if (weight.has_value()) check_channel_vector(op, "weight", *weight, input);
}

inline void check_batch_norm_backward_backward_inputs(
    const char* op, const at::Tensor& grad_grad_input, const at::Tensor& grad_grad_weight,
    const at::Tensor& grad_grad_bias, const at::Tensor& grad_out, const at::Tensor& input,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd) {
  check_batch_norm_backward_inputs(op, grad_out, input, weight, mean, invstd);
  check_same_shape(op, "grad_grad_input", grad_grad_input, input);
  check_channel_vector(op, "grad_grad_weight", grad_grad_weight, input);
  check_channel_vector(op, "grad_grad_bias", grad_grad_bias, input);
}

// The layout the kernels compute in: channels_last when input is (then every full-size tensor is
// taken in it: no copy when the caller's tensors already are), else contiguous.
inline at::MemoryFormat kernel_layout(const at::Tensor& input) {
  const auto format = input.suggest_memory_format();
  return format == at::MemoryFormat::ChannelsLast || format == at::MemoryFormat::ChannelsLast3d
             ? format
             : at::MemoryFormat::Contiguous;
}

inline std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// Per-channel sums over the N * L elements of one channel (xhat = (input - mean) * invstd; gg is
// the gradient flowing into grad_input, zero for the first-order backward).
template <typename acc_t>
struct ChannelSums {
  acc_t gy = 0;        // sum grad_out                 (= grad_bias)
  acc_t gy_xhat = 0;   // sum grad_out * xhat          (= grad_weight)
  acc_t gg = 0;        // sum gg
  acc_t gg_xhat = 0;   // sum gg * xhat
  acc_t gg_gy = 0;     // sum gg * grad_out
};

// grad_input = k_gy * grad_out + k_xhat * xhat + k_const (per channel).
template <typename acc_t>
struct BackwardCoefficients {
  acc_t k_gy, k_xhat, k_const;
};

template <typename acc_t>
C10_HOST_DEVICE inline BackwardCoefficients<acc_t> batch_norm_backward_coefficients(
    const ChannelSums<acc_t>& s, acc_t count, acc_t weight, acc_t invstd, bool training) {
  const acc_t scale = weight * invstd;
  if (!training) return {scale, 0, 0};
  // grad_input = w * invstd * (gy - mean(gy) - xhat * mean(gy * xhat)): the mean and the variance
  // both depend on input.
  return {scale, -scale * s.gy_xhat / count, -scale * s.gy / count};
}

// The double backward, with gg = grad_grad_input, ggw / ggb the gradients into grad_weight /
// grad_bias (per channel):
//   grad_grad_out = a_gg * gg + a_xhat * xhat + a_const
//   grad_input    = b_gy * gy + b_gg * gg + b_xhat * xhat + b_const
//   grad_weight   = grad_weight (a per-channel scalar)
template <typename acc_t>
struct DoubleBackwardCoefficients {
  acc_t a_gg, a_xhat, a_const;
  acc_t b_gy, b_gg, b_xhat, b_const;
  acc_t grad_weight;
};

template <typename acc_t>
C10_HOST_DEVICE inline DoubleBackwardCoefficients<acc_t> batch_norm_double_backward_coefficients(
    const ChannelSums<acc_t>& s, acc_t count, acc_t weight, acc_t invstd, acc_t ggw, acc_t ggb, bool training) {
  const acc_t scale = weight * invstd;
  if (!training) {
    // grad_input = w * invstd * gy; grad_weight = sum gy * xhat; grad_bias = sum gy.
    return {scale, ggw, ggb, ggw * invstd, 0, 0, 0, invstd * s.gg_gy};
  }
  const acc_t m_gy = s.gy / count, m_gy_xhat = s.gy_xhat / count;
  const acc_t m_gg = s.gg / count, m_gg_xhat = s.gg_xhat / count;
  // L = sum gg * grad_input + ggw * grad_weight + ggb * grad_bias, with
  // grad_input = w * invstd * P(gy), P(v) = v - mean(v) - xhat * mean(v * xhat) self-adjoint.
  // d/d grad_out: w * invstd * P(gg) + ggw * xhat + ggb.
  // d/d weight:   invstd * sum gg * P(gy).
  const acc_t gg_dot_projected_gy = s.gg_gy - m_gy * s.gg - m_gy_xhat * s.gg_xhat;
  // d/d input, through xhat (q) and through invstd explicitly (dL/dinvstd = w * gg_dot_projected_gy):
  //   q = -w * invstd * (gy * mean(gg * xhat) + gg * mean(gy * xhat)) + ggw * gy
  //   grad_input = invstd * (q - mean(q) - xhat * mean(q * xhat)) - invstd^2 / N * dL/dinvstd * xhat
  const acc_t q_gy = -scale * m_gg_xhat + ggw, q_gg = -scale * m_gy_xhat;
  const acc_t mean_q = q_gy * m_gy + q_gg * m_gg;
  const acc_t mean_q_xhat = q_gy * m_gy_xhat + q_gg * m_gg_xhat;
  const acc_t d_invstd = weight * gg_dot_projected_gy;
  return {
      scale, ggw - scale * m_gg_xhat, ggb - scale * m_gg,
      invstd * q_gy, invstd * q_gg, -invstd * mean_q_xhat - invstd * invstd * d_invstd / count, -invstd * mean_q,
      invstd * gg_dot_projected_gy};
}

}  // namespace edlcm_ext
