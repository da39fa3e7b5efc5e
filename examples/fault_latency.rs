//! Fault-injection PKCS#11 module for benchmarks: a vendor module (SoftHSM2
//! by default) behind a fixed service time per signature, to model slow
//! HSMs.
//!
//! Each token behaves as a device with a fixed number of processing units
//! (default one). A signature (`C_Sign`, or the `C_SignFinal` of a
//! multi-part signature, with an output buffer) keeps one unit of its
//! session's token busy for the service time: the call waits for a free
//! unit, forwards to the real module, then sleeps until the service time
//! has passed since it got the unit. So one token with one unit and 2 ms per
//! signature delivers at most 500 signatures per second however many
//! sessions use it, and separate tokens work in parallel, as separate HSMs
//! do. Length queries (a NULL output buffer) and every other call are
//! forwarded without delay, except `C_OpenSession`, which can be given a
//! delay of its own that holds no unit, as a network round trip would.
//!
//! Build: `cargo build --release --example fault_latency`, which makes
//! `target/release/examples/libfault_latency.so`.
//!
//! Settings, read from the environment in the first `C_GetFunctionList`:
//! - `FAULT_LATENCY_MODULE`: the real module, default
//!   `/usr/lib/softhsm/libsofthsm2.so`.
//! - `FAULT_LATENCY_SIGN_US`: service time of one signature in
//!   microseconds, default 2000.
//! - `FAULT_LATENCY_UNITS`: processing units per token, default 1.
//! - `FAULT_LATENCY_OPEN_US`: delay of `C_OpenSession` in microseconds,
//!   default 0.
//!
//! The real module reads its own settings (`SOFTHSM2_CONF`) as usual.
//! Like SoftHSM2, the module is one instance per process.
//!
//! `fault_latency_signatures` reports the signatures each token made, so a
//! benchmark can check how work was spread over the tokens, and
//! `fault_latency_reset` sets the counts back to zero.
#![allow(non_snake_case)]

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const DEFAULT_SIGN_US: u64 = 2000;
const DEFAULT_UNITS: usize = 1;

/// One token as a device with a fixed number of processing units.
struct Token {
    slot: CK_SLOT_ID,
    free_units: Mutex<usize>,
    unit_freed: Condvar,
    signatures: AtomicU64,
}

impl Token {
    /// Runs `call` on one unit of the token and keeps the unit for
    /// `service` in total, sleeping for what the call did not use.
    fn serve(&self, service: Duration, call: impl FnOnce() -> CK_RV) -> CK_RV {
        {
            let mut free = self.free_units.lock();
            while *free == 0 {
                self.unit_freed.wait(&mut free);
            }
            *free -= 1;
        }
        let started = Instant::now();
        let rv = call();
        if let Some(rest) = service.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        *self.free_units.lock() += 1;
        self.unit_freed.notify_one();
        if rv == CKR_OK {
            self.signatures.fetch_add(1, Ordering::Relaxed);
        }
        rv
    }
}

struct Layer {
    /// The real module's function list, which stays valid while `_library`
    /// keeps the module loaded.
    real: &'static CK_FUNCTION_LIST,
    /// The list handed to applications: the real one with the wrapped
    /// functions replaced.
    list: CK_FUNCTION_LIST,
    sign_time: Duration,
    open_time: Duration,
    units: usize,
    tokens: Mutex<Vec<Arc<Token>>>,
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Token>>>,
    _library: libloading::Library,
}

// SAFETY: the function lists are immutable after construction, and the
// real module was initialized for use from several threads.
unsafe impl Send for Layer {}
// SAFETY: as above.
unsafe impl Sync for Layer {}

static LAYER: OnceLock<Result<Layer, String>> = OnceLock::new();

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{name}={text:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

impl Layer {
    fn load() -> Result<Layer, String> {
        let path = std::env::var("FAULT_LATENCY_MODULE").unwrap_or(DEFAULT_MODULE.to_owned());
        let sign_us = env_number("FAULT_LATENCY_SIGN_US", DEFAULT_SIGN_US)?;
        let units = env_number("FAULT_LATENCY_UNITS", DEFAULT_UNITS)?;
        let open_us = env_number("FAULT_LATENCY_OPEN_US", 0u64)?;
        if units == 0 {
            return Err("FAULT_LATENCY_UNITS must be at least 1".to_owned());
        }

        // SAFETY: loading a PKCS#11 module runs its initializers, which is
        // what every PKCS#11 application does.
        let library = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load {path}: {e}"))?;
        // SAFETY: C_GetFunctionList has this type in every PKCS#11 module.
        let get_list = unsafe {
            library.get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(
                b"C_GetFunctionList\0",
            )
        }
        .map_err(|e| format!("{path} has no C_GetFunctionList: {e}"))?;

        let mut real: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: the pointer is valid for writes.
        let rv = unsafe { get_list(&mut real) };
        if rv != CKR_OK || real.is_null() {
            return Err(format!("C_GetFunctionList of {path} returned {rv:#x}"));
        }
        // SAFETY: the module keeps its list alive while it is loaded, and
        // the layer never unloads it.
        let real: &'static CK_FUNCTION_LIST = unsafe { &*real };

        let mut list = *real;
        list.C_GetFunctionList = Some(C_GetFunctionList);
        list.C_Finalize = Some(C_Finalize);
        list.C_OpenSession = Some(C_OpenSession);
        list.C_CloseSession = Some(C_CloseSession);
        list.C_CloseAllSessions = Some(C_CloseAllSessions);
        list.C_Sign = Some(C_Sign);
        list.C_SignFinal = Some(C_SignFinal);
        Ok(Layer {
            real,
            list,
            sign_time: Duration::from_micros(sign_us),
            open_time: Duration::from_micros(open_us),
            units,
            tokens: Mutex::new(Vec::new()),
            sessions: RwLock::new(HashMap::new()),
            _library: library,
        })
    }

    fn token(&self, slot: CK_SLOT_ID) -> Arc<Token> {
        let mut tokens = self.tokens.lock();
        if let Some(token) = tokens.iter().find(|t| t.slot == slot) {
            return token.clone();
        }
        let token = Arc::new(Token {
            slot,
            free_units: Mutex::new(self.units),
            unit_freed: Condvar::new(),
            signatures: AtomicU64::new(0),
        });
        tokens.push(token.clone());
        token
    }

    fn session_token(&self, session: CK_SESSION_HANDLE) -> Option<Arc<Token>> {
        self.sessions.read().get(&session).cloned()
    }
}

fn layer() -> Option<&'static Layer> {
    LAYER.get().and_then(|loaded| loaded.as_ref().ok())
}

