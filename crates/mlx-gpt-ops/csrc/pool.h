// A persistent pool of helper threads for kernels that split one task into parts.
//
// Decoding a token runs about fifty small products one after the other, each a few
// hundred microseconds of streaming weights: starting a thread per product (tens of
// microseconds each) would cost a tenth of the token, and one thread alone cannot read
// memory as fast as two. The helpers stay alive, spin briefly after each part (the next
// product follows within microseconds) and then sleep on a futex (C++20 atomic wait), so
// an idle pool costs nothing.

#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mlx_gpt {

class Pool {
 public:
  // At most this many threads (this one and its helpers) share a task.
  static constexpr int kMaxParts = 64;

  // Runs f(part) for every part in [0, parts): part 0 on this thread, part i on helper i,
  // and returns when all are done. If another thread is using the pool, or a helper
  // cannot be started, every part runs here, one after the other: the result is the
  // same, only slower.
  static void run(int parts, const std::function<void(int)>& f) {
    static Pool* pool = new Pool;  // never destroyed: helpers may outlive static destructors
    pool->dispatch(parts, f);
  }

 private:
  // How long a helper spins for the next task before it sleeps.
  static constexpr auto kSpin = std::chrono::microseconds(200);

  std::mutex busy_;  // one task at a time
  int helpers_ = 0;
  // (generation << 8) | parts: a helper reads both in one load, so it never pairs one
  // task's generation with another's size.
  std::atomic<uint64_t> state_{0};
  std::atomic<const std::function<void(int)>*> task_{nullptr};
  std::atomic<int> done_{0};

  static void relax() {
#if defined(__x86_64__)
    _mm_pause();
#endif
  }

  void dispatch(int parts, const std::function<void(int)>& f) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    while (lock.owns_lock() && helpers_ < std::min(parts, kMaxParts) - 1) {
      try {
        std::thread([this, index = helpers_ + 1, seen = state_.load() >> 8] { serve(index, seen); }).detach();
        ++helpers_;
      } catch (const std::system_error&) {
        break;
      }
    }
    if (parts <= 1 || !lock.owns_lock() || parts > helpers_ + 1) {
      for (int p = 0; p < parts; ++p) {
        f(p);
      }
      return;
    }
    // Helper i reads the task only when i < parts, and this thread writes the next task
    // only after every such helper has reported this one done.
    task_.store(&f);
    done_.store(0);
    const uint64_t generation = (state_.load() >> 8) + 1;
    state_.store((generation << 8) | static_cast<uint64_t>(parts));
    state_.notify_all();
    f(0);
    // The helpers' parts are as short as this thread's: waiting is spinning.
    while (done_.load() < parts - 1) {
      relax();
    }
  }

  void serve(int index, uint64_t seen) {
    for (;;) {
      // Wait for a new task: spin a little, then sleep until the state changes.
      auto start = std::chrono::steady_clock::now();
      uint64_t s;
      for (int i = 0; ((s = state_.load()) >> 8) == seen; ++i) {
        if ((i & 63) == 63 && std::chrono::steady_clock::now() - start > kSpin) {
          state_.wait(s);
        } else {
          relax();
        }
      }
      seen = s >> 8;
      if (index < static_cast<int>(s & 0xFF)) {
        (*task_.load())(index);
        done_.fetch_add(1);
      }
    }
  }
};

}  // namespace mlx_gpt
