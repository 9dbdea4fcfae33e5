//! `makenaide-bench`: the benchmark suite (see `makenaide_tests::bench`). Run it with `./bench.sh`,
//! which builds the release binaries and the Python venv first.

use makenaide_tests::bench::{main_with, Options};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return std::process::ExitCode::from(2);
        }
    };
    match main_with(opts).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("makenaide-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
