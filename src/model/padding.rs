//! Static shapes: the collator's token counts change from batch to batch (every list is cut
//! to the batch minimum), and on a GPU every new shape means kernels compiled and autotuned
//! anew. Padding the context and target index lists up to a few bucket sizes gives a run a
//! handful of shapes instead; the padded tokens are kept out of the attention's keys
//! ([`crate::ops::attention`]) and out of the loss ([`crate::train::loss::loss_valid`]), so
//! the outputs and gradients of the real tokens are those of the unpadded batch.

use serde::{Deserialize, Serialize};

use super::gather::MaskIndices;
use crate::error::Result;

/// Whether batches are padded to bucket sizes (`meta.static_shapes`: `auto`, `true` / `on`,
/// `false` / `off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "Setting")]
pub enum StaticShapes {
    /// On for GPUs, off for the CPU (where a new shape costs nothing and padding costs work).
    #[default]
    Auto,
    /// Always pad.
    On,
    /// Never pad.
    Off,
}

impl StaticShapes {
    /// Resolve `Auto` for a device: pad on a GPU only.
    pub fn enabled(self, gpu: bool) -> bool {
        match self {
            Self::Auto => gpu,
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// What YAML may hold: a boolean or one of the names.
#[derive(Deserialize)]
#[serde(untagged)]
enum Setting {
    Bool(bool),
    Name(String),
}

impl TryFrom<Setting> for StaticShapes {
    type Error = String;
    fn try_from(s: Setting) -> std::result::Result<Self, String> {
        match s {
            Setting::Bool(true) => Ok(Self::On),
            Setting::Bool(false) => Ok(Self::Off),
            Setting::Name(name) => name.parse(),
        }
    }
}

impl std::str::FromStr for StaticShapes {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" | "true" => Ok(Self::On),
            "off" | "false" => Ok(Self::Off),
            other => Err(format!(
                "unknown static-shapes setting '{other}' (auto, on or off)"
            )),
        }
    }
}

/// The bucket a list of `k` tokens is padded to: four sizes per octave (steps of a quarter of
/// the octave's lower power of two, at least 8: 8, 16, ..., 64, 80, 96, 112, 128, 160, ...),
/// so at most a quarter more work (or under 8 tokens more), never above `num_patches` (the image's own token count,
/// itself a fixed shape).
pub fn bucket(k: usize, num_patches: usize) -> usize {
    if k == 0 {
        return 0;
    }
    let octave = usize::BITS - 1 - (k.max(2) - 1).leading_zeros();
    let step = (1usize << octave.saturating_sub(2)).max(8);
    k.div_ceil(step)
        .saturating_mul(step)
        .min(num_patches.max(k))
}

/// Both mask sets of a batch padded to their buckets.
pub fn pad_batch(
    masks_enc: &MaskIndices,
    masks_pred: &MaskIndices,
    num_patches: usize,
) -> Result<(MaskIndices, MaskIndices)> {
    Ok((
        masks_enc.padded(bucket(masks_enc.valid(), num_patches))?,
        masks_pred.padded(bucket(masks_pred.valid(), num_patches))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_few_and_waste_at_most_a_quarter() {
        let got: Vec<usize> = [1, 8, 9, 33, 40, 64, 65, 80, 81, 129, 190, 195, 196]
            .iter()
            .map(|&k| bucket(k, 196))
            .collect();
        assert_eq!(got, [8, 8, 16, 40, 40, 64, 80, 80, 96, 160, 192, 196, 196]);
        let mut sizes: Vec<usize> = (1..=196).map(|k| bucket(k, 196)).collect();
        for k in 1..=196 {
            let b = bucket(k, 196);
            assert!(b >= k && b <= 196, "{k} -> {b}");
            assert!(
                b - k < 8 || (b - k) * 4 <= k,
                "{k} -> {b}: more than a quarter"
            );
        }
        sizes.dedup();
        assert_eq!(sizes.len(), 15, "{sizes:?}");
        assert_eq!(bucket(300, 196), 300, "never below k");
    }

    #[test]
    fn padding_repeats_the_last_real_index_and_remembers_the_count() {
        let m = MaskIndices::new(&[vec![vec![3, 1, 4], vec![0, 5, 9]]], 16).unwrap();
        let p = m.padded(5).unwrap();
        assert_eq!((p.k(), p.valid(), p.is_padded()), (5, 3, true));
        assert_eq!(p.as_flat(), &[3, 1, 4, 4, 4, 0, 5, 9, 9, 9]);
        let again = p.padded(6).unwrap();
        assert_eq!(again.as_flat(), &[3, 1, 4, 4, 4, 4, 0, 5, 9, 9, 9, 9]);
        assert_eq!(m.padded(3).unwrap(), m);
        assert!(m.padded(2).is_err());
        let (e, t) = pad_batch(&m, &p, 16).unwrap();
        assert_eq!((e.k(), e.valid(), t.k(), t.valid()), (8, 3, 8, 3));
    }

    #[test]
    fn settings_parse_and_resolve() {
        assert_eq!("auto".parse(), Ok(StaticShapes::Auto));
        assert_eq!("true".parse(), Ok(StaticShapes::On));
        assert_eq!("off".parse(), Ok(StaticShapes::Off));
        assert!("sometimes".parse::<StaticShapes>().is_err());
        assert!(StaticShapes::Auto.enabled(true) && !StaticShapes::Auto.enabled(false));
        assert!(StaticShapes::On.enabled(false) && !StaticShapes::Off.enabled(true));
        for (yaml, want) in [
            ("true", StaticShapes::On),
            ("false", StaticShapes::Off),
            ("on", StaticShapes::On),
            ("auto", StaticShapes::Auto),
        ] {
            let got: StaticShapes = serde_yaml_ng::from_str(yaml).unwrap();
            assert_eq!(got, want, "{yaml}");
        }
        assert!(serde_yaml_ng::from_str::<StaticShapes>("2").is_err());
        assert_eq!(
            serde_yaml_ng::to_string(&StaticShapes::On).unwrap().trim(),
            "on"
        );
    }
}
