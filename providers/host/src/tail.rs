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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
