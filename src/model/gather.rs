//! Token selection as the official `apply_masks` / `repeat_interleave_batch` do it, with the
//! index arithmetic done once on the host and a single `select` on the device.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::Result;

/// Mask index sets that do not fit together or do not fit the model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MaskIndexError {
    #[error("mask set must be non-empty, got [{n_masks} masks, {batch} images, {k} indices]")]
    Empty {
        n_masks: usize,
        batch: usize,
        k: usize,
    },
    #[error("{name} covers {found} images, {expected_from} covers {expected}")]
    Batch {
        name: String,
        found: usize,
        expected_from: &'static str,
        expected: usize,
    },
    #[error(
        "mask {mask} of image {image} has {found} indices, expected {expected} (all masks of a batch have one length)"
    )]
    Length {
        mask: usize,
        image: usize,
        found: usize,
        expected: usize,
    },
    #[error(
        "mask {mask} of image {image} holds patch index {index}, the model has {num_patches} patches"
    )]
    OutOfRange {
        mask: usize,
        image: usize,
        index: i64,
        num_patches: usize,
    },
    #[error("cannot pad masks of {from} indices to {to}")]
    PadBelow { from: usize, to: usize },
    #[error("mask array must be 3-D [n_masks, batch, k], got {shape:?}")]
    Rank { shape: Vec<usize> },
    #[error("mask array {shape:?} holds {values} values")]
    Len { shape: Vec<usize>, values: usize },
}

/// Patch-index sets of one batch, `[n_masks][batch][k]`, every list of the same length `k`
/// (the collator truncates them to the batch minimum) and every index below `num_patches`.
///
/// A set may be *padded* ([`MaskIndices::padded`], static shapes): each list then holds `k`
/// indices of which only the first [`MaskIndices::valid`] are real; the rest repeat the last
/// real index, so that the tokens they gather are finite, and the networks keep them out of
/// attention (as keys) and out of the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskIndices {
    n_masks: usize,
    batch: usize,
    k: usize,
    /// The real indices at the front of every list (`k` when not padded).
    valid: usize,
    /// Row-major `[n_masks, batch, k]`.
    flat: Vec<usize>,
}

impl MaskIndices {
    pub fn new(masks: &[Vec<Vec<usize>>], num_patches: usize) -> Result<Self> {
        let n_masks = masks.len();
        let batch = masks.first().map_or(0, |m| m.len());
        let k = masks.first().and_then(|m| m.first()).map_or(0, |v| v.len());
        if n_masks == 0 || batch == 0 || k == 0 {
            return Err(MaskIndexError::Empty { n_masks, batch, k }.into());
        }
        let mut flat = Vec::with_capacity(n_masks * batch * k);
        for (m, per_image) in masks.iter().enumerate() {
            if per_image.len() != batch {
                return Err(MaskIndexError::Batch {
                    name: format!("mask {m}"),
                    found: per_image.len(),
                    expected_from: "mask 0",
                    expected: batch,
                }
                .into());
            }
            for (b, idx) in per_image.iter().enumerate() {
                if idx.len() != k {
                    return Err(MaskIndexError::Length {
                        mask: m,
                        image: b,
                        found: idx.len(),
                        expected: k,
                    }
                    .into());
                }
                if let Some(bad) = idx.iter().find(|&&i| i >= num_patches) {
                    return Err(MaskIndexError::OutOfRange {
                        mask: m,
                        image: b,
                        index: *bad as i64,
                        num_patches,
                    }
                    .into());
                }
                flat.extend_from_slice(idx);
            }
        }
        Ok(Self {
            n_masks,
            batch,
            k,
            valid: k,
            flat,
        })
    }

    /// The same sets padded to `k` indices per list (see the type's documentation); `k` below
    /// the current length is an error, equal to it gives the set unchanged.
    pub fn padded(&self, k: usize) -> Result<Self> {
        if k < self.k {
            return Err(MaskIndexError::PadBelow {
                from: self.k,
                to: k,
            }
            .into());
        }
        let mut flat = Vec::with_capacity(self.n_masks * self.batch * k);
        for list in self.flat.chunks(self.k) {
            let real = &list[..self.valid];
            flat.extend_from_slice(real);
            let last = real[real.len() - 1];
            flat.resize(flat.len() + k - self.valid, last);
        }
        Ok(Self {
            k,
            flat,
            ..self.clone()
        })
    }

