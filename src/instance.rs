//! The initialized module: one [`Instance`] from `C_Initialize` to
//! `C_Finalize`, and the process-wide state that finds it.
//!
//! Every entry point reaches the instance through [`enter`], which counts
//! the call as in flight on one of several shards, picked by the caller's
//! stack address. So `C_Finalize` can wait for calls in flight to return
//! before it frees anything, without a global lock or a shared counter on
//! the path of every call.

use crate::config::Config;
use crate::error::{ckr_name, Result, Rv};
use crate::events::SlotEvents;
use crate::health::Health;
use crate::logging;
use crate::vendor::{self, VendorModule};
use crate::wld::failover::{self, Retry};
use crate::wld::object::ObjectTable;
use crate::wld::session::{Session, SessionTable};
use crate::wld::Topology;
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

pub struct Instance {
    pub config: Config,
    pub modules: Vec<Arc<VendorModule>>,
    pub topology: Topology,
    pub sessions: SessionTable,
    pub objects: ObjectTable,
    pub events: SlotEvents,
    pub health: Health,
    /// Whether the application lets the module create threads; without,
    /// health checks run inline in some calls.
    pub threads: bool,
    /// Whether the warning about token-changing calls was logged.
    warned_token_change: AtomicBool,
}

impl Instance {
    /// Loads and initializes the configured modules and scans their tokens.
    fn start(
        config: Config,
        after_fork: bool,
        threads: bool,
    ) -> std::result::Result<Instance, String> {
        let modules = vendor::load_modules(&config)?;
        let deadline = Duration::from_millis(config.health.call_deadline_ms);
        if threads {
            initialize_within(&modules, after_fork, deadline);
        } else {
            // NOTE: without threads of its own, the module cannot bound a
            // vendor's C_Initialize: a stopped HSM process blocks this call.
            for module in &modules {
                if let Err(rv) = module.initialize(after_fork) {
                    log_init_failure(module, rv);
                }
            }
        }
        let instance = Instance {
            config,
            modules,
            topology: Topology::new(),
            sessions: SessionTable::new(),
            objects: ObjectTable::new(),
            events: SlotEvents::default(),
            health: Health::default(),
            threads,
            warned_token_change: AtomicBool::new(false),
        };
        instance
            .topology
            .refresh(&instance.config, &instance.modules);
        instance.health.record_presence(&instance);
        Ok(instance)
    }

    /// Finalizes every module this instance initialized, except those whose
    /// members are all down: one of them may hang, and C_Finalize must not.
    fn shut_down(&self) {
        let members = self.topology.members();
        for (index, module) in self.modules.iter().enumerate() {
            let mut own = members
                .iter()
                .filter(|m| m.module_index == index)
                .peekable();
            if own.peek().is_some() && !own.any(|m| m.is_up()) {
                log::info!(
                    "module {}: every member is down; it is not finalized",
                    module.name
                );
                continue;
            }
            module.finalize();
        }
    }

    /// Runs the health checks inline when no health thread runs them.
    pub fn poll_health(&self) {
        if !self.threads {
            self.health.poll_inline(self);
        }
    }

    /// Runs `f` on the session `handle`; see [`failover::call`].
    #[inline]
    pub fn session<R>(
        &self,
        handle: CK_SESSION_HANDLE,
        retry: Retry,
        f: impl FnMut(&mut Session) -> Result<R>,
    ) -> Result<R> {
        failover::call(self, handle, retry, f)
    }

    /// Logs once per process that a token-changing call reached one member
    /// only.
    pub fn note_token_change(&self, call: &str) {
        if !self.warned_token_change.swap(true, Ordering::Relaxed) {
            log::warn!(
                "{call} changed a token object on one member of a WLD slot only; the members \
                 differ until they are replicated (p11wld replicate)"
            );
        }
    }
}

fn log_init_failure(module: &VendorModule, rv: Rv) {
    log::error!(
        "module {}: C_Initialize failed: {rv}; its tokens stay unavailable until it answers",
        module.name
    );
}

