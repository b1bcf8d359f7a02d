//! Group commit: one thread makes many sessions' appends durable together.
//!
//! A session that wrote bytes asks [`Committer::sync`] and waits. The committer thread
//! takes every request that is queued, `fdatasync`s each distinct file once (a few in
//! parallel), then answers them all. A request that arrives while a round is running
//! waits for the next round, because only an fsync that *starts* after a write covers
//! it. So the ack delay a client sees is bounded by two rounds plus queueing: with
//! rounds of R ms, at most about 2R ms after the bytes were written.
//!
//! New files need their directory entries on disk too. A round fsyncs each directory
//! with a pending entry once, however many new files it holds, beside the files' own
//! `fdatasync`s: so sessions and copies that start together in one directory share one
//! directory fsync. A new recording's entry is synced before its session is admitted
//! ([`Committer::sync_entry`]), by a second thread that does only that, so an admission
//! never waits behind other files' `fdatasync`s; a replica's copy created (or opened)
//! since its last sync has its entry synced with its first bytes.
//!
//! This module owns the fsync schedule and its latency metric. It does not own files
//! (sessions do) nor decide what an ack means (the session layer does).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::metrics as m;

/// Queue bound: one outstanding request per live session, so this only needs to be at
/// least the session limit; senders wait (back-pressure) if it is ever full.
pub const QUEUE_BOUND: usize = 16 * 1024;

/// Files fsynced concurrently within one round; fsync latency, not CPU, is the limit.
const SYNC_PARALLELISM: usize = 4;

struct Request {
    /// The file whose written bytes to make durable; `None` for a directory entry alone.
    file: Option<Arc<File>>,
    /// The file's directory entry, if it may not be durable yet.
    entry: Option<Arc<DirEntry>>,
    reply: oneshot::Sender<std::io::Result<()>>,
}

/// A file's entry in its directory, and whether a directory fsync since the file was
/// created (or opened) covers it.
#[derive(Debug)]
pub struct DirEntry {
    dir: PathBuf,
    /// Set once a round fsynced `dir` after the file existed; later syncs skip the
    /// directory.
    durable: AtomicBool,
}

impl DirEntry {
    pub fn new(dir: PathBuf) -> DirEntry {
        DirEntry {
            dir,
            durable: AtomicBool::new(false),
        }
    }

    fn pending(&self) -> bool {
        !self.durable.load(Ordering::Acquire)
    }
}

/// One fsync of a round: a file's data or a directory's entries.
#[derive(Clone)]
enum Target {
    Data(Arc<File>),
    Dir(PathBuf),
}

impl Target {
    fn sync(&self) -> std::io::Result<()> {
        match self {
            Target::Data(file) => file.sync_data(),
            Target::Dir(dir) => super::layout::sync_dir(dir),
        }
    }
}

/// Handle to the group-commit thread. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    /// Files' bytes (and copies' new entries with them), to the `group-commit` thread.
    queue: mpsc::Sender<Request>,
    /// New recordings' entries alone, to the `entry-commit` thread: an admission waits
    /// for its entry, and must not wait behind a round of other files' `fdatasync`s.
    /// Same bound as `queue`.
    entries: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the commit threads and the fsync helpers. They end when every handle is
    /// dropped.
    pub fn start() -> std::io::Result<Committer> {
        let (queue, rx) = mpsc::channel(QUEUE_BOUND);
        let helpers = SyncHelpers::start(SYNC_PARALLELISM - 1)?;
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(rx, &helpers))?;
        let (entries, rx) = mpsc::channel(QUEUE_BOUND);
        let no_helpers = SyncHelpers::start(0)?;
        std::thread::Builder::new()
            .name("entry-commit".into())
            .spawn(move || run(rx, &no_helpers))?;
        Ok(Committer { queue, entries })
    }

    /// Returns once every byte written to `file` before this call is on stable storage,
    /// and `entry` (the file's name in its directory) too.
    pub async fn sync(&self, file: Arc<File>, entry: Option<Arc<DirEntry>>) -> std::io::Result<()> {
        let entry = entry.filter(|e| e.pending());
        submit(&self.queue, Some(file), entry).await
    }

    /// Returns once `entry` (a newly created file's name in its directory) is on stable
    /// storage: its directory is fsynced in the entry thread's next round, once for every
    /// entry of that directory queued meanwhile.
    pub async fn sync_entry(&self, entry: Arc<DirEntry>) -> std::io::Result<()> {
        if !entry.pending() {
            return Ok(());
        }
        submit(&self.entries, None, Some(entry)).await
    }
}

