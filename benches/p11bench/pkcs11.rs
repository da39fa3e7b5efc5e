//! A PKCS#11 module driven through its raw C function list, so the client
//! side adds nothing but an indirect call to each measured operation.

use cryptoki_sys::*;
use p11wld::ffi::ext::{P11WLD_FUNCTION_LIST, P11WLD_MEMBER_STATUS};
use std::path::Path;
use std::ptr;

/// Calls one function of a module's list and returns its CK_RV.
///
/// `call!(module, C_Sign(session, data, len, out, &mut out_len))`
macro_rules! call {
    ($module:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let function = $module
            .list()
            .$name
            .expect(concat!("the module has no ", stringify!($name)));
        // SAFETY: the entry comes from the module's own function list, which
        // stays valid while the module is loaded. Every caller passes
        // pointers that are valid for the duration of the call.
        unsafe { function($($arg),*) }
    }};
}
pub(crate) use call;

/// A loaded and initialized PKCS#11 module.
pub struct Module {
    list: *const CK_FUNCTION_LIST,
    // Keeps the module mapped while `list` is in use.
    _library: libloading::Library,
}

// SAFETY: the function list is immutable, and the module was initialized
// with CKF_OS_LOCKING_OK, so it may be called from any thread.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

impl Module {
    /// Loads the module at `path` and calls `C_Initialize` with
    /// CKF_OS_LOCKING_OK.
    pub fn load(path: &Path) -> Result<Module, String> {
        // SAFETY: loading a PKCS#11 module runs its initializers, as in any
        // PKCS#11 application.
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;

        // SAFETY: C_GetFunctionList has this type in every PKCS#11 module.
        let get_list = unsafe {
            library.get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(
                b"C_GetFunctionList\0",
            )
        }
        .map_err(|e| format!("{} has no C_GetFunctionList: {e}", path.display()))?;
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: the pointer is valid for writes.
        let rv = unsafe { get_list(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!(
                "C_GetFunctionList of {} returned {rv:#x}",
                path.display()
            ));
        }
        let module = Module {
            list,
            _library: library,
        };

        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        let rv = call!(
            module,
            C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast())
        );
        check("C_Initialize", rv)?;
        Ok(module)
    }

    #[inline(always)]
    pub fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: checked non-NULL in `load`; the library stays loaded.
        unsafe { &*self.list }
    }

    /// Returns the slots whose token has the label `label`, in slot list
    /// order.
    pub fn slots_with_label(&self, label: &str) -> Result<Vec<CK_SLOT_ID>, String> {
        let mut count: CK_ULONG = 0;
        let rv = call!(self, C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut count));
        check("C_GetSlotList", rv)?;
        let mut slots = vec![0 as CK_SLOT_ID; count as usize];
        let rv = call!(self, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut count));
        check("C_GetSlotList", rv)?;
        slots.truncate(count as usize);
        let mut found = Vec::new();
        for slot in slots {
            let mut info = CK_TOKEN_INFO::default();
            check(
                "C_GetTokenInfo",
                call!(self, C_GetTokenInfo(slot, &mut info)),
            )?;
            let text = String::from_utf8_lossy(&info.label);
            if text.trim_end() == label && info.flags & CKF_TOKEN_INITIALIZED != 0 {
                found.push(slot);
            }
        }
        Ok(found)
    }

    pub fn open_session(&self, slot: CK_SLOT_ID) -> Result<CK_SESSION_HANDLE, String> {
        let mut session: CK_SESSION_HANDLE = 0;
        let rv = call!(
            self,
            C_OpenSession(
                slot,
                CKF_SERIAL_SESSION,
                ptr::null_mut(),
                None,
                &mut session
            )
        );
        check("C_OpenSession", rv)?;
        Ok(session)
    }

    pub fn close_session(&self, session: CK_SESSION_HANDLE) -> Result<(), String> {
        check("C_CloseSession", call!(self, C_CloseSession(session)))
    }

    /// Logs the user in; a token that is logged in already counts as a
    /// success, because login is per application and token.
    pub fn login(&self, session: CK_SESSION_HANDLE, pin: &str) -> Result<(), String> {
        let rv = call!(
            self,
            C_Login(
                session,
                CKU_USER,
                pin.as_ptr().cast_mut(),
                pin.len() as CK_ULONG
            )
        );
        if rv == CKR_USER_ALREADY_LOGGED_IN {
            return Ok(());
        }
        check("C_Login", rv)
    }

    /// Returns the one object of `class` with `label`.
    pub fn find_one(
        &self,
        session: CK_SESSION_HANDLE,
        class: CK_OBJECT_CLASS,
        label: &str,
    ) -> Result<CK_OBJECT_HANDLE, String> {
        let mut template = search_template(&class, label);
        let rv = call!(
            self,
            C_FindObjectsInit(session, template.as_mut_ptr(), template.len() as CK_ULONG)
        );
        check("C_FindObjectsInit", rv)?;
        let mut found = [0 as CK_OBJECT_HANDLE; 2];
        let mut count: CK_ULONG = 0;
        let rv = call!(
            self,
            C_FindObjects(session, found.as_mut_ptr(), 2, &mut count)
        );
        let final_rv = call!(self, C_FindObjectsFinal(session));
        check("C_FindObjects", rv)?;
        check("C_FindObjectsFinal", final_rv)?;
        if count != 1 {
            return Err(format!(
                "expected one object {label} of class {class:#x}, found {count}"
            ));
        }
        Ok(found[0])
    }

    /// Returns the open sessions of this process on each member of every
    /// WLD slot, read through the p11wld extension. Returns `None` for a
    /// module that is not p11wld.
    pub fn member_sessions(&self) -> Result<Option<Vec<u64>>, String> {
        // SAFETY: P11WLD_GetFunctionList has this type (include/p11wld.h).
        let get_list = unsafe {
            self._library
                .get::<unsafe extern "C" fn(*mut *mut P11WLD_FUNCTION_LIST) -> CK_RV>(
                    b"P11WLD_GetFunctionList\0",
                )
        };
        let Ok(get_list) = get_list else {
            return Ok(None);
        };
        let mut list: *mut P11WLD_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: the pointer is valid for writes.
        check("P11WLD_GetFunctionList", unsafe { get_list(&mut list) })?;
        // SAFETY: the module returned its static list.
        let status = unsafe { (*list).GetMemberStatus }.ok_or("no GetMemberStatus")?;
        let mut count: CK_ULONG = 0;
        // SAFETY: with a NULL list the function writes the count only.
        check("GetMemberStatus", unsafe {
            status(ptr::null_mut(), &mut count)
        })?;
        let mut members = vec![P11WLD_MEMBER_STATUS::default(); count as usize];
        // SAFETY: the buffer has room for `count` entries.
        check("GetMemberStatus", unsafe {
            status(members.as_mut_ptr(), &mut count)
        })?;
        members.truncate(count as usize);
        Ok(Some(members.iter().map(|m| m.open_sessions).collect()))
    }

    /// Calls `C_Finalize`.
    pub fn finalize(&self) -> Result<(), String> {
        check("C_Finalize", call!(self, C_Finalize(ptr::null_mut())))
    }
}

/// Builds a search template for objects of `class` with `label`. The
/// template points into `class` and `label`.
pub fn search_template(class: &CK_OBJECT_CLASS, label: &str) -> [CK_ATTRIBUTE; 2] {
    [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (class as *const CK_OBJECT_CLASS).cast_mut().cast(),
            ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_ptr().cast_mut().cast(),
            ulValueLen: label.len() as CK_ULONG,
        },
    ]
}

/// Turns a CK_RV into a result whose error names the function.
pub fn check(function: &str, rv: CK_RV) -> Result<(), String> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!("{function} returned {rv:#x}"))
    }
}
