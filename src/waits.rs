//! Mutexes and condition variables from `std` for the waits that can last
//! long: the health thread's tick, `C_WaitForSlotEvent` and the
//! environment lease.
//!
//! parking_lot keeps a parked thread's queue entry in a global table and in
//! the thread's thread-local data. After fork, glibc reuses the parent's
//! thread stacks, and so that data, for the child's new threads. A child
//! thread that parks then links its entry into a stale one, and the next
//! notify loops forever. `std` waits on a futex inside the condition
//! variable and keeps no global state, so a forked child keeps working.

use std::sync::PoisonError;
pub use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Locks `mutex`, ignoring poisoning as parking_lot does: its holders change
/// the data in single assignments, so a panic leaves it consistent.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` until notified.
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` until notified or `timeout` passed.
pub fn wait_for<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    match condvar.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}
