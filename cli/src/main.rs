//! `care`: the command line of Care Commons. Every command works on a care home
//! through the `care` crate's public API; errors are one sentence on stderr.

mod args;
mod commands;
mod when;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
