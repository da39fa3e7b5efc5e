//! Session failover: a session whose member went down moves to a healthy
//! member of its WLD slot on its next call, and the call that met the
//! failure is retried there when that is safe.
//!
//! Moving a session opens a new real session on the member the balancing
//! policy picks, logs it in when the application is logged in, starts the
//! session's active operations again (each init call, then the input of its
//! update calls so far, up to `replay_limit_bytes`), and starts an active
//! search again, leaving out the objects it returned already. An operation
//! that cannot be started again (a mechanism parameter of unknown layout,
//! more input than the limit, a key that was a session object of the lost
//! member) is lost: its next call gets CKR_DEVICE_ERROR and ends it, and the
//! session goes on working.

use super::ops::{ActiveOp, OpKind, OP_KINDS};
use super::session::{release_real, Session};
use super::slot::Candidates;
use crate::error::{Result, Rv};
use crate::health;
use crate::instance::Instance;
use cryptoki_sys::*;
use std::sync::atomic::Ordering;
use zeroize::Zeroizing;

/// Whether the call that met a member failure may run again elsewhere.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Retry {
    /// Repeating the call has the same effect as running it once: reads,
    /// operations (started again first), searches, session objects.
    Safe,
    /// The call may have changed a token object before the member failed;
    /// the application gets CKR_DEVICE_ERROR and decides.
    Never,
}

impl Retry {
    /// Returns the policy for a call that makes an object: safe only when
    /// it is a session object, which died with the member if it was made.
    pub fn for_new_object(token: Option<bool>) -> Retry {
        if token == Some(true) {
            Retry::Never
        } else {
            Retry::Safe
        }
    }
}

