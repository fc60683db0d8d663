//! Tests of the data pipeline (one test binary to keep link times down).

mod common;
#[rustfmt::skip]
mod pil_golden;

mod augment;
mod folder;
mod idx;
mod loader;
