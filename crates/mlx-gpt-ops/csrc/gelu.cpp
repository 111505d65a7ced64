// GELU and its gradient as two MLX primitives, one pass over memory each: the exact
// (erf) form, nanoGPT's, and the tanh approximation GPT-2 was trained with (`gelu_new`);
// and the modern GPT's ReLU², max(x, 0)², through the same two primitives.
//
// Written as MLX ops, GELU's forward and backward become several element-wise kernels
// under compile (erf, the products, exp(-x²/2) for the derivative, ...), each a pass over
// the activations; as primitives they are one pass each. The math is MLX's own (the
// same formulas its JIT kernels use), compiled here for the CPU's vector units through
// function multi-versioning (`target_clones` on the x86-64-v4 (AVX-512), x86-64-v3
// (AVX2 + FMA) and baseline feature levels, chosen by CPU features when the
// library loads).

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "decode_kernels.h"
#include "entry.h"
#include "primitive.h"
#include "vector.h"

#include <stdexcept>
#include <string>

namespace mx = mlx::core;

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// Abramowitz–Stegun 7.1.26 for erf, as in PyTorch's vectorised erf and MLX's CPU
// kernels, inline so that each target_clones copy vectorises it (vector.h).
// erf(v) given e = exp(−v²), which the gradient needs as well (the normal density).
MLX_GPT_INLINE float erf_given_exp(float v, float e) {
  const float a = v < 0.0f ? -v : v;
  const float t = 1.0f / __builtin_fmaf(0.3275911f, a, 1.0f);
  float r = __builtin_fmaf(1.061405429f, t, -1.453152027f);
  r = __builtin_fmaf(r, t, 1.421413741f);
  r = __builtin_fmaf(r, t, -0.284496736f);
  r = __builtin_fmaf(r, t, 0.254829592f);
  const float result = __builtin_fmaf(-e * t, r, 1.0f);
  return v > 0.0f ? result : -result;
}

MLX_GPT_INLINE float erf1(float v) {
  return erf_given_exp(v, mlx_gpt::exp1(-v * v));
}

MLX_GPT_CLONES void gelu_forward(const float* __restrict x, float* __restrict y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + erf1(v * kInvSqrt2));
  }
}

// tanh(u) = 1 − 2 / (exp(2u) + 1), through the same inline exp: it vectorises, where
// libm's tanhf is a scalar call per element.
MLX_GPT_INLINE float tanh1(float u) {
  return 1.0f - 2.0f / (mlx_gpt::exp1(2.0f * u) + 1.0f);
}

constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kTanhCubic = 0.044715f;

// x·½(1 + tanh(√(2/π)(x + 0.044715x³)))
MLX_GPT_CLONES void gelu_tanh_forward(const float* __restrict x, float* __restrict y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + tanh1(kSqrt2OverPi * (v + kTanhCubic * v * v * v)));
  }
}

// The tanh form's slope at x given t = tanh(u), u = a(x + bx³):
// d/dx = ½(1 + t) + ½x(1 − t²)·a(1 + 3bx²).
MLX_GPT_INLINE float gelu_tanh_slope(float v, float t) {
  const float du = kSqrt2OverPi * (1.0f + 3.0f * kTanhCubic * v * v);
  return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
}

MLX_GPT_CLONES void gelu_tanh_backward(const float* __restrict x, const float* __restrict g, float* __restrict dx, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = tanh1(kSqrt2OverPi * (v + kTanhCubic * v * v * v));
    dx[i] = g[i] * gelu_tanh_slope(v, t);
  }
}

// The exact form's slope at x given erf(x/√2) and e = exp(−x²/2):
// d/dx [x Φ(x)] = Φ(x) + x φ(x), Φ(x) = (1 + erf(x/√2))/2, φ(x) = exp(-x²/2)/√(2π).
MLX_GPT_INLINE float gelu_slope(float v, float erf, float e) {
  const float cdf = 0.5f * (1.0f + erf);
  const float pdf = kInvSqrt2Pi * e;
  return cdf + v * pdf;
}

