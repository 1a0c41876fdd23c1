//! A phase's private, in-memory workspace. Paths are relative, normalised, and can
//! never name anything outside it: no absolute paths, no `..`, no empty segments. Its
//! size is bounded: bytes per file, bytes in all, and the number of files; content is
//! text without NUL (it is stored in PostgreSQL).

use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default)]
pub struct Workspace {
    files: BTreeMap<String, String>,
    bytes: usize,
}

impl Workspace {
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
        let replaced = self.files.get(path).map_or(0, String::len);
        let total = self.bytes - replaced + content.len();
        if total > MAX_WORKSPACE_BYTES {
            return Err(format!(
                "the workspace would hold {total} bytes; at most {MAX_WORKSPACE_BYTES}"
            ));
        }
        if !self.files.contains_key(path) && self.files.len() >= MAX_FILES {
            return Err(format!("the workspace holds {MAX_FILES} files already"));
        }
        self.bytes = total;
        self.files.insert(path.to_owned(), content);
        Ok(())
    }

    /// # Errors
    /// When `path` is invalid or absent.
    pub fn read(&self, path: &str) -> Result<&str, String> {
        check_relative_path(path)?;
        self.files
            .get(path)
            .map(String::as_str)
            .ok_or_else(|| format!("{path:?} does not exist"))
    }

    #[must_use]
    pub fn get(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Every file, in path order.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().map(|(p, c)| (p.as_str(), c.as_str()))
    }

    /// Bytes held by all files.
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
