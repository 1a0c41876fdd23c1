//! A run's input files, as a submit carries them: read from a directory, from the
//! tracked files of a git repository at a ref, or from a tar archive; or named by the
//! sha256 of content the team uploaded. Every path is workspace-relative and checked;
//! sizes are bounded per file, in total and in number, with errors that name the
//! offending files. Reading is blocking I/O: call these off the async threads.

use crate::agent::workspace::{
    MAX_FILE_BYTES, MAX_FILES, MAX_WORKSPACE_BYTES, check_relative_path,
};
use crate::store::files::Blob;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest input file.
pub const MAX_INPUT_FILE_BYTES: usize = MAX_FILE_BYTES;
/// Largest total of a run's input files.
pub const MAX_INPUT_BYTES: usize = MAX_WORKSPACE_BYTES;
/// Most input files.
pub const MAX_INPUT_FILES: usize = MAX_FILES;

/// One input file of a submit.
#[derive(Debug, Clone, PartialEq)]
pub struct InputFile {
    pub path: String,
    pub content: FileContent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FileContent {
    Bytes(Vec<u8>),
    /// Content the submitting team uploaded earlier.
    Uploaded {
        sha256: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InputFilesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git: {0}")]
    Git(String),
    #[error("tar archive: {0}")]
    Tar(String),
    #[error("{0}")]
    Invalid(String),
}

/// What a reader took, and what it left out (symbolic links, submodules, excluded).
#[derive(Debug, Default)]
pub struct Collected {
    pub files: Vec<InputFile>,
    pub skipped: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InputFilesError + '_ {
    move |source| InputFilesError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Glob patterns (`target/**`, `*.png`) of paths to leave out.
///
/// # Errors
/// A pattern that is not a glob.
pub fn excludes(patterns: &[String]) -> Result<globset::GlobSet, InputFilesError> {
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| InputFilesError::Invalid(format!("--exclude {p:?}: {e}")))?;
        set.add(glob);
    }
    set.build()
        .map_err(|e| InputFilesError::Invalid(format!("--exclude: {e}")))
}

/// Every regular file under `dir` (symbolic links are not followed, `.git` is left out).
///
/// # Errors
/// I/O errors naming the path; a path that cannot be a workspace path.
pub fn read_dir(dir: &Path, exclude: &globset::GlobSet) -> Result<Collected, InputFilesError> {
    let mut out = Collected::default();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git");
    for entry in walk {
        let entry =
            entry.map_err(|e| InputFilesError::Invalid(format!("{}: {e}", dir.display())))?;
        let relative = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| InputFilesError::Invalid(e.to_string()))?;
        let Some(path) = relative.to_str().map(str::to_owned) else {
            return Err(InputFilesError::Invalid(format!(
                "{}: the path is not UTF-8",
                entry.path().display()
            )));
        };
        if entry.depth() == 0 || entry.file_type().is_dir() {
            continue;
        }
        if exclude.is_match(&path) {
            out.skipped.push(format!("{path} (excluded)"));
        } else if !entry.file_type().is_file() {
            out.skipped.push(format!("{path} (not a regular file)"));
        } else {
            check_size(&path, entry.metadata().map_or(0, |m| m.len()))?;
            let bytes = std::fs::read(entry.path()).map_err(io(entry.path()))?;
            out.files.push(InputFile {
                path,
                content: FileContent::Bytes(bytes),
            });
        }
        if out.files.len() > MAX_INPUT_FILES {
            return Err(too_many());
        }
    }
    Ok(out)
}

