#include "entry.h"

#include "blas.h"

namespace mlx_gpt {

std::string& last_error() {
  thread_local std::string message;
  return message;
}

Sgemv sgemv = nullptr;
Sgemm sgemm = nullptr;

}  // namespace mlx_gpt

extern "C" const char* mlx_gpt_last_error() {
  return mlx_gpt::last_error().c_str();
}

// Hands over cblas_sgemv and cblas_sgemm (blas.h); either may be null.
extern "C" void mlx_gpt_set_blas(void* sgemv, void* sgemm) {
  mlx_gpt::sgemv = reinterpret_cast<mlx_gpt::Sgemv>(sgemv);
  mlx_gpt::sgemm = reinterpret_cast<mlx_gpt::Sgemm>(sgemm);
}
