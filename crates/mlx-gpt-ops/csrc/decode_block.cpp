// One GPT-2 block for one new position per sequence, as one MLX primitive.
//
// Decoding with the KV cache runs each block on a single row per sequence. As separate
// primitives a block is a dozen tasks (LayerNorm, c_attn, two cache appends, attention,
// c_proj, the residual add, LayerNorm, c_fc, GELU, c_proj, add), each allocated, handed
// to the stream's thread and waited for; on GPT-2 124M they cost several milliseconds
// per token beyond reading the weights. Here a block is one task running the same
// kernels one after the other (csrc/decode_kernels.h) on scratch rows, each product split
// over the pool's threads as the decoding product's primitive splits it and the
// attention's positions split over them too (which changes no bit), so the results are
// the separate kernels' to the bit.
//
// The cache: the new position's keys and values are written into the buffers at row
// `past`, and the buffers so updated are outputs 1 and 2. They take over the input
// buffers (MLX's donation, as a slice update does) when nothing else holds them, as
// LayerKv arranges; otherwise the buffers are copied first.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "decode_block.h"
#include "decode_kernels.h"
#include "entry.h"
#include "primitive.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace mx = mlx::core;

namespace {

// Cache buffers copied because something else held them (see mlx_gpt_decode_block_copies).
std::atomic<size_t> buffer_copies{0};

}  // namespace

void mlx_gpt::run_block(const BlockShape& s, const BlockPointers& p, int parts) {
  const int rows = s.batch, c = s.c;
  const size_t n = static_cast<size_t>(rows) * c;
  thread_local std::vector<float> h, qkv, y, x1, f, g;
  h.resize(n);
  qkv.resize(3 * n);
  y.resize(n);
  x1.resize(n);
  f.resize(4 * n);
  g.resize(4 * n);
  auto ln = [&](BlockWeight i) { return static_cast<const float*>(p.w[i]); };
  // x + attn(ln_1(x))
  mlx_gpt::layer_norm_rows(p.x, ln(kLn1), p.b[kLn1], h.data(), rows, c, s.eps);
  mlx_gpt::decode_product(s.column_major, h.data(), rows, c, p.w[kAttn], p.bf16, 3 * c, p.b[kAttn], qkv.data(), parts);
  const size_t row_stride = static_cast<size_t>(s.capacity) * c;
  for (int b = 0; b < rows; ++b) {
    const float* r = qkv.data() + static_cast<size_t>(b) * 3 * c;
    std::memcpy(p.k + b * row_stride + static_cast<size_t>(s.past) * c, r + c, c * sizeof(float));
    std::memcpy(p.v + b * row_stride + static_cast<size_t>(s.past) * c, r + 2 * c, c * sizeof(float));
  }
  const mlx_gpt::AttentionLayout l{static_cast<size_t>(rows),
                                   static_cast<size_t>(s.past) + 1,
                                   static_cast<size_t>(c),
                                   static_cast<size_t>(s.n_head),
                                   3 * static_cast<size_t>(c),
                                   row_stride,
                                   static_cast<size_t>(c),
                                   row_stride,
                                   static_cast<size_t>(c)};
  mlx_gpt::attend_one(qkv.data(), p.k, p.v, y.data(), l, s.scale, parts);
  mlx_gpt::decode_product(s.column_major, y.data(), rows, c, p.w[kAttnProj], p.bf16, c, p.b[kAttnProj], x1.data(), parts);
  for (size_t i = 0; i < n; ++i) {
    x1[i] = p.x[i] + x1[i];
  }
  // x + mlp(ln_2(x))
  mlx_gpt::layer_norm_rows(x1.data(), ln(kLn2), p.b[kLn2], h.data(), rows, c, s.eps);
  mlx_gpt::decode_product(s.column_major, h.data(), rows, c, p.w[kFc], p.bf16, 4 * c, p.b[kFc], f.data(), parts);
  mlx_gpt::gelu_values(f.data(), g.data(), 4 * n, s.tanh);
  mlx_gpt::decode_product(s.column_major, g.data(), rows, 4 * c, p.w[kMlpProj], p.bf16, c, p.b[kMlpProj], p.out, parts);
  for (size_t i = 0; i < n; ++i) {
    p.out[i] = x1[i] + p.out[i];
  }
}

