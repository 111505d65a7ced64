// Force-included into every mlx-c translation unit by build/mlx_c.rs.
#pragma once
#include <version>

#if defined(MLX_SYS_HALF_SHIM)
// mlx-c's half.h defines float16_t/bfloat16_t only on ARM. Elsewhere use MLX's own 2-byte
// types, which is what libmlx stores for float16/bfloat16 arrays.
#include <mlx/types/half_types.h>
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;
#define HAS_FLOAT16
#define HAS_BFLOAT16
#endif

#if !defined(__cpp_lib_format)
// libstdc++ 12 has no <format>. mlx-c only formats error messages with plain "{}"
// placeholders, so a stream-based stand-in for that one form is enough.
#include <sstream>
#include <string>
#include <string_view>
namespace mlx_sys_compat {
inline void format_into(std::ostringstream& os, std::string_view fmt) { os << fmt; }
template <class T, class... Rest>
void format_into(std::ostringstream& os, std::string_view fmt, const T& v, const Rest&... rest) {
  auto at = fmt.find("{}");
  if (at == std::string_view::npos) {
    os << fmt;
    return;
  }
  os << fmt.substr(0, at) << v;
  format_into(os, fmt.substr(at + 2), rest...);
}
template <class... Args>
std::string format(std::string_view fmt, const Args&... args) {
  std::ostringstream os;
  format_into(os, fmt, args...);
  return os.str();
}
}  // namespace mlx_sys_compat
namespace std {
using mlx_sys_compat::format;
}
#endif
