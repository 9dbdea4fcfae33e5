//! The main job: the whole pipeline under the local Lambda harness (see `makenaide_tests::main_job`).

fn main() -> std::process::ExitCode {
    makenaide_tests::main_job::main_entry()
}
