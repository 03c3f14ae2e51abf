//! The `multimix` command-line program.

mod cli;

fn main() -> std::process::ExitCode {
    multimix::runtime::configure();
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
