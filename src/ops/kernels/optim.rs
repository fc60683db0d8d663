//! In-place optimiser updates over flat parameter buffers: AdamW and the EMA target update.
//!
//! Why: updating each parameter tensor through burn's tensor ops allocates several
//! temporaries per step per tensor. These are single fused passes over the flat
//! buffers, chunked over the rayon pool (purely elementwise, hence deterministic).
//! AdamW restates torch's `_single_tensor_adam` with decoupled weight decay; scalar
//! factors are computed in f64 (like the Python floats in torch) and rounded to f32.

use crate::ops::kernels::math::simd_fn;
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 32 * 1024;

/// AdamW hyper-parameters (torch names). `weight_decay = 0` for undecayed groups.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The f32 factors of one AdamW step, from the f64 hyper-parameters (as torch's Python floats).
#[derive(Debug, Clone, Copy)]
pub struct Scalars {
    /// `1 - lr·wd`; `None` when `wd == 0` (torch skips the multiply).
    pub decay: Option<f32>,
    /// `1 - β1`
    pub w1: f32,
    pub b2: f32,
    /// `1 - β2`
    pub w2: f32,
    /// `lr / (1 - β1^t)`
    pub step_size: f32,
    /// `sqrt(1 - β2^t)`
    pub bc2_sqrt: f32,
    pub eps: f32,
}

impl Scalars {
    /// The factors of step `step` (1-based, the count *after* increment).
    pub fn new(hp: &AdamW, step: u64) -> Self {
        assert!(step >= 1, "step is 1-based");
        let t = step as f64;
        Self {
            decay: (hp.weight_decay != 0.0).then_some((1.0 - hp.lr * hp.weight_decay) as f32),
            w1: (1.0 - hp.beta1) as f32,
            b2: hp.beta2 as f32,
            w2: (1.0 - hp.beta2) as f32,
            step_size: (hp.lr / (1.0 - hp.beta1.powf(t))) as f32,
            bc2_sqrt: (1.0 - hp.beta2.powf(t)).sqrt() as f32,
            eps: hp.eps as f32,
        }
    }
}

simd_fn! {
    /// [`adamw_step`] on one chunk of the four buffers.
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &Scalars) {
        let it = p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut()));
        let moments = |g: f32, m: &mut f32, v: &mut f32| {
            let mn = *m + (g - *m) * s.w1;
            let vn = *v * s.b2 + s.w2 * g * g;
            *m = mn;
            *v = vn;
            mn / (vn.sqrt() / s.bc2_sqrt + s.eps)
        };
        match s.decay {
            Some(decay) => it.for_each(|((p, &g), (m, v))| {
                let pd = *p * decay;
                *p = pd - s.step_size * moments(g, m, v);
            }),
            // skip the multiply entirely, as torch does for weight_decay == 0
            None => it.for_each(|((p, &g), (m, v))| {
                *p -= s.step_size * moments(g, m, v);
            }),
        }
    }
}

simd_fn! {
    /// `t = t·m + e·om` elementwise.
    fn ema_chunk(t: &mut [f32], e: &[f32], m: f32, om: f32) {
        for (t, &e) in t.iter_mut().zip(e) {
            *t = *t * m + e * om;
        }
    }
}

/// One AdamW step, in place; `step` is the 1-based step count *after* increment.
///
/// Per element, in f32:
/// `p *= 1 - lr·wd` (only when `wd != 0`); `m += (g - m)·(1 - β1)`;
/// `v = β2·v + (1 - β2)·g·g`; `p -= (lr / (1 - β1^t)) · m / (sqrt(v)/sqrt(1 - β2^t) + eps)`.
pub fn adamw_step(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    hp: &AdamW,
    step: u64,
) {
    let len = param.len();
    assert_eq!(grad.len(), len);
    assert_eq!(exp_avg.len(), len);
    assert_eq!(exp_avg_sq.len(), len);
    let s = Scalars::new(hp, step);
    let update = |((p, g), (m, v))| adamw_chunk(p, g, m, v, &s);
    if len <= CHUNK {
        // most parameters (biases, norms): handing them to the pool costs more than the update
        update(((param, grad), (exp_avg, exp_avg_sq)));
        return;
    }
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(
            exp_avg
                .par_chunks_mut(CHUNK)
                .zip(exp_avg_sq.par_chunks_mut(CHUNK)),
        )
        .for_each(update);
}

/// `(m, 1 - m)` of the EMA update, computed in f64 and rounded to f32.
pub fn ema_factors(momentum: f64) -> (f32, f32) {
    (momentum as f32, (1.0 - momentum) as f32)
}

