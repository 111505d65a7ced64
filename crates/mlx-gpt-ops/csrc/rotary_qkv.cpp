// The modern GPT's preparation of c_attn's output for attention, and its gradient, as two
// MLX primitives of one pass each: QK-norm (RMSNorm without parameters on each head's
// queries and keys), the rotary turn by position, and grouped-query attention's repeat of
// each key/value head, from (B, T, (nh + 2·nkv)·hs) to q, k, v side by side (B, T, 3C) as
// GPT-2's c_attn gives them, so the same attention kernels follow.
//
// As MLX ops this is a split, two norms (a square, a mean, an rsqrt, a product each), two
// turns (halves, four products, a concatenation each), the repeats and a concatenation,
// and as many again backwards: about a fifth of a baby GPT's training step, measured
// (docs/performance.md). The arithmetic is that of crate::rotary and crate::rms_norm.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "entry.h"
#include "primitive.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace mx = mlx::core;

namespace {

struct Dims {
  size_t rows;  // B·T
  size_t t;     // positions: a row's position is row % t
  int nh, nkv, hs;
  float eps;
  size_t in_width() const { return size_t(nh + 2 * nkv) * hs; }
  // The same computation (rows may differ: a primitive's shapes come from its inputs).
  bool same_as(const Dims& o) const { return t == o.t && nh == o.nh && nkv == o.nkv && hs == o.hs && eps == o.eps; }
  size_t out_width() const { return size_t(3 * nh) * hs; }
};

// One head's features x (hs) → normalised and turned into y; cos/sin: hs/2 each.
inline void norm_turn(const float* x, float* y, const float* cos, const float* sin, int hs, float eps) {
  float ss = 0.0f;
  for (int i = 0; i < hs; ++i) {
    ss += x[i] * x[i];
  }
  const float r = 1.0f / std::sqrt(ss / float(hs) + eps);
  const int half = hs / 2;
  for (int i = 0; i < half; ++i) {
    const float x1 = x[i] * r, x2 = x[i + half] * r;
    y[i] = x1 * cos[i] + x2 * sin[i];
    y[i + half] = x2 * cos[i] - x1 * sin[i];
  }
}

// The gradient of norm_turn: dy (hs) → dx (hs), given x.
inline void norm_turn_grad(const float* x, const float* dy, float* dx, const float* cos, const float* sin, int hs,
                           float eps) {
  float ss = 0.0f;
  for (int i = 0; i < hs; ++i) {
    ss += x[i] * x[i];
  }
  const float r = 1.0f / std::sqrt(ss / float(hs) + eps);
  const int half = hs / 2;
  // Turn back (the transpose of the rotation) into the normalised features' gradient d,
  // then through the norm: dx = r·(d − n·mean(d·n)), n = x·r.
  float dot = 0.0f;
  for (int i = 0; i < half; ++i) {
    const float d1 = dy[i] * cos[i] - dy[i + half] * sin[i];
    const float d2 = dy[i] * sin[i] + dy[i + half] * cos[i];
    dx[i] = d1;
    dx[i + half] = d2;
    dot += d1 * x[i] * r + d2 * x[i + half] * r;
  }
  const float m = dot / float(hs);
  for (int i = 0; i < hs; ++i) {
    dx[i] = r * (dx[i] - x[i] * r * m);
  }
}

void forward(const Dims& d, const float* in, const float* cos, const float* sin, float* out) {
  const int g = d.nh / d.nkv, hs = d.hs, half = hs / 2;
  const size_t c = size_t(d.nh) * hs;
  for (size_t row = 0; row < d.rows; ++row) {
    const float* x = in + row * d.in_width();
    float* y = out + row * d.out_width();
    const size_t pos = row % d.t;
    const float *cs = cos + pos * half, *sn = sin + pos * half;
    for (int h = 0; h < d.nh; ++h) {
      norm_turn(x + size_t(h) * hs, y + size_t(h) * hs, cs, sn, hs, d.eps);
    }
    const float* k = x + c;
    const float* v = k + size_t(d.nkv) * hs;
    for (int j = 0; j < d.nkv; ++j) {
      float* first = y + c + size_t(j * g) * hs;
      norm_turn(k + size_t(j) * hs, first, cs, sn, hs, d.eps);
      for (int r = 1; r < g; ++r) {
        std::memcpy(first + size_t(r) * hs, first, sizeof(float) * hs);
      }
      for (int r = 0; r < g; ++r) {
        std::memcpy(y + 2 * c + size_t(j * g + r) * hs, v + size_t(j) * hs, sizeof(float) * hs);
      }
    }
  }
}

void backward(const Dims& d, const float* in, const float* cos, const float* sin, const float* dout, float* din) {
  const int g = d.nh / d.nkv, hs = d.hs, half = hs / 2;
  const size_t c = size_t(d.nh) * hs;
  std::vector<float> sum(hs);
  for (size_t row = 0; row < d.rows; ++row) {
    const float* x = in + row * d.in_width();
    const float* dy = dout + row * d.out_width();
    float* dx = din + row * d.in_width();
    const size_t pos = row % d.t;
    const float *cs = cos + pos * half, *sn = sin + pos * half;
    for (int h = 0; h < d.nh; ++h) {
      norm_turn_grad(x + size_t(h) * hs, dy + size_t(h) * hs, dx + size_t(h) * hs, cs, sn, hs, d.eps);
    }
    for (int j = 0; j < d.nkv; ++j) {
      // A key/value head's gradient is the sum over the query heads it served.
      for (int part = 0; part < 2; ++part) {
        const float* src = dy + (1 + part) * c + size_t(j * g) * hs;
        std::memcpy(sum.data(), src, sizeof(float) * hs);
        for (int r = 1; r < g; ++r) {
          for (int i = 0; i < hs; ++i) {
            sum[i] += src[size_t(r) * hs + i];
          }
        }
        float* target = dx + c + size_t(part * d.nkv + j) * hs;
        if (part == 0) {
          norm_turn_grad(x + c + size_t(j) * hs, sum.data(), target, cs, sn, hs, d.eps);
        } else {
          std::memcpy(target, sum.data(), sizeof(float) * hs);
        }
      }
    }
  }
}

// inputs: qkv (B, T, (nh + 2·nkv)·hs), cos, sin (T, hs/2); gradient: + dout (B, T, 3C).
class RotaryQkvGrad : public mlx_gpt::CpuPrimitive {
 public:
  RotaryQkvGrad(mx::Stream stream, Dims d) : mlx_gpt::CpuPrimitive(stream), d_(d) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    float* out = outputs[0].data<float>();
    encoder.dispatch([in, d = d_, out]() {
      in.fill();
      backward(d, in[0].data<float>(), in[1].data<float>(), in[2].data<float>(), in[3].data<float>(), out);
    });
  }
  const char* name() const override { return "RotaryQkvGrad"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return d_.same_as(static_cast<const RotaryQkvGrad&>(other).d_);
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  Dims d_;
};

class RotaryQkv : public mlx_gpt::CpuPrimitive {
 public:
  RotaryQkv(mx::Stream stream, Dims d) : mlx_gpt::CpuPrimitive(stream), d_(d) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    float* out = outputs[0].data<float>();
    encoder.dispatch([in, d = d_, out]() {
      in.fill();
      forward(d, in[0].data<float>(), in[1].data<float>(), in[2].data<float>(), out);
    });
  }
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    std::vector<mx::array> grads;
    for (int a : argnums) {
      if (a == 0) {
        grads.push_back(mx::array(primals[0].shape(), mx::float32, std::make_shared<RotaryQkvGrad>(stream(), d_),
                                  {primals[0], primals[1], primals[2], cotangents[0]}));
      } else {
        grads.push_back(mx::zeros_like(primals[a], stream()));  // the tables are constants
      }
    }
    return grads;
  }
  const char* name() const override { return "RotaryQkv"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return d_.same_as(static_cast<const RotaryQkv&>(other).d_);
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto s = inputs[0].shape();
    s.back() = int(d_.out_width());
    return {s};
  }

 private:
  Dims d_;
};

}  // namespace

