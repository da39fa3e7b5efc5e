//! The report functions: a stored report converted to the header's
//! structures. They work whether or not the module is initialized.

use super::sys::{
    self, P11WLD_ACTION, P11WLD_OBJECT_REF, P11WLD_PROBLEM, P11WLD_REPORT_INFO, P11WLD_TOKEN_REPORT,
};
use super::{copy_bytes, copy_text};
use crate::error::{Result, Rv};
use crate::ffi::{check_out, fill_list};
use crate::instance::guard;
use crate::replicate::report::{
    self, Action, ActionKind, Kind, ObjectName, Problem, ProblemKind, Report, Role, TokenEntry,
};
use cryptoki_sys::*;
use std::sync::Arc;

fn find(handle: sys::P11WLD_REPORT_HANDLE) -> Result<Arc<Report>> {
    report::get(handle).ok_or(Rv(CKR_ARGUMENTS_BAD))
}

fn count(n: usize) -> sys::p11wld_ulong {
    n as sys::p11wld_ulong
}

fn object_ref(object: &ObjectName) -> P11WLD_OBJECT_REF {
    let mut entry = P11WLD_OBJECT_REF {
        object_class: object.class,
        type_: object.subtype.unwrap_or(sys::P11WLD_NO_TYPE),
        id_len: count(object.id.len()),
        ..Default::default()
    };
    copy_bytes(&mut entry.label, &object.label);
    let stored_len = object.id.len().min(entry.id.len());
    entry.id[..stored_len].copy_from_slice(&object.id[..stored_len]);
    entry
}

fn token_report(token: &TokenEntry) -> P11WLD_TOKEN_REPORT {
    let mut flags = 0;
    if token.initialized_by_run {
        flags |= sys::P11WLD_TOKEN_INITIALIZED_BY_RUN;
    }
    if token.user_pin_set {
        flags |= sys::P11WLD_TOKEN_USER_PIN_SET;
    }
    if token.complete {
        flags |= sys::P11WLD_TOKEN_COMPLETE;
    }
    if token.objects.is_some() {
        flags |= sys::P11WLD_TOKEN_OBJECTS_READ;
    }
    let mut entry = P11WLD_TOKEN_REPORT {
        role: match token.role {
            Role::Master => sys::P11WLD_ROLE_MASTER,
            Role::Destination => sys::P11WLD_ROLE_DESTINATION,
        },
        position: count(token.position),
        vendor_slot_id: token.slot_id,
        flags,
        objects: count(token.objects.unwrap_or(0)),
        created: count(token.created),
        replaced: count(token.replaced),
        removed: count(token.removed),
        wrapped: count(token.wrapped),
        skipped: count(token.skipped),
        unchanged: count(token.unchanged),
        differences: count(token.differences),
        status: token.status,
        ..Default::default()
    };
    copy_text(&mut entry.module_name, &token.module_name);
    copy_bytes(&mut entry.label, &token.label);
    copy_text(&mut entry.serial, &token.serial);
    entry
}

fn action(action: &Action) -> P11WLD_ACTION {
    P11WLD_ACTION {
        token_index: count(action.token),
        kind: match action.kind {
            ActionKind::Create => sys::P11WLD_ACTION_CREATE,
            ActionKind::Replace => sys::P11WLD_ACTION_REPLACE,
            ActionKind::Remove => sys::P11WLD_ACTION_REMOVE,
        },
        object: object_ref(&action.object),
        wrapped: sys::p11wld_ulong::from(action.wrapped),
        done: sys::p11wld_ulong::from(action.done),
    }
}

fn problem_kind(kind: ProblemKind) -> sys::p11wld_ulong {
    match kind {
        ProblemKind::Slot => sys::P11WLD_PROBLEM_SLOT,
        ProblemKind::Token => sys::P11WLD_PROBLEM_TOKEN,
        ProblemKind::Pin => sys::P11WLD_PROBLEM_PIN,
        ProblemKind::CannotTravel => sys::P11WLD_PROBLEM_CANNOT_TRAVEL,
        ProblemKind::Failed => sys::P11WLD_PROBLEM_FAILED,
        ProblemKind::Cleanup => sys::P11WLD_PROBLEM_CLEANUP,
        ProblemKind::Missing => sys::P11WLD_PROBLEM_MISSING,
        ProblemKind::Extra => sys::P11WLD_PROBLEM_EXTRA,
        ProblemKind::AttributeDiffers => sys::P11WLD_PROBLEM_ATTRIBUTE_DIFFERS,
        ProblemKind::KeyDiffers => sys::P11WLD_PROBLEM_KEY_DIFFERS,
        ProblemKind::NotCompared => sys::P11WLD_PROBLEM_NOT_COMPARED,
    }
}

