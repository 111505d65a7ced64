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

/// Copies of `arrays` (evaluated; row-major, or laid out by [`store_transposed`]) on
/// memory that asks the operating system for 2 MiB pages, with the same shapes, dtypes,
/// layouts and values; `None` where there are no such pages (Linux's transparent huge
/// pages set to "never", another system, a build without the CPU kernels).
///
/// Decoding streams every weight once per token: on 4 KiB pages GPT-2 124M's weights are
/// 120 000 pages a token, on 2 MiB pages 250, and memory is read faster so (the reasons
/// and the figures: csrc/huge_pages.cpp). MLX takes its buffers from `malloc`, which does
/// not ask for such pages.
pub fn onto_huge_pages(arrays: &[&Array]) -> Result<Option<Vec<Array>>, Exception> {
    #[cfg(cpu_kernels)]
    {
        crate::cpu::huge_pages::gather(arrays)
    }
    #[cfg(not(cpu_kernels))]
    {
        let _ = arrays;
        Ok(None)
    }
}

/// Whether [`onto_huge_pages`] places arrays on 2 MiB pages in this process.
pub fn huge_pages_available() -> bool {
    #[cfg(cpu_kernels)]
    {
        crate::cpu::huge_pages::usable()
    }
    #[cfg(not(cpu_kernels))]
    {
        false
    }
}

/// How many mappings [`onto_huge_pages`] has made on this thread (one per call that
/// placed its arrays): for tests and diagnostics.
pub fn huge_page_mappings() -> usize {
    #[cfg(cpu_kernels)]
    {
        crate::cpu::huge_pages::mappings()
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}

/// Whether `a` lies where [`onto_huge_pages`] put it.
pub fn is_on_huge_pages(a: &Array) -> bool {
    #[cfg(cpu_kernels)]
    {
        crate::cpu::huge_pages::holds(a)
    }
    #[cfg(not(cpu_kernels))]
    {
        let _ = a;
        false
    }
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

    /// The AnonHugePages (KiB) of the mapping that holds address `p`: how much of it the
    /// kernel backs with 2 MiB pages.
    fn huge_kib_at(p: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-') && !r.ends_with(':')) {
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16));
                inside = matches!((a, b), (Ok(a), Ok(b)) if a <= p && p < b);
            } else if inside && line.starts_with("AnonHugePages:") {
                return line.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        0
    }

    #[test]
    fn onto_huge_pages_keeps_shapes_dtypes_layouts_and_values() {
        let key = random::key(5).unwrap();
        let rows = random::normal::<f32>(&[1024, 1024], None, None, &key).unwrap(); // 4 MiB
        let columns = store_transposed(&random::normal::<f32>(&[40, 96], None, None, &key).unwrap()).unwrap();
        let half = random::normal::<f32>(&[3, 5], None, None, &key).unwrap().as_dtype(mlx_rs::Dtype::Bfloat16).unwrap();
        let vector = random::normal::<f32>(&[7], None, None, &key).unwrap();
        let all = [&rows, &columns, &half, &vector];
        for a in all {
            a.eval().unwrap();
        }
        let Some(copies) = onto_huge_pages(&all).unwrap() else {
            // Only where the system has no such pages, and then consistently.
            assert!(!huge_pages_available());
            let never = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .map_or(true, |mode| mode.contains("[never]"));
            assert!(never || !cfg!(cpu_kernels), "no 2 MiB pages although the kernel offers them");
            return;
        };
        assert!(huge_pages_available());
        for (a, c) in all.iter().zip(&copies) {
            assert_eq!((c.shape(), c.dtype(), c.strides()), (a.shape(), a.dtype(), a.strides()));
            assert!(c.eq_values(a).unwrap());
            assert!(is_on_huge_pages(c) && !is_on_huge_pages(a));
        }
        assert!(is_stored_transposed(&copies[1]));
        assert_eq!(row_major(&copies[1]).unwrap().as_slice::<f32>(), row_major(&columns).unwrap().as_slice::<f32>());
        // Bit for bit, and the 4 MiB array on at least one whole 2 MiB page.
        assert_eq!(copies[0].as_slice::<f32>(), rows.as_slice::<f32>());
        assert!(huge_kib_at(copies[0].as_slice::<f32>().as_ptr() as usize) >= 2048);
        // MLX operations take the copies as they take any array.
        assert!(copies[0].sum(None).unwrap().eq_values(rows.sum(None).unwrap()).unwrap());
        // The mapping stays while any copy does.
        let kept = copies[3].clone();
        drop(copies);
        assert!(is_on_huge_pages(&kept));
        assert_eq!(kept.as_slice::<f32>(), vector.as_slice::<f32>());
    }
}
