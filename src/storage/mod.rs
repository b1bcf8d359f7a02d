//! Storage: bytes on disk, made durable, and the index that describes them.
//!
//! Owns the on-disk layout under `--dst` ([`layout`]), appends to recording files,
//! group commit ([`commit`]), the durable session index under statedir ([`index`]) and
//! stored events. It does not decide *when* bytes are acknowledged or what a session's
//! state is: the session layer does, and storage just does what it is told, durably.
//!
//! All blocking file and database work runs on the blocking pool or the commit thread,
//! never on the async workers.

pub mod commit;
pub mod index;
pub mod layout;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;

use self::commit::Committer;
use self::index::{Index, SessionFilter, SessionRecord, SessionState};
use crate::asciicast::Problem;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("disk I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("session index: {0}")]
    Index(String),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0} already exists")]
    Exists(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The problem startup recovery gives a session (or copy) that was live when the node
/// stopped: its bytes are what the node had, not necessarily the whole recording.
pub const STOPPED_WHILE_LIVE: &str = "recorder stopped while the session was live";

/// The node's storage: recordings under `dst`, the index under `statedir`.
#[derive(Clone)]
pub struct Storage {
    /// Root of the recordings tree (`--dst`).
    dst: PathBuf,
    index: Index,
    committer: Committer,
}

/// One recording being written. Only its session appends to it.
pub struct RecordingFile {
    /// Shared with the commit thread, which fsyncs it.
    file: Arc<File>,
    /// The file's directory entry: synced through the group commit, so that files
    /// created together in one directory share one directory fsync. Already durable for
    /// a recording this node created as its owner; a copy's is synced with its first
    /// bytes.
    entry: Arc<commit::DirEntry>,
    /// Absolute path, for error messages.
    path: PathBuf,
    /// Path relative to dst, as the index and API show it.
    rel_path: String,
    /// Bytes appended so far and known written (the next write's offset once the write
    /// in flight, if any, is done).
    written: u64,
    /// At most one write still running on the blocking pool, and its length: a session
    /// checks its next batch while the last one is written ([`append_behind`]).
    ///
    /// [`append_behind`]: RecordingFile::append_behind
    in_flight: Option<(tokio::task::JoinHandle<std::io::Result<()>>, u64)>,
}

impl RecordingFile {
    fn new(
        file: File,
        path: PathBuf,
        rel_path: String,
        written: u64,
        entry: Arc<commit::DirEntry>,
    ) -> RecordingFile {
        RecordingFile {
            file: Arc::new(file),
            entry,
            path,
            rel_path,
            written,
            in_flight: None,
        }
    }

    /// Appends `bytes` at the end of the file (page cache; durable only after [`Storage::sync`]).
    pub async fn append(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        self.append_behind(vec![bytes]).await?;
        self.settle().await
    }

    /// Waits for the write in flight (so [`written`](Self::written) covers it), then starts
    /// writing `chunks`, in order, after it, and returns without waiting for them: the
    /// caller overlaps its next batch with this write. One `pwritev` for all the chunks,
    /// so they are never merged into one buffer first.
    pub async fn append_behind(&mut self, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        self.settle().await?;
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        if len == 0 {
            return Ok(());
        }
        let file = self.file.clone();
        let offset = self.written;
        let job =
            tokio::task::spawn_blocking(move || write_all_vectored_at(&file, &chunks, offset));
        self.in_flight = Some((job, len));
        Ok(())
    }

    /// Waits for the write in flight, if any. Cancel-safe: dropped before the write is
    /// done, it leaves the write in flight, to be waited for by the next call.
    pub async fn settle(&mut self) -> Result<(), StorageError> {
        if let Some((job, len)) = &mut self.in_flight {
            let len = *len;
            let done = job.await;
            self.in_flight = None;
            done?.map_err(io_at(&self.path))?;
            self.written += len;
        }
        Ok(())
    }

    /// Whether a write started by [`append_behind`](Self::append_behind) may still run.
    pub fn writing(&self) -> bool {
        self.in_flight.is_some()
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Another writer (this node's own session, before a takeover) may have grown the
    /// file: take its length from the file system if that is larger. Blocking. Only for
    /// files appended with [`append`](Self::append), which never leaves a write in flight
    /// (a write in flight would be counted twice).
    pub fn refresh_len(&mut self) -> Result<u64, StorageError> {
        debug_assert!(
            self.in_flight.is_none(),
            "refresh_len with a write in flight"
        );
        let len = self.file.metadata().map_err(io_at(&self.path))?.len();
        self.written = self.written.max(len);
        Ok(self.written)
    }

    pub fn rel_path(&self) -> &str {
        &self.rel_path
    }

    /// The file's name within its node directory.
    pub fn file_name(&self) -> &str {
        self.rel_path.rsplit('/').next().unwrap_or(&self.rel_path)
    }

    /// What the syncing side of the session needs, independent of the appending side.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            file: self.file.clone(),
            path: self.path.clone(),
            entry: Some(self.entry.clone()),
        }
    }
}

/// Writes every byte of `chunks`, in order, at `offset`: `pwritev`, resumed after a short
/// write. Blocking.
fn write_all_vectored_at(file: &File, chunks: &[Bytes], mut offset: u64) -> std::io::Result<()> {
    /// Linux's `IOV_MAX`: at most this many chunks per call.
    const MAX_IOV: usize = 1024;
    let mut first = 0; // first chunk not fully written
    let mut skip = 0; // bytes of it already written
    while first < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(MAX_IOV)
            .enumerate()
            .map(|(i, c)| std::io::IoSlice::new(if i == 0 { &c[skip..] } else { c }))
            .collect();
        let at = i64::try_from(offset).map_err(std::io::Error::other)?;
        let mut wrote = match nix::sys::uio::pwritev(file, &slices, at) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += wrote as u64;
        while wrote > 0 {
            let left = chunks[first].len() - skip;
            if wrote >= left {
                wrote -= left;
                first += 1;
                skip = 0;
            } else {
                skip += wrote;
                wrote = 0;
            }
        }
        while first < chunks.len() && chunks[first].len() == skip {
            first += 1;
            skip = 0;
        }
    }
    Ok(())
}

