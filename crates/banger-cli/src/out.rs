//! Standard output that ends the CLI quietly when its reader is gone.
//!
//! Rust ignores SIGPIPE, so `println!` panics on a closed pipe
//! (`banger vm list | head -1`). Restoring SIGPIPE's default would also
//! kill the CLI silently on a write to a daemon that went away; instead
//! a write to stdout that finds the pipe closed exits the way SIGPIPE
//! ends other Unix tools: no message, status 128 + SIGPIPE.

use std::io::{self, Write};

/// The status a shell shows for a process SIGPIPE ended.
pub const BROKEN_PIPE_STATUS: i32 = 128 + 13;

/// Writes `args` and a newline to stdout.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        gone(&e);
    }
}

/// Ends the process for a failed write to stdout.
pub fn gone(e: &io::Error) -> ! {
    if e.kind() != io::ErrorKind::BrokenPipe {
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
    std::process::exit(BROKEN_PIPE_STATUS)
}

/// Whether `e` comes from a closed stdout somewhere in its chain.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that never panics: see the module.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::out::line(format_args!($($arg)*)) };
}
