use anyhow::Result;

/// Run the global orchestrator of a multi-node pretraining run (node 0 can start it itself).
#[derive(clap::Args)]
pub struct Args {
    /// Port to listen on (the nodes' `--coordinator HOST:PORT`).
    #[arg(long)]
    pub port: u16,
}

#[cfg(feature = "collective")]
pub fn run(a: Args) -> Result<()> {
    eprintln!("coordinator listening on port {}", a.port);
    Ok(ijepa::train::distributed::run_coordinator(a.port)?)
}

#[cfg(not(feature = "collective"))]
pub fn run(_: Args) -> Result<()> {
    anyhow::bail!("this build has no `collective` feature")
}
