//! Loading vendor PKCS#11 modules and calling them.
//!
//! Every call into a vendor goes through [`vcall!`], which checks that the
//! vendor fills in the function and returns CKR_FUNCTION_NOT_SUPPORTED where
//! it does not. Nothing here knows about WLD slots.

mod env;
mod load;

pub use load::load_modules;

use crate::error::{Result, Rv};
use cryptoki_sys::*;
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Calls one function of a vendor's function list.
///
/// `vcall!(module, C_Sign(h, data, len, sig, sig_len))` returns the vendor's
/// CK_RV, or CKR_FUNCTION_NOT_SUPPORTED when its list has no such entry.
#[macro_export]
macro_rules! vcall {
    ($module:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        match $module.functions().$name {
            // SAFETY: the entry comes from the vendor's own function list,
            // which stays valid while the module is loaded; callers pass
            // pointers that are valid for the duration of the call.
            Some(f) => unsafe { f($($arg),*) },
            None => ::cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED,
        }
    }};
}

/// One loaded vendor module instance.
pub struct VendorModule {
    pub name: String,
    pub path: PathBuf,
    env: Vec<(String, String)>,
    list: *const CK_FUNCTION_LIST,
    /// Whether the instance is initialized and answering.
    usable: AtomicBool,
    /// Whether p11wld initialized the instance and so must finalize it. An
    /// instance that the application had initialized itself before is used
    /// as it is and left initialized.
    owns_init: AtomicBool,
    /// Whether a C_Initialize of the instance is still running, past the
    /// call deadline; nothing else may initialize it meanwhile.
    initializing: AtomicBool,
    /// How long the instance's environment variables may stay set for one
    /// call before another module takes them over: a quarter of the call
    /// deadline.
    env_lease: std::time::Duration,
    // Keeps the shared object loaded while `list` is in use.
    _library: std::sync::Arc<libloading::Library>,
}

// SAFETY: the function list is immutable, and PKCS#11 modules initialized
// with CKF_OS_LOCKING_OK may be called from any thread.
unsafe impl Send for VendorModule {}
// SAFETY: as above.
unsafe impl Sync for VendorModule {}

