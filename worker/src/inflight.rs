//! The jobs this worker holds right now, with the token that interrupts each one and
//! the reason it was interrupted.

use phasefleet::queue::Lease;
use phasefleet::{JobId, RunId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// Why a running job was interrupted; decides what the runtime writes afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Shutdown past the grace period: hand the job back without spending an attempt.
    Shutdown,
    /// The lease is gone: write nothing.
    LeaseLost,
    /// Someone cancelled the job: mark it cancelled.
    Cancelled,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub lease: Lease,
    pub run_id: Option<RunId>,
    pub cancel: CancellationToken,
    pub reason: Option<StopReason>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<JobId, Entry>>>);

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // operation is a single insert/remove/update), so a poisoned lock is usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, lease: Lease, run_id: Option<RunId>, cancel: CancellationToken) {
        self.lock().insert(
            lease.job_id,
            Entry {
                lease,
                run_id,
                cancel,
                reason: None,
            },
        );
    }

    /// Forget a job; returns why it was interrupted, if it was.
    pub fn remove(&self, id: JobId) -> Option<StopReason> {
        self.lock().remove(&id).and_then(|e| e.reason)
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.lock().values().map(|e| e.lease).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Interrupt one job, keeping the first reason given.
    pub fn stop(&self, id: JobId, reason: StopReason) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.reason.get_or_insert(reason);
            e.cancel.cancel();
        }
    }

    /// Interrupt the jobs of one run.
    pub fn stop_run(&self, run: RunId, reason: StopReason) {
        for e in self.lock().values_mut().filter(|e| e.run_id == Some(run)) {
            e.reason.get_or_insert(reason);
            e.cancel.cancel();
        }
    }

    pub fn stop_all(&self, reason: StopReason) {
        for e in self.lock().values_mut() {
            e.reason.get_or_insert(reason);
            e.cancel.cancel();
        }
    }
}
