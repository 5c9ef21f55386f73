// The input gradient of FakeQuantWithMinMaxVars, in one pass.
//
// TensorFlow's FakeQuantWithMinMaxVarsGradient also sums the gradients that
// fall below and above the range (the backprops to min and max): two more
// full passes over the activation. tfmot's range variables are not trained,
// so those sums are thrown away. This kernel computes only the input
// gradient, with TensorFlow's own Nudge and mask, so its values are
// TensorFlow's to the bit (kqreg's tests check this).

#define EIGEN_USE_THREADS

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/fake_quant_ops_functor.h"

namespace kqreg {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

REGISTER_OP("KqregFakeQuantInputGradient")
    .Input("gradients: float")
    .Input("inputs: float")
    .Input("min: float")
    .Input("max: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Output("backprops_wrt_input: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      return absl::OkStatus();
    });

class FakeQuantInputGradientOp : public OpKernel {
 public:
  explicit FakeQuantInputGradientOp(OpKernelConstruction* context)
      : OpKernel(context) {
    int num_bits;
    bool narrow_range;
    OP_REQUIRES_OK(context, context->GetAttr("num_bits", &num_bits));
    OP_REQUIRES_OK(context, context->GetAttr("narrow_range", &narrow_range));
    OP_REQUIRES(context, num_bits >= 2 && num_bits <= 16,
                absl::InvalidArgumentError("num_bits must be in [2, 16]"));
    quant_min_ = narrow_range ? 1 : 0;
    quant_max_ = (1 << num_bits) - 1;
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& gradients = context->input(0);
    const Tensor& inputs = context->input(1);
    OP_REQUIRES(context, gradients.shape() == inputs.shape(),
                absl::InvalidArgumentError(
                    "gradients and inputs must have the same shape"));
    OP_REQUIRES(context,
                context->input(2).NumElements() == 1 &&
                    context->input(3).NumElements() == 1,
                absl::InvalidArgumentError("min and max must be scalars"));
    const float min_val = context->input(2).flat<float>()(0);
    const float max_val = context->input(3).flat<float>()(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->forward_input_or_allocate_output(
                                {0}, 0, inputs.shape(), &output));
    auto dy = gradients.flat<float>();
    auto x = inputs.flat<float>();
    auto dx = output->flat<float>();
    const auto& device = context->eigen_device<Eigen::ThreadPoolDevice>();
    // As FakeQuantWithMinMaxVarsGradientFunctor: an all-zero range passes
    // every gradient through.
    if (min_val == 0.0f && max_val == 0.0f) {
      dx.device(device) = dy;
      return;
    }
    float nudged_min, nudged_max, scale, inv_scale;
    ::tensorflow::Nudge(min_val, max_val, quant_min_, quant_max_, &nudged_min,
                        &nudged_max, &scale, &inv_scale);
    dx.device(device) =
        dy * (x >= nudged_min && x <= nudged_max)
                 .select(x.constant(1.0f), x.constant(0.0f));
  }

 private:
  int quant_min_;
  int quant_max_;
};

REGISTER_KERNEL_BUILDER(
    Name("KqregFakeQuantInputGradient").Device(::tensorflow::DEVICE_CPU),
    FakeQuantInputGradientOp);

}  // namespace kqreg
