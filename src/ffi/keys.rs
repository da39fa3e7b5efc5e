//! Key management and random number functions.

use super::object::publish;
use super::{check_in, check_out};
use crate::instance::enter;
use crate::mechanism::Checked;
use crate::template::{self, Use};
use crate::vcall;
use crate::wld::failover::Retry;
use crate::wld::object::destroy_real;
use crate::wld::ops;
use cryptoki_sys::*;

/// # Safety
/// The pointers are NULL or valid as PKCS#11 describes them.
pub(super) unsafe extern "C" fn C_GenerateKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    pTemplate: *mut CK_ATTRIBUTE,
    ulCount: CK_ULONG,
    phKey: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_GenerateKey", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let mechanism = unsafe { Checked::new(pMechanism) }?;
        check_out(phKey)?;
        // SAFETY: as above.
        let attributes = unsafe { template::borrow(pTemplate, ulCount) }?;
        // SAFETY: as above.
        unsafe { template::check(attributes, Use::Write) }?;
        instance.session(
            hSession,
            Retry::for_new_object(template::bool_value(attributes, CKA_TOKEN)),
            |session| {
                let mut real = CK_INVALID_HANDLE;
                let rv = ops::with_mechanism(instance, session, mechanism, |m| {
                    vcall!(
                        session.module(),
                        C_GenerateKey(session.real, m, pTemplate, ulCount, &mut real)
                    )
                })?;
                session.check("C_GenerateKey", rv)?;
                // SAFETY: checked non-NULL above.
                unsafe { publish(instance, session, "C_GenerateKey", real, phKey) }
            },
        )
    })
}

/// # Safety
/// The pointers are NULL or valid as PKCS#11 describes them.
pub(super) unsafe extern "C" fn C_GenerateKeyPair(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    pPublicKeyTemplate: *mut CK_ATTRIBUTE,
    ulPublicKeyAttributeCount: CK_ULONG,
    pPrivateKeyTemplate: *mut CK_ATTRIBUTE,
    ulPrivateKeyAttributeCount: CK_ULONG,
    phPublicKey: *mut CK_OBJECT_HANDLE,
    phPrivateKey: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_GenerateKeyPair", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let mechanism = unsafe { Checked::new(pMechanism) }?;
        check_out(phPublicKey)?;
        check_out(phPrivateKey)?;
        let mut pair_retry = Retry::Safe;
        for (pointer, count) in [
            (pPublicKeyTemplate, ulPublicKeyAttributeCount),
            (pPrivateKeyTemplate, ulPrivateKeyAttributeCount),
        ] {
            // SAFETY: as above.
            let attributes = unsafe { template::borrow(pointer, count) }?;
            // SAFETY: as above.
            unsafe { template::check(attributes, Use::Write) }?;
            if Retry::for_new_object(template::bool_value(attributes, CKA_TOKEN)) == Retry::Never {
                pair_retry = Retry::Never;
            }
        }
        instance.session(hSession, pair_retry, |session| {
            let mut public = CK_INVALID_HANDLE;
            let mut private = CK_INVALID_HANDLE;
            let rv = ops::with_mechanism(instance, session, mechanism, |m| {
                vcall!(
                    session.module(),
                    C_GenerateKeyPair(
                        session.real,
                        m,
                        pPublicKeyTemplate,
                        ulPublicKeyAttributeCount,
                        pPrivateKeyTemplate,
                        ulPrivateKeyAttributeCount,
                        &mut public,
                        &mut private
                    )
                )
            })?;
            session.check("C_GenerateKeyPair", rv)?;
            // SAFETY: checked non-NULL above.
            if let Err(rv) =
                unsafe { publish(instance, session, "C_GenerateKeyPair", public, phPublicKey) }
            {
                destroy_real(session.module(), session.real, private);
                return Err(rv);
            }
            // SAFETY: checked non-NULL above.
            if let Err(rv) = unsafe {
                publish(
                    instance,
                    session,
                    "C_GenerateKeyPair",
                    private,
                    phPrivateKey,
                )
            } {
                // SAFETY: written by the first publish.
                let public_handle = unsafe { *phPublicKey };
                if let Ok(real) =
                    session.object(&instance.objects, public_handle, CKR_OBJECT_HANDLE_INVALID)
                {
                    destroy_real(session.module(), session.real, real);
                    instance.objects.destroyed(&session.member, public_handle);
                }
                return Err(rv);
            }
            Ok(())
        })
    })
}

/// # Safety
/// The pointers are NULL or valid as PKCS#11 describes them.
pub(super) unsafe extern "C" fn C_WrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hWrappingKey: CK_OBJECT_HANDLE,
    hKey: CK_OBJECT_HANDLE,
    pWrappedKey: *mut CK_BYTE,
    pulWrappedKeyLen: *mut CK_ULONG,
) -> CK_RV {
    enter("C_WrapKey", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let mechanism = unsafe { Checked::new(pMechanism) }?;
        check_out(pulWrappedKeyLen)?;
        instance.session(hSession, Retry::Safe, |session| {
            let objects = &instance.objects;
            let wrapping =
                session.object(objects, hWrappingKey, CKR_WRAPPING_KEY_HANDLE_INVALID)?;
            let key = session.object(objects, hKey, CKR_KEY_HANDLE_INVALID)?;
            let rv = ops::with_mechanism(instance, session, mechanism, |m| {
                vcall!(
                    session.module(),
                    C_WrapKey(
                        session.real,
                        m,
                        wrapping,
                        key,
                        pWrappedKey,
                        pulWrappedKeyLen
                    )
                )
            })?;
            session.check("C_WrapKey", rv)
        })
    })
}

