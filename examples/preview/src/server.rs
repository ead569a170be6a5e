//! Accept loop and worker thread pool.
//!
//! The acceptor thread hands each connection to a fixed pool of workers over a
//! bounded channel. A worker serves one connection at a time, keeping it open
//! between requests (HTTP/1.1 keep-alive) until the client asks to close, an
//! error occurs, or no request arrives within [`READ_TIMEOUT`].

use std::io::{self, BufReader, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::app;
use crate::config::Settings;
use crate::http::{self, ReadError};

/// Per-connection read timeout (also the keep-alive idle timeout).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to drain unread input before closing (avoids a TCP reset
/// destroying the response we just sent).
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: u64 = 2 * 1024 * 1024;
/// Accepted connections waiting for a worker.
const QUEUE_PER_WORKER: usize = 64;

/// Serve connections from `listener` forever.
pub fn serve(listener: TcpListener, settings: Settings) -> io::Result<()> {
    let settings = Arc::new(settings);
    let workers = settings.workers.max(1);
    let (tx, rx) = mpsc::sync_channel::<TcpStream>(workers * QUEUE_PER_WORKER);
    let rx = Arc::new(Mutex::new(rx));
    for n in 0..workers {
        let rx = Arc::clone(&rx);
        let settings = Arc::clone(&settings);
        thread::Builder::new()
            .name(format!("preview-worker-{n}"))
            .spawn(move || worker(&rx, &settings))?;
    }
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if tx.send(stream).is_err() {
                    return Err(io::Error::other("all workers exited"));
                }
            }
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                eprintln!("preview: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

fn worker(rx: &Mutex<Receiver<TcpStream>>, settings: &Settings) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(stream) = next else { return };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| handle_connection(stream, settings)));
        if outcome.is_err() {
            eprintln!("preview: connection handler panicked; connection dropped");
        }
    }
}

/// Serve requests on one connection until it is closed.
pub fn handle_connection(stream: TcpStream, settings: &Settings) {
    if let Err(e) = serve_connection(stream, settings) {
        match e.kind() {
            io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => {}
            _ => eprintln!("preview: connection error: {e}"),
        }
    }
}

fn serve_connection(stream: TcpStream, settings: &Settings) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    loop {
        match http::read_request(&mut reader, &mut writer) {
            Ok(req) => {
                let resp = app::handle(settings, &req);
                let keep_alive = req.keep_alive() && !resp.close;
                http::write_response(&mut writer, &resp, req.method == "HEAD", keep_alive)?;
                if !keep_alive {
                    linger_close(&writer);
                    return Ok(());
                }
            }
            Err(ReadError::Eof) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Reject(resp)) => {
                http::write_response(&mut writer, &resp, false, false)?;
                linger_close(&writer);
                return Ok(());
            }
        }
    }
}

/// Half-close, then briefly discard whatever the client still sends so the
/// kernel does not answer it with a reset that could destroy our response.
fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER_TIMEOUT));
    let mut sink = [0u8; 8192];
    let mut budget = LINGER_MAX_BYTES;
    let mut s = stream;
    while budget > 0 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => budget = budget.saturating_sub(n as u64),
        }
    }
}
