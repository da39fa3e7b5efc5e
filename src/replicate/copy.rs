//! Writing one destination: initializing it when needed, then carrying
//! out its plan.

use super::attributes::{Attr, DERIVED, KEY_MATERIAL, TOKEN_SET};
use super::display::escape_nonprintable;
use super::objects::Object;
use super::plan::{Plan, Route, Step};
use super::report::{ActionKind, ObjectName, Phase, Problem, ProblemKind, Progress, Report};
use super::slots::{self, PhysicalSlot, TokenState};
use super::token::{init_token, TokenSession};
use super::transport::Transport;
use crate::error::{Result, Rv};
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use std::collections::HashSet;
use std::sync::Arc;

/// Builds the template that creates a copy of `object` with
/// C_CreateObject: every attribute but the ones the token sets or computes
/// itself.
///
/// Empty dates and an empty CKA_ALLOWED_MECHANISMS are left out too: they
/// are the defaults, and p11-kit-client.so 0.24 turns an empty value of
/// these types into CKR_ATTRIBUTE_VALUE_INVALID.
pub fn create_template(object: &Object) -> Vec<Attr> {
    const EMPTY_IS_DEFAULT: &[CK_ATTRIBUTE_TYPE] =
        &[CKA_START_DATE, CKA_END_DATE, CKA_ALLOWED_MECHANISMS];
    object
        .attributes
        .iter()
        .filter(|(kind, _)| !TOKEN_SET.contains(kind) && !DERIVED.contains(kind))
        .filter(|(kind, value)| !(value.is_empty() && EMPTY_IS_DEFAULT.contains(kind)))
        .map(|(kind, value)| Attr {
            kind: *kind,
            value: value.clone(),
        })
        .collect()
}

/// Builds the template that unwraps a copy of `object`: the create
/// template without the key material, which the wrapped key carries.
pub fn unwrap_template(object: &Object) -> Vec<Attr> {
    create_template(object)
        .into_iter()
        .filter(|attr| !KEY_MATERIAL.contains(&attr.kind))
        .collect()
}

/// Builds a 32-byte label field from a label read from another token's
/// field: its bytes unchanged, blank-padded, never NUL-terminated.
pub fn label_field(label: &[u8]) -> [u8; 32] {
    let mut field = [b' '; 32];
    let end = label.len().min(32);
    field[..end].copy_from_slice(&label[..end]);
    field
}

/// Serials of the initialized tokens of a module.
fn initialized_serials(module: &VendorModule) -> Result<HashSet<String>> {
    let mut serials = HashSet::new();
    for slot_id in module.slot_list(true)? {
        if let Some(token) = slots::token_state(module, slot_id) {
            if token.initialized {
                serials.insert(token.serial);
            }
        }
    }
    Ok(serials)
}

/// Initializes an uninitialized token with `label` and the SO PIN, finds
/// it again, and sets the user PIN. Returns its slot id and state.
///
/// SoftHSM2 2.6.1 moves a token it initializes to a new slot id with a new
/// serial, so the token is looked up again as the one initialized token
/// with this label whose serial the module did not show before.
pub fn initialize(
    slot: &PhysicalSlot,
    label: &[u8],
    so_pin: &[u8],
    user_pin: &[u8],
) -> Result<(CK_SLOT_ID, TokenState)> {
    let module = &slot.module;
    let known = initialized_serials(module)?;
    init_token(module, slot.slot_id, so_pin, &label_field(label))?;

    let mut found = Vec::new();
    for slot_id in module.slot_list(true)? {
        if let Some(token) = slots::token_state(module, slot_id) {
            if token.initialized && token.label == label && !known.contains(&token.serial) {
                found.push((slot_id, token));
            }
        }
    }
    let (slot_id, mut token) = match found.len() {
        1 => found.remove(0),
        count => {
            log::error!(
                "module {}: {count} new tokens labelled \"{}\" after C_InitToken on slot {:#x}",
                module.name,
                escape_nonprintable(label),
                slot.slot_id
            );
            return Err(Rv(CKR_TOKEN_NOT_RECOGNIZED));
        }
    };
    set_user_pin(module, slot_id, so_pin, user_pin)?;
    token.user_pin_initialized = true;
    Ok((slot_id, token))
}