/// Initializes every module, each in a thread of its own, and waits for
/// them at most `deadline` in all. A module whose C_Initialize has not
/// returned by then (a stopped HSM process) starts out unavailable; its
/// thread finishes the call whenever the vendor returns, and the health
/// thread scans its tokens afterwards.
fn initialize_within(modules: &[Arc<VendorModule>], after_fork: bool, deadline: Duration) {
    let started = Instant::now();
    let pending: Vec<_> = modules
        .iter()
        .map(|module| {
            let (done, result) = std::sync::mpsc::channel();
            let worker = module.clone();
            module.set_initializing(true);
            let spawned = std::thread::Builder::new()
                .name("p11wld-init".into())
                .spawn(move || {
                    let outcome = worker.initialize(after_fork);
                    worker.set_initializing(false);
                    // The receiver is gone when the deadline passed.
                    let _ = done.send(outcome);
                });
            if let Err(e) = spawned {
                log::warn!(
                    "cannot start a thread to initialize module {}: {e}",
                    module.name
                );
                let outcome = module.initialize(after_fork);
                module.set_initializing(false);
                return (module, Some(outcome), None);
            }
            (module, None, Some(result))
        })
        .collect();
    for (module, outcome, result) in pending {
        let outcome = match (outcome, result) {
            (Some(outcome), _) => Some(outcome),
            (None, Some(result)) => result
                .recv_timeout(deadline.saturating_sub(started.elapsed()))
                .ok(),
            (None, None) => None,
        };
        match outcome {
            Some(Ok(())) => {}
            Some(Err(rv)) => log_init_failure(module, rv),
            None => log::error!(
                "module {}: C_Initialize did not return within {deadline:?}; its tokens stay \
                 unavailable until it does",
                module.name
            ),
        }
    }
}

/// The current instance; NULL while the module is not initialized.
static CURRENT: AtomicPtr<Instance> = AtomicPtr::new(ptr::null_mut());
/// Serializes `C_Initialize` and `C_Finalize`.
static LIFECYCLE: Mutex<()> = Mutex::new(());
static ATFORK: Once = Once::new();
/// Set in a forked child, whose vendors may keep their parent's state.
static FORKED: AtomicBool = AtomicBool::new(false);

const SHARDS: usize = 16;

#[repr(align(64))]
struct Shard(AtomicUsize);

static IN_FLIGHT: [Shard; SHARDS] = [const { Shard(AtomicUsize::new(0)) }; SHARDS];

/// Returns the in-flight counter of the calling thread's shard, chosen by
/// the address of the thread's stack. Threads' stacks lie megabytes apart,
/// so threads mostly count on different cache lines. The choice costs a few
/// instructions, where a thread-local variable in a library loaded with
/// dlopen costs a call to `__tls_get_addr` on every access. Which shard a
/// call counts on matters for speed only: `C_Finalize` adds them all up.
#[inline(always)]
fn shard() -> &'static AtomicUsize {
    let address = stack_address();
    // Bits from 1 MiB up tell stacks apart; the multiplication mixes them
    // into the top bits, so stacks at any spacing spread over the shards.
    let index = ((address >> 20) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60;
    &IN_FLIGHT[index as usize % SHARDS].0
}

/// Expands to the instruction that copies the stack pointer to a register.
#[cfg(target_arch = "x86_64")]
macro_rules! read_stack_pointer {
    () => {
        "mov {}, rsp"
    };
}
#[cfg(target_arch = "aarch64")]
macro_rules! read_stack_pointer {
    () => {
        "mov {}, sp"
    };
}

/// Returns an address within the calling thread's stack: the stack
/// pointer, read with one instruction where the architecture is known.
#[inline(always)]
fn stack_address() -> usize {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let pointer: usize;
        // SAFETY: copies the stack pointer to a register, nothing else.
        unsafe {
            std::arch::asm!(
                read_stack_pointer!(),
                out(reg) pointer,
                options(nomem, nostack, preserves_flags)
            )
        };
        pointer
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let marker = 0u8;
        std::hint::black_box(&marker) as *const u8 as usize
    }
}

