//! Object management functions.

use super::check_out;
use crate::error::{Result, Rv};
use crate::instance::{enter, Instance};
use crate::template::{self, Use};
use crate::vcall;
use crate::wld::failover::Retry;
use crate::wld::object::destroy_real;
use crate::wld::object::Place;
use crate::wld::session::Session;
use cryptoki_sys::*;

/// Attributes whose change alters an object's identity.
const IDENTITY_CHANGES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_LABEL,
    CKA_ID,
    CKA_SUBJECT,
    CKA_ISSUER,
    CKA_SERIAL_NUMBER,
    CKA_APPLICATION,
    CKA_OBJECT_ID,
    CKA_VALUE,
    CKA_PRIVATE,
];

/// Returns the retry policy of C_CopyObject: a copy is a session object,
/// safe to make again, only when the template says so.
fn copy_retry(attributes: &[CK_ATTRIBUTE]) -> Retry {
    match template::bool_value(attributes, CKA_TOKEN) {
        Some(false) => Retry::Safe,
        _ => Retry::Never,
    }
}

/// Gives a real object made on the session's member a virtual handle and
/// writes it to `out`. A session object is remembered by the session, a
/// token object is noted as a change on one member only. When no handle can
/// be made, the object is destroyed again so nothing is left behind.
///
/// # Safety
/// `out` is valid for writes.
pub(super) unsafe fn publish(
    instance: &Instance,
    session: &mut Session,
    call: &str,
    real: CK_OBJECT_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<()> {
    let handle = match instance
        .objects
        .register(&session.place(), session.real, real)
    {
        Ok(handle) => handle,
        Err(rv) => {
            log::error!("{call}: the new object could not be registered: {rv}");
            destroy_real(session.module(), session.real, real);
            return Err(rv);
        }
    };
    let session_object = instance
        .objects
        .get(handle)
        .is_some_and(|entry| entry.is_session_object());
    if session_object {
        session.objects.push(handle);
    } else {
        instance.note_token_change(call);
    }
    // SAFETY: the caller vouches for `out`.
    unsafe { out.write(handle) };
    Ok(())
}

/// # Safety
/// `pTemplate` points to `ulCount` attributes; `phObject` is valid.
pub(super) unsafe extern "C" fn C_CreateObject(
    hSession: CK_SESSION_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
    phObject: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_CreateObject", |instance| {
        check_out(phObject)?;
        // SAFETY: forwarded from the caller's contract.
        let attributes = unsafe { template::borrow(pTemplate, ulCount) }?;
        // SAFETY: as above.
        unsafe { template::check(attributes, Use::Write) }?;
        instance.session(
            hSession,
            Retry::for_new_object(template::bool_value(attributes, CKA_TOKEN)),
            |session| {
                let mut real = CK_INVALID_HANDLE;
                let rv = vcall!(
                    session.module(),
                    C_CreateObject(session.real, pTemplate, ulCount, &mut real)
                );
                session.check("C_CreateObject", rv)?;
                // SAFETY: checked non-NULL above.
                unsafe { publish(instance, session, "C_CreateObject", real, phObject) }
            },
        )
    })
}

/// # Safety
/// `pTemplate` points to `ulCount` attributes; `phNewObject` is valid.
pub(super) unsafe extern "C" fn C_CopyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
    phNewObject: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_CopyObject", |instance| {
        check_out(phNewObject)?;
        // SAFETY: forwarded from the caller's contract.
        let attributes = unsafe { template::borrow(pTemplate, ulCount) }?;
        // SAFETY: as above.
        unsafe { template::check(attributes, Use::Write) }?;
        instance.session(hSession, copy_retry(attributes), |session| {
            let source = session.object(&instance.objects, hObject, CKR_OBJECT_HANDLE_INVALID)?;
            let mut real = CK_INVALID_HANDLE;
            let rv = vcall!(
                session.module(),
                C_CopyObject(session.real, source, pTemplate, ulCount, &mut real)
            );
            session.check("C_CopyObject", rv)?;
            // SAFETY: checked non-NULL above.
            unsafe { publish(instance, session, "C_CopyObject", real, phNewObject) }
        })
    })
}

