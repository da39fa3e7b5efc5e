//! The function tables and the exported entry points that hand them out:
//! `C_GetFunctionList` (PKCS#11 2.40), `C_GetInterfaceList` and
//! `C_GetInterface` (PKCS#11 3.0). They work before `C_Initialize`.

use super::crypto::*;
use super::ext;
use super::general::*;
use super::keys::*;
use super::object::*;
use super::session::*;
use super::slot::*;
use super::v3::*;
use super::{check_out, fill_list};
use crate::error::Rv;
use crate::instance::guard;
use cryptoki_sys::*;
use std::cell::UnsafeCell;
use std::ffi::{c_void, CStr};

/// Fills in a function list. The 2.40 fields are the same in every table
/// but C_GetInfo and the seven init functions, which take a NULL mechanism
/// as a cancel in PKCS#11 3.0.
macro_rules! function_list {
    (
        $kind:ident,
        $major:expr,
        $minor:expr,
        $get_info:ident,
        [
            $encrypt_init:ident,
            $decrypt_init:ident,
            $digest_init:ident,
            $sign_init:ident,
            $sign_recover_init:ident,
            $verify_init:ident,
            $verify_recover_init:ident $(,)?
        ]
        { $($extra:tt)* }
    ) => {
        $kind {
            version: CK_VERSION { major: $major, minor: $minor },
            C_Initialize: Some(C_Initialize),
            C_Finalize: Some(C_Finalize),
            C_GetInfo: Some($get_info),
            C_GetFunctionList: Some(C_GetFunctionList),
            C_GetSlotList: Some(C_GetSlotList),
            C_GetSlotInfo: Some(C_GetSlotInfo),
            C_GetTokenInfo: Some(C_GetTokenInfo),
            C_GetMechanismList: Some(C_GetMechanismList),
            C_GetMechanismInfo: Some(C_GetMechanismInfo),
            C_InitToken: Some(C_InitToken),
            C_InitPIN: Some(C_InitPIN),
            C_SetPIN: Some(C_SetPIN),
            C_OpenSession: Some(C_OpenSession),
            C_CloseSession: Some(C_CloseSession),
            C_CloseAllSessions: Some(C_CloseAllSessions),
            C_GetSessionInfo: Some(C_GetSessionInfo),
            C_GetOperationState: Some(C_GetOperationState),
            C_SetOperationState: Some(C_SetOperationState),
            C_Login: Some(C_Login),
            C_Logout: Some(C_Logout),
            C_CreateObject: Some(C_CreateObject),
            C_CopyObject: Some(C_CopyObject),
            C_DestroyObject: Some(C_DestroyObject),
            C_GetObjectSize: Some(C_GetObjectSize),
            C_GetAttributeValue: Some(C_GetAttributeValue),
            C_SetAttributeValue: Some(C_SetAttributeValue),
            C_FindObjectsInit: Some(C_FindObjectsInit),
            C_FindObjects: Some(C_FindObjects),
            C_FindObjectsFinal: Some(C_FindObjectsFinal),
            C_EncryptInit: Some($encrypt_init),
            C_Encrypt: Some(C_Encrypt),
            C_EncryptUpdate: Some(C_EncryptUpdate),
            C_EncryptFinal: Some(C_EncryptFinal),
            C_DecryptInit: Some($decrypt_init),
            C_Decrypt: Some(C_Decrypt),
            C_DecryptUpdate: Some(C_DecryptUpdate),
            C_DecryptFinal: Some(C_DecryptFinal),
            C_DigestInit: Some($digest_init),
            C_Digest: Some(C_Digest),
            C_DigestUpdate: Some(C_DigestUpdate),
            C_DigestKey: Some(C_DigestKey),
            C_DigestFinal: Some(C_DigestFinal),
            C_SignInit: Some($sign_init),
            C_Sign: Some(C_Sign),
            C_SignUpdate: Some(C_SignUpdate),
            C_SignFinal: Some(C_SignFinal),
            C_SignRecoverInit: Some($sign_recover_init),
            C_SignRecover: Some(C_SignRecover),
            C_VerifyInit: Some($verify_init),
            C_Verify: Some(C_Verify),
            C_VerifyUpdate: Some(C_VerifyUpdate),
            C_VerifyFinal: Some(C_VerifyFinal),
            C_VerifyRecoverInit: Some($verify_recover_init),
            C_VerifyRecover: Some(C_VerifyRecover),
            C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
            C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
            C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
            C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
            C_GenerateKey: Some(C_GenerateKey),
            C_GenerateKeyPair: Some(C_GenerateKeyPair),
            C_WrapKey: Some(C_WrapKey),
            C_UnwrapKey: Some(C_UnwrapKey),
            C_DeriveKey: Some(C_DeriveKey),
            C_SeedRandom: Some(C_SeedRandom),
            C_GenerateRandom: Some(C_GenerateRandom),
            C_GetFunctionStatus: Some(C_GetFunctionStatus),
            C_CancelFunction: Some(C_CancelFunction),
            C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
            $($extra)*
        }
    };
}

