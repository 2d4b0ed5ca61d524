//! [`Chunked`]: a persistent vector for snapshots of large instance sets.
//!
//! A snapshot is immutable while calls use it, and the next snapshot differs
//! from it by a few instances. Copying a flat `Vec` of 100,000 entries for
//! each change costs time in proportion to the set; `Chunked` keeps its
//! entries in shared chunks of [`CHUNK`] entries, so that a copy shares every
//! chunk and an edit copies only the chunk it touches and the (small) list of
//! chunks: an edit of a set of `n` costs `O(n / CHUNK + CHUNK)` pointer
//! copies, a read is two indexed loads.

use std::sync::Arc;

/// Entries per chunk (a power of two).
pub(crate) const CHUNK: usize = 256;
const SHIFT: u32 = CHUNK.trailing_zeros();

/// A persistent vector: `clone` is cheap and shares storage, edits copy
/// only what they touch (copy on write).
#[derive(Debug)]
pub(crate) struct Chunked<T> {
    chunks: Arc<Vec<Arc<Vec<T>>>>,
    len: usize,
}

impl<T> Clone for Chunked<T> {
    fn clone(&self) -> Self {
        Self {
            chunks: Arc::clone(&self.chunks),
            len: self.len,
        }
    }
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: Arc::default(),
            len: 0,
        }
    }
}

impl<T: Clone> FromIterator<T> for Chunked<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut chunks = Vec::new();
        let mut current = Vec::with_capacity(CHUNK);
        let mut len = 0;
        for item in iter {
            current.push(item);
            len += 1;
            if current.len() == CHUNK {
                chunks.push(Arc::new(std::mem::replace(
                    &mut current,
                    Vec::with_capacity(CHUNK),
                )));
            }
        }
        if !current.is_empty() {
            chunks.push(Arc::new(current));
        }
        Self {
            chunks: Arc::new(chunks),
            len,
        }
    }
}

impl<T> Chunked<T> {
    /// The number of entries.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entry at `i`, if any.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i >> SHIFT)?.get(i & (CHUNK - 1))
    }

    /// The entries in order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl<T: Clone> Chunked<T> {
    fn chunk_mut(&mut self, c: usize) -> Option<&mut Vec<T>> {
        Arc::make_mut(&mut self.chunks)
            .get_mut(c)
            .map(Arc::make_mut)
    }

    /// Replaces the entry at `i` (nothing when `i` is out of range).
    pub(crate) fn set(&mut self, i: usize, value: T) {
        if i >= self.len {
            return;
        }
        if let Some(slot) = self
            .chunk_mut(i >> SHIFT)
            .and_then(|c| c.get_mut(i & (CHUNK - 1)))
        {
            *slot = value;
        }
    }

    /// Appends an entry.
    pub(crate) fn push(&mut self, value: T) {
        let chunks = Arc::make_mut(&mut self.chunks);
        match chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                chunks.push(Arc::new(chunk));
            }
        }
        self.len += 1;
    }

    /// Removes and returns the last entry.
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let chunks = Arc::make_mut(&mut self.chunks);
        let last = chunks.last_mut()?;
        let value = Arc::make_mut(last).pop();
        if last.is_empty() {
            chunks.pop();
        }
        self.len -= 1;
        value
    }

    /// Removes the entry at `i` and moves the last entry into its place
    /// (order is not kept; nothing else moves). Returns the removed entry.
    pub(crate) fn swap_remove(&mut self, i: usize) -> Option<T> {
        if i >= self.len {
            return None;
        }
        let last = self.pop()?;
        if i == self.len {
            return Some(last);
        }
        let slot = self
            .chunk_mut(i >> SHIFT)
            .and_then(|c| c.get_mut(i & (CHUNK - 1)))?;
        Some(std::mem::replace(slot, last))
    }
}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;

    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> SHIFT][i & (CHUNK - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vec_and_shares_storage() {
        let mut model: Vec<u32> = (0..1_000).collect();
        let mut v: Chunked<u32> = model.iter().copied().collect();
        let before = v.clone();
        let mut rng = fastrand::Rng::with_seed(7);
        for step in 0..3_000u32 {
            match rng.u8(..3) {
                0 => {
                    model.push(step + 10_000);
                    v.push(step + 10_000);
                }
                1 if !model.is_empty() => {
                    let i = rng.usize(..model.len());
                    assert_eq!(v.swap_remove(i), Some(model.swap_remove(i)));
                }
                _ if !model.is_empty() => {
                    let i = rng.usize(..model.len());
                    model[i] = step;
                    v.set(i, step);
                }
                _ => {}
            }
            assert_eq!(v.len(), model.len());
        }
        assert!(v.iter().copied().eq(model.iter().copied()));
        assert!((0..model.len()).all(|i| v[i] == model[i] && v.get(i) == Some(&model[i])));
        assert_eq!(v.get(model.len()), None);
        // The copy taken before the edits is untouched.
        assert!(before.iter().copied().eq(0..1_000));
        while v.pop().is_some() {}
        assert_eq!(v.len(), 0);
        assert_eq!(v.swap_remove(0), None);
    }
}
