//! Session management functions.

use super::{bytes, check_in, check_out};
use crate::error::Rv;
use crate::instance::enter;
use crate::vcall;
use crate::wld::failover::Retry;
use crate::wld::login;
use cryptoki_sys::*;

/// Bytes in front of a saved operation state that name the member it was
/// saved on; a state from another member gives CKR_SAVED_STATE_INVALID.
const STATE_HEADER: usize = 8;

/// Opens a session on the member the balancing policy picks. Notification
/// callbacks are accepted and never called: no member sends any.
///
/// # Safety
/// `phSession` is NULL or valid for writes.
pub(super) unsafe extern "C" fn C_OpenSession(
    slotID: CK_SLOT_ID,
    flags: CK_FLAGS,
    _pApplication: CK_VOID_PTR,
    _Notify: CK_NOTIFY,
    phSession: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    enter("C_OpenSession", |instance| {
        check_out(phSession)?;
        instance.poll_health();
        let slot = instance.topology.slot(slotID)?;
        let handle = instance
            .sessions
            .open(&slot, flags, instance.config.wld.policy)?;
        // SAFETY: checked non-NULL; the caller passes a session handle.
        unsafe { phSession.write(handle) };
        Ok(())
    })
}

pub(super) extern "C" fn C_CloseSession(hSession: CK_SESSION_HANDLE) -> CK_RV {
    enter("C_CloseSession", |instance| {
        instance.sessions.close(&instance.objects, hSession)
    })
}

pub(super) extern "C" fn C_CloseAllSessions(slotID: CK_SLOT_ID) -> CK_RV {
    enter("C_CloseAllSessions", |instance| {
        let slot = instance.topology.slot(slotID)?;
        instance.sessions.close_all(&instance.objects, slot.id);
        Ok(())
    })
}

/// # Safety
/// `pInfo` is NULL or valid for writes.
pub(super) unsafe extern "C" fn C_GetSessionInfo(
    hSession: CK_SESSION_HANDLE,
    pInfo: *mut CK_SESSION_INFO,
) -> CK_RV {
    enter("C_GetSessionInfo", |instance| {
        check_out(pInfo)?;
        instance.sessions.with(hSession, |session| {
            let info = CK_SESSION_INFO {
                slotID: session.slot.id,
                state: login::session_state(&session.slot, session.is_rw()),
                flags: session.flags,
                ulDeviceError: 0,
            };
            // SAFETY: checked non-NULL; the caller passes a CK_SESSION_INFO.
            unsafe { pInfo.write(info) };
            Ok(())
        })
    })
}

/// Saves the operation state of the session's member, prefixed with a tag
/// of that member.
///
/// # Safety
/// `pulOperationStateLen` is NULL or valid; `pOperationState` is NULL or
/// points to `*pulOperationStateLen` writable bytes.
pub(super) unsafe extern "C" fn C_GetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: *mut CK_BYTE,
    pulOperationStateLen: *mut CK_ULONG,
) -> CK_RV {
    enter("C_GetOperationState", |instance| {
        check_out(pulOperationStateLen)?;
        instance.session(hSession, Retry::Never, |session| {
            let module = session.module();
            // SAFETY: checked non-NULL; the caller passes a length.
            let len = unsafe { &mut *pulOperationStateLen };
            let header = STATE_HEADER as CK_ULONG;
            let mut inner: CK_ULONG = len.saturating_sub(header);
            let rv = if pOperationState.is_null() || *len < header {
                let rv = vcall!(
                    module,
                    C_GetOperationState(session.real, std::ptr::null_mut(), &mut inner)
                );
                if rv == CKR_OK && !pOperationState.is_null() {
                    CKR_BUFFER_TOO_SMALL
                } else {
                    rv
                }
            } else {
                // SAFETY: the caller's buffer has `*len` bytes, more than
                // the header.
                let body = unsafe { pOperationState.add(STATE_HEADER) };
                vcall!(module, C_GetOperationState(session.real, body, &mut inner))
            };
            if rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL {
                *len = inner.saturating_add(header);
            }
            if rv == CKR_OK && !pOperationState.is_null() {
                let tag = session.member.tag.to_ne_bytes();
                // SAFETY: the buffer has room for the header.
                unsafe {
                    std::ptr::copy_nonoverlapping(tag.as_ptr(), pOperationState, STATE_HEADER)
                };
            }
            session.check("C_GetOperationState", rv)
        })
    })
}

/// Restores an operation state saved on the session's member.
///
/// # Safety
/// `pOperationState` is NULL or points to `ulOperationStateLen` bytes.
pub(super) unsafe extern "C" fn C_SetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: *mut CK_BYTE,
    ulOperationStateLen: CK_ULONG,
    hEncryptionKey: CK_OBJECT_HANDLE,
    hAuthenticationKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_SetOperationState", |instance| {
        check_out(pOperationState)?;
        // SAFETY: checked non-NULL; the caller passes its length.
        let state = unsafe { bytes(pOperationState, ulOperationStateLen) }?;
        instance.session(hSession, Retry::Never, |session| {
            let tag = session.member.tag.to_ne_bytes();
            if state.len() < STATE_HEADER || state[..STATE_HEADER] != tag {
                return Err(Rv(CKR_SAVED_STATE_INVALID));
            }
            let key = |handle| {
                if handle == CK_INVALID_HANDLE {
                    Ok(CK_INVALID_HANDLE)
                } else {
                    session.object(&instance.objects, handle, CKR_KEY_HANDLE_INVALID)
                }
            };
            let encryption = key(hEncryptionKey)?;
            let authentication = key(hAuthenticationKey)?;
            let body = state[STATE_HEADER..].as_ptr().cast_mut();
            let rv = vcall!(
                session.module(),
                C_SetOperationState(
                    session.real,
                    body,
                    (state.len() - STATE_HEADER) as CK_ULONG,
                    encryption,
                    authentication
                )
            );
            // The restored operations are the member's; the proxy cannot
            // replay them elsewhere.
            for op in session.ops.iter_mut() {
                *op = None;
            }
            session.check("C_SetOperationState", rv)
        })
    })
}

/// Logs the application in on the WLD token: the PIN is checked on the
/// session's member, then applied to the other members.
///
/// # Safety
/// `pPin` is NULL or points to `ulPinLen` bytes.
pub(super) unsafe extern "C" fn C_Login(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: *mut CK_UTF8CHAR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    enter("C_Login", |instance| {
        check_in(pPin, ulPinLen)?;
        let pin = if pPin.is_null() {
            None
        } else {
            // SAFETY: checked by check_in; the caller passes its length.
            Some(unsafe { bytes(pPin, ulPinLen) }?)
        };
        instance.session(hSession, Retry::Safe, |session| {
            let result = login::login(&session.slot, &session.member, session.real, userType, pin);
            if let Err(Rv(rv)) = result {
                session.check("C_Login", rv)?;
            }
            result
        })
    })
}

pub(super) extern "C" fn C_Logout(hSession: CK_SESSION_HANDLE) -> CK_RV {
    enter("C_Logout", |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            login::logout(&session.slot)
        })
    })
}
