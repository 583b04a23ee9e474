//! `banger`: the command-line client.

fn main() -> std::process::ExitCode {
    banger_cli::main()
}
