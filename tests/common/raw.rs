//! The p11wld module driven through its C ABI with raw pointers, for tests
//! that pass what the `cryptoki` crate never passes: NULL pointers, wrong
//! lengths, closed handles and malformed structures.

use std::ffi::c_void;
use std::path::Path;
use std::ptr;

use cryptoki_sys::*;

use super::paths;

/// The extension's function list and one member's status, as
/// `include/p11wld.h` declares them.
pub use p11wld::ffi::ext::{P11WLD_FUNCTION_LIST as ExtFunctionList, P11WLD_MEMBER_STATUS};

/// The loaded module with its exported entry points and function tables.
pub struct Raw {
    _library: libloading::Library,
    pub get_function_list: unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV,
    pub get_interface_list: unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV,
    pub get_interface: unsafe extern "C" fn(
        *mut CK_UTF8CHAR,
        *mut CK_VERSION,
        *mut *mut CK_INTERFACE,
        CK_FLAGS,
    ) -> CK_RV,
    pub get_ext_function_list: unsafe extern "C" fn(*mut *mut ExtFunctionList) -> CK_RV,
    /// The PKCS#11 2.40 function list.
    pub list: &'static CK_FUNCTION_LIST,
    /// The PKCS#11 3.0 function list of the default interface.
    pub list3: &'static CK_FUNCTION_LIST_3_0,
    pub ext: &'static ExtFunctionList,
}

impl Raw {
    /// Loads the p11wld module built for this test run.
    pub fn load() -> Raw {
        Raw::load_path(&paths::p11wld_module())
    }

    pub fn load_path(path: &Path) -> Raw {
        // SAFETY: loading the module under test runs no initializer that
        // depends on the caller.
        let library = unsafe { libloading::Library::new(path) }
            .unwrap_or_else(|e| panic!("failed to load {}: {e}", path.display()));
        // SAFETY: the symbols have the PKCS#11 and p11wld.h signatures.
        unsafe {
            let get_function_list = *library
                .get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(
                    b"C_GetFunctionList\0",
                )
                .expect("C_GetFunctionList is exported");
            let get_interface_list = *library
                .get::<unsafe extern "C" fn(*mut CK_INTERFACE, *mut CK_ULONG) -> CK_RV>(
                    b"C_GetInterfaceList\0",
                )
                .expect("C_GetInterfaceList is exported");
            let get_interface = *library
                .get::<unsafe extern "C" fn(
                    *mut CK_UTF8CHAR,
                    *mut CK_VERSION,
                    *mut *mut CK_INTERFACE,
                    CK_FLAGS,
                ) -> CK_RV>(b"C_GetInterface\0")
                .expect("C_GetInterface is exported");
            let get_ext_function_list = *library
                .get::<unsafe extern "C" fn(*mut *mut ExtFunctionList) -> CK_RV>(
                    b"P11WLD_GetFunctionList\0",
                )
                .expect("P11WLD_GetFunctionList is exported");

            let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
            assert_eq!(get_function_list(&mut list), CKR_OK);
            let mut interface: *mut CK_INTERFACE = ptr::null_mut();
            assert_eq!(
                get_interface(ptr::null_mut(), ptr::null_mut(), &mut interface, 0),
                CKR_OK
            );
            let list3 = (*interface).pFunctionList as *const CK_FUNCTION_LIST_3_0;
            let mut ext: *mut ExtFunctionList = ptr::null_mut();
            assert_eq!(get_ext_function_list(&mut ext), CKR_OK);
            Raw {
                _library: library,
                get_function_list,
                get_interface_list,
                get_interface,
                get_ext_function_list,
                list: &*list,
                list3: &*list3,
                ext: &*ext,
            }
        }
    }

    /// Calls `C_Initialize(NULL)`.
    pub fn initialize(&self) -> CK_RV {
        // SAFETY: NULL arguments are valid.
        unsafe { self.list.C_Initialize.unwrap()(ptr::null_mut()) }
    }

    /// Calls `C_Finalize(NULL)`.
    pub fn finalize(&self) -> CK_RV {
        // SAFETY: NULL is the required argument.
        unsafe { self.list.C_Finalize.unwrap()(ptr::null_mut()) }
    }

    /// Returns the ids of the slots with a token.
    pub fn slots(&self) -> Vec<CK_SLOT_ID> {
        let mut count: CK_ULONG = 0;
        // SAFETY: valid pointers with the two-call convention.
        unsafe {
            let get = self.list.C_GetSlotList.unwrap();
            assert_eq!(get(CK_TRUE, ptr::null_mut(), &mut count), CKR_OK);
            let mut slots = vec![0; count as usize];
            assert_eq!(get(CK_TRUE, slots.as_mut_ptr(), &mut count), CKR_OK);
            slots.truncate(count as usize);
            slots
        }
    }

