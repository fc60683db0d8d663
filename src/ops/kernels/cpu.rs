//! Which code the kernels run: one process-wide choice of instruction set, made once.
//!
//! Every hand-written kernel exists in up to three copies: AVX-512 (F, BW, VL, DQ, with FMA:
//! 16 f32 lanes, 32 vector registers), AVX2 + FMA (8 lanes, 16 registers) and the portable
//! build's baseline (SSE2 on x86-64, or whatever the target offers elsewhere). The best one the
//! CPU runs is chosen the first time a kernel asks; `IJEPA_CPU_KERNELS=avx512|avx2|portable`
//! forces one (to test each path on one machine, or to compare them). A forced path the CPU
//! cannot run is an error: [`check`] reports it (the CLI and the library's entry points call
//! it before any work), and a kernel reached without that check panics with the same message
//! rather than executing instructions the CPU lacks.
//!
//! bf16 matrix products (`vdpbf16ps`) are available on the AVX-512 path of CPUs with
//! `avx512_bf16` ([`bf16_products`]).
//!
//! `gemm` (the GEMM crate behind burn-flex and this crate's weight gradients) picks its own
//! instruction set from the CPU's features and cannot be told otherwise: a forced path changes
//! this crate's kernels only, gemm's calls run its best code in every case.

use std::sync::OnceLock;

/// The instruction set the kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// AVX-512 F/BW/VL/DQ with FMA (Intel Skylake-SP and later servers, AMD Zen 4 and later).
    Avx512,
    /// AVX2 with FMA (x86-64 since Haswell / Zen 1).
    Avx2,
    /// The build's baseline instructions (SSE2 on x86-64), on any CPU.
    Portable,
}

/// The environment variable that forces a path.
pub const ENV: &str = "IJEPA_CPU_KERNELS";

impl KernelPath {
    /// All paths, best first.
    pub const ALL: [KernelPath; 3] = [Self::Avx512, Self::Avx2, Self::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                Self::Avx2.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best path this CPU runs.
    pub fn best() -> Self {
        Self::ALL
            .into_iter()
            .find(|p| p.supported())
            .unwrap_or(Self::Portable)
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The path for a value of [`ENV`] (`None`: unset or empty, the best one), or why not.
fn choose(request: Option<&str>) -> Result<KernelPath, String> {
    let Some(req) = request.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(KernelPath::best());
    };
    let path = KernelPath::ALL
        .into_iter()
        .find(|p| p.name() == req)
        .ok_or_else(|| format!("{ENV}={req}: unknown kernel path; use avx512, avx2 or portable"))?;
    if !path.supported() {
        return Err(format!(
            "{ENV}={req}: this CPU cannot run the {req} kernels (it lacks {}); it runs: {}",
            match path {
                KernelPath::Avx512 => "one of avx512f, avx512bw, avx512vl, avx512dq, avx2, fma",
                _ => "avx2 or fma",
            },
            KernelPath::ALL
                .into_iter()
                .filter(|p| p.supported())
                .map(KernelPath::name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(path)
}

fn chosen() -> &'static Result<KernelPath, String> {
    static CHOSEN: OnceLock<Result<KernelPath, String>> = OnceLock::new();
    CHOSEN.get_or_init(|| choose(std::env::var(ENV).ok().as_deref()))
}

/// The path of this process, or the error of an unusable `IJEPA_CPU_KERNELS`.
pub fn check() -> crate::Result<KernelPath> {
    chosen()
        .clone()
        .map_err(|why| crate::error::ConfigError::Env { var: ENV, why }.into())
}

/// The path of this process (the kernels' dispatch: one atomic load after the first call).
///
/// # Panics
/// When `IJEPA_CPU_KERNELS` asks for a path this CPU cannot run and nothing called [`check`]
/// first.
#[inline]
pub fn path() -> KernelPath {
    match chosen() {
        Ok(p) => *p,
        Err(e) => panic!("{e}"),
    }
}

/// Whether the bf16 matrix products can run: the AVX-512 path on a CPU with `avx512_bf16`.
pub fn bf16_products() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            path() == KernelPath::Avx512 && std::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// One line naming the path (and bf16 support), for the CLI's reports.
pub fn describe() -> String {
    let p = path();
    let how = if std::env::var(ENV).is_ok_and(|v| !v.trim().is_empty()) {
        "forced"
    } else {
        "detected"
    };
    let bf16 = if bf16_products() {
        ", bf16 products"
    } else {
        ""
    };
    format!("cpu kernels {p} ({how}{bf16})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_and_checked_against_the_cpu() {
        assert_eq!(choose(None), Ok(KernelPath::best()));
        assert_eq!(choose(Some(" ")), Ok(KernelPath::best()));
        assert_eq!(choose(Some("portable")), Ok(KernelPath::Portable));
        let e = choose(Some("avx3")).unwrap_err();
        assert!(e.contains("unknown kernel path"), "{e}");
        for p in KernelPath::ALL {
            match choose(Some(p.name())) {
                Ok(got) => assert!(p.supported() && got == p),
                Err(e) => assert!(!p.supported() && e.contains("cannot run"), "{e}"),
            }
        }
        // the best path is supported, and every better one is not
        let best = KernelPath::best();
        assert!(best.supported());
        for p in KernelPath::ALL {
            if p == best {
                break;
            }
            assert!(!p.supported());
        }
    }
}
