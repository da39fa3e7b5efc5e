//! A multi-threaded signing workload on a WLD slot, the way a signing
//! service runs: several threads, each signing in a loop in its own
//! session, checking every signature with the key set's public key, some
//! opening a new session every few operations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::slot::Slot;

use super::keys;

/// One operation that did not succeed, for the test's failure message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub thread: usize,
    pub at: Duration,
    pub what: String,
}

/// What the workload's threads share.
pub struct Shared {
    stop: AtomicBool,
    pub started: Instant,
    pub operations: AtomicU64,
    pub failures: Mutex<Vec<Failure>>,
    /// Completion times of operations, per thread.
    pub completions: Vec<Mutex<Vec<Duration>>>,
}

pub struct Workload {
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// How each thread of the workload behaves.
#[derive(Clone, Copy)]
pub struct Plan {
    pub threads: usize,
    /// Threads with an even number open a new session after this many
    /// operations; the others keep theirs.
    pub reopen_every: u64,
}

impl Workload {
    /// Starts the workload on `slot` with the RSA and EC private keys of the
    /// key set (virtual handles found in another session, which must stay
    /// logged in while the workload runs).
    pub fn start(
        pkcs11: &Pkcs11,
        slot: Slot,
        rsa: ObjectHandle,
        ec: ObjectHandle,
        plan: Plan,
    ) -> Workload {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            started: Instant::now(),
            operations: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            completions: (0..plan.threads).map(|_| Mutex::new(Vec::new())).collect(),
        });
        let threads = (0..plan.threads)
            .map(|number| {
                let pkcs11 = pkcs11.clone();
                let shared = shared.clone();
                std::thread::spawn(move || {
                    run_thread(&pkcs11, slot, rsa, ec, plan, number, &shared)
                })
            })
            .collect();
        Workload { shared, threads }
    }

    /// Stops the threads and waits for them.
    pub fn stop(self) -> Arc<Shared> {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("workload thread panicked");
        }
        self.shared
    }
}

impl Shared {
    pub fn failures(&self) -> Vec<Failure> {
        self.failures.lock().unwrap().clone()
    }

    /// Returns how many operations completed in `[from, to)` since the
    /// start, per thread.
    pub fn completed_between(&self, from: Duration, to: Duration) -> Vec<usize> {
        self.completions
            .iter()
            .map(|times| {
                let times = times.lock().unwrap();
                times.iter().filter(|t| **t >= from && **t < to).count()
            })
            .collect()
    }

    fn fail(&self, thread: usize, what: String) {
        self.failures.lock().unwrap().push(Failure {
            thread,
            at: self.started.elapsed(),
            what,
        });
    }
}

fn run_thread(
    pkcs11: &Pkcs11,
    slot: Slot,
    rsa: ObjectHandle,
    ec: ObjectHandle,
    plan: Plan,
    number: usize,
    shared: &Shared,
) {
    let mut session = None;
    let mut done: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let reopen = number % 2 == 0 && done % plan.reopen_every == 0;
        if session.is_none() || reopen {
            session = None;
            match pkcs11.open_ro_session(slot) {
                Ok(opened) => session = Some(opened),
                Err(e) => {
                    shared.fail(number, format!("C_OpenSession: {e}"));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let Some(current) = session.as_ref() else {
            continue;
        };
        let message = format!("thread {number} operation {done}");
        let result = if done % 2 == 0 {
            current
                .sign(&Mechanism::Sha256RsaPkcs, rsa, message.as_bytes())
                .map_err(|e| format!("RSA C_Sign: {e}"))
                .and_then(|s| keys::verify_rsa_pkcs1_sha256(message.as_bytes(), &s))
        } else {
            let digest = keys::sha256(message.as_bytes());
            current
                .sign(&Mechanism::Ecdsa, ec, &digest)
                .map_err(|e| format!("ECDSA C_Sign: {e}"))
                .and_then(|s| keys::verify_ecdsa_p256_prehash(&digest, &s))
        };
        match result {
            Ok(()) => {
                shared.operations.fetch_add(1, Ordering::Relaxed);
                shared.completions[number]
                    .lock()
                    .unwrap()
                    .push(shared.started.elapsed());
            }
            Err(what) => shared.fail(number, what),
        }
        done += 1;
    }
}
