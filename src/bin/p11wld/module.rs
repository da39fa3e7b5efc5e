//! Loading libp11wld.so and calling it through its C ABI: the standard
//! function list for C_Initialize and C_Finalize, and the extension for
//! everything else.

use crate::sys::{self, P11WLD_FUNCTION_LIST};
use cryptoki_sys::*;
use p11wld::replicate::display::escape_nonprintable;
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::ptr;

/// The module's file name.
const MODULE_FILE: &str = "libp11wld.so";

/// The directories PKCS#11 modules are usually installed in, searched
/// after the dynamic loader's path: Debian's multiarch directory, the
/// generic one, and /usr/local/lib, which the loader searches only after
/// ldconfig ran.
#[cfg(target_arch = "x86_64")]
pub const MODULE_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/local/lib",
];
#[cfg(target_arch = "aarch64")]
pub const MODULE_DIRS: &[&str] = &[
    "/usr/lib/aarch64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/local/lib",
];
// NOTE: other architectures' Debian multiarch directories are not listed.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const MODULE_DIRS: &[&str] = &["/usr/lib/pkcs11", "/usr/local/lib"];

/// A place the module is looked up in without --module.
enum Candidate {
    /// A file path, tried when the file exists.
    File(PathBuf),
    /// The bare file name, which the dynamic loader looks up on its path.
    LoaderPath,
}

fn candidates() -> Vec<Candidate> {
    let mut candidates = Vec::new();
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(MODULE_FILE)));
    candidates.extend(beside.map(Candidate::File));
    candidates.push(Candidate::LoaderPath);
    candidates.extend(
        MODULE_DIRS
            .iter()
            .map(|dir| Candidate::File(Path::new(dir).join(MODULE_FILE))),
    );
    candidates
}

/// Opens the module: `requested`, else the first of libp11wld.so beside
/// this program, on the dynamic loader's path, and in [`MODULE_DIRS`].
pub fn open_library(requested: Option<&Path>) -> Result<(libloading::Library, PathBuf), String> {
    if let Some(path) = requested {
        // SAFETY: loading a PKCS#11 module runs its initializers, which is
        // what the operator asked for by naming it.
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load {}: {}", path.display(), error_chain(&e)))?;
        return Ok((library, path.to_owned()));
    }
    let mut tried = Vec::new();
    for candidate in candidates() {
        let path = match candidate {
            Candidate::File(path) if path.exists() => path,
            Candidate::File(path) => {
                tried.push(path.display().to_string());
                continue;
            }
            Candidate::LoaderPath => PathBuf::from(MODULE_FILE),
        };
        // SAFETY: loading the installed module runs its initializers, as
        // any PKCS#11 application does.
        match unsafe { libloading::Library::new(&path) } {
            Ok(library) => return Ok((library, path)),
            // A file that exists but does not load is reported, not
            // passed over for one elsewhere.
            Err(e) if path.is_absolute() => {
                return Err(format!(
                    "cannot load {}: {}",
                    path.display(),
                    error_chain(&e)
                ))
            }
            Err(_) => tried.push("the dynamic loader's path".to_owned()),
        }
    }
    Err(format!(
        "{MODULE_FILE} not found (tried {}); pass --module PATH",
        tried.join(", ")
    ))
}

/// Formats a loader error with its sources: libloading's own text is
/// only "dlopen failed" or "dlsym failed", and the dynamic loader's reason
/// (a missing file, a wrong ELF class, an unresolved dependency) is its
/// source.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A loaded and initialized libp11wld.so, finalized when dropped.
pub struct Module {
    functions: *const CK_FUNCTION_LIST,
    ext: *const P11WLD_FUNCTION_LIST,
    /// The extension's minor version: entries added to the end of its list
    /// are read only from a module that has them.
    ext_minor: u8,
    // Keeps the library mapped while the lists are used.
    _library: libloading::Library,
}

