//! A phase's private, in-memory workspace. Paths are relative, normalised, and can
//! never name anything outside it: no absolute paths, no `..`, no empty segments.

use std::collections::BTreeMap;

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
    if path.contains('\\') || path.contains('\0') || path.contains(':') {
        return Err(format!("{path:?} contains a backslash, colon or NUL"));
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
}

impl Workspace {
    /// # Errors
    /// When `path` is not a valid workspace path.
    pub fn write(&mut self, path: &str, content: String) -> Result<(), String> {
        check_relative_path(path)?;
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
}
