//! The fetch pipeline: which blocks a read needs, the Range requests that bring them (one
//! per run of contiguous missing blocks), and each block stored and published as it arrives.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::blob::{Blob, BlobState, Fill, Wait};
use super::verify::check_sum;
use super::{BlobCache, BLOCK, MAX_REQUEST, SMALL_BLOB};
use crate::content::ByteStream;
use crate::digest::Digester;

/// Why a run of blocks did not all land; its readers fail with EIO.
#[derive(Debug)]
pub(super) enum FetchError {
    /// The source refused the request, broke it off, or sent other than asked.
    Source(String),
    /// The bytes do not match the blob: it is poisoned, which said so.
    Poisoned,
    /// A task storing blocks panicked (the panic itself is reported by the runtime).
    Panicked,
}

impl FetchError {
    /// Says what failed, unless that was said already.
    fn log(&self) {
        if let FetchError::Source(what) = self {
            tracing::error!("{what}");
        }
    }
}

/// Where the blocks of one request go as they arrive.
enum Landing {
    /// A small blob, fetched whole: held and hashed, stored only once it matches its digest,
    /// so no byte of it is served unverified.
    Whole {
        hasher: Box<Digester>,
        held: Vec<Bytes>,
    },
    /// Blocks are stored and published as they arrive: one batch stores on a blocking thread
    /// while the next gathers (`queued`, from block `first`), so a fast stream costs a thread
    /// hop per batch, not per block (the hops measured more CPU than the copies).
    Streamed {
        storing: Option<JoinHandle<Result<(), FetchError>>>,
        first: u64,
        queued: Vec<Bytes>,
    },
}

/// The most blocks a batch gathers while the one before is stored: bounds what a slow disk
/// holds in memory per request.
const MAX_BATCH: usize = 16;

impl Landing {
    fn streamed() -> Landing {
        Landing::Streamed {
            storing: None,
            first: 0,
            queued: Vec::new(),
        }
    }

    /// Waits for the batch being stored, if any.
    async fn settle(&mut self) -> Result<(), FetchError> {
        match self {
            Landing::Streamed { storing, .. } => match storing.take() {
                Some(prev) => prev.await.unwrap_or(Err(FetchError::Panicked)),
                None => Ok(()),
            },
            Landing::Whole { .. } => Ok(()),
        }
    }
}

/// Groups sorted block numbers into runs of contiguous blocks, each at most `per_request` long.
fn runs(missing: &[u64], per_request: u64) -> Vec<Range<u64>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < missing.len() {
        let mut j = i + 1;
        while j < missing.len()
            && missing[j] == missing[j - 1] + 1
            && (j - i) < per_request as usize
        {
            j += 1;
        }
        runs.push(missing[i]..missing[j - 1] + 1);
        i = j;
    }
    runs
}

impl BlobCache {
    /// Starts fetches for missing blocks of `need` and `prefetch`; returns what to wait for.
    pub(super) fn ensure(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        need: Range<u64>,
        prefetch: Range<u64>,
    ) -> Vec<Wait> {
        let mut waits = Vec::new();
        let mut st = blob.state.lock().unwrap();
        if st.verified && st.present_count == blob.blocks {
            return waits;
        }
        let mut missing = self.missing(blob, &st, &need, &prefetch, &mut waits);
        // A small blob is always fetched whole, so it is verified before use (an uncached
        // one may have lost only some of its blocks from memory).
        if blob.desc.size <= SMALL_BLOB && !missing.is_empty() {
            missing = (0..blob.blocks)
                .filter(|b| !st.inflight.contains_key(b))
                .collect();
        }
        // At most MAX_REQUEST per request, except a small blob: always one request, so it can
        // be verified before use.
        let per_request = if blob.desc.size <= SMALL_BLOB {
            u64::MAX
        } else {
            MAX_REQUEST / BLOCK
        };
        for run in runs(&missing, per_request) {
            self.start_run(blob, &mut st, run, &need, &mut waits);
        }
        waits
    }

    /// The blocks of `need` and `prefetch` neither at hand nor on their way; blocks of `need`
    /// on their way join `waits`.
    fn missing(
        &self,
        blob: &Blob,
        st: &BlobState,
        need: &Range<u64>,
        prefetch: &Range<u64>,
        waits: &mut Vec<Wait>,
    ) -> Vec<u64> {
        let all = if prefetch.is_empty() {
            need.clone()
        } else {
            need.start.min(prefetch.start)..need.end.max(prefetch.end)
        };
        let mem = st.uncached.then(|| self.memory.lock().unwrap());
        let in_memory = |b: u64| mem.as_ref().is_some_and(|m| m.contains(&(blob.id, b)));
        let mut missing = Vec::new();
        for b in all {
            let needed = need.contains(&b);
            let wanted = needed || prefetch.contains(&b);
            if !wanted || st.has(b) || in_memory(b) {
                continue;
            }
            if let Some(rx) = st.inflight.get(&b) {
                if needed {
                    waits.push((rx.clone(), b));
                }
                continue;
            }
            missing.push(b);
        }
        missing
    }

