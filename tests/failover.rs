//! Failover against real HSM processes: three `p11-kit server` processes,
//! each serving its own SoftHSM2 token, that the tests kill, stop and
//! restart while a multi-threaded application signs through the WLD slot.

mod common;

use std::ffi::c_ulong;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::client::{find_key, load_initialized};
use common::keys;
use common::paths::p11wld_module;
use common::workload::{Plan, Workload};
use common::{three_hsm_processes, ConfigFile, ThreeHsms, USER_PIN};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p11wld::ffi::ext::sys;

/// Probe interval of the tests' configurations.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The configuration of the three HSMs, with a fast health check and the
/// log in a file the test reads.
fn write_config(hsms: &ThreeHsms, log: &Path) -> ConfigFile {
    hsms.write_config(&format!(
        "[health]\nprobe_interval_ms = {}\ncall_deadline_ms = 1000\n\n[log]\nlevel = \"info\"\nfile = \"{}\"\n",
        PROBE_INTERVAL.as_millis(),
        log.display()
    ))
}

struct Setup {
    hsms: ThreeHsms,
    _config: ConfigFile,
    _env: common::ScopedEnv,
    log: PathBuf,
    _dir: tempfile::TempDir,
    pkcs11: Pkcs11,
    slot: Slot,
    /// Keeps the application logged in.
    keeper: Session,
    rsa: ObjectHandle,
    ec: ObjectHandle,
}

fn setup() -> Setup {
    let hsms = three_hsm_processes(false);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("p11wld.log");
    let config = write_config(&hsms, &log);
    let env = config.set_env();
    let pkcs11 = load_initialized(&p11wld_module());
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let keeper = pkcs11.open_ro_session(slot).unwrap();
    keeper
        .login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .unwrap();
    let rsa = find_key(&keeper, ObjectClass::PRIVATE_KEY, "rsa-key");
    let ec = find_key(&keeper, ObjectClass::PRIVATE_KEY, "ec-key");
    Setup {
        hsms,
        _config: config,
        _env: env,
        log,
        _dir: dir,
        pkcs11,
        slot,
        keeper,
        rsa,
        ec,
    }
}

/// Reads the member status through the p11wld extension.
fn member_status() -> Vec<sys::P11WLD_MEMBER_STATUS> {
    // SAFETY: the library is the one the test's Pkcs11 already loaded, so
    // dlopen returns the same instance; the symbol has the declared type.
    unsafe {
        let library = libloading::Library::new(p11wld_module()).expect("load libp11wld.so");
        let get: libloading::Symbol<
            unsafe extern "C" fn(*mut *mut sys::P11WLD_FUNCTION_LIST) -> c_ulong,
        > = library.get(b"P11WLD_GetFunctionList\0").expect("symbol");
        let mut list = std::ptr::null_mut();
        assert_eq!(get(&mut list), 0);
        let get_status = (*list).GetMemberStatus.expect("GetMemberStatus");
        let mut count: c_ulong = 0;
        assert_eq!(get_status(std::ptr::null_mut(), &mut count), 0);
        let mut status = vec![sys::P11WLD_MEMBER_STATUS::default(); count as usize];
        assert_eq!(get_status(status.as_mut_ptr(), &mut count), 0);
        status.truncate(count as usize);
        status
    }
}

fn member_up(index: usize) -> bool {
    member_status()[index].state == sys::P11WLD_MEMBER_UP
}

