//! `LayerKv`: one layer's keys and values of the positions already processed, for
//! generation.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

/// Keys and values of the positions already processed by one layer, for generation.
///
/// They live in buffers with room to spare, written in place: appending a token writes
/// its own keys and values (MLX updates a buffer nothing else refers to without copying
/// it), where concatenating would copy the whole cache at every token. A full buffer is
/// reallocated at twice the size, so the copying is amortised. The heads stay side by
/// side, (B, capacity, C) as c_attn produces them: appending copies rows as they are, and
/// a new position's attention reads each head's columns in place
/// (`mlx_gpt_ops::cached_attention`).
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    /// (B, capacity, C); positions `len..` are unused.
    pub k: Option<Array>,
    /// (B, capacity, C)
    pub v: Option<Array>,
    len: usize,
}

impl LayerKv {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `k`, `v` (B, T, C): the new positions' keys and values.
    pub fn append(&mut self, k: &Array, v: &Array) -> Result<(), Exception> {
        use mlx_rs::ops::indexing::TryIndexMutOp;
        let (past, needed) = (self.len as i32, self.len as i32 + k.shape()[1]);
        self.reserve(k, k.shape()[1])?;
        // Taken out of `self` while written, so the old buffer has no other owner.
        let (mut kb, mut vb) = self.take();
        kb.try_index_mut((.., past..needed, ..), k)?;
        vb.try_index_mut((.., past..needed, ..), v)?;
        self.restore(kb, vb, k.shape()[1] as usize);
        Ok(())
    }

    /// Room for `t` more positions of rows like `like` (B, T, C).
    pub fn reserve(&mut self, like: &Array, t: i32) -> Result<(), Exception> {
        use mlx_rs::ops::indexing::TryIndexMutOp;
        let past = self.len as i32;
        let needed = past + t;
        let capacity = self.k.as_ref().map_or(0, |k| k.shape()[1]);
        if needed > capacity {
            let new_capacity = needed.max(2 * capacity).max(64);
            let grow = |old: Option<Array>, like: &Array| -> Result<Array, Exception> {
                let sh = like.shape();
                let mut buffer = ops::zeros_dtype(&[sh[0], new_capacity, sh[2]], like.dtype())?;
                if let Some(old) = old {
                    buffer.try_index_mut((.., 0..past, ..), old.index((.., 0..past, ..)))?;
                }
                Ok(buffer)
            };
            self.k = Some(grow(self.k.take(), like)?);
            self.v = Some(grow(self.v.take(), like)?);
        }
        Ok(())
    }

    /// The buffers, taken out (after [`LayerKv::reserve`]): with no other owner, an
    /// operation may write them in place. Give them back with [`LayerKv::restore`].
    pub fn take(&mut self) -> (Array, Array) {
        (self.k.take().expect("reserved"), self.v.take().expect("reserved"))
    }

    /// Put the buffers back, `added` positions longer than before [`LayerKv::take`].
    pub fn restore(&mut self, k: Array, v: Array, added: usize) {
        self.k = Some(k);
        self.v = Some(v);
        self.len += added;
    }

    /// The buffers (B, capacity, C); positions `..len()` are held. Call after `append`.
    pub fn buffers(&self) -> (&Array, &Array) {
        (self.k.as_ref().expect("appended"), self.v.as_ref().expect("appended"))
    }
}
