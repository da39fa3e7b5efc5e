//! Encryption, decryption, digest, signature and verification functions,
//! single-part, multi-part and dual-function.

use super::{bytes, check_in, check_out};
use crate::error::{Result, Rv};
use crate::instance::enter;
use crate::mechanism::Checked;
use crate::vendor::VendorModule;
use crate::wld::failover::Retry;
use crate::wld::ops::{self, OpKind};
use crate::wld::session::Session;
use cryptoki_sys::*;

/// A vendor function with input and output buffers (C_Encrypt, C_Sign,
/// C_EncryptUpdate, C_DigestEncryptUpdate, ...).
type InOut = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    *mut CK_BYTE,
    CK_ULONG,
    *mut CK_BYTE,
    *mut CK_ULONG,
) -> CK_RV;
/// A vendor function with an input buffer only (C_DigestUpdate, ...).
type In = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG) -> CK_RV;
/// A vendor function with an output buffer only (C_SignFinal, ...).
type Out = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG) -> CK_RV;
/// A vendor init function (C_SignInit, ...).
type Init = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV;

/// Calls an optional vendor function, or returns CKR_FUNCTION_NOT_SUPPORTED
/// when the vendor's list lacks it.
macro_rules! call_or_unsupported {
    ($function:expr, $($arg:expr),*) => {
        match $function {
            // SAFETY: the function comes from the vendor's own list; the
            // pointers were checked by the entry point.
            Some(f) => unsafe { f($($arg),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

/// Runs the argument checks of a call that ends the active operations of
/// `kinds` when it fails. A rejected argument ends them too, as PKCS#11
/// prescribes for every error other than CKR_BUFFER_TOO_SMALL, although
/// the vendor never sees the call.
fn checked<R>(
    session: &mut Session,
    kinds: &[OpKind],
    check: impl FnOnce() -> Result<R>,
) -> Result<R> {
    check().inspect_err(|_| {
        for &kind in kinds {
            ops::abort(session, kind);
        }
    })
}

/// Starts an operation of `kind`. Inlined into each entry point, so the
/// vendor function is selected there and not through a function pointer.
///
/// # Safety
/// `pMechanism` is NULL or a valid CK_MECHANISM.
#[inline(always)]
unsafe fn init(
    name: &'static str,
    kind: OpKind,
    select: impl Fn(&CK_FUNCTION_LIST) -> Option<Init>,
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    enter(name, |instance| {
        // SAFETY: forwarded from the caller's contract.
        let mechanism = unsafe { Checked::new(pMechanism) }?;
        instance.session(hSession, Retry::Safe, |session| {
            let call = |module: &VendorModule, real, m, key| {
                call_or_unsupported!(select(module.functions()), real, m, key)
            };
            ops::init(instance, session, kind, mechanism, hKey, call)
        })
    })
}

/// Runs a single-part function: input in, output out.
///
/// # Safety
/// The buffers are NULL or valid with their lengths.
// The arguments mirror the C function's, plus the call's name, kind and
// vendor function.
#[allow(clippy::too_many_arguments)]
unsafe fn single(
    name: &'static str,
    kind: OpKind,
    select: fn(&CK_FUNCTION_LIST) -> Option<InOut>,
    hSession: CK_SESSION_HANDLE,
    pIn: *mut CK_BYTE,
    ulInLen: CK_ULONG,
    pOut: *mut CK_BYTE,
    pulOutLen: *mut CK_ULONG,
) -> CK_RV {
    enter(name, |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            checked(session, &[kind], || {
                check_in(pIn, ulInLen)?;
                check_out(pulOutLen)
            })?;
            ops::single(session, kind, name, pOut.is_null(), |module, real| {
                call_or_unsupported!(
                    select(module.functions()),
                    real,
                    pIn,
                    ulInLen,
                    pOut,
                    pulOutLen
                )
            })
        })
    })
}

/// Runs an update function with an output (encrypt and decrypt).
///
/// # Safety
/// The buffers are NULL or valid with their lengths.
// The arguments mirror the C function's, plus the call's name, kind and
// vendor function.
#[allow(clippy::too_many_arguments)]
unsafe fn update_in_out(
    name: &'static str,
    kind: OpKind,
    select: fn(&CK_FUNCTION_LIST) -> Option<InOut>,
    hSession: CK_SESSION_HANDLE,
    pIn: *mut CK_BYTE,
    ulInLen: CK_ULONG,
    pOut: *mut CK_BYTE,
    pulOutLen: *mut CK_ULONG,
) -> CK_RV {
    enter(name, |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            let data = checked(session, &[kind], || {
                check_out(pulOutLen)?;
                // SAFETY: forwarded from the caller's contract.
                unsafe { bytes(pIn, ulInLen) }
            })?;
            ops::update(
                instance,
                session,
                kind,
                name,
                data,
                pOut.is_null(),
                // SAFETY: checked non-NULL above.
                || unsafe { pulOutLen.write(0) },
                |module, real| {
                    call_or_unsupported!(
                        select(module.functions()),
                        real,
                        pIn,
                        ulInLen,
                        pOut,
                        pulOutLen
                    )
                },
            )
        })
    })
}

