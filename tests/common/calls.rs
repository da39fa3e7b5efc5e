//! Every function of the PKCS#11 3.0 function list, called with one set of
//! arguments, for the rows of the bad-input table that expect one return
//! code from many functions (before `C_Initialize`, with a closed session).

use std::ptr;

use cryptoki_sys::*;

use super::raw::{bytes_attribute, mechanism, ExtFunctionList};

/// Arguments for [`session_calls`] and [`other_calls`].
#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub session: CK_SESSION_HANDLE,
    pub slot: CK_SLOT_ID,
    /// An object or key handle.
    pub object: CK_OBJECT_HANDLE,
    /// Whether every pointer argument is NULL; otherwise each points to a
    /// valid buffer of the length passed with it.
    pub null: bool,
}

/// Scratch buffers that the pointer arguments point into.
struct Buffers {
    bytes: [u8; 512],
    length: CK_ULONG,
    handle: CK_OBJECT_HANDLE,
    handle2: CK_OBJECT_HANDLE,
    label: [u8; 4],
    template: [CK_ATTRIBUTE; 1],
    mechanism: CK_MECHANISM,
    info: [u64; 64],
}

impl Buffers {
    fn new() -> Box<Buffers> {
        let mut buffers = Box::new(Buffers {
            bytes: [0; 512],
            length: 512,
            handle: 0,
            handle2: 0,
            label: *b"none",
            template: [CK_ATTRIBUTE::default()],
            mechanism: mechanism(CKM_SHA256),
            info: [0; 64],
        });
        let label = buffers.label.as_mut_ptr();
        buffers.template[0] = bytes_attribute(CKA_LABEL, unsafe {
            // SAFETY: the label lives in the same box as the template.
            std::slice::from_raw_parts_mut(label, 4)
        });
        buffers
    }
}

/// Calls every function of `list` that takes a session handle, with
/// `args.session`, and returns each function's name and return code.
///
/// The calls never start anything that outlives them when the session is
/// invalid or the module is not initialized, which is what the rows that
/// use this expect.
pub fn session_calls(list: &CK_FUNCTION_LIST_3_0, args: Args) -> Vec<(&'static str, CK_RV)> {
    let mut buffers = Buffers::new();
    let b = &mut *buffers;
    let h = args.session;
    let object = args.object;
    let null = args.null;
    let data: *mut u8 = if null {
        ptr::null_mut()
    } else {
        b.bytes.as_mut_ptr()
    };
    let data_len: CK_ULONG = 16;
    let length: *mut CK_ULONG = if null { ptr::null_mut() } else { &mut b.length };
    let handle: *mut CK_OBJECT_HANDLE = if null { ptr::null_mut() } else { &mut b.handle };
    let handle2: *mut CK_OBJECT_HANDLE = if null {
        ptr::null_mut()
    } else {
        &mut b.handle2
    };
    let template: *mut CK_ATTRIBUTE = if null {
        ptr::null_mut()
    } else {
        b.template.as_mut_ptr()
    };
    let mech: *mut CK_MECHANISM = if null {
        ptr::null_mut()
    } else {
        &mut b.mechanism
    };
    let info: *mut std::ffi::c_void = if null {
        ptr::null_mut()
    } else {
        b.info.as_mut_ptr().cast()
    };

    let mut results = Vec::new();
    macro_rules! call {
        ($name:ident ( $($arg:expr),* $(,)? )) => {{
            if !null {
                b.length = 512;
            }
            let function = list.$name.expect(concat!(stringify!($name), " is in the list"));
            // SAFETY: every pointer is NULL or points into `buffers` with
            // the length passed beside it.
            let rv = unsafe { function($($arg),*) };
            results.push((stringify!($name), rv));
        }};
    }

    call!(C_InitPIN(h, data, 6));
    call!(C_SetPIN(h, data, 6, data, 6));
    call!(C_GetSessionInfo(h, info.cast()));
    call!(C_GetOperationState(h, data, length));
    call!(C_SetOperationState(h, data, data_len, 0, 0));
    call!(C_Login(h, CKU_USER, data, 6));
    call!(C_Logout(h));
    call!(C_CreateObject(h, template, 1, handle));
    call!(C_CopyObject(h, object, template, 1, handle));
    call!(C_DestroyObject(h, object));
    call!(C_GetObjectSize(h, object, length));
    call!(C_GetAttributeValue(h, object, template, 1));
    call!(C_SetAttributeValue(h, object, template, 1));
    call!(C_FindObjectsInit(h, template, 1));
    call!(C_FindObjects(h, handle, 1, length));
    call!(C_FindObjectsFinal(h));
    call!(C_EncryptInit(h, mech, object));
    call!(C_Encrypt(h, data, data_len, data, length));
    call!(C_EncryptUpdate(h, data, data_len, data, length));
    call!(C_EncryptFinal(h, data, length));
    call!(C_DecryptInit(h, mech, object));
    call!(C_Decrypt(h, data, data_len, data, length));
    call!(C_DecryptUpdate(h, data, data_len, data, length));
    call!(C_DecryptFinal(h, data, length));
    call!(C_DigestInit(h, mech));
    call!(C_Digest(h, data, data_len, data, length));
    call!(C_DigestUpdate(h, data, data_len));
    call!(C_DigestKey(h, object));
    call!(C_DigestFinal(h, data, length));
    call!(C_SignInit(h, mech, object));
    call!(C_Sign(h, data, data_len, data, length));
    call!(C_SignUpdate(h, data, data_len));
    call!(C_SignFinal(h, data, length));
    call!(C_SignRecoverInit(h, mech, object));
    call!(C_SignRecover(h, data, data_len, data, length));
    call!(C_VerifyInit(h, mech, object));
    call!(C_Verify(h, data, data_len, data, data_len));
    call!(C_VerifyUpdate(h, data, data_len));
    call!(C_VerifyFinal(h, data, data_len));
    call!(C_VerifyRecoverInit(h, mech, object));
    call!(C_VerifyRecover(h, data, data_len, data, length));
    call!(C_DigestEncryptUpdate(h, data, data_len, data, length));
    call!(C_DecryptDigestUpdate(h, data, data_len, data, length));
    call!(C_SignEncryptUpdate(h, data, data_len, data, length));
    call!(C_DecryptVerifyUpdate(h, data, data_len, data, length));
    call!(C_GenerateKey(h, mech, template, 1, handle));
    call!(C_GenerateKeyPair(
        h, mech, template, 1, template, 1, handle, handle2
    ));
    call!(C_WrapKey(h, mech, object, object, data, length));
    call!(C_UnwrapKey(
        h, mech, object, data, data_len, template, 1, handle
    ));
    call!(C_DeriveKey(h, mech, object, template, 1, handle));
    call!(C_SeedRandom(h, data, data_len));
    call!(C_GenerateRandom(h, data, data_len));
    call!(C_GetFunctionStatus(h));
    call!(C_CancelFunction(h));
    call!(C_SessionCancel(h, CKF_SIGN | CKF_FIND_OBJECTS));
    results.extend(unsupported_3_0_calls(list, args));
    results
}