/// Calls one extension function, or fails when the module's list lacks
/// it (an older module).
macro_rules! ext_call {
    ($module:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        match $module.ext().$name {
            // SAFETY: the entry comes from the module's extension list,
            // valid while the library is loaded; the arguments follow
            // include/p11wld.h.
            Some(f) => unsafe { f($($arg),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    }};
}

impl Module {
    /// Loads the module (see [`open_library`]), calls C_Initialize and
    /// finds the extension.
    pub fn load(requested: Option<&Path>) -> Result<Module, String> {
        let (library, path) = open_library(requested)?;
        let path = path.as_path();
        let functions = standard_list(&library, path)?;
        let ext = extension_list(&library, path)?;
        // SAFETY: checked non-NULL by `extension_list`; the list starts
        // with its version.
        let ext_minor = unsafe { (*ext).version.minor };
        let module = Module {
            functions,
            ext,
            ext_minor,
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
        // SAFETY: the list is the module's; `args` lives across the call.
        let initialize = unsafe { (*module.functions).C_Initialize }
            .ok_or_else(|| format!("{} has no C_Initialize", path.display()))?;
        // SAFETY: as above.
        let rv = unsafe { initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast()) };
        if rv != CKR_OK {
            // Dropping `module` would call C_Finalize on a module that is
            // not initialized.
            std::mem::forget(module);
            return Err(format!(
                "C_Initialize of {} failed: {} (check P11WLD_CONFIG and the module's log)",
                path.display(),
                p11wld::error::ckr_name(rv)
            ));
        }
        Ok(module)
    }

    fn ext(&self) -> &P11WLD_FUNCTION_LIST {
        // SAFETY: checked non-NULL at load; the list is static in the
        // library, which `_library` keeps mapped.
        unsafe { &*self.ext }
    }

    pub fn physical_slots(&self) -> Result<Vec<sys::P11WLD_PHYSICAL_SLOT>, String> {
        fetch("ListPhysicalSlots", |list, count| {
            ext_call!(self, ListPhysicalSlots(list, count))
        })
    }

    pub fn module_status(&self) -> Result<Vec<sys::P11WLD_MODULE_STATUS>, String> {
        fetch("GetModuleStatus", |list, count| {
            ext_call!(self, GetModuleStatus(list, count))
        })
    }

    pub fn member_status(&self) -> Result<Vec<sys::P11WLD_MEMBER_STATUS>, String> {
        fetch("GetMemberStatus", |list, count| {
            ext_call!(self, GetMemberStatus(list, count))
        })
    }

    /// Runs Replicate; returns its code and its report, if it made one.
    pub fn replicate(&self, args: &sys::P11WLD_REPLICATE_ARGS) -> (CK_RV, Option<Report>) {
        let mut handle: sys::P11WLD_REPORT_HANDLE = 0;
        let rv = ext_call!(self, Replicate(args, &mut handle));
        (rv, self.take_report(handle))
    }

    /// Runs Verify; returns its code and its report, if it made one.
    pub fn verify(&self, args: &sys::P11WLD_VERIFY_ARGS) -> (CK_RV, Option<Report>) {
        let mut handle: sys::P11WLD_REPORT_HANDLE = 0;
        let rv = ext_call!(self, Verify(args, &mut handle));
        (rv, self.take_report(handle))
    }

    /// Reads a report and frees it.
    fn take_report(&self, handle: sys::P11WLD_REPORT_HANDLE) -> Option<Report> {
        if handle == 0 {
            return None;
        }
        let mut info = sys::P11WLD_REPORT_INFO::default();
        let rv = ext_call!(self, GetReportInfo(handle, &mut info));
        let report = (rv == CKR_OK).then(|| Report {
            info,
            tokens: fetch("GetReportTokens", |list, count| {
                ext_call!(self, GetReportTokens(handle, list, count))
            })
            .unwrap_or_default(),
            actions: fetch("GetReportActions", |list, count| {
                ext_call!(self, GetReportActions(handle, list, count))
            })
            .unwrap_or_default(),
            problems: fetch("GetReportProblems", |list, count| {
                ext_call!(self, GetReportProblems(handle, list, count))
            })
            .unwrap_or_default(),
            messages: Vec::new(),
        });
        let report = report.map(|mut report| {
            report.messages = (0..report.problems.len())
                .map(|index| self.problem_message(handle, index, &report.problems[index]))
                .collect();
            report
        });
        ext_call!(self, FreeReport(handle));
        report
    }

    /// Reads the whole message of a report's problem, which the problem's
    /// field contains cut to fit. A module before version 2.1 gives the
    /// field only.
    fn problem_message(
        &self,
        handle: sys::P11WLD_REPORT_HANDLE,
        index: usize,
        problem: &sys::P11WLD_PROBLEM,
    ) -> String {
        let whole = (self.ext_minor >= 1)
            .then(|| {
                fetch("GetReportProblemMessage", |message, size| {
                    ext_call!(
                        self,
                        GetReportProblemMessage(handle, index as sys::p11wld_ulong, message, size)
                    )
                })
                .ok()
            })
            .flatten();
        match whole {
            Some(message) => text(&message),
            None => text(&problem.message),
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the list is the module's, and the module is initialized.
        if let Some(finalize) = unsafe { (*self.functions).C_Finalize } {
            // SAFETY: C_Finalize takes NULL.
            unsafe { finalize(ptr::null_mut()) };
        }
    }
}

/// One report, read out of the module.
pub struct Report {
    pub info: sys::P11WLD_REPORT_INFO,
    pub tokens: Vec<sys::P11WLD_TOKEN_REPORT>,
    pub actions: Vec<sys::P11WLD_ACTION>,
    pub problems: Vec<sys::P11WLD_PROBLEM>,
    /// The whole message of each problem, in the order of `problems`.
    pub messages: Vec<String>,
}

fn standard_list(
    library: &libloading::Library,
    path: &Path,
) -> Result<*const CK_FUNCTION_LIST, String> {
    type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 version.
    let get: libloading::Symbol<'_, GetFunctionList> =
        unsafe { library.get(b"C_GetFunctionList\0") }.map_err(|e| {
            format!(
                "{} is not a PKCS#11 module: {}",
                path.display(),
                error_chain(&e)
            )
        })?;
    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    // SAFETY: `list` is a valid out pointer.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!(
            "C_GetFunctionList of {} failed: {}",
            path.display(),
            p11wld::error::ckr_name(rv)
        ));
    }
    Ok(list)
}

