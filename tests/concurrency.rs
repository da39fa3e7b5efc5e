//! Concurrency: many threads on one WLD slot of three HSM processes,
//! `C_Finalize` racing with calls in flight, and a forked child that
//! initializes the module again.
//!
//! The stress test runs for `P11WLD_STRESS_SECONDS` seconds (default 10).
//! `memory_flat_over_many_operations` is ignored by default: it runs
//! `P11WLD_MEMORY_OPERATIONS` vendor calls (default 1,000,000) and checks
//! that the resident set stays flat; run it by hand or under valgrind.

mod common;

use std::collections::BTreeMap;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use cryptoki_sys::*;

use common::raw::{mechanism, Raw};
use common::setups::DEFAULT_EXTRA;
use common::table::name;
use common::{keys, USER_PIN};

macro_rules! call {
    ($raw:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        // SAFETY: the tests pass pointers that are NULL or valid for the
        // lengths beside them.
        unsafe { ($raw.list3.$name.expect(stringify!($name)))($($arg),*) }
    };
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Codes a stress thread may see because another thread logged the
/// application out: the private key is then invisible or unusable.
fn is_logged_out_error(error: &Error) -> bool {
    matches!(
        error,
        Error::Pkcs11(
            RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::UserAlreadyLoggedIn,
            _
        )
    )
}

/// Counts each kind of call the stress threads made.
#[derive(Default)]
struct Counts(Mutex<BTreeMap<&'static str, u64>>);

impl Counts {
    fn add(&self, kind: &'static str) {
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }
}

isolated! {
    #[timeout(300)]
    fn stress_one_wld_slot() {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config("[wld]\npolicy = \"least-sessions\"\n\n[log]\nlevel = \"warn\"\n");
        let _env = config.set_env();
        let pkcs11 = Arc::new(common::client::load_initialized(&common::paths::p11wld_module()));
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        let seconds = env_number("P11WLD_STRESS_SECONDS", 10);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let counts = Arc::new(Counts::default());
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let message = b"stress".to_vec();

        // A session that stays open keeps the login alive between the
        // other threads' sessions.
        let anchor = pkcs11.open_ro_session(slot).unwrap();
        anchor.login(UserType::User, Some(&AuthPin::from(USER_PIN))).unwrap();

        let mut threads = Vec::new();
        for number in 0..8 {
            let pkcs11 = pkcs11.clone();
            let counts = counts.clone();
            let failures = failures.clone();
            let message = message.clone();
            threads.push(std::thread::spawn(move || {
                let mut round = 0u64;
                while Instant::now() < deadline {
                    round += 1;
                    let result = (|| -> Result<(), Error> {
                        let session = pkcs11.open_rw_session(slot)?;
                        counts.add("C_OpenSession");
                        if number == 0 && round % 5 == 0 {
                            // One thread logs out and in again; the others
                            // see the logout in between.
                            match session.logout() {
                                Ok(()) => counts.add("C_Logout"),
                                Err(Error::Pkcs11(RvError::UserNotLoggedIn, _)) => {}
                                Err(error) => return Err(error),
                            }
                            match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
                                Ok(()) => counts.add("C_Login"),
                                Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                                Err(error) => return Err(error),
                            }
                        }
                        let public = session.find_objects(&[
                            Attribute::Class(ObjectClass::PUBLIC_KEY),
                            Attribute::Label(keys::RSA_LABEL.as_bytes().to_vec()),
                        ])?;
                        counts.add("C_FindObjects");
                        assert_eq!(public.len(), 1, "public RSA keys");
                        let private = session.find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Label(keys::EC_LABEL.as_bytes().to_vec()),
                        ])?;
                        counts.add("C_FindObjects");
                        if let [key] = private[..] {
                            let digest = keys::sha256(&message);
                            match session.sign(&Mechanism::Ecdsa, key, &digest) {
                                Ok(signature) => {
                                    keys::verify_ecdsa_p256_prehash(&digest, &signature)
                                        .unwrap();
                                    counts.add("C_Sign");
                                }
                                Err(error) if is_logged_out_error(&error) => {}
                                Err(error) => return Err(error),
                            }
                        }
                        session.close()?;
                        counts.add("C_CloseSession");
                        Ok(())
                    })();
                    if let Err(error) = result {
                        if !is_logged_out_error(&error) {
                            failures.lock().unwrap().push(format!("thread {number}: {error}"));
                        }
                    }
                }
            }));
        }
        for thread in threads {
            thread.join().expect("a stress thread panicked");
        }
        let counts = counts.0.lock().unwrap().clone();
        eprintln!("stress: {seconds} s, 8 threads: {counts:?}");
        let failures = failures.lock().unwrap();
        assert!(failures.is_empty(), "{} calls failed:\n{}", failures.len(), failures.join("\n"));
        assert!(counts.get("C_Sign").copied().unwrap_or(0) > 0, "no signature made");

        // Every member is up and every session of the threads is closed.
        let raw = Raw::load();
        let status = raw.member_status();
        assert!(status.iter().all(|m| m.state == 0), "members down: {status:?}");
        let open: u64 = status.iter().map(|m| m.open_sessions).sum();
        assert_eq!(open, 1, "sessions left open besides the anchor");
        drop(anchor);
        drop(pkcs11);
    }

    #[timeout(300)]
    fn finalize_races_calls_in_flight() {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        let raw = Arc::new(Raw::load());
        let unexpected = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));

        for round in 0..5 {
            assert_eq!(raw.initialize(), CKR_OK, "C_Initialize round {round}");
            let slot = raw.slots()[0];
            let stop = Arc::new(AtomicBool::new(false));
            let calls = Arc::new(AtomicU64::new(0));
            let after_finalize = Arc::new(AtomicU64::new(0));
            let finalized = Arc::new(AtomicBool::new(false));
            let barrier = Arc::new(Barrier::new(7));
            let mut threads = Vec::new();
            for number in 0..6 {
                let raw = raw.clone();
                let stop = stop.clone();
                let calls = calls.clone();
                let after_finalize = after_finalize.clone();
                let finalized = finalized.clone();
                let barrier = barrier.clone();
                let unexpected = unexpected.clone();
                threads.push(std::thread::spawn(move || {
                    barrier.wait();
                    let mut session: CK_SESSION_HANDLE = 0;
                    while !stop.load(Ordering::Acquire) {
                        let was_finalized = finalized.load(Ordering::Acquire);
                        let rv = match number % 3 {
                            0 => call!(raw, C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, &mut session)),
                            1 => {
                                // A session of this thread's own, opened
                                // again after C_Finalize closed it.
                                let mut rv = CKR_OK;
                                if session == 0 {
                                    rv = call!(raw, C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, &mut session));
                                }
                                if rv == CKR_OK {
                                    let mut digest = mechanism(CKM_SHA256);
                                    rv = call!(raw, C_DigestInit(session, &mut digest));
                                }
                                if rv == CKR_OK {
                                    let mut data = [1u8; 64];
                                    let mut out = [0u8; 32];
                                    let mut length: CK_ULONG = 32;
                                    rv = call!(raw, C_Digest(session, data.as_mut_ptr(), 64, out.as_mut_ptr(), &mut length));
                                }
                                if rv != CKR_OK {
                                    session = 0;
                                }
                                rv
                            }
                            _ => {
                                let mut count: CK_ULONG = 0;
                                call!(raw, C_GetSlotList(CK_TRUE, null_mut(), &mut count))
                            }
                        };
                        if number % 3 == 0 && rv == CKR_OK {
                            call!(raw, C_CloseSession(session));
                        }
                        calls.fetch_add(1, Ordering::Relaxed);
                        if rv == CKR_CRYPTOKI_NOT_INITIALIZED {
                            // valgrind switches threads at system calls, so a
                            // loop without any would starve the calls in flight.
                            std::thread::yield_now();
                        }
                        let allowed = matches!(
                            rv,
                            CKR_OK | CKR_CRYPTOKI_NOT_INITIALIZED | CKR_SESSION_HANDLE_INVALID
                        );
                        if was_finalized {
                            after_finalize.fetch_add(1, Ordering::Relaxed);
                            if rv != CKR_CRYPTOKI_NOT_INITIALIZED {
                                *unexpected
                                    .lock()
                                    .unwrap()
                                    .entry(format!("after C_Finalize: {}", name(rv)))
                                    .or_default() += 1;
                            }
                        } else if !allowed {
                            *unexpected.lock().unwrap().entry(name(rv)).or_default() += 1;
                        }
                    }
                }));
            }
            // A thread blocked in C_WaitForSlotEvent is woken by C_Finalize
            // with CKR_CRYPTOKI_NOT_INITIALIZED.
            let waiter = {
                let raw = raw.clone();
                std::thread::spawn(move || {
                    let mut slot: CK_SLOT_ID = 0;
                    call!(raw, C_WaitForSlotEvent(0, &mut slot, null_mut()))
                })
            };
            barrier.wait();
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            assert_eq!(raw.finalize(), CKR_OK, "C_Finalize with calls in flight, round {round}");
            let finalize_time = started.elapsed();
            finalized.store(true, Ordering::Release);
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::Release);
            for thread in threads {
                thread.join().expect("a calling thread panicked");
            }
            assert_eq!(
                waiter.join().unwrap(),
                CKR_CRYPTOKI_NOT_INITIALIZED,
                "C_WaitForSlotEvent woken by C_Finalize"
            );
            eprintln!(
                "round {round}: {} calls, {} after C_Finalize, C_Finalize took {finalize_time:?}",
                calls.load(Ordering::Relaxed),
                after_finalize.load(Ordering::Relaxed)
            );
            assert!(after_finalize.load(Ordering::Relaxed) > 0, "no call after C_Finalize");
        }
        let unexpected = unexpected.lock().unwrap();
        assert!(unexpected.is_empty(), "unexpected return codes: {unexpected:?}");
    }

    fn forked_child_initializes_softhsm_members() {
        // SoftHSM2 2.6.1 keeps its state across fork (reset_on_fork is
        // false by default) and answers the child's C_Initialize with
        // CKR_CRYPTOKI_ALREADY_INITIALIZED. The child's C_Initialize of
        // p11wld must still give a working module.
        let one = common::one_softhsm_with_tokens();
        let config = one.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        check_fork();
    }

    fn forked_child_initializes_hsm_process_members() {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        check_fork();
    }

    /// The resident set stays flat over a million calls that open and
    /// close sessions, search and digest through three members. Run by hand:
    /// `cargo test --release --test concurrency -- --ignored --nocapture`
    /// (about 40 s in a release build on a 2-core machine).
    #[ignore = "takes a minute; run by hand for the memory figures"]
    #[timeout(3600)]
    fn memory_flat_over_many_operations() {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config("[wld]\npolicy = \"least-sessions\"\n\n[log]\nlevel = \"warn\"\n");
        let _env = config.set_env();
        let raw = Raw::load();
        assert_eq!(raw.initialize(), CKR_OK);
        let slot = raw.slots()[0];
        let operations = env_number("P11WLD_MEMORY_OPERATIONS", 1_000_000);
        let mut samples = Vec::new();
        let started = Instant::now();
        let mut done = 0u64;
        let mut session = raw.open(slot, 0);
        let mut data = [3u8; 64];
        let mut out = [0u8; 32];
        while done < operations {
            // Every 100 operations: a new session and a search, so
            // sessions, object handles and searches are allocated and
            // freed; otherwise digests.
            if done % 100 == 0 {
                assert_eq!(call!(raw, C_CloseSession(session)), CKR_OK);
                session = raw.open(slot, 0);
                let found = raw.find(session, &mut []);
                assert!(!found.is_empty());
                done += 4;
            }
            let mut digest = mechanism(CKM_SHA256);
            assert_eq!(call!(raw, C_DigestInit(session, &mut digest)), CKR_OK);
            let mut length: CK_ULONG = 32;
            assert_eq!(
                call!(raw, C_Digest(session, data.as_mut_ptr(), 64, out.as_mut_ptr(), &mut length)),
                CKR_OK
            );
            done += 2;
            if done % (operations / 20).max(2) < 2 {
                let rss = resident_kib();
                samples.push((done, rss));
                eprintln!("{done} operations, {:?}: RSS {rss} KiB", started.elapsed());
            }
        }
        // After the first tenth (allocator and caches warm), the resident
        // set may not grow by more than 2 MiB.
        let warm = samples[samples.len() / 10].1;
        let last = samples.last().unwrap().1;
        eprintln!("RSS after warm-up {warm} KiB, at the end {last} KiB");
        assert!(last <= warm + 2048, "RSS grew from {warm} KiB to {last} KiB");
        assert_eq!(raw.finalize(), CKR_OK);
    }
}