    /// Registers a run of blocks as in flight (its blocks of `need` join `waits`) and spawns
    /// its request.
    fn start_run(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        st: &mut BlobState,
        run: Range<u64>,
        need: &Range<u64>,
        waits: &mut Vec<Wait>,
    ) {
        let (tx, rx) = watch::channel(Fill {
            upto: run.start,
            failed: false,
            since: Instant::now(),
        });
        for b in run.clone() {
            st.inflight.insert(b, rx.clone());
            if need.contains(&b) {
                waits.push((rx.clone(), b));
            }
        }
        let cache = self.clone();
        let blob = blob.clone();
        let tx = Arc::new(tx);
        tokio::spawn(async move {
            let landed = cache.fetch_run(&blob, run.clone(), &tx).await;
            if let Err(e) = &landed {
                e.log();
            }
            let mut st = blob.state.lock().unwrap();
            for b in run {
                st.inflight.remove(&b);
            }
            drop(st);
            if landed.is_err() {
                tx.send_modify(|f| f.failed = true);
            }
        });
    }

    /// Fetches a run of blocks with one Range request and stores each block as it arrives, so
    /// a reader waits for its block, not for the whole request.
    async fn fetch_run(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        run: Range<u64>,
        fill: &Arc<watch::Sender<Fill>>,
    ) -> Result<(), FetchError> {
        let size = blob.desc.size;
        let start = run.start * BLOCK;
        let end = (run.end * BLOCK).min(size);
        tracing::trace!("fetching {} {start}..{end}", blob.desc.digest);
        let stream = self
            .source
            .fetch_range(&blob.desc, start, end - start)
            .await
            .map_err(|e| {
                FetchError::Source(format!(
                    "reading {} at {start}..{end}: {e}",
                    blob.desc.digest
                ))
            })?;
        let mut landing = if start == 0 && end == size {
            Landing::Whole {
                hasher: Box::new(blob.desc.digest.digester()),
                held: Vec::new(),
            }
        } else {
            Landing::streamed()
        };
        let received = self
            .receive(blob, run.clone(), stream, &mut landing, fill)
            .await;
        let (cache, blob, fill) = (self.clone(), blob.clone(), fill.clone());
        tokio::task::spawn_blocking(move || cache.end_run(&blob, run, landing, received, &fill))
            .await
            .unwrap_or(Err(FetchError::Panicked))
    }

