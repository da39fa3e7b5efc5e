//! Signing workload of the demo, run by `scripts/demo.sh` while it kills and
//! restarts one HSM: several threads sign in a loop through one WLD slot,
//! verify every signature, and open a new session every few operations. Once
//! a second it prints how many signatures were made, how many calls failed,
//! and each member's state and open sessions as the module reports them.
//!
//! It exits with an error when any call failed or any signature did not
//! verify.
//!
//! Environment:
//! - `P11WLD_DEMO_PIN`: user PIN of the token (required).
//! - `P11WLD_DEMO_SECONDS`: how long the workload runs. Default: 12.
//! - `P11WLD_DEMO_READY_FILE`: a file created once the workload runs, so the
//!   script knows when to kill an HSM.
//! - `P11WLD_MODULE`, `P11WLD_DEMO_LABEL`, `P11WLD_DEMO_KEY`: as for the
//!   `demo` example.

use std::env;
use std::error::Error;
use std::ffi::c_ulong;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p11wld::ffi::ext::sys;

type DemoResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const THREADS: usize = 6;
/// Threads with an even number open a new session after this many
/// signatures.
const REOPEN_EVERY: u64 = 5;

#[derive(Default)]
struct Counters {
    signatures: AtomicU64,
    failures: AtomicU64,
}

fn module_path() -> DemoResult<PathBuf> {
    if let Some(path) = env::var_os("P11WLD_MODULE") {
        return Ok(PathBuf::from(path));
    }
    // This executable is target/<profile>/examples/workload.
    let exe = env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or("cannot find target/<profile>/ above the executable; set P11WLD_MODULE")?;
    Ok(profile_dir.join("libp11wld.so"))
}

/// Reads every member's status through the p11wld extension.
fn member_status(library: &libloading::Library) -> DemoResult<Vec<sys::P11WLD_MEMBER_STATUS>> {
    // SAFETY: the symbol has the signature declared in include/p11wld.h,
    // and the list it returns is static in the module.
    unsafe {
        let get: libloading::Symbol<
            unsafe extern "C" fn(*mut *mut sys::P11WLD_FUNCTION_LIST) -> c_ulong,
        > = library.get(b"P11WLD_GetFunctionList\0")?;
        let mut list = std::ptr::null_mut();
        if get(&mut list) != 0 || list.is_null() {
            return Err("P11WLD_GetFunctionList failed".into());
        }
        let get_status = (*list).GetMemberStatus.ok_or("GetMemberStatus is NULL")?;
        let mut count: c_ulong = 0;
        if get_status(std::ptr::null_mut(), &mut count) != 0 {
            return Err("GetMemberStatus failed".into());
        }
        let mut status = vec![sys::P11WLD_MEMBER_STATUS::default(); count as usize];
        if get_status(status.as_mut_ptr(), &mut count) != 0 {
            return Err("GetMemberStatus failed".into());
        }
        status.truncate(count as usize);
        Ok(status)
    }
}

fn text(field: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn describe(status: &[sys::P11WLD_MEMBER_STATUS]) -> String {
    status
        .iter()
        .map(|m| {
            let state = if m.state == sys::P11WLD_MEMBER_UP {
                "up"
            } else {
                "DOWN"
            };
            format!(
                "{} {state} {} sessions",
                text(&m.module_name),
                m.open_sessions
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn find_key(pkcs11: &Pkcs11, slot: Slot, label: &str) -> DemoResult<ObjectHandle> {
    let session = pkcs11.open_ro_session(slot)?;
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let found = session.find_objects(&template)?;
    found
        .first()
        .copied()
        .ok_or_else(|| format!("no private key labelled {label:?}").into())
}

/// Signs and verifies in a loop until `stop` is set, counting each result.
fn sign_loop(
    pkcs11: &Pkcs11,
    slot: Slot,
    (key, public_key): (ObjectHandle, ObjectHandle),
    number: usize,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut session = None;
    let mut done: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if session.is_none() || (number % 2 == 0 && done % REOPEN_EVERY == 0) {
            session = None;
            match pkcs11.open_ro_session(slot) {
                Ok(opened) => session = Some(opened),
                Err(e) => {
                    eprintln!("thread {number}: C_OpenSession failed: {e}");
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let Some(current) = &session else { continue };
        let message = format!("p11wld workload, thread {number}, signature {done}");
        let mechanism = Mechanism::Sha256RsaPkcs;
        let result = current
            .sign(&mechanism, key, message.as_bytes())
            .and_then(|signature| {
                current.verify(&mechanism, public_key, message.as_bytes(), &signature)
            });
        match result {
            Ok(()) => counters.signatures.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("thread {number}: signing failed: {e}");
                counters.failures.fetch_add(1, Ordering::Relaxed)
            }
        };
        done += 1;
    }
}

fn main() -> DemoResult<()> {
    let pin = env::var("P11WLD_DEMO_PIN").map_err(|_| "P11WLD_DEMO_PIN is not set")?;
    let seconds: u64 = env::var("P11WLD_DEMO_SECONDS")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(12);
    let label = env::var("P11WLD_DEMO_LABEL").unwrap_or_else(|_| "WLD_DEMO".to_owned());
    let key_label = env::var("P11WLD_DEMO_KEY").unwrap_or_else(|_| "wld-demo-key".to_owned());
    let path = module_path()?;

    let pkcs11 = Pkcs11::new(&path)?;
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    // SAFETY: dlopen of the library that cryptoki loaded returns the same
    // instance; its initializers are safe to run again.
    let library = unsafe { libloading::Library::new(&path) }?;
    let slot = pkcs11
        .get_slots_with_token()?
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).is_ok_and(|t| t.label() == label))
        .ok_or_else(|| format!("no WLD slot labelled {label:?}"))?;

    // One login covers every session the threads open.
    let login = pkcs11.open_ro_session(slot)?;
    login.login(UserType::User, Some(&AuthPin::new(pin.into())))?;
    let private_key = find_key(&pkcs11, slot, &key_label)?;
    let public_key = {
        let template = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ];
        login
            .find_objects(&template)?
            .first()
            .copied()
            .ok_or("no public key")?
    };

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let workers: Vec<_> = (0..THREADS)
        .map(|number| {
            let (pkcs11, stop, counters) = (pkcs11.clone(), stop.clone(), counters.clone());
            thread::spawn(move || {
                let keys = (private_key, public_key);
                sign_loop(&pkcs11, slot, keys, number, &stop, &counters)
            })
        })
        .collect();

    println!("workload: {THREADS} threads signing for {seconds} s");
    if let Some(ready) = env::var_os("P11WLD_DEMO_READY_FILE") {
        std::fs::write(ready, b"running\n")?;
    }
    let started = Instant::now();
    let mut last = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(Duration::from_secs(1));
        let signatures = counters.signatures.load(Ordering::Relaxed);
        println!(
            "t={:>2}s  signatures/s {:>5}  failed calls {}  members: {}",
            started.elapsed().as_secs(),
            signatures - last,
            counters.failures.load(Ordering::Relaxed),
            describe(&member_status(&library)?)
        );
        last = signatures;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().map_err(|_| "a workload thread panicked")?;
    }
    drop(login);
    pkcs11.finalize()?;

    let failures = counters.failures.load(Ordering::Relaxed);
    let signatures = counters.signatures.load(Ordering::Relaxed);
    println!("workload: {signatures} signatures verified, {failures} failed calls");
    if failures > 0 {
        return Err(format!("{failures} calls failed").into());
    }
    Ok(())
}