pub(super) extern "C" fn C_DestroyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_DestroyObject", |instance| {
        instance.session(hSession, Retry::Never, |session| {
            let real = session.object(&instance.objects, hObject, CKR_OBJECT_HANDLE_INVALID)?;
            let token_object = instance
                .objects
                .get(hObject)
                .is_some_and(|entry| !entry.is_session_object());
            let rv = vcall!(session.module(), C_DestroyObject(session.real, real));
            session.check("C_DestroyObject", rv)?;
            instance.objects.destroyed(&session.member, hObject);
            session.objects.retain(|&h| h != hObject);
            if token_object {
                instance.note_token_change("C_DestroyObject");
            }
            Ok(())
        })
    })
}

/// # Safety
/// `pulSize` is NULL or valid for writes.
pub(super) unsafe extern "C" fn C_GetObjectSize(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pulSize: *mut CK_ULONG,
) -> CK_RV {
    enter("C_GetObjectSize", |instance| {
        check_out(pulSize)?;
        instance.session(hSession, Retry::Safe, |session| {
            let real = session.object(&instance.objects, hObject, CKR_OBJECT_HANDLE_INVALID)?;
            let rv = vcall!(
                session.module(),
                C_GetObjectSize(session.real, real, pulSize)
            );
            session.check("C_GetObjectSize", rv)
        })
    })
}

/// Reads attributes on the session's member. The vendor fills in each
/// attribute as PKCS#11 prescribes: CK_UNAVAILABLE_INFORMATION for the ones
/// it cannot return, the others with their values.
///
/// # Safety
/// `pTemplate` points to `ulCount` attributes whose buffers are valid.
pub(super) unsafe extern "C" fn C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
) -> CK_RV {
    enter("C_GetAttributeValue", |instance| {
        // SAFETY: forwarded from the caller's contract.
        unsafe { template::borrow(pTemplate, ulCount) }?;
        instance.session(hSession, Retry::Safe, |session| {
            let real = session.object(&instance.objects, hObject, CKR_OBJECT_HANDLE_INVALID)?;
            let rv = vcall!(
                session.module(),
                C_GetAttributeValue(session.real, real, pTemplate, ulCount)
            );
            // p11-kit-client.so 0.24 returns CKR_DEVICE_ERROR for any array
            // attribute (CKA_WRAP_TEMPLATE and the like) from a member that
            // works; such a member is not marked down. The template is read
            // again for that only, after the vendor wrote into it.
            if rv == CKR_DEVICE_ERROR {
                // SAFETY: as above; the vendor changed values, not types.
                let attributes = unsafe { template::borrow(pTemplate, ulCount) }?;
                let reads_arrays = template::touches(attributes, template::ARRAY_ATTRIBUTES);
                if reads_arrays && session_answers(session) {
                    return Err(Rv(CKR_FUNCTION_FAILED));
                }
            }
            session.check("C_GetAttributeValue", rv)
        })
    })
}

/// # Safety
/// `pTemplate` points to `ulCount` attributes.
pub(super) unsafe extern "C" fn C_SetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
) -> CK_RV {
    enter("C_SetAttributeValue", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let attributes = unsafe { template::borrow(pTemplate, ulCount) }?;
        // SAFETY: as above.
        unsafe { template::check(attributes, Use::Write) }?;
        let identity_changes = template::touches(attributes, IDENTITY_CHANGES);
        instance.session(hSession, Retry::Never, |session| {
            let real = session.object(&instance.objects, hObject, CKR_OBJECT_HANDLE_INVALID)?;
            let rv = vcall!(
                session.module(),
                C_SetAttributeValue(session.real, real, pTemplate, ulCount)
            );
            session.check("C_SetAttributeValue", rv)?;
            if identity_changes {
                instance
                    .objects
                    .changed(&session.place(), session.real, hObject)?;
            }
            let token_object = instance
                .objects
                .get(hObject)
                .is_some_and(|entry| !entry.is_session_object());
            if token_object {
                instance.note_token_change("C_SetAttributeValue");
            }
            Ok(())
        })
    })
}

/// # Safety
/// `pTemplate` points to `ulCount` attributes.
pub(super) unsafe extern "C" fn C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
) -> CK_RV {
    enter("C_FindObjectsInit", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let attributes = unsafe { template::borrow(pTemplate, ulCount) }?;
        // SAFETY: as above.
        unsafe { template::check(attributes, Use::Search) }?;
        instance.session(hSession, Retry::Safe, |session| {
            if session.find.active {
                return Err(Rv(CKR_OPERATION_ACTIVE));
            }
            let rv = vcall!(
                session.module(),
                C_FindObjectsInit(session.real, pTemplate, ulCount)
            );
            session.check("C_FindObjectsInit", rv)?;
            // SAFETY: the template was checked above.
            unsafe { session.find.start(attributes) };
            Ok(())
        })
    })
}