/// Sets the user PIN of a token whose SO PIN is `so_pin`.
pub fn set_user_pin(
    module: &Arc<VendorModule>,
    slot_id: CK_SLOT_ID,
    so_pin: &[u8],
    user_pin: &[u8],
) -> Result<()> {
    let session = TokenSession::open(module, slot_id, true)?;
    session.login(CKU_SO, so_pin)?;
    let result = session.init_pin(user_pin);
    let _ = session.logout();
    result
}

/// Returns whether a call's code means that the device behind the
/// session failed or is gone, so further calls on it fail too.
/// CKR_GENERAL_ERROR counts only when C_GetSessionInfo fails as well,
/// because tokens also return it for a single object they reject.
pub fn device_failed(session: &TokenSession, rv: Rv) -> bool {
    match rv.0 {
        CKR_DEVICE_ERROR
        | CKR_DEVICE_REMOVED
        | CKR_TOKEN_NOT_PRESENT
        | CKR_SESSION_HANDLE_INVALID
        | CKR_SESSION_CLOSED => true,
        CKR_GENERAL_ERROR => session.info().is_err(),
        _ => false,
    }
}

/// The outcome of writing one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Every step succeeded.
    Complete,
    /// Some objects failed; the others were written.
    Incomplete,
    /// The destination's device failed; nothing more was written to it.
    DestinationLost,
    /// The master's device failed; no destination can be written.
    MasterLost,
}

/// A failed step: its code and what it was doing, for the message.
struct StepFailure {
    rv: Rv,
    doing: &'static str,
}

/// One destination being written.
pub struct Writer<'a> {
    pub master: &'a TokenSession,
    pub master_objects: &'a [Object],
    pub dest: &'a TokenSession,
    pub dest_objects: &'a [Object],
    pub token: usize,
    /// The destination's position, module, vendor slot and serial, for
    /// messages.
    pub name: String,
    /// Index in the report's actions of each write, then each remove.
    pub actions: Vec<usize>,
}