fn problem(problem: &Problem) -> P11WLD_PROBLEM {
    let mut flags = 0;
    if problem.object.is_some() {
        flags |= sys::P11WLD_PROBLEM_HAS_OBJECT;
    }
    if problem.skipped {
        flags |= sys::P11WLD_PROBLEM_SKIPPED;
    }
    let mut entry = P11WLD_PROBLEM {
        token_index: problem.token.map_or(sys::P11WLD_NONE, count),
        kind: problem_kind(problem.kind),
        flags,
        rv: problem.rv,
        object: problem.object.as_ref().map(object_ref).unwrap_or_default(),
        attribute: problem.attribute.unwrap_or(sys::P11WLD_NONE),
        ..Default::default()
    };
    copy_text(&mut entry.message, &problem.message);
    entry
}

/// `GetReportInfo`.
///
/// # Safety
/// `info` is NULL or valid for writes.
pub(super) unsafe extern "C" fn get_report_info(
    handle: sys::P11WLD_REPORT_HANDLE,
    info: *mut P11WLD_REPORT_INFO,
) -> sys::p11wld_rv {
    guard("GetReportInfo", || {
        check_out(info)?;
        let report = find(handle)?;
        let summary = P11WLD_REPORT_INFO {
            kind: match report.kind {
                Kind::Replicate => sys::P11WLD_REPORT_REPLICATE,
                Kind::Verify => sys::P11WLD_REPORT_VERIFY,
            },
            flags: report.flags,
            status: report.status,
            token_count: count(report.tokens.len()),
            action_count: count(report.actions.len()),
            problem_count: count(report.problems.len()),
            master_objects: count(report.master_objects),
            differences: count(report.differences()),
        };
        // SAFETY: checked non-NULL; the caller passes a P11WLD_REPORT_INFO.
        unsafe { info.write(summary) };
        Ok(())
    })
}

/// `GetReportTokens`.
///
/// # Safety
/// `count` is NULL or valid; `tokens` is NULL or points to `*count`
/// writable entries.
pub(super) unsafe extern "C" fn get_report_tokens(
    handle: sys::P11WLD_REPORT_HANDLE,
    tokens: *mut P11WLD_TOKEN_REPORT,
    count: *mut sys::p11wld_ulong,
) -> sys::p11wld_rv {
    guard("GetReportTokens", || {
        let list: Vec<_> = find(handle)?.tokens.iter().map(token_report).collect();
        // SAFETY: forwarded from the caller's contract.
        unsafe { fill_list(&list, tokens, count) }
    })
}

/// `GetReportActions`.
///
/// # Safety
/// As [`get_report_tokens`].
pub(super) unsafe extern "C" fn get_report_actions(
    handle: sys::P11WLD_REPORT_HANDLE,
    actions: *mut P11WLD_ACTION,
    count: *mut sys::p11wld_ulong,
) -> sys::p11wld_rv {
    guard("GetReportActions", || {
        let list: Vec<_> = find(handle)?.actions.iter().map(action).collect();
        // SAFETY: forwarded from the caller's contract.
        unsafe { fill_list(&list, actions, count) }
    })
}

/// `GetReportProblems`.
///
/// # Safety
/// As [`get_report_tokens`].
pub(super) unsafe extern "C" fn get_report_problems(
    handle: sys::P11WLD_REPORT_HANDLE,
    problems: *mut P11WLD_PROBLEM,
    count: *mut sys::p11wld_ulong,
) -> sys::p11wld_rv {
    guard("GetReportProblems", || {
        let list: Vec<_> = find(handle)?.problems.iter().map(problem).collect();
        // SAFETY: forwarded from the caller's contract.
        unsafe { fill_list(&list, problems, count) }
    })
}

/// `GetReportProblemMessage`: the whole message of one problem, which
/// `GetReportProblems` cuts to its field.
///
/// # Safety
/// `size` is NULL or valid; `message` is NULL or points to `*size`
/// writable bytes.
pub(super) unsafe extern "C" fn get_report_problem_message(
    handle: sys::P11WLD_REPORT_HANDLE,
    index: sys::p11wld_ulong,
    message: *mut std::ffi::c_char,
    size: *mut sys::p11wld_ulong,
) -> sys::p11wld_rv {
    guard("GetReportProblemMessage", || {
        let report = find(handle)?;
        let problem = usize::try_from(index)
            .ok()
            .and_then(|index| report.problems.get(index))
            .ok_or(Rv(CKR_ARGUMENTS_BAD))?;
        let text: Vec<std::ffi::c_char> = problem
            .message
            .bytes()
            .chain([0])
            .map(|b| b as std::ffi::c_char)
            .collect();
        // SAFETY: forwarded from the caller's contract.
        unsafe { fill_list(&text, message, size) }
    })
}

/// `FreeReport`.
pub(super) extern "C" fn free_report(handle: sys::P11WLD_REPORT_HANDLE) -> sys::p11wld_rv {
    guard("FreeReport", || {
        if report::free(handle) {
            Ok(())
        } else {
            Err(Rv(CKR_ARGUMENTS_BAD))
        }
    })
}
