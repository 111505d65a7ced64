//! The C entry points of the C++ in `csrc/` (custom MLX primitives, built by build.rs),
//! and the one way Rust calls them: each fills a fresh `mlx_array` and returns 0 (done),
//! 2 (declined: the caller uses MLX ops instead) or 1 (failed, with a message kept by
//! `csrc/entry.h`).

use mlx_rs::error::Exception;
use mlx_rs::Array;

extern "C" {
    fn mlx_gpt_last_error() -> *const libc::c_char;
    /// Hands `cblas_sgemm` to the primitives (csrc/blas.h).
    fn mlx_gpt_set_blas(sgemm: *mut libc::c_void);
    /// `*res = x · w (+ bias)` as a `DecodeProduct` primitive (csrc/decode_product.cpp)
    /// on `threads` threads.
    pub(crate) fn mlx_gpt_decode_product(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        w: mlx_sys::mlx_array,
        bias: mlx_sys::mlx_array,
        w_transposed: bool,
        threads: libc::c_int,
    ) -> libc::c_int;
    /// `y = x · Wᵀ + bias` for W (N, K), float32 or (`bf16`) bfloat16, with the decoding
    /// product's output-by-output kernels in vectors of `lanes` (8 or 16) floats
    /// (csrc/decode_product.cpp); false for other lane counts. `bias` may be null.
    #[cfg(test)]
    pub(crate) fn mlx_gpt_decode_rows_by_nk_for_test(
        lanes: libc::c_int,
        x: *const f32,
        rows: libc::c_int,
        k: libc::c_int,
        w: *const libc::c_void,
        bf16: bool,
        n: libc::c_int,
        bias: *const f32,
        y: *mut f32,
    ) -> bool;
    /// `y = x · W + bias` for one row and bfloat16 W (K, N), row after row, in vectors of
    /// `lanes` (8 or 16) floats (csrc/decode_product.cpp); false for other lane counts.
    #[cfg(test)]
    pub(crate) fn mlx_gpt_decode_add_rows_bf16_for_test(
        lanes: libc::c_int,
        x: *const f32,
        k: libc::c_int,
        w: *const u16,
        n: libc::c_int,
        bias: *const f32,
        y: *mut f32,
    ) -> bool;
    /// Whether the decoding product asks for weights ahead as non-temporal (an AMD CPU).
    pub(crate) fn mlx_gpt_decode_weights_non_temporal() -> bool;
    /// `*res = x·W + bias` (`x·Wᵀ + bias` when `w_transposed`) as a `Linear` primitive
    /// (csrc/linear.cpp), each product on `threads` threads; `bias` may be an empty handle.
    pub(crate) fn mlx_gpt_linear(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        w: mlx_sys::mlx_array,
        bias: mlx_sys::mlx_array,
        w_transposed: bool,
        threads: libc::c_int,
    ) -> libc::c_int;
    /// Which kernel runs the primitives' products (csrc/gemm.cpp): 0 the BLAS, 1
    /// mlx-gpt's GEMM for AVX2 and FMA, 2 for AVX-512.
    pub(crate) fn mlx_gpt_gemm_path() -> libc::c_int;
    /// `C = alpha·op(A)·op(B) [+ C | + bias]` on the given path (csrc/gemm.cpp); false,
    /// with C untouched, where this CPU or build has no such path.
    #[cfg(test)]
    pub(crate) fn mlx_gpt_gemm_on_path(
        path: libc::c_int,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        init: libc::c_int,
        bias: *const f32,
        structure: libc::c_int,
        threads: libc::c_int,
    ) -> bool;
    /// `*res = x·Φ(x)` (or the tanh approximation) as a `Gelu` primitive (csrc/gelu.cpp).
    pub(crate) fn mlx_gpt_gelu(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        tanh: bool,
        with_slope: bool,
    ) -> libc::c_int;
    /// `*res = x / √(mean(x²) + eps)` over the last axis as an `RmsNorm` primitive
    /// (csrc/rms_norm.cpp).
    pub(crate) fn mlx_gpt_rms_norm(res: *mut mlx_sys::mlx_array, x: mlx_sys::mlx_array, eps: f32) -> libc::c_int;
    /// `*res` = the modern GPT's q, k, v (B, T, 3C) from c_attn's output, QK-normed,
    /// turned and with key/value heads repeated, as a `RotaryQkv` primitive
    /// (csrc/rotary_qkv.cpp).
    pub(crate) fn mlx_gpt_rotary_qkv(
        res: *mut mlx_sys::mlx_array,
        qkv: mlx_sys::mlx_array,
        cos: mlx_sys::mlx_array,
        sin: mlx_sys::mlx_array,
        n_head: libc::c_int,
        n_kv_head: libc::c_int,
        eps: f32,
    ) -> libc::c_int;
    /// `*res = max(x, 0)²` through the `Gelu` primitive (csrc/gelu.cpp).
    pub(crate) fn mlx_gpt_relu_squared(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        with_slope: bool,
    ) -> libc::c_int;
    /// `*res = LayerNorm(x; w, bias, eps)` as a `LayerNorm` primitive (csrc/layer_norm.cpp);
    /// `bias` may be an empty handle.
    pub(crate) fn mlx_gpt_layer_norm(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        w: mlx_sys::mlx_array,
        bias: mlx_sys::mlx_array,
        eps: f32,
    ) -> libc::c_int;
    /// One clipped AdamW step of `n` parameters as an `AdamWStep` primitive
    /// (csrc/adamw.cpp): fills `outs[0 .. 1 + 3n]`.
    pub(crate) fn mlx_gpt_adamw_step(
        outs: *mut mlx_sys::mlx_array,
        arrays: *const mlx_sys::mlx_array,
        n: usize,
        n_parts: usize,
        decays: *const bool,
        hyper: *const f32,
    ) -> libc::c_int;
    /// `*res` = causal self-attention over whole sequences, from c_attn's output, as a
    /// `CausalAttention` primitive (csrc/causal_attention.cpp).
    pub(crate) fn mlx_gpt_causal_attention(
        res: *mut mlx_sys::mlx_array,
        qkv: mlx_sys::mlx_array,
        mask: mlx_sys::mlx_array,
        n_head: libc::c_int,
        scale: f32,
        threads: libc::c_int,
    ) -> libc::c_int;
    /// One GPT-2 block for one new position per sequence, as a `DecodeBlock` primitive
    /// (csrc/decode_block.cpp): reads `arrays[0..15]`, fills `outs[0..3]`.
    pub(crate) fn mlx_gpt_decode_block(
        outs: *mut mlx_sys::mlx_array,
        arrays: *const mlx_sys::mlx_array,
        n_head: libc::c_int,
        past: libc::c_int,
        eps: f32,
        tanh: bool,
        threads: libc::c_int,
    ) -> libc::c_int;
    /// Cache buffers `DecodeBlock` copied rather than wrote in place, process-wide.
    pub(crate) fn mlx_gpt_decode_block_copies() -> usize;
    /// One GPT-2 decoding step over the arrays' memory (csrc/decode_step.cpp): fills
    /// `logits` (B·V) and writes the caches in place; 2 when it declines.
    pub(crate) fn mlx_gpt_decode_step(
        logits: *mut f32,
        ids: *const i32,
        batch: libc::c_int,
        past: libc::c_int,
        arrays: *const mlx_sys::mlx_array,
        n_layer: libc::c_int,
        n_head: libc::c_int,
        eps: f32,
        tanh: bool,
        threads: libc::c_int,
    ) -> libc::c_int;
    /// `outs[i]` = a copy of `arrays[i]` on memory that asks for 2 MiB pages
    /// (csrc/huge_pages.cpp); 2 when the system gives none.
    pub(crate) fn mlx_gpt_huge_pages_gather(
        outs: *mut mlx_sys::mlx_array,
        arrays: *const mlx_sys::mlx_array,
        n: usize,
    ) -> libc::c_int;
    /// Lowers MLX's process-wide count of pending tasks by `tasks` (raises it when
    /// negative): csrc/scheduler.cpp.
    pub(crate) fn mlx_gpt_scheduler_lift(tasks: libc::c_int);
    /// MLX's process-wide count of pending tasks.
    pub(crate) fn mlx_gpt_scheduler_pending() -> libc::c_int;
    /// The most of mlx-gpt's primitives one stream has held queued and not yet begun when
    /// another was admitted (csrc/run_ahead.h).
    pub(crate) fn mlx_gpt_run_ahead_peak() -> u64;
    /// csrc/run_ahead.h's `kRunAhead`.
    pub(crate) fn mlx_gpt_run_ahead_limit() -> u64;
    /// Whether `mlx_gpt_huge_pages_gather` places arrays on 2 MiB pages here.
    pub(crate) fn mlx_gpt_huge_pages_usable() -> bool;
    /// Whether `a`'s data lies in memory that `mlx_gpt_huge_pages_gather` placed.
    pub(crate) fn mlx_gpt_on_huge_pages(a: mlx_sys::mlx_array) -> bool;
    /// `*res` = one query's attention over the first `len` cached positions, as a
    /// `DecodeAttention` primitive (csrc/decode_attention.cpp).
    pub(crate) fn mlx_gpt_decode_attention(
        res: *mut mlx_sys::mlx_array,
        q: mlx_sys::mlx_array,
        k: mlx_sys::mlx_array,
        v: mlx_sys::mlx_array,
        n_head: libc::c_int,
        len: libc::c_int,
        scale: f32,
    ) -> libc::c_int;
}

