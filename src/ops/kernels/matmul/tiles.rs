//! What the x86 register tiles ([`super::avx2`], [`super::avx512`], [`super::bf16`]) share: the
//! operands of a sweep, the dispatch from a run-time row count to the tile instantiated for it,
//! the cutting of the columns into tiles with their bias, and the AVX-512 tiles' epilogue.
//!
//! The dispatch and the epilogue are macros so that each tile's code stays what it was written
//! as, inlined into its `#[target_feature]` function (a shared function would not be inlined
//! across the differing target features).

use super::{NR, Panels};

/// `f::<R, G..>(args)` with `R` the run-time row count `mr`: one arm per listed count, the
/// count after `else` for every other value. A tile keeps its accumulators in a compile-time
/// array, so each row count is an instantiation of its own.
///
/// `by_rows!(mr; 6 5 4 3 2 else 1; tile::<_>(t))`,
/// `by_rows!(mr; 12 11 10 9 8 7 6 5 4 3 2 else 1; tile::<_, 2, false>(t))`.
macro_rules! by_rows {
    ($mr:expr; $($rows:literal)+ else $last:literal; $f:ident::<_ $(, $g:tt)*>$args:tt) => {
        by_rows!(@arms $mr; [$($rows)+]; $last; $f [$($g)*] $args; [])
    };
    (@arms $mr:expr; [$r:literal $($rest:literal)*]; $last:literal; $f:ident [$($g:tt)*]
        $args:tt; [$($arms:tt)*]) => {
        by_rows!(@arms $mr; [$($rest)*]; $last; $f [$($g)*] $args;
            [$($arms)* $r => $f::<$r $(, $g)*>$args,])
    };
    (@arms $mr:expr; []; $last:literal; $f:ident [$($g:tt)*] $args:tt; [$($arms:tt)*]) => {
        match $mr {
            $($arms)*
            _ => $f::<$last $(, $g)*>$args,
        }
    };
}

/// The AVX-512 tiles' epilogue: each accumulator `acc[i][v]` (row `i`, panel `v`) plus the
/// residual row (when `t.res` is not null, rows `t.ldr` apart), stored into `t.c` (rows `t.ldc`
/// apart); with `masked`, one panel of which only the columns in `t.mask` are read and written.
/// Expands inside an `unsafe` block of a function with AVX-512 F enabled.
macro_rules! store_avx512_tile {
    ($acc:expr, $t:expr, $masked:expr) => {
        for (i, acc) in $acc.iter().enumerate() {
            for (v, &y) in acc.iter().enumerate() {
                let off = v * NR;
                let y = if $t.res.is_null() {
                    y
                } else if $masked {
                    _mm512_add_ps(
                        _mm512_maskz_loadu_ps($t.mask, $t.res.add(i * $t.ldr + off)),
                        y,
                    )
                } else {
                    _mm512_add_ps(_mm512_loadu_ps($t.res.add(i * $t.ldr + off)), y)
                };
                if $masked {
                    _mm512_mask_storeu_ps($t.c.add(i * $t.ldc + off), $t.mask, y);
                } else {
                    _mm512_storeu_ps($t.c.add(i * $t.ldc + off), y);
                }
            }
        }
    };
}

/// The operands of an f32 tile sweep: `c[i * ldc + j] = a[i * lda..] · b[.., j] (+ bias[j])
/// (+ res[i * n + j])` for `i < rows`, `j < n`, reducing over `k`; `bias` and `res` may be null.
#[derive(Clone, Copy)]
pub(super) struct Sweep {
    pub rows: usize,
    pub k: usize,
    pub n: usize,
    pub a: *const f32,
    pub lda: usize,
    pub b: Panels,
    pub bias: *const f32,
    pub res: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
}

/// The columns of a product cut into the AVX-512 tiles' widths: up to `vmax` whole panels of
/// 16 side by side, then one where fewer are left, then the partial last panel (masked), each
/// with the bias it starts from.
pub(super) struct ColumnTiles {
    full: usize,
    tail: usize,
    bias: *const f32,
    /// The bias of the partial last panel, zero-padded to 16 columns.
    padded_bias: [f32; NR],
    /// The columns of the partial last panel.
    pub mask: u16,
}

impl ColumnTiles {
    /// The tiles of `n` columns with `bias` (null, or `n` floats).
    ///
    /// # Safety
    /// `bias` null or readable for `n` floats.
    pub unsafe fn new(n: usize, bias: *const f32) -> Self {
        let (full, tail) = (n / NR, n % NR);
        let mut padded_bias = [0.0f32; NR];
        if !bias.is_null() && tail > 0 {
            // SAFETY: `bias` holds n floats.
            padded_bias[..tail]
                .copy_from_slice(unsafe { std::slice::from_raw_parts(bias.add(full * NR), tail) });
        }
        Self {
            full,
            tail,
            bias,
            padded_bias,
            mask: (1u32 << tail).wrapping_sub(1) as u16,
        }
    }

    /// `(p, v, bias)` for each tile in order: its first panel `p`, its width `v` in panels
    /// (`0`: the partial last panel, masked), its bias (null, or `16 * v.max(1)` floats).
    pub fn iter(&self, vmax: usize) -> impl Iterator<Item = (usize, usize, *const f32)> + '_ {
        let tail_bias = if self.bias.is_null() {
            std::ptr::null()
        } else {
            self.padded_bias.as_ptr()
        };
        let mut p = 0;
        std::iter::from_fn(move || {
            if p >= self.full + usize::from(self.tail > 0) {
                return None;
            }
            let v = if p + vmax <= self.full {
                vmax
            } else if p < self.full {
                1
            } else {
                0 // the partial last panel
            };
            let bias = match v {
                0 => tail_bias,
                _ if !self.bias.is_null() => self.bias.wrapping_add(p * NR),
                _ => std::ptr::null(),
            };
            let tile = (p, v, bias);
            p += v.max(1);
            Some(tile)
        })
    }
}

/// `p + offset`, or null where `p` is null (an absent residual stays absent).
pub(super) fn offset_or_null<T>(p: *const T, offset: usize) -> *const T {
    if p.is_null() {
        p
    } else {
        p.wrapping_add(offset)
    }
}