/// Queues one request for a commit thread and waits for its round's answer.
async fn submit(
    queue: &mpsc::Sender<Request>,
    file: Option<Arc<File>>,
    entry: Option<Arc<DirEntry>>,
) -> std::io::Result<()> {
    let (reply, answer) = oneshot::channel();
    let gone = || std::io::Error::other("group-commit thread stopped");
    queue
        .send(Request { file, entry, reply })
        .await
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

fn run(mut rx: mpsc::Receiver<Request>, helpers: &SyncHelpers) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        commit_round(&mut batch, helpers);
    }
}

/// Syncs each distinct file, and each directory with a new entry, of the batch once and
/// answers every request.
fn commit_round(batch: &mut Vec<Request>, helpers: &SyncHelpers) {
    let started = Instant::now();
    let mut files: HashMap<*const File, Arc<File>> = HashMap::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    for request in batch.iter() {
        if let Some(file) = &request.file {
            files
                .entry(Arc::as_ptr(file))
                .or_insert_with(|| file.clone());
        }
        if let Some(entry) = request.entry.as_ref().filter(|e| e.pending()) {
            dirs.insert(entry.dir.clone());
        }
    }
    let file_count = files.len();
    let targets: Vec<Target> = files
        .into_values()
        .map(Target::Data)
        .chain(dirs.into_iter().map(Target::Dir))
        .collect();
    let mut outcomes = helpers.sync_all(&targets).into_iter();
    let mut file_results: HashMap<*const File, std::io::Result<()>> = HashMap::new();
    let mut dir_results: HashMap<PathBuf, std::io::Result<()>> = HashMap::new();
    for target in targets {
        let outcome = outcomes
            .next()
            .unwrap_or_else(|| Err(std::io::Error::other("no answer from the commit round")));
        match target {
            Target::Data(file) => drop(file_results.insert(Arc::as_ptr(&file), outcome)),
            Target::Dir(dir) => drop(dir_results.insert(dir, outcome)),
        }
    }
    // The round metrics describe rounds that made bytes durable (what acks wait for);
    // the entry thread's directory-only rounds are left out.
    if file_count > 0 {
        metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::COMMIT_BATCH_FILES).record(file_count as f64);
    }
    for request in batch.drain(..) {
        let mut result = match &request.file {
            Some(file) => copy_result(file_results.get(&Arc::as_ptr(file))),
            None => Ok(()),
        };
        if let Some(entry) = &request.entry {
            if entry.pending() {
                match dir_results.get(&entry.dir) {
                    Some(Ok(())) => entry.durable.store(true, Ordering::Release),
                    other => result = result.and(copy_result(other)),
                }
            }
        }
        // The waiter may have gone away (client disconnected); nothing to do then.
        let _ = request.reply.send(result);
    }
}

/// One request's share of a round's outcome (`io::Error` is not `Clone`).
fn copy_result(outcome: Option<&std::io::Result<()>>) -> std::io::Result<()> {
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(std::io::Error::new(e.kind(), e.to_string())),
        None => Err(std::io::Error::other("missing from the commit round")),
    }
}

/// A share of a round's files for one helper, and where its results go.
type SyncJob = (
    Vec<Target>,
    std::sync::mpsc::SyncSender<Vec<std::io::Result<()>>>,
);

/// Long-lived threads that fsync a share of a round's files beside the commit thread, so
/// a round with several files doesn't start (and tear down) threads each time.
struct SyncHelpers {
    /// One job queue per helper; bound 1: a helper has at most one share of one round.
    jobs: Vec<std::sync::mpsc::SyncSender<SyncJob>>,
}

impl SyncHelpers {
    fn start(count: usize) -> std::io::Result<SyncHelpers> {
        let mut jobs = Vec::with_capacity(count);
        for i in 0..count {
            let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(1);
            std::thread::Builder::new()
                .name(format!("fsync-{i}"))
                .spawn(move || {
                    for (targets, reply) in rx {
                        let _ = reply.send(targets.iter().map(Target::sync).collect());
                    }
                })?;
            jobs.push(tx);
        }
        Ok(SyncHelpers { jobs })
    }

