//! `multimix compare`.

use anyhow::{bail, Result};
use clap::Args;
use multimix::compare::{compare_table, read_run};
use std::path::PathBuf;

/// Options of `multimix compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Evaluated run directories (each with its report.json).
    runs: Vec<PathBuf>,
}

/// Print the table.
pub fn run(args: CompareArgs) -> Result<()> {
    if args.runs.is_empty() {
        bail!("name at least one run directory: multimix compare runs/a runs/b ...");
    }
    let runs = args
        .runs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", compare_table(&runs));
    Ok(())
}
