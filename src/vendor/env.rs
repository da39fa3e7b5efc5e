//! The process environment a vendor module sees while it initializes.
//!
//! Vendor libraries such as SoftHSM2 (`SOFTHSM2_CONF`) and p11-kit-client.so
//! (`P11_KIT_SERVER_ADDRESS`) read their configuration from the environment,
//! so each `[[module]]` may name variables to set around its
//! `C_GetFunctionList` and `C_Initialize`. Changing the environment is not
//! thread-safe: another thread of the application that reads it at the same
//! moment races with this code. It happens only inside `C_Initialize` of
//! p11wld (and when a member module is initialized again), and the previous
//! values are restored right after.

use parking_lot::Mutex;

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with `vars` set in the process environment, then restores them.
pub fn with_env<R>(vars: &[(String, String)], f: impl FnOnce() -> R) -> R {
    if vars.is_empty() {
        return f();
    }
    let _guard = ENV_LOCK.lock();
    let saved: Vec<(String, Option<std::ffi::OsString>)> = vars
        .iter()
        .map(|(k, _)| (k.clone(), std::env::var_os(k)))
        .collect();
    for (key, value) in vars {
        std::env::set_var(key, value);
    }
    let result = f();
    for (key, old) in saved {
        match old {
            Some(v) => std::env::set_var(&key, v),
            None => std::env::remove_var(&key),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_set_then_restored() {
        std::env::set_var("P11WLD_TEST_KEEP", "old");
        std::env::remove_var("P11WLD_TEST_NEW");
        let vars = vec![
            ("P11WLD_TEST_KEEP".to_string(), "inner".to_string()),
            ("P11WLD_TEST_NEW".to_string(), "set".to_string()),
        ];
        let seen = with_env(&vars, || {
            (
                std::env::var("P11WLD_TEST_KEEP").unwrap(),
                std::env::var("P11WLD_TEST_NEW").unwrap(),
            )
        });
        assert_eq!(seen, ("inner".to_string(), "set".to_string()));
        assert_eq!(std::env::var("P11WLD_TEST_KEEP").unwrap(), "old");
        assert!(std::env::var_os("P11WLD_TEST_NEW").is_none());
    }
}