/// Returns the resident set size of this process in KiB.
fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// Signs through the module's first slot with a session of its own and
/// returns whether the signature verifies.
fn sign_once(raw: &Raw) -> Result<(), String> {
    let slot = *raw.slots().first().ok_or("no slot")?;
    let session = raw.open(slot, 0);
    let rv = raw.login(session, USER_PIN);
    if rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN {
        return Err(format!("C_Login: {}", name(rv)));
    }
    let key = raw.find_one(session, CKO_PRIVATE_KEY, keys::RSA_LABEL);
    let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
    let rv = call!(raw, C_SignInit(session, &mut sign, key));
    if rv != CKR_OK {
        return Err(format!("C_SignInit: {}", name(rv)));
    }
    let mut message = *b"forked";
    let mut signature = [0u8; 256];
    let mut length: CK_ULONG = 256;
    let rv = call!(
        raw,
        C_Sign(
            session,
            message.as_mut_ptr(),
            6,
            signature.as_mut_ptr(),
            &mut length
        )
    );
    if rv != CKR_OK {
        return Err(format!("C_Sign: {}", name(rv)));
    }
    keys::verify_rsa_pkcs1_sha256(&message, &signature)?;
    let rv = call!(raw, C_CloseSession(session));
    if rv != CKR_OK {
        return Err(format!("C_CloseSession: {}", name(rv)));
    }
    Ok(())
}

