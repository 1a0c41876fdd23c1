//! A phase attempt's private, in-memory workspace: the run's input files and the files
//! earlier accepted phases wrote, plus what this attempt writes. Paths are relative,
//! normalised, and can never name anything outside it: no absolute paths, no `..`, no
//! empty segments. What the agent writes is bounded: bytes per file, bytes in all, and
//! the number of files, and is text without NUL (seeded files are bounded where they
//! come from). Binary input files are listed but
//! hold no text. The engine and the agent share it ([`SharedWorkspace`]), so what the
//! agent wrote survives a timeout or a failed model call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

/// Largest file the agent may write.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Largest total of all files.
pub const MAX_WORKSPACE_BYTES: usize = 16 * 1024 * 1024;
/// Most files in one workspace.
pub const MAX_FILES: usize = 1000;

/// Check a workspace-relative path; the error says what is wrong with it.
///
/// # Errors
/// A message for absolute paths, `..`, backslashes, NUL, empty or over-long paths.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.len() > 255 {
        return Err(format!("path is {} bytes; at most 255", path.len()));
    }
    if path.starts_with('/') || path.starts_with('~') {
        return Err(format!(
            "{path:?} is absolute; paths are relative to the phase workspace"
        ));
    }
    if path.contains('\\') || path.contains(':') || path.chars().any(char::is_control) {
        return Err(format!(
            "{path:?} contains a backslash, colon or control character"
        ));
    }
    for seg in path.split('/') {
        if seg == ".." {
            return Err(format!("{path:?} climbs out of the workspace with '..'"));
        }
        if seg.is_empty() || seg == "." {
            return Err(format!("{path:?} has an empty or '.' segment"));
        }
    }
    Ok(())
}

/// One file: text, or a binary file of which only the size is known here.
#[derive(Debug, Clone)]
enum Entry {
    Text(String),
    Binary(usize),
}

impl Entry {
    fn text_len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(_) => 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Workspace {
    files: BTreeMap<String, Entry>,
    /// Bytes of the files the agent wrote (seeded files are bounded where they come
    /// from: a submit's inputs, an earlier phase's writes).
    bytes: usize,
    /// Paths written (or edited) since the workspace was seeded.
    written: BTreeSet<String>,
}

/// A workspace shared by the agent and the engine for one attempt.
#[derive(Debug, Clone, Default)]
pub struct SharedWorkspace(Arc<Mutex<Workspace>>);

impl SharedWorkspace {
    #[must_use]
    pub fn new(ws: Workspace) -> Self {
        Self(Arc::new(Mutex::new(ws)))
    }

    /// Lock it (a tool that panicked mid-call leaves the files as they were: the lock
    /// is taken back). Blocking: call it off the async threads when a tool may hold it.
    pub fn lock(&self) -> MutexGuard<'_, Workspace> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take the files out, unless a tool holds the lock (then `None`, at once).
    #[must_use]
    pub fn try_take(&self) -> Option<Workspace> {
        let mut guard = match self.0.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(std::mem::take(&mut *guard))
    }
}

impl Workspace {
    /// Seed a text file (an input, or an earlier phase's output): not written by this
    /// attempt, and not counted against what it may write.
    ///
    /// # Errors
    /// An invalid path.
    pub fn seed_text(&mut self, path: &str, content: String) -> Result<(), String> {
        check_relative_path(path)?;
        self.files.insert(path.to_owned(), Entry::Text(content));
        Ok(())
    }

    /// Seed a binary file: listed, but not readable as text.
    ///
    /// # Errors
    /// An invalid path.
    pub fn seed_binary(&mut self, path: &str, size: usize) -> Result<(), String> {
        check_relative_path(path)?;
        self.files.insert(path.to_owned(), Entry::Binary(size));
        Ok(())
    }