impl std::fmt::Debug for VendorModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorModule")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl VendorModule {
    pub fn functions(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: `list` was checked non-NULL at load time and points into
        // the loaded library, which `_library` keeps mapped.
        unsafe { &*self.list }
    }

    pub fn list_ptr(&self) -> *const CK_FUNCTION_LIST {
        self.list
    }

    /// Whether a C_Initialize of the instance is still running.
    pub fn is_initializing(&self) -> bool {
        self.initializing.load(Ordering::Acquire)
    }

    pub fn set_initializing(&self, running: bool) {
        self.initializing.store(running, Ordering::Release);
    }

    /// Whether the instance is initialized and was answering last time.
    pub fn is_usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    pub fn set_usable(&self, usable: bool) {
        self.usable.store(usable, Ordering::Release);
    }

    /// Initializes the vendor with OS locking, inside its environment.
    ///
    /// Some vendors reject flags 0 without callbacks (p11-kit-client.so
    /// 0.24 returns CKR_CANT_LOCK), so the proxy always asks for OS locking,
    /// whatever the application passed. A vendor that reports it is already
    /// initialized is finalized and initialized again in a forked child,
    /// because SoftHSM2 2.6 keeps its parent's state across fork; in the
    /// parent process it was initialized by the application itself, and is
    /// used as it is.
    pub fn initialize(&self, after_fork: bool) -> Result<()> {
        let mut rv = self.initialize_once();
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && after_fork {
            vcall!(self, C_Finalize(ptr::null_mut()));
            rv = self.initialize_once();
        }
        match rv {
            CKR_OK => self.owns_init.store(true, Ordering::Release),
            CKR_CRYPTOKI_ALREADY_INITIALIZED => {
                log::warn!(
                    "module {}: already initialized by the application; p11wld uses it \
                     as it is and leaves it initialized",
                    self.name
                );
                self.owns_init.store(false, Ordering::Release);
            }
            rv => {
                self.set_usable(false);
                return Err(Rv(rv));
            }
        }
        self.set_usable(true);
        Ok(())
    }

    /// Finalizes and initializes the instance again, for a vendor whose
    /// connection to its device broke (p11-kit-client.so needs this after
    /// its server restarted).
    pub fn reinitialize(&self) -> Result<()> {
        if self.owns_init.swap(false, Ordering::AcqRel) {
            vcall!(self, C_Finalize(ptr::null_mut()));
        }
        self.initialize(true)
    }

    fn initialize_once(&self) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        let args_ptr: *mut CK_C_INITIALIZE_ARGS = &mut args;
        env::with_env(&self.env, self.env_lease, || {
            vcall!(self, C_Initialize(args_ptr.cast()))
        })
    }

    /// Finalizes the instance if p11wld initialized it.
    pub fn finalize(&self) {
        self.set_usable(false);
        if !self.owns_init.swap(false, Ordering::AcqRel) {
            return;
        }
        let rv = vcall!(self, C_Finalize(ptr::null_mut()));
        if rv != CKR_OK {
            log::warn!("module {}: C_Finalize returned {}", self.name, Rv(rv));
        }
    }

    /// Returns the vendor's slot list, following its reported count as the
    /// real one (p11-kit-client.so can shrink a list between the calls).
    pub fn slot_list(&self, token_present: bool) -> Result<Vec<CK_SLOT_ID>> {
        let present = CK_BBOOL::from(token_present);
        fetch_list(0, |buf, count| {
            vcall!(self, C_GetSlotList(present, buf, count))
        })
    }

    pub fn slot_info(&self, slot: CK_SLOT_ID) -> Result<CK_SLOT_INFO> {
        let mut info = CK_SLOT_INFO::default();
        Rv::check(vcall!(self, C_GetSlotInfo(slot, &mut info)))?;
        Ok(info)
    }

    pub fn token_info(&self, slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO> {
        let mut info = CK_TOKEN_INFO::default();
        Rv::check(vcall!(self, C_GetTokenInfo(slot, &mut info)))?;
        Ok(info)
    }

    /// Returns the mechanism list. The count the fetch returns wins over
    /// the one the size query gave: p11-kit-client.so 0.24 answers the
    /// query with a larger count than it then fills in.
    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
        fetch_list(0, |buf, count| {
            vcall!(self, C_GetMechanismList(slot, buf, count))
        })
    }

    pub fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mechanism: CK_MECHANISM_TYPE,
    ) -> Result<CK_MECHANISM_INFO> {
        let mut info = CK_MECHANISM_INFO::default();
        Rv::check(vcall!(self, C_GetMechanismInfo(slot, mechanism, &mut info)))?;
        Ok(info)
    }

    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        let mut handle: CK_SESSION_HANDLE = 0;
        Rv::check(vcall!(
            self,
            C_OpenSession(slot, flags, ptr::null_mut(), None, &mut handle)
        ))?;
        Ok(handle)
    }

    pub fn close_session(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        Rv::check(vcall!(self, C_CloseSession(session)))
    }

    /// Reads attributes by the two-call convention. Each attribute the
    /// object lacks, or keeps sensitive, comes back as `None`.
    pub fn read_attributes(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let mut template: Vec<CK_ATTRIBUTE> = types
            .iter()
            .map(|&t| CK_ATTRIBUTE {
                type_: t,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            })
            .collect();
        let count = template.len() as CK_ULONG;
        let rv = vcall!(
            self,
            C_GetAttributeValue(session, object, template.as_mut_ptr(), count)
        );
        accept_partial(rv)?;

        let mut values: Vec<Option<Vec<u8>>> = template
            .iter()
            .map(|a| {
                (a.ulValueLen != CK_UNAVAILABLE_INFORMATION)
                    .then(|| vec![0u8; a.ulValueLen as usize])
            })
            .collect();
        for (attr, value) in template.iter_mut().zip(values.iter_mut()) {
            match value {
                Some(buf) => {
                    attr.pValue = buf.as_mut_ptr().cast();
                    attr.ulValueLen = buf.len() as CK_ULONG;
                }
                None => attr.ulValueLen = 0,
            }
        }
        let rv = vcall!(
            self,
            C_GetAttributeValue(session, object, template.as_mut_ptr(), count)
        );
        accept_partial(rv)?;
        for (attr, value) in template.iter().zip(values.iter_mut()) {
            if attr.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                *value = None;
            } else if let Some(buf) = value {
                buf.truncate(attr.ulValueLen as usize);
            }
        }
        Ok(values)
    }

    /// Runs a whole find sequence and returns every match.
    pub fn find_all(
        &self,
        session: CK_SESSION_HANDLE,
        template: &mut [CK_ATTRIBUTE],
    ) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let count = template.len() as CK_ULONG;
        Rv::check(vcall!(
            self,
            C_FindObjectsInit(session, template.as_mut_ptr(), count)
        ))?;
        let mut found = Vec::new();
        let mut batch = [0 as CK_OBJECT_HANDLE; 32];
        let result = loop {
            let mut n: CK_ULONG = 0;
            let rv = vcall!(
                self,
                C_FindObjects(session, batch.as_mut_ptr(), batch.len() as CK_ULONG, &mut n)
            );
            if rv != CKR_OK {
                break Err(Rv(rv));
            }
            if n == 0 {
                break Ok(());
            }
            found.extend_from_slice(&batch[..(n as usize).min(batch.len())]);
        };
        let final_rv = vcall!(self, C_FindObjectsFinal(session));
        result?;
        Rv::check(final_rv)?;
        Ok(found)
    }
}

/// Treats the per-attribute failures of C_GetAttributeValue as success, as
/// the caller reads them from each attribute's length.
fn accept_partial(rv: CK_RV) -> Result<()> {
    match rv {
        CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID => Ok(()),
        other => Err(Rv(other)),
    }
}

/// Runs the two-call list protocol against a vendor until the list fits.
fn fetch_list<T: Copy + Default>(
    hint: usize,
    mut call: impl FnMut(*mut T, *mut CK_ULONG) -> CK_RV,
) -> Result<Vec<T>> {
    let mut count: CK_ULONG = hint as CK_ULONG;
    Rv::check(call(ptr::null_mut(), &mut count))?;
    for _ in 0..8 {
        // One entry more than the vendor is told: p11-kit-client.so 0.24
        // reads one entry past the list it filters (valgrind shows an
        // 8-byte read after a C_GetMechanismList buffer), and the spare
        // entry keeps that read inside memory the proxy owns.
        let mut list = vec![T::default(); count as usize + 1];
        let mut filled = count;
        match call(list.as_mut_ptr(), &mut filled) {
            CKR_OK => {
                list.truncate((filled as usize).min(count as usize));
                return Ok(list);
            }
            CKR_BUFFER_TOO_SMALL => count = filled.max(count + 1),
            rv => return Err(Rv(rv)),
        }
    }
    Err(Rv(CKR_GENERAL_ERROR))
}
