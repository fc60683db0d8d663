//! Configuration errors: which setting (a YAML key path, a flag, a model field) is wrong, what
//! it should be and what it is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting with a value it cannot have: `optimization.lr: expected a number, found "lots"`.
    #[error("invalid configuration: {0}")]
    Value(Setting),
    /// A key the layout does not have, or a required key that is missing (serde's words).
    #[error("invalid configuration: {key}: {error}")]
    Layout {
        key: String,
        error: serde_yaml_ng::Error,
    },
    /// A configuration file that is not YAML.
    #[error("invalid YAML: {0}")]
    Yaml(serde_yaml_ng::Error),
    /// A `--set` item that cannot be applied.
    #[error("invalid configuration: --set '{item}': {problem}")]
    Override {
        item: String,
        problem: OverrideProblem,
    },
    /// A setting that needs others: `meta.embed_dim needs meta.depth and meta.num_heads`.
    #[error("invalid configuration: {key} needs {needs}")]
    Needs { key: String, needs: String },
    /// A name not in a fixed list (model preset, device).
    #[error("invalid configuration: unknown {what} '{name}' (known: {known})")]
    Unknown {
        what: &'static str,
        name: String,
        known: String,
    },
    /// An environment variable that cannot be honoured; `why` names it and its value.
    #[error("invalid configuration: {why}")]
    Env { var: &'static str, why: String },
    /// Training into a folder that holds a run, without `--resume` or `--overwrite`.
    #[error(
        "invalid configuration: {} holds a run already: pass --resume to continue it or --overwrite to start afresh (its checkpoints and log are removed)",
        folder.display()
    )]
    RunExists { folder: PathBuf },
}

/// What is wrong with one `--set SECTION.KEY=VALUE` item.
#[derive(Debug, thiserror::Error)]
pub enum OverrideProblem {
    #[error("expected SECTION.KEY=VALUE")]
    Syntax,
    #[error("bad value: {0}")]
    Value(serde_yaml_ng::Error),
    #[error("'{0}' is not a section")]
    NotASection(String),
}

impl ConfigError {
    /// `key: expected ..., found ...`.
    pub fn value(
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl std::fmt::Display,
    ) -> Self {
        ConfigError::Value(Setting::new(key, expected, found))
    }

    /// `key needs ...`.
    pub fn needs(key: impl Into<String>, needs: impl Into<String>) -> Self {
        ConfigError::Needs {
            key: key.into(),
            needs: needs.into(),
        }
    }
}

/// One setting with a value it cannot have: `key: expected ..., found ...`. Said by
/// configuration errors and by the data and evaluation code's setting errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub expected: String,
    pub found: String,
}

impl Setting {
    pub fn new(
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl std::fmt::Display,
    ) -> Self {
        Setting {
            key: key.into(),
            expected: expected.into(),
            found: found.to_string(),
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.key, self.expected, self.found
        )
    }
}
