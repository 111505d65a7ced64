// How far a stream's host thread may run ahead of the thread that executes its kernels.
//
// MLX evaluates a graph on two threads per stream: the host thread walks the graph and
// calls each primitive's eval_cpu, which allocates the outputs and queues the work; the
// stream's worker thread runs the queue. The host allocates at queueing time, so how far it
// runs ahead is how much memory is held by work not yet done. MLX bounds this with one
// count of pending tasks for the whole process (MAX_ACTIVE_TASKS, mlx/transforms.cpp):
// past it the host waits until the count falls below what it was when it began waiting.
// With two host threads evaluating at once (the training step's two streams, step.rs)
// that wait is unfair: whenever one host re-queues right after each completion, the
// other's count never falls below its mark, so its worker drains its queue and idles
// (measured: a fifth of the train_shakespeare_char step's CPU time, docs/performance-history.md).
// The split step therefore lifts MLX's count for its evaluations (scheduler.cpp) and
// relies on this bound instead, which is per stream and so cannot starve one stream for
// another.
//
// Every mlx-gpt primitive passes here before it allocates (primitive.h's prepare): its host
// waits while its stream already holds kRunAhead of mlx-gpt's primitives queued and not
// yet begun, then queues a marker that records, when the worker reaches it, that this one
// has begun. mlx-gpt's primitives are the large ones (the dense layers, attention, layer
// norms, activations), so this bounds the memory in flight; MLX's own operations between
// them are few. A wait only ever depends on work already queued on the same stream, which
// needs nothing more from the host, so it cannot deadlock.

#pragma once

#include <mlx/backend/cpu/encoder.h>
#include <mlx/stream.h>

#include <atomic>
#include <cstdint>

namespace mlx_gpt {

// Measured on train_shakespeare_char's split step (AMD EPYC Zen 5): 8 was about 5 % slower
// than 16 with the same idle time, 32 holds 1.5 GB more than 16 for no gain.
constexpr uint64_t kRunAhead = 16;

class RunAhead {
 public:
  // The bound of `stream` (one per stream index, made on first use and kept).
  static RunAhead& of(const mlx::core::Stream& stream);

  // Waits while the stream holds kRunAhead primitives not yet begun, then queues this
  // one's marker on `encoder` (the stream's).
  void admit(mlx::core::cpu::CommandEncoder& encoder);

  // The most primitives that were queued and not yet begun when one was admitted, on any
  // stream since the process started (for tests).
  static uint64_t peak();

 private:
  std::atomic<uint64_t> queued_{0};
  std::atomic<uint64_t> begun_{0};
};

}  // namespace mlx_gpt
