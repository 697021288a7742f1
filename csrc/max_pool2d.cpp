// Schemas of max_pool2d, its input gradient and the gather that is the input gradient's own
// backward; the device-generic kernels of the first two.
//
// y = max_pool2d(x) picks, per window, x at indices (flat positions in the H x W plane). Its input
// gradient, max_pool2d_input_grad(grad_y, x, indices), scatters grad_y to those positions (ATen's
// kernel). That is linear in grad_y and piecewise constant in x, so its backward for an incoming
// grad_grad_x is exactly max_pool2d_gather(grad_grad_x, indices): grad_grad_x read at the indices,
// in the indices' layout. PyTorch's generic double backward of max-pooling runs the same gather
// through views that copy channels_last tensors, a full copy for a gather that moves little; ours
// has a CPU and a CUDA kernel that take both layouts as they are.
// The gather's own backward (third order) is not supported (edlcm_ext/ops.py raises).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

namespace edlcm_ext {
namespace {

void check_pool_arguments(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, op, ": input must have shape (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": kernel_size, stride, padding and dilation must each have 2 values");
}

std::tuple<at::Tensor, at::Tensor> pool_with_indices(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation, bool ceil_mode) {
  check_pool_arguments("max_pool2d", input, kernel_size, stride, padding, dilation);
  return at::max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor max_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(pool_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode));
}

at::Tensor max_pool2d_input_grad(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& indices,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, bool ceil_mode) {
  check_pool_arguments("max_pool2d_input_grad", input, kernel_size, stride, padding, dilation);
  TORCH_CHECK(grad_out.sizes() == indices.sizes(), "max_pool2d_input_grad: grad_out ", grad_out.sizes(),
              " and indices ", indices.sizes(), " must have the same shape");
  return at::max_pool2d_with_indices_backward(grad_out, input, kernel_size, stride, padding, dilation, ceil_mode,
                                              indices);
}

// The input gradient through the dispatcher, so that its autograd formula (edlcm_ext/ops.py) applies.
at::Tensor call_max_pool2d_input_grad(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& indices,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("edlcm_ext::max_pool2d_input_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool)>();
  return op.call(grad_out, input, indices, kernel_size, stride, padding, dilation, ceil_mode);
}

class MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, bool ceil_mode) {
    auto [output, indices] = pool_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode);
    ctx->save_for_backward({input, indices});
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_input = call_max_pool2d_input_grad(
        grad_outputs[0], saved[0], saved[1], ctx->saved_data["kernel_size"].toIntVector(),
        ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
        ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["ceil_mode"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor max_pool2d_autograd(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode);
}

TORCH_LIBRARY_IMPL(edlcm_ext, CompositeExplicitAutograd, m) {
  m.impl("max_pool2d", &max_pool2d_forward);
  m.impl("max_pool2d_input_grad", &max_pool2d_input_grad);
}

TORCH_LIBRARY_IMPL(edlcm_ext, Autograd, m) {
  m.impl("max_pool2d", &max_pool2d_autograd);
}

}  // namespace
}  // namespace edlcm_ext

TORCH_LIBRARY_FRAGMENT(edlcm_ext, m) {
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> Tensor");
  m.def(
      "max_pool2d_input_grad(Tensor grad_out, Tensor input, Tensor indices, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def("max_pool2d_gather(Tensor values, Tensor indices) -> Tensor");
}