/// EMA target update in place: `target = target·m + online·(1 - m)`, with `m` and
/// `1 - m` (computed in f64) rounded to f32 first.
pub fn ema_update(target: &mut [f32], online: &[f32], momentum: f64) {
    assert_eq!(target.len(), online.len());
    let (m, om) = ema_factors(momentum);
    let update = |(t, e)| ema_chunk(t, e, m, om);
    if target.len() <= CHUNK {
        update((target, online));
    } else {
        target
            .par_chunks_mut(CHUNK)
            .zip(online.par_chunks(CHUNK))
            .for_each(update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels::testutil::*;

    /// Scalar f64 restatement of the same formulas (scalars in f64, state in f64).
    fn adamw_ref(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], hp: &AdamW, t: u64) {
        let t = t as f64;
        for i in 0..p.len() {
            if hp.weight_decay != 0.0 {
                p[i] *= 1.0 - hp.lr * hp.weight_decay;
            }
            m[i] += (g[i] - m[i]) * (1.0 - hp.beta1);
            v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g[i] * g[i];
            let denom = v[i].sqrt() / (1.0 - hp.beta2.powf(t)).sqrt() + hp.eps;
            p[i] -= hp.lr / (1.0 - hp.beta1.powf(t)) * m[i] / denom;
        }
    }

    #[test]
    fn adamw_matches_f64_restatement_over_steps() {
        let mut rg = rng(50);
        let n = 70_001;
        for &wd in &[0.05f64, 0.0] {
            let hp = AdamW {
                lr: 1.5e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: wd,
            };
            let mut p = uniform(&mut rg, n, 1.0);
            let mut m = vec![0.0f32; n];
            let mut v = vec![0.0f32; n];
            let (mut p64, mut m64, mut v64) = (to_f64(&p), vec![0.0; n], vec![0.0; n]);
            for step in 1..=20u64 {
                let mut g = uniform(&mut rg, n, 1e-2);
                g[0] = 0.0; // zero-grad element: update from m alone
                let g64 = to_f64(&g);
                adamw_step(&mut p, &g, &mut m, &mut v, &hp, step);
                adamw_ref(&mut p64, &g64, &mut m64, &mut v64, &hp, step);
            }
            // After 20 steps the parameters moved by ~20·lr; compare the *update* too.
            let e = assert_close(&format!("adamw p (wd={wd})"), &p, &p64, 1e-6);
            assert!(e.max_abs < 2e-6);
            assert_close(&format!("adamw m (wd={wd})"), &m, &m64, 1e-5);
            assert_close(&format!("adamw v (wd={wd})"), &v, &v64, 1e-5);
        }
    }

    #[test]
    fn adamw_single_step_exact_formula() {
        // One element, compared against the f32 formula spelled out by hand.
        let hp = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.04,
        };
        let (mut p, g, mut m, mut v) = ([0.5f32], [0.25f32], [0.01f32], [0.002f32]);
        adamw_step(&mut p, &g, &mut m, &mut v, &hp, 3);
        let pd = 0.5f32 * (1.0 - 1e-3 * 0.04f64) as f32;
        let mn = 0.01f32 + (0.25f32 - 0.01f32) * ((1.0 - 0.9f64) as f32);
        let vn = 0.002f32 * 0.95f32 + ((1.0 - 0.95f64) as f32) * 0.25 * 0.25;
        let ss = (1e-3 / (1.0 - 0.9f64.powf(3.0))) as f32;
        let bc2 = (1.0 - 0.95f64.powf(3.0)).sqrt() as f32;
        let want = pd - ss * (mn / (vn.sqrt() / bc2 + 1e-8f32));
        assert_eq!(p[0].to_bits(), want.to_bits());
        assert_eq!(m[0].to_bits(), mn.to_bits());
        assert_eq!(v[0].to_bits(), vn.to_bits());
    }

    #[test]
    fn ema_matches_f64() {
        let mut rg = rng(51);
        // on the pool, and below one chunk on the calling thread
        for n in [50_003, 100] {
            ema_matches_f64_at(&mut rg, n);
        }
    }

    fn ema_matches_f64_at(rg: &mut rand_chacha::ChaCha8Rng, n: usize) {
        let mut t = uniform(rg, n, 1.0);
        let e = uniform(rg, n, 1.0);
        let mut t64 = to_f64(&t);
        for &mom in &[0.996f64, 0.9995, 1.0] {
            ema_update(&mut t, &e, mom);
            for (a, &b) in t64.iter_mut().zip(&e) {
                *a = *a * mom + b as f64 * (1.0 - mom);
            }
        }
        assert_close("ema", &t, &t64, 1e-6);
        // momentum 1 leaves the target bitwise unchanged
        let before = t.clone();
        ema_update(&mut t, &e, 1.0);
        assert_eq!(bits(&before), bits(&t));
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let mut rg = rng(52);
        let n = 200_003;
        let p0 = uniform(&mut rg, n, 1.0);
        let g = uniform(&mut rg, n, 1.0);
        let hp = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        };
        assert_deterministic("optim", || {
            let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
            adamw_step(&mut p, &g, &mut m, &mut v, &hp, 1);
            adamw_step(&mut p, &g, &mut m, &mut v, &hp, 2);
            let mut t = p0.clone();
            ema_update(&mut t, &p, 0.996);
            vec![p, m, v, t]
        });
    }
}