extern "C" {

// *res = the modern GPT's q, k, v (B, T, 3C) from c_attn's output `qkv` (B, T,
// (nh + 2·nkv)·hs) and the rotary tables `cos`, `sin` (T, hs/2) of its T positions, all
// float32, on this thread's default CPU stream, differentiable. Returns 0, or 1 with the
// reason in mlx_gpt_last_error().
int mlx_gpt_rotary_qkv(mlx_array* res, const mlx_array qkv, const mlx_array cos, const mlx_array sin, int n_head,
                       int n_kv_head, float eps) {
  return mlx_gpt::guarded([&]() {
    const mx::array &x = mlx_array_get_(qkv), &c = mlx_array_get_(cos), &s = mlx_array_get_(sin);
    if (x.dtype() != mx::float32 || c.dtype() != mx::float32 || s.dtype() != mx::float32) {
      throw std::invalid_argument("[RotaryQkv] takes float32 only");
    }
    if (x.ndim() != 3 || c.ndim() != 2 || s.shape() != c.shape() || n_head <= 0 || n_kv_head <= 0 ||
        n_head % n_kv_head != 0) {
      throw std::invalid_argument("[RotaryQkv] expects qkv (B, T, (nh + 2 nkv) hs), tables (T, hs/2)");
    }
    const int hs = 2 * c.shape(1);
    Dims d{size_t(x.shape(0)) * x.shape(1), size_t(x.shape(1)), n_head, n_kv_head, hs, eps};
    if (c.shape(0) != x.shape(1) || size_t(x.shape(2)) != d.in_width()) {
      throw std::invalid_argument("[RotaryQkv] qkv's width or length does not match the heads and tables");
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    auto shape = x.shape();
    shape.back() = int(d.out_width());
    mlx_array_set_(*res, mx::array(shape, mx::float32, std::make_shared<RotaryQkv>(stream, d), {x, c, s}));
    return 0;
  });
}

}  // extern "C"