/// Waits until member `index` has the state `up`, or `limit` passed.
fn wait_for_state(index: usize, up: bool, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if member_up(index) == up {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Returns the index of the member that `session` runs on: the one whose
/// open session count goes down when it closes.
fn member_of(
    pkcs11: &Pkcs11,
    slot: Slot,
    make: impl FnOnce(&Pkcs11, Slot) -> Session,
) -> (Session, usize) {
    let before: Vec<u64> = member_status().iter().map(|m| m.open_sessions).collect();
    let session = make(pkcs11, slot);
    let after: Vec<u64> = member_status().iter().map(|m| m.open_sessions).collect();
    let index = (0..before.len())
        .find(|&i| after[i] == before[i] + 1)
        .expect("one member got the session");
    (session, index)
}

fn rv_of(error: Error) -> RvError {
    match error {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("expected a PKCS#11 error, got {other}"),
    }
}

isolated! {
    /// Killing one HSM with SIGKILL in the middle of a signing load costs
    /// no failed call, every signature verifies, and new sessions avoid the
    /// dead member; restarted, it is re-admitted within two probe intervals
    /// and takes new sessions again.
    #[timeout(180)]
    fn kill_one_member_under_load() {
        let mut s = setup();
        let plan = Plan { threads: 6, reopen_every: 5 };
        let workload = Workload::start(&s.pkcs11, s.slot, s.rsa, s.ec, plan);
        std::thread::sleep(Duration::from_secs(1));

        let victim = 1;
        s.hsms.hsms[victim].kill_hard();
        let killed_at = workload.shared.started.elapsed();
        assert!(wait_for_state(victim, false, Duration::from_secs(5)).is_some());
        let total_at_kill = member_status()[victim].total_sessions;
        std::thread::sleep(Duration::from_secs(2));
        let shared = workload.stop();

        let failures = shared.failures();
        assert!(failures.is_empty(), "failed calls: {failures:?}");
        let after_kill = shared.completed_between(killed_at, Duration::MAX);
        assert!(after_kill.iter().all(|&n| n > 0), "every thread went on: {after_kill:?}");
        // The idle session that keeps the login moves on its next call.
        s.keeper.find_objects(&[Attribute::Label(b"none".to_vec())]).unwrap();
        let status = member_status();
        assert_eq!(status[victim].state, sys::P11WLD_MEMBER_DOWN);
        assert_eq!(status[victim].total_sessions, total_at_kill, "no new session on the dead member");
        assert_eq!(status[victim].open_sessions, 0);
        assert_eq!(status[victim].last_error, 0x30, "CKR_DEVICE_ERROR");

        s.hsms.hsms[victim].restart();
        let readmitted = wait_for_state(victim, true, 2 * PROBE_INTERVAL + Duration::from_millis(500));
        assert!(readmitted.is_some(), "member re-admitted within two probe intervals");
        let sessions: Vec<Session> = (0..6).map(|_| s.pkcs11.open_ro_session(s.slot).unwrap()).collect();
        assert!(member_status()[victim].open_sessions > 0, "the member takes new sessions");
        let signature = sessions[0].sign(&Mechanism::Sha256RsaPkcs, s.rsa, b"after").unwrap();
        keys::verify_rsa_pkcs1_sha256(b"after", &signature).unwrap();

        let log = std::fs::read_to_string(&s.log).unwrap();
        assert!(log.contains("is down"), "{log}");
        assert!(log.contains("sessions moved"), "{log}");
        assert!(log.contains("is up again"), "{log}");
        drop(s.keeper);
    }

    /// A stopped HSM (SIGSTOP) does not stall the sessions on the other
    /// members; past the call deadline it takes no new sessions; continued
    /// (SIGCONT), its blocked calls finish and it is re-admitted.
    #[timeout(180)]
    fn stopped_member_does_not_stall_others() {
        let s = setup();
        let plan = Plan { threads: 6, reopen_every: 7 };
        let workload = Workload::start(&s.pkcs11, s.slot, s.rsa, s.ec, plan);
        std::thread::sleep(Duration::from_secs(1));

        let victim = 2;
        s.hsms.hsms[victim].stop();
        let stopped_at = workload.shared.started.elapsed();
        std::thread::sleep(Duration::from_secs(4));
        assert!(!member_up(victim), "past the deadline the member is down");
        s.hsms.hsms[victim].cont();
        let continued_at = workload.shared.started.elapsed();
        assert!(wait_for_state(victim, true, 3 * PROBE_INTERVAL).is_some());
        std::thread::sleep(Duration::from_secs(1));
        let shared = workload.stop();

        let failures = shared.failures();
        assert!(failures.is_empty(), "failed calls: {failures:?}");
        // Each half second of the stop after the deadline, the threads on
        // healthy members signed.
        let mut window = stopped_at + Duration::from_millis(1500);
        while window + Duration::from_millis(500) <= continued_at {
            let counts = shared.completed_between(window, window + Duration::from_millis(500));
            let progressing = counts.iter().filter(|&&n| n > 0).count();
            assert!(progressing >= 3, "threads signing in {window:?}: {counts:?}");
            window += Duration::from_millis(500);
        }
        drop(s.keeper);
    }

    /// With every HSM killed, calls fail with the documented codes and
    /// nothing hangs; once the HSMs are back, the same application works
    /// again, old sessions and new ones, without C_Finalize.
    #[timeout(180)]
    fn every_member_killed_then_back() {
        let mut s = setup();
        let sessions: Vec<Session> = (0..3).map(|_| s.pkcs11.open_ro_session(s.slot).unwrap()).collect();
        assert_eq!(s.pkcs11.get_slot_event().unwrap(), None);
        for hsm in &mut s.hsms.hsms {
            hsm.kill_hard();
        }

        let started = Instant::now();
        for session in &sessions {
            let error = session.sign(&Mechanism::Sha256RsaPkcs, s.rsa, b"x").unwrap_err();
            assert_eq!(rv_of(error), RvError::DeviceError);
        }
        let open = s.pkcs11.open_ro_session(s.slot);
        assert_eq!(rv_of(open.unwrap_err()), RvError::TokenNotPresent);
        let info = s.pkcs11.get_token_info(s.slot);
        assert_eq!(rv_of(info.unwrap_err()), RvError::TokenNotPresent);
        assert!(s.pkcs11.get_slots_with_token().unwrap().is_empty());
        assert_eq!(s.pkcs11.get_all_slots().unwrap(), vec![s.slot]);
        assert!(started.elapsed() < Duration::from_secs(10), "no call hung");
        // The health thread reports the token's disappearance as a slot
        // event within a probe interval.
        std::thread::sleep(2 * PROBE_INTERVAL);
        assert_eq!(s.pkcs11.get_slot_event().unwrap(), Some(s.slot));
        assert_eq!(s.pkcs11.get_slot_event().unwrap(), None);

        for hsm in &mut s.hsms.hsms {
            hsm.restart();
        }
        for index in 0..3 {
            assert!(wait_for_state(index, true, 3 * PROBE_INTERVAL).is_some(), "member {index} back");
        }
        std::thread::sleep(2 * PROBE_INTERVAL);
        assert_eq!(s.pkcs11.get_slot_event().unwrap(), Some(s.slot));
        for session in &sessions {
            let signature = session.sign(&Mechanism::Sha256RsaPkcs, s.rsa, b"back").unwrap();
            keys::verify_rsa_pkcs1_sha256(b"back", &signature).unwrap();
        }
        let fresh = s.pkcs11.open_ro_session(s.slot).unwrap();
        let signature = fresh.sign(&Mechanism::Sha256RsaPkcs, s.rsa, b"fresh").unwrap();
        keys::verify_rsa_pkcs1_sha256(b"fresh", &signature).unwrap();
        drop(s.keeper);
    }

    /// A multi-part digest whose member is killed between two updates
    /// finishes on another member with the right digest.
    #[timeout(120)]
    fn digest_survives_kill() {
        let mut s = setup();
        let (session, index) = member_of(&s.pkcs11, s.slot, |p, slot| p.open_ro_session(slot).unwrap());
        session.digest_init(&Mechanism::Sha256).unwrap();
        session.digest_update(b"first part, ").unwrap();
        s.hsms.hsms[index].kill_hard();
        session.digest_update(b"second part").unwrap();
        let digest = session.digest_final().unwrap();
        assert_eq!(digest, keys::sha256(b"first part, second part"));
        drop(s.keeper);
    }

    /// A search whose member is killed in the middle goes on on another
    /// member and returns every object once.
    #[timeout(120)]
    fn search_survives_kill() {
        let mut s = setup();
        let (session, index) = member_of(&s.pkcs11, s.slot, |p, slot| p.open_ro_session(slot).unwrap());
        let mut seen = Vec::new();
        {
            let one = std::num::NonZeroUsize::new(1).unwrap();
            let mut objects = session.iter_objects_with_cache_size(&[], one).unwrap();
            for _ in 0..2 {
                seen.push(objects.next().unwrap().unwrap());
            }
            s.hsms.hsms[index].kill_hard();
            for object in objects {
                seen.push(object.unwrap());
            }
        }
        let mut unique = seen.clone();
        unique.sort_by_key(|h| h.handle());
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "no object twice: {seen:?}");
        let mut expected = s.keeper.find_objects(&[]).unwrap();
        expected.sort_by_key(|h| h.handle());
        assert_eq!(unique, expected);
        drop(s.keeper);
    }

    /// A key handle found before the member that served it restarted still
    /// signs afterwards, in a new session on that same member: the handle
    /// is resolved again there.
    #[timeout(120)]
    fn stale_handle_after_restart() {
        let mut s = setup();
        let (session, index) = member_of(&s.pkcs11, s.slot, |p, slot| p.open_ro_session(slot).unwrap());
        let key = find_key(&session, ObjectClass::PRIVATE_KEY, "rsa-key");
        drop(session);
        s.hsms.hsms[index].restart();

        // New sessions go to the least loaded member, the restarted one,
        // which fails to open one until it was probed back in.
        let started = Instant::now();
        let mut kept = Vec::new();
        let signed_there = loop {
            assert!(started.elapsed() < Duration::from_secs(20), "no session landed on member {index}");
            let (session, on) = member_of(&s.pkcs11, s.slot, |p, slot| p.open_ro_session(slot).unwrap());
            let signature = session.sign(&Mechanism::Sha256RsaPkcs, key, b"stale").unwrap();
            keys::verify_rsa_pkcs1_sha256(b"stale", &signature).unwrap();
            if on == index {
                break true;
            }
            kept.push(session);
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(signed_there);
        drop(s.keeper);
    }

    /// An HSM that is down when the application initializes the module
    /// joins its WLD slot once it starts.
    #[timeout(120)]
    fn member_down_at_start_joins_later() {
        let mut hsms = three_hsm_processes(false);
        hsms.hsms[2].kill_hard();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&hsms, &dir.path().join("p11wld.log"));
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        assert_eq!(member_status().len(), 2);

        hsms.hsms[2].restart();
        let started = Instant::now();
        while member_status().len() < 3 {
            assert!(started.elapsed() < 4 * PROBE_INTERVAL, "the third member never joined");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        let open: Vec<u64> = member_status().iter().map(|m| m.open_sessions).collect();
        assert_eq!(open, vec![1, 1, 1]);
        drop(sessions);
    }

    /// Twenty kills of the member that serves a signing session: every
    /// kill costs no failed call, and the test prints the time from each
    /// kill to the first successful retried call (the figure the benchmark
    /// page reports).
    #[timeout(300)]
    fn twenty_kills_figures() {
        let mut s = setup();
        let keeper_member = {
            let counts: Vec<u64> = member_status().iter().map(|m| m.open_sessions).collect();
            counts.iter().position(|&n| n == 1).expect("the keeper's member")
        };
        let workload = Workload::start(&s.pkcs11, s.slot, s.rsa, s.ec, Plan { threads: 1, reopen_every: u64::MAX });
        std::thread::sleep(Duration::from_millis(300));

        let mut latencies = Vec::new();
        for _ in 0..20 {
            let counts: Vec<u64> = member_status().iter().map(|m| m.open_sessions).collect();
            let worker = (0..counts.len())
                .find(|&i| counts[i] - u64::from(i == keeper_member) == 1)
                .expect("the worker's member");
            let before = workload.shared.completed_between(Duration::ZERO, Duration::MAX)[0];
            s.hsms.hsms[worker].kill_hard();
            let killed_at = workload.shared.started.elapsed();
            let first = loop {
                let after = workload.shared.completions[0].lock().unwrap().iter().copied().find(|t| *t > killed_at);
                if let Some(at) = after {
                    break at;
                }
                assert!(workload.shared.started.elapsed() - killed_at < Duration::from_secs(10), "no call succeeded after the kill");
                std::thread::sleep(Duration::from_millis(1));
            };
            assert!(workload.shared.completed_between(Duration::ZERO, Duration::MAX)[0] > before);
            latencies.push(first - killed_at);
            s.hsms.hsms[worker].restart();
            assert!(wait_for_state(worker, true, 20 * PROBE_INTERVAL).is_some());
            // Let the probe find the restarted member and re-admit it.
            std::thread::sleep(2 * PROBE_INTERVAL);
        }
        let shared = workload.stop();
        let failures = shared.failures();
        assert!(failures.is_empty(), "failed calls: {failures:?}");

        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "failover figures: {} kills, {} failed calls, kill to first successful retried call: \
             min {:.1} ms, median {:.1} ms, max {:.1} ms",
            latencies.len(),
            failures.len(),
            ms(latencies[0]),
            ms(latencies[latencies.len() / 2]),
            ms(latencies[latencies.len() - 1])
        );
        drop(s.keeper);
    }

    /// An application that does not let the module create threads gets the
    /// probes inline: a restarted member comes back through its
    /// C_GetSlotList and C_OpenSession calls.
    #[timeout(120)]
    fn inline_probes_without_threads() {
        let mut hsms = three_hsm_processes(false);
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&hsms, &dir.path().join("p11wld.log"));
        let _env = config.set_env();
        let pkcs11 = Pkcs11::new(p11wld_module()).unwrap();
        let flags = cryptoki::context::CInitializeFlags::OS_LOCKING_OK
            | cryptoki::context::CInitializeFlags::LIBRARY_CANT_CREATE_OS_THREADS;
        pkcs11.initialize(cryptoki::context::CInitializeArgs::new(flags)).unwrap();
        let slot = pkcs11.get_slots_with_token().unwrap()[0];

        hsms.hsms[0].kill_hard();
        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        assert!(!member_up(0), "the dead member was found down");
        hsms.hsms[0].restart();
        std::thread::sleep(PROBE_INTERVAL + Duration::from_millis(100));
        assert!(!member_up(0), "no thread probes it");
        pkcs11.get_slots_with_token().unwrap();
        assert!(member_up(0), "C_GetSlotList probed it back");
        drop(sessions);
    }

    /// C_Logout does not wait for a stopped member, and that member is
    /// logged out when it comes back, so its sessions see no private object.
    #[timeout(120)]
    fn logout_skips_stopped_member() {
        let s = setup();
        let keeper_member = member_status().iter().position(|m| m.open_sessions == 1).unwrap();
        let mut on_other = None;
        let mut kept = Vec::new();
        while on_other.is_none() {
            let (session, index) = member_of(&s.pkcs11, s.slot, |p, slot| p.open_ro_session(slot).unwrap());
            if index != keeper_member {
                on_other = Some((session, index));
            } else {
                kept.push(session);
            }
        }
        let (blocked, victim) = on_other.unwrap();

        s.hsms.hsms[victim].stop();
        let rsa = s.rsa;
        let call = std::thread::spawn(move || blocked.sign(&Mechanism::Sha256RsaPkcs, rsa, b"held").map(|_| ()));
        assert!(wait_for_state(victim, false, Duration::from_secs(5)).is_some(), "deadline passed");
        let started = Instant::now();
        s.keeper.logout().unwrap();
        assert!(started.elapsed() < Duration::from_millis(500), "C_Logout waited for the stopped member");
        s.hsms.hsms[victim].cont();
        let _ = call.join().unwrap();
        assert!(wait_for_state(victim, true, 4 * PROBE_INTERVAL).is_some());

        let private_keys = [Attribute::Class(ObjectClass::PRIVATE_KEY)];
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < Duration::from_secs(10), "no session landed on member {victim}");
            let (session, index) = member_of(&s.pkcs11, s.slot, |p, slot| p.open_ro_session(slot).unwrap());
            assert!(session.find_objects(&private_keys).unwrap().is_empty(), "member {index} logged in");
            if index == victim {
                break;
            }
            kept.push(session);
        }
    }

    /// A request the member cannot serve (a ciphertext that does not
    /// decrypt) returns the member's own code, marks no member down and
    /// leaves the other sessions working, although SoftHSM2 answers it with
    /// CKR_GENERAL_ERROR, a code that also means a failed device.
    #[timeout(120)]
    fn request_error_marks_nothing() {
        let s = setup();
        let garbage = [0u8; 256];
        let direct = {
            let client = common::client::load_p11kit_client(&s.hsms.hsms[0].address());
            let slot = client.get_slots_with_token().unwrap()[0];
            let session = client.open_ro_session(slot).unwrap();
            session.login(UserType::User, Some(&AuthPin::from(USER_PIN))).unwrap();
            let key = find_key(&session, ObjectClass::PRIVATE_KEY, "rsa-key");
            let error = session.decrypt(&Mechanism::RsaPkcs, key, &garbage).unwrap_err();
            rv_of(error)
        };

        let sessions: Vec<Session> = (0..3).map(|_| s.pkcs11.open_ro_session(s.slot).unwrap()).collect();
        for session in &sessions {
            let error = session.decrypt(&Mechanism::RsaPkcs, s.rsa, &garbage).unwrap_err();
            assert_eq!(rv_of(error), direct);
        }
        let states: Vec<u64> = member_status().iter().map(|m| m.state).collect();
        assert_eq!(states, vec![sys::P11WLD_MEMBER_UP; 3]);
        let failures: Vec<u64> = member_status().iter().map(|m| m.failures).collect();
        assert_eq!(failures, vec![0, 0, 0]);
        for session in &sessions {
            let signature = session.sign(&Mechanism::Sha256RsaPkcs, s.rsa, b"still up").unwrap();
            keys::verify_rsa_pkcs1_sha256(b"still up", &signature).unwrap();
        }
        drop(s.keeper);
    }

    /// A member that rejects the PIN the others accepted (its PIN was
    /// changed on it alone) gets no new session while that login lasts, so
    /// the PIN is not presented to it again with each session.
    #[timeout(120)]
    fn rejected_pin_not_tried_again() {
        let hsms = three_hsm_processes(false);
        {
            let client = common::client::load_p11kit_client(&hsms.hsms[2].address());
            let slot = client.get_slots_with_token().unwrap()[0];
            let session = client.open_rw_session(slot).unwrap();
            session.login(UserType::User, Some(&AuthPin::from(USER_PIN))).unwrap();
            session
                .set_pin(&AuthPin::from(USER_PIN), &AuthPin::from("654321"))
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&hsms, &dir.path().join("p11wld.log"));
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = pkcs11.get_slots_with_token().unwrap()[0];

        // Log in through a session on a member that accepts the PIN, with
        // sessions open on every member.
        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        let mut logged_in = false;
        for session in &sessions {
            if session.login(UserType::User, Some(&AuthPin::from(USER_PIN))).is_ok() {
                logged_in = true;
                break;
            }
        }
        assert!(logged_in);
        let before = member_status()[2].open_sessions;
        let opened: Vec<Session> = (0..9).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        let status = member_status();
        assert_eq!(status[2].open_sessions, before, "no new session on the member that rejected the PIN");
        assert_eq!(status[0].open_sessions + status[1].open_sessions, 9 + 3 - before);
        for session in &opened {
            assert_eq!(session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).unwrap().len(), 2);
        }
    }

    /// Sessions opened while another thread logs in end up logged in on
    /// their members, whichever thread gets there first.
    #[timeout(180)]
    fn sessions_opened_during_login_are_logged_in() {
        let hsms = three_hsm_processes(false);
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&hsms, &dir.path().join("p11wld.log"));
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        let private_keys = [Attribute::Class(ObjectClass::PRIVATE_KEY)];
        for round in 0..30 {
            let keeper = pkcs11.open_ro_session(slot).unwrap();
            let barrier = std::sync::Barrier::new(4);
            let opened: Vec<Session> = std::thread::scope(|scope| {
                let openers: Vec<_> = (0..3)
                    .map(|_| {
                        let (pkcs11, barrier) = (&pkcs11, &barrier);
                        scope.spawn(move || {
                            barrier.wait();
                            pkcs11.open_ro_session(slot).unwrap()
                        })
                    })
                    .collect();
                barrier.wait();
                keeper.login(UserType::User, Some(&AuthPin::from(USER_PIN))).unwrap();
                openers.into_iter().map(|t| t.join().unwrap()).collect()
            });
            for session in &opened {
                let found = session.find_objects(&private_keys).unwrap();
                assert_eq!(found.len(), 2, "round {round}: a session opened during the login is logged out");
            }
            drop(opened);
            drop(keeper);
        }
    }

    /// An HSM that is stopped (SIGSTOP) when the application initializes
    /// the module does not block C_Initialize past the call deadline, and
    /// joins its WLD slot once it continues.
    #[timeout(120)]
    fn stopped_member_at_start_does_not_block() {
        let hsms = three_hsm_processes(false);
        hsms.hsms[1].stop();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&hsms, &dir.path().join("p11wld.log"));
        let _env = config.set_env();
        let started = Instant::now();
        let pkcs11 = load_initialized(&p11wld_module());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "C_Initialize took {took:?}");
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        assert_eq!(member_status().len(), 2);
        let session = pkcs11.open_ro_session(slot).unwrap();
        drop(session);

        hsms.hsms[1].cont();
        let started = Instant::now();
        while member_status().len() < 3 {
            assert!(started.elapsed() < 6 * PROBE_INTERVAL, "the continued member never joined");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
