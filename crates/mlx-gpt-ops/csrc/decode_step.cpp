// A whole decoding step of a GPT-2 model, one new position per sequence, run on the
// calling thread (and the pool's) instead of through MLX's graph.
//
// As MLX operations a step is a graph of about twenty nodes (the embedding, a DecodeBlock
// per layer, ln_f, the head) that the host builds, hands to the stream's worker thread
// and waits for. On GPT-2 124M with two vCPUs, traced (docs/performance-history.md):
// building the graph 85 us, from `eval` to the first block 105 us (the embedding's tasks
// and waking the worker), the gaps between blocks 48 us in all, from the head's end to
// the host 32 us: about 0.27 ms of a 7-10 ms token with no weights read. Here the step
// is one call over the arrays' memory: the same kernels in the same order (the embedding
// sum, csrc/decode_block.h per layer, csrc/layer_norm.cpp's rows, csrc/decode_product.cpp
// for the tied head), so the logits and the caches are those of the graph to the bit.
//
// The caches are written in place at row `past`, so each must be an evaluated dense
// buffer nothing else holds (no other handle, no view); otherwise, or where a weight is
// not laid out as the kernels read it, the call declines (status 2) and the caller
// builds the graph instead.

#include <mlx/mlx.h>

#include "mlx/c/private/array.h"

#include "decode_block.h"
#include "decode_kernels.h"
#include "entry.h"
#include "primitive.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace mx = mlx::core;

namespace {

// The arrays before the layers', and each layer's count: k, v, 6 weights, 6 biases.
constexpr int kHead = 4, kPerLayer = 2 + 2 * mlx_gpt::kBlockWeights;

float widen(const void* row, bool bf16, int i) {
  return bf16 ? mlx_gpt::bf16_to_float(static_cast<const uint16_t*>(row)[i]) : static_cast<const float*>(row)[i];
}
}  // namespace

