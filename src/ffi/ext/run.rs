//! `Replicate` and `Verify`: the caller's arguments checked and turned
//! into requests of the `replicate` module.

use super::sys::{
    self, P11WLD_PROGRESS, P11WLD_REPLICATE_ARGS, P11WLD_SLOT_REF, P11WLD_VERIFY_ARGS,
};
use crate::error::{Result, Rv};
use crate::ffi::{bytes, check_out};
use crate::instance::enter;
use crate::replicate::report::{self, Phase, Progress};
use crate::replicate::slots::SlotRef;
use crate::replicate::{run, verify};
use cryptoki_sys::*;
use std::ffi::CStr;

/// The maximum number of slot references one call may pass; more are
/// taken for a corrupt count.
const MAX_REFERENCES: sys::p11wld_ulong = 4096;

const REPLICATE_FLAGS: sys::p11wld_ulong = sys::P11WLD_REPLICATE_DRY_RUN
    | sys::P11WLD_REPLICATE_SKIP_UNEXTRACTABLE
    | sys::P11WLD_REPLICATE_ALL;
const VERIFY_FLAGS: sys::p11wld_ulong = sys::P11WLD_VERIFY_WLD_SLOT | sys::P11WLD_VERIFY_ALL;

/// Reads a NUL-terminated text field; one without a NUL, or not UTF-8,
/// is rejected.
fn field_text(field: &[std::ffi::c_char]) -> Result<String> {
    // SAFETY: c_char and u8 have the same size and alignment.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(field.as_ptr().cast(), field.len()) };
    let text = CStr::from_bytes_until_nul(bytes)
        .ok()
        .and_then(|s| s.to_str().ok())
        .ok_or(Rv(CKR_ARGUMENTS_BAD))?;
    Ok(text.trim_end_matches(' ').to_owned())
}

/// Converts one slot reference. A position that expects an empty serial
/// must name its module, because uninitialized tokens often all have an
/// empty serial.
fn slot_ref(reference: &P11WLD_SLOT_REF) -> Result<SlotRef> {
    let serial = field_text(&reference.serial)?;
    match reference.kind {
        sys::P11WLD_REF_POSITION => {
            let module = field_text(&reference.module_name)?;
            if serial.is_empty() && module.is_empty() {
                return Err(Rv(CKR_ARGUMENTS_BAD));
            }
            Ok(SlotRef::Position {
                position: usize::try_from(reference.position).map_err(|_| Rv(CKR_ARGUMENTS_BAD))?,
                serial,
                module,
                slot_id: (reference.vendor_slot_id != sys::P11WLD_NONE)
                    .then_some(reference.vendor_slot_id),
            })
        }
        sys::P11WLD_REF_SERIAL => Ok(SlotRef::Serial(serial)),
        _ => Err(Rv(CKR_ARGUMENTS_BAD)),
    }
}

/// Converts a caller's array of slot references.
///
/// # Safety
/// `list` points to `count` references when not NULL.
unsafe fn slot_refs(
    list: *const P11WLD_SLOT_REF,
    count: sys::p11wld_ulong,
) -> Result<Vec<SlotRef>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if list.is_null() || count > MAX_REFERENCES {
        return Err(Rv(CKR_ARGUMENTS_BAD));
    }
    // SAFETY: non-NULL, and the caller vouches for `count` entries.
    let list = unsafe { std::slice::from_raw_parts(list, count as usize) };
    list.iter().map(slot_ref).collect()
}

fn phase_code(phase: Phase) -> sys::p11wld_ulong {
    match phase {
        Phase::Check => sys::P11WLD_PHASE_CHECK,
        Phase::Initialize => sys::P11WLD_PHASE_INITIALIZE,
        Phase::Copy => sys::P11WLD_PHASE_COPY,
        Phase::Remove => sys::P11WLD_PHASE_REMOVE,
        Phase::Compare => sys::P11WLD_PHASE_COMPARE,
    }
}

type Callback = Box<dyn Fn(Phase, Option<usize>, usize, usize)>;

