// A dense layer, y = x·W + b (or x·Wᵀ + b for a weight stored (out, in), as the tied
// lm_head reads wte), and its gradient, as two MLX primitives on mlx-gpt's own GEMM
// (gemm.h).
//
// As MLX ops a training step's layer is a matmul, an add of the bias (a separate kernel
// unless compile fuses it into a neighbour), and in the backward pass two matmuls with
// transposed views plus a reduction for the bias: four or five tasks on the stream,
// each through OpenBLAS, which for these small products spends a third of its time
// packing and clearing (docs/performance-history.md). Here the forward pass is one product
// with the bias added in its store, and the backward pass one task that writes dx, dW
// and db.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "entry.h"
#include "gemm.h"
#include "primitive.h"
#include "vector.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace mx = mlx::core;

namespace {

using mlx_gpt::GemmInit;
using mlx_gpt::Structure;

// The sizes of one layer: `rows` input rows of `in` features, `out` outputs.
struct Dims {
  size_t rows, in, out;
};

Dims dims_of(const mx::array& x, const mx::array& w, bool w_t) {
  size_t rows = 1;
  for (size_t i = 0; i + 1 < x.ndim(); ++i) {
    rows *= static_cast<size_t>(x.shape(static_cast<int>(i)));
  }
  return Dims{rows, static_cast<size_t>(x.shape(-1)), static_cast<size_t>(w_t ? w.shape(0) : w.shape(1))};
}

// db[j] = Σ_rows g[row, j], in row order.
MLX_GPT_CLONES void column_sums(const float* __restrict g, size_t rows, size_t out, float* __restrict db) {
  for (size_t j = 0; j < out; ++j) {
    db[j] = 0.0f;
  }
  for (size_t r = 0; r < rows; ++r, g += out) {
    for (size_t j = 0; j < out; ++j) {
      db[j] += g[j];
    }
  }
}

// inputs: x (rows, in), W, g (rows, out); outputs, in this order, those asked for: dx
// (x's shape), dW (W's shape), db (out).
class LinearGrad : public mlx_gpt::CpuPrimitive {
 public:
  LinearGrad(mx::Stream stream, bool w_t, int threads, bool want_dx, bool want_dw, bool want_db)
      : mlx_gpt::CpuPrimitive(stream),
        w_t_(w_t),
        threads_(threads),
        want_dx_(want_dx),
        want_dw_(want_dw),
        want_db_(want_db) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const Dims d = dims_of(inputs[0], inputs[1], w_t_);
    const float *x = in[0].data<float>(), *w = in[1].data<float>(), *g = in[2].data<float>();
    size_t next = 0;
    float* dx = want_dx_ ? outputs[next++].data<float>() : nullptr;
    float* dw = want_dw_ ? outputs[next++].data<float>() : nullptr;
    float* db = want_db_ ? outputs[next++].data<float>() : nullptr;
    const bool w_t = w_t_;
    const int threads = threads_;
    encoder.dispatch([=]() {
      in.fill();
      if (dx != nullptr) {
        // x, saved from the forward pass, is long out of L2; ask for it now so that the
        // weight gradient below finds it there (when it fits).
        if (dw != nullptr && d.rows * d.in * sizeof(float) <= (size_t{1} << 20)) {
          mlx_gpt::prefetch_to_l2(x, d.rows, d.in, d.in);
        }
        // dx = g·Wᵀ for W (in, out); g·W for W stored (out, in).
        mlx_gpt::gemm(false, !w_t, d.rows, d.in, d.out, 1.0f, g, d.out, w, w_t ? d.in : d.out, dx, d.in,
                      GemmInit::Zero, nullptr, Structure::General, threads);
      }
      if (dw != nullptr) {
        if (w_t) {
          mlx_gpt::gemm(true, false, d.out, d.in, d.rows, 1.0f, g, d.out, x, d.in, dw, d.in,  // gᵀ·x
                        GemmInit::Zero, nullptr, Structure::General, threads);
        } else {
          mlx_gpt::gemm(true, false, d.in, d.out, d.rows, 1.0f, x, d.in, g, d.out, dw, d.out,  // xᵀ·g
                        GemmInit::Zero, nullptr, Structure::General, threads);
        }
      }
      if (db != nullptr) {
        column_sums(g, d.rows, d.out, db);
      }
    });
  }
  const char* name() const override {
    return "LinearGrad";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const LinearGrad&>(other);
    return w_t_ == o.w_t_ && threads_ == o.threads_ && want_dx_ == o.want_dx_ && want_dw_ == o.want_dw_ &&
           want_db_ == o.want_db_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    std::vector<mx::Shape> shapes;
    if (want_dx_) shapes.push_back(inputs[0].shape());
    if (want_dw_) shapes.push_back(inputs[1].shape());
    if (want_db_) shapes.push_back({static_cast<int>(dims_of(inputs[0], inputs[1], w_t_).out)});
    return shapes;
  }

