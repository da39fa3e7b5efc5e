//! The call table: every exported function and every function of the
//! PKCS#11 2.40 and 3.0 lists, called with bad input through a WLD slot of
//! three HSM processes. Each call must return the code PKCS#11 prescribes,
//! and none may crash, hang or reach a vendor with a pointer it could
//! misread.
//!
//! Where PKCS#11 allows several codes, the most specific one is asserted,
//! and the comment above each group states the rule. "PKCS#11" below means
//! the base specification, versions 2.40 and 3.0, which agree on every rule
//! used here unless a version is named.

mod common;

use std::ffi::c_void;
use std::mem::size_of;
use std::ptr::null_mut;

use common::calls::{self, Args, UNSUPPORTED_3_0};
use common::raw::{bool_attribute, bytes_attribute, mechanism, ulong_attribute, Raw};
use common::setups::DEFAULT_EXTRA;
use common::table::Table;
use common::{keys, ConfigFile, ScopedEnv, ThreeHsms, USER_PIN};
use cryptoki_sys::*;

/// Calls a function of the 3.0 list of `$raw`.
macro_rules! call {
    ($raw:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        // SAFETY: each test passes pointers that are NULL or valid for the
        // lengths beside them, unless the row is about a wrong length that
        // p11wld must reject before it reads anything.
        unsafe { ($raw.list3.$name.expect(stringify!($name)))($($arg),*) }
    };
}

const UNKNOWN_MECHANISM: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED | 0x7a11;
const HUGE: CK_ULONG = CK_ULONG::MAX;

/// A WLD slot of three HSM processes, p11wld initialized on it, and one
/// session on each member, the first logged in.
struct Wld {
    raw: Raw,
    slot: CK_SLOT_ID,
    /// One session per member, in the order they were opened.
    sessions: Vec<CK_SESSION_HANDLE>,
    rsa_private: CK_OBJECT_HANDLE,
    rsa_public: CK_OBJECT_HANDLE,
    aes: CK_OBJECT_HANDLE,
    _env: ScopedEnv,
    _config: ConfigFile,
    _hsms: ThreeHsms,
}

impl Wld {
    fn start() -> Wld {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(DEFAULT_EXTRA);
        let env = config.set_env();
        let raw = Raw::load();
        assert_eq!(raw.initialize(), CKR_OK, "C_Initialize");
        let slots = raw.slots();
        assert_eq!(slots.len(), 1, "one WLD slot");
        let slot = slots[0];

        // The least-sessions policy puts each new session on the member
        // with the fewest, so three sessions land on three members.
        let mut sessions = Vec::new();
        for _ in 0..3 {
            sessions.push(raw.open(slot, CKF_RW_SESSION));
        }
        assert_eq!(raw.open_sessions(), vec![1, 1, 1], "one session per member");
        assert_eq!(raw.login(sessions[0], USER_PIN), CKR_OK, "C_Login");

        let rsa_private = raw.find_one(sessions[0], CKO_PRIVATE_KEY, keys::RSA_LABEL);
        let rsa_public = raw.find_one(sessions[0], CKO_PUBLIC_KEY, keys::RSA_LABEL);
        let aes = raw.find_one(sessions[0], CKO_SECRET_KEY, keys::AES_LABEL);
        Wld {
            raw,
            slot,
            sessions,
            rsa_private,
            rsa_public,
            aes,
            _env: env,
            _config: config,
            _hsms: hsms,
        }
    }

    /// Creates a session object (a data object) through `session`.
    fn create_data_object(&self, session: CK_SESSION_HANDLE) -> CK_OBJECT_HANDLE {
        let mut class = CKO_DATA;
        let mut token = CK_FALSE;
        let mut label = *b"scratch";
        let mut template = [
            ulong_attribute(CKA_CLASS, &mut class),
            bool_attribute(CKA_TOKEN, &mut token),
            bytes_attribute(CKA_LABEL, &mut label),
        ];
        let mut object = 0;
        let rv = call!(
            self.raw,
            C_CreateObject(session, template.as_mut_ptr(), 3, &mut object)
        );
        assert_eq!(rv, CKR_OK, "C_CreateObject of a session data object");
        object
    }
}

/// The function tables and the extension's version are available before
/// `C_Initialize`; every other function returns
/// CKR_CRYPTOKI_NOT_INITIALIZED before `C_Initialize` and after
/// `C_Finalize`, whatever its arguments.
fn expect_not_initialized(table: &mut Table, raw: &Raw, case: &str) {
    for null in [false, true] {
        let pointers = if null {
            "NULL pointers"
        } else {
            "valid pointers"
        };
        let args = Args {
            session: 1,
            slot: 0,
            object: 1,
            null,
        };
        let expected = |_: &str| CKR_CRYPTOKI_NOT_INITIALIZED;
        table.record_all(
            &format!("{case}, {pointers}"),
            calls::session_calls(raw.list3, args),
            expected,
        );
        table.record_all(
            &format!("{case}, {pointers}"),
            calls::slot_calls(raw.list3, args),
            expected,
        );
        table.record_all(
            &format!("{case}, {pointers}"),
            calls::general_calls(raw.list3, raw.ext, null),
            expected,
        );
    }
    row!(
        table,
        format!("C_Finalize(NULL) {case}"),
        CKR_CRYPTOKI_NOT_INITIALIZED,
        raw.finalize()
    );

    let mut list: *mut CK_FUNCTION_LIST = null_mut();
    row!(table, format!("C_GetFunctionList {case}"), CKR_OK, unsafe {
        (raw.get_function_list)(&mut list)
    });
    let mut count: CK_ULONG = 0;
    row!(
        table,
        format!("C_GetInterfaceList(NULL, &n) {case}"),
        CKR_OK,
        unsafe { (raw.get_interface_list)(null_mut(), &mut count) }
    );
    let mut interface: *mut CK_INTERFACE = null_mut();
    row!(
        table,
        format!("C_GetInterface(NULL, NULL, &i, 0) {case}"),
        CKR_OK,
        unsafe { (raw.get_interface)(null_mut(), null_mut(), &mut interface, 0) }
    );
    let mut version = p11wld::ffi::ext::P11WLD_VERSION::default();
    row!(table, format!("extension GetInfo {case}"), CKR_OK, unsafe {
        raw.ext.GetInfo.unwrap()(&mut version)
    });
}

/// Returns the code PKCS#11 prescribes for a call on a session handle that
/// names no open session: CKR_SESSION_HANDLE_INVALID, except for the 3.0
/// functions p11wld does not implement, which return
/// CKR_FUNCTION_NOT_SUPPORTED whatever their arguments.
fn invalid_session_code(function: &str) -> CK_RV {
    if UNSUPPORTED_3_0.contains(&function) {
        CKR_FUNCTION_NOT_SUPPORTED
    } else {
        CKR_SESSION_HANDLE_INVALID
    }
}

