//! Opening vendor libraries and fetching their function lists.

use super::env::with_env;
use super::VendorModule;
use crate::config::Config;
use cryptoki_sys::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Opens a shared object so that it binds its own symbols first.
///
/// RTLD_DEEPBIND keeps the vendor's internal calls to its own `C_*`
/// functions from resolving to ours when the application loaded p11wld
/// into the global namespace. RTLD_LOCAL keeps its symbols out of it. A
/// process that runs under a sanitizer (ThreadSanitizer, AddressSanitizer)
/// cannot load libraries with RTLD_DEEPBIND, so there it is left out.
fn open_library(path: &Path) -> Result<libloading::Library, String> {
    let mut flags = libc::RTLD_NOW | libc::RTLD_LOCAL;
    if !under_sanitizer() {
        flags |= libc::RTLD_DEEPBIND;
    }
    // SAFETY: loading a PKCS#11 module runs its initializers, which is what
    // the configuration asks for; the path is the operator's choice.
    let library = unsafe { libloading::os::unix::Library::open(Some(path), flags) }
        .map_err(|e| format!("cannot load {}: {}", path.display(), error_chain(&e)))?;
    Ok(library.into())
}

/// Formats an error with its sources, where the loader's own reason is.
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

/// Returns whether a sanitizer runtime is in the process.
fn under_sanitizer() -> bool {
    [c"__tsan_init", c"__asan_init"].iter().any(|name| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
        // looks the symbol up.
        !unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }.is_null()
    })
}

fn function_list(
    library: &libloading::Library,
    name: &str,
    path: &Path,
    env: &[(String, String)],
    lease: std::time::Duration,
) -> Result<*const CK_FUNCTION_LIST, String> {
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 version.
    let get: libloading::Symbol<'_, unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList\0") }.map_err(|e| {
            format!(
                "module {name}: {} has no C_GetFunctionList: {e}",
                path.display()
            )
        })?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid out pointer for the call.
    let rv = with_env(env, lease, || unsafe { get(&mut list) });
    if rv != CKR_OK {
        return Err(format!(
            "module {name}: C_GetFunctionList returned {}",
            crate::error::ckr_name(rv)
        ));
    }
    if list.is_null() {
        return Err(format!("module {name}: C_GetFunctionList returned NULL"));
    }
    Ok(list)
}

/// Loads every `[[module]]` of the configuration, in order.
///
/// Two entries that resolve to the same instance (the same function list)
/// are rejected, because one instance cannot be two HSMs.
pub fn load_modules(config: &Config) -> Result<Vec<Arc<VendorModule>>, String> {
    let mut libraries: HashMap<PathBuf, Arc<libloading::Library>> = HashMap::new();
    let mut modules: Vec<Arc<VendorModule>> = Vec::new();
    // A quarter of the call deadline, so modules that wait for a hung one
    // still initialize within the deadline that C_Initialize keeps.
    let lease = std::time::Duration::from_millis((config.health.call_deadline_ms / 4).max(100));

    for entry in &config.modules {
        let name = entry.name.get_ref().clone();
        let path = entry.path.get_ref().clone();
        let key = std::fs::canonicalize(&path).map_err(|e| {
            format!(
                "module {name}: cannot load {}: {e} (check [[module]] path in {})",
                path.display(),
                config.source.display()
            )
        })?;
        let library = match libraries.get(&key) {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(open_library(&path).map_err(|e| {
                    format!(
                        "module {name}: {e} (check [[module]] path in {})",
                        config.source.display()
                    )
                })?);
                libraries.insert(key, l.clone());
                l
            }
        };
        let env: Vec<(String, String)> = entry
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let list = function_list(&library, &name, &path, &env, lease)?;
        if let Some(other) = modules.iter().find(|m| m.list_ptr() == list) {
            return Err(format!(
                "modules {} and {name} resolve to the same instance of {}; \
                 this library returns one function list for every load, so it \
                 can serve only one [[module]] entry (put all its tokens in one \
                 entry)",
                other.name,
                path.display()
            ));
        }
        modules.push(Arc::new(VendorModule {
            name,
            path,
            env,
            list,
            usable: AtomicBool::new(false),
            owns_init: AtomicBool::new(false),
            initializing: AtomicBool::new(false),
            env_lease: lease,
            _library: library,
        }));
    }
    Ok(modules)
}
