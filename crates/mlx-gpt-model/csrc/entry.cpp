#include "entry.h"

namespace mlx_gpt {

std::string& last_error() {
  thread_local std::string message;
  return message;
}

}  // namespace mlx_gpt

extern "C" const char* mlx_gpt_last_error() {
  return mlx_gpt::last_error().c_str();
}