    /// Opens a session with `flags` (CKF_SERIAL_SESSION is added).
    pub fn open(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> CK_SESSION_HANDLE {
        let mut session: CK_SESSION_HANDLE = 0;
        // SAFETY: valid pointers.
        let rv = unsafe {
            self.list.C_OpenSession.unwrap()(
                slot,
                flags | CKF_SERIAL_SESSION,
                ptr::null_mut(),
                None,
                &mut session,
            )
        };
        assert_eq!(rv, CKR_OK, "C_OpenSession on slot {slot}");
        session
    }

    /// Logs the application in as the user.
    pub fn login(&self, session: CK_SESSION_HANDLE, pin: &str) -> CK_RV {
        // SAFETY: the PIN buffer is valid for its length.
        unsafe {
            self.list.C_Login.unwrap()(
                session,
                CKU_USER,
                pin.as_ptr().cast_mut(),
                pin.len() as CK_ULONG,
            )
        }
    }

    /// Returns the extension's status of every member of every WLD slot.
    pub fn member_status(&self) -> Vec<P11WLD_MEMBER_STATUS> {
        let mut count: CK_ULONG = 0;
        // SAFETY: valid pointers with the two-call convention.
        unsafe {
            let get = self.ext.GetMemberStatus.unwrap();
            assert_eq!(get(ptr::null_mut(), &mut count), CKR_OK);
            let mut list = vec![P11WLD_MEMBER_STATUS::default(); count as usize];
            assert_eq!(get(list.as_mut_ptr(), &mut count), CKR_OK);
            list.truncate(count as usize);
            list
        }
    }

    /// Returns the open session count of every member, in member order.
    pub fn open_sessions(&self) -> Vec<u64> {
        self.member_status()
            .iter()
            .map(|status| status.open_sessions)
            .collect()
    }

    /// Finds the objects matching `template` through `session`.
    pub fn find(&self, session: CK_SESSION_HANDLE, template: &mut [CK_ATTRIBUTE]) -> Vec<u64> {
        // SAFETY: valid pointers with their lengths.
        unsafe {
            let rv = self.list.C_FindObjectsInit.unwrap()(
                session,
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
            );
            assert_eq!(rv, CKR_OK, "C_FindObjectsInit");
            let mut found = Vec::new();
            loop {
                let mut batch = [0 as CK_OBJECT_HANDLE; 16];
                let mut count: CK_ULONG = 0;
                let rv = self.list.C_FindObjects.unwrap()(
                    session,
                    batch.as_mut_ptr(),
                    batch.len() as CK_ULONG,
                    &mut count,
                );
                assert_eq!(rv, CKR_OK, "C_FindObjects");
                if count == 0 {
                    break;
                }
                found.extend_from_slice(&batch[..count as usize]);
            }
            assert_eq!(
                self.list.C_FindObjectsFinal.unwrap()(session),
                CKR_OK,
                "C_FindObjectsFinal"
            );
            found
        }
    }

    /// Finds the one object of `class` labelled `label`.
    pub fn find_one(&self, session: CK_SESSION_HANDLE, class: CK_ULONG, label: &str) -> u64 {
        let mut class = class;
        let mut label = label.as_bytes().to_vec();
        let mut template = [
            ulong_attribute(CKA_CLASS, &mut class),
            bytes_attribute(CKA_LABEL, &mut label),
        ];
        let found = self.find(session, &mut template);
        assert_eq!(found.len(), 1, "objects labelled {label:?}");
        found[0]
    }
}

/// Returns an attribute that points at a CK_ULONG.
pub fn ulong_attribute(kind: CK_ATTRIBUTE_TYPE, value: &mut CK_ULONG) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: (value as *mut CK_ULONG).cast(),
        ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
    }
}

/// Returns an attribute that points at a CK_BBOOL.
pub fn bool_attribute(kind: CK_ATTRIBUTE_TYPE, value: &mut CK_BBOOL) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: (value as *mut CK_BBOOL).cast(),
        ulValueLen: 1,
    }
}

/// Returns an attribute that points at bytes.
pub fn bytes_attribute(kind: CK_ATTRIBUTE_TYPE, value: &mut [u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: value.as_mut_ptr().cast(),
        ulValueLen: value.len() as CK_ULONG,
    }
}

/// Returns a mechanism without a parameter.
pub fn mechanism(kind: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: kind,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}