/// The PKCS#11 2.40 function list.
pub static FUNCTION_LIST: CK_FUNCTION_LIST = function_list!(
    CK_FUNCTION_LIST,
    2,
    40,
    C_GetInfo,
    [
        C_EncryptInit,
        C_DecryptInit,
        C_DigestInit,
        C_SignInit,
        C_SignRecoverInit,
        C_VerifyInit,
        C_VerifyRecoverInit,
    ]
    {}
);

/// The PKCS#11 3.0 function list.
pub static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = function_list!(
    CK_FUNCTION_LIST_3_0,
    3,
    0,
    C_GetInfo_3_0,
    [
        C_EncryptInit_3_0,
        C_DecryptInit_3_0,
        C_DigestInit_3_0,
        C_SignInit_3_0,
        C_SignRecoverInit_3_0,
        C_VerifyInit_3_0,
        C_VerifyRecoverInit_3_0,
    ]
    {
        C_GetInterfaceList: Some(C_GetInterfaceList),
        C_GetInterface: Some(C_GetInterface),
        C_LoginUser: Some(C_LoginUser),
        C_SessionCancel: Some(C_SessionCancel),
        C_MessageEncryptInit: Some(C_MessageEncryptInit),
        C_EncryptMessage: Some(C_EncryptMessage),
        C_EncryptMessageBegin: Some(C_EncryptMessageBegin),
        C_EncryptMessageNext: Some(C_EncryptMessageNext),
        C_MessageEncryptFinal: Some(C_MessageEncryptFinal),
        C_MessageDecryptInit: Some(C_MessageDecryptInit),
        C_DecryptMessage: Some(C_DecryptMessage),
        C_DecryptMessageBegin: Some(C_DecryptMessageBegin),
        C_DecryptMessageNext: Some(C_DecryptMessageNext),
        C_MessageDecryptFinal: Some(C_MessageDecryptFinal),
        C_MessageSignInit: Some(C_MessageSignInit),
        C_SignMessage: Some(C_SignMessage),
        C_SignMessageBegin: Some(C_SignMessageBegin),
        C_SignMessageNext: Some(C_SignMessageNext),
        C_MessageSignFinal: Some(C_MessageSignFinal),
        C_MessageVerifyInit: Some(C_MessageVerifyInit),
        C_VerifyMessage: Some(C_VerifyMessage),
        C_VerifyMessageBegin: Some(C_VerifyMessageBegin),
        C_VerifyMessageNext: Some(C_VerifyMessageNext),
        C_MessageVerifyFinal: Some(C_MessageVerifyFinal),
    }
);

/// Builds the interface array: the first entry is the default.
macro_rules! interface_array {
    () => {
        [
            CK_INTERFACE {
                pInterfaceName: PKCS11_NAME.as_ptr() as *mut CK_UTF8CHAR,
                pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
                flags: 0,
            },
            CK_INTERFACE {
                pInterfaceName: PKCS11_NAME.as_ptr() as *mut CK_UTF8CHAR,
                pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut c_void,
                flags: 0,
            },
            CK_INTERFACE {
                pInterfaceName: ext::INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
                pFunctionList: &ext::FUNCTION_LIST as *const ext::P11WLD_FUNCTION_LIST
                    as *mut c_void,
                flags: 0,
            },
        ]
    };
}

const INTERFACE_COUNT: usize = 3;

/// The interfaces `C_GetInterfaceList` returns and `C_GetInterface`
/// matches against.
struct Interfaces([CK_INTERFACE; INTERFACE_COUNT]);

// SAFETY: the interfaces point to static, immutable data only.
unsafe impl Sync for Interfaces {}

/// The copies of the interfaces that `C_GetInterface` hands out pointers
/// to, in writable memory.
///
/// Some callers write through the returned pointer: OpenSC's `pkcs11-spy`
/// 0.23 replaces `pFunctionList` with its own list, and gets SIGSEGV when
/// the interface is in read-only memory. Such a write changes what later
/// `C_GetInterface` calls in the process return, as with OpenSC's own
/// module, whose interface array is writable too. [`INTERFACES`] stays as
/// declared, so matching and `C_GetInterfaceList` never see the writes.
struct HandedOut(UnsafeCell<[CK_INTERFACE; INTERFACE_COUNT]>);

// SAFETY: the module never reads or writes the array through a reference:
// it only computes pointers into it, which callers may write through.
unsafe impl Sync for HandedOut {}

const PKCS11_NAME: &CStr = c"PKCS 11";

static INTERFACES: Interfaces = Interfaces(interface_array!());

static HANDED_OUT: HandedOut = HandedOut(UnsafeCell::new(interface_array!()));

/// Returns the version an interface's function list starts with; every
/// list of ours begins with a CK_VERSION.
fn interface_version(interface: &CK_INTERFACE) -> CK_VERSION {
    // SAFETY: every pFunctionList of INTERFACES points to a static that
    // starts with a CK_VERSION.
    unsafe { *(interface.pFunctionList as *const CK_VERSION) }
}

