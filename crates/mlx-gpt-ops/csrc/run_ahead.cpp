#include "run_ahead.h"

#include <map>
#include <memory>
#include <mutex>

namespace mlx_gpt {

namespace {
std::atomic<uint64_t> peak_seen{0};
}

RunAhead& RunAhead::of(const mlx::core::Stream& stream) {
  static std::mutex m;
  static std::map<int, std::unique_ptr<RunAhead>> all;
  std::lock_guard<std::mutex> lock(m);
  auto& r = all[stream.index];
  if (!r) {
    r = std::make_unique<RunAhead>();
  }
  return *r;
}

void RunAhead::admit(mlx::core::cpu::CommandEncoder& encoder) {
  // One host thread queues on a stream (MLX 0.32 keeps streams per thread), so `queued_`
  // has one writer; the worker writes `begun_`.
  const uint64_t ticket = queued_.load(std::memory_order_relaxed) + 1;
  for (uint64_t begun = begun_.load(std::memory_order_acquire); ticket - 1 - begun >= kRunAhead;
       begun = begun_.load(std::memory_order_acquire)) {
    begun_.wait(begun, std::memory_order_acquire);
  }
  const uint64_t ahead = ticket - 1 - begun_.load(std::memory_order_relaxed);
  for (uint64_t p = peak_seen.load(std::memory_order_relaxed); ahead > p && !peak_seen.compare_exchange_weak(p, ahead);) {
  }
  queued_.store(ticket, std::memory_order_relaxed);
  encoder.dispatch([this, ticket]() {
    begun_.store(ticket, std::memory_order_release);
    begun_.notify_all();
  });
}

uint64_t RunAhead::peak() {
  return peak_seen.load(std::memory_order_relaxed);
}

}  // namespace mlx_gpt

extern "C" uint64_t mlx_gpt_run_ahead_peak() {
  return mlx_gpt::RunAhead::peak();
}

extern "C" uint64_t mlx_gpt_run_ahead_limit() {
  return mlx_gpt::kRunAhead;
}