/// Names of the PKCS#11 3.0 functions that p11wld does not serve.
pub const UNSUPPORTED_3_0: [&str; 21] = [
    "C_LoginUser",
    "C_MessageEncryptInit",
    "C_EncryptMessage",
    "C_EncryptMessageBegin",
    "C_EncryptMessageNext",
    "C_MessageEncryptFinal",
    "C_MessageDecryptInit",
    "C_DecryptMessage",
    "C_DecryptMessageBegin",
    "C_DecryptMessageNext",
    "C_MessageDecryptFinal",
    "C_MessageSignInit",
    "C_SignMessage",
    "C_SignMessageBegin",
    "C_SignMessageNext",
    "C_MessageSignFinal",
    "C_MessageVerifyInit",
    "C_VerifyMessage",
    "C_VerifyMessageBegin",
    "C_VerifyMessageNext",
    "C_MessageVerifyFinal",
];

/// Calls the PKCS#11 3.0 functions that only the 3.0 list has.
pub fn unsupported_3_0_calls(
    list: &CK_FUNCTION_LIST_3_0,
    args: Args,
) -> Vec<(&'static str, CK_RV)> {
    let mut bytes = [0u8; 64];
    let mut length: CK_ULONG = 64;
    let mut mech = mechanism(CKM_AES_GCM);
    let h = args.session;
    let (data, len, mech): (*mut u8, *mut CK_ULONG, *mut CK_MECHANISM) = if args.null {
        (ptr::null_mut(), ptr::null_mut(), ptr::null_mut())
    } else {
        (bytes.as_mut_ptr(), &mut length, &mut mech)
    };
    let param: *mut std::ffi::c_void = data.cast();
    let mut results = Vec::new();
    macro_rules! call {
        ($name:ident ( $($arg:expr),* $(,)? )) => {{
            let function = list.$name.expect(concat!(stringify!($name), " is in the list"));
            // SAFETY: every pointer is NULL or points to a local buffer of
            // the length passed beside it.
            let rv = unsafe { function($($arg),*) };
            results.push((stringify!($name), rv));
        }};
    }
    call!(C_LoginUser(h, CKU_USER, data, 4, data, 4));
    call!(C_MessageEncryptInit(h, mech, args.object));
    call!(C_EncryptMessage(h, param, 8, data, 8, data, 8, data, len));
    call!(C_EncryptMessageBegin(h, param, 8, data, 8));
    call!(C_EncryptMessageNext(h, param, 8, data, 8, data, len, 0));
    call!(C_MessageEncryptFinal(h));
    call!(C_MessageDecryptInit(h, mech, args.object));
    call!(C_DecryptMessage(h, param, 8, data, 8, data, 8, data, len));
    call!(C_DecryptMessageBegin(h, param, 8, data, 8));
    call!(C_DecryptMessageNext(h, param, 8, data, 8, data, len, 0));
    call!(C_MessageDecryptFinal(h));
    call!(C_MessageSignInit(h, mech, args.object));
    call!(C_SignMessage(h, param, 8, data, 8, data, len));
    call!(C_SignMessageBegin(h, param, 8));
    call!(C_SignMessageNext(h, param, 8, data, 8, data, len));
    call!(C_MessageSignFinal(h));
    call!(C_MessageVerifyInit(h, mech, args.object));
    call!(C_VerifyMessage(h, param, 8, data, 8, data, 8));
    call!(C_VerifyMessageBegin(h, param, 8));
    call!(C_VerifyMessageNext(h, param, 8, data, 8, data, 8));
    call!(C_MessageVerifyFinal(h));
    results
}