impl Writer<'_> {
    /// Carries out `plan`. It stops at the first failure of the master's
    /// or the destination's device and reports it once, because every
    /// later call on that device would fail too.
    pub fn run(&self, plan: &Plan, report: &mut Report, progress: &mut Progress) -> Written {
        let needs_transport = plan.writes.iter().any(|step| {
            matches!(
                step,
                Step::Create {
                    route: Route::Wrap(_),
                    ..
                } | Step::Replace {
                    route: Route::Wrap(_),
                    ..
                }
            )
        });
        let transport = if needs_transport {
            match Transport::open(self.master, self.dest) {
                Ok(transport) => Some(transport),
                Err(rv) => {
                    if let Some(lost) = self.lost_device(rv) {
                        let message = format!("setting up the transport keys failed: {rv}");
                        self.stop(report, rv, lost, message, plan.steps(), progress);
                        return lost;
                    }
                    report.fail(
                        Some(self.token),
                        ProblemKind::Failed,
                        rv.0,
                        format!(
                            "destination {}: setting up the transport keys failed: {rv}; \
                             sensitive keys cannot be copied",
                            self.name
                        ),
                    );
                    None
                }
            }
        } else {
            None
        };

        let mut outcome = Written::Complete;
        for (index, step) in plan.writes.iter().enumerate() {
            let written = self.write(step, transport.as_ref(), self.actions[index], report);
            if let Err(failure) = written {
                let object = &self.master_objects[step_master(step)];
                if let Some(lost) = self.lost_device(failure.rv) {
                    let message = format!(
                        "{} {} failed: {}",
                        failure.doing,
                        object.describe(),
                        failure.rv
                    );
                    let remaining = plan.steps() - index;
                    self.stop(report, failure.rv, lost, message, remaining, progress);
                    outcome = lost;
                    break;
                }
                self.object_failed(report, object, failure.rv, failure.doing);
                outcome = Written::Incomplete;
            }
            progress.step(Phase::Copy, Some(self.token));
        }
        if let Some(transport) = transport {
            for (on_master, rv) in transport.close() {
                // A device that failed destroys its session objects with
                // the session, so only the other side's failures count.
                let on_lost_device = match outcome {
                    Written::MasterLost => on_master,
                    Written::DestinationLost => !on_master,
                    _ => false,
                };
                if on_lost_device {
                    continue;
                }
                let token = if on_master { 0 } else { self.token };
                report.fail(
                    Some(token),
                    ProblemKind::Cleanup,
                    rv.0,
                    format!(
                        "destroying a transport session object failed: {rv}; the token \
                         destroys it when the session closes"
                    ),
                );
            }
        }
        match outcome {
            Written::Complete => self.remove(plan, report, progress),
            Written::Incomplete => {
                if !plan.removes.is_empty() {
                    report.fail(
                        Some(self.token),
                        ProblemKind::Failed,
                        CKR_FUNCTION_FAILED,
                        format!(
                            "destination {}: {} objects the master lacks are kept, because not \
                             every object of the master is in place; run the replication again",
                            self.name,
                            plan.removes.len()
                        ),
                    );
                }
                Written::Incomplete
            }
            lost => lost,
        }
    }

    /// Removes the objects the master lacks, after every write succeeded.
    fn remove(&self, plan: &Plan, report: &mut Report, progress: &mut Progress) -> Written {
        let mut outcome = Written::Complete;
        for (offset, &d) in plan.removes.iter().enumerate() {
            let object = &self.dest_objects[d];
            match self.dest.destroy(object.handle) {
                Ok(()) => {
                    report.tokens[self.token].removed += 1;
                    report.actions[self.actions[plan.writes.len() + offset]].done = true;
                }
                Err(rv) if device_failed(self.dest, rv) => {
                    let message = format!("removing {} failed: {rv}", object.describe());
                    let remaining = plan.removes.len() - offset;
                    self.stop(
                        report,
                        rv,
                        Written::DestinationLost,
                        message,
                        remaining,
                        progress,
                    );
                    return Written::DestinationLost;
                }
                Err(rv) => {
                    outcome = Written::Incomplete;
                    self.object_failed(report, object, rv, "removing");
                }
            }
            progress.step(Phase::Remove, Some(self.token));
        }
        outcome
    }

    /// Returns which device failed, if `rv` means that one did: the
    /// master's when C_GetSessionInfo fails on its session, else the
    /// destination's.
    fn lost_device(&self, rv: Rv) -> Option<Written> {
        let device_level = matches!(
            rv.0,
            CKR_DEVICE_ERROR
                | CKR_DEVICE_REMOVED
                | CKR_TOKEN_NOT_PRESENT
                | CKR_SESSION_HANDLE_INVALID
                | CKR_SESSION_CLOSED
                | CKR_GENERAL_ERROR
        );
        if !device_level {
            return None;
        }
        if self.master.info().is_err() {
            return Some(Written::MasterLost);
        }
        device_failed(self.dest, rv).then_some(Written::DestinationLost)
    }

    /// Records, once, that a device failed and the steps left were not
    /// carried out, and counts them as done for the progress callback.
    fn stop(
        &self,
        report: &mut Report,
        rv: Rv,
        lost: Written,
        message: String,
        remaining: usize,
        progress: &mut Progress,
    ) {
        let (token, device) = match lost {
            Written::MasterLost => (0, "the master's device"),
            _ => (self.token, "its device"),
        };
        report.fail(
            Some(token),
            ProblemKind::Failed,
            rv.0,
            format!(
                "destination {}: {message}; {device} failed, so {remaining} steps, this one \
                 included, were not carried out",
                self.name
            ),
        );
        progress.done += remaining;
    }

    fn write(
        &self,
        step: &Step,
        transport: Option<&Transport>,
        action: usize,
        report: &mut Report,
    ) -> std::result::Result<(), StepFailure> {
        let (master, route, old) = match step {
            Step::Create { master, route } => (*master, *route, None),
            Step::Replace { master, route, old } => (*master, *route, Some(*old)),
        };
        let object = &self.master_objects[master];
        let created = match route {
            Route::Create => self.dest.create(&create_template(object)),
            Route::Wrap(mechanism) => match transport {
                Some(transport) => {
                    transport.carry(mechanism, object.handle, &unwrap_template(object))
                }
                None => Err(Rv(CKR_KEY_NOT_WRAPPABLE)),
            },
        };
        if let Err(rv) = created {
            return Err(StepFailure {
                rv,
                doing: "copying",
            });
        }
        let entry = &mut report.tokens[self.token];
        if matches!(route, Route::Wrap(_)) {
            entry.wrapped += 1;
        }
        match old {
            None => entry.created += 1,
            Some(old) => {
                entry.replaced += 1;
                if let Err(rv) = self.dest.destroy(old) {
                    // The new copy is in place; the old one is now an extra
                    // object, which the next run removes.
                    let stale = self.dest_objects.iter().find(|o| o.handle == old);
                    if let Some(stale) = stale {
                        self.object_failed(report, stale, rv, "destroying the replaced copy of");
                    }
                }
            }
        }
        report.actions[action].done = true;
        Ok(())
    }

    fn object_failed(&self, report: &mut Report, object: &Object, rv: Rv, doing: &str) {
        report.problem(Problem {
            token: Some(self.token),
            kind: ProblemKind::Failed,
            rv: rv.0,
            object: Some(ObjectName::of(object)),
            attribute: None,
            skipped: false,
            message: format!(
                "destination {}: {doing} {} failed: {rv}",
                self.name,
                object.describe()
            ),
        });
    }
}

