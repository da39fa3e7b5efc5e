//! Mutexes and condition variables for the waits that can last long: the
//! health thread's tick, `C_WaitForSlotEvent` and the environment lease.
//!
//! They come from `std`, not parking_lot, so a forked child keeps working.
//! A thread parked in parking_lot has an entry in a queue of parking_lot's
//! global table, stored in the thread's thread-local data. After fork,
//! glibc reuses the stacks of the parent's other threads, and with them
//! that data, for the child's new threads. A child thread that parks then
//! links its entry into the stale one, the queue becomes a cycle, and the
//! next notify in the child loops forever. `std` waits on a futex inside
//! the condition variable itself and keeps no global state.

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
