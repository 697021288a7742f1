// Schema and kernels of conv2d: F.conv2d's forward (ATen's convolution) with an autograd formula of
// ours, so that EDLCM's double backward through every convolution issues only the products it needs.
//
// backward(grad_out) = (conv2d_input_grad(grad_out, weight, ...), weight gradient, bias gradient),
// each only when the running backward pass needs it. A C++ autograd Function can ask the engine
// (ctx->needs_input_grad): EDLCM's autograd.grad(CE, x, create_graph=True) needs no weight
// gradient, which a Python autograd.Function cannot tell. The input gradient is our op, whose own
// backward is two convolutions (csrc/conv2d_input_grad.cpp); the weight gradient is ATen's.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace edlcm_ext {
namespace {

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 4, "conv2d: input must have shape (N, C_in, H, W), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "conv2d: weight must have shape (C_out, C_in / groups, kH, kW), got ",
              weight.sizes());
  return at::convolution(input, weight, bias, stride, padding, dilation, /*transposed=*/false, {0, 0}, groups);
}

at::Tensor conv2d_input_grad(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("edlcm_ext::conv2d_input_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t)>();
  return op.call(grad_out, weight, input_size, stride, padding, dilation, groups);
}

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value();
    return conv2d_forward(input, weight, bias, stride, padding, dilation, groups);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad_out = grad_outputs[0];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    at::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_input = conv2d_input_grad(grad_out, weight, input.sizes(), stride, padding, dilation, groups);
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = std::get<1>(at::convolution_backward(grad_out, input, weight, std::nullopt, stride, padding,
                                                         dilation, /*transposed=*/false, {0, 0}, groups,
                                                         {false, true, false}));
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grad_out.sum({0, 2, 3});
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

TORCH_LIBRARY_IMPL(edlcm_ext, CompositeExplicitAutograd, m) {
  m.impl("conv2d", &conv2d_forward);
}

TORCH_LIBRARY_IMPL(edlcm_ext, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
}

}  // namespace
}  // namespace edlcm_ext

TORCH_LIBRARY_FRAGMENT(edlcm_ext, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups) -> Tensor");
}