/// Returns the index of the master object a step writes.
fn step_master(step: &Step) -> usize {
    match step {
        Step::Create { master, .. } | Step::Replace { master, .. } => *master,
    }
}

/// Records the planned actions of one destination in the report; returns
/// their indexes in the order [`Writer::run`] expects.
pub fn record_plan(
    report: &mut Report,
    token: usize,
    plan: &Plan,
    master_objects: &[Object],
    dest_objects: &[Object],
) -> Vec<usize> {
    let mut indexes = Vec::with_capacity(plan.steps());
    for step in &plan.writes {
        let (master, route, kind) = match step {
            Step::Create { master, route } => (*master, *route, ActionKind::Create),
            Step::Replace { master, route, .. } => (*master, *route, ActionKind::Replace),
        };
        indexes.push(report.actions.len());
        report.actions.push(super::report::Action {
            token,
            kind,
            object: ObjectName::of(&master_objects[master]),
            wrapped: matches!(route, Route::Wrap(_)),
            done: false,
        });
    }
    for &d in &plan.removes {
        indexes.push(report.actions.len());
        report.actions.push(super::report::Action {
            token,
            kind: ActionKind::Remove,
            object: ObjectName::of(&dest_objects[d]),
            wrapped: false,
            done: false,
        });
    }
    indexes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_field_blank_padded() {
        let field = label_field(b"WLD_Slot_11");
        assert_eq!(&field[..11], b"WLD_Slot_11");
        assert!(field[11..].iter().all(|&b| b == b' '));
        assert!(!field.contains(&0));
    }

    #[test]
    fn label_field_keeps_invalid_utf8() {
        let mut label = vec![b'A'; 31];
        label.push(0xE2);
        assert_eq!(label_field(&label).as_slice(), label.as_slice());
    }
}