/// A recording as the commit thread and readers see it: something to fsync and read.
#[derive(Clone)]
pub struct SyncHandle {
    file: Arc<File>,
    path: PathBuf,
    /// The directory entry the file's next sync must make durable first, if any (none
    /// for a file only opened to be read).
    entry: Option<Arc<commit::DirEntry>>,
}

/// Bytes released from the page cache at a time, at least: one `posix_fadvise` call per
/// MiB written keeps the calls rare and the cached tail of a recording small.
pub const RELEASE_STEP: u64 = 1 << 20;

/// Page size the release rounds to (the kernel drops whole pages only).
const PAGE: u64 = 4096;

/// Drops a recording's bytes from the page cache once they are durable and every reader
/// of the file (the replication senders) is past them.
///
/// A recording is written once and read again only for a replay, a repair or a takeover,
/// which read from disk then. Keeping its bytes cached takes memory that the next writes
/// have to find elsewhere: on a VM whose freed memory goes back to the host (virtio-balloon
/// free page reporting, as on this project's machines) that means guest pages the host must
/// back again on first touch. Measured there: `dd` of 3 GB into the page cache ran at
/// 0.67-0.88 GB/s into such pages and at 4.9-5.1 GB/s into pages freed moments before.
/// Released pages are taken by the next writes while they are still backed.
pub struct CacheRelease {
    handle: SyncHandle,
    /// Everything below this offset was released (or was never written by this session).
    released: u64,
}

