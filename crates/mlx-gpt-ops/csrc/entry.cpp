#include "entry.h"

#include "blas.h"

namespace mlx_gpt {

std::string& last_error() {
  thread_local std::string message;
  return message;
}

Sgemm sgemm = nullptr;

}  // namespace mlx_gpt

extern "C" const char* mlx_gpt_last_error() {
  return mlx_gpt::last_error().c_str();
}

// Hands over cblas_sgemm (blas.h); it may be null.
extern "C" void mlx_gpt_set_blas(void* sgemm) {
  mlx_gpt::sgemm = reinterpret_cast<mlx_gpt::Sgemm>(sgemm);
}