/// Sets `*ppFunctionList` to the PKCS#11 2.40 function list.
///
/// # Safety
/// `ppFunctionList` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(ppFunctionList: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard("C_GetFunctionList", || {
        check_out(ppFunctionList)?;
        // SAFETY: checked non-NULL. The list is static; applications only
        // read it, whatever the pointer type says.
        unsafe { *ppFunctionList = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut _ };
        Ok(())
    })
}

/// Lists the interfaces by the PKCS#11 two-call convention.
///
/// # Safety
/// `pulCount` is NULL or valid; `pInterfacesList` is NULL or points to
/// `*pulCount` writable CK_INTERFACE structures.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    pInterfacesList: *mut CK_INTERFACE,
    pulCount: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarded from the caller's contract.
    guard("C_GetInterfaceList", || unsafe {
        fill_list(&INTERFACES.0, pInterfacesList, pulCount)
    })
}

/// Sets `*ppInterface` to the interface with the requested name, version
/// and flags; a NULL name selects the default, PKCS#11 3.0. No match gives
/// CKR_ARGUMENTS_BAD and leaves `*ppInterface` unchanged.
///
/// # Safety
/// `pInterfaceName` is NULL or a NUL-terminated string; `pVersion` is NULL
/// or valid; `ppInterface` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    pInterfaceName: *mut CK_UTF8CHAR,
    pVersion: *mut CK_VERSION,
    ppInterface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_GetInterface", || {
        check_out(ppInterface)?;
        let name = if pInterfaceName.is_null() {
            None
        } else {
            // SAFETY: the caller passes a NUL-terminated string.
            Some(unsafe { CStr::from_ptr(pInterfaceName as *const std::ffi::c_char) })
        };
        let version = if pVersion.is_null() {
            None
        } else {
            // SAFETY: checked non-NULL; the caller passes a CK_VERSION.
            Some(unsafe { *pVersion })
        };
        let index = find_interface(name, version, flags).ok_or(Rv(CKR_ARGUMENTS_BAD))?;
        // SAFETY: checked non-NULL. `index` is within the static array, so
        // the pointer stays valid for the life of the program.
        unsafe { *ppInterface = HANDED_OUT.0.get().cast::<CK_INTERFACE>().add(index) };
        Ok(())
    })
}

/// Returns the index of the first interface that matches.
fn find_interface(
    name: Option<&CStr>,
    version: Option<CK_VERSION>,
    flags: CK_FLAGS,
) -> Option<usize> {
    INTERFACES.0.iter().position(|interface| {
        // SAFETY: every interface name is a static C string.
        let own = unsafe { CStr::from_ptr(interface.pInterfaceName as *const std::ffi::c_char) };
        let own_version = interface_version(interface);
        let name_ok = name.map_or(own == PKCS11_NAME, |n| n == own);
        let version_ok =
            version.is_none_or(|v| v.major == own_version.major && v.minor == own_version.minor);
        name_ok && version_ok && interface.flags & flags == flags
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_interface_is_3_0() {
        let found = find_interface(None, None, 0).unwrap();
        assert_eq!(interface_version(&INTERFACES.0[found]).major, 3);
    }

    #[test]
    fn fork_safe_flag_not_served() {
        assert!(find_interface(None, None, CKF_INTERFACE_FORK_SAFE).is_none());
    }

    #[test]
    fn version_2_40_found_by_name() {
        let found = find_interface(
            Some(PKCS11_NAME),
            Some(CK_VERSION {
                major: 2,
                minor: 40,
            }),
            0,
        );
        assert_eq!(interface_version(&INTERFACES.0[found.unwrap()]).minor, 40);
        let missing = find_interface(
            Some(PKCS11_NAME),
            Some(CK_VERSION { major: 3, minor: 1 }),
            0,
        );
        assert!(missing.is_none());
    }

    #[test]
    fn returned_interface_is_writable() {
        let mut interface: *mut CK_INTERFACE = std::ptr::null_mut();
        let rv = unsafe {
            C_GetInterface(
                PKCS11_NAME.as_ptr() as *mut CK_UTF8CHAR,
                std::ptr::null_mut(),
                &mut interface,
                0,
            )
        };
        assert_eq!(rv, CKR_OK);
        // A caller such as pkcs11-spy stores its own list here. Writing the
        // value back unchanged keeps other tests unaffected, and the write
        // would fault if the interface were in read-only memory.
        unsafe {
            let list = std::ptr::addr_of_mut!((*interface).pFunctionList);
            std::ptr::write_volatile(list, std::ptr::read_volatile(list));
        }
        assert_eq!(interface_version(unsafe { &*interface }).major, 3);
    }

    #[test]
    fn every_3_0_entry_filled() {
        let list = &FUNCTION_LIST_3_0;
        let words = std::mem::size_of::<CK_FUNCTION_LIST_3_0>() / std::mem::size_of::<usize>();
        // SAFETY: the list is a CK_VERSION (padded to a word) followed by
        // function pointers, each one word.
        let entries = unsafe {
            std::slice::from_raw_parts((list as *const CK_FUNCTION_LIST_3_0).cast::<usize>(), words)
        };
        assert!(entries[1..].iter().all(|&e| e != 0));
    }
}
