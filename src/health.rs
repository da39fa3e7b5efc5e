//! Member health: which return codes mean a member is gone, the background
//! thread that finds hung calls and probes members that are down, and
//! re-admission.
//!
//! The health thread never calls a vendor itself and holds no lock that an
//! application call waits on. Each probe of a module runs in a thread of
//! its own, so a member that hangs (a stopped HSM process) blocks its probe
//! only. A probe counts as a call in flight, so `C_Finalize` waits for it.

use crate::instance::{self, Instance};
use crate::waits::{self, Condvar};
use crate::wld::login;
use crate::wld::session::BUSY_CALL_BITS;
use crate::wld::Member;
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Returns whether `rv`, returned by a member for a call on a session the
/// application did not close, means that the device or token is gone,
/// rather than that the request was wrong.
///
/// CKR_GENERAL_ERROR counts: every member responded before, when its token
/// was scanned. CKR_SESSION_HANDLE_INVALID and CKR_SESSION_CLOSED count
/// because the proxy closes real sessions only when the application closes
/// the virtual ones, so a real session that vanished means the vendor lost
/// its state (p11-kit-client.so after its server restarted, for one).
pub fn is_member_failure(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_REMOVED
            | CKR_DEVICE_MEMORY
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_GENERAL_ERROR
            | CKR_SESSION_HANDLE_INVALID
            | CKR_SESSION_CLOSED
            | CKR_CRYPTOKI_NOT_INITIALIZED
    )
}

/// The background thread and what it remembers between ticks.
#[derive(Default)]
pub struct Health {
    stop: waits::Mutex<bool>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
    state: Mutex<TickState>,
}

#[derive(Default)]
struct TickState {
    /// Busy markers seen at the last tick, with when each was first seen.
    busy: HashMap<usize, (u64, Instant)>,
    /// Whether each WLD slot had its token present at the last tick.
    present: HashMap<CK_SLOT_ID, bool>,
    /// Modules with a probe running.
    probing: Vec<usize>,
    last_probe: Option<Instant>,
}

/// A pointer to the instance for the health and probe threads; the
/// instance outlives them, see [`Health::start`].
#[derive(Clone, Copy)]
struct InstancePtr(*const Instance);

// SAFETY: the instance is Sync, and C_Finalize joins the health thread and
// waits for every probe (counted as a call in flight) before freeing it.
unsafe impl Send for InstancePtr {}

impl InstancePtr {
    /// # Safety
    /// The instance is alive: the caller is the health thread before it
    /// was joined, or a probe counted as in flight.
    unsafe fn get(&self) -> &Instance {
        // SAFETY: forwarded from the caller's contract.
        unsafe { &*self.0 }
    }
}

impl Health {
    /// Starts the health thread for `instance`.
    ///
    /// # Safety
    /// `instance` stays alive until [`Health::stop`] returned and no probe
    /// is in flight.
    pub unsafe fn start(&self, instance: *const Instance) {
        let pointer = InstancePtr(instance);
        let spawned = std::thread::Builder::new()
            .name("p11wld-health".into())
            .spawn(move || {
                // SAFETY: the caller of `start` keeps the instance alive
                // until this thread is joined.
                let instance = unsafe { pointer.get() };
                instance.health.run(instance, pointer);
            });
        match spawned {
            Ok(handle) => *self.thread.lock() = Some(handle),
            Err(e) => {
                log::error!("cannot start the health thread: {e}; members that go down stay down")
            }
        }
    }

    /// Stops and joins the health thread.
    pub fn stop(&self) {
        *waits::lock(&self.stop) = true;
        self.wake.notify_all();
        if let Some(handle) = self.thread.lock().take() {
            if handle.join().is_err() {
                log::error!("the health thread panicked");
            }
        }
    }

    fn run(&self, instance: &Instance, pointer: InstancePtr) {
        let config = &instance.config.health;
        let tick = Duration::from_millis(
            config
                .probe_interval_ms
                .min(config.call_deadline_ms / 2)
                .max(10),
        );
        loop {
            {
                let stop = waits::lock(&self.stop);
                if *stop {
                    return;
                }
                let stop = waits::wait_for(&self.wake, stop, tick);
                if *stop {
                    return;
                }
            }
            self.tick(instance, |index| spawn_probe(pointer, index));
        }
    }

    /// Runs the checks of one tick inline, for an application that does not
    /// let the module create threads: at most once per probe interval.
    pub fn poll_inline(&self, instance: &Instance) {
        let interval = Duration::from_millis(instance.config.health.probe_interval_ms);
        {
            let state = self.state.lock();
            if state.last_probe.is_some_and(|t| t.elapsed() < interval) {
                return;
            }
        }
        self.tick(instance, |index| {
            probe_module(instance, index);
            instance.health.state.lock().probing.retain(|&m| m != index);
        });
    }