isolated! {
    fn calls_before_initialize_and_after_finalize() {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        let raw = Raw::load();
        let mut table = Table::default();

        expect_not_initialized(&mut table, &raw, "before C_Initialize");

        assert_eq!(raw.initialize(), CKR_OK);
        let slot = raw.slots()[0];
        let session = raw.open(slot, 0);
        assert_eq!(raw.finalize(), CKR_OK);

        expect_not_initialized(&mut table, &raw, "after C_Finalize");
        // A session handle of the finalized instance names nothing.
        let args = Args { session, slot, object: 1, null: false };
        table.record_all(
            "with a session of the finalized instance",
            calls::session_calls(raw.list3, args),
            |_| CKR_CRYPTOKI_NOT_INITIALIZED,
        );

        // The module can be initialized again and serves the same slot.
        row!(table, "C_Initialize(NULL) after C_Finalize", CKR_OK, raw.initialize());
        row!(
            table,
            "C_CloseSession of the finalized instance's session",
            CKR_SESSION_HANDLE_INVALID,
            call!(raw, C_CloseSession(session))
        );
        table.assert_all();
    }

    fn initialize_arguments_checked() {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        let raw = Raw::load();
        let mut table = Table::default();

        unsafe extern "C" fn create(mutex: *mut *mut c_void) -> CK_RV {
            // SAFETY: the library passes a valid out pointer.
            unsafe { *mutex = 1 as *mut c_void };
            CKR_OK
        }
        unsafe extern "C" fn other(_mutex: *mut c_void) -> CK_RV {
            CKR_OK
        }
        let args = |flags, reserved: *mut c_void, all: bool| CK_C_INITIALIZE_ARGS {
            CreateMutex: Some(create),
            DestroyMutex: if all { Some(other) } else { None },
            LockMutex: Some(other),
            UnlockMutex: Some(other),
            flags,
            pReserved: reserved,
        };
        let no_callbacks = |flags, reserved: *mut c_void| CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags,
            pReserved: reserved,
        };
        let initialize = |mut args: CK_C_INITIALIZE_ARGS| {
            call!(raw, C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast()))
        };
        let mut reserved = 0u8;
        let reserved: *mut c_void = (&mut reserved as *mut u8).cast();

        // PKCS#11: pReserved must be NULL, else CKR_ARGUMENTS_BAD. The
        // vendors below accept a non-NULL one (p11-kit-client.so 0.24), so
        // p11wld must check it itself.
        row!(
            table,
            "C_Initialize with pReserved set",
            CKR_ARGUMENTS_BAD,
            initialize(no_callbacks(CKF_OS_LOCKING_OK, reserved))
        );
        // PKCS#11: the four mutex functions are all set or all NULL, else
        // CKR_ARGUMENTS_BAD.
        row!(
            table,
            "C_Initialize with three of the four mutex functions",
            CKR_ARGUMENTS_BAD,
            initialize(args(CKF_OS_LOCKING_OK, null_mut(), false))
        );
        // PKCS#11: mutex functions without CKF_OS_LOCKING_OK require the
        // library to lock with them; p11wld cannot, so CKR_CANT_LOCK.
        row!(
            table,
            "C_Initialize with mutex functions, without CKF_OS_LOCKING_OK",
            CKR_CANT_LOCK,
            initialize(args(0, null_mut(), true))
        );
        // A rejected C_Initialize leaves the module uninitialized.
        row!(
            table,
            "C_GetInfo after the rejected C_Initialize calls",
            CKR_CRYPTOKI_NOT_INITIALIZED,
            call!(raw, C_GetInfo(&mut CK_INFO::default()))
        );
        // Flags 0 without callbacks: the application does not use threads.
        // p11-kit-client.so rejects that with CKR_CANT_LOCK, so p11wld must
        // initialize its vendors with CKF_OS_LOCKING_OK itself.
        row!(
            table,
            "C_Initialize with flags 0 and no callbacks",
            CKR_OK,
            initialize(no_callbacks(0, null_mut()))
        );
        row!(
            table,
            "C_Initialize(NULL) when initialized",
            CKR_CRYPTOKI_ALREADY_INITIALIZED,
            raw.initialize()
        );
        // PKCS#11: C_Finalize's pReserved must be NULL.
        row!(
            table,
            "C_Finalize with pReserved set",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_Finalize(reserved))
        );
        row!(
            table,
            "C_GetSlotList after the rejected C_Finalize",
            CKR_OK,
            call!(raw, C_GetSlotList(CK_TRUE, null_mut(), &mut 0))
        );
        row!(table, "C_Finalize(NULL)", CKR_OK, raw.finalize());
        // Mutex functions with CKF_OS_LOCKING_OK: the library may use
        // either, and p11wld uses the operating system's.
        row!(
            table,
            "C_Initialize with mutex functions and CKF_OS_LOCKING_OK",
            CKR_OK,
            initialize(args(CKF_OS_LOCKING_OK, null_mut(), true))
        );
        row!(table, "C_Finalize(NULL) again", CKR_OK, raw.finalize());
        table.assert_all();
    }

    fn null_pointers_rejected() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let slot = wld.slot;
        let s = wld.sessions[0];
        let key = wld.rsa_private;
        let mut table = Table::default();
        let mut data = [0u8; 256];
        let d = data.as_mut_ptr();
        let mut length: CK_ULONG = 256;
        let mut handle: CK_OBJECT_HANDLE = 0;
        let mut aes_key = mechanism(CKM_AES_KEY_GEN);
        let mut rsa_pair = mechanism(CKM_RSA_PKCS_KEY_PAIR_GEN);
        let mut wrap = mechanism(CKM_AES_KEY_WRAP);
        let mut label = *b"label";
        let mut template = [bytes_attribute(CKA_LABEL, &mut label)];
        let t = template.as_mut_ptr();
        let mut pin = USER_PIN.as_bytes().to_vec();
        let p = pin.as_mut_ptr();
        let pin_len = pin.len() as CK_ULONG;

        // PKCS#11 section "Conventions for functions returning output in a
        // variable-length buffer" and each function's own text: a NULL
        // pointer where the function must read or write gives
        // CKR_ARGUMENTS_BAD. p11wld checks before it reaches a vendor, so
        // none of these calls reaches one.
        row!(table, "C_GetInfo(NULL)", CKR_ARGUMENTS_BAD, call!(raw, C_GetInfo(null_mut())));
        row!(
            table,
            "C_GetSlotList(TRUE, NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetSlotList(CK_TRUE, null_mut(), null_mut()))
        );
        let mut slots = [0 as CK_SLOT_ID; 4];
        row!(
            table,
            "C_GetSlotList(TRUE, list, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), null_mut()))
        );
        row!(
            table,
            "C_GetSlotInfo(slot, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetSlotInfo(slot, null_mut()))
        );
        row!(
            table,
            "C_GetTokenInfo(slot, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetTokenInfo(slot, null_mut()))
        );
        row!(
            table,
            "C_GetMechanismList(slot, NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetMechanismList(slot, null_mut(), null_mut()))
        );
        row!(
            table,
            "C_GetMechanismInfo(slot, CKM_SHA256, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetMechanismInfo(slot, CKM_SHA256, null_mut()))
        );
        row!(
            table,
            "C_InitToken(slot, NULL PIN with length, label)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_InitToken(slot, null_mut(), 6, [b' '; 32].as_mut_ptr()))
        );
        row!(
            table,
            "C_InitToken(slot, PIN, NULL label)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_InitToken(slot, p, pin_len, null_mut()))
        );
        row!(
            table,
            "C_OpenSession(slot, flags, NULL, NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, null_mut()))
        );
        row!(
            table,
            "C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_WaitForSlotEvent(CKF_DONT_BLOCK, null_mut(), null_mut()))
        );
        row!(
            table,
            "C_GetFunctionList(NULL)",
            CKR_ARGUMENTS_BAD,
            unsafe { (raw.get_function_list)(null_mut()) }
        );
        row!(
            table,
            "C_GetInterfaceList(NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            unsafe { (raw.get_interface_list)(null_mut(), null_mut()) }
        );
        row!(
            table,
            "C_GetInterface(NULL, NULL, NULL, 0)",
            CKR_ARGUMENTS_BAD,
            unsafe { (raw.get_interface)(null_mut(), null_mut(), null_mut(), 0) }
        );
        row!(
            table,
            "C_GetSessionInfo(s, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetSessionInfo(s, null_mut()))
        );
        row!(
            table,
            "C_GetOperationState(s, NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetOperationState(s, null_mut(), null_mut()))
        );
        row!(
            table,
            "C_SetOperationState(s, NULL, 16, 0, 0)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_SetOperationState(s, null_mut(), 16, 0, 0))
        );
        row!(
            table,
            "C_InitPIN(s, NULL, 6)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_InitPIN(s, null_mut(), 6))
        );
        row!(
            table,
            "C_SetPIN(s, NULL, 6, new, 6)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_SetPIN(s, null_mut(), 6, p, pin_len))
        );
        row!(
            table,
            "C_SetPIN(s, old, 6, NULL, 6)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_SetPIN(s, p, pin_len, null_mut(), 6))
        );
        row!(
            table,
            "C_Login(s, CKU_USER, NULL, 6)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_Login(wld.sessions[1], CKU_USER, null_mut(), 6))
        );
        row!(
            table,
            "C_CreateObject(s, NULL, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_CreateObject(s, null_mut(), 1, &mut handle))
        );
        row!(
            table,
            "C_CreateObject(s, template, 1, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_CreateObject(s, t, 1, null_mut()))
        );
        row!(
            table,
            "C_CopyObject(s, key, NULL, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_CopyObject(s, key, null_mut(), 1, &mut handle))
        );
        row!(
            table,
            "C_CopyObject(s, key, template, 1, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_CopyObject(s, key, t, 1, null_mut()))
        );
        row!(
            table,
            "C_GetObjectSize(s, key, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetObjectSize(s, key, null_mut()))
        );
        row!(
            table,
            "C_GetAttributeValue(s, key, NULL, 1)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GetAttributeValue(s, key, null_mut(), 1))
        );
        row!(
            table,
            "C_SetAttributeValue(s, key, NULL, 1)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_SetAttributeValue(s, key, null_mut(), 1))
        );
        row!(
            table,
            "C_FindObjectsInit(s, NULL, 1)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_FindObjectsInit(s, null_mut(), 1))
        );
        assert_eq!(call!(raw, C_FindObjectsInit(s, null_mut(), 0)), CKR_OK);
        row!(
            table,
            "C_FindObjects(s, NULL, 1, &n)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_FindObjects(s, null_mut(), 1, &mut length))
        );
        row!(
            table,
            "C_FindObjects(s, list, 1, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_FindObjects(s, &mut handle, 1, null_mut()))
        );
        assert_eq!(call!(raw, C_FindObjectsFinal(s)), CKR_OK);

        // Init functions: a NULL mechanism. In the PKCS#11 3.0 list it
        // cancels the active operation of its kind, and with none active
        // there is nothing to cancel: CKR_OK. The 2.40 list keeps the 2.40
        // rule, CKR_ARGUMENTS_BAD.
        macro_rules! null_mechanism {
            ($list:expr, $version:literal, $expected:expr) => {
                // SAFETY: the functions get a NULL mechanism, which they
                // check before anything else.
                let rows = unsafe {
                    [
                        ("C_EncryptInit", $list.C_EncryptInit.unwrap()(s, null_mut(), wld.aes)),
                        ("C_DecryptInit", $list.C_DecryptInit.unwrap()(s, null_mut(), wld.aes)),
                        ("C_DigestInit", $list.C_DigestInit.unwrap()(s, null_mut())),
                        ("C_SignInit", $list.C_SignInit.unwrap()(s, null_mut(), key)),
                        ("C_VerifyInit", $list.C_VerifyInit.unwrap()(s, null_mut(), wld.rsa_public)),
                        ("C_SignRecoverInit", $list.C_SignRecoverInit.unwrap()(s, null_mut(), key)),
                        (
                            "C_VerifyRecoverInit",
                            $list.C_VerifyRecoverInit.unwrap()(s, null_mut(), wld.rsa_public),
                        ),
                    ]
                };
                for (name, rv) in rows {
                    let case = format!("{name}(s, NULL, key) of the {} list, none active", $version);
                    table.record(case, $expected, rv);
                }
            };
        }
        null_mechanism!(raw.list3, "3.0", CKR_OK);
        null_mechanism!(raw.list, "2.40", CKR_ARGUMENTS_BAD);

        // Single-part and update functions: NULL input with a length, and
        // a NULL output length.
        macro_rules! in_out {
            ($name:ident) => {
                row!(
                    table,
                    concat!(stringify!($name), "(s, NULL, 16, out, &len)"),
                    CKR_ARGUMENTS_BAD,
                    call!(raw, $name(s, null_mut(), 16, d, &mut length))
                );
                row!(
                    table,
                    concat!(stringify!($name), "(s, in, 16, out, NULL)"),
                    CKR_ARGUMENTS_BAD,
                    call!(raw, $name(s, d, 16, d, null_mut()))
                );
            };
        }
        in_out!(C_Encrypt);
        in_out!(C_EncryptUpdate);
        in_out!(C_Decrypt);
        in_out!(C_DecryptUpdate);
        in_out!(C_Digest);
        in_out!(C_Sign);
        in_out!(C_SignRecover);
        in_out!(C_VerifyRecover);
        in_out!(C_DigestEncryptUpdate);
        in_out!(C_DecryptDigestUpdate);
        in_out!(C_SignEncryptUpdate);
        in_out!(C_DecryptVerifyUpdate);
        macro_rules! update {
            ($name:ident) => {
                row!(
                    table,
                    concat!(stringify!($name), "(s, NULL, 16)"),
                    CKR_ARGUMENTS_BAD,
                    call!(raw, $name(s, null_mut(), 16))
                );
            };
        }
        update!(C_DigestUpdate);
        update!(C_SignUpdate);
        update!(C_VerifyUpdate);
        update!(C_SeedRandom);
        update!(C_GenerateRandom);
        update!(C_VerifyFinal);
        macro_rules! final_out {
            ($name:ident) => {
                row!(
                    table,
                    concat!(stringify!($name), "(s, out, NULL)"),
                    CKR_ARGUMENTS_BAD,
                    call!(raw, $name(s, d, null_mut()))
                );
            };
        }
        final_out!(C_EncryptFinal);
        final_out!(C_DecryptFinal);
        final_out!(C_DigestFinal);
        final_out!(C_SignFinal);
        row!(
            table,
            "C_Verify(s, NULL, 16, sig, 16)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_Verify(s, null_mut(), 16, d, 16))
        );
        row!(
            table,
            "C_Verify(s, data, 16, NULL, 16)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_Verify(s, d, 16, null_mut(), 16))
        );

        // Key management.
        row!(
            table,
            "C_GenerateKey(s, NULL, template, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKey(s, null_mut(), t, 1, &mut handle))
        );
        row!(
            table,
            "C_GenerateKey(s, mech, NULL, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKey(s, &mut aes_key, null_mut(), 1, &mut handle))
        );
        row!(
            table,
            "C_GenerateKey(s, mech, template, 1, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKey(s, &mut aes_key, t, 1, null_mut()))
        );
        let mut public: CK_OBJECT_HANDLE = 0;
        let mut private: CK_OBJECT_HANDLE = 0;
        row!(
            table,
            "C_GenerateKeyPair(s, NULL, ...)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKeyPair(s, null_mut(), t, 1, t, 1, &mut public, &mut private))
        );
        row!(
            table,
            "C_GenerateKeyPair(s, mech, NULL public template, 1, ...)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKeyPair(s, &mut rsa_pair, null_mut(), 1, t, 1, &mut public, &mut private))
        );
        row!(
            table,
            "C_GenerateKeyPair(s, mech, ..., NULL private template, 1, ...)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKeyPair(s, &mut rsa_pair, t, 1, null_mut(), 1, &mut public, &mut private))
        );
        row!(
            table,
            "C_GenerateKeyPair(s, mech, ..., NULL public handle, &private)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKeyPair(s, &mut rsa_pair, t, 1, t, 1, null_mut(), &mut private))
        );
        row!(
            table,
            "C_GenerateKeyPair(s, mech, ..., &public, NULL private handle)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateKeyPair(s, &mut rsa_pair, t, 1, t, 1, &mut public, null_mut()))
        );
        row!(
            table,
            "C_WrapKey(s, NULL, aes, aes, out, &len)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_WrapKey(s, null_mut(), wld.aes, wld.aes, d, &mut length))
        );
        row!(
            table,
            "C_WrapKey(s, mech, aes, aes, out, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_WrapKey(s, &mut wrap, wld.aes, wld.aes, d, null_mut()))
        );
        row!(
            table,
            "C_UnwrapKey(s, NULL, aes, wrapped, 40, template, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_UnwrapKey(s, null_mut(), wld.aes, d, 40, t, 1, &mut handle))
        );
        row!(
            table,
            "C_UnwrapKey(s, mech, aes, NULL, 40, template, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_UnwrapKey(s, &mut wrap, wld.aes, null_mut(), 40, t, 1, &mut handle))
        );
        row!(
            table,
            "C_UnwrapKey(s, mech, aes, wrapped, 40, NULL, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_UnwrapKey(s, &mut wrap, wld.aes, d, 40, null_mut(), 1, &mut handle))
        );
        row!(
            table,
            "C_UnwrapKey(s, mech, aes, wrapped, 40, template, 1, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_UnwrapKey(s, &mut wrap, wld.aes, d, 40, t, 1, null_mut()))
        );
        row!(
            table,
            "C_DeriveKey(s, NULL, aes, template, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_DeriveKey(s, null_mut(), wld.aes, t, 1, &mut handle))
        );
        let mut derive = mechanism(CKM_SHA256_KEY_DERIVATION);
        row!(
            table,
            "C_DeriveKey(s, mech, aes, NULL, 1, &h)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_DeriveKey(s, &mut derive, wld.aes, null_mut(), 1, &mut handle))
        );
        row!(
            table,
            "C_DeriveKey(s, mech, aes, template, 1, NULL)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_DeriveKey(s, &mut derive, wld.aes, t, 1, null_mut()))
        );

        // The extension follows the same rules.
        row!(
            table,
            "P11WLD_GetFunctionList(NULL)",
            CKR_ARGUMENTS_BAD,
            unsafe { (raw.get_ext_function_list)(null_mut()) }
        );
        row!(
            table,
            "extension GetInfo(NULL)",
            CKR_ARGUMENTS_BAD,
            unsafe { raw.ext.GetInfo.unwrap()(null_mut()) }
        );
        row!(
            table,
            "extension ListPhysicalSlots(NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            unsafe { raw.ext.ListPhysicalSlots.unwrap()(null_mut(), null_mut()) }
        );
        row!(
            table,
            "extension GetMemberStatus(NULL, NULL)",
            CKR_ARGUMENTS_BAD,
            unsafe { raw.ext.GetMemberStatus.unwrap()(null_mut(), null_mut()) }
        );

        // The session still works after all of that: nothing above left
        // an operation active or a member marked down.
        let mut digest_mechanism = mechanism(CKM_SHA256);
        assert_eq!(call!(raw, C_DigestInit(s, &mut digest_mechanism)), CKR_OK);
        let mut out = [0u8; 32];
        let mut out_len: CK_ULONG = 32;
        assert_eq!(call!(raw, C_Digest(s, d, 16, out.as_mut_ptr(), &mut out_len)), CKR_OK);
        assert_eq!(out_len, 32);
        assert_eq!(wld.raw.member_status().iter().map(|m| m.state).collect::<Vec<_>>(), vec![0, 0, 0]);
        table.assert_all();
    }

    fn invalid_and_closed_sessions_rejected() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let mut table = Table::default();
        let closed = raw.open(wld.slot, 0);
        assert_eq!(call!(raw, C_CloseSession(closed)), CKR_OK);

        // PKCS#11: a handle that names no open session gives
        // CKR_SESSION_HANDLE_INVALID, also one that was closed. Handles 0
        // (CK_INVALID_HANDLE) and all bits set must never be valid.
        for (case, session) in [
            ("session 0", 0),
            ("session 0xdeadbeef", 0xdead_beef),
            ("session CK_ULONG::MAX", CK_ULONG::MAX),
            ("closed session", closed),
        ] {
            for null in [false, true] {
                let args = Args { session, slot: wld.slot, object: wld.rsa_private, null };
                let case = format!("on {case}, {}", if null { "NULL pointers" } else { "valid pointers" });
                // With NULL pointers, a function may check its pointers
                // first: both codes are correct then.
                let results = calls::session_calls(raw.list3, args);
                for (function, rv) in results {
                    let expected = invalid_session_code(function);
                    let actual = if null && rv == CKR_ARGUMENTS_BAD { expected } else { rv };
                    table.record(format!("{function} {case}"), expected, actual);
                }
            }
            row!(
                table,
                format!("C_CloseSession on {case}"),
                CKR_SESSION_HANDLE_INVALID,
                call!(raw, C_CloseSession(session))
            );
        }
        // The open sessions are untouched.
        assert_eq!(raw.open_sessions(), vec![1, 1, 1]);
        table.assert_all();
    }

    fn unknown_slots_rejected() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let mut table = Table::default();
        // PKCS#11: a slot id the module did not list gives
        // CKR_SLOT_ID_INVALID.
        for slot in [wld.slot + 1, 0xdead_beef, CK_ULONG::MAX] {
            let args = Args { session: 0, slot, object: 0, null: false };
            table.record_all(
                &format!("on slot {slot:#x}"),
                calls::slot_calls(raw.list3, args),
                |_| CKR_SLOT_ID_INVALID,
            );
        }
        assert_eq!(raw.open_sessions(), vec![1, 1, 1]);
        table.assert_all();
    }

    fn unknown_mechanisms_and_parameters_rejected() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let s = wld.sessions[0];
        let mut table = Table::default();
        let mut unknown = mechanism(UNKNOWN_MECHANISM);
        let m: *mut CK_MECHANISM = &mut unknown;
        let mut handle = 0;
        let mut public = 0;
        let mut private = 0;
        let mut out = [0u8; 256];
        let mut out_len: CK_ULONG = 256;

        // PKCS#11: a mechanism the token does not support gives
        // CKR_MECHANISM_INVALID, for every function that takes one.
        row!(
            table,
            "C_GetMechanismInfo(slot, unknown)",
            CKR_MECHANISM_INVALID,
            call!(raw, C_GetMechanismInfo(wld.slot, UNKNOWN_MECHANISM, &mut CK_MECHANISM_INFO::default()))
        );
        for (name, rv) in [
            ("C_EncryptInit", call!(raw, C_EncryptInit(s, m, wld.aes))),
            ("C_DecryptInit", call!(raw, C_DecryptInit(s, m, wld.aes))),
            ("C_DigestInit", call!(raw, C_DigestInit(s, m))),
            ("C_SignInit", call!(raw, C_SignInit(s, m, wld.rsa_private))),
            ("C_VerifyInit", call!(raw, C_VerifyInit(s, m, wld.rsa_public))),
            ("C_SignRecoverInit", call!(raw, C_SignRecoverInit(s, m, wld.rsa_private))),
            ("C_VerifyRecoverInit", call!(raw, C_VerifyRecoverInit(s, m, wld.rsa_public))),
            ("C_GenerateKey", call!(raw, C_GenerateKey(s, m, null_mut(), 0, &mut handle))),
            (
                "C_GenerateKeyPair",
                call!(raw, C_GenerateKeyPair(s, m, null_mut(), 0, null_mut(), 0, &mut public, &mut private)),
            ),
            (
                "C_WrapKey",
                call!(raw, C_WrapKey(s, m, wld.aes, wld.aes, out.as_mut_ptr(), &mut out_len)),
            ),
            (
                "C_UnwrapKey",
                call!(raw, C_UnwrapKey(s, m, wld.aes, out.as_mut_ptr(), 40, null_mut(), 0, &mut handle)),
            ),
            ("C_DeriveKey", call!(raw, C_DeriveKey(s, m, wld.aes, null_mut(), 0, &mut handle))),
        ] {
            table.record(format!("{name} with an unknown mechanism"), CKR_MECHANISM_INVALID, rv);
        }

        // PKCS#11: a parameter that does not fit the mechanism gives
        // CKR_MECHANISM_PARAM_INVALID. p11wld checks the parameters whose
        // layout it knows before a vendor reads them.
        let mut short = [0u8; 5];
        let mut pss = CK_MECHANISM {
            mechanism: CKM_SHA256_RSA_PKCS_PSS,
            pParameter: short.as_mut_ptr().cast(),
            ulParameterLen: 5,
        };
        row!(
            table,
            "C_SignInit with a 5-byte CK_RSA_PKCS_PSS_PARAMS",
            CKR_MECHANISM_PARAM_INVALID,
            call!(raw, C_SignInit(s, &mut pss, wld.rsa_private))
        );
        let mut null_parameter = CK_MECHANISM {
            mechanism: CKM_AES_CBC_PAD,
            pParameter: null_mut(),
            ulParameterLen: 16,
        };
        row!(
            table,
            "C_EncryptInit with a NULL parameter of length 16",
            CKR_MECHANISM_PARAM_INVALID,
            call!(raw, C_EncryptInit(s, &mut null_parameter, wld.aes))
        );
        let mut gcm = CK_GCM_PARAMS {
            pIv: null_mut(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let mut gcm_mechanism = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut gcm as *mut CK_GCM_PARAMS).cast(),
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        row!(
            table,
            "C_EncryptInit with CK_GCM_PARAMS whose pIv is NULL with ulIvLen 12",
            CKR_MECHANISM_PARAM_INVALID,
            call!(raw, C_EncryptInit(s, &mut gcm_mechanism, wld.aes))
        );
        let mut huge = CK_MECHANISM {
            mechanism: CKM_AES_CBC_PAD,
            pParameter: short.as_mut_ptr().cast(),
            ulParameterLen: HUGE,
        };
        row!(
            table,
            "C_EncryptInit with ulParameterLen CK_ULONG::MAX",
            CKR_MECHANISM_PARAM_INVALID,
            call!(raw, C_EncryptInit(s, &mut huge, wld.aes))
        );
        let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: null_mut(),
            ulSourceDataLen: 8,
        };
        let mut oaep_mechanism = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS_OAEP,
            pParameter: (&mut oaep as *mut CK_RSA_PKCS_OAEP_PARAMS).cast(),
            ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
        };
        row!(
            table,
            "C_EncryptInit with CK_RSA_PKCS_OAEP_PARAMS whose pSourceData is NULL with length 8",
            CKR_MECHANISM_PARAM_INVALID,
            call!(raw, C_EncryptInit(s, &mut oaep_mechanism, wld.rsa_public))
        );
        let mut derive_data = CK_KEY_DERIVATION_STRING_DATA { pData: null_mut(), ulLen: 16 };
        let mut derive = CK_MECHANISM {
            mechanism: CKM_AES_ECB_ENCRYPT_DATA,
            pParameter: (&mut derive_data as *mut CK_KEY_DERIVATION_STRING_DATA).cast(),
            ulParameterLen: size_of::<CK_KEY_DERIVATION_STRING_DATA>() as CK_ULONG,
        };
        row!(
            table,
            "C_DeriveKey with CK_KEY_DERIVATION_STRING_DATA whose pData is NULL with length 16",
            CKR_MECHANISM_PARAM_INVALID,
            call!(raw, C_DeriveKey(s, &mut derive, wld.aes, null_mut(), 0, &mut handle))
        );

        // Nothing above started an operation.
        let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
        assert_eq!(call!(raw, C_SignInit(s, &mut sign, wld.rsa_private)), CKR_OK);
        let mut data = *b"data";
        assert_eq!(
            call!(raw, C_Sign(s, data.as_mut_ptr(), 4, out.as_mut_ptr(), &mut out_len)),
            CKR_OK
        );
        table.assert_all();
    }

    fn malformed_templates_rejected() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let s = wld.sessions[0];
        let mut table = Table::default();
        let mut handle = 0;

        let mut class = CKO_DATA;
        let mut token = CK_FALSE;
        let mut label = *b"label";
        let mut other_label = *b"other";
        let mut short_class = [0u8; 4];
        let mut wide_bool = [0u8; 8];
        let mut cases: Vec<(&str, Vec<CK_ATTRIBUTE>, CK_RV)> = Vec::new();
        let base = |class: &mut CK_ULONG, token: &mut CK_BBOOL| {
            vec![ulong_attribute(CKA_CLASS, class), bool_attribute(CKA_TOKEN, token)]
        };

        // PKCS#11 section "Creating objects": an invalid value for a valid
        // attribute gives CKR_ATTRIBUTE_VALUE_INVALID. A NULL value with a
        // length, a CK_ULONG attribute of 4 bytes, a CK_BBOOL of 8 bytes,
        // or a length of CK_UNAVAILABLE_INFORMATION are such values, and
        // p11wld rejects them before a vendor reads past the buffer.
        let mut t = base(&mut class, &mut token);
        t.push(CK_ATTRIBUTE { type_: CKA_LABEL, pValue: null_mut(), ulValueLen: 5 });
        cases.push(("NULL pValue with ulValueLen 5", t, CKR_ATTRIBUTE_VALUE_INVALID));
        let mut t = base(&mut class, &mut token);
        t[0] = bytes_attribute(CKA_CLASS, &mut short_class);
        cases.push(("CKA_CLASS of 4 bytes", t, CKR_ATTRIBUTE_VALUE_INVALID));
        let mut t = base(&mut class, &mut token);
        t[1] = bytes_attribute(CKA_TOKEN, &mut wide_bool);
        cases.push(("CKA_TOKEN of 8 bytes", t, CKR_ATTRIBUTE_VALUE_INVALID));
        let mut t = base(&mut class, &mut token);
        t.push(CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_mut_ptr().cast(),
            ulValueLen: CK_UNAVAILABLE_INFORMATION,
        });
        cases.push(("ulValueLen CK_UNAVAILABLE_INFORMATION", t, CKR_ATTRIBUTE_VALUE_INVALID));
        // PKCS#11 section "Creating objects": an attribute given twice with
        // different values is inconsistent: CKR_TEMPLATE_INCONSISTENT.
        let mut t = base(&mut class, &mut token);
        t.push(bytes_attribute(CKA_LABEL, &mut label));
        t.push(bytes_attribute(CKA_LABEL, &mut other_label));
        cases.push(("CKA_LABEL twice", t, CKR_TEMPLATE_INCONSISTENT));
        // Nested templates (CKA_WRAP_TEMPLATE) are arrays of CK_ATTRIBUTE:
        // a length that is not a multiple of the structure, or an inner
        // attribute with a NULL value and a length, is an invalid value.
        let mut inner = [CK_ATTRIBUTE { type_: CKA_LABEL, pValue: null_mut(), ulValueLen: 9 }];
        let mut t = base(&mut class, &mut token);
        t.push(CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: inner.as_mut_ptr().cast(),
            ulValueLen: size_of::<CK_ATTRIBUTE>() as CK_ULONG,
        });
        cases.push(("CKA_WRAP_TEMPLATE with a NULL inner value", t, CKR_ATTRIBUTE_VALUE_INVALID));
        let mut t = base(&mut class, &mut token);
        t.push(CK_ATTRIBUTE {
            type_: CKA_UNWRAP_TEMPLATE,
            pValue: inner.as_mut_ptr().cast(),
            ulValueLen: size_of::<CK_ATTRIBUTE>() as CK_ULONG - 1,
        });
        cases.push(("CKA_UNWRAP_TEMPLATE of a partial structure", t, CKR_ATTRIBUTE_VALUE_INVALID));
        // Nesting deeper than four levels is rejected rather than followed.
        let mut levels: Vec<Box<[CK_ATTRIBUTE; 1]>> = Vec::new();
        let mut innermost = Box::new([bytes_attribute(CKA_LABEL, &mut label)]);
        let mut pointer: *mut CK_ATTRIBUTE = innermost.as_mut_ptr();
        for _ in 0..6 {
            let mut level = Box::new([CK_ATTRIBUTE {
                type_: CKA_DERIVE_TEMPLATE,
                pValue: pointer.cast(),
                ulValueLen: size_of::<CK_ATTRIBUTE>() as CK_ULONG,
            }]);
            pointer = level.as_mut_ptr();
            levels.push(level);
        }
        let mut t = base(&mut class, &mut token);
        t.push(levels.last().unwrap()[0]);
        cases.push(("CKA_DERIVE_TEMPLATE nested six deep", t, CKR_ATTRIBUTE_VALUE_INVALID));

        for (case, mut template, expected) in cases {
            let count = template.len() as CK_ULONG;
            let t = template.as_mut_ptr();
            row!(
                table,
                format!("C_CreateObject with {case}"),
                expected,
                call!(raw, C_CreateObject(s, t, count, &mut handle))
            );
            row!(
                table,
                format!("C_CopyObject with {case}"),
                expected,
                call!(raw, C_CopyObject(s, wld.rsa_public, t, count, &mut handle))
            );
            row!(
                table,
                format!("C_SetAttributeValue with {case}"),
                expected,
                call!(raw, C_SetAttributeValue(s, wld.rsa_public, t, count))
            );
            let mut generate = mechanism(CKM_AES_KEY_GEN);
            row!(
                table,
                format!("C_GenerateKey with {case}"),
                expected,
                call!(raw, C_GenerateKey(s, &mut generate, t, count, &mut handle))
            );
            let mut pair = mechanism(CKM_EC_KEY_PAIR_GEN);
            let (mut public, mut private) = (0, 0);
            row!(
                table,
                format!("C_GenerateKeyPair with {case} as the private template"),
                expected,
                call!(raw, C_GenerateKeyPair(s, &mut pair, null_mut(), 0, t, count, &mut public, &mut private))
            );
            let mut unwrap = mechanism(CKM_AES_KEY_WRAP);
            let mut wrapped = [0u8; 40];
            row!(
                table,
                format!("C_UnwrapKey with {case}"),
                expected,
                call!(raw, C_UnwrapKey(s, &mut unwrap, wld.aes, wrapped.as_mut_ptr(), 40, t, count, &mut handle))
            );
            let mut derive = mechanism(CKM_SHA256_KEY_DERIVATION);
            row!(
                table,
                format!("C_DeriveKey with {case}"),
                expected,
                call!(raw, C_DeriveKey(s, &mut derive, wld.aes, t, count, &mut handle))
            );
            // A search template may repeat an attribute (the token decides
            // what matches), but its values must be readable.
            let find_expected =
                if expected == CKR_TEMPLATE_INCONSISTENT { CKR_OK } else { expected };
            let rv = call!(raw, C_FindObjectsInit(s, t, count));
            table.record(format!("C_FindObjectsInit with {case}"), find_expected, rv);
            if rv == CKR_OK {
                assert_eq!(call!(raw, C_FindObjectsFinal(s)), CKR_OK);
            }
        }

        // PKCS#11: a template count with a NULL template is a bad argument,
        // and p11wld caps the count at 4096 attributes.
        row!(
            table,
            "C_CreateObject with ulCount CK_ULONG::MAX",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_CreateObject(s, [ulong_attribute(CKA_CLASS, &mut class)].as_mut_ptr(), HUGE, &mut handle))
        );

        // The session still creates a valid object.
        let object = wld.create_data_object(s);
        assert_ne!(object, 0);
        table.assert_all();
    }

    fn foreign_object_handles_rejected() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let [a, b, c] = wld.sessions[..] else { unreachable!() };
        let mut table = Table::default();
        let mut out = [0u8; 256];
        let mut out_len: CK_ULONG = 256;
        let mut label = [0u8; 16];
        let mut template = [bytes_attribute(CKA_LABEL, &mut label)];

        // A session object of a session that was closed: PKCS#11 destroys
        // it with its session, so its handle names nothing on any member:
        // CKR_OBJECT_HANDLE_INVALID, or CKR_KEY_HANDLE_INVALID (and its
        // wrapping variants) where the function takes a key.
        let closing = raw.open(wld.slot, CKF_RW_SESSION);
        let dead = wld.create_data_object(closing);
        assert_eq!(call!(raw, C_CloseSession(closing)), CKR_OK);

        for (case, object) in [
            ("handle 0", 0),
            ("handle 0xdeadbeef", 0xdead_beef),
            ("handle CK_ULONG::MAX", CK_ULONG::MAX),
            ("a closed session's object", dead),
        ] {
            for (session_case, s) in [("its member", a), ("another member", b)] {
                let case = format!("{case}, through a session on {session_case}");
                let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
                let mut wrap = mechanism(CKM_AES_KEY_WRAP);
                let mut handle = 0;
                for (name, expected, rv) in [
                    (
                        "C_GetAttributeValue",
                        CKR_OBJECT_HANDLE_INVALID,
                        call!(raw, C_GetAttributeValue(s, object, template.as_mut_ptr(), 1)),
                    ),
                    (
                        "C_SetAttributeValue",
                        CKR_OBJECT_HANDLE_INVALID,
                        call!(raw, C_SetAttributeValue(s, object, template.as_mut_ptr(), 1)),
                    ),
                    (
                        "C_GetObjectSize",
                        CKR_OBJECT_HANDLE_INVALID,
                        call!(raw, C_GetObjectSize(s, object, &mut out_len)),
                    ),
                    (
                        "C_CopyObject",
                        CKR_OBJECT_HANDLE_INVALID,
                        call!(raw, C_CopyObject(s, object, null_mut(), 0, &mut handle)),
                    ),
                    (
                        "C_DestroyObject",
                        CKR_OBJECT_HANDLE_INVALID,
                        call!(raw, C_DestroyObject(s, object)),
                    ),
                    (
                        "C_SignInit",
                        CKR_KEY_HANDLE_INVALID,
                        call!(raw, C_SignInit(s, &mut sign, object)),
                    ),
                    (
                        "C_WrapKey (wrapping key)",
                        CKR_WRAPPING_KEY_HANDLE_INVALID,
                        call!(raw, C_WrapKey(s, &mut wrap, object, wld.aes, out.as_mut_ptr(), &mut out_len)),
                    ),
                    (
                        "C_WrapKey (key to wrap)",
                        CKR_KEY_HANDLE_INVALID,
                        call!(raw, C_WrapKey(s, &mut wrap, wld.aes, object, out.as_mut_ptr(), &mut out_len)),
                    ),
                    (
                        "C_UnwrapKey",
                        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
                        call!(raw, C_UnwrapKey(s, &mut wrap, object, out.as_mut_ptr(), 40, null_mut(), 0, &mut handle)),
                    ),
                    (
                        "C_DigestKey",
                        CKR_KEY_HANDLE_INVALID,
                        call!(raw, C_DigestKey(s, object)),
                    ),
                ] {
                    table.record(format!("{name} with {case}"), expected, rv);
                }
            }
        }

        // A live session object of session `a`, used through sessions on
        // other members. PKCS#11 makes a session object visible to every
        // session of the application. The object lives on `a`'s member
        // only, so session `b`, which holds nothing on its own member,
        // moves there and is served. Session `c` made a session object of
        // its own, so it stays, and gets the handle reported as invalid
        // rather than reach a different object.
        let own = wld.create_data_object(c);
        assert_ne!(own, 0);
        let live = wld.create_data_object(a);
        row!(
            table,
            "C_GetAttributeValue with a live session object, through its own session",
            CKR_OK,
            call!(raw, C_GetAttributeValue(a, live, template.as_mut_ptr(), 1))
        );
        template[0].ulValueLen = 16;
        row!(
            table,
            "C_GetAttributeValue with a live session object, through a free session on another member",
            CKR_OK,
            call!(raw, C_GetAttributeValue(b, live, template.as_mut_ptr(), 1))
        );
        template[0].ulValueLen = 16;
        row!(
            table,
            "C_GetAttributeValue with a live session object, through a session tied to another member",
            CKR_OBJECT_HANDLE_INVALID,
            call!(raw, C_GetAttributeValue(c, live, template.as_mut_ptr(), 1))
        );
        assert_eq!(raw.member_status().iter().map(|m| m.state).collect::<Vec<_>>(), vec![0, 0, 0]);
        table.assert_all();
    }

    fn zero_and_huge_lengths() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let s = wld.sessions[0];
        let mut table = Table::default();
        let mut buffer = [0u8; 512];
        let b = buffer.as_mut_ptr();
        let mut length: CK_ULONG = 0;
        let mut slots = [0 as CK_SLOT_ID; 4];
        let mut mechanisms = [0 as CK_MECHANISM_TYPE; 4];

        // PKCS#11 two-call convention: a buffer that is too small, here
        // of zero entries, gives CKR_BUFFER_TOO_SMALL and the count needed.
        row!(
            table,
            "C_GetSlotList(TRUE, list, &0)",
            CKR_BUFFER_TOO_SMALL,
            call!(raw, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut length))
        );
        assert_eq!(length, 1, "slot count after CKR_BUFFER_TOO_SMALL");
        length = 0;
        row!(
            table,
            "C_GetMechanismList(slot, list, &0)",
            CKR_BUFFER_TOO_SMALL,
            call!(raw, C_GetMechanismList(wld.slot, mechanisms.as_mut_ptr(), &mut length))
        );
        assert!(length > 4, "mechanism count after CKR_BUFFER_TOO_SMALL: {length}");
        length = 0;
        let mut interfaces = [CK_INTERFACE::default(); 1];
        row!(
            table,
            "C_GetInterfaceList(list, &0)",
            CKR_BUFFER_TOO_SMALL,
            unsafe { (raw.get_interface_list)(interfaces.as_mut_ptr(), &mut length) }
        );
        assert_eq!(length, 3, "interface count after CKR_BUFFER_TOO_SMALL");
        length = 0;
        let mut status = [common::raw::P11WLD_MEMBER_STATUS::default(); 1];
        row!(
            table,
            "extension GetMemberStatus(list, &0)",
            CKR_BUFFER_TOO_SMALL,
            unsafe { raw.ext.GetMemberStatus.unwrap()(status.as_mut_ptr(), &mut length) }
        );
        assert_eq!(length, 3, "member count after CKR_BUFFER_TOO_SMALL");

        // Zero-length input is valid input.
        row!(
            table,
            "C_GenerateRandom(s, buffer, 0)",
            CKR_OK,
            call!(raw, C_GenerateRandom(s, b, 0))
        );
        let mut digest = mechanism(CKM_SHA256);
        assert_eq!(call!(raw, C_DigestInit(s, &mut digest)), CKR_OK);
        row!(table, "C_DigestUpdate(s, NULL, 0)", CKR_OK, call!(raw, C_DigestUpdate(s, null_mut(), 0)));
        length = 512;
        row!(
            table,
            "C_DigestFinal after an empty update",
            CKR_OK,
            call!(raw, C_DigestFinal(s, b, &mut length))
        );
        assert_eq!(&buffer[..32], keys::sha256(b"").as_slice(), "SHA-256 of nothing");
        // PKCS#11: a template without the attributes an object needs gives
        // CKR_TEMPLATE_INCOMPLETE.
        let mut handle = 0;
        row!(
            table,
            "C_CreateObject(s, NULL, 0, &h)",
            CKR_TEMPLATE_INCOMPLETE,
            call!(raw, C_CreateObject(s, null_mut(), 0, &mut handle))
        );
        row!(
            table,
            "C_FindObjectsInit(s, NULL, 0) matches everything",
            CKR_OK,
            call!(raw, C_FindObjectsInit(s, null_mut(), 0))
        );
        let mut found = [0 as CK_OBJECT_HANDLE; 8];
        row!(
            table,
            "C_FindObjects(s, list, 0, &n)",
            CKR_OK,
            call!(raw, C_FindObjects(s, found.as_mut_ptr(), 0, &mut length))
        );
        assert_eq!(length, 0, "objects returned for room for none");
        // Sizes that no buffer can have (more than isize::MAX bytes) are
        // bad arguments; p11wld rejects them before a vendor reads.
        row!(
            table,
            "C_FindObjects(s, list, CK_ULONG::MAX, &n)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_FindObjects(s, found.as_mut_ptr(), HUGE, &mut length))
        );
        assert_eq!(call!(raw, C_FindObjectsFinal(s)), CKR_OK);
        assert_eq!(call!(raw, C_DigestInit(s, &mut digest)), CKR_OK);
        row!(
            table,
            "C_DigestUpdate(s, buffer, CK_ULONG::MAX)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_DigestUpdate(s, b, HUGE))
        );
        row!(
            table,
            "C_GenerateRandom(s, buffer, CK_ULONG::MAX)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_GenerateRandom(s, b, HUGE))
        );
        row!(
            table,
            "C_SeedRandom(s, buffer, CK_ULONG::MAX)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_SeedRandom(s, b, HUGE))
        );
        row!(
            table,
            "C_Login(s, CKU_USER, pin, CK_ULONG::MAX)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_Login(wld.sessions[1], CKU_USER, b, HUGE))
        );
        row!(
            table,
            "C_SetOperationState(s, state, CK_ULONG::MAX, 0, 0)",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_SetOperationState(s, b, HUGE, 0, 0))
        );
        let mut class = CKO_DATA;
        let mut template = [ulong_attribute(CKA_CLASS, &mut class)];
        template[0].ulValueLen = HUGE;
        row!(
            table,
            "C_CreateObject with an attribute of length CK_ULONG::MAX",
            CKR_ATTRIBUTE_VALUE_INVALID,
            call!(raw, C_CreateObject(s, template.as_mut_ptr(), 1, &mut handle))
        );
        // A saved state shorter than p11wld's own header names no member.
        row!(
            table,
            "C_SetOperationState(s, state, 0, 0, 0)",
            CKR_SAVED_STATE_INVALID,
            call!(raw, C_SetOperationState(s, b, 0, 0, 0))
        );
        table.assert_all();
    }

    fn unsupported_functions_initialized() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let mut table = Table::default();
        // PKCS#11 3.0: every entry of the 3.0 list is filled in; a function
        // the module does not implement returns CKR_FUNCTION_NOT_SUPPORTED,
        // also on a valid session.
        let args = Args { session: wld.sessions[0], slot: wld.slot, object: wld.aes, null: false };
        table.record_all(
            "on a valid session",
            calls::unsupported_3_0_calls(raw.list3, args),
            |_| CKR_FUNCTION_NOT_SUPPORTED,
        );
        // PKCS#11 2.40: C_GetFunctionStatus and C_CancelFunction are legacy
        // functions that return CKR_FUNCTION_NOT_PARALLEL.
        row!(
            table,
            "C_GetFunctionStatus(s)",
            CKR_FUNCTION_NOT_PARALLEL,
            call!(raw, C_GetFunctionStatus(wld.sessions[0]))
        );
        row!(
            table,
            "C_CancelFunction(s)",
            CKR_FUNCTION_NOT_PARALLEL,
            call!(raw, C_CancelFunction(wld.sessions[0]))
        );
        // PKCS#11: parallel sessions (no CKF_SERIAL_SESSION) are not
        // supported: CKR_SESSION_PARALLEL_NOT_SUPPORTED.
        let mut session = 0;
        row!(
            table,
            "C_OpenSession without CKF_SERIAL_SESSION",
            CKR_SESSION_PARALLEL_NOT_SUPPORTED,
            call!(raw, C_OpenSession(wld.slot, 0, null_mut(), None, &mut session))
        );
        // PKCS#11: C_WaitForSlotEvent with CKF_DONT_BLOCK and no event
        // returns CKR_NO_EVENT; a non-NULL pReserved is a bad argument.
        let mut slot = 0;
        row!(
            table,
            "C_WaitForSlotEvent(CKF_DONT_BLOCK) without an event",
            CKR_NO_EVENT,
            call!(raw, C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, null_mut()))
        );
        row!(
            table,
            "C_WaitForSlotEvent with pReserved set",
            CKR_ARGUMENTS_BAD,
            call!(raw, C_WaitForSlotEvent(CKF_DONT_BLOCK, &mut slot, (&mut session as *mut CK_ULONG).cast()))
        );
        // PKCS#11: an unknown user type gives CKR_USER_TYPE_INVALID.
        let mut pin = *b"123456";
        row!(
            table,
            "C_Login with user type 7",
            CKR_USER_TYPE_INVALID,
            call!(raw, C_Login(wld.sessions[1], 7, pin.as_mut_ptr(), 6))
        );
        table.assert_all();
    }
}