/// Finds the extension through C_GetInterface("p11wld"), as any PKCS#11
/// 3.0 application would.
fn extension_list(
    library: &libloading::Library,
    path: &Path,
) -> Result<*const P11WLD_FUNCTION_LIST, String> {
    type GetInterface = unsafe extern "C" fn(
        *mut CK_UTF8CHAR,
        *mut CK_VERSION,
        *mut *mut CK_INTERFACE,
        CK_FLAGS,
    ) -> CK_RV;
    // SAFETY: C_GetInterface has this signature in PKCS#11 3.0.
    let get: libloading::Symbol<'_, GetInterface> = unsafe { library.get(b"C_GetInterface\0") }
        .map_err(|e| {
            format!(
                "{} has no C_GetInterface, so it is not libp11wld.so: {}",
                path.display(),
                error_chain(&e)
            )
        })?;
    let name: &CStr = c"p11wld";
    let mut interface: *mut CK_INTERFACE = ptr::null_mut();
    // SAFETY: the name is NUL-terminated and `interface` a valid out
    // pointer.
    let rv = unsafe {
        get(
            name.as_ptr() as *mut CK_UTF8CHAR,
            ptr::null_mut(),
            &mut interface,
            0,
        )
    };
    if rv != CKR_OK || interface.is_null() {
        return Err(format!(
            "{} has no \"p11wld\" interface ({}), so it is not libp11wld.so",
            path.display(),
            p11wld::error::ckr_name(rv)
        ));
    }
    // SAFETY: checked non-NULL; the interface is static in the library.
    let list = unsafe { (*interface).pFunctionList } as *const P11WLD_FUNCTION_LIST;
    if list.is_null() {
        return Err(format!(
            "the \"p11wld\" interface of {} has no function list",
            path.display()
        ));
    }

    // The structures' layout changes with the major version.
    // SAFETY: checked non-NULL; the list starts with its version.
    let version = unsafe { (*list).version };
    if u32::from(version.major) != sys::P11WLD_VERSION_MAJOR {
        return Err(format!(
            "{} has p11wld extension version {}.{}, but this program needs {}.x; install a \
             libp11wld.so and p11wld of one release",
            path.display(),
            version.major,
            version.minor,
            sys::P11WLD_VERSION_MAJOR
        ));
    }
    Ok(list)
}

/// Reads a list by the two-call convention, retrying while it grows.
fn fetch<T: Default + Clone>(
    name: &str,
    mut call: impl FnMut(*mut T, *mut sys::p11wld_ulong) -> CK_RV,
) -> Result<Vec<T>, String> {
    let failed = |rv| format!("{name} failed: {}", p11wld::error::ckr_name(rv));
    let mut count: sys::p11wld_ulong = 0;
    let rv = call(ptr::null_mut(), &mut count);
    if rv != CKR_OK {
        return Err(failed(rv));
    }
    for _ in 0..4 {
        let mut list = vec![T::default(); count as usize];
        let mut filled = count;
        match call(list.as_mut_ptr(), &mut filled) {
            CKR_OK => {
                list.truncate(filled as usize);
                return Ok(list);
            }
            CKR_BUFFER_TOO_SMALL => count = filled,
            rv => return Err(failed(rv)),
        }
    }
    Err(format!("{name} failed: the list kept growing"))
}

/// Returns the bytes of a NUL-terminated text field, without the NUL.
pub fn field_bytes(field: &[c_char]) -> &[u8] {
    // SAFETY: c_char and u8 have the same size and alignment.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(field.as_ptr().cast(), field.len()) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Reads a NUL-terminated text field, with invalid UTF-8 replaced.
pub fn text(field: &[c_char]) -> String {
    String::from_utf8_lossy(field_bytes(field)).into_owned()
}

/// Reads a NUL-terminated text field for a terminal: control characters
/// and invalid UTF-8 escaped, because a token's label is any bytes.
pub fn shown(field: &[c_char]) -> String {
    escape_nonprintable(field_bytes(field))
}