/// Whether the primitives' products run on mlx-gpt's own GEMM rather than the BLAS: the
/// CPU has AVX2 and FMA, or AVX-512, and the build has the kernels (not `generic-cpu`).
pub fn own_gemm_active() -> bool {
    super::gemm::gemm_path() != super::gemm::GemmPath::Blas
}

/// Whether the primitives that call the BLAS can run: `cblas_sgemm` is looked up in the
/// process's global scope, so it is the library MLX's own matmuls call, with the same
/// threads; the first call hands it over.
pub(crate) fn blas_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        // Make sure libmlx (and with it the BLAS) is loaded before looking.
        let _ = mlx_gpt_runtime::blas::mlx_version();
        let lookup = mlx_gpt_runtime::blas::lookup;
        let sgemm = lookup("cblas_sgemm");
        // SAFETY: a CBLAS routine (or null); the primitives call it with its signature.
        unsafe { mlx_gpt_set_blas(sgemm) };
        !sgemm.is_null()
    })
}

/// Run an entry point that takes an optional array: `f` gets `a`'s handle, or an empty
/// handle (which the C++ side reads as "none", freed here afterwards).
///
/// # Safety
/// As for [`call`]: `f` must call one of the entry points above, with arrays that
/// outlive the call.
pub(crate) unsafe fn call_with_optional(
    a: Option<&Array>,
    f: impl FnOnce(*mut mlx_sys::mlx_array, mlx_sys::mlx_array) -> libc::c_int,
) -> Result<Option<Array>, Exception> {
    let empty = mlx_sys::mlx_array_new();
    let handle = a.map_or(empty, |a| a.as_ptr());
    let out = call(|res| f(res, handle));
    mlx_sys::mlx_array_free(empty);
    out
}

