// One optimizer step as one MLX primitive: sum the gradient parts (one per CPU stream or
// micro-batch group), scale them, clip them to a global norm as PyTorch's
// clip_grad_norm_, and apply AdamW (PyTorch's formula, decoupled weight decay) to every
// parameter.
//
// As MLX ops this is a few hundred small kernels after the gradients are ready (per
// parameter: the sum of the parts, the squared norm's reduction, the clipping product,
// the update), run while every other core waits; for a small model they took a fifth of
// the step. Here it is one task: a pass over the gradients for the norm, then one fused,
// vectorised pass per parameter for the update.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "entry.h"
#include "primitive.h"
#include "vector.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace mx = mlx::core;

namespace {

// The scalars of one step. `decay` multiplies parameters that are decayed.
struct Hyper {
  float scale, clip;
  bool clipping;
  float beta1, one_minus_beta1, beta2, one_minus_beta2, decay, step_size, bc2_sqrt, eps;
};

// acc[l] += Σ (g[i] · scale)² over the i ≡ l (mod kLanes) of whole groups of kLanes (n
// is a multiple of kLanes): the lanes of one parameter's squared norm, which its chunks
// carry over (vector.h).
MLX_GPT_CLONES void squared_lanes(const float* __restrict g, size_t n, float scale, float* __restrict acc) {
  for (size_t i = 0; i < n; i += mlx_gpt::kLanes) {
    for (int l = 0; l < mlx_gpt::kLanes; ++l) {
      const float s = g[i + l] * scale;
      acc[l] += s * s;
    }
  }
}

// Σ (g[i] · scale)² over the n (< kLanes) elements after the last whole group, in order:
// a function of its own so that it is built per feature level as before (with FMA where
// the CPU has it: the same rounding as when it ran in squared_norm).
MLX_GPT_CLONES float squared_tail(const float* __restrict g, size_t n, float scale) {
  float tail = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    const float s = g[i] * scale;
    tail += s * s;
  }
  return tail;
}

// The same arithmetic, in the same order, as the compiled per-parameter kernel
// (mlx-gpt-train's optimizer.rs): g = (g·scale)·coef; m' = m·β1 + g·(1−β1);
// v' = v·β2 + g²·(1−β2); p' = p·decay − (m' / (√v' / √bc2 + ε))·step_size.
struct Updated {
  float p, m, v;
};
MLX_GPT_INLINE Updated adamw(float g, float p, float m, float v, const Hyper& h, float coef, float decay) {
  const float gi = (g * h.scale) * coef;
  const float mi = m * h.beta1 + gi * h.one_minus_beta1;
  const float vi = v * h.beta2 + (gi * gi) * h.one_minus_beta2;
  const float denom = std::sqrt(vi) / h.bc2_sqrt + h.eps;
  return {p * decay - (mi / denom) * h.step_size, mi, vi};
}

// p', m', v' into new buffers.
MLX_GPT_CLONES void update(const float* __restrict g, const float* __restrict p, const float* __restrict m,
                           const float* __restrict v, float* __restrict p_out, float* __restrict m_out,
                           float* __restrict v_out, size_t n, Hyper h, float coef, float decay) {
  for (size_t i = 0; i < n; ++i) {
    const Updated u = adamw(g[i], p[i], m[i], v[i], h, coef, decay);
    p_out[i] = u.p;
    m_out[i] = u.m;
    v_out[i] = u.v;
  }
}

// p', m', v' over p, m, v (their buffers were donated): a function of its own, since
// `update`'s pointers must not alias.
MLX_GPT_CLONES void update_in_place(const float* __restrict g, float* __restrict p, float* __restrict m,
                                    float* __restrict v, size_t n, Hyper h, float coef, float decay) {
  for (size_t i = 0; i < n; ++i) {
    const Updated u = adamw(g[i], p[i], m[i], v[i], h, coef, decay);
    p[i] = u.p;
    m[i] = u.m;
    v[i] = u.v;
  }
}

// out = Σ parts, in their order (a plain copy for one part).
MLX_GPT_CLONES void sum_parts(const float* const* parts, size_t n_parts, float* __restrict out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    out[i] = parts[0][i];
  }
  for (size_t q = 1; q < n_parts; ++q) {
    const float* __restrict part = parts[q];
    for (size_t i = 0; i < n; ++i) {
      out[i] += part[i];
    }
  }
}

// The most gradient parts a step sums (fused_adamw.rs: MAX_PARTS).
constexpr size_t kMaxParts = 16;