/// The tracked files of the git repository at `repo` as of `rev` (a branch, tag or
/// commit; default `HEAD`). Submodules and symbolic links are left out. Uses the
/// `git` command.
///
/// # Errors
/// Git's own message when `rev` or the repository does not resolve.
pub fn read_git(
    repo: &Path,
    rev: &str,
    exclude: &globset::GlobSet,
) -> Result<Collected, InputFilesError> {
    let commit = git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--end-of-options",
            &format!("{rev}^{{commit}}"),
        ],
        None,
    )?;
    let commit = String::from_utf8_lossy(&commit).trim().to_owned();
    let listing = git(repo, &["ls-tree", "-r", "-z", "--full-tree", &commit], None)?;
    let mut out = Collected::default();
    let mut wanted = Vec::new();
    for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8_lossy(record);
        let Some((meta, path)) = record.split_once('\t') else {
            continue;
        };
        let mut parts = meta.split(' ');
        let (mode, kind, object) = (parts.next(), parts.next(), parts.next());
        if exclude.is_match(path) {
            out.skipped.push(format!("{path} (excluded)"));
        } else if kind != Some("blob") || mode == Some("120000") {
            out.skipped
                .push(format!("{path} (submodule or symbolic link)"));
        } else if let Some(object) = object {
            wanted.push((path.to_owned(), object.to_owned()));
        }
    }
    if wanted.len() > MAX_INPUT_FILES {
        return Err(too_many());
    }
    let batch: String = wanted.iter().map(|(_, o)| format!("{o}\n")).collect();
    let contents = git(repo, &["cat-file", "--batch"], Some(batch.as_bytes()))?;
    let mut rest = contents.as_slice();
    for (path, _) in wanted {
        let (bytes, tail) = next_batch_object(rest)
            .ok_or_else(|| InputFilesError::Git(format!("cat-file output ended before {path}")))?;
        check_size(&path, bytes.len() as u64)?;
        out.files.push(InputFile {
            path,
            content: FileContent::Bytes(bytes.to_vec()),
        });
        rest = tail;
    }
    Ok(out)
}

/// One object of `git cat-file --batch` output: `<oid> <type> <size>\n<content>\n`.
fn next_batch_object(out: &[u8]) -> Option<(&[u8], &[u8])> {
    let newline = out.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&out[..newline]).ok()?;
    let size: usize = header.rsplit(' ').next()?.parse().ok()?;
    let body = out.get(newline + 1..newline + 1 + size)?;
    let tail = out.get(newline + 2 + size..).unwrap_or_default();
    Some((body, tail))
}

fn git(repo: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, InputFilesError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| InputFilesError::Git(format!("cannot run git ({e}); is it installed?")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || pipe.write_all(&input));
    }
    let output = child
        .wait_with_output()
        .map_err(|e| InputFilesError::Git(e.to_string()))?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr);
        return Err(InputFilesError::Git(format!(
            "{} ({})",
            message.trim(),
            repo.display()
        )));
    }
    Ok(output.stdout)
}

