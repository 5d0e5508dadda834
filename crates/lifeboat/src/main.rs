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
    logs(args.log_format);
    let json = args.json;
    let log_json = args.log_format == cli::LogFormat::Json;
    match commands::run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let msg = error_line(&e);
            if json && !std::io::stdout().is_terminal() {
                println!("{}", serde_json::json!({ "error": msg }));
            }
            if log_json {
                tracing::error!("{msg}");
            } else {
                eprintln!("lifeboat: error: {msg}");
            }
            ExitCode::from(1)
        }
    }
}

/// Log lines on stderr. Human: warnings (and worse) of every crate as `lifeboat: warning: ...`
/// (a daemon's events are printed by its command). JSON: one object per line from `info` up, with
/// the time, level, message and fields (a daemon's events come through here with their kind).
fn logs(format: cli::LogFormat) {
    if format == cli::LogFormat::Json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::INFO)
            .with_target(false)
            .init();
        return;
    }
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
}

/// An error and its causes in one line: each cause is added unless the line already says it
/// (library errors name their cause in their own message and keep it as `source` too).
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line = format!("{line}: {c}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    /// A failed step names its cause in its message and keeps it as its source: said once.
    #[test]
    fn an_error_whose_message_names_its_cause_prints_it_once() {
        let step = lifeboat_orchestrator::OrchestratorError::Step {
            kind: "failover",
            app: "web".into(),
            step: "start".into(),
            id: "op1".into(),
            cause: Box::new(lifeboat_orchestrator::OrchestratorError::Unreachable {
                site: "b".into(),
                source: "connection refused".into(),
            }),
        };
        let line = super::error_line(&anyhow::Error::new(step).context("plan p"));
        assert_eq!(line.matches("connection refused").count(), 1, "{line}");
        assert!(
            line.starts_with("plan p: failover of web stopped at step start"),
            "{line}"
        );
    }
}