 private:
  bool w_t_;
  int threads_;  // each product split over this many threads (gemm.h)
  bool want_dx_, want_dw_, want_db_;
};

// inputs: x (..., in), W ((in, out), or (out, in) when w_t) and optionally b (out);
// output: y (..., out).
class Linear : public mlx_gpt::CpuPrimitive {
 public:
  Linear(mx::Stream stream, bool w_t, int threads) : mlx_gpt::CpuPrimitive(stream), w_t_(w_t), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const Dims d = dims_of(inputs[0], inputs[1], w_t_);
    const float *x = in[0].data<float>(), *w = in[1].data<float>();
    const float* b = in.size() > 2 ? in[2].data<float>() : nullptr;
    float* y = outputs[0].data<float>();
    const bool w_t = w_t_;
    const int threads = threads_;
    encoder.dispatch([=]() {
      in.fill();
      mlx_gpt::gemm(false, w_t, d.rows, d.out, d.in, 1.0f, x, d.in, w, w_t ? d.in : d.out, y, d.out,
                    b != nullptr ? GemmInit::Bias : GemmInit::Zero, b, Structure::General, threads);
    });
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>&) override {
    bool want[3] = {false, false, false};
    for (int arg : argnums) {
      want[arg] = true;
    }
    const auto& g = cotangents[0];
    std::vector<mx::Shape> shapes;
    std::vector<mx::Dtype> dtypes;
    int slot[3] = {-1, -1, -1};
    for (int i = 0; i < static_cast<int>(primals.size()); ++i) {
      if (want[i]) {
        slot[i] = static_cast<int>(shapes.size());
        shapes.push_back(primals[i].shape());
        dtypes.push_back(mx::float32);
      }
    }
    auto grads = mx::array::make_arrays(
        shapes, dtypes, std::make_shared<LinearGrad>(stream(), w_t_, threads_, want[0], want[1], want[2]),
        {primals[0], primals[1], g});
    std::vector<mx::array> out;
    for (int arg : argnums) {
      out.push_back(grads[slot[arg]]);
    }
    return out;
  }

  const char* name() const override {
    return "Linear";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Linear&>(other);
    return w_t_ == o.w_t_ && threads_ == o.threads_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = static_cast<int>(dims_of(inputs[0], inputs[1], w_t_).out);
    return {shape};
  }

 private:
  bool w_t_;
  int threads_;
};

}  // namespace

extern "C" {

// *res = x·W + bias (x·Wᵀ + bias when `w_transposed`, W stored (out, in)) for float32 x
// (..., in), W and bias (out), on this thread's default CPU stream, differentiable, each
// product (forward and gradient) split over `threads` threads (1: this stream's thread
// alone); `bias` may be an empty handle. Returns 0, or 1 with the reason in
// mlx_gpt_last_error().
int mlx_gpt_linear(mlx_array* res, const mlx_array x, const mlx_array w, const mlx_array bias, bool w_transposed,
                   int threads) {
  return mlx_gpt::guarded([&]() {
    const mx::array &xa = mlx_array_get_(x), &wa = mlx_array_get_(w);
    if (xa.dtype() != mx::float32 || wa.dtype() != mx::float32 || xa.ndim() < 1 || wa.ndim() != 2) {
      throw std::invalid_argument("[Linear] needs float32 x (..., in) and a float32 matrix W");
    }
    const int in = w_transposed ? wa.shape(1) : wa.shape(0);
    const int out = w_transposed ? wa.shape(0) : wa.shape(1);
    if (xa.shape(-1) != in) {
      throw std::invalid_argument("[Linear] x has " + std::to_string(xa.shape(-1)) + " features, W takes " +
                                  std::to_string(in));
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    std::vector<mx::array> inputs = {xa, wa};
    if (bias.ctx != nullptr) {
      const mx::array& b = mlx_array_get_(bias);
      if (b.dtype() != mx::float32 || b.ndim() != 1 || b.shape(0) != out) {
        throw std::invalid_argument("[Linear] the bias must be float32 (" + std::to_string(out) + ",)");
      }
      inputs.push_back(b);
    }
    auto shape = xa.shape();
    shape.back() = out;
    mlx_array_set_(*res, mx::array(shape, mx::float32, std::make_shared<Linear>(stream, w_transposed, std::max(threads, 1)), inputs));
    return 0;
  });
}

}  // extern "C"
