//! `client`: parse flags, wire up the terminal, run the chat client.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::mpsc;
use wschat::client::terminal::{PlainOutput, Prompt, read_stdin};
use wschat::client::{self, Output};
use wschat::config::ClientConfig;

fn main() -> ExitCode {
    let config = ClientConfig::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };

    let (lines, input) = mpsc::channel(64);
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut output: Box<dyn Output> = match interactive.then(|| Prompt::start(lines.clone())) {
        Some(Ok(prompt)) => {
            // The editor thread holds its own sender; input ends when it stops.
            drop(lines);
            Box::new(prompt)
        }
        _ => {
            read_stdin(lines);
            Box::new(PlainOutput)
        }
    };
    let code = runtime.block_on(client::run(config, input, output.as_mut()));
    drop(output);
    // The input thread may still be blocked reading: do not wait for it.
    runtime.shutdown_background();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