impl CacheRelease {
    /// Releases nothing below `from` (bytes of the file that this session did not write).
    pub fn new(handle: SyncHandle, from: u64) -> CacheRelease {
        CacheRelease {
            handle,
            released: from - from % PAGE,
        }
    }

    /// Releases the cached bytes below `upto` (durable, and read by every reader), in whole
    /// pages and once at least [`RELEASE_STEP`] accumulated. Never blocks on I/O: the range
    /// is clean, so the kernel only unmaps and frees its pages.
    pub fn advance(&mut self, upto: u64) {
        let upto = upto - upto % PAGE;
        if upto < self.released.saturating_add(RELEASE_STEP) {
            return;
        }
        let (Ok(offset), Ok(len)) = (
            i64::try_from(self.released),
            i64::try_from(upto - self.released),
        ) else {
            return;
        };
        let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
        if let Err(e) = nix::fcntl::posix_fadvise(self.handle.file.as_ref(), offset, len, advice) {
            // Only a hint: the bytes are durable either way, and stay cached a while longer.
            tracing::debug!(path = %self.handle.path.display(), error = %e, "cannot release cached bytes");
        }
        self.released = upto;
    }

    /// Where the released range ends.
    pub fn released(&self) -> u64 {
        self.released
    }
}

impl SyncHandle {
    /// Reads up to `max` bytes at `offset` (fewer at the end of the file). Blocking: call
    /// from the blocking pool.
    pub fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0u8; max];
        let mut filled = 0;
        while filled < max {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_at(&self.path)(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

/// An event file being written, for a body that arrives in pieces (one too large to
/// hold in memory). Its bytes count only after [`finish`](EventFile::finish).
pub struct EventFile {
    /// Shared with the blocking task of each append.
    file: Arc<File>,
    /// For error messages.
    path: PathBuf,
    /// The path relative to dst, as answered to the client.
    rel: String,
    /// Where the next piece goes.
    written: u64,
}

impl EventFile {
    /// Writes `bytes` after what is already in the file.
    pub async fn append(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        let (file, path, at) = (self.file.clone(), self.path.clone(), self.written);
        let len = bytes.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, at).map_err(io_at(&path)))
            .await??;
        self.written += len;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the file durable; returns its path relative to dst.
    pub async fn finish(self) -> Result<String, StorageError> {
        let EventFile {
            file, path, rel, ..
        } = self;
        tokio::task::spawn_blocking(move || file.sync_data().map_err(io_at(&path))).await??;
        Ok(rel)
    }
}

impl Storage {
    /// Opens (creating if needed) the recordings tree and the index.
    pub fn open(dst: &Path, statedir: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dst).map_err(io_at(dst))?;
        std::fs::create_dir_all(statedir).map_err(io_at(statedir))?;
        let index = Index::open(&statedir.join("index.redb"))?;
        let committer = Committer::start().map_err(io_at(statedir))?;
        Ok(Storage {
            dst: dst.to_path_buf(),
            index,
            committer,
        })
    }

    pub fn dst(&self) -> &Path {
        &self.dst
    }

    /// Opens (creating if needed) the copy of a recording that another node owns, at the
    /// same relative path as on the owner. Names come from a peer: both are sanitized.
    /// Appends continue at the current end of the file.
    pub async fn open_copy(
        &self,
        node_dir: &str,
        file_name: &str,
    ) -> Result<RecordingFile, StorageError> {
        let node_dir = layout::sanitize_component(node_dir);
        let name = layout::sanitize_file_name(file_name);
        let dir = self.dst.join(&node_dir);
        let path = dir.join(&name);
        let rel_path = format!("{node_dir}/{name}");
        let entry = Arc::new(commit::DirEntry::new(dir.clone()));
        let (file, len) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> Result<(File, u64), StorageError> {
                let open = |create_new: bool| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(create_new)
                        .open(&path)
                };
                // A new copy is the usual case; an existing one (a stream resumed after
                // a break) continues at its end. Either way the copy's first sync makes
                // its directory entry durable (an existing copy may have been created by
                // a stream that broke before its first sync).
                let file = match layout::in_dir(&dir, || open(true)) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        open(false).map_err(io_at(&path))?
                    }
                    Err(e) => return Err(io_at(&path)(e)),
                };
                let len = file.metadata().map_err(io_at(&path))?.len();
                Ok((file, len))
            }
        })
        .await??;
        Ok(RecordingFile::new(file, path, rel_path, len, entry))
    }

    /// Whether `<dst>/<node_dir>/<name>` exists (a name to skip when picking one).
    pub async fn recording_exists(&self, node_dir: &str, name: &str) -> bool {
        let path = self.dst.join(node_dir).join(name);
        tokio::fs::try_exists(&path).await.unwrap_or(true)
    }

    /// Creates the recording `<dst>/<node_dir>/<name>` exclusively (the name was reserved
    /// through the recorder set, or is only ever picked by this node), and returns once
    /// its directory entry is durable (one directory fsync shared by every recording
    /// created in that directory meanwhile).
    pub async fn create_recording_named(
        &self,
        node_dir: &str,
        name: &str,
    ) -> Result<RecordingFile, StorageError> {
        let dir = self.dst.join(node_dir);
        let path = dir.join(name);
        let entry = Arc::new(commit::DirEntry::new(dir.clone()));
        let name = name.to_string();
        let created = tokio::task::spawn_blocking(move || layout::create_new(&dir, &name)).await?;
        let (path, file) = match created {
            Ok(created) => created,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StorageError::Exists(path))
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        self.committer
            .sync_entry(entry.clone())
            .await
            .map_err(io_at(&path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(RecordingFile::new(
            file,
            path,
            format!("{node_dir}/{name}"),
            0,
            entry,
        ))
    }

    /// Returns once everything appended to the recording before this call is on stable storage.
    pub async fn sync(&self, recording: &SyncHandle) -> Result<(), StorageError> {
        self.committer
            .sync(recording.file.clone(), recording.entry.clone())
            .await
            .map_err(io_at(&recording.path))
    }

    /// Stores one event body, durably, as `<dst>/<node dir>/events/<time>-<id>.json`
    /// (`.invalid.json` if it is not a valid event). Returns the path relative to dst.
    pub async fn store_event(
        &self,
        node_dir: &str,
        body: Bytes,
        valid: bool,
    ) -> Result<String, StorageError> {
        let mut file = self.create_event_file(node_dir, valid).await?;
        file.append(body).await?;
        file.finish().await
    }

    /// Creates a new, empty event file (see [`store_event`](Self::store_event)) with its
    /// directory entry durable, for a body written piece by piece.
    pub async fn create_event_file(
        &self,
        node_dir: &str,
        valid: bool,
    ) -> Result<EventFile, StorageError> {
        let dir = self.dst.join(node_dir).join("events");
        let stem = format!(
            "{}-{}",
            layout::recording_stem(Utc::now()),
            uuid::Uuid::new_v4().simple()
        );
        let ext = if valid { "json" } else { "invalid.json" };
        let node_dir = node_dir.to_string();
        tokio::task::spawn_blocking(move || {
            let (path, file) = layout::create_unique(&dir, &stem, ext).map_err(io_at(&dir))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(EventFile {
                file: Arc::new(file),
                path,
                rel: format!("{node_dir}/events/{name}"),
                written: 0,
            })
        })
        .await?
    }

    /// Up to `max` bytes at `offset` of the recording at `rel_path` (as the index names it),
    /// fewer at its end.
    pub async fn read_recording(
        &self,
        rel_path: &str,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, StorageError> {
        let path = self.dst.join(rel_path);
        tokio::task::spawn_blocking(move || {
            let file = File::open(&path).map_err(io_at(&path))?;
            SyncHandle {
                file: Arc::new(file),
                path: path.clone(),
                entry: None,
            }
            .read_at(offset, max)
        })
        .await?
    }

    pub async fn get_record(&self, id: &str) -> Result<Option<SessionRecord>, StorageError> {
        let index = self.index.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || index.get(&id)).await?
    }

    /// Stores `record` durably; concurrent calls share one index commit.
    pub async fn put_record(&self, record: SessionRecord) -> Result<(), StorageError> {
        self.index.store(&record).await
    }

    /// Queues `record` for the index without waiting for its commit (for facts that a
    /// crash may lose, like a live session's header, which its recording holds anyway).
    /// A later [`Storage::put_record`] of the same session is committed after it.
    pub async fn queue_record(&self, record: SessionRecord) -> Result<(), StorageError> {
        self.index.queue(&record).await
    }

    pub async fn list_records(
        &self,
        filter: SessionFilter,
    ) -> Result<Vec<SessionRecord>, StorageError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.list(&filter)).await?
    }

    /// At startup: sessions still `live` in the index were cut by a crash. Mark them
    /// `aborted` with the byte count found on disk; the bytes themselves stay as they are.
    pub fn recover_crashed_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        let live = SessionFilter {
            state: Some(SessionState::Live.as_str().into()),
            ..SessionFilter::default()
        };
        let mut recovered = Vec::new();
        for mut record in self.index.list(&live)? {
            let path = self.dst.join(&record.path);
            record.bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if record.header.is_none() {
                record.header = header_from_file(&path);
            }
            record.state = SessionState::Aborted;
            record.ended_at = Some(Utc::now());
            if record.problem.is_none() {
                record.problem = Some(Problem {
                    line: 0,
                    reason: STOPPED_WHILE_LIVE.into(),
                });
            }
            self.index.put(&record)?;
            recovered.push(record);
        }
        Ok(recovered)
    }
}

