// kqreg's fake-quant kernels. Each computes what a chain of TensorFlow ops
// computes, to the bit (kqreg's tests check this), in fewer passes over the
// activation:
//
// - KqregFakeQuantInputGradient: the input gradient of
//   FakeQuantWithMinMaxVars. TensorFlow's gradient kernel also sums the
//   gradients that fall below and above the range (the backprops to min and
//   max): two more full passes, thrown away because tfmot's range variables
//   are not trained.
// - KqregReluFakeQuant: FakeQuantWithMinMaxVars(Relu(x)) (or Relu6), one pass
//   instead of two.
// - KqregReluFakeQuantGradient: ReluGrad(FakeQuantGradient(dy)), one pass
//   instead of two (or four with TensorFlow's gradient kernel).

#define EIGEN_USE_THREADS

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/fake_quant_ops_functor.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kqreg {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

// Every kernel is a plain loop over blocks of the tensor, which the compiler
// vectorizes (kqreg.kernels builds with -O3 -fno-trapping-math, and -mavx on
// x86, the instruction set TensorFlow's own wheels require). Eigen
// expressions of the same chains (PropagateNaN maxima, bool masks cast to
// float, select) ran up to six times slower than TensorFlow's separate ops.
// Each loop keeps the float operations of TensorFlow's functors, in their
// order, with std::min/max's NaN handling, which Eigen's scalar and packet
// min/max share.

// Relu (or Relu6) as TensorFlow's functor: NaN stays NaN.
template <bool kRelu6>
inline float Activation(float x) {
  const float r = std::max(x, 0.0f);
  return kRelu6 ? std::min(r, 6.0f) : r;
}

// ReluGrad's (Relu6Grad's) mask, as a float. `&`, not `&&`: no branch, so
// that the compiler vectorizes the loop.
template <bool kRelu6>
inline float ActivationMask(float x) {
  return static_cast<float>(kRelu6 ? ((x > 0.0f) & (x < 6.0f)) : (x > 0.0f));
}

// Bytes read and written and cycles per element, for Eigen's block sizes.
inline Eigen::TensorOpCost ElementCost(int inputs) {
  return Eigen::TensorOpCost(4.0 * inputs, 4.0, 12.0);
}

// Output 0 has the shape of input `kInput`.
template <int kInput>
absl::Status ShapeOfInput(::tensorflow::shape_inference::InferenceContext* c) {
  c->set_output(0, c->input(kInput));
  return absl::OkStatus();
}

// What every kernel here shares: the attributes, the scalar range inputs,
// and TensorFlow's nudged range.
class FakeQuantKernel : public OpKernel {
 public:
  FakeQuantKernel(OpKernelConstruction* context, bool fused_activation)
      : OpKernel(context) {
    int num_bits;
    bool narrow_range;
    OP_REQUIRES_OK(context, context->GetAttr("num_bits", &num_bits));
    OP_REQUIRES_OK(context, context->GetAttr("narrow_range", &narrow_range));
    relu6_ = false;
    if (fused_activation) {
      OP_REQUIRES_OK(context, context->GetAttr("relu6", &relu6_));
    }
    OP_REQUIRES(context, num_bits >= 2 && num_bits <= 16,
                absl::InvalidArgumentError("num_bits must be in [2, 16]"));
    quant_min_ = narrow_range ? 1 : 0;
    quant_max_ = (1 << num_bits) - 1;
  }

 protected:
  // Reads the range inputs at `first`, `first + 1`; false if they are bad.
  bool ReadRange(OpKernelContext* context, int first, float* min_val,
                 float* max_val) {
    const Tensor& min_t = context->input(first);
    const Tensor& max_t = context->input(first + 1);
    if (min_t.NumElements() != 1 || max_t.NumElements() != 1) {
      context->SetStatus(
          absl::InvalidArgumentError("min and max must be scalars"));
      return false;
    }
    *min_val = min_t.flat<float>()(0);
    *max_val = max_t.flat<float>()(0);
    return true;
  }

  // The bounds of the gradients' mask; false for an all-zero range, which
  // FakeQuantWithMinMaxVarsGradientFunctor passes every gradient through
  // (NaN inputs' too, so no bounds can stand for it).
  bool MaskBounds(float min_val, float max_val, float* low,
                  float* high) const {
    if (min_val == 0.0f && max_val == 0.0f) return false;
    float scale, inv_scale;
    ::tensorflow::Nudge(min_val, max_val, quant_min_, quant_max_, low, high,
                        &scale, &inv_scale);
    return true;
  }

  // A gradient kernel's inputs (gradients, activation, min, max) and its
  // output, which may take over the gradients' buffer, with the mask's
  // bounds (masked false: an all-zero range); false (the error set) on bad
  // inputs.
  struct Backprop {
    const float* dy;
    const float* x;
    float* dx;
    int64_t n;
    bool masked;
    float low;
    float high;
  };
  bool PrepareBackprop(OpKernelContext* context, Backprop* args) {
    float min_val, max_val;
    if (!ReadRange(context, 2, &min_val, &max_val)) return false;
    const Tensor& gradients = context->input(0);
    const Tensor& inputs = context->input(1);
    if (gradients.shape() != inputs.shape()) {
      context->SetStatus(absl::InvalidArgumentError(
          "gradients and inputs must have the same shape"));
      return false;
    }
    Tensor* output = nullptr;
    auto status = context->forward_input_or_allocate_output(
        {0}, 0, inputs.shape(), &output);
    if (!status.ok()) {
      context->SetStatus(status);
      return false;
    }
    args->dy = gradients.flat<float>().data();
    args->x = inputs.flat<float>().data();
    args->dx = output->flat<float>().data();
    args->n = inputs.NumElements();
    args->masked = MaskBounds(min_val, max_val, &args->low, &args->high);
    return true;
  }

  bool relu6_;
  int quant_min_;
  int quant_max_;
};

REGISTER_OP("KqregFakeQuantInputGradient")
    .Input("gradients: float")
    .Input("inputs: float")
    .Input("min: float")
    .Input("max: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Output("backprops_wrt_input: float")
    .SetShapeFn(ShapeOfInput<1>);

class FakeQuantInputGradientOp : public FakeQuantKernel {
 public:
  explicit FakeQuantInputGradientOp(OpKernelConstruction* context)
      : FakeQuantKernel(context, /*fused_activation=*/false) {}

  void Compute(OpKernelContext* context) override {
    Backprop b;
    if (!PrepareBackprop(context, &b)) return;
    if (!b.masked) {
      if (b.dx != b.dy) std::copy(b.dy, b.dy + b.n, b.dx);
      return;
    }
    context->eigen_device<Eigen::ThreadPoolDevice>().parallelFor(
        b.n, ElementCost(2), [b](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            b.dx[i] = b.dy[i] *
                      static_cast<float>((b.x[i] >= b.low) & (b.x[i] <= b.high));
          }
        });
  }
};

REGISTER_KERNEL_BUILDER(
    Name("KqregFakeQuantInputGradient").Device(::tensorflow::DEVICE_CPU),
    FakeQuantInputGradientOp);

// The activation in front of the quantizer: Relu, or Relu6 when `relu6`.
REGISTER_OP("KqregReluFakeQuant")
    .Input("features: float")
    .Input("min: float")
    .Input("max: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("relu6: bool = false")
    .Output("outputs: float")
    .SetShapeFn(ShapeOfInput<0>);

REGISTER_OP("KqregReluFakeQuantGradient")
    .Input("gradients: float")
    .Input("features: float")
    .Input("min: float")
    .Input("max: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("relu6: bool = false")
    .Output("backprops: float")
    .SetShapeFn(ShapeOfInput<1>);

class ReluFakeQuantOp : public FakeQuantKernel {
 public:
  explicit ReluFakeQuantOp(OpKernelConstruction* context)
      : FakeQuantKernel(context, /*fused_activation=*/true) {}

  void Compute(OpKernelContext* context) override {
    float min_val, max_val;
    if (!ReadRange(context, 1, &min_val, &max_val)) return;
    const Tensor& features = context->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, features.shape(),
                                                     &output));
    const float* x = features.flat<float>().data();
    float* y = output->flat<float>().data();
    const int64_t n = features.NumElements();
    const auto& device = context->eigen_device<Eigen::ThreadPoolDevice>();
    // As FakeQuantWithMinMaxVarsFunctor: an all-zero range gives zeros.
    if (min_val == 0.0f && max_val == 0.0f) {
      std::fill(y, y + n, 0.0f);
      return;
    }
    float nudged_min, nudged_max, scale, inv_scale;
    ::tensorflow::Nudge(min_val, max_val, quant_min_, quant_max_, &nudged_min,
                        &nudged_max, &scale, &inv_scale);
    const float quant_zero = floor(-nudged_min * inv_scale + 0.5f);
    if (relu6_) {
      Quantize<true>(device, x, y, n, nudged_min, nudged_max, scale, quant_zero);
    } else {
      Quantize<false>(device, x, y, n, nudged_min, nudged_max, scale,
                      quant_zero);
    }
  }

 private:
  template <bool kRelu6>
  static void Quantize(const Eigen::ThreadPoolDevice& device, const float* x,
                       float* y, int64_t n, float nudged_min, float nudged_max,
                       float scale, float quant_zero) {
    device.parallelFor(n, ElementCost(1), [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float clamped =
            std::max(std::min(Activation<kRelu6>(x[i]), nudged_max), nudged_min);
        y[i] = std::floor((clamped - nudged_min) / scale - quant_zero + 0.5f) *
               scale;
      }
    });
  }
};

