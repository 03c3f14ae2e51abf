//! `multimix zoo list` and `multimix zoo download`.

use anyhow::Result;
use clap::{Args, Subcommand};
use multimix_hub::{Hub, Zoo};

use super::hub::HubFlags;

/// Options of `multimix zoo`.
#[derive(Debug, Args)]
pub struct ZooArgs {
    #[command(subcommand)]
    command: ZooCommand,
}

#[derive(Debug, Subcommand)]
enum ZooCommand {
    /// Print the zoo's entries as a table.
    List,
    /// Download an entry's config and weights (checked against the card's sha256 when it has
    /// one); prints the local directory last.
    Download(DownloadArgs),
}

/// Options of `multimix zoo download`.
#[derive(Debug, Args)]
struct DownloadArgs {
    /// The entry's name (see `multimix zoo list`).
    name: String,
    #[command(flatten)]
    hub: HubFlags,
}

/// Run `multimix zoo`.
pub fn run(args: ZooArgs) -> Result<()> {
    let zoo = Zoo::builtin()?;
    match args.command {
        ZooCommand::List => print!("{}", zoo.table()),
        ZooCommand::Download(args) => {
            let entry = zoo.entry(&args.name)?;
            let dir = entry.download(&Hub::new(args.hub.options())?)?;
            println!("{}", dir.display());
        }
    }
    Ok(())
}