/// Calls every function of `list` that takes a slot id rather than a
/// session, with `args.slot`. `C_WaitForSlotEvent` is called with
/// CKF_DONT_BLOCK, so it never waits.
pub fn slot_calls(list: &CK_FUNCTION_LIST_3_0, args: Args) -> Vec<(&'static str, CK_RV)> {
    let mut buffers = Buffers::new();
    let b = &mut *buffers;
    let slot = args.slot;
    let null = args.null;
    let length: *mut CK_ULONG = if null { ptr::null_mut() } else { &mut b.length };
    let info: *mut std::ffi::c_void = if null {
        ptr::null_mut()
    } else {
        b.info.as_mut_ptr().cast()
    };
    let data: *mut u8 = if null {
        ptr::null_mut()
    } else {
        b.bytes.as_mut_ptr()
    };
    let mut label = [b' '; 32];
    let label: *mut u8 = if null {
        ptr::null_mut()
    } else {
        label.as_mut_ptr()
    };
    let handle: *mut CK_SESSION_HANDLE = if null { ptr::null_mut() } else { &mut b.handle };

    let mut results = Vec::new();
    macro_rules! call {
        ($name:ident ( $($arg:expr),* $(,)? )) => {{
            if !null {
                b.length = 8;
            }
            let function = list.$name.expect(concat!(stringify!($name), " is in the list"));
            // SAFETY: every pointer is NULL or points into `buffers`, whose
            // list buffer has room for 8 entries.
            let rv = unsafe { function($($arg),*) };
            results.push((stringify!($name), rv));
        }};
    }
    call!(C_GetSlotInfo(slot, info.cast()));
    call!(C_GetTokenInfo(slot, info.cast()));
    call!(C_GetMechanismList(slot, info.cast(), length));
    call!(C_GetMechanismInfo(slot, CKM_SHA256, info.cast()));
    call!(C_InitToken(slot, data, 6, label));
    call!(C_OpenSession(
        slot,
        CKF_SERIAL_SESSION,
        ptr::null_mut(),
        None,
        handle
    ));
    call!(C_CloseAllSessions(slot));
    results
}

/// Calls the functions that take neither a session nor a slot id, and
/// the extension's lists. `C_Finalize` is left out: callers test it on
/// its own.
pub fn general_calls(
    list: &CK_FUNCTION_LIST_3_0,
    ext: &ExtFunctionList,
    null: bool,
) -> Vec<(&'static str, CK_RV)> {
    let mut info = [0u64; 64];
    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut count: CK_ULONG = 8;
    let mut slot: CK_SLOT_ID = 0;
    let (info, slots, count, slot) = if null {
        (
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    } else {
        (
            info.as_mut_ptr().cast::<std::ffi::c_void>(),
            slots.as_mut_ptr(),
            &mut count as *mut CK_ULONG,
            &mut slot as *mut CK_SLOT_ID,
        )
    };
    // SAFETY: every pointer is NULL or points to a local buffer; the
    // extension's lists get a NULL list, which asks for the count only.
    unsafe {
        vec![
            ("C_GetInfo", list.C_GetInfo.unwrap()(info.cast())),
            (
                "C_GetSlotList",
                list.C_GetSlotList.unwrap()(CK_TRUE, slots, count),
            ),
            (
                "C_WaitForSlotEvent",
                list.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, slot, ptr::null_mut()),
            ),
            (
                "ListPhysicalSlots",
                ext.ListPhysicalSlots.unwrap()(ptr::null_mut(), count),
            ),
            (
                "GetMemberStatus",
                ext.GetMemberStatus.unwrap()(ptr::null_mut(), count),
            ),
        ]
    }
}