    /// From a `[n_masks, batch, k]` integer array (the layout of the reference `.npy` files).
    pub fn from_array(shape: &[usize], values: &[i64], num_patches: usize) -> Result<Self> {
        let [m, b, k] = shape else {
            return Err(MaskIndexError::Rank {
                shape: shape.to_vec(),
            }
            .into());
        };
        if values.len() != m * b * k {
            return Err(MaskIndexError::Len {
                shape: shape.to_vec(),
                values: values.len(),
            }
            .into());
        }
        if let Some(pos) = values.iter().position(|&v| v < 0) {
            return Err(MaskIndexError::OutOfRange {
                mask: pos / (b * k),
                image: pos / k % b,
                index: values[pos],
                num_patches,
            }
            .into());
        }
        let nested: Vec<Vec<Vec<usize>>> = (0..*m)
            .map(|mi| {
                (0..*b)
                    .map(|bi| {
                        let start = (mi * b + bi) * k;
                        values[start..start + k]
                            .iter()
                            .map(|&v| v as usize)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Self::new(&nested, num_patches)
    }

    pub fn n_masks(&self) -> usize {
        self.n_masks
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Indices per list, padding included (the token axis of the gathered tensors).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Real indices per list (equal to [`MaskIndices::k`] unless padded).
    pub fn valid(&self) -> usize {
        self.valid
    }
    pub fn is_padded(&self) -> bool {
        self.valid < self.k
    }
    pub fn as_flat(&self) -> &[usize] {
        &self.flat
    }

    /// The real indices of every list (padding left out), row-major `[n_masks * batch,
    /// valid]`: the grid position of every real token the lists gather.
    pub fn real_positions(&self) -> Vec<usize> {
        self.flat
            .chunks(self.k)
            .flat_map(|list| list[..self.valid].iter().copied())
            .collect()
    }

    /// Nested `[n_masks][batch][k]` copy.
    pub fn to_nested(&self) -> Vec<Vec<Vec<usize>>> {
        self.flat
            .chunks(self.batch * self.k)
            .map(|m| m.chunks(self.k).map(|v| v.to_vec()).collect())
            .collect()
    }

    /// Indices into `[batch * num_patches]` rows for `apply_masks`, then repeated for
    /// `repeat_interleave_batch(., batch, repeat)`: row order (mask, repeat, image).
    fn batch_rows(&self, num_patches: usize, repeat: usize) -> Vec<i64> {
        let mut rows = Vec::with_capacity(self.flat.len() * repeat);
        for per_mask in self.flat.chunks(self.batch * self.k) {
            for _ in 0..repeat {
                for (b, idx) in per_mask.chunks(self.k).enumerate() {
                    rows.extend(idx.iter().map(|&i| (b * num_patches + i) as i64));
                }
            }
        }
        rows
    }

    /// Like `batch_rows` but into a shared `[num_patches]` table (position embeddings).
    fn table_rows(&self, repeat: usize) -> Vec<i64> {
        let mut rows = Vec::with_capacity(self.flat.len() * repeat);
        for per_mask in self.flat.chunks(self.batch * self.k) {
            for _ in 0..repeat {
                rows.extend(per_mask.iter().map(|&i| i as i64));
            }
        }
        rows
    }
}

fn int_tensor<B: Backend>(rows: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = rows.len();
    Tensor::from_data(TensorData::new(rows, [n]), device)
}

/// `repeat_interleave_batch(apply_masks(x, masks), B, repeat)`: `x [B, N, D]` ->
/// `[n_masks * repeat * B, k, D]`, row `(m*repeat + r)*B + b` = mask m of image b.
pub fn apply_masks<B: Backend>(
    x: Tensor<B, 3>,
    masks: &MaskIndices,
    repeat: usize,
) -> Tensor<B, 3> {
    let [b, n, d] = x.dims();
    debug_assert_eq!(b, masks.batch);
    let rows = int_tensor::<B>(masks.batch_rows(n, repeat), &x.device());
    x.reshape([b * n, d])
        .select(0, rows)
        .reshape([masks.n_masks * repeat * b, masks.k, d])
}

/// Gather rows of a shared `[N, D]` table (position embeddings) for every mask and image:
/// `[n_masks * repeat * B, k, D]`, same row order as [`apply_masks`].
pub fn gather_table<B: Backend>(
    table: Tensor<B, 2>,
    masks: &MaskIndices,
    repeat: usize,
) -> Tensor<B, 3> {
    let [_, d] = table.dims();
    let rows = int_tensor::<B>(masks.table_rows(repeat), &table.device());
    table
        .select(0, rows)
        .reshape([masks.n_masks * repeat * masks.batch, masks.k, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn index_error(r: Result<MaskIndices>) -> MaskIndexError {
        match r {
            Err(Error::MaskIndices(e)) => e,
            other => panic!("expected a mask index error, got {other:?}"),
        }
    }

    #[test]
    fn bad_index_sets_name_the_mask_image_and_index() {
        let ok = vec![vec![vec![0, 1], vec![2, 3]]];
        assert!(MaskIndices::new(&ok, 4).is_ok());
        assert_eq!(
            index_error(MaskIndices::new(&[], 4)),
            MaskIndexError::Empty {
                n_masks: 0,
                batch: 0,
                k: 0
            }
        );
        assert_eq!(
            index_error(MaskIndices::new(&ok, 3)),
            MaskIndexError::OutOfRange {
                mask: 0,
                image: 1,
                index: 3,
                num_patches: 3
            }
        );
        let ragged = vec![vec![vec![0, 1], vec![2]]];
        assert_eq!(
            index_error(MaskIndices::new(&ragged, 4)),
            MaskIndexError::Length {
                mask: 0,
                image: 1,
                found: 1,
                expected: 2
            }
        );
        let uneven = vec![vec![vec![0], vec![1]], vec![vec![2]]];
        assert!(matches!(
            index_error(MaskIndices::new(&uneven, 4)),
            MaskIndexError::Batch {
                found: 1,
                expected: 2,
                ..
            }
        ));
        let m = MaskIndices::new(&ok, 4).unwrap();
        assert_eq!(
            index_error(m.padded(1)),
            MaskIndexError::PadBelow { from: 2, to: 1 }
        );
        assert_eq!(m.padded(2).unwrap(), m);
    }

    /// The real positions of padded lists leave the padding out, mask by mask, image by image.
    #[test]
    fn real_positions_leave_the_padding_out() {
        let masks = vec![vec![vec![5, 1], vec![2, 7]], vec![vec![0, 3], vec![6, 4]]];
        let m = MaskIndices::new(&masks, 8).unwrap();
        assert_eq!(m.real_positions(), [5, 1, 2, 7, 0, 3, 6, 4]);
        let padded = m.padded(4).unwrap();
        assert_eq!(padded.as_flat().len(), 16);
        assert_eq!(padded.real_positions(), m.real_positions());
    }

    #[test]
    fn arrays_are_checked_before_they_are_read() {
        assert_eq!(
            index_error(MaskIndices::from_array(&[2, 2], &[0; 4], 4)),
            MaskIndexError::Rank { shape: vec![2, 2] }
        );
        assert_eq!(
            index_error(MaskIndices::from_array(&[1, 2, 2], &[0; 3], 4)),
            MaskIndexError::Len {
                shape: vec![1, 2, 2],
                values: 3
            }
        );
        // The fourth value (mask 0, image 1) is negative.
        assert_eq!(
            index_error(MaskIndices::from_array(&[1, 2, 2], &[0, 1, 2, -5], 4)),
            MaskIndexError::OutOfRange {
                mask: 0,
                image: 1,
                index: -5,
                num_patches: 4
            }
        );
        let m = MaskIndices::from_array(&[1, 2, 2], &[0, 1, 2, 3], 4).unwrap();
        assert_eq!((m.n_masks(), m.batch(), m.k()), (1, 2, 2));
    }
}