/// Calls a function of the real module, or returns CKR_GENERAL_ERROR when
/// the layer failed to load, CKR_FUNCTION_NOT_SUPPORTED when the real
/// module lacks the function.
macro_rules! forward {
    ($name:ident ( $($arg:expr),* )) => {
        match layer().map(|l| l.real.$name) {
            // SAFETY: the entry comes from the real module's own list; the
            // arguments are the application's, passed on unchanged.
            Some(Some(f)) => unsafe { f($($arg),*) },
            Some(None) => CKR_FUNCTION_NOT_SUPPORTED,
            None => CKR_GENERAL_ERROR,
        }
    };
}

/// Sets `*list` to the layer's function list, loading the real module on
/// the first call.
///
/// # Safety
/// `list` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    match LAYER.get_or_init(Layer::load) {
        Ok(layer) => {
            // SAFETY: checked non-NULL. The list lives in a static and is
            // only read by the application.
            unsafe { *list = &layer.list as *const CK_FUNCTION_LIST as *mut _ };
            CKR_OK
        }
        Err(message) => {
            eprintln!("fault_latency: {message}");
            CKR_GENERAL_ERROR
        }
    }
}

unsafe extern "C" fn C_Finalize(reserved: CK_VOID_PTR) -> CK_RV {
    let rv = forward!(C_Finalize(reserved));
    if rv == CKR_OK {
        if let Some(layer) = layer() {
            layer.sessions.write().clear();
        }
    }
    rv
}

unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: CK_VOID_PTR,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    if let Some(layer) = layer() {
        std::thread::sleep(layer.open_time);
    }
    let rv = forward!(C_OpenSession(slot, flags, application, notify, session));
    if let (CKR_OK, Some(layer)) = (rv, layer()) {
        let token = layer.token(slot);
        // SAFETY: the real module wrote the handle, so the pointer is valid.
        let handle = unsafe { *session };
        layer.sessions.write().insert(handle, token);
    }
    rv
}

unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    let rv = forward!(C_CloseSession(session));
    if let Some(layer) = layer() {
        layer.sessions.write().remove(&session);
    }
    rv
}

unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    let rv = forward!(C_CloseAllSessions(slot));
    if let Some(layer) = layer() {
        layer.sessions.write().retain(|_, token| token.slot != slot);
    }
    rv
}

unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    let token = layer().and_then(|l| l.session_token(session));
    match (token, layer()) {
        (Some(token), Some(layer)) if !signature.is_null() => token.serve(layer.sign_time, || {
            forward!(C_Sign(session, data, data_len, signature, signature_len))
        }),
        _ => forward!(C_Sign(session, data, data_len, signature, signature_len)),
    }
}

unsafe extern "C" fn C_SignFinal(
    session: CK_SESSION_HANDLE,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    let token = layer().and_then(|l| l.session_token(session));
    match (token, layer()) {
        (Some(token), Some(layer)) if !signature.is_null() => token.serve(layer.sign_time, || {
            forward!(C_SignFinal(session, signature, signature_len))
        }),
        _ => forward!(C_SignFinal(session, signature, signature_len)),
    }
}

/// Writes up to `max` pairs of slot id and signature count, one per token
/// that had a session, and returns the number of such tokens.
///
/// # Safety
/// `slots` and `counts` are NULL or point to `max` writable entries.
#[no_mangle]
pub unsafe extern "C" fn fault_latency_signatures(
    slots: *mut CK_SLOT_ID,
    counts: *mut u64,
    max: usize,
) -> usize {
    let Some(layer) = layer() else {
        return 0;
    };
    let tokens = layer.tokens.lock();
    if !slots.is_null() && !counts.is_null() {
        for (i, token) in tokens.iter().take(max).enumerate() {
            // SAFETY: the caller passes room for `max` entries.
            unsafe {
                slots.add(i).write(token.slot);
                counts
                    .add(i)
                    .write(token.signatures.load(Ordering::Relaxed));
            }
        }
    }
    tokens.len()
}

/// Sets every token's signature count back to zero.
#[no_mangle]
pub extern "C" fn fault_latency_reset() {
    if let Some(layer) = layer() {
        for token in layer.tokens.lock().iter() {
            token.signatures.store(0, Ordering::Relaxed);
        }
    }
}
