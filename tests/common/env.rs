//! Environment variables set for a scope.
//!
//! The process environment is global, so the tests that use these run in
//! processes of their own (see `isolate`).

use std::ffi::{OsStr, OsString};

/// An environment variable set until the guard is dropped, which restores
/// the previous value or removes the variable again.
#[must_use = "the variable is restored when the guard is dropped"]
pub struct ScopedEnv {
    name: OsString,
    previous: Option<OsString>,
}

impl ScopedEnv {
    /// Sets `name` to `value` for the lifetime of the returned guard.
    pub fn set(name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ScopedEnv {
        let name = name.as_ref().to_owned();
        let previous = std::env::var_os(&name);
        std::env::set_var(&name, value);
        ScopedEnv { name, previous }
    }

    /// Removes `name` for the lifetime of the returned guard.
    pub fn remove(name: impl AsRef<OsStr>) -> ScopedEnv {
        let name = name.as_ref().to_owned();
        let previous = std::env::var_os(&name);
        std::env::remove_var(&name);
        ScopedEnv { name, previous }
    }
}

impl Drop for ScopedEnv {
    fn drop(&mut self) {
        match &self.previous {
            Some(value) => std::env::set_var(&self.name, value),
            None => std::env::remove_var(&self.name),
        }
    }
}