    /// Runs one round: finds hung calls, probes modules with members down,
    /// logs the sessions moved, and sends slot events.
    fn tick(&self, instance: &Instance, probe: impl Fn(usize)) {
        self.find_hung_calls(instance);
        let interval = Duration::from_millis(instance.config.health.probe_interval_ms);
        let due = {
            let mut state = self.state.lock();
            let due = state.last_probe.is_none_or(|t| t.elapsed() >= interval);
            if due {
                state.last_probe = Some(Instant::now());
            }
            due
        };
        if due {
            for index in modules_to_probe(instance) {
                let start = {
                    let mut state = self.state.lock();
                    let idle = !state.probing.contains(&index);
                    if idle {
                        state.probing.push(index);
                    }
                    idle
                };
                if start {
                    probe(index);
                }
            }
        }
        log_counters(instance);
        self.send_slot_events(instance);
    }

    /// Marks down the members of calls that have been running for longer
    /// than the call deadline.
    fn find_hung_calls(&self, instance: &Instance) {
        let deadline = Duration::from_millis(instance.config.health.call_deadline_ms);
        let markers = instance.sessions.busy_markers();
        let members = instance.topology.members();
        let mut state = self.state.lock();
        let now = Instant::now();
        let mut seen = HashMap::with_capacity(markers.len());
        for (index, marker) in markers {
            let first = match state.busy.get(&index) {
                Some(&(previous, first)) if previous == marker => first,
                _ => now,
            };
            if now.duration_since(first) >= deadline {
                let member_index = (marker >> BUSY_CALL_BITS) as usize;
                if let Some(member) = member_index.checked_sub(1).and_then(|i| members.get(i)) {
                    member.mark_hung(deadline);
                }
            }
            seen.insert(index, (marker, first));
        }
        state.busy = seen;
    }

    /// Records whether each WLD slot has its token now, as the state that
    /// later slot events are changes of.
    pub fn record_presence(&self, instance: &Instance) {
        let mut state = self.state.lock();
        for slot in instance.topology.slots() {
            state.present.insert(slot.id, slot.token_present());
        }
    }

    /// Sends a slot event for each WLD slot whose token appeared or went
    /// away since the last tick. A slot that is new counts as an appearance
    /// when its token is present.
    fn send_slot_events(&self, instance: &Instance) {
        let mut state = self.state.lock();
        for slot in instance.topology.slots() {
            let present = slot.token_present();
            let before = state.present.insert(slot.id, present);
            if before.unwrap_or(false) != present {
                log::info!(
                    "WLD slot {} ({}): token {}",
                    slot.id,
                    slot.label,
                    if present {
                        "present again"
                    } else {
                        "not present: no member is up"
                    }
                );
                instance.events.push(slot.id);
            }
        }
    }
}

/// Returns the modules with a member down, or that never responded.
fn modules_to_probe(instance: &Instance) -> Vec<usize> {
    let members = instance.topology.members();
    (0..instance.modules.len())
        .filter(|&index| {
            let module = &instance.modules[index];
            let mut own = members
                .iter()
                .filter(|m| m.module_index == index)
                .peekable();
            !module.is_usable() || own.peek().is_none() || own.any(|m| !m.is_up())
        })
        .collect()
}

/// Starts a probe of module `index` in a thread of its own.
fn spawn_probe(pointer: InstancePtr, index: usize) {
    let guard = instance::InFlight::enter();
    let spawned = std::thread::Builder::new()
        .name("p11wld-probe".into())
        .spawn(move || {
            let _guard = guard;
            // SAFETY: this probe is counted in flight, so C_Finalize keeps
            // the instance alive until it returns.
            let instance = unsafe { pointer.get() };
            probe_module(instance, index);
            instance.health.state.lock().probing.retain(|&m| m != index);
        });
    if let Err(e) = spawned {
        log::error!("cannot start a probe thread: {e}");
        // SAFETY: only the health thread calls this, before it is joined.
        let instance = unsafe { pointer.get() };
        instance.health.state.lock().probing.retain(|&m| m != index);
    }
}

