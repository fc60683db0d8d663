//! What the benches share: timing two variants against each other in one process.

use std::time::Instant;

/// Best seconds of `f` and of `g` over 15 alternating runs each (this machine's speed drifts
/// within seconds: alternating keeps both variants under the same conditions).
pub fn best_pair(mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    let time = |h: &mut dyn FnMut()| {
        let t = Instant::now();
        h();
        t.elapsed().as_secs_f64()
    };
    (0..15).fold((f64::MAX, f64::MAX), |(bf, bg), _| {
        (bf.min(time(&mut f)), bg.min(time(&mut g)))
    })
}
