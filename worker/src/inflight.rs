//! The jobs this worker holds right now, with the token that interrupts each one and
//! the reason it was interrupted.

use phasefleet::queue::Lease;
use phasefleet::{JobId, RunId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a running job was interrupted; decides what the runtime writes afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Shutdown past the grace period: hand the job back without spending an attempt.
    Shutdown,
    /// The lease is gone (another worker holds the job): write nothing.
    LeaseLost,
    /// The lease was not renewed within its length (PostgreSQL unreachable), so
    /// another worker may hold the job: hand it back under the old lease, which
    /// changes nothing if the lease is indeed gone.
    LeaseUnrenewed,
    /// Someone cancelled the job: mark it cancelled.
    Cancelled,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub lease: Lease,
    pub run_id: Option<RunId>,
    pub cancel: CancellationToken,
    pub reason: Option<StopReason>,
    /// From when the lease is known to be held for a whole lease length: the job's
    /// arrival here (just after its claim), or the start of the last heartbeat that
    /// renewed it.
    pub renewed: Instant,
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
                renewed: Instant::now(),
            },
        );
    }

    /// Forget a job; returns why it was interrupted, if it was.
    pub fn remove(&self, id: JobId) -> Option<StopReason> {
        self.lock().remove(&id).and_then(|e| e.reason)
    }

    /// The leases in `sent`, renewed by a heartbeat that started at `at`.
    pub fn renewed(&self, sent: &[Lease], at: Instant) {
        let mut all = self.lock();
        for lease in sent {
            if let Some(e) = all.get_mut(&lease.job_id)
                && e.lease.token == lease.token
            {
                e.renewed = e.renewed.max(at);
            }
        }
    }

    /// Interrupt every job whose lease was not renewed within `lease`: the database
    /// may have given it to another worker already. Returns their ids.
    pub fn stop_unrenewed(&self, lease: Duration) -> Vec<JobId> {
        let mut stopped = Vec::new();
        for (id, e) in self.lock().iter_mut() {
            if e.reason.is_none() && e.renewed.elapsed() >= lease {
                e.reason = Some(StopReason::LeaseUnrenewed);
                e.cancel.cancel();
                stopped.push(*id);
            }
        }
        stopped
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