bool mlx_gpt::check_block_weights(const mx::array* const w[kBlockWeights], const mx::array* const b[kBlockWeights],
                                  int c, const std::string& who, bool* bf16, bool* column_major) {
  auto bad = [&](const std::string& what) { throw std::invalid_argument(who + " " + what); };
  const int want[kBlockWeights][2] = {{c, 0}, {c, 3 * c}, {c, c}, {c, 0}, {c, 4 * c}, {4 * c, c}};
  const mx::Dtype wt = w[kAttn]->dtype();
  if (wt != mx::float32 && wt != mx::bfloat16) {
    bad("the matrices must be float32 or bfloat16");
  }
  // The matrices may all lie column-major instead (decoding's layout, src/layout.rs).
  *column_major = mlx_gpt::column_major(*w[kAttn]);
  *bf16 = wt == mx::bfloat16;
  bool ready = true;
  for (int i = 0; i < kBlockWeights; ++i) {
    const mx::array& a = *w[i];
    const bool vector = want[i][1] == 0;
    if (vector ? (a.ndim() != 1 || a.shape(0) != c || a.dtype() != mx::float32)
               : (a.ndim() != 2 || a.shape(0) != want[i][0] || a.shape(1) != want[i][1] || a.dtype() != wt)) {
      bad("weight " + std::to_string(i) + " has the wrong shape or type");
    }
    // The LayerNorms' weights dense; the matrices all row-major or all column-major.
    const bool laid_out =
        vector || !*column_major ? mlx_gpt::evaluated_dense(a) : a.is_available() && mlx_gpt::column_major(a);
    ready = ready && laid_out;
    if (b[i] != nullptr) {
      const int width = vector ? c : want[i][1];
      if (b[i]->dtype() != mx::float32 || b[i]->ndim() != 1 || b[i]->shape(0) != width) {
        bad("bias " + std::to_string(i) + " has the wrong shape or type");
      }
      ready = ready && mlx_gpt::evaluated_dense(*b[i]);
    }
  }
  return ready;
}

namespace {

class DecodeBlock : public mlx_gpt::CpuPrimitive {
 public:
  DecodeBlock(mx::Stream stream, mlx_gpt::BlockShape shape, bool bias, int parts)
      : mlx_gpt::CpuPrimitive(stream), shape_(shape), bias_(bias), parts_(parts) {}

  // inputs: x, k, v, the six weights, then (with biases) the six biases.
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    if (!inputs[1].flags().row_contiguous || !inputs[2].flags().row_contiguous) {
      throw std::runtime_error("[DecodeBlock] the cache buffers must be dense");
    }
    mlx_gpt::release_sibling_inputs(inputs, outputs);
    const std::vector<int> donors = {-1, mlx_gpt::can_donate(inputs[1], outputs[1]) ? 1 : -1,
                                     mlx_gpt::can_donate(inputs[2], outputs[2]) ? 2 : -1};
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs, &donors);
    mlx_gpt::BlockPointers p{};
    p.x = inputs[0].data<float>();
    const float* k_in = inputs[1].data<float>();
    const float* v_in = inputs[2].data<float>();
    p.out = outputs[0].data<float>();
    p.k = outputs[1].data<float>();
    p.v = outputs[2].data<float>();
    for (int i = 0; i < mlx_gpt::kBlockWeights; ++i) {
      p.w[i] = inputs[3 + i].data<void>();
      p.b[i] = bias_ ? inputs[3 + mlx_gpt::kBlockWeights + i].data<float>() : nullptr;
    }
    p.bf16 = inputs[3 + mlx_gpt::kAttn].dtype() == mx::bfloat16;
    const size_t bytes = outputs[1].nbytes();
    const bool copy_k = donors[1] < 0, copy_v = donors[2] < 0;
    const mlx_gpt::BlockShape s = shape_;
    const int parts = parts_;
    encoder.dispatch([=]() {
      // Not donated: the cache is copied into the new buffers first.
      buffer_copies += copy_k + copy_v;
      if (copy_k) {
        std::memcpy(p.k, k_in, bytes);
      }
      if (copy_v) {
        std::memcpy(p.v, v_in, bytes);
      }
      mlx_gpt::run_block(s, p, parts);
    });
  }
  const char* name() const override {
    return "DecodeBlock";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const DecodeBlock&>(other);
    return shape_.batch == o.shape_.batch && shape_.capacity == o.shape_.capacity && shape_.c == o.shape_.c &&
           shape_.n_head == o.shape_.n_head && shape_.past == o.shape_.past && shape_.eps == o.shape_.eps &&
           shape_.scale == o.shape_.scale && shape_.tanh == o.shape_.tanh &&
           shape_.column_major == o.shape_.column_major && bias_ == o.bias_ && parts_ == o.parts_;
  }

 private:
  mlx_gpt::BlockShape shape_;
  bool bias_;
  int parts_;
};

}  // namespace