    /// Every target synced, spread over this thread and the helpers; results in the
    /// order of `targets`.
    fn sync_all(&self, targets: &[Target]) -> Vec<std::io::Result<()>> {
        if targets.len() <= 1 || self.jobs.is_empty() {
            return targets.iter().map(Target::sync).collect();
        }
        let per_share = targets.len().div_ceil(self.jobs.len() + 1);
        let mut shares = targets.chunks(per_share);
        let own = shares.next().unwrap_or_default();
        let mut waiting = Vec::new();
        for (share, helper) in shares.zip(&self.jobs) {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            match helper.send((share.to_vec(), reply)) {
                Ok(()) => waiting.push((share.len(), Some(answer))),
                // A helper that died: this share fails rather than hang the round.
                Err(_) => waiting.push((share.len(), None)),
            }
        }
        let mut results: Vec<std::io::Result<()>> = own.iter().map(Target::sync).collect();
        for (len, answer) in waiting {
            match answer.and_then(|a| a.recv().ok()) {
                Some(share) if share.len() == len => results.extend(share),
                _ => results.extend(
                    (0..len).map(|_| Err(std::io::Error::other("fsync helper thread stopped"))),
                ),
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn many_concurrent_syncs_all_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = Committer::start().expect("start");
        let mut waits = Vec::new();
        for i in 0..50 {
            let mut file = File::create(dir.path().join(format!("f{i}"))).expect("create");
            file.write_all(b"data").expect("write");
            let file = Arc::new(file);
            let c = committer.clone();
            waits.push(tokio::spawn(async move { c.sync(file, None).await }));
        }
        for w in waits {
            w.await.expect("join").expect("sync");
        }
    }

    #[tokio::test]
    async fn a_new_files_directory_is_synced_once_then_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = Committer::start().expect("start");
        let mut file = File::create(dir.path().join("new")).expect("create");
        file.write_all(b"data").expect("write");
        let entry = Arc::new(DirEntry::new(dir.path().to_path_buf()));
        assert!(entry.pending());
        committer
            .sync(Arc::new(file), Some(entry.clone()))
            .await
            .expect("sync");
        assert!(!entry.pending(), "the round fsynced the directory");
    }

    #[tokio::test]
    async fn new_entries_of_one_directory_become_durable_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = Committer::start().expect("start");
        let entries: Vec<Arc<DirEntry>> = (0..20)
            .map(|i| {
                File::create(dir.path().join(format!("e{i}"))).expect("create");
                Arc::new(DirEntry::new(dir.path().to_path_buf()))
            })
            .collect();
        let waits: Vec<_> = entries
            .iter()
            .map(|e| {
                let (c, e) = (committer.clone(), e.clone());
                tokio::spawn(async move { c.sync_entry(e).await })
            })
            .collect();
        for w in waits {
            w.await.expect("join").expect("sync_entry");
        }
        assert!(entries.iter().all(|e| !e.pending()));
        let missing = Arc::new(DirEntry::new(dir.path().join("gone")));
        assert!(committer.sync_entry(missing.clone()).await.is_err());
        assert!(
            missing.pending(),
            "a failed directory fsync leaves the entry pending"
        );
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_synced_fails_the_files_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let committer = Committer::start().expect("start");
        let file = Arc::new(File::create(dir.path().join("f")).expect("create"));
        let gone = Arc::new(DirEntry::new(dir.path().join("no-such-dir")));
        let result = committer.sync(file.clone(), Some(gone.clone())).await;
        assert!(
            result.is_err(),
            "a missing directory must not count as durable"
        );
        assert!(gone.pending());
        committer
            .sync(file, None)
            .await
            .expect("the file alone syncs");
    }

    #[test]
    fn helpers_answer_every_file_of_a_round_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let helpers = SyncHelpers::start(3).expect("helpers");
        for count in [0, 1, 2, 7, 40] {
            let files: Vec<Target> = (0..count)
                .map(|i| {
                    let mut f =
                        File::create(dir.path().join(format!("r{count}-{i}"))).expect("create");
                    f.write_all(b"x").expect("write");
                    Target::Data(Arc::new(f))
                })
                .collect();
            let results = helpers.sync_all(&files);
            assert_eq!(results.len(), count);
            assert!(results.iter().all(|r| r.is_ok()));
        }
    }
}