// Runs `a` on a helper thread and `b` on this one, and returns when both are done; if
// no thread can be started, both run here, one after the other.
template <typename A, typename B>
void in_two(A a, B b) {
  std::thread helper;
  try {
    helper = std::thread(a);
  } catch (const std::system_error&) {
    a();
  }
  b();
  if (helper.joinable()) {
    helper.join();
  }
}

// inputs: p[n], m[n], v[n], then the parts' gradients part-major (part 0's n, part 1's
// n, ...), all dense float32; outputs: the norm (scalar), p'[n], m'[n], v'[n].
class AdamWStep : public mlx_gpt::CpuPrimitive {
 public:
  AdamWStep(mx::Stream stream, size_t n, size_t n_parts, std::vector<bool> decays, Hyper h)
      : mlx_gpt::CpuPrimitive(stream), n_(n), n_parts_(n_parts), decays_(std::move(decays)), h_(h) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const size_t n = n_, n_parts = n_parts_;
    // p', m' and v' are written over p, m and v where nobody else holds those (the
    // training step lets go of its handles first): element by element, each is read
    // before it is written. Measured: the task went from 1.9 to 1.2 ms on the baby GPT,
    // as it no longer brings 3n fresh buffers into the cache to write them.
    const bool released = mlx_gpt::release_sibling_inputs(inputs, outputs);
    // All three or none, so that `update` never sees aliased buffers.
    std::vector<int> donors(outputs.size(), -1);
    for (size_t j = 0; released && j < n; ++j) {
      bool all = true;
      for (size_t t = 0; t < 3; ++t) {
        all = all && mlx_gpt::can_donate(inputs[t * n + j], outputs[1 + t * n + j]);
      }
      for (size_t t = 0; all && t < 3; ++t) {
        donors[1 + t * n + j] = static_cast<int>(t * n + j);
      }
    }
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs, &donors);
    std::vector<const float*> in(inputs.size());
    std::vector<size_t> sizes(n);
    for (size_t k = 0; k < inputs.size(); ++k) {
      in[k] = inputs[k].data<float>();
    }
    for (size_t j = 0; j < n; ++j) {
      sizes[j] = inputs[j].size();
    }
    std::vector<float*> out(outputs.size());
    for (size_t k = 0; k < outputs.size(); ++k) {
      out[k] = outputs[k].data<float>();
    }
    const std::vector<bool> decays = decays_;
    const Hyper h = h_;
    encoder.dispatch([=]() {
      // The parameters in two groups of about equal size, one per thread: this task runs
      // while the streams that computed the gradients wait, and the update is bound by
      // memory bandwidth, which one core does not saturate. The norm needs every
      // gradient first, so the parts are read twice: once for it, once for the update.
      size_t total_size = 0;
      for (size_t j = 0; j < n; ++j) {
        total_size += sizes[j];
      }
      size_t split = 0;
      for (size_t acc = 0; split < n && 2 * (acc + sizes[split]) <= total_size; ++split) {
        acc += sizes[split];
      }
      // Several parts are summed a chunk at a time into a buffer that stays in L1, in
      // both passes, rather than into a parameter-sized array: the sum costs a few adds
      // per element where the array cost an allocation, a write and a read per step.
      // Chunks are whole groups of lanes, so the norm's lanes see the same elements in
      // the same order as over the whole parameter.
      constexpr size_t kChunk = 2048;
      auto chunks = [&](size_t j, auto&& body) {
        alignas(64) float buf[kChunk];
        const float* g[kMaxParts];
        for (size_t start = 0; start < sizes[j]; start += kChunk) {
          const size_t len = std::min(kChunk, sizes[j] - start);
          if (n_parts == 1) {
            body(in[3 * n + j] + start, start, len);
            continue;
          }
          for (size_t q = 0; q < n_parts; ++q) {
            g[q] = in[3 * n + q * n + j] + start;
          }
          sum_parts(g, n_parts, buf, len);
          body(static_cast<const float*>(buf), start, len);
        }
      };
      auto norm_pass = [&](size_t from, size_t to) {
        double total = 0.0;
        for (size_t j = from; j < to; ++j) {
          float acc[mlx_gpt::kLanes] = {};
          float tail = 0.0f;
          chunks(j, [&](const float* g, size_t, size_t len) {
            const size_t whole = len / mlx_gpt::kLanes * mlx_gpt::kLanes;
            squared_lanes(g, whole, h.scale, acc);
            if (whole < len) {
              tail = squared_tail(g + whole, len - whole, h.scale);  // the last chunk only
            }
          });
          for (int l = 0; l < mlx_gpt::kLanes; ++l) {
            tail += acc[l];
          }
          total += tail;
        }
        return total;
      };
      auto update_pass = [&](size_t from, size_t to, float coef) {
        for (size_t j = from; j < to; ++j) {
          const float decay = decays[j] ? h.decay : 1.0f;
          // Donated together or not at all (eval_cpu).
          const bool in_place = in[j] == out[1 + j] && in[n + j] == out[1 + n + j] && in[2 * n + j] == out[1 + 2 * n + j];
          chunks(j, [&](const float* g, size_t start, size_t len) {
            if (in_place) {
              update_in_place(g, out[1 + j] + start, out[1 + n + j] + start, out[1 + 2 * n + j] + start, len, h, coef,
                              decay);
            } else {
              update(g, in[j] + start, in[n + j] + start, in[2 * n + j] + start, out[1 + j] + start,
                     out[1 + n + j] + start, out[1 + 2 * n + j] + start, len, h, coef, decay);
            }
          });
        }
      };
      double first = 0.0, second = 0.0;
      in_two([&]() { second = norm_pass(split, n); }, [&]() { first = norm_pass(0, split); });
      const float norm = static_cast<float>(std::sqrt(first + second));
      float coef = 1.0f;
      if (h.clipping) {
        // As min(·, 1) in MLX and PyTorch's clamp: a NaN norm gives a NaN factor (every
        // parameter becomes NaN, as on the op-by-op path), where fmin would give 1.
        const float ratio = h.clip / (norm + 1e-6f);
        coef = std::isnan(ratio) ? ratio : std::fmin(ratio, 1.0f);
      }
      *out[0] = norm;
      in_two([&]() { update_pass(split, n, coef); }, [&]() { update_pass(0, split, coef); });
    });
  }
  const char* name() const override {
    return "AdamWStep";
  }
  bool is_equivalent(const mx::Primitive&) const override {
    return false;  // never compiled; each step has its own scalars
  }

 private:
  size_t n_, n_parts_;
  std::vector<bool> decays_;
  Hyper h_;
};

}  // namespace

