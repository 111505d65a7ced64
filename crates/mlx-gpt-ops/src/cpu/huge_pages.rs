//! Arrays copied onto memory that asks the kernel for 2 MiB pages (csrc/huge_pages.cpp):
//! the weights decoding reads once per token, 250 pages instead of 120 000 for GPT-2 124M.

use mlx_rs::error::Exception;
use mlx_rs::Array;

/// Copies of `arrays` (evaluated; row-major, or 2-D column-major as
/// [`crate::store_transposed`] leaves them) with the same shapes, dtypes, layouts and
/// values, all in one mapping that asks for 2 MiB pages and goes with the last of them;
/// `None` where the system gives no such pages (Linux's transparent huge pages set to
/// "never") or MLX's allocator keeps its buffers another way.
pub fn gather(arrays: &[&Array]) -> Result<Option<Vec<Array>>, Exception> {
    super::ffi::debug_check_cpu();
    let handles: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: the call reads `handles` (arrays that outlive it) and fills the fresh
    // handles in `outs`, owned by `Array`s right after, whether or not it succeeded.
    let (status, outs) = unsafe {
        let mut outs: Vec<mlx_sys::mlx_array> = (0..handles.len()).map(|_| mlx_sys::mlx_array_new()).collect();
        let status = super::ffi::mlx_gpt_huge_pages_gather(outs.as_mut_ptr(), handles.as_ptr(), handles.len());
        (status, outs.into_iter().map(|h| Array::from_ptr(h)).collect::<Vec<_>>())
    };
    match status {
        0 => {
            MAPPINGS.with(|n| n.set(n.get() + 1));
            Ok(Some(outs))
        }
        2 => Ok(None),
        _ => Err(super::ffi::last_error()),
    }
}

/// Whether [`gather`] places arrays on 2 MiB pages here (Linux with transparent huge
/// pages set to "madvise" or "always", and MLX's CPU allocator as this build knows it).
pub fn usable() -> bool {
    // SAFETY: reads a flag computed once on the C++ side.
    unsafe { super::ffi::mlx_gpt_huge_pages_usable() }
}

/// Whether `a`'s data lies in memory that [`gather`] placed (and that is still mapped).
pub fn holds(a: &Array) -> bool {
    // SAFETY: reads the handle of an array that outlives the call.
    unsafe { super::ffi::mlx_gpt_on_huge_pages(a.as_ptr()) }
}

thread_local! {
    static MAPPINGS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Mappings [`gather`] has made on this thread.
pub fn mappings() -> usize {
    MAPPINGS.with(|n| n.get())
}