/// Wraps the caller's progress function, if any.
fn progress_callback(
    function: sys::P11WLD_PROGRESS_CALLBACK,
    context: *mut std::ffi::c_void,
) -> Option<Callback> {
    let function = function?;
    Some(Box::new(move |phase, token, done, total| {
        let progress = P11WLD_PROGRESS {
            phase: phase_code(phase),
            token_index: token.map_or(sys::P11WLD_NONE, |t| t as sys::p11wld_ulong),
            done: done as sys::p11wld_ulong,
            total: total as sys::p11wld_ulong,
        };
        // SAFETY: the caller passed the function and its context for this
        // call, and the progress structure lives across it.
        unsafe { function(context, &progress) };
    }))
}

/// `Replicate`.
///
/// # Safety
/// `args` is NULL or points to a P11WLD_REPLICATE_ARGS whose pointers
/// follow its documentation; `report` is NULL or valid for writes.
pub(super) unsafe extern "C" fn replicate(
    args: *const P11WLD_REPLICATE_ARGS,
    report: *mut sys::P11WLD_REPORT_HANDLE,
) -> sys::p11wld_rv {
    enter("Replicate", |instance| {
        check_out(report)?;
        // SAFETY: checked non-NULL.
        unsafe { report.write(0) };
        if args.is_null() {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: checked non-NULL; the caller passes valid arguments.
        let args = unsafe { &*args };
        if args.flags & !REPLICATE_FLAGS != 0 {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        let all = args.flags & sys::P11WLD_REPLICATE_ALL != 0;
        if all && (!args.destinations.is_null() || args.destination_count != 0) {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: forwarded from the caller's contract.
        let destinations = unsafe { slot_refs(args.destinations, args.destination_count) }?;
        // SAFETY: forwarded from the caller's contract; the PINs are
        // borrowed for this call only and never copied.
        let so_pin = unsafe { bytes(args.so_pin, args.so_pin_len) }?;
        // SAFETY: as above.
        let user_pin = unsafe { bytes(args.user_pin, args.user_pin_len) }?;
        let request = run::Request {
            master: slot_ref(&args.master)?,
            destinations,
            all,
            dry_run: args.flags & sys::P11WLD_REPLICATE_DRY_RUN != 0,
            skip_unextractable: args.flags & sys::P11WLD_REPLICATE_SKIP_UNEXTRACTABLE != 0,
            so_pin,
            user_pin,
            flags: args.flags,
        };
        let callback = progress_callback(args.progress, args.progress_context);
        let mut progress = Progress::new(callback.as_deref());

        let result = run::replicate(instance, &request, &mut progress);
        let status = result.status;
        // SAFETY: checked non-NULL above.
        unsafe { report.write(report::store(result)) };
        Rv::check(status)
    })
}

/// `Verify`.
///
/// # Safety
/// As [`replicate`], with a P11WLD_VERIFY_ARGS.
pub(super) unsafe extern "C" fn verify(
    args: *const P11WLD_VERIFY_ARGS,
    report: *mut sys::P11WLD_REPORT_HANDLE,
) -> sys::p11wld_rv {
    enter("Verify", |instance| {
        check_out(report)?;
        // SAFETY: checked non-NULL.
        unsafe { report.write(0) };
        if args.is_null() {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: checked non-NULL; the caller passes valid arguments.
        let args = unsafe { &*args };
        if args.flags & !VERIFY_FLAGS != 0 {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        let by_wld_slot = args.flags & sys::P11WLD_VERIFY_WLD_SLOT != 0;
        let all = args.flags & sys::P11WLD_VERIFY_ALL != 0;
        if (by_wld_slot || all) && (!args.others.is_null() || args.other_count != 0) {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        let master = if by_wld_slot {
            None
        } else {
            Some(slot_ref(&args.master)?)
        };
        // SAFETY: forwarded from the caller's contract.
        let others = unsafe { slot_refs(args.others, args.other_count) }?;
        // SAFETY: forwarded from the caller's contract; borrowed only.
        let user_pin = unsafe { bytes(args.user_pin, args.user_pin_len) }?;
        let request = verify::Request {
            wld_slot: by_wld_slot.then_some(args.wld_slot_id),
            master,
            others,
            all,
            user_pin,
            flags: args.flags,
        };
        let callback = progress_callback(args.progress, args.progress_context);
        let mut progress = Progress::new(callback.as_deref());

        let result = verify::verify(instance, &request, &mut progress);
        let status = result.status;
        // SAFETY: checked non-NULL above.
        unsafe { report.write(report::store(result)) };
        Rv::check(status)
    })
}
