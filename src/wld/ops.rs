//! Cryptographic operations of a session: init, single-part, update and
//! final calls, and what each session remembers of its active operations.
//!
//! PKCS#11 keeps an operation active after a call that only asked for the
//! output length (a NULL output buffer) or that returned
//! CKR_BUFFER_TOO_SMALL; any other result ends it. The proxy follows the
//! same rule for its own record of the operation, which is what lets an
//! operation be started again on another member.

use super::session::Session;
use crate::error::{Result, Rv};
use crate::instance::Instance;
use crate::mechanism::{Checked, OwnedMechanism};
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use zeroize::Zeroizing;

/// The kinds of operation a session can have active, one of each at most.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpKind {
    Encrypt = 0,
    Decrypt,
    Digest,
    Sign,
    Verify,
    SignRecover,
    VerifyRecover,
}

pub const OP_KINDS: usize = 7;

impl OpKind {
    /// The name of the init call, for logs.
    pub fn init_name(self) -> &'static str {
        match self {
            OpKind::Encrypt => "C_EncryptInit",
            OpKind::Decrypt => "C_DecryptInit",
            OpKind::Digest => "C_DigestInit",
            OpKind::Sign => "C_SignInit",
            OpKind::Verify => "C_VerifyInit",
            OpKind::SignRecover => "C_SignRecoverInit",
            OpKind::VerifyRecover => "C_VerifyRecoverInit",
        }
    }
}

/// What a session remembers of one active operation.
pub struct ActiveOp {
    /// A copy of the mechanism; `None` when its parameter has a layout the
    /// proxy cannot copy.
    pub mechanism: Option<OwnedMechanism>,
    /// The virtual key handle; 0 for a digest.
    pub key: CK_OBJECT_HANDLE,
    /// The input of the update calls so far, kept for a replay up to the
    /// configured limit.
    pub parts: Vec<u8>,
    /// Whether `parts` holds every update's input.
    pub parts_complete: bool,
    /// Whether an update call was made.
    pub updated: bool,
}