/// Probes one module: asks each member that is down for its token, and
/// when the module no longer answers at all, initializes it again first.
/// A member is re-admitted when its token answers with the same label and
/// serial.
pub fn probe_module(instance: &Instance, index: usize) {
    let module = &instance.modules[index];
    if module.is_initializing() {
        // Its first C_Initialize has not returned yet.
        return;
    }
    let members: Vec<Arc<Member>> = instance
        .topology
        .members()
        .into_iter()
        .filter(|m| m.module_index == index)
        .collect();

    let answers = module.is_usable()
        && members
            .iter()
            .filter(|m| !m.is_up())
            .all(|member| token_matches(member).is_ok());
    let any_up = members.iter().any(|m| m.is_up());
    let reinitialize = !module.is_usable()
        || (!answers && !any_up)
        || (members.is_empty() && module.slot_list(false).map_or(true, |s| s.is_empty()));

    if reinitialize {
        // Every member of the module is down, so initializing it again
        // disturbs no healthy session; but a call still running in it must
        // return first.
        if members.iter().any(|m| has_call_in_progress(instance, m)) {
            log::debug!(
                "module {}: a call is still running; probing again later",
                module.name
            );
            return;
        }
        if let Err(rv) = module.reinitialize() {
            log::debug!("module {}: initializing again failed: {rv}", module.name);
            return;
        }
        for member in &members {
            member.drop_service();
            member.orphans.lock().clear();
            // The new instance starts logged out.
            member.login_epoch.store(0, Ordering::Release);
            instance.objects.forget_member(member);
            member.next_generation();
        }
    }
    if reinitialize || members.is_empty() {
        // Only this module is scanned: another one may hang.
        instance
            .topology
            .refresh_modules(&instance.config, &instance.modules, &[index]);
    }

    for member in members.iter().filter(|m| !m.is_up()) {
        match token_matches(member) {
            Ok(()) => readmit(instance, member, !reinitialize),
            Err(reason) => log::debug!("member {} stays down: {reason}", member.describe()),
        }
    }
}

/// Returns whether a session call on `member` is running now.
fn has_call_in_progress(instance: &Instance, member: &Member) -> bool {
    instance
        .sessions
        .busy_markers()
        .iter()
        .any(|(_, marker)| (marker >> BUSY_CALL_BITS) as usize == member.index + 1)
}

/// Checks that the member's slot contains its token again.
fn token_matches(member: &Member) -> Result<(), String> {
    let info = member
        .module
        .token_info(member.slot_id)
        .map_err(|rv| format!("C_GetTokenInfo returned {rv}"))?;
    let label = crate::wld::topology::trim_padded_bytes(&info.label);
    let serial = crate::wld::topology::trim_padded(&info.serialNumber);
    if label != member.label_bytes.as_slice() || serial != member.serial {
        return Err(format!(
            "the slot now holds token {:?} serial {serial}",
            String::from_utf8_lossy(label)
        ));
    }
    Ok(())
}

/// Marks a member up again. When its module was not initialized again,
/// the real sessions abandoned on it are closed first.
fn readmit(instance: &Instance, member: &Member, close_orphans: bool) {
    if close_orphans {
        let orphans: Vec<CK_SESSION_HANDLE> = member.orphans.lock().drain(..).collect();
        for real in orphans {
            crate::vcall!(member.module, C_CloseSession(real));
        }
        if let Ok(slot) = instance.topology.slot(member.wld_slot) {
            login::reconcile(&slot, member);
        }
    }
    if member.mark_up() {
        log::warn!(
            "member {} is up again and takes new sessions",
            member.describe()
        );
        if let Ok(slot) = instance.topology.slot(member.wld_slot) {
            slot.refresh_mechanisms();
        }
    }
}

/// Logs the sessions moved and operations retried since the last tick,
/// per member, as counts.
fn log_counters(instance: &Instance) {
    for member in instance.topology.members() {
        let moved = member.moved.swap(0, Ordering::Relaxed);
        let retried = member.retried.swap(0, Ordering::Relaxed);
        if moved > 0 || retried > 0 {
            log::warn!(
                "member {}: sessions moved to other members: {moved}, calls retried there: {retried}",
                member.describe()
            );
        }
    }
}

/// Returns whether `rv`, a member failure code, may also be a vendor's
/// answer to a request it could not serve, so the member must be asked
/// before it is marked down. The session codes, CKR_DEVICE_REMOVED and
/// CKR_TOKEN_NOT_PRESENT name the loss themselves.
pub fn may_be_request_error(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_GENERAL_ERROR | CKR_DEVICE_ERROR | CKR_DEVICE_MEMORY | CKR_TOKEN_NOT_RECOGNIZED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_codes_are_failures() {
        for rv in [
            CKR_DEVICE_ERROR,
            CKR_DEVICE_REMOVED,
            CKR_TOKEN_NOT_PRESENT,
            CKR_DEVICE_MEMORY,
            CKR_GENERAL_ERROR,
            CKR_SESSION_HANDLE_INVALID,
            CKR_SESSION_CLOSED,
        ] {
            assert!(is_member_failure(rv), "{rv:#x}");
        }
    }

    #[test]
    fn request_codes_are_not_failures() {
        for rv in [
            CKR_OK,
            CKR_ARGUMENTS_BAD,
            CKR_PIN_INCORRECT,
            CKR_KEY_HANDLE_INVALID,
            CKR_MECHANISM_INVALID,
            CKR_BUFFER_TOO_SMALL,
            CKR_OBJECT_HANDLE_INVALID,
            CKR_USER_NOT_LOGGED_IN,
        ] {
            assert!(!is_member_failure(rv), "{rv:#x}");
        }
    }
}
