//! GPU kernels compiled and autotuned once, not once per process: cubecl's on-disk caches
//! (the autotune results, keyed by device and problem shape, and on CUDA the compiled PTX)
//! kept in one folder, so that a second process on the same GPU starts in seconds.
//!
//! The folder: `$IJEPA_KERNEL_CACHE` if set, else `$XDG_CACHE_HOME/ijepa/kernels`, else
//! `$HOME/.cache/ijepa/kernels`. Deleting it only costs the next run its warm-up again.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The environment variable that overrides the folder.
pub const ENV: &str = "IJEPA_KERNEL_CACHE";

/// The cache folder this process uses (see the module documentation).
pub fn dir() -> Result<PathBuf> {
    dir_from(|name| std::env::var_os(name))
}

/// [`dir`] with the environment given by `var`.
fn dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf> {
    let var = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(ENV) {
        return Ok(dir);
    }
    var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .map(|base| base.join("ijepa").join("kernels"))
        .ok_or_else(|| {
            Error::from(crate::error::ConfigError::Env {
                var: ENV,
                why: format!(
                    "no folder for the GPU kernel cache: set {ENV} (or HOME / XDG_CACHE_HOME)"
                ),
            })
        })
}

/// Point cubecl's autotune and compilation caches at [`dir`] (created if missing), keeping
/// any other setting of a `cubecl.toml` and the `CUBECL_*` variables. Call it before the
/// first GPU operation of the process: cubecl reads its configuration once. Returns the
/// folder in effect (another one if cubecl was configured before this call).
#[cfg(feature = "cube-kernels")]
pub fn configure() -> Result<PathBuf> {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    let dir = dir()?;
    // The I/O error names the folder; IJEPA_KERNEL_CACHE picks another one.
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    {
        let mut state = CubeClRuntimeConfig::storage().lock();
        if state.is_none() {
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            config.autotune.cache = CacheConfig::File(dir.clone());
            config.compilation.cache = Some(CacheConfig::File(dir));
            *state = Some(std::sync::Arc::new(config));
        }
    }
    Ok(CubeClRuntimeConfig::get().autotune.cache.root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_follows_the_environment() {
        fn env<'a>(
            pairs: &'a [(&'static str, &'static str)],
        ) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        }
        let all = [
            (ENV, "/tmp/kc"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(dir_from(env(&all)).unwrap(), PathBuf::from("/tmp/kc"));
        let no_var = [(ENV, ""), ("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(
            dir_from(env(&no_var)).unwrap(),
            PathBuf::from("/xdg/ijepa/kernels")
        );
        let home = [("HOME", "/home/u")];
        assert_eq!(
            dir_from(env(&home)).unwrap(),
            PathBuf::from("/home/u/.cache/ijepa/kernels")
        );
        assert!(dir_from(env(&[])).unwrap_err().to_string().contains(ENV));
    }
}
