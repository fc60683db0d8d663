//! `ijepa`: the command-line front end. Each subcommand lives in its own file and only parses
//! flags, calls the library and prints; the logic is in the `ijepa` crate.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod common;
mod embed;
mod export;
mod masks;
mod predict;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ijepa",
    version,
    about = "I-JEPA: masks, models, pretraining and evaluation in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample multi-block masks: statistics and a picture.
    Masks(masks::Args),
    /// Embed images (or a preprocessed .npy) with an official, Hugging Face or native model.
    Embed(embed::Args),
    /// Run encoder, target encoder and predictor on given masks; write every intermediate.
    Predict(predict::Args),
    /// Convert a checkpoint (to a Hugging Face directory or a native file).
    Export(export::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Masks(a) => masks::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Export(a) => export::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