/// A call counted as in flight until the guard drops, also when it moves
/// to another thread (a probe started by the health thread).
pub struct InFlight(&'static AtomicUsize);

impl InFlight {
    pub fn enter() -> InFlight {
        let shard = shard();
        shard.fetch_add(1, Ordering::SeqCst);
        InFlight(shard)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

fn in_flight() -> usize {
    IN_FLIGHT.iter().map(|s| s.0.load(Ordering::SeqCst)).sum()
}

/// Runs `f` on the current instance and returns its result as a CK_RV:
/// CKR_CRYPTOKI_NOT_INITIALIZED without an instance, CKR_GENERAL_ERROR if
/// `f` panics. The instance stays alive until `f` returns.
#[inline(always)]
pub fn enter(name: &'static str, f: impl FnOnce(&Instance) -> Result<()>) -> CK_RV {
    let shard = shard();
    shard.fetch_add(1, Ordering::SeqCst);
    let current = CURRENT.load(Ordering::SeqCst);
    let rv = if current.is_null() {
        CKR_CRYPTOKI_NOT_INITIALIZED
    } else {
        // SAFETY: `C_Finalize` frees the instance only after it took it out
        // of CURRENT and saw no call in flight; this call was counted before
        // it read CURRENT.
        let instance = unsafe { &*current };
        guard(name, || f(instance))
    };
    shard.fetch_sub(1, Ordering::Release);
    rv
}

/// Runs `f`, turning its result into a CK_RV and a panic into
/// CKR_GENERAL_ERROR, so no panic crosses the C ABI.
#[inline(always)]
pub fn guard(name: &'static str, f: impl FnOnce() -> Result<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(Rv(rv))) => {
            if log::log_enabled!(log::Level::Debug) {
                log_failure(name, rv);
            }
            rv
        }
        Err(panic) => log_panic(name, panic),
    }
}

/// Logs the failure of a call, at debug level.
#[cold]
#[inline(never)]
fn log_failure(name: &'static str, rv: CK_RV) {
    log::debug!("{name} returned {}", ckr_name(rv));
}

/// Logs a panic caught in a call, and returns CKR_GENERAL_ERROR.
#[cold]
#[inline(never)]
fn log_panic(name: &'static str, panic: Box<dyn std::any::Any + Send>) -> CK_RV {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    log::error!("{name} panicked: {message}");
    CKR_GENERAL_ERROR
}

/// Checks CK_C_INITIALIZE_ARGS as PKCS#11 prescribes, and returns whether
/// the module may create threads.
///
/// # Safety
/// `args` is NULL or points to a CK_C_INITIALIZE_ARGS.
unsafe fn check_init_args(args: *const CK_C_INITIALIZE_ARGS) -> Result<bool> {
    if args.is_null() {
        return Ok(true);
    }
    // SAFETY: the caller passes a valid pointer when it is not NULL.
    let args = unsafe { &*args };
    if !args.pReserved.is_null() {
        return Err(Rv(CKR_ARGUMENTS_BAD));
    }
    let callbacks = [
        args.CreateMutex.is_some(),
        args.DestroyMutex.is_some(),
        args.LockMutex.is_some(),
        args.UnlockMutex.is_some(),
    ];
    let supplied = callbacks.iter().filter(|set| **set).count();
    if supplied != 0 && supplied != callbacks.len() {
        return Err(Rv(CKR_ARGUMENTS_BAD));
    }
    if supplied != 0 && args.flags & CKF_OS_LOCKING_OK == 0 {
        // The application requires its own mutexes, and the proxy locks
        // with the operating system's only.
        return Err(Rv(CKR_CANT_LOCK));
    }
    Ok(args.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS == 0)
}

/// `C_Initialize`.
///
/// # Safety
/// `args` is NULL or points to a CK_C_INITIALIZE_ARGS.
pub unsafe fn initialize(args: *const CK_C_INITIALIZE_ARGS) -> CK_RV {
    guard("C_Initialize", || {
        // SAFETY: forwarded from the caller's contract.
        let threads = unsafe { check_init_args(args) }?;
        let _lifecycle = LIFECYCLE.lock();
        if !CURRENT.load(Ordering::SeqCst).is_null() {
            return Err(Rv(CKR_CRYPTOKI_ALREADY_INITIALIZED));
        }
        logging::init_default();
        let config = Config::load().map_err(|e| {
            log::error!("C_Initialize failed: {e}");
            Rv(CKR_GENERAL_ERROR)
        })?;
        logging::apply(&config.log);
        let after_fork = FORKED.load(Ordering::SeqCst);
        let instance = Instance::start(config, after_fork, threads).map_err(|e| {
            log::error!("C_Initialize failed: {e}");
            Rv(CKR_GENERAL_ERROR)
        })?;
        ATFORK.call_once(register_atfork);
        let instance = Box::into_raw(Box::new(instance));
        if threads {
            // SAFETY: C_Finalize stops the health thread and waits for its
            // probes before it frees the instance.
            unsafe { (*instance).health.start(instance) };
        }
        CURRENT.store(instance, Ordering::SeqCst);
        Ok(())
    })
}

/// `C_Finalize`. Waits for calls in flight to return (up to the call
/// deadline), then finalizes the vendors and frees the instance.
pub fn finalize(reserved: CK_VOID_PTR) -> CK_RV {
    guard("C_Finalize", || {
        let _lifecycle = LIFECYCLE.lock();
        if CURRENT.load(Ordering::SeqCst).is_null() {
            return Err(Rv(CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        if !reserved.is_null() {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        let current = CURRENT.swap(ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: only this function frees the instance, under LIFECYCLE.
        let instance = unsafe { &*current };
        instance.events.shut_down();
        instance.health.stop();

        let deadline = Duration::from_millis(instance.config.health.call_deadline_ms);
        let started = Instant::now();
        while in_flight() > 0 {
            if started.elapsed() > deadline {
                log::error!(
                    "C_Finalize: {} calls are still running after {deadline:?}; the vendor \
                     modules stay initialized and the module's state is not freed",
                    in_flight()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: the instance came from Box::into_raw in `initialize`, is
        // out of CURRENT, and no call uses it any more.
        let instance = unsafe { Box::from_raw(current) };
        instance.shut_down();
        drop(instance);
        Ok(())
    })
}

/// Makes a forked child start uninitialized, as PKCS#11 expects: its
/// threads, sessions and vendor connections are not the parent's.
fn register_atfork() {
    /// Whether `prepare` took LIFECYCLE. It does not when the forking
    /// thread is inside `C_Initialize` or `C_Finalize` itself (a vendor that
    /// spawns a helper process), because the lock is not reentrant.
    static TAKEN: AtomicBool = AtomicBool::new(false);

    extern "C" fn prepare() {
        // Held across fork, so the child never inherits it locked by a
        // thread that does not exist there.
        let taken = LIFECYCLE
            .try_lock_for(Duration::from_secs(5))
            .map(std::mem::forget)
            .is_some();
        TAKEN.store(taken, Ordering::SeqCst);
    }
    extern "C" fn parent() {
        if TAKEN.swap(false, Ordering::SeqCst) {
            // SAFETY: `prepare` locked it in this thread and leaked the guard.
            unsafe { LIFECYCLE.force_unlock() };
        }
    }
    extern "C" fn child() {
        // The parent's instance is leaked: its locks may be held by threads
        // that do not exist here, so nothing of it is touched.
        CURRENT.store(ptr::null_mut(), Ordering::SeqCst);
        for shard in &IN_FLIGHT {
            shard.0.store(0, Ordering::SeqCst);
        }
        FORKED.store(true, Ordering::SeqCst);
        if TAKEN.swap(false, Ordering::SeqCst) {
            // SAFETY: `prepare` locked it in the forking thread, which is
            // this thread in the child.
            unsafe { LIFECYCLE.force_unlock() };
        }
    }
    // SAFETY: the handlers are plain functions without arguments.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        log::warn!("pthread_atfork failed ({rc}); a forked child must not use this module");
    }
}