/// The regular files of a tar archive. Directories are skipped; links and devices are
/// refused (an archive cannot point outside itself).
///
/// # Errors
/// A malformed archive, an entry that is not a file or directory, a bad path, a size.
pub fn read_tar(archive: &[u8]) -> Result<Vec<InputFile>, InputFilesError> {
    let mut files = Vec::new();
    let mut tar = tar::Archive::new(archive);
    let entries = tar
        .entries()
        .map_err(|e| InputFilesError::Tar(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| InputFilesError::Tar(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| InputFilesError::Tar(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let path = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() || path.is_empty() {
            continue;
        }
        if !kind.is_file() {
            return Err(InputFilesError::Tar(format!(
                "{raw:?} is not a regular file or directory (links and devices are refused)"
            )));
        }
        check_size(&path, entry.size())?;
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_INPUT_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| InputFilesError::Tar(format!("{raw:?}: {e}")))?;
        check_size(&path, bytes.len() as u64)?;
        files.push(InputFile {
            path,
            content: FileContent::Bytes(bytes),
        });
        if files.len() > MAX_INPUT_FILES {
            return Err(too_many());
        }
    }
    Ok(files)
}

fn too_many() -> InputFilesError {
    InputFilesError::Invalid(format!(
        "more than {MAX_INPUT_FILES} files; leave some out (--exclude GLOB)"
    ))
}

fn check_size(path: &str, size: u64) -> Result<(), InputFilesError> {
    if size > MAX_INPUT_FILE_BYTES as u64 {
        return Err(InputFilesError::Invalid(format!(
            "{path} is {size} bytes; an input file holds at most {MAX_INPUT_FILE_BYTES} (leave it out with --exclude)"
        )));
    }
    Ok(())
}

/// The checked form of a submit's files: paths valid and distinct, sizes bounded, the
/// bytes digested. Returns the blobs to store and the manifest (path -> sha256);
/// uploaded content is named in the manifest only (the caller checks it exists).
///
/// # Errors
/// A message naming the file or the bound.
pub fn digest(files: &[InputFile]) -> Result<(Vec<Blob>, BTreeMap<String, String>), String> {
    if files.len() > MAX_INPUT_FILES {
        return Err(format!("{} files; at most {MAX_INPUT_FILES}", files.len()));
    }
    let mut blobs = Vec::new();
    let mut manifest = BTreeMap::new();
    let mut total = 0usize;
    for f in files {
        check_relative_path(&f.path).map_err(|e| format!("{}: {e}", f.path.escape_debug()))?;
        let sha = match &f.content {
            FileContent::Bytes(bytes) => {
                check_size(&f.path, bytes.len() as u64).map_err(|e| e.to_string())?;
                total += bytes.len();
                let blob = Blob::new(bytes.clone());
                let sha = blob.sha256.clone();
                blobs.push(blob);
                sha
            }
            FileContent::Uploaded { sha256 } => {
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{}: {sha256:?} is not a sha256 in hex", f.path));
                }
                sha256.to_ascii_lowercase()
            }
        };
        if manifest.insert(f.path.clone(), sha).is_some() {
            return Err(format!("{} appears twice", f.path));
        }
    }
    if total > MAX_INPUT_BYTES {
        return Err(format!(
            "the files hold {total} bytes; at most {MAX_INPUT_BYTES} in all"
        ));
    }
    Ok((blobs, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if kind.is_symlink() {
                h.set_link_name("/etc/passwd").unwrap();
            }
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_files_dirs_and_refusals() {
        let ok = tar_of(&[
            ("./src/", b"", tar::EntryType::Directory),
            ("./src/main.rs", b"fn main() {}", tar::EntryType::Regular),
            ("logo.png", b"\x89PNG\0\x01", tar::EntryType::Regular),
        ]);
        let files = read_tar(&ok).unwrap();
        assert_eq!(
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["src/main.rs", "logo.png"]
        );
        let (blobs, manifest) = digest(&files).unwrap();
        assert_eq!(manifest.len(), 2);
        assert!(!blobs[0].is_binary && blobs[1].is_binary);
        let link = tar_of(&[("passwd", b"", tar::EntryType::Symlink)]);
        assert!(
            read_tar(&link)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        let big = vec![b'a'; MAX_INPUT_FILE_BYTES + 1];
        let large = tar_of(&[("big.txt", &big, tar::EntryType::Regular)]);
        assert!(
            read_tar(&large)
                .unwrap_err()
                .to_string()
                .contains("big.txt")
        );
    }

    #[test]
    fn digest_refuses_bad_paths_and_duplicates() {
        let file = |p: &str| InputFile {
            path: p.into(),
            content: FileContent::Bytes(b"x".to_vec()),
        };
        for bad in ["../x", "/etc/passwd", "a//b", ""] {
            assert!(digest(&[file(bad)]).is_err(), "{bad:?}");
        }
        assert!(
            digest(&[file("a"), file("a")])
                .unwrap_err()
                .contains("twice")
        );
        let uploaded = InputFile {
            path: "u".into(),
            content: FileContent::Uploaded {
                sha256: "zz".into(),
            },
        };
        assert!(digest(&[uploaded]).is_err());
    }
}