/// Continues a search and returns virtual handles. An object that vanished
/// between the search and the reading of its identity is left out.
///
/// # Safety
/// `phObject` points to `ulMaxObjectCount` writable handles;
/// `pulObjectCount` is valid for writes.
pub(super) unsafe extern "C" fn C_FindObjects(
    hSession: CK_SESSION_HANDLE,
    phObject: *mut CK_OBJECT_HANDLE,
    ulMaxObjectCount: CK_ULONG,
    pulObjectCount: *mut CK_ULONG,
) -> CK_RV {
    enter("C_FindObjects", |instance| {
        check_out(phObject)?;
        check_out(pulObjectCount)?;
        if ulMaxObjectCount > isize::MAX as CK_ULONG / 8 {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        instance.session(hSession, Retry::Safe, |session| {
            if !session.find.active {
                return Err(Rv(CKR_OPERATION_NOT_INITIALIZED));
            }
            if session.find.lost {
                // Reported once; the search then returns nothing more.
                session.find.lost = false;
                session.find.exhausted = true;
                return Err(Rv(CKR_DEVICE_ERROR));
            }
            if ulMaxObjectCount == 0 {
                // Room for no handle: an empty result, whatever the vendor
                // would say (p11-kit-client.so 0.24 returns
                // CKR_ARGUMENTS_BAD for a count of 0).
                // SAFETY: checked non-NULL above.
                unsafe { pulObjectCount.write(0) };
                return Ok(());
            }
            let mut kept = 0;
            while !session.find.exhausted {
                let mut found: CK_ULONG = 0;
                let rv = vcall!(
                    session.module(),
                    C_FindObjects(session.real, phObject, ulMaxObjectCount, &mut found)
                );
                session.check("C_FindObjects", rv)?;
                let found = found.min(ulMaxObjectCount) as usize;
                // SAFETY: the vendor wrote `found` handles into the caller's
                // buffer, which has room for `ulMaxObjectCount`.
                let handles = unsafe { std::slice::from_raw_parts_mut(phObject, found) };
                kept = translate_found(instance, session, handles)?;
                // A search started again may return only objects that were
                // returned before; then it goes on, so an empty result
                // still means the end.
                if kept > 0 || found == 0 {
                    break;
                }
            }
            // SAFETY: checked non-NULL above.
            unsafe { pulObjectCount.write(kept as CK_ULONG) };
            Ok(())
        })
    })
}

/// Replaces the real handles of a search result with virtual ones, in
/// place, and returns how many are kept.
fn translate_found(
    instance: &Instance,
    session: &mut Session,
    handles: &mut [CK_OBJECT_HANDLE],
) -> Result<usize> {
    let place = Place {
        slot: session.slot.id,
        member: &session.member,
    };
    let mut kept = 0;
    for i in 0..handles.len() {
        let real = handles[i];
        let hint = session.find.hint(real);
        match instance
            .objects
            .register_hinted(&place, session.real, real, hint)
        {
            Ok(handle) => {
                session.find.found(real, handle);
                if !session.find.record(handle) {
                    continue;
                }
                handles[kept] = handle;
                kept += 1;
            }
            Err(Rv(CKR_OBJECT_HANDLE_INVALID)) => {}
            Err(rv) => {
                session.check("C_FindObjects", rv.0)?;
                return Err(rv);
            }
        }
    }
    Ok(kept)
}

pub(super) extern "C" fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    enter("C_FindObjectsFinal", |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            if !session.find.active {
                return Err(Rv(CKR_OPERATION_NOT_INITIALIZED));
            }
            end_search(session)
        })
    })
}

/// Ends the active search of `session` on its member.
pub(super) fn end_search(session: &mut Session) -> Result<()> {
    if session.find.exhausted || session.find.lost {
        // The search was lost with its member; the new member has none to
        // end.
        session.find.finish();
        return Ok(());
    }
    let rv = vcall!(session.module(), C_FindObjectsFinal(session.real));
    session.find.finish();
    session.check("C_FindObjectsFinal", rv)
}

/// Returns whether the member still answers on the session's real session.
fn session_answers(session: &crate::wld::session::Session) -> bool {
    let mut info = CK_SESSION_INFO::default();
    vcall!(session.module(), C_GetSessionInfo(session.real, &mut info)) == CKR_OK
}
