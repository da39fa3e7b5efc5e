//! Slot and token management functions.

use super::general::library_version;
use super::{check_in, check_out, fill_list};
use crate::error::Rv;
use crate::events::Wait;
use crate::instance::enter;
use crate::wld::failover::Retry;
use crate::wld::info;
use cryptoki_sys::*;

/// Lists the WLD slots. A call with a NULL list scans the modules first,
/// so tokens that appeared since are added.
///
/// # Safety
/// `pulCount` is NULL or valid; `pSlotList` is NULL or points to
/// `*pulCount` writable slot ids.
pub(super) unsafe extern "C" fn C_GetSlotList(
    tokenPresent: CK_BBOOL,
    pSlotList: *mut CK_SLOT_ID,
    pulCount: *mut CK_ULONG,
) -> CK_RV {
    enter("C_GetSlotList", |instance| {
        check_out(pulCount)?;
        if pSlotList.is_null() {
            instance.poll_health();
            instance
                .topology
                .refresh(&instance.config, &instance.modules);
        }
        let ids: Vec<CK_SLOT_ID> = instance
            .topology
            .slots()
            .iter()
            .filter(|slot| tokenPresent == CK_FALSE || slot.token_present())
            .map(|slot| slot.id)
            .collect();
        // SAFETY: forwarded from the caller's contract.
        unsafe { fill_list(&ids, pSlotList, pulCount) }
    })
}

/// # Safety
/// `pInfo` is NULL or valid for writes.
pub(super) unsafe extern "C" fn C_GetSlotInfo(
    slotID: CK_SLOT_ID,
    pInfo: *mut CK_SLOT_INFO,
) -> CK_RV {
    enter("C_GetSlotInfo", |instance| {
        check_out(pInfo)?;
        let slot = instance.topology.slot(slotID)?;
        let info = info::slot_info(&slot, library_version());
        // SAFETY: checked non-NULL; the caller passes a CK_SLOT_INFO.
        unsafe { pInfo.write(info) };
        Ok(())
    })
}

/// # Safety
/// `pInfo` is NULL or valid for writes.
pub(super) unsafe extern "C" fn C_GetTokenInfo(
    slotID: CK_SLOT_ID,
    pInfo: *mut CK_TOKEN_INFO,
) -> CK_RV {
    enter("C_GetTokenInfo", |instance| {
        check_out(pInfo)?;
        let slot = instance.topology.slot(slotID)?;
        let (sessions, rw_sessions) = {
            let state = slot.login.lock();
            (state.sessions, state.rw_sessions)
        };
        let info = info::token_info(&slot, library_version(), sessions, rw_sessions)?;
        // SAFETY: checked non-NULL; the caller passes a CK_TOKEN_INFO.
        unsafe { pInfo.write(info) };
        Ok(())
    })
}

/// Lists the mechanisms every healthy member supports. The list changes
/// only when a member joins, leaves or recovers, so a size query and the
/// fetch that follows agree.
///
/// # Safety
/// `pulCount` is NULL or valid; `pMechanismList` is NULL or points to
/// `*pulCount` writable entries.
pub(super) unsafe extern "C" fn C_GetMechanismList(
    slotID: CK_SLOT_ID,
    pMechanismList: *mut CK_MECHANISM_TYPE,
    pulCount: *mut CK_ULONG,
) -> CK_RV {
    enter("C_GetMechanismList", |instance| {
        check_out(pulCount)?;
        let slot = instance.topology.slot(slotID)?;
        if !slot.token_present() {
            return Err(Rv(CKR_TOKEN_NOT_PRESENT));
        }
        let table = slot.mechanisms();
        let types: Vec<CK_MECHANISM_TYPE> = table.iter().map(|(m, _)| *m).collect();
        // SAFETY: forwarded from the caller's contract.
        unsafe { fill_list(&types, pMechanismList, pulCount) }
    })
}