MLX_GPT_CLONES void gelu_backward(const float* __restrict x, const float* __restrict g, float* __restrict dx, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = v * kInvSqrt2;
    const float e = mlx_gpt::exp1(-u * u);  // exp(−x²/2): in erf and in the density
    dx[i] = g[i] * gelu_slope(v, erf_given_exp(u, e), e);
  }
}

// GELU and its slope together, for training: y = x Φ(x), and s = Φ(x) + x φ(x) through
// the helper gelu_backward uses, so that g·s is bitwise its result. The
// slope shares erf's exp, so it costs the forward pass a few operations and a store;
// the backward pass is then a product, where it recomputed exp and erf from x.
MLX_GPT_CLONES void gelu_forward_slope(const float* __restrict x, float* __restrict y, float* __restrict s, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = v * kInvSqrt2;
    const float e = mlx_gpt::exp1(-u * u);
    const float erf = erf_given_exp(u, e);
    y[i] = 0.5f * v * (1.0f + erf);
    s[i] = gelu_slope(v, erf, e);
  }
}

// The tanh form's value and slope.
MLX_GPT_CLONES void gelu_tanh_forward_slope(const float* __restrict x, float* __restrict y, float* __restrict s,
                                            size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = tanh1(kSqrt2OverPi * (v + kTanhCubic * v * v * v));
    y[i] = 0.5f * v * (1.0f + t);
    s[i] = gelu_tanh_slope(v, t);
  }
}

// ReLU²: y = max(x, 0)², slope 2·max(x, 0).
MLX_GPT_CLONES void relu2_forward(const float* __restrict x, float* __restrict y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float r = x[i] > 0.0f ? x[i] : 0.0f;
    y[i] = r * r;
  }
}

MLX_GPT_CLONES void relu2_forward_slope(const float* __restrict x, float* __restrict y, float* __restrict s, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float r = x[i] > 0.0f ? x[i] : 0.0f;
    y[i] = r * r;
    s[i] = 2.0f * r;
  }
}

MLX_GPT_CLONES void relu2_backward(const float* __restrict x, const float* __restrict g, float* __restrict dx, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float r = x[i] > 0.0f ? x[i] : 0.0f;
    dx[i] = g[i] * (2.0f * r);
  }
}

// Which nonlinearity a primitive computes.
enum class Kind { Erf, Tanh, Relu2 };

void forward(Kind kind, const float* x, float* y, size_t n) {
  (kind == Kind::Tanh ? gelu_tanh_forward : kind == Kind::Relu2 ? relu2_forward : gelu_forward)(x, y, n);
}
void forward_slope(Kind kind, const float* x, float* y, float* s, size_t n) {
  (kind == Kind::Tanh ? gelu_tanh_forward_slope : kind == Kind::Relu2 ? relu2_forward_slope : gelu_forward_slope)(
      x, y, s, n);
}
void backward(Kind kind, const float* x, const float* g, float* dx, size_t n) {
  (kind == Kind::Tanh ? gelu_tanh_backward : kind == Kind::Relu2 ? relu2_backward : gelu_backward)(x, g, dx, n);
}

// Allocates outputs[0] (same shape as inputs[0]) and dispatches `kernel(ptrs..., out, n)`.
template <typename F>
void dispatch_elementwise(
    mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs, F kernel) {
  const mlx_gpt::DenseInputs in(inputs);
  auto& encoder = mlx_gpt::prepare(stream, inputs, outputs);
  std::vector<const float*> ptrs;
  for (size_t k = 0; k < in.size(); ++k) {
    ptrs.push_back(in[k].data<float>());
  }
  float* y = outputs[0].data<float>();
  size_t n = outputs[0].size();
  encoder.dispatch([in, ptrs = std::move(ptrs), y, n, kernel]() {
    in.fill();
    kernel(ptrs, y, n);
  });
}