/// Calls the vendor's init function for `kind` and records the operation.
///
/// `call` receives the member's module, the real session, the mechanism
/// (with its object handles translated for the session's member) and the
/// real key handle.
#[inline(always)]
pub fn init(
    instance: &Instance,
    session: &mut Session,
    kind: OpKind,
    mechanism: Checked<'_>,
    key: CK_OBJECT_HANDLE,
    call: impl FnOnce(&VendorModule, CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV,
) -> Result<()> {
    if !session.slot.supports(mechanism.kind()) {
        return Err(Rv(CKR_MECHANISM_INVALID));
    }
    let real_key = if kind == OpKind::Digest {
        0
    } else {
        session.object(&instance.objects, key, CKR_KEY_HANDLE_INVALID)?
    };
    let owned = mechanism.to_owned();
    let rv = if mechanism.has_handles() {
        let Some(owned) = owned.as_ref() else {
            return Err(Rv(CKR_MECHANISM_PARAM_INVALID));
        };
        let objects = &instance.objects;
        let translate = |h| session.object(objects, h, CKR_MECHANISM_PARAM_INVALID);
        owned.with(translate, |m| {
            call(session.module(), session.real, m, real_key)
        })?
    } else {
        call(session.module(), session.real, mechanism.as_ptr(), real_key)
    };
    session.check(kind.init_name(), rv)?;
    session.lost[kind as usize] = false;
    session.ops[kind as usize] = Some(ActiveOp {
        mechanism: owned,
        key,
        parts: Vec::new(),
        parts_complete: true,
        updated: false,
    });
    Ok(())
}

/// Calls a single-part function (C_Sign, C_Encrypt, ...) of `kind`.
/// `size_query` is whether the output buffer is NULL.
pub fn single(
    session: &mut Session,
    kind: OpKind,
    name: &'static str,
    size_query: bool,
    call: impl FnOnce(&VendorModule, CK_SESSION_HANDLE) -> CK_RV,
) -> Result<()> {
    take_lost(session, kind)?;
    let rv = call(session.module(), session.real);
    finish(session, kind, name, size_query, rv)
}

/// Ends an operation that was lost when the session moved to another
/// member, with CKR_DEVICE_ERROR.
#[inline(always)]
fn take_lost(session: &mut Session, kind: OpKind) -> Result<()> {
    if session.lost[kind as usize] {
        session.lost[kind as usize] = false;
        session.ops[kind as usize] = None;
        return Err(Rv(CKR_DEVICE_ERROR));
    }
    Ok(())
}

/// Calls an update function of `kind` with `data` as the input to keep
/// for a replay. `size_query` is whether the output buffer is NULL, in
/// which case the vendor only returns the output length and consumes no
/// input.
///
/// An update with empty input is answered here when the proxy records the
/// operation as active: it changes nothing, and some vendors reject it
/// (SoftHSM2 2.6 returns CKR_ARGUMENTS_BAD for a NULL part, and
/// p11-kit-client.so 0.24 sends every empty buffer as NULL).
/// `answered_empty` is then called, so the caller can report an empty
/// output.
///
/// NOTE: for a mechanism without multi-part support (CKM_RSA_PKCS), SoftHSM2
/// 2.6 rejects any update and ends the operation, but an empty update gets
/// CKR_OK here and the operation stays active.
#[allow(clippy::too_many_arguments)]
pub fn update(
    instance: &Instance,
    session: &mut Session,
    kind: OpKind,
    name: &'static str,
    data: &[u8],
    size_query: bool,
    answered_empty: impl FnOnce(),
    call: impl FnOnce(&VendorModule, CK_SESSION_HANDLE) -> CK_RV,
) -> Result<()> {
    take_lost(session, kind)?;
    if data.is_empty() && session.ops[kind as usize].is_some() {
        answered_empty();
        return Ok(());
    }
    let rv = call(session.module(), session.real);
    if rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL {
        let result = session.check(name, rv);
        // The record stays when the member was lost, so the operation can
        // start again on the member the session moves to.
        if !session.lost_member() {
            session.ops[kind as usize] = None;
        }
        return result;
    }
    if rv == CKR_OK && !size_query {
        let limit = instance.config.health.replay_limit_bytes;
        if let Some(op) = session.ops[kind as usize].as_mut() {
            op.updated = true;
            if op.parts_complete && op.parts.len() + data.len() <= limit {
                op.parts.extend_from_slice(data);
            } else {
                op.parts_complete = false;
                op.parts = Vec::new();
            }
        }
    }
    Ok(())
}

/// Calls a function that feeds two operations at once (C_DigestEncryptUpdate
/// and the like). Neither operation can be replayed afterwards.
pub fn dual_update(
    session: &mut Session,
    kinds: [OpKind; 2],
    name: &'static str,
    call: impl FnOnce(&VendorModule, CK_SESSION_HANDLE) -> CK_RV,
) -> Result<()> {
    for kind in kinds {
        take_lost(session, kind)?;
    }
    let rv = call(session.module(), session.real);
    let result = session.check(name, rv);
    let lost = rv != CKR_OK && session.lost_member();
    for kind in kinds {
        if lost {
            // Kept as it was; the dual call itself is not replayed.
        } else if rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL {
            session.ops[kind as usize] = None;
        } else if let Some(op) = session.ops[kind as usize].as_mut() {
            op.updated = true;
            op.parts_complete = false;
            op.parts = Vec::new();
        }
    }
    result
}

/// Records the end of an operation after a single-part or final call that
/// returned `rv`.
#[inline(always)]
pub fn finish(
    session: &mut Session,
    kind: OpKind,
    name: &'static str,
    size_query: bool,
    rv: CK_RV,
) -> Result<()> {
    let result = session.check(name, rv);
    // A lost member keeps the record, so the operation can start again on
    // the member the session moves to.
    let stays_active = rv == CKR_BUFFER_TOO_SMALL
        || (rv == CKR_OK && size_query)
        || (rv != CKR_OK && session.lost_member());
    if !stays_active {
        session.ops[kind as usize] = None;
    }
    result
}

/// Calls `call` with `mechanism` as the session's member must see it: with
/// the object handles in its parameter translated to that member's. Also
/// checks that every healthy member supports the mechanism.
pub fn with_mechanism(
    instance: &Instance,
    session: &Session,
    mechanism: Checked<'_>,
    call: impl FnOnce(*mut CK_MECHANISM) -> CK_RV,
) -> Result<CK_RV> {
    if !session.slot.supports(mechanism.kind()) {
        return Err(Rv(CKR_MECHANISM_INVALID));
    }
    if !mechanism.has_handles() {
        return Ok(call(mechanism.as_ptr()));
    }
    let owned = mechanism
        .to_owned()
        .ok_or(Rv(CKR_MECHANISM_PARAM_INVALID))?;
    let objects = &instance.objects;
    owned.with(
        |h| session.object(objects, h, CKR_MECHANISM_PARAM_INVALID),
        call,
    )
}

/// The most output bytes [`abort`] accepts from a vendor's final call.
const ABORT_OUTPUT_LIMIT: usize = 1 << 20;

/// Calls an optional vendor function, or gives CKR_FUNCTION_NOT_SUPPORTED.
macro_rules! call_vendor {
    ($function:expr, $($arg:expr),*) => {
        match $function {
            // SAFETY: the function comes from the vendor's own list; the
            // arguments point to buffers of `abort`, valid for the call.
            Some(f) => unsafe { f($($arg),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

/// Ends the active operation of `kind` on the session's member, for a call
/// that the proxy rejected before it reached the vendor (a NULL pointer
/// with a length, a NULL output length) and for a cancel.
///
/// PKCS#11 says such a call ends the operation, like every error other
/// than CKR_BUFFER_TOO_SMALL, but a vendor that never saw it keeps the
/// operation, and the application's next init would get
/// CKR_OPERATION_ACTIVE. No PKCS#11 2.40 function cancels an operation, so
/// the operation runs to its end into a scratch buffer that is zeroized.
/// A multi-part operation ends with the vendor's final call (C_SignFinal,
/// C_DigestFinal, ...). One without parts ends with the single-part call
/// on 16 zero bytes, because a final call leaves the operation of a
/// mechanism without a multi-part form (ECDSA) active. A verification gets
/// a one-byte signature, which every vendor rejects.
///
/// Returns false when the vendor may still hold the operation: its output
/// did not fit the largest scratch buffer, or it lacks the function.
pub fn abort(session: &mut Session, kind: OpKind) -> bool {
    session.lost[kind as usize] = false;
    let Some(op) = session.ops[kind as usize].take() else {
        return true;
    };
    let list = session.module().functions();
    let real = session.real;
    let mut scratch = Zeroizing::new(vec![0u8; 4096]);
    let mut input = [0u8; 16];
    let mut signature = [0u8; 1];
    let mut rv;
    loop {
        let mut len = scratch.len() as CK_ULONG;
        let out = scratch.as_mut_ptr();
        let data = input.as_mut_ptr();
        let n = input.len() as CK_ULONG;
        let sig = signature.as_mut_ptr();
        rv = match (kind, op.updated) {
            (OpKind::Encrypt, true) => call_vendor!(list.C_EncryptFinal, real, out, &mut len),
            (OpKind::Encrypt, false) => call_vendor!(list.C_Encrypt, real, data, n, out, &mut len),
            (OpKind::Decrypt, true) => call_vendor!(list.C_DecryptFinal, real, out, &mut len),
            (OpKind::Decrypt, false) => call_vendor!(list.C_Decrypt, real, data, n, out, &mut len),
            (OpKind::Digest, true) => call_vendor!(list.C_DigestFinal, real, out, &mut len),
            (OpKind::Digest, false) => call_vendor!(list.C_Digest, real, data, n, out, &mut len),
            (OpKind::Sign, true) => call_vendor!(list.C_SignFinal, real, out, &mut len),
            (OpKind::Sign, false) => call_vendor!(list.C_Sign, real, data, n, out, &mut len),
            (OpKind::Verify, true) => call_vendor!(list.C_VerifyFinal, real, sig, 1),
            (OpKind::Verify, false) => call_vendor!(list.C_Verify, real, data, n, sig, 1),
            (OpKind::SignRecover, _) => {
                call_vendor!(list.C_SignRecover, real, sig, 1, out, &mut len)
            }
            (OpKind::VerifyRecover, _) => {
                call_vendor!(list.C_VerifyRecover, real, sig, 1, out, &mut len)
            }
        };
        let needed = len as usize;
        if rv != CKR_BUFFER_TOO_SMALL || needed <= scratch.len() || needed > ABORT_OUTPUT_LIMIT {
            break;
        }
        scratch = Zeroizing::new(vec![0u8; needed]);
    }
    if rv == CKR_BUFFER_TOO_SMALL {
        log::warn!(
            "member {}: the {} operation of session {:#x} could not be ended: its output \
             needs more than {ABORT_OUTPUT_LIMIT} bytes",
            session.member.describe(),
            kind.init_name(),
            session.handle
        );
    }
    rv != CKR_BUFFER_TOO_SMALL && rv != CKR_FUNCTION_NOT_SUPPORTED
}
