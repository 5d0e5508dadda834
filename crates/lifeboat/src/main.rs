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
    // Warnings (and worse) of every crate go to stderr, as `lifeboat: warning: ...`.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .event_format(
            tracing_subscriber::fmt::format()
                .without_time()
                .with_target(false)
                .with_level(false),
        )
        .fmt_fields(tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
            if field.name() == "message" {
                write!(w, "lifeboat: warning: {value:?}")
            } else {
                write!(w, " {}={value:?}", field.name())
            }
        }))
        .init();
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
