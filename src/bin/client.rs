//! `client`: parse flags, feed stdin lines to the client, print what it says.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::mpsc;
use wschat::client::{self, Output};
use wschat::config::ClientConfig;

/// Chat lines to stdout, status lines to stderr; a closed pipe is not an error.
struct Terminal;

impl Output for Terminal {
    fn line(&mut self, line: &str) {
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    fn status(&mut self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

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

    // Reading stdin blocks, so it gets a thread of its own; the bounded
    // channel makes a fast pipe wait for the client instead of piling up.
    let (lines, input) = mpsc::channel(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });

    let code = runtime.block_on(client::run(config, input, &mut Terminal));
    // The stdin thread may still be blocked in a read: do not wait for it.
    runtime.shutdown_background();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
