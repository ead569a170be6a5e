use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;

use preview::config::{self, Command, Settings};
use preview::server;

fn main() -> ExitCode {
    let env_port = std::env::var("PORT").ok();
    let listen = match config::parse_args(std::env::args().skip(1), env_port.as_deref()) {
        Ok(Command::Run(listen)) => listen,
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("preview {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("preview: {e}\n\n{}", config::USAGE);
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("preview: {e}");
            return ExitCode::from(2);
        }
    };

    // Accept "[::1]" as well as "::1".
    let host = listen.address.trim_start_matches('[').trim_end_matches(']');
    let listener = match TcpListener::bind((host, listen.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "preview: cannot listen on {}:{}: {e}",
                listen.address, listen.port
            );
            return ExitCode::from(1);
        }
    };
    // Report the real port (differs from the requested one for --port 0).
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(listen.port);
    let shown = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    println!("preview listening on http://{shown}:{port}");
    let _ = std::io::stdout().flush();

    if let Err(e) = server::serve(listener, settings) {
        eprintln!("preview: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