extern "C" {

// One AdamW step of n parameters with n_parts gradient parts: arrays = p[n], m[n], v[n],
// then the parts part-major; decays[j] says whether parameter j is decayed (by `decay`);
// hyper = {scale, clip, clipping (0 or 1), β1, 1−β1, β2, 1−β2, decay, step size, √bc2,
// ε}. Fills outs[0] with the gradients' global norm (after scaling, before clipping) and
// outs[1 .. 1+3n] with p', m', v'. On this thread's default CPU stream. Returns 0, or 1
// with the reason in mlx_gpt_last_error().
int mlx_gpt_adamw_step(
    mlx_array* outs, const mlx_array* arrays, size_t n, size_t n_parts, const bool* decays, const float* hyper) {
  return mlx_gpt::guarded([&]() {
    if (n == 0 || n_parts == 0 || n_parts > kMaxParts) {
      throw std::invalid_argument("[AdamWStep] needs at least one parameter and 1 to 16 gradient parts");
    }
    std::vector<mx::array> inputs;
    auto stream = mx::default_stream(mx::Device::cpu);
    for (size_t k = 0; k < (3 + n_parts) * n; ++k) {
      const mx::array& a = mlx_array_get_(arrays[k]);
      const mx::array& p = mlx_array_get_(arrays[k % n]);
      if (a.dtype() != mx::float32 || a.shape() != p.shape()) {
        throw std::invalid_argument(
            "[AdamWStep] every parameter, moment and gradient must be float32, each of its parameter's shape");
      }
      inputs.push_back(mlx_gpt::dense(a, stream));
    }
    const Hyper h{hyper[0], hyper[1], hyper[2] != 0.0f, hyper[3], hyper[4], hyper[5],
                  hyper[6], hyper[7], hyper[8],        hyper[9], hyper[10]};
    std::vector<mx::Shape> shapes = {{}};
    std::vector<mx::Dtype> dtypes = {mx::float32};
    for (int r = 0; r < 3; ++r) {
      for (size_t j = 0; j < n; ++j) {
        shapes.push_back(inputs[j].shape());
        dtypes.push_back(mx::float32);
      }
    }
    auto results = mx::array::make_arrays(
        std::move(shapes), dtypes,
        std::make_shared<AdamWStep>(stream, n, n_parts, std::vector<bool>(decays, decays + n), h), inputs);
    for (size_t k = 0; k < results.size(); ++k) {
      mlx_array_set_(outs[k], results[k]);
    }
    return 0;
  });
}

}  // extern "C"