/// The header of the recording at `path`, parsed from its first line; `None` if there is no
/// complete, valid header line within the header limit.
///
/// Why: the session pipeline indexes the header without waiting for the index commit, so a
/// crash right after a session's header arrived can leave its record without one. The
/// header is in the recording itself, and recovery takes it from there, so that the user
/// and node filters still find the session.
fn header_from_file(path: &Path) -> Option<crate::asciicast::Header> {
    use std::io::{BufRead, BufReader, Read};
    let max = crate::asciicast::Limits::default().max_header_bytes;
    let file = File::open(path).ok()?;
    let mut line = Vec::new();
    BufReader::new(file.take(max as u64 + 1))
        .read_until(b'\n', &mut line)
        .ok()?;
    if line.pop() != Some(b'\n') {
        return None;
    }
    crate::asciicast::parse_header(&line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recovery_takes_a_missing_header_from_the_recording() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dst = dir.path().join("dst");
        let storage = Storage::open(&dst, &dir.path().join("state")).expect("storage");
        std::fs::create_dir_all(dst.join("n")).expect("node dir");
        let header = r#"{"version":2,"width":80,"height":24,"sshUser":"alice","srcNode":"laptop"}"#;
        let files = [
            ("n/good.cast", format!("{header}\n[0.1,\"o\",\"hi\"]\n")),
            ("n/cut.cast", header[..20].to_string()),
            ("n/bad.cast", "not a header\n".to_string()),
        ];
        for (i, (path, content)) in files.iter().enumerate() {
            std::fs::write(dst.join(path), content).expect("write recording");
            let record = SessionRecord::new_live(format!("s{i}"), "n".into(), (*path).into(), "v2");
            storage.put_record(record).await.expect("put");
        }
        let mut recovered = storage.recover_crashed_sessions().expect("recover");
        recovered.sort_by(|a, b| a.id.cmp(&b.id));
        let users: Vec<Option<String>> = recovered
            .iter()
            .map(|r| r.header.as_ref().and_then(|h| h.ssh_user.clone()))
            .collect();
        assert_eq!(users, vec![Some("alice".to_string()), None, None]);
        assert!(recovered.iter().all(|r| r.state == SessionState::Aborted));
        assert_eq!(recovered[0].bytes, files[0].1.len() as u64);
    }

    /// Pages of the first `len` bytes of `file` that are in the page cache.
    fn resident_pages(file: &File, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        let mut pages = vec![0u8; len.div_ceil(PAGE as usize)];
        // SAFETY: a read-only shared mapping of `len` bytes of an open file, unmapped before
        // returning; mincore only reports which of its pages are resident.
        let rc = unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED, "mmap");
            let rc = libc::mincore(addr, len, pages.as_mut_ptr());
            libc::munmap(addr, len);
            rc
        };
        assert_eq!(rc, 0, "mincore");
        pages.iter().filter(|p| **p & 1 == 1).count()
    }

    #[test]
    fn durable_bytes_leave_the_page_cache_in_whole_steps_and_stay_readable() {
        // On a real disk: tmpfs pages are the data itself and are never dropped.
        let root = std::path::Path::new("/var/tmp");
        let dir = if root.is_dir() {
            tempfile::tempdir_in(root).expect("tempdir")
        } else {
            tempfile::tempdir().expect("tempdir")
        };
        let path = dir.path().join("f");
        let len = 3 * RELEASE_STEP as usize + 100;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        file.write_all_at(&data, 0).expect("write");
        file.sync_all().expect("sync");
        let handle = SyncHandle {
            file: Arc::new(file),
            path,
            entry: None,
        };
        let all = len.div_ceil(PAGE as usize);
        assert_eq!(resident_pages(&handle.file, len), all, "just written");

        let mut cache = CacheRelease::new(handle.clone(), 0);
        cache.advance(RELEASE_STEP - 1);
        assert_eq!(cache.released(), 0, "less than a step releases nothing");
        assert_eq!(resident_pages(&handle.file, len), all);
        cache.advance(len as u64);
        assert_eq!(cache.released(), 3 * RELEASE_STEP, "whole pages only");
        assert_eq!(
            resident_pages(&handle.file, len),
            1,
            "only the partial last page stays cached"
        );
        assert_eq!(handle.read_at(0, len).expect("read"), data);
    }

    /// Chunks of many sizes, empty ones included, more of them than one `pwritev` takes.
    fn chunks(count: usize) -> Vec<Bytes> {
        (0..count)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i * 7) % 13]))
            .collect()
    }

    #[test]
    fn a_vectored_write_puts_every_chunk_in_order_at_the_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::create(&path).expect("create");
        file.write_all_at(b"head", 0).expect("head");
        let chunks = chunks(3000);
        write_all_vectored_at(&file, &chunks, 4).expect("write");
        let mut want = b"head".to_vec();
        for c in &chunks {
            want.extend_from_slice(c);
        }
        assert_eq!(std::fs::read(&path).expect("read"), want);
    }

    #[tokio::test]
    async fn writes_behind_count_only_once_done_and_land_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Storage::open(&dir.path().join("dst"), &dir.path().join("state")).expect("storage");
        let mut file = storage.open_copy("n", "s.cast").await.expect("open");
        let mut want = Vec::new();
        for round in 0..50 {
            let batch = chunks(round + 1);
            let earlier = want.len() as u64;
            for c in &batch {
                want.extend_from_slice(c);
            }
            file.append_behind(batch).await.expect("append");
            // The call waited for every earlier batch and counts it; this one is not
            // counted until the next call (or settle) waits for it.
            assert_eq!(file.written(), earlier);
        }
        file.settle().await.expect("settle");
        assert_eq!(file.written(), want.len() as u64);
        let on_disk = std::fs::read(dir.path().join("dst/n/s.cast")).expect("read");
        assert_eq!(on_disk, want);
    }
}