/// Runs an update function without an output (digest, sign, verify).
///
/// # Safety
/// `pIn` is NULL or valid with its length.
unsafe fn update_in(
    name: &'static str,
    kind: OpKind,
    select: fn(&CK_FUNCTION_LIST) -> Option<In>,
    hSession: CK_SESSION_HANDLE,
    pIn: *mut CK_BYTE,
    ulInLen: CK_ULONG,
) -> CK_RV {
    enter(name, |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            // SAFETY: forwarded from the caller's contract.
            let data = checked(session, &[kind], || unsafe { bytes(pIn, ulInLen) })?;
            ops::update(
                instance,
                session,
                kind,
                name,
                data,
                false,
                || {},
                |module, real| call_or_unsupported!(select(module.functions()), real, pIn, ulInLen),
            )
        })
    })
}

/// Runs a final function with an output.
///
/// # Safety
/// `pOut` is NULL or valid with `*pulOutLen` bytes.
unsafe fn final_out(
    name: &'static str,
    kind: OpKind,
    select: fn(&CK_FUNCTION_LIST) -> Option<Out>,
    hSession: CK_SESSION_HANDLE,
    pOut: *mut CK_BYTE,
    pulOutLen: *mut CK_ULONG,
) -> CK_RV {
    enter(name, |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            checked(session, &[kind], || check_out(pulOutLen))?;
            ops::single(session, kind, name, pOut.is_null(), |module, real| {
                call_or_unsupported!(select(module.functions()), real, pOut, pulOutLen)
            })
        })
    })
}

/// Runs a dual-function update, which feeds two operations at once.
///
/// # Safety
/// The buffers are NULL or valid with their lengths.
// The arguments mirror the C function's, plus the call's name, kind and
// vendor function.
#[allow(clippy::too_many_arguments)]
unsafe fn dual(
    name: &'static str,
    kinds: [OpKind; 2],
    select: fn(&CK_FUNCTION_LIST) -> Option<InOut>,
    hSession: CK_SESSION_HANDLE,
    pIn: *mut CK_BYTE,
    ulInLen: CK_ULONG,
    pOut: *mut CK_BYTE,
    pulOutLen: *mut CK_ULONG,
) -> CK_RV {
    enter(name, |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            checked(session, &kinds, || {
                check_in(pIn, ulInLen)?;
                check_out(pulOutLen)
            })?;
            ops::dual_update(session, kinds, name, |module, real| {
                call_or_unsupported!(
                    select(module.functions()),
                    real,
                    pIn,
                    ulInLen,
                    pOut,
                    pulOutLen
                )
            })
        })
    })
}

