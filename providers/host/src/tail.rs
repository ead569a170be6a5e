//! Following a growing log file: whole lines only, through truncation and rotation.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// At most this much is read per call.
const MAX_READ: u64 = 8 << 20;

pub struct Tail {
    path: PathBuf,
    offset: u64,
    inode: Option<u64>,
    partial: Vec<u8>,
    /// Where the first read starts: this many bytes before the end (0: at the end).
    backlog: Option<u64>,
}

impl Tail {
    /// Starts at the current end of the file (what was logged before is not ours).
    pub fn at_end(path: &Path) -> Tail {
        Tail::with_backlog(path, 0)
    }
    /// Starts `backlog` bytes before the end the file has at the first read (whole lines after it).
    pub fn with_backlog(path: &Path, backlog: u64) -> Tail {
        let mut t = Tail {
            path: path.to_path_buf(),
            offset: 0,
            inode: None,
            partial: Vec::new(),
            backlog: Some(backlog),
        };
        if backlog == 0 {
            t.start();
            // No file yet: whatever it holds once it exists is new.
            t.backlog = None;
        }
        t
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    fn start(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let (Some(b), Ok(meta)) = (self.backlog, std::fs::metadata(&self.path)) {
            self.offset = meta.len().saturating_sub(b);
            self.inode = Some(meta.ino());
            self.backlog = None;
        }
    }
    /// The whole lines written since the last call.
    pub fn read_lines(&mut self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        self.start();
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return vec![];
        };
        let Ok(meta) = f.metadata() else {
            return vec![];
        };
        self.backlog = None;
        // A replaced or truncated log starts again from its beginning.
        if self.inode.is_some_and(|i| i != meta.ino()) || meta.len() < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        self.inode = Some(meta.ino());
        if meta.len() == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return vec![];
        }
        let mut buf = Vec::new();
        let Ok(n) = (&mut f).take(MAX_READ).read_to_end(&mut buf) else {
            return vec![];
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return vec![];
        };
        let complete: Vec<u8> = self.partial.drain(..=last_nl).collect();
        String::from_utf8_lossy(&complete)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Lines kept between two reads of a [`Stream`]; more are dropped (and counted).
const MAX_PENDING: usize = 200_000;

/// Follows the output of a command that prints a log's lines as they are written (an access log
/// on another machine: `ssh HOST tail -n0 -F PATH`): whole lines, from when it starts. The
/// command runs in a process group of its own (a Ctrl-C at the terminal is the caller's to
/// handle, not the follower's), is started again when it ends (at most once a second), and is
/// killed on drop.
pub struct Stream {
    argv: Vec<String>,
    child: Option<std::process::Child>,
    pending: std::sync::Arc<std::sync::Mutex<Pending>>,
    reader: Option<std::thread::JoinHandle<()>>,
    started: Option<std::time::Instant>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<String>,
    dropped: u64,
}

impl Stream {
    /// Starts the command at once: what it prints from now on is read.
    pub fn start(argv: &[String]) -> Stream {
        let mut s = Stream {
            argv: argv.to_vec(),
            child: None,
            pending: Default::default(),
            reader: None,
            started: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        self.started = Some(std::time::Instant::now());
        let Some((exe, args)) = self.argv.split_first() else {
            return;
        };
        let child = std::process::Command::new(exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        let Ok(mut child) = child else { return };
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return;
        };
        let pending = self.pending.clone();
        self.reader = Some(std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(out);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    // A line cut short by the command's end is not a line.
                    Ok(_) if line.last() != Some(&b'\n') => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                if p.lines.len() < MAX_PENDING {
                    p.lines.push(text);
                } else {
                    p.dropped += 1;
                }
            }
        }));
        self.child = Some(child);
    }

    /// The whole lines printed since the last call; the command is started again if it ended.
    pub fn read_lines(&mut self) -> Vec<String> {
        let ended = self
            .child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
        let lines =
            std::mem::take(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()).lines);
        if ended
            && self
                .started
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            self.stop();
            self.spawn();
        }
        lines
    }

    /// Lines dropped because nobody read them in time.
    pub fn dropped(&self) -> u64 {
        self.pending.lock().map_or(0, |p| p.dropped)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kills the process group this follower made (its pgid is the child's pid).
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn read_until(s: &mut Stream, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < n && std::time::Instant::now() < until {
            got.extend(s.read_lines());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        got
    }

    #[test]
    fn a_stream_reads_whole_lines_and_follows_a_file_like_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        std::fs::write(&p, "old\n").unwrap();
        let mut s = Stream::start(&sh(&format!("exec tail -n0 -F {}", p.display())));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"1 200 0 a:1 200\n2 500 0 a:1 500\n").unwrap();
        assert_eq!(
            read_until(&mut s, 2),
            vec!["1 200 0 a:1 200", "2 500 0 a:1 500"]
        );
        assert!(s.read_lines().is_empty());
        assert_eq!(s.dropped(), 0);
    }

    #[test]
    fn a_stream_whose_command_ends_is_started_again_and_a_cut_line_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let n = d.path().join("n");
        // Each run prints its number and a line cut short, then ends.
        let script = format!(
            "echo x >> {n}; printf 'run %s\\npartial' $(wc -l < {n})",
            n = n.display()
        );
        let mut s = Stream::start(&sh(&script));
        let got = read_until(&mut s, 2);
        assert_eq!(got, vec!["run 1", "run 2"]);
    }

    #[test]
    fn dropping_a_stream_kills_its_command() {
        let mut s = Stream::start(&sh("sleep 30 & echo $!; wait"));
        let pid: i32 = read_until(&mut s, 1)[0].parse().unwrap();
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Gone, or a zombie waiting for init to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]);
        assert!(
            matches!(state, None | Some("Z")),
            "the stream's grandchild {pid} outlived it: {stat}"
        );
    }

    #[test]
    fn reads_appended_lines_and_survives_truncation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("access.log");
        std::fs::write(&p, "1 200 0 a:1 200\n").unwrap();
        let mut t = Tail::with_backlog(&p, 1 << 20);
        assert_eq!(t.read_lines(), vec!["1 200 0 a:1 200"]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"2 500 0 a:1 500\n3 200 0 a").unwrap();
        assert_eq!(t.read_lines(), vec!["2 500 0 a:1 500"]);
        f.write_all(b":1 200\n").unwrap();
        assert_eq!(t.read_lines(), vec!["3 200 0 a:1 200"]);
        std::fs::write(&p, "4 200 0 b:2 200\n").unwrap();
        assert_eq!(t.read_lines(), vec!["4 200 0 b:2 200"]);
    }

    #[test]
    fn at_end_skips_what_was_there() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "old\n").unwrap();
        let mut t = Tail::at_end(&p);
        assert!(t.read_lines().is_empty());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"new\n")
            .unwrap();
        assert_eq!(t.read_lines(), vec!["new"]);
    }

    #[test]
    fn a_file_made_later_is_read_from_its_start() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut t = Tail::at_end(&p);
        assert!(t.read_lines().is_empty());
        std::fs::write(&p, "first\n").unwrap();
        assert_eq!(t.read_lines(), vec!["first"]);
    }
}