class GeluGrad : public mlx_gpt::CpuPrimitive {
 public:
  GeluGrad(mx::Stream stream, Kind kind) : mlx_gpt::CpuPrimitive(stream), kind_(kind) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const Kind kind = kind_;
    dispatch_elementwise(stream(), inputs, outputs, [kind](const std::vector<const float*>& p, float* y, size_t n) {
      backward(kind, p[0], p[1], y, n);
    });
  }
  const char* name() const override {
    return "GeluGrad";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    return kind_ == static_cast<const GeluGrad&>(other).kind_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  Kind kind_;
};

// inputs: x; outputs: y and, `with_slope`, the slope at x (for training: the gradient is
// then the cotangent times the slope, a product compile can fuse with its neighbours).
class Gelu : public mlx_gpt::CpuPrimitive {
 public:
  Gelu(mx::Stream stream, Kind kind, bool with_slope)
      : mlx_gpt::CpuPrimitive(stream), kind_(kind), with_slope_(with_slope) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const Kind kind = kind_;
    if (!with_slope_) {
      dispatch_elementwise(stream(), inputs, outputs, [kind](const std::vector<const float*>& p, float* y, size_t n) {
        forward(kind, p[0], y, n);
      });
      return;
    }
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const float* x = in[0].data<float>();
    float *y = outputs[0].data<float>(), *slope = outputs[1].data<float>();
    const size_t n = outputs[0].size();
    encoder.dispatch([=]() {
      in.fill();
      forward_slope(kind, x, y, slope, n);
    });
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>&,
      const std::vector<mx::array>& outputs) override {
    if (with_slope_) {
      return {mx::multiply(cotangents[0], outputs[1], stream())};
    }
    return {mx::array(
        primals[0].shape(), mx::float32, std::make_shared<GeluGrad>(stream(), kind_), {primals[0], cotangents[0]})};
  }

  const char* name() const override {
    return "Gelu";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Gelu&>(other);
    return kind_ == o.kind_ && with_slope_ == o.with_slope_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    if (with_slope_) {
      return {inputs[0].shape(), inputs[0].shape()};
    }
    return {inputs[0].shape()};
  }

 private:
  Kind kind_;
  bool with_slope_;
};

// The entry points' shared body: *res = kind(x), differentiable.
int make(mlx_array* res, const mlx_array x, Kind kind, bool with_slope) {
  return mlx_gpt::guarded([&]() {
    const mx::array& xa = mlx_array_get_(x);
    if (xa.dtype() != mx::float32) {
      throw std::invalid_argument("[Gelu] takes float32 only");
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    auto primitive = std::make_shared<Gelu>(stream, kind, with_slope);
    if (with_slope) {
      mlx_array_set_(*res, mx::array::make_arrays({xa.shape(), xa.shape()}, {mx::float32, mx::float32}, primitive, {xa})[0]);
    } else {
      mlx_array_set_(*res, mx::array(xa.shape(), mx::float32, primitive, {xa}));
    }
    return 0;
  });
}

}  // namespace

void mlx_gpt::gelu_values(const float* x, float* y, size_t n, bool tanh) {
  if (tanh) {
    gelu_tanh_forward(x, y, n);
  } else {
    gelu_forward(x, y, n);
  }
}

extern "C" {

// *res = GELU(x) for float32 x (exact, or the tanh approximation when `tanh`), on this
// thread's default CPU stream, differentiable; `with_slope` (for training) also computes
// the slope in the forward pass, for the gradient. Returns 0, or 1 with the reason in
// mlx_gpt_last_error().
int mlx_gpt_gelu(mlx_array* res, const mlx_array x, bool tanh, bool with_slope) {
  return make(res, x, tanh ? Kind::Tanh : Kind::Erf, with_slope);
}

// *res = max(x, 0)² for float32 x, as mlx_gpt_gelu.
int mlx_gpt_relu_squared(mlx_array* res, const mlx_array x, bool with_slope) {
  return make(res, x, Kind::Relu2, with_slope);
}

}  // extern "C"
