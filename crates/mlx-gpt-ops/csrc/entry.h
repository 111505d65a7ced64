// What every C entry point in csrc/ shares: exceptions never cross into Rust; a failed
// call returns 1 and leaves its message for mlx_gpt_last_error() (defined in entry.cpp).

#pragma once

#include <exception>
#include <string>

namespace mlx_gpt {

// The message of the last failed call on this thread.
std::string& last_error();

// Runs `f` (which returns a status) and turns any exception into status 1.
template <typename F>
int guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    last_error() = e.what();
  } catch (...) {
    last_error() = "unknown C++ exception";
  }
  return 1;
}

}  // namespace mlx_gpt