    /// Write a file as the agent (it becomes part of the attempt's output). What the
    /// agent writes is bounded per file, in bytes and in number of files.
    ///
    /// # Errors
    /// When `path` is not a valid workspace path, the content holds a NUL, or a size
    /// bound would be passed.
    pub fn write(&mut self, path: &str, content: String) -> Result<(), String> {
        check_relative_path(path)?;
        if content.contains('\0') {
            return Err("content contains a NUL character; files hold text".into());
        }
        if content.len() > MAX_FILE_BYTES {
            return Err(format!(
                "content is {} bytes; a file holds at most {MAX_FILE_BYTES}",
                content.len()
            ));
        }
        let rewrite = self.written.contains(path);
        let replaced = if rewrite {
            self.files.get(path).map_or(0, Entry::text_len)
        } else {
            0
        };
        let total = self.bytes - replaced + content.len();
        if total > MAX_WORKSPACE_BYTES {
            return Err(format!(
                "the files written would hold {total} bytes; at most {MAX_WORKSPACE_BYTES}"
            ));
        }
        if !rewrite && self.written.len() >= MAX_FILES {
            return Err(format!("{MAX_FILES} files are written already"));
        }
        self.bytes = total;
        self.files.insert(path.to_owned(), Entry::Text(content));
        self.written.insert(path.to_owned());
        Ok(())
    }

    /// Whether this attempt wrote `path` (not only found it seeded).
    #[must_use]
    pub fn was_written(&self, path: &str) -> bool {
        self.written.contains(path)
    }

    /// # Errors
    /// When `path` is invalid, absent or binary.
    pub fn read(&self, path: &str) -> Result<&str, String> {
        check_relative_path(path)?;
        match self.files.get(path) {
            Some(Entry::Text(t)) => Ok(t),
            Some(Entry::Binary(size)) => Err(format!(
                "{path:?} is a binary file ({size} bytes); it cannot be read as text"
            )),
            None => Err(format!("{path:?} does not exist")),
        }
    }

    /// A text file's content.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&str> {
        match self.files.get(path) {
            Some(Entry::Text(t)) => Some(t),
            _ => None,
        }
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// The paths under `prefix` (`""`: all), binary files marked, as the agent is shown
    /// them.
    #[must_use]
    pub fn listing(&self, prefix: &str) -> Vec<String> {
        self.files
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(p, e)| match e {
                Entry::Binary(_) => format!("{p} (binary)"),
                Entry::Text(_) => p.clone(),
            })
            .collect()
    }

    /// Every text file, in path order.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().filter_map(|(p, e)| match e {
            Entry::Text(t) => Some((p.as_str(), t.as_str())),
            Entry::Binary(_) => None,
        })
    }

    /// The files this attempt wrote, with their final content, in path order.
    pub fn written(&self) -> impl Iterator<Item = (&str, &str)> {
        self.written
            .iter()
            .filter_map(|p| self.get(p).map(|c| (p.as_str(), c)))
    }

    /// Bytes of the files the agent wrote.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_workspace_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "~/x",
            "c:x",
            "a\u{7}b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["spec.json", "out/review.json", "a.b-c_d/e"] {
            assert!(check_relative_path(good).is_ok(), "{good:?} refused");
        }
        let mut w = Workspace::default();
        assert!(w.write("../escape", String::new()).is_err());
        assert!(w.read("nope").is_err());
    }

    #[test]
    fn sizes_and_nul_are_bounded() {
        let mut w = Workspace::default();
        assert!(w.write("a", "x\0y".into()).is_err());
        assert!(w.write("big", "x".repeat(MAX_FILE_BYTES + 1)).is_err());
        for i in 0..16 {
            w.write(&format!("f{i}"), "x".repeat(MAX_FILE_BYTES))
                .unwrap();
        }
        assert!(
            w.write("one-more", "x".into()).is_err(),
            "total bytes bounded"
        );
        w.write("f0", "small".into()).unwrap();
        assert_eq!(
            w.bytes(),
            15 * MAX_FILE_BYTES + 5,
            "a rewrite frees its old bytes"
        );
        let mut many = Workspace::default();
        for i in 0..MAX_FILES {
            many.write(&format!("f{i}"), String::new()).unwrap();
        }
        assert!(many.write("f-extra", String::new()).is_err());
        assert!(many.write("f0", "again".into()).is_ok());
    }
}
