// What every MLX primitive in csrc/ shares: it runs on the CPU only, and its eval_cpu
// allocates its outputs and registers its arrays with the stream's encoder before it
// dispatches the work.

#pragma once

#include <mlx/allocator.h>
#include <mlx/array.h>
#include <mlx/ops.h>
#include <mlx/backend/cpu/encoder.h>
#include <mlx/primitives.h>

#include "run_ahead.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mlx_gpt {

// A primitive with no GPU kernel: evaluating it on a GPU stream is an error naming it.
class CpuPrimitive : public mlx::core::Primitive {
 public:
  using mlx::core::Primitive::Primitive;

  void eval_gpu(const std::vector<mlx::core::array>&, std::vector<mlx::core::array>&) override {
    throw std::runtime_error(std::string("[") + name() + "] has no GPU kernel: it is only used on the CPU");
  }
};

// MLX gives each output of a primitive its own copy of the input list, so with several
// outputs every input is held more than once and never looks donatable. MLX 0.32 hands
// eval_cpu one output's own list (`inputs`), and after it keeps exactly those buffers
// alive until the task has run (cpu::eval dispatches a task holding them) and detaches
// the outputs from the graph. This lets go of the other outputs' copies, for a primitive
// that donates. It does nothing, and returns false, where that does not hold: under
// compile's tracing (the graph is kept), or if `inputs` is not one output's own list.
inline bool release_sibling_inputs(const std::vector<mlx::core::array>& inputs,
                                   std::vector<mlx::core::array>& outputs) {
  size_t own = 0;
  for (auto& o : outputs) {
    own += &o.inputs() == &inputs;
    if (o.is_tracer()) {
      return false;
    }
  }
  if (own != 1) {
    return false;
  }
  for (auto& o : outputs) {
    if (&o.inputs() != &inputs) {
      o.inputs().clear();
    }
  }
  return true;
}

// Whether `out` may take over `in`'s buffer (prepare's `donors`).
inline bool can_donate(const mlx::core::array& in, const mlx::core::array& out) {
  return in.is_donatable() && in.flags().row_contiguous && in.data_size() == in.size() && in.nbytes() == out.nbytes() &&
         in.dtype() == out.dtype();
}

// Waits while `stream` holds too many of mlx-gpt's primitives queued (run_ahead.h), then
// allocates every output and registers every input and output with `stream`'s encoder
// (no-ops in MLX 0.32, where cpu::eval itself keeps the primitive's input and output
// buffers alive until the task dispatched next has run: the tasks capture raw
// pointers). Returns the encoder, for that dispatch.
//
// `donors`, when given, has one entry per output: the index of an input whose buffer
// that output takes over, or −1. The caller decides with can_donate (nothing else can
// see that input any more: MLX's is_donatable, no other handle and no view of its
// buffer; and it is dense and of the output's size and type), as it may have to decide
// for several outputs together. The task then writes the output over the input, and
// must read each of the input's elements no later than it writes the output's.
inline mlx::core::cpu::CommandEncoder& prepare(mlx::core::Stream stream,
                                              const std::vector<mlx::core::array>& inputs,
                                              std::vector<mlx::core::array>& outputs,
                                              const std::vector<int>* donors = nullptr) {
  auto& encoder = mlx::core::cpu::get_command_encoder(stream);
  RunAhead::of(stream).admit(encoder);
  for (auto& in : inputs) {
    encoder.set_input_array(in);
  }
  for (size_t k = 0; k < outputs.size(); ++k) {
    auto& out = outputs[k];
    const int d = donors == nullptr ? -1 : (*donors)[k];
    if (d >= 0) {
      out.copy_shared_buffer(inputs[d]);
      encoder.set_output_array(out);
      continue;
    }
    out.set_data(mlx::core::allocator::malloc(out.nbytes()));
    encoder.set_output_array(out);
  }
  return encoder;
}

// Whether `a` is dense and lies in memory column after column but not row after row: a
// transposed view of a row-major buffer, as mlx_gpt_ops::store_transposed leaves a
// weight matrix (src/layout.rs). Kernels that take such a matrix walk it as it lies.
inline bool column_major(const mlx::core::array& a) {
  return !a.flags().row_contiguous && a.flags().col_contiguous;
}

// Whether `a` is computed and dense row-major: what a kernel reading it in place needs.
inline bool evaluated_dense(const mlx::core::array& a) {
  return a.is_available() && a.flags().row_contiguous;
}

// `a` as a dense row-major array for a primitive's input, decided when the graph is
// built: `a` itself when it is already computed and dense, else a Contiguous node (a
// copy only where needed). For inputs that are computed already, as the optimizer
// step's are; under compile nothing is, and a node per input made up 94 of the 225
// nodes of a baby GPT's half-batch graph, so the primitives used there take their
// inputs as they come and go through DenseInputs instead.
inline mlx::core::array dense(const mlx::core::array& a, mlx::core::Stream stream) {
  if (evaluated_dense(a)) {
    return a;
  }
  return mlx::core::contiguous(a, false, stream);
}

// A primitive's inputs as dense row-major arrays, decided in eval_cpu, when their
// layouts are known: each input itself where it is one (nearly always), else a new
// buffer that fill() copies it into. The task calls fill() before it reads anything
// (the inputs are only computed by then), and holds this object, and so the copies,
// until it has run.
class DenseInputs {
 public:
  explicit DenseInputs(const std::vector<mlx::core::array>& inputs) {
    for (const auto& in : inputs) {
      if (in.flags().row_contiguous) {
        arrays_.push_back(in);
        continue;
      }
      mlx::core::array copy(in.shape(), in.dtype(), nullptr, {});
      copy.set_data(mlx::core::allocator::malloc(copy.nbytes()));
      copies_.emplace_back(in, copy);
      arrays_.push_back(copy);
    }
  }

  const mlx::core::array& operator[](size_t k) const {
    return arrays_[k];
  }
  size_t size() const {
    return arrays_.size();
  }

  // Copies the inputs that were not dense into their buffers, element by element.
  void fill() const {
    for (auto& [src, dst] : copies_) {
      const size_t item = src.itemsize(), ndim = src.ndim();
      const char* from = src.data<char>();
      char* to = dst.data<char>();
      std::vector<int64_t> index(ndim, 0);
      for (size_t n = 0; n < dst.size(); ++n) {
        int64_t offset = 0;
        for (size_t d = 0; d < ndim; ++d) {
          offset += index[d] * src.strides()[d];
        }
        std::memcpy(to + n * item, from + offset * static_cast<int64_t>(item), item);
        for (size_t d = ndim; d-- > 0;) {
          if (++index[d] < src.shape(static_cast<int>(d))) {
            break;
          }
          index[d] = 0;
        }
      }
    }
  }

 private:
  std::vector<mlx::core::array> arrays_;
  // (input, its dense copy); fill() writes the copies' buffers from a const task.
  mutable std::vector<std::pair<mlx::core::array, mlx::core::array>> copies_;
};

}  // namespace mlx_gpt
