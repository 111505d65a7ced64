/* Force-included into bindgen's parse of mlx-c on non-ARM targets (build/bindings.rs). */
#include <stdint.h>
typedef __fp16 float16_t;  /* bindgen: __BindgenFloat16(u16), as mlx-rs expects */
typedef uint16_t bfloat16_t;
#define HAS_FLOAT16
#define HAS_BFLOAT16
