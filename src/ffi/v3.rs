//! PKCS#11 3.0 functions outside the 2.40 list. `C_SessionCancel` ends the
//! operations and searches the proxy runs; the others return
//! CKR_FUNCTION_NOT_SUPPORTED once the module is initialized.
//!
//! Message-based encryption and signing would need every member to keep
//! per-message state the proxy cannot move between members, and no vendor
//! this proxy targets (SoftHSM2 2.6, p11-kit 0.24) implements them.
//! C_LoginUser needs tokens with named users.

use super::crypto::cancel_ops;
use super::object::end_search;
use crate::error::Rv;
use crate::instance::enter;
use crate::wld::failover::Retry;
use crate::wld::ops::OpKind;
use cryptoki_sys::*;
use std::ffi::c_void;

macro_rules! unsupported {
    ($name:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        pub(super) extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            $(let _ = $arg;)*
            enter(stringify!($name), |_| Err(Rv(CKR_FUNCTION_NOT_SUPPORTED)))
        }
    };
}

unsupported!(C_LoginUser(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: *mut CK_UTF8CHAR,
    ulPinLen: CK_ULONG,
    pUsername: *mut CK_UTF8CHAR,
    ulUsernameLen: CK_ULONG,
));

/// The operations that each flag of `C_SessionCancel` names. The flags of
/// message-based operations name none: such operations never start here.
const CANCEL_FLAGS: [(CK_FLAGS, OpKind); 7] = [
    (CKF_ENCRYPT, OpKind::Encrypt),
    (CKF_DECRYPT, OpKind::Decrypt),
    (CKF_DIGEST, OpKind::Digest),
    (CKF_SIGN, OpKind::Sign),
    (CKF_SIGN_RECOVER, OpKind::SignRecover),
    (CKF_VERIFY, OpKind::Verify),
    (CKF_VERIFY_RECOVER, OpKind::VerifyRecover),
];

/// Cancels the session's active operations that `flags` names, and its
/// search with CKF_FIND_OBJECTS. An operation that is not active counts as
/// cancelled.
pub(super) extern "C" fn C_SessionCancel(hSession: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    enter("C_SessionCancel", |instance| {
        instance.session(hSession, Retry::Safe, |session| {
            let kinds: Vec<OpKind> = CANCEL_FLAGS
                .iter()
                .filter(|(flag, _)| flags & flag != 0)
                .map(|&(_, kind)| kind)
                .collect();
            let ended = cancel_ops(session, &kinds);
            if flags & CKF_FIND_OBJECTS != 0 && session.find.active {
                end_search(session)?;
            }
            ended
        })
    })
}
unsupported!(C_MessageEncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hKey: CK_OBJECT_HANDLE,
));
unsupported!(C_EncryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pAssociatedData: *mut CK_BYTE,
    ulAssociatedDataLen: CK_ULONG,
    pPlaintext: *mut CK_BYTE,
    ulPlaintextLen: CK_ULONG,
    pCiphertext: *mut CK_BYTE,
    pulCiphertextLen: *mut CK_ULONG,
));
unsupported!(C_EncryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pAssociatedData: *mut CK_BYTE,
    ulAssociatedDataLen: CK_ULONG,
));
unsupported!(C_EncryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pPlaintextPart: *mut CK_BYTE,
    ulPlaintextPartLen: CK_ULONG,
    pCiphertextPart: *mut CK_BYTE,
    pulCiphertextPartLen: *mut CK_ULONG,
    flags: CK_FLAGS,
));
unsupported!(C_MessageEncryptFinal(hSession: CK_SESSION_HANDLE));
unsupported!(C_MessageDecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hKey: CK_OBJECT_HANDLE,
));
unsupported!(C_DecryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pAssociatedData: *mut CK_BYTE,
    ulAssociatedDataLen: CK_ULONG,
    pCiphertext: *mut CK_BYTE,
    ulCiphertextLen: CK_ULONG,
    pPlaintext: *mut CK_BYTE,
    pulPlaintextLen: *mut CK_ULONG,
));
unsupported!(C_DecryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pAssociatedData: *mut CK_BYTE,
    ulAssociatedDataLen: CK_ULONG,
));
unsupported!(C_DecryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pCiphertextPart: *mut CK_BYTE,
    ulCiphertextPartLen: CK_ULONG,
    pPlaintextPart: *mut CK_BYTE,
    pulPlaintextPartLen: *mut CK_ULONG,
    flags: CK_FLAGS,
));
unsupported!(C_MessageDecryptFinal(hSession: CK_SESSION_HANDLE));
unsupported!(C_MessageSignInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hKey: CK_OBJECT_HANDLE,
));
unsupported!(C_SignMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pData: *mut CK_BYTE,
    ulDataLen: CK_ULONG,
    pSignature: *mut CK_BYTE,
    pulSignatureLen: *mut CK_ULONG,
));
unsupported!(C_SignMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
));
unsupported!(C_SignMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pData: *mut CK_BYTE,
    ulDataLen: CK_ULONG,
    pSignature: *mut CK_BYTE,
    pulSignatureLen: *mut CK_ULONG,
));
unsupported!(C_MessageSignFinal(hSession: CK_SESSION_HANDLE));
unsupported!(C_MessageVerifyInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: *mut CK_MECHANISM,
    hKey: CK_OBJECT_HANDLE,
));
unsupported!(C_VerifyMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pData: *mut CK_BYTE,
    ulDataLen: CK_ULONG,
    pSignature: *mut CK_BYTE,
    ulSignatureLen: CK_ULONG,
));
unsupported!(C_VerifyMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
));
unsupported!(C_VerifyMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: *mut c_void,
    ulParameterLen: CK_ULONG,
    pData: *mut CK_BYTE,
    ulDataLen: CK_ULONG,
    pSignature: *mut CK_BYTE,
    ulSignatureLen: CK_ULONG,
));
unsupported!(C_MessageVerifyFinal(hSession: CK_SESSION_HANDLE));
