"""Fits the coefficients of erf_f32 / exp2 in src/math.rs and simulates the f32 code.

Weighted minimax fits via Lawson's iteratively reweighted least squares (numpy only):
  region A, |x| < 0.921875:  erf(x) = x + x*A(x^2), A degree 5, relative error of erf;
  region B, |x| < 3.9375:    erfc(|x|) = 2^B(|x|), B degree 6, absolute error of erf;
  2^f on [-0.5, 0.5]:        1 + f*E(f), E degree 4, relative error.
The simulation repeats the Rust evaluation order in float32 (no FMA).
"""
import math
import numpy as np

erf = np.vectorize(math.erf)
erfc = np.vectorize(math.erfc)
f32 = np.float32


def lawson(A, y, w, iters=300):
    lam = np.ones(len(y)) / len(y)
    for _ in range(iters):
        sw = np.sqrt(lam)
        c, *_ = np.linalg.lstsq(A * (w * sw)[:, None], y * w * sw, rcond=None)
        e = np.abs(w * (A @ c - y))
        lam = lam * e
        lam /= lam.sum()
    return c, e.max()


SPLIT = float(f32(0.921875))
SAT = float(f32(3.9375))

x = np.linspace(1e-4, SPLIT, 4000)
cA, eA = lawson(np.vander(x * x, 6, increasing=True), erf(x) / x - 1, x / erf(x))
t = np.linspace(SPLIT, SAT, 6000)
cB, eB = lawson(np.vander(t, 7, increasing=True), np.log2(erfc(t)), erfc(t) * math.log(2))
f = np.linspace(-0.5, 0.5, 4000)
cE, eE = lawson(np.vander(f, 5, increasing=True), (2.0**f - 1) / f, f / 2.0**f)
print(f"fit errors: A rel {eA:.2e}, B abs {eB:.2e}, exp2 rel {eE:.2e}")
cA, cB = cA.astype(f32), cB.astype(f32)
cE = np.concatenate([[1.0], cE]).astype(f32)
for name, c in (("A", cA), ("B", cB), ("E", cE)):
    print(name, [repr(float(v)) for v in c])

MAGIC = f32(12582912.0)


def exp2core(u):
    k = (u + MAGIC).astype(f32)
    n = (k - MAGIC).astype(f32)
    fr = (u - n).astype(f32)
    p = cE[-1]
    for c in cE[-2::-1]:
        p = (p * fr + c).astype(f32)
    sc = ((k.view(np.uint32) << np.uint32(23)) + np.uint32(127 << 23)).view(f32)
    return (p * sc).astype(f32)


def erf32(x):
    x = x.astype(f32)
    a = np.abs(x)
    s = (x * x).astype(f32)
    r = cA[-1]
    for c in cA[-2::-1]:
        r = (r * s + c).astype(f32)
    small = (x * r + x).astype(f32)
    with np.errstate(all="ignore"):
        q = cB[-1]
        for c in cB[-2::-1]:
            q = (q * a + c).astype(f32)
        e = exp2core(q)
    e = np.where(a >= f32(SAT), f32(0), e)
    large = np.copysign((f32(1) - e).astype(f32), x)
    return np.where(a < f32(SPLIT), small, large)


rng = np.random.default_rng(0)
xs = np.concatenate([np.linspace(-10, 10, 2_000_001).astype(f32), rng.uniform(-4.5, 4.5, 3_000_000).astype(f32)])
e = np.abs(erf32(xs).astype(np.float64) - erf(xs.astype(np.float64)))
print(f"simulated erf_f32 max abs error {e.max():.3e} at {xs[e.argmax()]}")
u = rng.uniform(-126, 0, 2_000_000).astype(f32)
print(f"simulated exp2 max rel error {np.max(np.abs(exp2core(u) / 2.0 ** u.astype(np.float64) - 1)):.3e}")
