//! The whole decoding step over the arrays' memory (csrc/decode_step.cpp), behind
//! [`crate::decode_step`].

use crate::decode_step::StepParams;
use mlx_rs::error::Exception;
use mlx_rs::Array;

/// See [`crate::decode_step()`].
pub fn step(
    ids: &[u32],
    past: usize,
    caches: &mut [(Array, Array)],
    params: &StepParams,
    threads: usize,
) -> Result<Option<Vec<f32>>, Exception> {
    // As many sequences as the decoding product takes (the graph's head and blocks would
    // decline beyond).
    if ids.len() > super::matvec::MAX_ROWS {
        return Ok(None);
    }
    super::ffi::debug_check_cpu();
    let vocab = params.wte.shape().first().copied().unwrap_or(0) as usize;
    let mut logits = vec![0.0f32; ids.len() * vocab];
    let ids: Vec<i32> = ids.iter().map(|&t| t.min(i32::MAX as u32) as i32).collect();
    // SAFETY: the call reads the handles (arrays that outlive it, and a fresh empty handle
    // for absent biases, freed below), writes `logits` (B·V floats, checked against wte's
    // V on the C++ side) and the cache buffers, which it checks nothing else holds.
    let status = unsafe {
        let empty = mlx_sys::mlx_array_new();
        let opt = |a: Option<&Array>| a.map_or(empty, |a| a.as_ptr());
        let mut handles = vec![params.wte.as_ptr(), params.wpe.as_ptr(), params.ln_f.0.as_ptr(), opt(params.ln_f.1)];
        for (block, (kb, vb)) in params.blocks.iter().zip(caches.iter()) {
            handles.extend([kb.as_ptr(), vb.as_ptr()]);
            handles.extend(block.iter().map(|(w, _)| w.as_ptr()));
            handles.extend(block.iter().map(|(_, b)| opt(*b)));
        }
        let status = super::ffi::mlx_gpt_decode_step(
            logits.as_mut_ptr(),
            ids.as_ptr(),
            ids.len() as libc::c_int,
            past as libc::c_int,
            handles.as_ptr(),
            params.blocks.len() as libc::c_int,
            params.n_head as libc::c_int,
            params.eps,
            params.gelu_tanh,
            threads as libc::c_int,
        );
        mlx_sys::mlx_array_free(empty);
        status
    };
    match status {
        0 => {
            STEPS.with(|n| n.set(n.get() + 1));
            Ok(Some(logits))
        }
        2 => Ok(None),
        _ => Err(super::ffi::last_error()),
    }
}

thread_local! {
    static STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Steps run on this thread.
pub fn count() -> usize {
    STEPS.with(|n| n.get())
}