/// Declares entry points that delegate to one of the helpers above; each
/// one's safety contract is that of the PKCS#11 function it implements.
macro_rules! entry {
    (init $name:ident, $name_3_0:ident, $kind:ident) => {
        /// # Safety
        /// `pMechanism` is NULL or a valid CK_MECHANISM.
        pub(super) unsafe extern "C" fn $name(
            hSession: CK_SESSION_HANDLE,
            pMechanism: *mut CK_MECHANISM,
            hKey: CK_OBJECT_HANDLE,
        ) -> CK_RV {
            // SAFETY: forwarded from the caller's contract.
            unsafe {
                init(
                    stringify!($name),
                    OpKind::$kind,
                    |l| l.$name,
                    hSession,
                    pMechanism,
                    hKey,
                )
            }
        }

        /// The function of the PKCS#11 3.0 list, where a NULL mechanism
        /// cancels the active operation.
        ///
        /// # Safety
        /// `pMechanism` is NULL or a valid CK_MECHANISM.
        pub(super) unsafe extern "C" fn $name_3_0(
            hSession: CK_SESSION_HANDLE,
            pMechanism: *mut CK_MECHANISM,
            hKey: CK_OBJECT_HANDLE,
        ) -> CK_RV {
            if pMechanism.is_null() {
                return cancel(stringify!($name), &[OpKind::$kind], hSession);
            }
            // SAFETY: forwarded from the caller's contract.
            unsafe { $name(hSession, pMechanism, hKey) }
        }
    };
    (single $name:ident, $kind:ident) => {
        /// # Safety
        /// The buffers are NULL or valid with their lengths.
        pub(super) unsafe extern "C" fn $name(
            hSession: CK_SESSION_HANDLE,
            pIn: *mut CK_BYTE,
            ulInLen: CK_ULONG,
            pOut: *mut CK_BYTE,
            pulOutLen: *mut CK_ULONG,
        ) -> CK_RV {
            // SAFETY: forwarded from the caller's contract.
            unsafe {
                single(
                    stringify!($name),
                    OpKind::$kind,
                    |l| l.$name,
                    hSession,
                    pIn,
                    ulInLen,
                    pOut,
                    pulOutLen,
                )
            }
        }
    };
    (update_out $name:ident, $kind:ident) => {
        /// # Safety
        /// The buffers are NULL or valid with their lengths.
        pub(super) unsafe extern "C" fn $name(
            hSession: CK_SESSION_HANDLE,
            pIn: *mut CK_BYTE,
            ulInLen: CK_ULONG,
            pOut: *mut CK_BYTE,
            pulOutLen: *mut CK_ULONG,
        ) -> CK_RV {
            // SAFETY: forwarded from the caller's contract.
            unsafe {
                update_in_out(
                    stringify!($name),
                    OpKind::$kind,
                    |l| l.$name,
                    hSession,
                    pIn,
                    ulInLen,
                    pOut,
                    pulOutLen,
                )
            }
        }
    };
    (update $name:ident, $kind:ident) => {
        /// # Safety
        /// `pIn` is NULL or valid with its length.
        pub(super) unsafe extern "C" fn $name(
            hSession: CK_SESSION_HANDLE,
            pIn: *mut CK_BYTE,
            ulInLen: CK_ULONG,
        ) -> CK_RV {
            // SAFETY: forwarded from the caller's contract.
            unsafe {
                update_in(
                    stringify!($name),
                    OpKind::$kind,
                    |l| l.$name,
                    hSession,
                    pIn,
                    ulInLen,
                )
            }
        }
    };
    (final $name:ident, $kind:ident) => {
        /// # Safety
        /// `pOut` is NULL or valid with `*pulOutLen` bytes.
        pub(super) unsafe extern "C" fn $name(
            hSession: CK_SESSION_HANDLE,
            pOut: *mut CK_BYTE,
            pulOutLen: *mut CK_ULONG,
        ) -> CK_RV {
            // SAFETY: forwarded from the caller's contract.
            unsafe {
                final_out(
                    stringify!($name),
                    OpKind::$kind,
                    |l| l.$name,
                    hSession,
                    pOut,
                    pulOutLen,
                )
            }
        }
    };
    (dual $name:ident, $first:ident, $second:ident) => {
        /// # Safety
        /// The buffers are NULL or valid with their lengths.
        pub(super) unsafe extern "C" fn $name(
            hSession: CK_SESSION_HANDLE,
            pIn: *mut CK_BYTE,
            ulInLen: CK_ULONG,
            pOut: *mut CK_BYTE,
            pulOutLen: *mut CK_ULONG,
        ) -> CK_RV {
            // SAFETY: forwarded from the caller's contract.
            unsafe {
                dual(
                    stringify!($name),
                    [OpKind::$first, OpKind::$second],
                    |l| l.$name,
                    hSession,
                    pIn,
                    ulInLen,
                    pOut,
                    pulOutLen,
                )
            }
        }
    };
}

entry!(init C_EncryptInit, C_EncryptInit_3_0, Encrypt);
entry!(single C_Encrypt, Encrypt);
entry!(update_out C_EncryptUpdate, Encrypt);
entry!(final C_EncryptFinal, Encrypt);

entry!(init C_DecryptInit, C_DecryptInit_3_0, Decrypt);
entry!(single C_Decrypt, Decrypt);
entry!(update_out C_DecryptUpdate, Decrypt);
entry!(final C_DecryptFinal, Decrypt);

entry!(single C_Digest, Digest);
entry!(update C_DigestUpdate, Digest);
entry!(final C_DigestFinal, Digest);

entry!(init C_SignInit, C_SignInit_3_0, Sign);
entry!(single C_Sign, Sign);
entry!(update C_SignUpdate, Sign);
entry!(final C_SignFinal, Sign);

entry!(init C_SignRecoverInit, C_SignRecoverInit_3_0, SignRecover);
entry!(single C_SignRecover, SignRecover);

entry!(init C_VerifyInit, C_VerifyInit_3_0, Verify);
entry!(update C_VerifyUpdate, Verify);

