//! Saves each publication to the snapshot file (format and validation in
//! [`super::snapshot_file`]). It lives with the publisher because it persists what the
//! publisher published and counts its writes in [`PublishStatus`]; the file format, beside it,
//! knows nothing of the publisher.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::PublishStatus;
use super::snapshot_file::{
    MIN_WRITE_INTERVAL, Origin, SnapshotFileError, answers, encode, write_atomic,
};
use crate::dns::zone::ClientTable;
use crate::steering::Inputs;

/// What the publisher hands the writer after each publication.
#[derive(Debug, Clone)]
pub struct Published {
    /// The inputs the snapshot was built from.
    pub inputs: Inputs,
    /// Its client table (answers by client).
    pub table: Arc<ClientTable>,
}

/// Where and what the writer saves.
#[derive(Debug, Clone)]
pub struct WriterTarget {
    /// The file.
    pub path: PathBuf,
    /// Its origin.
    pub origin: Origin,
}

/// Saves each new publication (at most once per [`MIN_WRITE_INTERVAL`]) until shutdown, then
/// the last one if it is not saved yet. `confirmed_ms` gives when the data was last confirmed
/// against the database (Unix milliseconds).
pub async fn run_writer(
    target: WriterTarget,
    mut rx: watch::Receiver<Option<Published>>,
    confirmed_ms: impl Fn() -> i64 + Send + 'static,
    status: Arc<PublishStatus>,
    shutdown: CancellationToken,
) {
    let target = Arc::new(target);
    let mut dirty = false;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            r = rx.changed() => r.is_err(),
        };
        dirty |= rx.has_changed().unwrap_or(false) || !stopping;
        let latest = rx.borrow_and_update().clone();
        if let (true, Some(p)) = (dirty, latest) {
            dirty = false;
            let confirmed = DateTime::from_timestamp_millis(confirmed_ms()).unwrap_or_default();
            let target = target.clone();
            let written = tokio::task::spawn_blocking(move || {
                let answers = answers(&p.inputs, &p.table);
                let bytes = encode(&p.inputs, &answers, &target.origin, Utc::now(), confirmed)?;
                write_atomic(&target.path, &bytes)?;
                Ok::<_, SnapshotFileError>(bytes.len())
            })
            .await
            .unwrap_or_else(|e| Err(SnapshotFileError::Body(format!("writer task failed: {e}"))));
            match written {
                Ok(n) => {
                    status.file_writes.fetch_add(1, Ordering::Relaxed);
                    status.file_bytes.store(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    status.file_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "saving the snapshot to disk failed");
                }
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(MIN_WRITE_INTERVAL) => {}
        }
    }
}