extern "C" {

// How many cache buffers DecodeBlock has copied, process-wide: none after a sequence's
// first decoded token when nothing but the cache holds them (tests, diagnostics).
size_t mlx_gpt_decode_block_copies() {
  return buffer_copies.load();
}

// One block for one new position per sequence: arrays[0] x (B, 1, C); arrays[1], [2] the
// cache buffers k, v (B, capacity, C) holding `past` positions (past < capacity);
// arrays[3..9] ln_1.weight (C), c_attn.weight (C, 3C), attn.c_proj.weight (C, C),
// ln_2.weight (C), c_fc.weight (C, 4C), mlp.c_proj.weight (4C, C); arrays[9..15] their
// biases in the same order, or all empty handles. All float32 but the four matrices,
// which may be bfloat16 together and may lie column-major together. Fills outs[0] (the
// block's output, (B, 1, C)) and outs[1], outs[2] (the buffers with the new position
// written at `past`). Returns 0; 2 when a weight is not an evaluated dense array, or the
// matrices mix layouts (the caller uses the separate kernels);
// or 1 with the reason in mlx_gpt_last_error().
int mlx_gpt_decode_block(mlx_array* outs, const mlx_array* arrays, int n_head, int past, float eps, bool tanh,
                         int threads) {
  return mlx_gpt::guarded([&]() {
    auto get = [&](int i) -> const mx::array& { return mlx_array_get_(arrays[i]); };
    const mx::array &x = get(0), &k = get(1), &v = get(2);
    const bool bias = arrays[3 + mlx_gpt::kBlockWeights].ctx != nullptr;
    auto bad = [](const std::string& what) { throw std::invalid_argument("[DecodeBlock] " + what); };
    if (x.dtype() != mx::float32 || x.ndim() != 3 || x.shape(1) != 1) {
      bad("x must be float32 (B, 1, C)");
    }
    const int batch = x.shape(0), c = x.shape(2);
    for (auto* a : {&k, &v}) {
      if (a->dtype() != mx::float32 || a->ndim() != 3 || a->shape(0) != batch || a->shape(2) != c) {
        bad("the cache buffers must be float32 (B, capacity, C)");
      }
    }
    if (k.shape() != v.shape() || past < 0 || past >= k.shape(1)) {
      bad("the cache buffers must have room for the new position (past < capacity)");
    }
    if (n_head <= 0 || c % n_head != 0) {
      bad("C must split into n_head heads");
    }
    const mx::array* w[mlx_gpt::kBlockWeights];
    const mx::array* b[mlx_gpt::kBlockWeights];
    for (int i = 0; i < mlx_gpt::kBlockWeights; ++i) {
      w[i] = &get(3 + i);
      b[i] = bias ? &get(3 + mlx_gpt::kBlockWeights + i) : nullptr;
    }
    bool bf16 = false, column_major = false;
    const bool ready = mlx_gpt::check_block_weights(w, b, c, "[DecodeBlock]", &bf16, &column_major);
    if (!ready) {
      return 2;
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    // The buffers go in as they are (LayerKv's are dense): a copy here would be a second
    // holder, and the outputs could not take them over.
    std::vector<mx::array> inputs = {mlx_gpt::dense(x, stream), k, v};
    for (int i = 3; i < 3 + (bias ? 2 : 1) * mlx_gpt::kBlockWeights; ++i) {
      inputs.push_back(get(i));
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(c / n_head));
    const mlx_gpt::BlockShape shape{batch, k.shape(1), c, n_head, past, eps, scale, tanh, column_major};
    auto results = mx::array::make_arrays({x.shape(), k.shape(), v.shape()}, {mx::float32, mx::float32, mx::float32},
                                          std::make_shared<DecodeBlock>(stream, shape, bias, std::max(1, threads)),
                                          inputs);
    for (int i = 0; i < 3; ++i) {
      mlx_array_set_(outs[i], results[i]);
    }
    return 0;
  });
}

}  // extern "C"
