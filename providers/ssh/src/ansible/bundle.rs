//! The project's ansible files (providers/ssh/ansible/**: callback plugin, roles, playbooks),
//! embedded in the binary and written out once per content hash.

use super::AnsibleError;
use include_dir::{include_dir, Dir, DirEntry};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static FILES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/ansible");

/// Written last into a materialised bundle: a directory without it is a crashed half-write.
const COMPLETE: &str = ".complete";

/// The embedded ansible files: every file under providers/ssh/ansible at build time.
pub struct Bundle {
    files: Vec<(&'static Path, &'static [u8])>,
    hash: String,
}

impl Bundle {
    /// The files this binary carries.
    pub fn embedded() -> &'static Bundle {
        static BUNDLE: OnceLock<Bundle> = OnceLock::new();
        BUNDLE.get_or_init(|| {
            let mut files = Vec::new();
            collect(&FILES, &mut files);
            Bundle::from_files(files)
        })
    }

    fn from_files(mut files: Vec<(&'static Path, &'static [u8])>) -> Bundle {
        files.sort_by(|a, b| a.0.cmp(b.0));
        let mut h = Sha256::new();
        for (path, bytes) in &files {
            let p = path.as_os_str().as_encoded_bytes();
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        let hash = h
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        Bundle { files, hash }
    }

    /// 16 hex digits of the SHA-256 of every path and content: the directory name.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Relative paths and contents, sorted by path.
    pub fn files(&self) -> &[(&'static Path, &'static [u8])] {
        &self.files
    }

    /// Writes the files into `dir/<hash>/` (directories 0700, files 0600) unless a complete
    /// copy is already there, and returns that directory. Safe against a concurrent run (each
    /// writes a temporary directory and renames it into place) and a crash (a copy without its
    /// completion mark is written again).
    pub fn materialise(&self, dir: &Path) -> Result<PathBuf, AnsibleError> {
        let target = dir.join(&self.hash);
        if target.join(COMPLETE).is_file() {
            return Ok(target);
        }
        let io = |what: String| move |source| AnsibleError::Io { what, source };
        mkdir_private(dir).map_err(io(format!("creating {}", dir.display())))?;
        static N: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{}",
            self.hash,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let written = self.write_into(&tmp).and_then(|()| {
            if target.exists() {
                // A crashed half-copy (no completion mark) or one another run just finished.
                if target.join(COMPLETE).is_file() {
                    return Ok(());
                }
                fs::remove_dir_all(&target)?;
            }
            match fs::rename(&tmp, &target) {
                Err(_) if target.join(COMPLETE).is_file() => Ok(()),
                r => r,
            }
        });
        let _ = fs::remove_dir_all(&tmp);
        written.map_err(io(format!(
            "writing the ansible files into {}",
            target.display()
        )))?;
        Ok(target)
    }

    fn write_into(&self, root: &Path) -> std::io::Result<()> {
        mkdir_private(root)?;
        for (rel, bytes) in &self.files {
            let path = root.join(rel);
            if let Some(parent) = path.parent() {
                mkdir_private(parent)?;
            }
            write_private(&path, bytes)?;
        }
        write_private(&root.join(COMPLETE), self.hash.as_bytes())
    }
}

fn collect(dir: &'static Dir<'static>, out: &mut Vec<(&'static Path, &'static [u8])>) {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(d) => collect(d, out),
            DirEntry::File(f) => {
                // Python's caches are build-machine debris, not part of the bundle.
                let junk = f
                    .path()
                    .components()
                    .any(|c| c.as_os_str() == "__pycache__")
                    || f.path().extension().is_some_and(|e| e == "pyc");
                if !junk {
                    out.push((f.path(), f.contents()));
                }
            }
        }
    }
}

/// `mkdir -p` with new directories 0700.
pub(crate) fn mkdir_private(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A new file, 0600 from its creation on (never briefly readable by others).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_callback_plugin_ships_in_the_binary() {
        let b = Bundle::embedded();
        let plugin = b
            .files()
            .iter()
            .find(|(p, _)| *p == Path::new("callback_plugins/pipeline_events.py"))
            .expect("the callback plugin is embedded");
        assert!(String::from_utf8_lossy(plugin.1).contains("CALLBACK_NAME = \"pipeline_events\""));
        assert_eq!(b.hash().len(), 16);
    }

    #[test]
    fn materialise_writes_private_files_once_per_hash_and_repairs_a_half_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("ansible");
        let b = Bundle::embedded();
        let dir = b.materialise(&work).unwrap();
        assert_eq!(dir, work.join(b.hash()));
        for (rel, bytes) in b.files() {
            let p = dir.join(rel);
            assert_eq!(&fs::read(&p).unwrap(), bytes, "{}", p.display());
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&work), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("callback_plugins")), 0o700);

        // Written once: a second call leaves a file it finds alone.
        let marker = dir.join("callback_plugins/left-by-test");
        fs::write(&marker, "x").unwrap();
        assert_eq!(b.materialise(&work).unwrap(), dir);
        assert!(marker.exists());

        // A copy without its completion mark (a crash mid-write) is written again.
        fs::remove_file(dir.join(COMPLETE)).unwrap();
        fs::remove_file(dir.join("callback_plugins/pipeline_events.py")).unwrap();
        assert_eq!(b.materialise(&work).unwrap(), dir);
        assert!(dir.join("callback_plugins/pipeline_events.py").is_file());
        assert!(!marker.exists());
        // No temporary directories left beside it.
        let names: Vec<String> = fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![b.hash().to_string()]);
    }

    #[test]
    fn the_hash_changes_with_a_path_or_a_content() {
        let a = Bundle::from_files(vec![(Path::new("roles/x/tasks/main.yml"), b"a")]);
        let b = Bundle::from_files(vec![(Path::new("roles/x/tasks/main.yml"), b"b")]);
        let c = Bundle::from_files(vec![(Path::new("roles/y/tasks/main.yml"), b"a")]);
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_ne!(b.hash(), c.hash());
    }
}