/// Initializes the module, signs, forks, and in the child initializes the
/// module again and signs; then signs in the parent again.
fn check_fork() {
    let raw = Arc::new(Raw::load());
    assert_eq!(raw.initialize(), CKR_OK, "C_Initialize in the parent");
    sign_once(&raw).expect("signature in the parent before fork");
    // Threads of the parent that wait inside the module when it forks: the
    // health thread, and later one in C_WaitForSlotEvent as well. The
    // child's new threads may get their stacks.
    for round in 0..3 {
        fork_and_check(&raw, round);
    }
    let waiter = {
        let raw = raw.clone();
        std::thread::spawn(move || {
            let mut slot: CK_SLOT_ID = 0;
            call!(raw, C_WaitForSlotEvent(0, &mut slot, null_mut()))
        })
    };
    for round in 3..6 {
        fork_and_check(&raw, round);
    }
    sign_once(&raw).expect("signature in the parent after the children exited");
    assert_eq!(raw.finalize(), CKR_OK, "C_Finalize in the parent");
    assert_eq!(
        waiter.join().unwrap(),
        CKR_CRYPTOKI_NOT_INITIALIZED,
        "C_WaitForSlotEvent woken by C_Finalize"
    );
}

/// Forks a child that initializes the module, signs and finalizes it, and
/// checks that it exits with 0.
fn fork_and_check(raw: &Raw, round: u32) {
    // SAFETY: the child only calls the module and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // PKCS#11: a child of a process that initialized the module
            // must call C_Initialize before it uses the module.
            let rv = raw.initialize();
            if rv != CKR_OK {
                eprintln!("child: C_Initialize returned {}", name(rv));
                return 2;
            }
            if let Err(error) = sign_once(raw) {
                eprintln!("child: {error}");
                return 3;
            }
            let rv = raw.finalize();
            if rv != CKR_OK {
                eprintln!("child: C_Finalize returned {}", name(rv));
                return 4;
            }
            0
        }))
        .unwrap_or(5);
        // SAFETY: ends the child without running the parent's handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    assert!(
        libc::WIFEXITED(status),
        "the child died: status {status:#x}"
    );
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the exit code of child {round} (see its output above)"
    );
}
