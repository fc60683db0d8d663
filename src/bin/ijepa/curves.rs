//! `ijepa curves`: loss, effective rank and online kNN of several runs against CPU time.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ijepa::train::curves::{Run, plot_runs};
use ijepa::train::monitor::{MONITOR, read_records};

/// Compare runs: one PNG with three panels (epoch loss, effective rank, online kNN top-1)
/// against the CPU minutes each run used, read from the runs' monitor.csv.
#[derive(clap::Args)]
pub struct Args {
    /// Training folders (each with a monitor.csv).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Legend names, one per run, in order (default: the folders' names).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.labels.is_empty() || a.labels.len() == a.runs.len(),
        "--label given {} times for {} runs: give one per run or none",
        a.labels.len(),
        a.runs.len()
    );
    let mut runs = Vec::new();
    for (i, dir) in a.runs.iter().enumerate() {
        let path = dir.join(MONITOR);
        let records = read_records(&path).with_context(|| format!("run {}", dir.display()))?;
        anyhow::ensure!(
            !records.is_empty(),
            "{} has no epoch rows in this program's layout",
            path.display()
        );
        let label = a.labels.get(i).cloned().unwrap_or_else(|| {
            dir.file_name()
                .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into())
        });
        runs.push(Run { label, records });
    }
    plot_runs(&runs, &a.output)?;
    println!("wrote {}", a.output.display());
    Ok(())
}