/// # Safety
/// The pointers are NULL or valid as PKCS#11 describes them.
pub(super) unsafe extern "C" fn C_UnwrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hUnwrappingKey: CK_OBJECT_HANDLE,
    pWrappedKey: *mut CK_BYTE,
    ulWrappedKeyLen: CK_ULONG,
    pTemplate: *mut CK_ATTRIBUTE,
    ulAttributeCount: CK_ULONG,
    phKey: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_UnwrapKey", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let mechanism = unsafe { Checked::new(pMechanism) }?;
        check_in(pWrappedKey, ulWrappedKeyLen)?;
        check_out(phKey)?;
        // SAFETY: as above.
        let attributes = unsafe { template::borrow(pTemplate, ulAttributeCount) }?;
        // SAFETY: as above.
        unsafe { template::check(attributes, Use::Write) }?;
        instance.session(
            hSession,
            Retry::for_new_object(template::bool_value(attributes, CKA_TOKEN)),
            |session| {
                let unwrapping = session.object(
                    &instance.objects,
                    hUnwrappingKey,
                    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
                )?;
                let mut real = CK_INVALID_HANDLE;
                let rv = ops::with_mechanism(instance, session, mechanism, |m| {
                    vcall!(
                        session.module(),
                        C_UnwrapKey(
                            session.real,
                            m,
                            unwrapping,
                            pWrappedKey,
                            ulWrappedKeyLen,
                            pTemplate,
                            ulAttributeCount,
                            &mut real
                        )
                    )
                })?;
                session.check("C_UnwrapKey", rv)?;
                // SAFETY: checked non-NULL above.
                unsafe { publish(instance, session, "C_UnwrapKey", real, phKey) }
            },
        )
    })
}

/// # Safety
/// The pointers are NULL or valid as PKCS#11 describes them.
pub(super) unsafe extern "C" fn C_DeriveKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hBaseKey: CK_OBJECT_HANDLE,
    pTemplate: *mut CK_ATTRIBUTE,
    ulAttributeCount: CK_ULONG,
    phKey: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter("C_DeriveKey", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let mechanism = unsafe { Checked::new(pMechanism) }?;
        check_out(phKey)?;
        // SAFETY: as above.
        let attributes = unsafe { template::borrow(pTemplate, ulAttributeCount) }?;
        // SAFETY: as above.
        unsafe { template::check(attributes, Use::Write) }?;
        instance.session(
            hSession,
            Retry::for_new_object(template::bool_value(attributes, CKA_TOKEN)),
            |session| {
                let base = session.object(&instance.objects, hBaseKey, CKR_KEY_HANDLE_INVALID)?;
                let mut real = CK_INVALID_HANDLE;
                let rv = ops::with_mechanism(instance, session, mechanism, |m| {
                    vcall!(
                        session.module(),
                        C_DeriveKey(
                            session.real,
                            m,
                            base,
                            pTemplate,
                            ulAttributeCount,
                            &mut real
                        )
                    )
                })?;
                session.check("C_DeriveKey", rv)?;
                // SAFETY: checked non-NULL above.
                unsafe { publish(instance, session, "C_DeriveKey", real, phKey) }
            },
        )
    })
}

/// # Safety
/// `pSeed` is NULL or valid with its length.
pub(super) unsafe extern "C" fn C_SeedRandom(
    hSession: CK_SESSION_HANDLE,
    pSeed: *mut CK_BYTE,
    ulSeedLen: CK_ULONG,
) -> CK_RV {
    enter("C_SeedRandom", |instance| {
        check_in(pSeed, ulSeedLen)?;
        instance.session(hSession, Retry::Safe, |session| {
            let rv = vcall!(
                session.module(),
                C_SeedRandom(session.real, pSeed, ulSeedLen)
            );
            session.check("C_SeedRandom", rv)
        })
    })
}

/// # Safety
/// `RandomData` is NULL or valid for `ulRandomLen` bytes.
pub(super) unsafe extern "C" fn C_GenerateRandom(
    hSession: CK_SESSION_HANDLE,
    RandomData: *mut CK_BYTE,
    ulRandomLen: CK_ULONG,
) -> CK_RV {
    enter("C_GenerateRandom", |instance| {
        check_in(RandomData, ulRandomLen)?;
        instance.session(hSession, Retry::Safe, |session| {
            if ulRandomLen == 0 {
                // Nothing to generate, so no member is called: a vendor
                // behind p11-kit-client.so 0.24.1 receives the empty buffer
                // as NULL and rejects it with CKR_ARGUMENTS_BAD, where
                // SoftHSM2 2.6.1 used directly returns CKR_OK.
                return Ok(());
            }
            let rv = vcall!(
                session.module(),
                C_GenerateRandom(session.real, RandomData, ulRandomLen)
            );
            session.check("C_GenerateRandom", rv)
        })
    })
}
