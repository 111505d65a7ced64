// One GPT-2 block for one new position per sequence, as plain code over raw pointers:
// what the DecodeBlock primitive runs (csrc/decode_block.cpp) and what a whole decoding
// step runs once per layer (csrc/decode_step.cpp).

#pragma once

#include <mlx/array.h>

#include <string>

namespace mlx_gpt {

// The block's weights in the order its entry points take them.
enum BlockWeight { kLn1, kAttn, kAttnProj, kLn2, kFc, kMlpProj, kBlockWeights };

struct BlockShape {
  int batch, capacity, c, n_head, past;
  float eps, scale;
  bool tanh;
  // The four matrices lie column-major: (out, in) rows, each output's weights side by side
  // (mlx_gpt_ops::store_transposed), which the products walk output by output.
  bool column_major;
};

struct BlockPointers {
  const float* x;
  float* out;
  float* k;  // the cache buffers (B, capacity, C), the new position written at `past`
  float* v;
  const void* w[kBlockWeights];
  const float* b[kBlockWeights];  // null when the model has no biases
  bool bf16;
};

// out = the block applied to x (B, C), the new keys and values written into the cache.
void run_block(const BlockShape& s, const BlockPointers& p, int parts);

// Checks one block's weights w[i] and biases b[i] (all null when the model has none)
// for width c: the LayerNorms' float32 (C), the matrices (C, 3C), (C, C), (C, 4C),
// (4C, C), float32 or bfloat16 together. Throws std::invalid_argument naming a bad one
// (`who` first); returns false when one is not an evaluated array laid out as the
// kernels read it (the LayerNorms and biases dense, the matrices all row-major or all
// column-major), true otherwise. *bf16 and *column_major: the matrices'.
bool check_block_weights(const mlx::core::array* const w[kBlockWeights], const mlx::core::array* const b[kBlockWeights],
                         int c, const std::string& who, bool* bf16, bool* column_major);

}  // namespace mlx_gpt
