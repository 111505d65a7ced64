// A matrix–vector product as an MLX primitive that calls the BLAS's `cblas_sgemv`.
//
// With one input row, MLX's CPU matmul still calls `sgemm`, and OpenBLAS's `sgemm` first
// copies ("packs") the whole weight matrix, which for a matrix read once per token costs
// more than the product itself. `sgemv` streams the weights once. As a primitive, the
// product stays in MLX's lazy graph: it runs on the stream's worker thread like any other
// kernel, so decoding a token is still one `eval` (see src/matvec.rs for when it is used).
//
// The C entry points follow mlx-c's conventions (mlx_array in and out, 0 on success) and
// use mlx-c's private header to convert between `mlx_array` and `mlx::core::array`.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "blas.h"
#include "entry.h"
#include "primitive.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace mx = mlx::core;

namespace {

using mlx_gpt::kNoTrans;
using mlx_gpt::kRowMajor;
using mlx_gpt::kTrans;

// out (..., N) = x (..., K) · w + bias: w is (K, N), or (N, K) used transposed.
class HostGemv : public mlx_gpt::CpuPrimitive {
 public:
  HostGemv(mx::Stream stream, bool w_transposed) : mlx_gpt::CpuPrimitive(stream), w_transposed_(w_transposed) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const int rows_w = w.shape(0), cols_w = w.shape(1);
    const int k = w_transposed_ ? cols_w : rows_w;
    const int n = w_transposed_ ? rows_w : cols_w;
    const int rows = static_cast<int>(x.size() / k);
    const float* xp = x.data<float>();
    const float* wp = w.data<float>();
    const float* bp = inputs.size() > 2 ? inputs[2].data<float>() : nullptr;
    float* yp = outputs[0].data<float>();
    // Row-major w (K, N): y = wᵀx is sgemv "Trans" on an m = K by n = N matrix;
    // row-major w (N, K): y = wx is sgemv "NoTrans" on an m = N by n = K matrix.
    const int trans = w_transposed_ ? kNoTrans : kTrans;
    const int m = w_transposed_ ? n : k, nn = w_transposed_ ? k : n;
    encoder.dispatch([=]() {
      for (int r = 0; r < rows; ++r) {
        float* y = yp + static_cast<size_t>(r) * n;
        if (bp) {
          std::memcpy(y, bp, sizeof(float) * n);
        }
        mlx_gpt::sgemv(kRowMajor, trans, m, nn, 1.0f, wp, nn, xp + static_cast<size_t>(r) * k, 1, bp ? 1.0f : 0.0f, y, 1);
      }
    });
  }


  const char* name() const override {
    return "HostGemv";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    return w_transposed_ == static_cast<const HostGemv&>(other).w_transposed_;
  }

 private:
  bool w_transposed_;
};

}  // namespace

extern "C" {

// *res = x · w (+ bias): x (..., K) float32; w (K, N), or (N, K) with w_transposed;
// bias (N,) or an empty mlx_array (ctx null). On this thread's default CPU stream.
// Returns 0; 2 (and *res untouched) when the weight or bias is not an evaluated, dense
// array (the caller falls back to MLX's matmul); or 1 with the reason in
// mlx_gpt_last_error().
int mlx_gpt_host_gemv(mlx_array* res, const mlx_array x, const mlx_array w, const mlx_array bias, bool w_transposed) {
  return mlx_gpt::guarded([&]() {
    if (mlx_gpt::sgemv == nullptr) {
      throw std::runtime_error("[HostGemv] no cblas_sgemv was handed over (mlx_gpt_set_blas)");
    }
    const mx::array& xa = mlx_array_get_(x);
    const mx::array& wa = mlx_array_get_(w);
    if (xa.dtype() != mx::float32 || wa.dtype() != mx::float32 || wa.ndim() != 2 || xa.ndim() == 0) {
      throw std::invalid_argument("[HostGemv] needs float32 x (..., K) and a 2-D float32 weight");
    }
    const int k = w_transposed ? wa.shape(1) : wa.shape(0);
    const int n = w_transposed ? wa.shape(0) : wa.shape(1);
    if (xa.shape(-1) != k) {
      throw std::invalid_argument("[HostGemv] x's last dimension does not match the weight");
    }
    // Weights must already be materialised and dense: the product reads them in place
    // (making a copy per token would cost more than it saves). Otherwise decline.
    auto dense = [](const mx::array& a) { return a.is_available() && a.flags().row_contiguous; };
    if (!dense(wa) || (bias.ctx != nullptr && !dense(mlx_array_get_(bias)))) {
      return 2;
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    // The activation row is small: copy it if it is strided.
    std::vector<mx::array> inputs = {mlx_gpt::dense(xa, stream), wa};
    if (bias.ctx != nullptr) {
      const mx::array& ba = mlx_array_get_(bias);
      if (ba.dtype() != mx::float32 || ba.size() != static_cast<size_t>(n)) {
        throw std::invalid_argument("[HostGemv] the bias must be float32 of the output's width");
      }
      inputs.push_back(ba);
    }
    mx::Shape shape = xa.shape();
    shape.back() = n;
    mlx_array_set_(*res, mx::array(shape, mx::float32, std::make_shared<HostGemv>(stream, w_transposed), inputs));
    return 0;
  });
}

}  // extern "C"