entry!(init C_VerifyRecoverInit, C_VerifyRecoverInit_3_0, VerifyRecover);
entry!(single C_VerifyRecover, VerifyRecover);

entry!(dual C_DigestEncryptUpdate, Digest, Encrypt);
entry!(dual C_DecryptDigestUpdate, Decrypt, Digest);
entry!(dual C_SignEncryptUpdate, Sign, Encrypt);
entry!(dual C_DecryptVerifyUpdate, Decrypt, Verify);

/// # Safety
/// `pMechanism` is NULL or a valid CK_MECHANISM.
pub(super) unsafe extern "C" fn C_DigestInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
) -> CK_RV {
    enter("C_DigestInit", |instance| {
        // SAFETY: forwarded from the caller's contract.
        let mechanism = unsafe { Checked::new(pMechanism) }?;
        instance.session(hSession, Retry::Safe, |session| {
            let call = |module: &VendorModule, real, m, _key| {
                call_or_unsupported!(module.functions().C_DigestInit, real, m)
            };
            ops::init(instance, session, OpKind::Digest, mechanism, 0, call)
        })
    })
}

/// The function of the PKCS#11 3.0 list, where a NULL mechanism cancels the
/// active digest.
///
/// # Safety
/// `pMechanism` is NULL or a valid CK_MECHANISM.
pub(super) unsafe extern "C" fn C_DigestInit_3_0(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
) -> CK_RV {
    if pMechanism.is_null() {
        return cancel("C_DigestInit", &[OpKind::Digest], hSession);
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe { C_DigestInit(hSession, pMechanism) }
}

/// Ends the active operations of `kinds` on a session, as a PKCS#11 3.0
/// init call with a NULL mechanism and `C_SessionCancel` do. An operation
/// that was not active counts as ended. Returns
/// CKR_OPERATION_CANCEL_FAILED when one may still be active on the member.
fn cancel(name: &'static str, kinds: &[OpKind], hSession: CK_SESSION_HANDLE) -> CK_RV {
    enter(name, |instance| {
        instance.session(hSession, Retry::Safe, |session| cancel_ops(session, kinds))
    })
}

/// Ends the active operations of `kinds` on `session`, as [`cancel`] describes.
pub(super) fn cancel_ops(session: &mut Session, kinds: &[OpKind]) -> Result<()> {
    let mut ended = true;
    for &kind in kinds {
        ended &= ops::abort(session, kind);
    }
    if ended {
        Ok(())
    } else {
        Err(Rv(CKR_OPERATION_CANCEL_FAILED))
    }
}

/// Digests a key's value on the member; such a digest cannot be replayed.
pub(super) extern "C" fn C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) -> CK_RV {
    enter("C_DigestKey", |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            let key = session.object(&instance.objects, hKey, CKR_KEY_HANDLE_INVALID)?;
            ops::dual_update(
                session,
                [OpKind::Digest, OpKind::Digest],
                "C_DigestKey",
                |module, real| call_or_unsupported!(module.functions().C_DigestKey, real, key),
            )
        })
    })
}

/// # Safety
/// The buffers are NULL or valid with their lengths.
pub(super) unsafe extern "C" fn C_Verify(
    hSession: CK_SESSION_HANDLE,
    pData: *mut CK_BYTE,
    ulDataLen: CK_ULONG,
    pSignature: *mut CK_BYTE,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    enter("C_Verify", |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            checked(session, &[OpKind::Verify], || {
                check_in(pData, ulDataLen)?;
                check_in(pSignature, ulSignatureLen)
            })?;
            ops::single(
                session,
                OpKind::Verify,
                "C_Verify",
                false,
                |module, real| {
                    call_or_unsupported!(
                        module.functions().C_Verify,
                        real,
                        pData,
                        ulDataLen,
                        pSignature,
                        ulSignatureLen
                    )
                },
            )
        })
    })
}

/// # Safety
/// `pSignature` is NULL or valid with its length.
pub(super) unsafe extern "C" fn C_VerifyFinal(
    hSession: CK_SESSION_HANDLE,
    pSignature: *mut CK_BYTE,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    enter("C_VerifyFinal", |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            checked(session, &[OpKind::Verify], || {
                check_in(pSignature, ulSignatureLen)
            })?;
            ops::single(
                session,
                OpKind::Verify,
                "C_VerifyFinal",
                false,
                |module, real| {
                    call_or_unsupported!(
                        module.functions().C_VerifyFinal,
                        real,
                        pSignature,
                        ulSignatureLen
                    )
                },
            )
        })
    })
}