extern "C" {

// One decoding step: logits (B, V) for the tokens ids[0..B) at position `past` (each
// sequence's cache holding `past` positions). arrays: [0] wte (V, C) float32 or bfloat16
// (the embedding and the tied head), [1] wpe (P, C) float32, [2] ln_f.weight (C), [3]
// ln_f.bias (C) or an empty handle; then per layer k, v (B, capacity, C) float32 with
// past < capacity, and the block's six weights and six biases (or empty handles) in
// DecodeBlock's order. `eps` for every LayerNorm, `tanh` for GPT-2's GELU; the work split
// over `threads` threads. Fills `logits` and writes each layer's new keys and values at
// row `past`. Returns 0; 2 (nothing written) when an array is not evaluated and laid out
// as the kernels read it, or a cache is held elsewhere; or 1 with the reason in
// mlx_gpt_last_error().
int mlx_gpt_decode_step(float* logits, const int32_t* ids, int batch, int past, const mlx_array* arrays, int n_layer,
                        int n_head, float eps, bool tanh, int threads) {
  return mlx_gpt::guarded([&]() {
    auto get = [&](int i) -> const mx::array& { return mlx_array_get_(arrays[i]); };
    auto bad = [](const std::string& what) { throw std::invalid_argument("[DecodeStep] " + what); };
    const mx::array &wte = get(0), &wpe = get(1), &ln_w = get(2);
    const bool ln_bias = arrays[3].ctx != nullptr;
    if (wte.ndim() != 2 || (wte.dtype() != mx::float32 && wte.dtype() != mx::bfloat16)) {
      bad("wte must be (V, C), float32 or bfloat16");
    }
    const int vocab = wte.shape(0), c = wte.shape(1);
    if (wpe.ndim() != 2 || wpe.shape(1) != c || wpe.dtype() != mx::float32) {
      bad("wpe must be float32 (P, C)");
    }
    if (batch <= 0 || n_layer <= 0 || past < 0 || past >= wpe.shape(0)) {
      bad("the position " + std::to_string(past) + " is outside wpe, or there are no rows or layers");
    }
    if (n_head <= 0 || c % n_head != 0) {
      bad("C must split into n_head heads");
    }
    for (const mx::array* a : {&ln_w, ln_bias ? &get(3) : &ln_w}) {
      if (a->ndim() != 1 || a->shape(0) != c || a->dtype() != mx::float32) {
        bad("ln_f must be float32 (C)");
      }
    }
    for (int b = 0; b < batch; ++b) {
      if (ids[b] < 0 || ids[b] >= vocab) {
        bad("token " + std::to_string(ids[b]) + " is outside the vocabulary of " + std::to_string(vocab));
      }
    }
    bool ready = mlx_gpt::evaluated_dense(wte) && mlx_gpt::evaluated_dense(wpe) && mlx_gpt::evaluated_dense(ln_w) &&
                 (!ln_bias || mlx_gpt::evaluated_dense(get(3)));
    // A cache appended to through MLX (the prompt's positions) may not be evaluated yet.
    // (The list holds them only while they are evaluated: a second holder would make
    // them look shared below.)
    {
      std::vector<mx::array> pending;
      for (int l = 0; l < n_layer; ++l) {
        for (int i = 0; i < 2; ++i) {
          const mx::array& a = get(kHead + l * kPerLayer + i);
          if (!a.is_available()) {
            pending.push_back(a);
          }
        }
      }
      if (!pending.empty()) {
        mx::eval(pending);
      }
    }
    std::vector<mlx_gpt::BlockShape> shapes(n_layer);
    std::vector<mlx_gpt::BlockPointers> layers(n_layer);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c / n_head));
    bool first_bf16 = false, first_columns = false;
    for (int l = 0; l < n_layer; ++l) {
      const int at = kHead + l * kPerLayer;
      const mx::array &k = get(at), &v = get(at + 1);
      for (const mx::array* a : {&k, &v}) {
        if (a->dtype() != mx::float32 || a->ndim() != 3 || a->shape(0) != batch || a->shape(2) != c ||
            past >= a->shape(1)) {
          bad("layer " + std::to_string(l) + "'s cache buffers must be float32 (B, capacity, C) with room at " +
              std::to_string(past));
        }
        // Written in place: nothing else may see them.
        ready = ready && mlx_gpt::evaluated_dense(*a) && a->data_size() == a->size() && a->is_donatable();
      }
      const bool bias = arrays[at + 2 + mlx_gpt::kBlockWeights].ctx != nullptr;
      const mx::array* w[mlx_gpt::kBlockWeights];
      const mx::array* b[mlx_gpt::kBlockWeights];
      for (int i = 0; i < mlx_gpt::kBlockWeights; ++i) {
        w[i] = &get(at + 2 + i);
        b[i] = bias ? &get(at + 2 + mlx_gpt::kBlockWeights + i) : nullptr;
      }
      bool bf16 = false, columns = false;
      ready = mlx_gpt::check_block_weights(w, b, c, "[DecodeStep] layer " + std::to_string(l), &bf16, &columns) &&
              ready;
      if (l == 0) {
        first_bf16 = bf16;
        first_columns = columns;
      }
      // One dtype and one layout for every layer (generation lays them out together).
      ready = ready && bf16 == first_bf16 && columns == first_columns;
      shapes[l] = {batch, k.shape(1), c, n_head, past, eps, scale, tanh, columns};
    }
    if (!ready) {
      return 2;
    }
    for (int l = 0; l < n_layer; ++l) {
      const int at = kHead + l * kPerLayer;
      const bool bias = arrays[at + 2 + mlx_gpt::kBlockWeights].ctx != nullptr;
      mlx_gpt::BlockPointers& p = layers[l];
      // Written in place: checked above that nothing else holds them.
      p.k = const_cast<float*>(get(at).data<float>());
      p.v = const_cast<float*>(get(at + 1).data<float>());
      for (int i = 0; i < mlx_gpt::kBlockWeights; ++i) {
        p.w[i] = get(at + 2 + i).data<void>();
        p.b[i] = bias ? get(at + 2 + mlx_gpt::kBlockWeights + i).data<float>() : nullptr;
      }
      p.bf16 = first_bf16;
    }
    const size_t n = static_cast<size_t>(batch) * c;
    thread_local std::vector<float> x, y, h;
    x.resize(n);
    y.resize(n);
    h.resize(n);
    // The embedding: wte's row of each token (widened) + wpe's row of the position, as
    // MLX adds them.
    const bool head_bf16 = wte.dtype() == mx::bfloat16;
    const float* pos = wpe.data<float>() + static_cast<size_t>(past) * c;
    for (int b = 0; b < batch; ++b) {
      const char* row = wte.data<char>() + static_cast<size_t>(ids[b]) * c * wte.itemsize();
      for (int i = 0; i < c; ++i) {
        x[static_cast<size_t>(b) * c + i] = widen(row, head_bf16, i) + pos[i];
      }
    }
    const int parts = std::max(1, threads);
    for (int l = 0; l < n_layer; ++l) {
      layers[l].x = x.data();
      layers[l].out = y.data();
      mlx_gpt::run_block(shapes[l], layers[l], parts);
      std::swap(x, y);
    }
    mlx_gpt::layer_norm_rows(x.data(), ln_w.data<float>(), ln_bias ? get(3).data<float>() : nullptr, h.data(),
                             static_cast<size_t>(batch), static_cast<size_t>(c), eps);
    // The tied head reads wte (V, C) as the transposed operand of h (B, C).
    mlx_gpt::decode_product(true, h.data(), batch, c, wte.data<void>(), head_bf16, vocab, nullptr, logits, parts);
    return 0;
  });
}

}  // extern "C"
