//! Test-only stand-in for the hidden `pipeline __supervise DIR` subcommand.
fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "__supervise" {
        std::process::exit(pipeline_supervise::run_supervisor(std::path::Path::new(
            &args[2],
        )));
    }
    eprintln!("usage: supervise-test __supervise DIR");
    std::process::exit(64);
}
