//! Where recordings and events live under `--dst`, and how names become safe paths.
//!
//! Layout (the same as tsrecorder's, so tools that read its tree read ours):
//!
//! ```text
//! <dst>/<node dir>/<timestamp>.cast            one recording, byte-for-byte as sent
//! <dst>/<node dir>/events/<timestamp>-<id>.json one `/v2/event` body
//! ```
//!
//! Every name that reaches the file system from the network goes through
//! [`sanitize_component`] first: no separators, no `..`, bounded length.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};

/// Longest file-name component we create; well under every Linux file system's 255.
pub const MAX_COMPONENT_BYTES: usize = 100;

/// How many `-N` suffixes to try when sessions start in the same second.
const MAX_COLLISIONS: u32 = 10_000;

/// Turns an untrusted name into one safe path component.
///
/// Keeps `[A-Za-z0-9._-]`, maps everything else to `_`, refuses `.`/`..`/empty by
/// prefixing `_`, and truncates to [`MAX_COMPONENT_BYTES`].
pub fn sanitize_component(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_COMPONENT_BYTES)
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        out.insert(0, '_');
        out.truncate(MAX_COMPONENT_BYTES);
    }
    out
}

/// Like [`sanitize_component`] but keeps `:`, which our own recording names contain
/// (RFC 3339 times), for file names that come back from peers.
pub fn sanitize_file_name(name: &str) -> String {
    let safe: String = name
        .split(':')
        .map(sanitize_component)
        .collect::<Vec<_>>()
        .join(":");
    if safe.len() > MAX_COMPONENT_BYTES * 2 {
        sanitize_component(name)
    } else {
        safe
    }
}

/// The base name of a recording started at `at`: RFC 3339 in UTC, seconds precision.
pub fn recording_stem(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The `n`th candidate name for a recording started at `stem`: `<stem>.cast`, then
/// `<stem>-<tag>-<n>.cast` where `tag` names the node that picks it (so two nodes of a set
/// never pick the same suffixed name), or `<stem>-<n>.cast` on a standalone node.
pub fn candidate_name(stem: &str, tag: Option<u64>, n: u32) -> String {
    match (n, tag) {
        (0, _) => format!("{stem}.cast"),
        (n, Some(tag)) => format!("{stem}-n{tag}-{n}.cast"),
        (n, None) => format!("{stem}-{n}.cast"),
    }
}

/// Creates `<dir>/<name>` exclusively (fails with `AlreadyExists` if it is there). Its
/// directory entry is not durable yet: the caller has the group commit sync it
/// ([`super::commit::Committer::sync_entry`]), shared with other new entries of `dir`.
pub fn create_new(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let path = dir.join(name);
    let file = in_dir(dir, || open_new(&path))?;
    Ok((path, file))
}

/// Runs `create` (a file creation in `dir`) and, only if `dir` is missing, creates it and
/// tries once more: the directory of an SSH server that recorded before exists, and
/// checking it on every session start would cost a `mkdir` and `stat`s per path level.
pub fn in_dir<T>(dir: &Path, mut create: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir_all_durably(dir)?;
            create()
        }
        other => other,
    }
}

/// `create_dir_all`, then an fsync of every directory that gained an entry (each new
/// directory's parent), so that a file made durable later inside `dir` can't be lost
/// with a directory entry that never reached the disk.
fn create_dir_all_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    // Deepest first: each new directory's entry lives in its parent.
    for new in &missing {
        if let Some(parent) = new.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

/// Creates `<dir>/<stem>.cast` (or `<stem>-N.cast` if taken) exclusively, so two sessions
/// that start in the same second never share a file.
pub fn create_unique(dir: &Path, stem: &str, ext: &str) -> io::Result<(PathBuf, File)> {
    for n in 0..MAX_COLLISIONS {
        let name = if n == 0 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}-{n}.{ext}")
        };
        let path = dir.join(name);
        match in_dir(dir, || open_new(&path)) {
            Ok(file) => {
                sync_dir(dir)?;
                return Ok((path, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "more than {MAX_COLLISIONS} files named {stem} in {}",
            dir.display()
        ),
    ))
}

/// Makes a new directory entry durable: fsync of the file alone does not cover its name.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_missing_directories_is_created_with_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a").join("b").join("c");
        let (path, _file) = create_new(&dir, "x.cast").expect("create");
        assert!(path.is_file());
        assert_eq!(path, dir.join("x.cast"));
        // Existing directories are not created again.
        let (other, _) = create_new(&dir, "y.cast").expect("create");
        assert!(other.is_file());
    }

    #[test]
    fn traversal_and_separators_are_neutralised() {
        for evil in [
            "..",
            ".",
            "",
            "../../etc/passwd",
            "a/b",
            "a\\b",
            "/abs",
            "x\0y",
            "...",
        ] {
            let safe = sanitize_component(evil);
            assert!(!safe.contains('/') && !safe.contains('\\') && !safe.contains('\0'));
            assert!(
                safe != "." && safe != ".." && !safe.is_empty(),
                "{evil:?} -> {safe:?}"
            );
            assert!(!safe.chars().all(|c| c == '.'), "{evil:?} -> {safe:?}");
        }
    }

    #[test]
    fn long_names_are_bounded_and_unicode_is_replaced() {
        let safe = sanitize_component(&"é".repeat(500));
        assert_eq!(safe.len(), MAX_COMPONENT_BYTES);
        assert!(safe.is_ascii());
    }

    #[test]
    fn ipv6_and_node_ids_stay_readable() {
        assert_eq!(sanitize_component("nguedK2CNTRL"), "nguedK2CNTRL");
        assert_eq!(sanitize_component("::1"), "__1");
        assert_eq!(sanitize_component("100.64.0.1"), "100.64.0.1");
    }

    #[test]
    fn peer_file_names_keep_colons_but_nothing_else() {
        assert_eq!(
            sanitize_file_name("2026-11-25T15:58:29Z.cast"),
            "2026-11-25T15:58:29Z.cast"
        );
        let evil = sanitize_file_name("../../x:/etc/passwd");
        assert!(
            !evil.contains('/') && !evil.split(':').any(|p| p == ".." || p == "."),
            "{evil}"
        );
    }

    #[test]
    fn candidate_names_of_different_nodes_never_meet_past_the_first() {
        assert_eq!(candidate_name("T", Some(2), 0), "T.cast");
        assert_eq!(candidate_name("T", Some(2), 1), "T-n2-1.cast");
        assert_ne!(
            candidate_name("T", Some(2), 1),
            candidate_name("T", Some(3), 1)
        );
        assert_eq!(candidate_name("T", None, 3), "T-3.cast");
    }

    #[test]
    fn same_second_sessions_get_distinct_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stem = "2026-11-25T15:58:29Z";
        let (a, _) = create_unique(dir.path(), stem, "cast").expect("first");
        let (b, _) = create_unique(dir.path(), stem, "cast").expect("second");
        assert_ne!(a, b);
        assert!(b.to_string_lossy().ends_with("-1.cast"));
    }
}
