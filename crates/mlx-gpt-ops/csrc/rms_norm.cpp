// RMSNorm without parameters over the last axis, y = x·r with r = 1/√(mean(x²) + ε), and
// its gradient, as two MLX primitives of one pass each: the modern GPT normalises with it
// four times per block and layer (before attention and the MLP, after the embedding,
// before the head), where as MLX ops it is a square, a mean, an rsqrt and a product
// forwards and twice as many backwards. The forward pass also keeps r per row, so that
// the gradient, dx = r·(g − y·mean(g·y)), is one pass over y and g.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "entry.h"
#include "primitive.h"
#include "vector.h"

#include <cmath>
#include <stdexcept>

namespace mx = mlx::core;

namespace {

MLX_GPT_CLONES void rms_forward(const float* __restrict x, float* __restrict y, float* __restrict r, size_t rows,
                                size_t n, float eps) {
  for (size_t row = 0; row < rows; ++row) {
    const float* xr = x + row * n;
    float* yr = y + row * n;
    float ss = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      ss += xr[i] * xr[i];
    }
    const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
    for (size_t i = 0; i < n; ++i) {
      yr[i] = xr[i] * inv;
    }
    r[row] = inv;
  }
}

MLX_GPT_CLONES void rms_backward(const float* __restrict y, const float* __restrict r, const float* __restrict g,
                                 float* __restrict dx, size_t rows, size_t n) {
  for (size_t row = 0; row < rows; ++row) {
    const float *yr = y + row * n, *gr = g + row * n;
    float* d = dx + row * n;
    float dot = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      dot += gr[i] * yr[i];
    }
    const float m = dot / float(n), inv = r[row];
    for (size_t i = 0; i < n; ++i) {
      d[i] = inv * (gr[i] - yr[i] * m);
    }
  }
}

// inputs: y, r (rows), g; output: dx.
class RmsNormGrad : public mlx_gpt::CpuPrimitive {
 public:
  using mlx_gpt::CpuPrimitive::CpuPrimitive;
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    float* dx = outputs[0].data<float>();
    const size_t n = outputs[0].shape(-1), rows = outputs[0].size() / n;
    encoder.dispatch([in, dx, rows, n]() {
      in.fill();
      rms_backward(in[0].data<float>(), in[1].data<float>(), in[2].data<float>(), dx, rows, n);
    });
  }
  const char* name() const override { return "RmsNormGrad"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }
};

// inputs: x; outputs: y and r (x's shape without its last axis).
class RmsNorm : public mlx_gpt::CpuPrimitive {
 public:
  RmsNorm(mx::Stream stream, float eps) : mlx_gpt::CpuPrimitive(stream), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    float *y = outputs[0].data<float>(), *r = outputs[1].data<float>();
    const size_t n = outputs[0].shape(-1), rows = outputs[0].size() / n;
    const float eps = eps_;
    encoder.dispatch([in, y, r, rows, n, eps]() {
      in.fill();
      rms_forward(in[0].data<float>(), y, r, rows, n, eps);
    });
  }
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>&, const std::vector<mx::array>& outputs) override {
    return {mx::array(primals[0].shape(), mx::float32, std::make_shared<RmsNormGrad>(stream()),
                      {outputs[0], outputs[1], cotangents[0]})};
  }
  const char* name() const override { return "RmsNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return eps_ == static_cast<const RmsNorm&>(other).eps_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto rows = inputs[0].shape();
    rows.pop_back();
    return {inputs[0].shape(), rows};
  }

 private:
  float eps_;
};

}  // namespace

extern "C" {

// *res = RMSNorm(x) over the last axis, without parameters, for float32 x, on this
// thread's default CPU stream, differentiable. Returns 0, or 1 with the reason in
// mlx_gpt_last_error().
int mlx_gpt_rms_norm(mlx_array* res, const mlx_array x, float eps) {
  return mlx_gpt::guarded([&]() {
    const mx::array& xa = mlx_array_get_(x);
    if (xa.dtype() != mx::float32 || xa.ndim() < 1) {
      throw std::invalid_argument("[RmsNorm] takes float32 arrays of at least one axis");
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    auto rows = xa.shape();
    rows.pop_back();
    auto outs = mx::array::make_arrays({xa.shape(), rows}, {mx::float32, mx::float32},
                                       std::make_shared<RmsNorm>(stream, eps), {xa});
    mlx_array_set_(*res, outs[0]);
    return 0;
  });
}

}  // extern "C"
