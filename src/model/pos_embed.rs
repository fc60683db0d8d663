//! The fixed 2-D sin-cos position embedding of the official code (`get_2d_sincos_pos_embed`),
//! computed in f64 and cast to f32. For patch (row i, column j) of a `grid x grid` layout
//! (token n = i*grid + j) and k in 0..D/4, with w_k = 10000^(-k/(D/4)):
//! `[sin(j w), cos(j w), sin(i w), cos(i w)]`; the first half encodes the column (the official
//! code calls it `emb_h` but feeds it the meshgrid's first output, the x index).

/// Row-major `[grid*grid, dim]` table. `dim` must be divisible by 4 (checked by the configs).
pub fn sincos_2d(dim: usize, grid: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut table = Vec::with_capacity(grid * grid * dim);
    for row in 0..grid {
        for col in 0..grid {
            for &w in &omega {
                table.push((col as f64 * w).sin() as f32);
            }
            for &w in &omega {
                table.push((col as f64 * w).cos() as f32);
            }
            for &w in &omega {
                table.push((row as f64 * w).sin() as f32);
            }
            for &w in &omega {
                table.push((row as f64 * w).cos() as f32);
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_official_formula() {
        let (dim, grid) = (8, 3);
        let t = sincos_2d(dim, grid);
        assert_eq!(t.len(), grid * grid * dim);
        // token (row 1, col 2): quarter 2, w = [1, 0.01]
        let n = grid + 2;
        let v = &t[n * dim..(n + 1) * dim];
        let expect = [
            2f64.sin(),
            0.02f64.sin(),
            2f64.cos(),
            0.02f64.cos(),
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
        ];
        for (a, b) in v.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-7, "{a} vs {b}");
        }
    }
}
