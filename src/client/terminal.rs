//! The client's terminal: a line editor when a person types, plain lines when piped.

use std::io::{BufRead, Write};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

use super::Output;

/// Piped or redirected use: chat to stdout, status to stderr, one line each.
/// A closed pipe is not an error.
pub struct PlainOutput;

impl Output for PlainOutput {
    fn line(&mut self, line: &str) {
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    fn status(&mut self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// Reads stdin lines on a thread of its own (reading blocks) into `lines`;
/// the channel closes at end of input. The bounded channel makes a fast pipe
/// wait for the client instead of piling up.
pub fn read_stdin(lines: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
}

/// Interactive use: a `> ` prompt with history (arrow keys); incoming lines are
/// printed above the line being typed and never garble it.
pub struct Prompt {
    printer: Box<dyn ExternalPrinter + Send>,
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl Prompt {
    /// Starts the line editor on its own thread, sending each entered line to
    /// `lines`. Ctrl+D ends input; Ctrl+C sends `/quit`.
    ///
    /// # Errors
    /// When the terminal cannot be set up for line editing.
    pub fn start(lines: mpsc::Sender<String>) -> rustyline::Result<Self> {
        #[cfg(unix)]
        let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
        let mut editor = DefaultEditor::new()?;
        let printer = Box::new(editor.create_external_printer()?);
        std::thread::spawn(move || {
            loop {
                match editor.readline("> ") {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        // After /quit, stay out of raw mode: the process ends.
                        let quit = line.trim() == "/quit";
                        if lines.blocking_send(line).is_err() || quit {
                            break;
                        }
                    }
                    Err(ReadlineError::Interrupted) => {
                        let _ = lines.blocking_send("/quit".to_owned());
                        break;
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Self {
            printer,
            #[cfg(unix)]
            saved,
        })
    }
}

impl Output for Prompt {
    fn line(&mut self, line: &str) {
        let _ = self.printer.print(format!("{line}\n"));
    }

    fn status(&mut self, line: &str) {
        // Status shares the screen with the prompt, so it goes the same way.
        let _ = self.printer.print(format!("{line}\n"));
    }
}

impl Drop for Prompt {
    /// The editor thread may still be waiting for a key in raw mode when the
    /// client ends (say, the server went away with --no-reconnect): put the
    /// terminal back the way it was.
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}
