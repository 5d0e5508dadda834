//! The `lifeboat` command: parses arguments, wires the crates together, prints results.
//! No domain logic lives here.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod docker_cmd;
mod dr_cmd;
mod kube_cmd;
mod progress;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let json = args.json;
    match commands::run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let msg = format!("{e:#}");
            if json && !std::io::stdout().is_terminal() {
                println!("{}", serde_json::json!({ "error": msg }));
            }
            eprintln!("lifeboat: error: {msg}");
            ExitCode::from(1)
        }
    }
}
