//! `server`: parse flags, set up logging, bind, serve until Ctrl+C / SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use wschat::config::ServerArgs;
use wschat::error::report;
use wschat::server;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with status 2.
    let args = ServerArgs::parse();
    let _logging = wschat::logging::init(args.verbose);

    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = server::shutdown_signal()?;
        let listener = server::bind(&args.host, args.port).await?;
        server::run(listener, args.config(), shutdown).await
    });
    let dropped = wschat::logging::dropped_lines();
    if dropped > 0 {
        tracing::warn!(
            "{dropped} log line(s) were dropped: stderr could not keep up or could not be written"
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}
