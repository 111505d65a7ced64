//! Where a weight matrix's numbers lie in memory, for decoding on the CPU.
//!
//! A dense layer's weight is (in, out), GPT-2's Conv1D orientation. Decoding multiplies a
//! row or two per sequence by it, reading the whole matrix per token, and the CPU decoding
//! product (csrc/decode_product.cpp) reads a float32 matrix fastest when each output's
//! weights lie side by side, (out, in): every output is one dot product summed in
//! registers, and outputs are independent, so a thread done early takes over some of the
//! other's. Walking (in, out) adds each row of W into all N sums in memory and splits
//! into partial sums per thread. A GPT-2 124M token's products took 7.1–7.8 ms laid out
//! (out, in) against 9.2–10.4 ms (in, out), alternating in one process (AMD EPYC Zen 5,
//! docs/performance-history.md). With more rows (a batch) each output re-reads every
//! row's inputs, which outgrow the first-level cache, and with bfloat16 weights widening
//! costs more per output: there (in, out) is faster, so generation lays the matrices out
//! for its batch (`Gpt::lay_out_matrices`).
//!
//! [`store_transposed`] keeps the weight an (in, out) array — the same values under the
//! same name — whose memory is (out, in): a transposed view of an (out, in) buffer. MLX's
//! operations take it as it is (a matmul hands it to the BLAS as a transposed operand;
//! mlx-gpt's other kernels copy it to row-major first); the decoding kernels walk it as it
//! lies; what reads raw memory (a safetensors file) makes it row-major first
//! ([`row_major`]).

use mlx_rs::error::Exception;
use mlx_rs::Array;

/// `w` (in, out) with its memory laid out (out, in), evaluated: the same shape, values
/// and dtype; a copy of `w` once (then `w` itself, when it already lies so).
pub fn store_transposed(w: &Array) -> Result<Array, Exception> {
    if w.ndim() != 2 || is_stored_transposed(w) {
        return Ok(w.clone());
    }
    let stored = w.t().contiguous()?.t();
    stored.eval()?;
    Ok(stored)
}

/// Whether `w` is a 2-D array whose memory is column after column (and not also row
/// after row, as a single row or column is): what [`store_transposed`] makes.
pub fn is_stored_transposed(w: &Array) -> bool {
    if w.ndim() != 2 || w.shape().iter().any(|&d| d <= 1) {
        return false;
    }
    let rows = w.shape()[0] as usize;
    w.strides() == [1, rows]
}

/// `a` laid out row after row (a copy only where it is not), for code that reads an
/// array's memory directly: a safetensors file, a host slice.
pub fn row_major(a: &Array) -> Result<Array, Exception> {
    let dense = a.contiguous()?;
    dense.eval()?;
    Ok(dense)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    #[test]
    fn stored_transposed_keeps_the_values_and_lies_column_major() {
        let w = random::normal::<f32>(&[5, 7], None, None, &random::key(3).unwrap()).unwrap();
        w.eval().unwrap();
        assert!(!is_stored_transposed(&w));
        let t = store_transposed(&w).unwrap();
        assert!(is_stored_transposed(&t));
        assert_eq!(t.shape(), &[5, 7]);
        assert_eq!(t.strides(), &[1, 5]);
        // The values through MLX ops, and row-major again for the host.
        assert!(t.eq_values(&w).unwrap());
        let back = row_major(&t).unwrap();
        assert!(!is_stored_transposed(&back));
        assert_eq!(back.as_slice::<f32>(), w.as_slice::<f32>());
        // Idempotent, and a row-major array comes back as it is.
        assert_eq!(store_transposed(&t).unwrap().strides(), &[1, 5]);
        assert_eq!(row_major(&w).unwrap().as_slice::<f32>(), w.as_slice::<f32>());
        // A single row or column is row-major either way: never reported transposed.
        let row = random::normal::<f32>(&[1, 7], None, None, &random::key(4).unwrap()).unwrap();
        assert!(!is_stored_transposed(&store_transposed(&row).unwrap()));
    }
}