/// Runs `f` on the session `handle`, moving the session to a healthy member
/// first when its member is down, and after a member failure in `f`, then
/// running `f` again when `retry` allows.
#[inline]
pub fn call<R>(
    instance: &Instance,
    handle: CK_SESSION_HANDLE,
    retry: Retry,
    mut f: impl FnMut(&mut Session) -> Result<R>,
) -> Result<R> {
    instance.sessions.with(handle, |session| {
        if !session.member.is_up() || session.is_stale() {
            move_session(instance, session)?;
        }
        let mut moves = 0;
        let mut followed = false;
        loop {
            session.pinned_elsewhere.set(None);
            let result = f(session);
            let Err(Rv(rv)) = result else {
                return result;
            };
            if let Some(pos) = session.pinned_elsewhere.take() {
                // The call used an object that lives on another member
                // only. PKCS#11 lets every session of the application use
                // a session object, so a session free to move follows it.
                if !followed && follow_object(instance, session, pos)? {
                    followed = true;
                    continue;
                }
                return result;
            }
            let member_failed = !session.member.is_up() || session.is_stale();
            if !health::is_member_failure(rv) || !member_failed {
                return result;
            }
            if moves >= session.slot.member_count() {
                return Err(Rv(CKR_DEVICE_ERROR));
            }
            let failed = session.member.clone();
            move_session(instance, session)?;
            moves += 1;
            if retry == Retry::Never {
                return Err(Rv(CKR_DEVICE_ERROR));
            }
            failed.retried.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Moves a movable `session` to the member at position `pos` of its slot,
/// where an object it tried to use lives. Returns whether it moved.
fn follow_object(instance: &Instance, session: &mut Session, pos: usize) -> Result<bool> {
    if !session.is_movable() {
        return Ok(false);
    }
    let Some(target) = session.slot.members().into_iter().find(|m| m.pos == pos) else {
        return Ok(false);
    };
    if !target.is_up() {
        return Ok(false);
    }
    log::debug!(
        "session {:#x} moves to member {} to use an object that lives there only",
        session.handle,
        target.describe()
    );
    let candidates = Candidates {
        members: vec![target],
        claimed: false,
    };
    match move_session_to(instance, session, candidates) {
        Ok(()) => Ok(true),
        // The session stays where it was; the call's own error stands.
        Err(_) => Ok(false),
    }
}

/// Moves `session` to a healthy member. Fails with CKR_DEVICE_ERROR when
/// no member of its slot is up.
pub fn move_session(instance: &Instance, session: &mut Session) -> Result<()> {
    let candidates = session.slot.candidates(instance.config.wld.policy);
    move_session_to(instance, session, candidates)
}

/// Moves `session` to the first of `candidates` that opens a session.
fn move_session_to(
    instance: &Instance,
    session: &mut Session,
    candidates: Candidates,
) -> Result<()> {
    let (member, real) = instance
        .sessions
        .open_on_candidates(&session.slot, candidates, session.flags)
        .map_err(|rv| {
            log::debug!(
                "WLD slot {}: no member can take session {:#x}: {rv}",
                session.slot.id,
                session.handle
            );
            Rv(CKR_DEVICE_ERROR)
        })?;

    let old = session.replace_member(member);
    release_real(&old, session.real, session.is_stale_against(&old));
    session.real = real;
    session.generation = session.member.generation();
    old.moved.fetch_add(1, Ordering::Relaxed);
    // The session objects stayed on the old member.
    for object in session.objects.drain(..) {
        instance.objects.free(object);
    }

    replay_operations(instance, session);
    restart_search(session);
    Ok(())
}

/// Starts every active operation of `session` again on its new member.
fn replay_operations(instance: &Instance, session: &mut Session) {
    for (index, kind) in OP_ORDER.into_iter().enumerate() {
        let Some(op) = session.ops[index].take() else {
            continue;
        };
        match replay(instance, session, kind, &op) {
            Ok(()) => session.ops[index] = Some(op),
            Err(rv) => {
                log::debug!(
                    "session {:#x}: {} cannot be started again on member {}: {rv}",
                    session.handle,
                    kind.init_name(),
                    session.member.describe()
                );
                session.lost[index] = true;
            }
        }
    }
}

/// Every operation kind, indexed as `Session::ops`.
const OP_ORDER: [OpKind; OP_KINDS] = [
    OpKind::Encrypt,
    OpKind::Decrypt,
    OpKind::Digest,
    OpKind::Sign,
    OpKind::Verify,
    OpKind::SignRecover,
    OpKind::VerifyRecover,
];

/// Calls an optional vendor function.
macro_rules! call_vendor {
    ($function:expr, $($arg:expr),*) => {
        match $function {
            // SAFETY: the function comes from the vendor's own list; the
            // arguments point to buffers owned by this file.
            Some(f) => unsafe { f($($arg),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

/// Starts one operation again: its init call, then its input so far.
fn replay(instance: &Instance, session: &Session, kind: OpKind, op: &ActiveOp) -> Result<()> {
    let mechanism = op
        .mechanism
        .as_ref()
        .ok_or(Rv(CKR_MECHANISM_PARAM_INVALID))?;
    if !op.parts_complete {
        return Err(Rv(CKR_DATA_LEN_RANGE));
    }
    let objects = &instance.objects;
    let key = if kind == OpKind::Digest {
        0
    } else {
        session.object(objects, op.key, CKR_KEY_HANDLE_INVALID)?
    };
    let list = session.module().functions();
    let real = session.real;
    let rv = mechanism.with(
        |h| session.object(objects, h, CKR_MECHANISM_PARAM_INVALID),
        |m| match kind {
            OpKind::Encrypt => call_vendor!(list.C_EncryptInit, real, m, key),
            OpKind::Decrypt => call_vendor!(list.C_DecryptInit, real, m, key),
            OpKind::Digest => call_vendor!(list.C_DigestInit, real, m),
            OpKind::Sign => call_vendor!(list.C_SignInit, real, m, key),
            OpKind::Verify => call_vendor!(list.C_VerifyInit, real, m, key),
            OpKind::SignRecover => call_vendor!(list.C_SignRecoverInit, real, m, key),
            OpKind::VerifyRecover => call_vendor!(list.C_VerifyRecoverInit, real, m, key),
        },
    )?;
    Rv::check(rv)?;
    if op.parts.is_empty() {
        return Ok(());
    }

    let parts = op.parts.as_ptr().cast_mut();
    let len = op.parts.len() as CK_ULONG;
    let rv = match kind {
        OpKind::Encrypt | OpKind::Decrypt => {
            let update = if kind == OpKind::Encrypt {
                list.C_EncryptUpdate
            } else {
                list.C_DecryptUpdate
            };
            // The output was delivered already; this one is thrown away.
            // It may be plaintext, so it is zeroized.
            let mut out_len = len + 1024;
            let mut scratch = Zeroizing::new(vec![0u8; out_len as usize]);
            call_vendor!(update, real, parts, len, scratch.as_mut_ptr(), &mut out_len)
        }
        OpKind::Digest => call_vendor!(list.C_DigestUpdate, real, parts, len),
        OpKind::Sign => call_vendor!(list.C_SignUpdate, real, parts, len),
        OpKind::Verify => call_vendor!(list.C_VerifyUpdate, real, parts, len),
        OpKind::SignRecover | OpKind::VerifyRecover => CKR_OK,
    };
    Rv::check(rv)
}

/// Starts the active search of `session` again on its new member.
fn restart_search(session: &mut Session) {
    if !session.find.active {
        return;
    }
    if !session.find.is_restartable() {
        session.find.lost = true;
        return;
    }
    let mut template = session.find.template();
    let rv = crate::vcall!(
        session.member.module,
        C_FindObjectsInit(
            session.real,
            template.as_mut_ptr(),
            template.len() as CK_ULONG
        )
    );
    if rv == CKR_OK {
        session.find.mark_restarted();
    } else {
        log::debug!(
            "session {:#x}: the search cannot start again on member {}: {}",
            session.handle,
            session.member.describe(),
            Rv(rv)
        );
        session.find.lost = true;
    }
}
