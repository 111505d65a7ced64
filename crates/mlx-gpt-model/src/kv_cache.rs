//! `LayerKv`: one layer's keys and values of the positions already processed, for
//! generation.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

/// The smallest buffer [`LayerKv::on_huge_pages`] puts on 2 MiB pages: GPT-2 124M's
/// first (64 positions of 768 float32, 192 KiB), not a toy model's.
pub const HUGE_PAGES_FROM: usize = 128 << 10;

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
    huge_pages: bool,
}

impl LayerKv {
    /// An empty cache whose buffers of [`HUGE_PAGES_FROM`] bytes or more go on 2 MiB
    /// pages where the system has them ([`mlx_gpt_ops::onto_huge_pages`]), for the CPU
    /// decoding kernels: a new position's attention reads every held position, and the
    /// weights streamed between two layers' attention leave none of the cache's 4 KiB
    /// pages in the translation caches. A buffer placed on its own takes at least one
    /// 2 MiB page; [`LayerKv::reserve_all`] puts a generation's buffers in one mapping.
    /// Writing a new position keeps a buffer where it is (the update takes it over);
    /// growing it places the larger one the same way.
    pub fn on_huge_pages() -> Self {
        LayerKv { huge_pages: true, ..Default::default() }
    }

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
        let sh = like.shape();
        self.reserve_rows(sh[0], sh[2], like.dtype(), t)
    }

    /// Room for `positions` positions of `batch` rows of `c` values of `dtype` in each of
    /// `layers` (empty caches), taken at once, before a generation: growing as positions
    /// come (64, 128, 256, ...) costs a fresh buffer and a copy each time, and on 2 MiB
    /// pages a fresh page of zeros a buffer; here the buffers that go on such pages share
    /// one mapping. (GPT-2 124M, a 16-token prompt and 256 new tokens, 271 positions held:
    /// 24 buffers of 813 KiB, 20 MiB, where growing asked for four sets of 24 pages,
    /// 192 MiB, each zeroed by the kernel inside the timed generation: ~3 % of its time;
    /// AMD EPYC Zen 5.) A layer that is not
    /// empty, or a later `reserve_rows` with another batch, width or dtype, goes its own
    /// way: the reservation is a plan, never a constraint.
    pub fn reserve_all(
        layers: &mut [LayerKv],
        batch: i32,
        c: i32,
        dtype: mlx_rs::Dtype,
        positions: i32,
    ) -> Result<(), Exception> {
        if positions <= 0 || layers.is_empty() || layers.iter().any(|l| !l.is_empty()) {
            return Ok(());
        }
        let mut buffers = (0..2 * layers.len())
            .map(|_| ops::zeros_dtype(&[batch, positions, c], dtype))
            .collect::<Result<Vec<_>, _>>()?;
        mlx_rs::transforms::eval(&buffers)?;
        let huge = layers.iter().all(|l| l.huge_pages) && buffers[0].nbytes() >= HUGE_PAGES_FROM;
        if huge {
            if let Some(copies) = mlx_gpt_ops::onto_huge_pages(&buffers.iter().collect::<Vec<_>>())? {
                buffers = copies;
            }
        }
        let mut buffers = buffers.into_iter();
        for l in layers.iter_mut() {
            l.k = buffers.next();
            l.v = buffers.next();
        }
        Ok(())
    }

    /// Room for `t` more positions of `batch` rows of `c` values of `dtype`.
    pub fn reserve_rows(&mut self, batch: i32, c: i32, dtype: mlx_rs::Dtype, t: i32) -> Result<(), Exception> {
        use mlx_rs::ops::indexing::TryIndexMutOp;
        let past = self.len as i32;
        let needed = past + t;
        // An empty cache's buffers reserved for other rows (LayerKv::reserve_all's plan
        // did not match what came) are dropped.
        if past == 0
            && self.k.as_ref().is_some_and(|k| k.dtype() != dtype || k.shape()[0] != batch || k.shape()[2] != c)
        {
            self.k = None;
            self.v = None;
        }
        let capacity = self.k.as_ref().map_or(0, |k| k.shape()[1]);
        if needed > capacity {
            let new_capacity = needed.max(2 * capacity).max(64);
            let grow = |old: Option<Array>| -> Result<Array, Exception> {
                let mut buffer = ops::zeros_dtype(&[batch, new_capacity, c], dtype)?;
                if self.huge_pages && buffer.nbytes() >= HUGE_PAGES_FROM {
                    buffer.eval()?;
                    if let Some(mut copy) = mlx_gpt_ops::onto_huge_pages(&[&buffer])? {
                        buffer = copy.pop().expect("one copy");
                    }
                }
                if let Some(old) = old {
                    buffer.try_index_mut((.., 0..past, ..), old.index((.., 0..past, ..)))?;
                }
                Ok(buffer)
            };
            self.k = Some(grow(self.k.take())?);
            self.v = Some(grow(self.v.take())?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    #[test]
    fn a_cache_on_huge_pages_holds_what_was_appended_and_stays_there_as_it_grows() {
        if mlx_gpt_ops::Kernels::cpu().is_err() {
            return; // the CPU kernels' cache
        }
        // (1, capacity, 1024) float32 buffers: 256 KiB at the first capacity (64).
        let (mut kv, mut plain) = (LayerKv::on_huge_pages(), LayerKv::default());
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        for (i, t) in [10, 1, 150, 1, 1, 150].into_iter().enumerate() {
            let k = random::normal::<f32>(&[1, t, 1024], None, None, &random::key(i as u64).unwrap()).unwrap();
            let v = random::normal::<f32>(&[1, t, 1024], None, None, &random::key(99 + i as u64).unwrap()).unwrap();
            kv.append(&k, &v).unwrap();
            plain.append(&k, &v).unwrap();
            ks.push(k);
            vs.push(v);
            let (kb, vb) = kv.buffers();
            kb.eval().unwrap();
            vb.eval().unwrap();
            assert!(kb.nbytes() >= HUGE_PAGES_FROM);
            let want = mlx_gpt_ops::layout::huge_pages_available();
            assert_eq!(mlx_gpt_ops::is_on_huge_pages(kb), want, "keys at {} positions", kv.len());
            assert_eq!(mlx_gpt_ops::is_on_huge_pages(vb), want, "values at {} positions", kv.len());
            assert!(!mlx_gpt_ops::is_on_huge_pages(plain.buffers().0));
            let n = kv.len() as i32;
            let held = |b: &Array| b.index((.., 0..n, ..));
            assert!(held(kb).eq_values(ops::concatenate(&ks, 1).unwrap()).unwrap());
            assert!(held(vb).eq_values(ops::concatenate(&vs, 1).unwrap()).unwrap());
        }
        assert_eq!(kv.len(), 313);
        assert!(kv.buffers().0.shape()[1] >= 313);
        // A toy model's buffers stay where MLX puts them.
        let mut toy = LayerKv::on_huge_pages();
        let x = random::normal::<f32>(&[1, 3, 16], None, None, &random::key(7).unwrap()).unwrap();
        toy.append(&x, &x).unwrap();
        toy.buffers().0.eval().unwrap();
        assert!(!mlx_gpt_ops::is_on_huge_pages(toy.buffers().0));
    }

    #[test]
    fn reserved_caches_share_one_mapping_and_hold_what_was_appended_without_growing() {
        let positions = 100;
        let mut layers = vec![LayerKv::on_huge_pages(); 3];
        let before = mlx_gpt_ops::huge_page_mappings();
        LayerKv::reserve_all(&mut layers, 1, 512, mlx_rs::Dtype::Float32, positions).unwrap();
        let huge = mlx_gpt_ops::layout::huge_pages_available();
        assert_eq!(mlx_gpt_ops::huge_page_mappings() - before, usize::from(huge), "one mapping for all six");
        for (i, l) in layers.iter_mut().enumerate() {
            let mut ks = Vec::new();
            for (j, t) in [7, 1, 92].into_iter().enumerate() {
                let key = |s: u64| random::key(100 * i as u64 + 10 * j as u64 + s).unwrap();
                let k = random::normal::<f32>(&[1, t, 512], None, None, &key(1)).unwrap();
                let v = random::normal::<f32>(&[1, t, 512], None, None, &key(2)).unwrap();
                l.append(&k, &v).unwrap();
                ks.push(k);
            }
            let (kb, vb) = l.buffers();
            kb.eval().unwrap();
            vb.eval().unwrap();
            assert_eq!(kb.shape(), &[1, positions, 512], "no growth");
            assert_eq!(mlx_gpt_ops::is_on_huge_pages(kb), huge);
            assert!(kb.index((.., 0..positions, ..)).eq_values(ops::concatenate(&ks, 1).unwrap()).unwrap());
        }
        // No layers: nothing to do.
        LayerKv::reserve_all(&mut [], 1, 512, mlx_rs::Dtype::Float32, positions).unwrap();
        // A plan in another dtype only: float32 keys are not rounded into it.
        let mut other = vec![LayerKv::default()];
        LayerKv::reserve_all(&mut other, 1, 512, mlx_rs::Dtype::Bfloat16, positions).unwrap();
        let k = random::normal::<f32>(&[1, 3, 512], None, None, &random::key(6).unwrap()).unwrap();
        other[0].append(&k, &k).unwrap();
        let kb = other[0].buffers().0;
        assert_eq!(kb.dtype(), mlx_rs::Dtype::Float32);
        assert!(kb.index((.., 0..3, ..)).eq_values(&k).unwrap());
        // A plan that does not match what comes at all: the buffers of what came.
        let mut other = vec![LayerKv::default()];
        LayerKv::reserve_all(&mut other, 1, 512, mlx_rs::Dtype::Bfloat16, positions).unwrap();
        let k = random::normal::<f32>(&[2, 3, 8], None, None, &random::key(5).unwrap()).unwrap();
        other[0].append(&k, &k).unwrap();
        let kb = other[0].buffers().0;
        assert_eq!((kb.dtype(), kb.shape()[0], kb.shape()[2]), (mlx_rs::Dtype::Float32, 2, 8));
        assert!(kb.index((.., 0..3, ..)).eq_values(&k).unwrap());
    }
}