/// # Safety
/// `pInfo` is NULL or valid for writes.
pub(super) unsafe extern "C" fn C_GetMechanismInfo(
    slotID: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    pInfo: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    enter("C_GetMechanismInfo", |instance| {
        check_out(pInfo)?;
        let slot = instance.topology.slot(slotID)?;
        if !slot.token_present() {
            return Err(Rv(CKR_TOKEN_NOT_PRESENT));
        }
        let table = slot.mechanisms();
        let index = table
            .binary_search_by_key(&type_, |(m, _)| *m)
            .map_err(|_| Rv(CKR_MECHANISM_INVALID))?;
        // SAFETY: checked non-NULL; the caller passes a CK_MECHANISM_INFO.
        unsafe { pInfo.write(table[index].1) };
        Ok(())
    })
}

/// Initializing a WLD token would wipe every member on every HSM; it is
/// not served. Members are initialized by `p11wld replicate`, which
/// initializes an uninitialized destination with the master's label.
///
/// # Safety
/// `pLabel` is NULL or points to 32 bytes; `pPin` to `ulPinLen` bytes.
pub(super) unsafe extern "C" fn C_InitToken(
    slotID: CK_SLOT_ID,
    pPin: *mut CK_UTF8CHAR,
    ulPinLen: CK_ULONG,
    pLabel: *mut CK_UTF8CHAR,
) -> CK_RV {
    enter("C_InitToken", |instance| {
        check_in(pPin, ulPinLen)?;
        check_out(pLabel)?;
        let slot = instance.topology.slot(slotID)?;
        if slot.login.lock().sessions > 0 {
            return Err(Rv(CKR_SESSION_EXISTS));
        }
        log::error!(
            "C_InitToken on WLD slot {} ({}) is not supported: it would initialize every \
             member token; initialize a physical token and replicate it with p11wld replicate",
            slot.id,
            slot.label
        );
        Err(Rv(CKR_FUNCTION_NOT_SUPPORTED))
    })
}

/// Sets the user PIN on the session's member only; the members differ
/// until they are replicated.
///
/// # Safety
/// `pPin` is NULL or points to `ulPinLen` bytes.
pub(super) unsafe extern "C" fn C_InitPIN(
    hSession: CK_SESSION_HANDLE,
    pPin: *mut CK_UTF8CHAR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    enter("C_InitPIN", |instance| {
        check_in(pPin, ulPinLen)?;
        instance.session(hSession, Retry::Never, |session| {
            let rv = crate::vcall!(session.module(), C_InitPIN(session.real, pPin, ulPinLen));
            session.check("C_InitPIN", rv)?;
            instance.note_token_change("C_InitPIN");
            Ok(())
        })
    })
}

/// Changes the PIN on the session's member only.
///
/// # Safety
/// The PIN pointers are NULL or point to their lengths in bytes.
pub(super) unsafe extern "C" fn C_SetPIN(
    hSession: CK_SESSION_HANDLE,
    pOldPin: *mut CK_UTF8CHAR,
    ulOldLen: CK_ULONG,
    pNewPin: *mut CK_UTF8CHAR,
    ulNewLen: CK_ULONG,
) -> CK_RV {
    enter("C_SetPIN", |instance| {
        check_in(pOldPin, ulOldLen)?;
        check_in(pNewPin, ulNewLen)?;
        instance.session(hSession, Retry::Never, |session| {
            let rv = crate::vcall!(
                session.module(),
                C_SetPIN(session.real, pOldPin, ulOldLen, pNewPin, ulNewLen)
            );
            session.check("C_SetPIN", rv)?;
            instance.note_token_change("C_SetPIN");
            Ok(())
        })
    })
}

/// Waits for a WLD slot's token to appear or disappear.
///
/// # Safety
/// `pSlot` is NULL or valid for writes.
pub(super) unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    pSlot: *mut CK_SLOT_ID,
    pReserved: CK_VOID_PTR,
) -> CK_RV {
    enter("C_WaitForSlotEvent", |instance| {
        check_out(pSlot)?;
        if !pReserved.is_null() {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        match instance.events.wait(flags & CKF_DONT_BLOCK == 0) {
            Wait::Event(slot) => {
                // SAFETY: checked non-NULL; the caller passes a slot id.
                unsafe { pSlot.write(slot) };
                Ok(())
            }
            Wait::NoEvent => Err(Rv(CKR_NO_EVENT)),
            Wait::ShutDown => Err(Rv(CKR_CRYPTOKI_NOT_INITIALIZED)),
        }
    })
}