    /// Cuts what the request brings into blocks and lands each; ends once the last block
    /// handed on is stored.
    async fn receive(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        run: Range<u64>,
        mut stream: ByteStream,
        landing: &mut Landing,
        fill: &Arc<watch::Sender<Fill>>,
    ) -> Result<(), FetchError> {
        let digest = &blob.desc.digest;
        let (start, end) = (run.start * BLOCK, (run.end * BLOCK).min(blob.desc.size));
        let mut next = run.start;
        let mut block = BytesMut::with_capacity(blob.block_len(next));
        let received = 'receive: loop {
            let chunk = match stream.next().await {
                None => break Ok(()),
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    break Err(FetchError::Source(format!(
                        "reading {digest} at {start}..{end}: {e}"
                    )))
                }
            };
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                if next == run.end {
                    break 'receive Err(FetchError::Source(format!(
                        "reading {digest}: more than {start}..{end}"
                    )));
                }
                let n = (blob.block_len(next) - block.len()).min(rest.len());
                block.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if block.len() < blob.block_len(next) {
                    continue;
                }
                let data = std::mem::take(&mut block).freeze();
                self.fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
                if next + 1 < run.end {
                    block.reserve(blob.block_len(next + 1));
                }
                if let Err(e) = self.land(blob, next, data, landing, fill).await {
                    break 'receive Err(e);
                }
                next += 1;
            }
        };
        let settled = match received {
            // What gathered behind the last batch is stored too, even after a failure: the
            // block map keeps every block that landed.
            Ok(()) | Err(FetchError::Source(_)) => match self.flush(blob, landing, fill).await {
                Ok(()) => landing.settle().await,
                flushed => flushed,
            },
            Err(_) => landing.settle().await,
        };
        received.and(settled)?;
        if next < run.end {
            return Err(FetchError::Source(format!(
                "reading {digest}: the range {start}..{end} ended early"
            )));
        }
        Ok(())
    }

    /// Hands on block `b` as it arrives: held for the whole-blob check, or queued to be
    /// stored, in order, once the batch before it is.
    async fn land(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        b: u64,
        data: Bytes,
        landing: &mut Landing,
        fill: &Arc<watch::Sender<Fill>>,
    ) -> Result<(), FetchError> {
        match landing {
            Landing::Whole { hasher, held } => {
                hasher.update(&data);
                held.push(data);
                Ok(())
            }
            Landing::Streamed {
                storing,
                first,
                queued,
            } => {
                if queued.is_empty() {
                    *first = b;
                }
                queued.push(data);
                let busy = storing.as_ref().is_some_and(|s| !s.is_finished());
                if busy && queued.len() < MAX_BATCH {
                    return Ok(());
                }
                self.flush(blob, landing, fill).await
            }
        }
    }

    /// Waits for the batch being stored, then starts storing what has gathered.
    async fn flush(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        landing: &mut Landing,
        fill: &Arc<watch::Sender<Fill>>,
    ) -> Result<(), FetchError> {
        landing.settle().await?;
        let Landing::Streamed {
            storing,
            first,
            queued,
        } = landing
        else {
            return Ok(());
        };
        if queued.is_empty() {
            return Ok(());
        }
        let (cache, blob, fill) = (self.clone(), blob.clone(), fill.clone());
        let (b, batch) = (*first, std::mem::take(queued));
        *storing = Some(tokio::task::spawn_blocking(move || {
            cache.take_blocks(&blob, b, batch, &fill)
        }));
        Ok(())
    }

    /// Checks, stores and publishes a batch of blocks of a streamed run (from block `first`),
    /// and starts hashing them. A block that cannot be stored is still served, from memory.
    fn take_blocks(
        self: &Arc<Self>,
        blob: &Arc<Blob>,
        first: u64,
        batch: Vec<Bytes>,
        fill: &watch::Sender<Fill>,
    ) -> Result<(), FetchError> {
        for (b, data) in (first..).zip(&batch) {
            if let Err(why) = check_sum(blob, b, data) {
                announce(fill, b);
                self.poison(blob, &why);
                return Err(FetchError::Poisoned);
            }
            let stored = self.store_block(blob, b, data);
            let stored = stored.map_err(|why| self.not_stored(blob, why)).is_ok();
            self.publish_block(blob, b, data.clone(), stored);
        }
        announce(fill, first + batch.len() as u64);
        // Hashing, the slowest stage, runs as a task of its own so it never delays the next
        // batch; it is handed the batch, which the memory LRU may already have dropped. Its
        // errors poison the blob, which every later read sees.
        let (cache, blob) = (self.clone(), blob.clone());
        tokio::task::spawn_blocking(move || cache.advance_hash(&blob, (first, &batch)));
        Ok(())
    }

    /// Ends a run, received whole or not: a small blob is checked, then stored and published;
    /// otherwise the block map records what landed, even of a failed request, for the next
    /// mount.
    fn end_run(
        &self,
        blob: &Arc<Blob>,
        run: Range<u64>,
        landing: Landing,
        received: Result<(), FetchError>,
        fill: &watch::Sender<Fill>,
    ) -> Result<(), FetchError> {
        let Landing::Whole { hasher, held } = landing else {
            if let Err(e) = self.save_map(blob) {
                // Only the next mount's resume is lost. Not a warning: on a full disk the log
                // (often on the same disk) cannot take it either.
                tracing::debug!("writing the block map of {}: {e}", blob.desc.digest);
            }
            return received;
        };
        received?;
        if let Err(e) = hasher.check(&blob.desc.digest) {
            self.poison(blob, &e.to_string());
            return Err(FetchError::Poisoned);
        }
        // Every block is on disk before any is marked present: a failure halfway must not
        // leave blocks of a small blob that a later, partial request would serve unverified.
        let stored = (run.start..)
            .zip(&held)
            .try_for_each(|(b, data)| self.store_block(blob, b, data))
            .map_err(|why| self.not_stored(blob, why))
            .is_ok();
        for (b, data) in (run.start..).zip(held) {
            self.publish_block(blob, b, data, stored);
        }
        announce(fill, run.end);
        self.complete(blob);
        Ok(())
    }

    /// Makes a fetched block readable: into the memory LRU (its own buffer, so the LRU holds
    /// exactly what it counts), marked present if it was stored. Its readers are told by
    /// `announce`, once per batch.
    fn publish_block(&self, blob: &Blob, b: u64, data: Bytes, stored: bool) {
        self.memory.lock().unwrap().put((blob.id, b), data);
        if stored {
            blob.state.lock().unwrap().set(b);
        }
    }
}

/// Tells the readers of a request that its blocks before `upto` are readable. Once per batch,
/// not per block: every reader waiting on the request wakes at each call, and a sequential
/// reader's readahead keeps a dozen waiting.
fn announce(fill: &watch::Sender<Fill>, upto: u64) {
    fill.send_modify(|f| {
        f.upto = upto;
        f.since = Instant::now();
    });
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_are_contiguous_and_bounded() {
        assert_eq!(runs(&[], 4), vec![]);
        assert_eq!(runs(&[1, 2, 3, 5, 6, 9], 4), vec![1..4, 5..7, 9..10]);
        assert_eq!(runs(&[0, 1, 2, 3, 4, 5], 4), vec![0..4, 4..6]);
        assert_eq!(runs(&[0, 1, 2], u64::MAX), vec![0..3]);
    }
}