class ReluFakeQuantGradientOp : public FakeQuantKernel {
 public:
  explicit ReluFakeQuantGradientOp(OpKernelConstruction* context)
      : FakeQuantKernel(context, /*fused_activation=*/true) {}

  void Compute(OpKernelContext* context) override {
    Backprop b;
    if (!PrepareBackprop(context, &b)) return;
    // An all-zero range passes every gradient to the activation's own mask.
    if (!b.masked) {
      b.low = -std::numeric_limits<float>::infinity();
      b.high = std::numeric_limits<float>::infinity();
    }
    const auto& device = context->eigen_device<Eigen::ThreadPoolDevice>();
    if (relu6_) {
      Run<true>(device, b);
    } else {
      Run<false>(device, b);
    }
  }

 private:
  // The fake-quant gradient's mask on the activation's output, then
  // ReluGrad's multiplication by its own mask.
  template <bool kRelu6>
  static void Run(const Eigen::ThreadPoolDevice& device, const Backprop& b) {
    device.parallelFor(b.n, ElementCost(2), [b](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float r = Activation<kRelu6>(b.x[i]);
        const float inside = static_cast<float>((r >= b.low) & (r <= b.high));
        b.dx[i] = b.dy[i] * inside * ActivationMask<kRelu6>(b.x[i]);
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(
    Name("KqregReluFakeQuant").Device(::tensorflow::DEVICE_CPU),
    ReluFakeQuantOp);
REGISTER_KERNEL_BUILDER(
    Name("KqregReluFakeQuantGradient").Device(::tensorflow::DEVICE_CPU),
    ReluFakeQuantGradientOp);

}  // namespace kqreg
