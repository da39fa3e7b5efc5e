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
//!
//! One module at a time has its variables set. A vendor call that hangs
//! (a stopped HSM process) would keep every other module waiting, so the
//! hold is a lease: past it, the next module restores the old values and
//! sets its own. A vendor reads its variables when its call starts, so the
//! hung call has read them already.

use crate::waits::{self, Condvar, Mutex};
use std::ffi::OsString;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Holder {
    /// The call that has its variables set; 0 when none.
    owner: u64,
    next: u64,
    /// The values the owner's variables had before.
    saved: Vec<(String, Option<OsString>)>,
}

static HOLDER: Mutex<Holder> = Mutex::new(Holder {
    owner: 0,
    next: 0,
    saved: Vec::new(),
});
static FREED: Condvar = Condvar::new();

fn restore(saved: &[(String, Option<OsString>)]) {
    for (key, old) in saved {
        match old {
            Some(value) => std::env::set_var(key, value),
            None => std::env::remove_var(key),
        }
    }
}

/// Gives the environment back when the call ends, also by a panic.
struct Lease(u64);

impl Drop for Lease {
    fn drop(&mut self) {
        let mut holder = waits::lock(&HOLDER);
        if holder.owner == self.0 {
            let saved = std::mem::take(&mut holder.saved);
            restore(&saved);
            holder.owner = 0;
            FREED.notify_one();
        }
    }
}

/// Runs `f` with `vars` set in the process environment, then restores them.
/// Waits at most `lease` for another module's call to end; see the module
/// documentation. Names and values must not contain `=` or NUL bytes, which
/// the configuration rejects.
pub fn with_env<R>(vars: &[(String, String)], lease: Duration, f: impl FnOnce() -> R) -> R {
    if vars.is_empty() {
        return f();
    }
    let _lease = {
        let mut holder = waits::lock(&HOLDER);
        let started = Instant::now();
        while holder.owner != 0 {
            let left = lease.saturating_sub(started.elapsed());
            if left.is_zero() {
                log::warn!(
                    "a vendor call kept its environment variables set for longer than \
                     {lease:?}; they are restored so another module can initialize"
                );
                let saved = std::mem::take(&mut holder.saved);
                restore(&saved);
                holder.owner = 0;
                break;
            }
            holder = waits::wait_for(&FREED, holder, left);
        }
        holder.next += 1;
        holder.owner = holder.next;
        holder.saved = vars
            .iter()
            .map(|(key, _)| (key.clone(), std::env::var_os(key)))
            .collect();
        for (key, value) in vars {
            std::env::set_var(key, value);
        }
        Lease(holder.owner)
    };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_set_then_restored() {
        std::env::set_var("P11WLD_TEST_KEEP", "old");
        std::env::remove_var("P11WLD_TEST_NEW");
        let vars = vars(&[("P11WLD_TEST_KEEP", "inner"), ("P11WLD_TEST_NEW", "set")]);
        let seen = with_env(&vars, Duration::from_secs(1), || {
            (
                std::env::var("P11WLD_TEST_KEEP").unwrap(),
                std::env::var("P11WLD_TEST_NEW").unwrap(),
            )
        });
        assert_eq!(seen, ("inner".to_string(), "set".to_string()));
        assert_eq!(std::env::var("P11WLD_TEST_KEEP").unwrap(), "old");
        assert!(std::env::var_os("P11WLD_TEST_NEW").is_none());
    }

    #[test]
    fn env_restored_after_panic() {
        std::env::remove_var("P11WLD_TEST_PANIC");
        let vars = vars(&[("P11WLD_TEST_PANIC", "set")]);
        let result = std::panic::catch_unwind(|| {
            with_env(&vars, Duration::from_secs(1), || {
                panic!("vendor call panicked")
            })
        });
        assert!(result.is_err());
        assert!(std::env::var_os("P11WLD_TEST_PANIC").is_none());
    }

    #[test]
    fn hung_holder_loses_its_lease() {
        std::env::remove_var("P11WLD_TEST_LEASE_A");
        let (entered, enter) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let hung = std::thread::spawn(move || {
            with_env(
                &vars(&[("P11WLD_TEST_LEASE_A", "a")]),
                Duration::from_secs(5),
                || {
                    entered.send(()).unwrap();
                    released.recv().unwrap();
                },
            )
        });
        enter.recv().unwrap();
        let started = Instant::now();
        let seen = with_env(
            &vars(&[("P11WLD_TEST_LEASE_B", "b")]),
            Duration::from_millis(100),
            || {
                (
                    std::env::var_os("P11WLD_TEST_LEASE_A"),
                    std::env::var("P11WLD_TEST_LEASE_B").unwrap(),
                )
            },
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(seen, (None, "b".to_string()));
        release.send(()).unwrap();
        hung.join().unwrap();
        assert!(std::env::var_os("P11WLD_TEST_LEASE_A").is_none());
        assert!(std::env::var_os("P11WLD_TEST_LEASE_B").is_none());
    }
}
