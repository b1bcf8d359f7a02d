//! Group commit: one thread makes many sessions' appends durable together.
//!
//! A session that wrote bytes asks [`Committer::sync`] and waits. The committer thread
//! takes every request that is queued, `fdatasync`s each distinct file once (a few in
//! parallel), then answers them all. A request that arrives while a round is running
//! waits for the next round, because only an fsync that *starts* after a write covers
//! it. So the ack delay a client sees is bounded by two rounds plus queueing: with
//! rounds of R ms, at most about 2R ms after the bytes were written.
//!
//! This module owns the fsync schedule and its latency metric. It does not own files
//! (sessions do) nor decide what an ack means (the session layer does).

use std::collections::HashMap;
use std::fs::File;
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
    file: Arc<File>,
    reply: oneshot::Sender<std::io::Result<()>>,
}

/// Handle to the group-commit thread. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the commit thread and its fsync helpers. They end when every handle is
    /// dropped.
    pub fn start() -> std::io::Result<Committer> {
        let (queue, rx) = mpsc::channel(QUEUE_BOUND);
        let helpers = SyncHelpers::start(SYNC_PARALLELISM - 1)?;
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(rx, &helpers))?;
        Ok(Committer { queue })
    }

    /// Returns once every byte written to `file` before this call is on stable storage.
    pub async fn sync(&self, file: Arc<File>) -> std::io::Result<()> {
        let (reply, answer) = oneshot::channel();
        let gone = || std::io::Error::other("group-commit thread stopped");
        self.queue
            .send(Request { file, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
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

/// Syncs each distinct file of the batch once and answers every request.
fn commit_round(batch: &mut Vec<Request>, helpers: &SyncHelpers) {
    let started = Instant::now();
    let mut files: HashMap<*const File, Arc<File>> = HashMap::new();
    for request in batch.iter() {
        files
            .entry(Arc::as_ptr(&request.file))
            .or_insert_with(|| request.file.clone());
    }
    let files: Vec<Arc<File>> = files.into_values().collect();
    let results: HashMap<*const File, std::io::Result<()>> = files
        .iter()
        .map(Arc::as_ptr)
        .zip(helpers.sync_all(&files))
        .collect();
    metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::COMMIT_BATCH_FILES).record(files.len() as f64);
    for request in batch.drain(..) {
        let result = match results.get(&Arc::as_ptr(&request.file)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(std::io::Error::new(e.kind(), e.to_string())),
            None => Err(std::io::Error::other("file missing from commit round")),
        };
        // The waiter may have gone away (client disconnected); nothing to do then.
        let _ = request.reply.send(result);
    }
}

/// A share of a round's files for one helper, and where its results go.
type SyncJob = (
    Vec<Arc<File>>,
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
                    for (files, reply) in rx {
                        let _ = reply.send(files.iter().map(|f| f.sync_data()).collect());
                    }
                })?;
            jobs.push(tx);
        }
        Ok(SyncHelpers { jobs })
    }

    /// `fdatasync` of every file, spread over this thread and the helpers; results in the
    /// order of `files`.
    fn sync_all(&self, files: &[Arc<File>]) -> Vec<std::io::Result<()>> {
        if files.len() <= 1 || self.jobs.is_empty() {
            return files.iter().map(|f| f.sync_data()).collect();
        }
        let per_share = files.len().div_ceil(self.jobs.len() + 1);
        let mut shares = files.chunks(per_share);
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
        let mut results: Vec<std::io::Result<()>> = own.iter().map(|f| f.sync_data()).collect();
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
            waits.push(tokio::spawn(async move { c.sync(file).await }));
        }
        for w in waits {
            w.await.expect("join").expect("sync");
        }
    }

    #[test]
    fn helpers_answer_every_file_of_a_round_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let helpers = SyncHelpers::start(3).expect("helpers");
        for count in [0, 1, 2, 7, 40] {
            let files: Vec<Arc<File>> = (0..count)
                .map(|i| {
                    let mut f =
                        File::create(dir.path().join(format!("r{count}-{i}"))).expect("create");
                    f.write_all(b"x").expect("write");
                    Arc::new(f)
                })
                .collect();
            let results = helpers.sync_all(&files);
            assert_eq!(results.len(), count);
            assert!(results.iter().all(|r| r.is_ok()));
        }
    }
}
