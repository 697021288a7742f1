// Schema and kernel of conv2d_input_grad: the input gradient of a 2-d convolution, as an op whose
// own backward issues only the two products that EDLCM's double backward needs.
//
// For y = conv2d(x, weight) (stride, padding, dilation, groups), grad_x = conv2d_input_grad(grad_y,
// weight, x.shape, ...) is the transposed convolution of grad_y, with the output padding that
// restores x's spatial size. It is linear in grad_y and in weight and does not depend on x, so its
// backward for an incoming grad_grad_x is exactly
//   d/d grad_y = conv2d(grad_grad_x, weight)
//   d/d weight = weight gradient of conv2d at input grad_grad_x for output gradient grad_y,
// which edlcm_ext/ops.py issues directly. PyTorch's generic double backward of convolution
// (_convolution_double_backward) computes the same products with more overhead, worst on layers with
// few input channels (the measurements: docs/fused.md and bench/results/).
//
// The kernel is device-generic on purpose: the arithmetic is ATen's convolution (oneDNN on CPU,
// cuDNN on CUDA); what is ours is which products run. Hence one CompositeExplicitAutograd kernel
// rather than a CPU and a CUDA file with the same body.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace edlcm_ext {
namespace {

at::Tensor conv2d_input_grad(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups) {
  constexpr const char* op = "conv2d_input_grad";
  TORCH_CHECK(grad_out.dim() == 4, op, ": grad_out must have shape (N, C_out, H_out, W_out), got ", grad_out.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must have shape (C_out, C_in / groups, kH, kW), got ", weight.sizes());
  TORCH_CHECK(input_size.size() == 4, op, ": input_size must be (N, C_in, H, W), got ", input_size);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must each have 2 values");
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0, op, ": groups must divide C_out = ", weight.size(0));
  TORCH_CHECK(grad_out.scalar_type() == weight.scalar_type() && grad_out.device() == weight.device(), op,
              ": grad_out and weight must have the same dtype and device, got ", grad_out.scalar_type(), " on ",
              grad_out.device(), " and ", weight.scalar_type(), " on ", weight.device());
  TORCH_CHECK(grad_out.size(0) == input_size[0] && grad_out.size(1) == weight.size(0) &&
                  input_size[1] == weight.size(1) * groups,
              op, ": shapes disagree: grad_out ", grad_out.sizes(), ", weight ", weight.sizes(), ", input_size ",
              input_size, ", groups ", groups);
  std::vector<int64_t> output_padding(2);
  for (int64_t d = 0; d < 2; ++d) {
    // Spatial size the transposed convolution gives without output padding; floor division in the
    // forward lost up to stride - 1 positions, which output padding puts back.
    const int64_t reached =
        (grad_out.size(d + 2) - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.size(d + 2) - 1) + 1;
    output_padding[d] = input_size[d + 2] - reached;
    TORCH_CHECK(output_padding[d] >= 0 && output_padding[d] < std::max(stride[d], dilation[d]), op,
                ": input_size ", input_size, " is not an input that gives grad_out's size ", grad_out.sizes(),
                " with this weight, stride, padding and dilation");
  }
  // The layout follows grad_out (a no-op copy unless only the weight is channels_last), so the
  // fake kernel can state it.
  return at::convolution(grad_out, weight, /*bias=*/std::nullopt, stride, padding, dilation, /*transposed=*/true,
                         output_padding, groups)
      .contiguous(grad_out.suggest_memory_format());
}

TORCH_LIBRARY_IMPL(edlcm_ext, CompositeExplicitAutograd, m) {
  m.impl("conv2d_input_grad", &conv2d_input_grad);
}

}  // namespace
}  // namespace edlcm_ext

TORCH_LIBRARY_FRAGMENT(edlcm_ext, m) {
  m.def(
      "conv2d_input_grad(Tensor grad_out, Tensor weight, int[4] input_size, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
}
