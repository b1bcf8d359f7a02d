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
    /// Starts the commit thread. It ends when every handle is dropped.
    pub fn start() -> std::io::Result<Committer> {
        let (queue, rx) = mpsc::channel(QUEUE_BOUND);
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(rx))?;
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

fn run(mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        commit_round(&mut batch);
    }
}

/// Syncs each distinct file of the batch once and answers every request.
fn commit_round(batch: &mut Vec<Request>) {
    let started = Instant::now();
    let mut files: HashMap<*const File, Arc<File>> = HashMap::new();
    for request in batch.iter() {
        files
            .entry(Arc::as_ptr(&request.file))
            .or_insert_with(|| request.file.clone());
    }
    let files: Vec<Arc<File>> = files.into_values().collect();
    let results = sync_all(&files);
    metrics::histogram!(m::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::COMMIT_BATCH_FILES).record(files.len() as f64);
    for request in batch.drain(..) {
        let position = files.iter().position(|f| Arc::ptr_eq(f, &request.file));
        let result = match position.and_then(|i| results.get(i)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(std::io::Error::new(e.kind(), e.to_string())),
            None => Err(std::io::Error::other("file missing from commit round")),
        };
        // The waiter may have gone away (client disconnected); nothing to do then.
        let _ = request.reply.send(result);
    }
}

fn sync_all(files: &[Arc<File>]) -> Vec<std::io::Result<()>> {
    if files.len() <= 1 {
        return files.iter().map(|f| f.sync_data()).collect();
    }
    let per_thread = files.len().div_ceil(SYNC_PARALLELISM);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || chunk.iter().map(|f| f.sync_data()).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(std::io::Error::other("fsync thread panicked"))])
            })
            .collect()
    })
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
}
