//! The result of a replication or verification, kept until the caller
//! frees it, and the progress callback.

use super::objects::Object;
use super::slots::PhysicalSlot;
use cryptoki_sys::*;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Replicate,
    Verify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    Destination,
}

/// One token of a run.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    pub role: Role,
    pub position: usize,
    pub module_name: String,
    pub slot_id: CK_SLOT_ID,
    /// The label's bytes as the token stores them.
    pub label: Vec<u8>,
    pub serial: String,
    pub initialized_by_run: bool,
    pub user_pin_set: bool,
    pub complete: bool,
    /// The number of the token's objects, or `None` when the run stopped
    /// before reading them.
    pub objects: Option<usize>,
    pub created: usize,
    pub replaced: usize,
    pub removed: usize,
    pub wrapped: usize,
    pub skipped: usize,
    pub unchanged: usize,
    pub differences: usize,
    pub status: CK_RV,
}

impl TokenEntry {
    pub fn new(role: Role, slot: &PhysicalSlot) -> TokenEntry {
        TokenEntry {
            role,
            position: slot.position,
            module_name: slot.module.name.clone(),
            slot_id: slot.slot_id,
            label: slot.label().to_vec(),
            serial: slot.serial().to_owned(),
            initialized_by_run: false,
            user_pin_set: false,
            complete: false,
            objects: None,
            created: 0,
            replaced: 0,
            removed: 0,
            wrapped: 0,
            skipped: 0,
            unchanged: 0,
            differences: 0,
            status: CKR_OK,
        }
    }
}

/// An object named by class, type, label and id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectName {
    pub class: CK_OBJECT_CLASS,
    pub subtype: Option<CK_ULONG>,
    pub label: Vec<u8>,
    pub id: Vec<u8>,
}

impl ObjectName {
    pub fn of(object: &Object) -> ObjectName {
        ObjectName {
            class: object.class,
            subtype: object.subtype,
            label: object.label().to_vec(),
            id: object.id().to_vec(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    Create,
    Replace,
    Remove,
}

#[derive(Clone, Debug)]
pub struct Action {
    pub token: usize,
    pub kind: ActionKind,
    pub object: ObjectName,
    pub wrapped: bool,
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    Slot,
    Token,
    Pin,
    CannotTravel,
    Failed,
    Cleanup,
    Missing,
    Extra,
    AttributeDiffers,
    KeyDiffers,
    NotCompared,
}

impl ProblemKind {
    pub fn is_difference(self) -> bool {
        matches!(
            self,
            ProblemKind::Missing
                | ProblemKind::Extra
                | ProblemKind::AttributeDiffers
                | ProblemKind::KeyDiffers
        )
    }
}

#[derive(Clone, Debug)]
pub struct Problem {
    /// Index in the token list; `None` for the run as a whole.
    pub token: Option<usize>,
    pub kind: ProblemKind,
    pub rv: CK_RV,
    pub object: Option<ObjectName>,
    pub attribute: Option<CK_ATTRIBUTE_TYPE>,
    pub skipped: bool,
    pub message: String,
}

/// The report of one run.
#[derive(Clone, Debug)]
pub struct Report {
    pub kind: Kind,
    pub flags: CK_ULONG,
    pub status: CK_RV,
    pub master_objects: usize,
    pub tokens: Vec<TokenEntry>,
    pub actions: Vec<Action>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn new(kind: Kind, flags: CK_ULONG) -> Report {
        Report {
            kind,
            flags,
            status: CKR_OK,
            master_objects: 0,
            tokens: Vec::new(),
            actions: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Records a problem; the first one that is not a difference, a
    /// skipped key or a note sets the run's status.
    pub fn problem(&mut self, problem: Problem) {
        let counts = !problem.skipped
            && !problem.kind.is_difference()
            && problem.kind != ProblemKind::NotCompared;
        if counts {
            if self.status == CKR_OK {
                self.status = problem.rv;
            }
            if let Some(token) = problem.token.and_then(|t| self.tokens.get_mut(t)) {
                if token.status == CKR_OK {
                    token.status = problem.rv;
                }
            }
        }
        log::warn!("{}", problem.message);
        self.problems.push(problem);
    }

    /// Records a problem of the run as a whole, with no object.
    pub fn fail(&mut self, token: Option<usize>, kind: ProblemKind, rv: CK_RV, message: String) {
        self.problem(Problem {
            token,
            kind,
            rv,
            object: None,
            attribute: None,
            skipped: false,
            message,
        });
    }

    pub fn differences(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.kind.is_difference())
            .count()
    }
}

/// Reports handed out and not freed yet, by handle.
static REPORTS: Mutex<Option<FxHashMap<u64, Arc<Report>>>> = Mutex::new(None);
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

/// Stores a report and returns its handle, never 0.
pub fn store(report: Report) -> u64 {
    let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    REPORTS
        .lock()
        .get_or_insert_with(FxHashMap::default)
        .insert(handle, Arc::new(report));
    handle
}

pub fn get(handle: u64) -> Option<Arc<Report>> {
    REPORTS.lock().as_ref()?.get(&handle).cloned()
}

/// Frees a report; returns whether the handle named one.
pub fn free(handle: u64) -> bool {
    REPORTS
        .lock()
        .as_mut()
        .is_some_and(|reports| reports.remove(&handle).is_some())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Check,
    Initialize,
    Copy,
    Remove,
    Compare,
}

/// A progress function: phase, token index, steps done, steps in all.
pub type ProgressFn = dyn Fn(Phase, Option<usize>, usize, usize);

/// The caller's progress callback, with the step count of the run.
pub struct Progress<'a> {
    callback: Option<&'a ProgressFn>,
    pub done: usize,
    pub total: usize,
}

impl<'a> Progress<'a> {
    pub fn new(callback: Option<&'a ProgressFn>) -> Progress<'a> {
        Progress {
            callback,
            done: 0,
            total: 0,
        }
    }

    /// Reports the current state.
    pub fn report(&self, phase: Phase, token: Option<usize>) {
        if let Some(callback) = self.callback {
            callback(phase, token, self.done.min(self.total), self.total);
        }
    }

    /// Counts one step done and reports it.
    pub fn step(&mut self, phase: Phase, token: Option<usize>) {
        self.done += 1;
        self.report(phase, token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_get_free() {
        let handle = store(Report::new(Kind::Verify, 0));
        assert_ne!(handle, 0);
        assert_eq!(get(handle).unwrap().kind, Kind::Verify);
        assert!(free(handle));
        assert!(get(handle).is_none());
        assert!(!free(handle));
    }

    #[test]
    fn first_problem_sets_status() {
        let mut report = Report::new(Kind::Replicate, 0);
        report.fail(None, ProblemKind::Missing, CKR_OK, "difference".into());
        assert_eq!(report.status, CKR_OK);
        report.fail(None, ProblemKind::Pin, CKR_PIN_INCORRECT, "pin".into());
        report.fail(None, ProblemKind::Failed, CKR_DEVICE_ERROR, "later".into());
        assert_eq!(report.status, CKR_PIN_INCORRECT);
        assert_eq!(report.differences(), 1);
    }
}