/// The primitives have CPU implementations only: `Kernels::resolve` never picks them for
/// another device, and a caller that builds `Kernels::cpu()` by hand must not either.
pub(crate) fn debug_check_cpu() {
    debug_assert!(
        mlx_rs::Device::try_default().is_ok_and(|d| d.get_type().is_ok_and(|t| matches!(t, mlx_rs::DeviceType::Cpu))),
        "mlx-gpt's CPU kernels called with a default device other than the CPU"
    );
}

/// The message of the last failed entry point on this thread.
pub(crate) fn last_error() -> Exception {
    // SAFETY: a NUL-terminated string owned by the C++ side, valid until the next failure.
    Exception::custom(unsafe { std::ffi::CStr::from_ptr(mlx_gpt_last_error()) }.to_string_lossy().into_owned())
}

/// Run an entry point on a fresh result handle: `Ok(Some(array))` when it succeeded,
/// `Ok(None)` when it declined, the C++ side's message as an error when it failed.
///
/// # Safety
/// `f` must call one of the entry points above with the handle it is given and arrays
/// that outlive the call.
pub(crate) unsafe fn call(f: impl FnOnce(*mut mlx_sys::mlx_array) -> libc::c_int) -> Result<Option<Array>, Exception> {
    debug_check_cpu();
    let mut res = mlx_sys::mlx_array_new();
    let status = f(&mut res);
    // Owns the handle whether or not the call filled it.
    let out = Array::from_ptr(res);
    match status {
        0 => Ok(Some(out)),
        2 => Ok(None),
        _ => Err(last_error()),
    }
}
