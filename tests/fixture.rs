//! Tests of the integration-test fixture in `tests/common/` against SoftHSM2
//! and p11-kit directly, without p11wld.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::client::{
    find_key, load_initialized, load_p11kit_client, slot_with_serial, slots_with_label,
    user_session,
};
use common::keys;
use common::p11kit::P11_KIT_SERVER_ADDRESS;
use common::paths;
use common::procfs::live_group_members;
use common::softhsm::SOFTHSM2_CONF;
use common::{
    one_softhsm_with_tokens, three_hsm_processes, ConfigFile, ModuleEntry, P11KitHsm, ScopedEnv,
    SoftHsm, OTHER_LABEL, SO_PIN, USER_PIN, WLD_LABEL,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

/// Environment variable that the two isolation tests set to conflicting
/// values.
const CONFLICT_ENV: &str = "P11WLD_TEST_CONFLICT";

/// Sets `CONFLICT_ENV` to `value` and checks that no other test changes it,
/// which would happen if two tests ran in one process.
fn hold_conflicting_env(value: &str) {
    assert_eq!(
        std::env::var_os(CONFLICT_ENV),
        None,
        "{CONFLICT_ENV} is already set, so another test ran in this process"
    );
    std::env::set_var(CONFLICT_ENV, value);
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(10));
        assert_eq!(std::env::var(CONFLICT_ENV).as_deref(), Ok(value));
    }
}

isolated! {
    /// Sets an environment variable that `isolation_env_second` sets to
    /// another value.
    fn isolation_env_first() {
        hold_conflicting_env("first");
        std::env::set_var(SOFTHSM2_CONF, "/nonexistent/first.conf");
    }

    /// Sets an environment variable that `isolation_env_first` sets to
    /// another value.
    fn isolation_env_second() {
        hold_conflicting_env("second");
        std::env::set_var(SOFTHSM2_CONF, "/nonexistent/second.conf");
    }
}

/// Tests of the child-process runner behind `isolated!`.
mod runner {
    use super::*;
    use crate::common::isolate::{is_child, run_child, test_name, CHILD_ENV};
    use crate::isolated;

    /// Child-process target of `failing_child_fails_parent`. Passes when run
    /// any other way.
    #[test]
    fn child_target_fails() {
        if is_child("runner::child_target_fails") {
            panic!("deliberate failure in the child process");
        }
    }

    /// Child-process target of `hanging_child_times_out`. Passes when run
    /// any other way.
    #[test]
    fn child_target_hangs() {
        if is_child("runner::child_target_hangs") {
            thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Child-process target of `leftover_server_killed_after_timeout`: starts
    /// a p11-kit server, prints its pid and directories, then hangs. Passes
    /// when run any other way.
    #[test]
    fn child_target_leaves_server() {
        if is_child("runner::child_target_leaves_server") {
            let hsm = P11KitHsm::start("leftover", SoftHsm::new());
            println!("leftover server pid: {}", hsm.server_pid().unwrap());
            println!("leftover directory: {}", hsm.softhsm().dir().display());
            println!(
                "leftover directory: {}",
                hsm.socket().parent().unwrap().display()
            );
            thread::sleep(Duration::from_secs(3600));
        }
    }

    #[test]
    fn failing_child_fails_parent() {
        let outcome = run_child("runner::child_target_fails", Duration::from_secs(60)).unwrap();

        assert!(!outcome.timed_out);
        assert_eq!(
            outcome.status.code(),
            Some(101),
            "libtest exits with 101 on failure"
        );
        assert!(
            outcome
                .output
                .contains("deliberate failure in the child process"),
            "the child's panic message is in its output:\n{}",
            outcome.output
        );
        let message = outcome.check().unwrap_err();
        assert!(message.contains("runner::child_target_fails"), "{message}");
    }

    #[test]
    fn hanging_child_times_out() {
        let timeout = Duration::from_secs(2);
        let outcome = run_child("runner::child_target_hangs", timeout).unwrap();

        assert!(outcome.timed_out);
        assert!(outcome.elapsed >= timeout);
        assert!(outcome.elapsed < timeout + Duration::from_secs(10));
        assert!(
            !std::path::Path::new(&format!("/proc/{}", outcome.pid)).exists(),
            "the killed child process {} is gone",
            outcome.pid
        );
        let message = outcome.check().unwrap_err();
        assert!(message.contains("timed out"), "{message}");
    }

    #[test]
    fn leftover_server_killed_after_timeout() {
        let outcome =
            run_child("runner::child_target_leaves_server", Duration::from_secs(5)).unwrap();
        // The first printed line follows libtest's "test NAME ... " on the
        // same line, so the lines are searched, not matched by prefix.
        let leftover_dirs: Vec<&str> = outcome
            .output
            .lines()
            .filter_map(|line| line.split_once("leftover directory: "))
            .map(|(_, dir)| dir)
            .collect();
        for dir in &leftover_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }

        assert!(outcome.timed_out, "output:\n{}", outcome.output);
        assert_eq!(leftover_dirs.len(), 2, "output:\n{}", outcome.output);
        let pid: i32 = outcome
            .output
            .lines()
            .find_map(|line| line.split_once("leftover server pid: "))
            .map(|(_, pid)| pid)
            .expect("the child printed the server pid")
            .parse()
            .unwrap();
        assert_eq!(
            live_group_members(pid),
            Vec::new(),
            "the server group {pid} was killed after the child timed out"
        );
    }

    #[test]
    fn unknown_test_name_fails() {
        let outcome = run_child("runner::no_such_test", Duration::from_secs(60)).unwrap();

        assert!(
            outcome.status.success(),
            "libtest passes when it runs no test"
        );
        let message = outcome.check().unwrap_err();
        assert!(message.contains("ran no test"), "{message}");
    }

    #[test]
    fn test_name_drops_crate_name() {
        assert_eq!(test_name("fixture", "top_level"), "top_level");
        assert_eq!(test_name("fixture::runner", "nested"), "runner::nested");
        assert_eq!(test_name("fixture::a::b", "deep"), "a::b::deep");
    }

    isolated! {
        /// Runs in a child process, under the nested test name.
        #[timeout(60)]
        fn nested_test_runs_in_child() {
            assert!(is_child("runner::nested_test_runs_in_child"));
            assert_eq!(
                std::env::var(CHILD_ENV).as_deref(),
                Ok("runner::nested_test_runs_in_child")
            );
        }
    }
}

/// Returns the value of one attribute of `object`.
fn attribute(session: &Session, object: ObjectHandle, kind: AttributeType) -> Attribute {
    let mut values = session
        .get_attributes(object, &[kind])
        .unwrap_or_else(|e| panic!("C_GetAttributeValue of {kind} failed: {e}"));
    assert_eq!(values.len(), 1, "one value for {kind}");
    values.remove(0)
}

/// Returns true for the attributes of the key set that a sensitive key does
/// not reveal.
fn is_secret_component(class: ObjectClass, attribute: &Attribute) -> bool {
    match attribute {
        Attribute::PrivateExponent(_)
        | Attribute::Prime1(_)
        | Attribute::Prime2(_)
        | Attribute::Exponent1(_)
        | Attribute::Exponent2(_)
        | Attribute::Coefficient(_) => true,
        Attribute::Value(_) => class != ObjectClass::PUBLIC_KEY,
        _ => false,
    }
}

/// Checks that the token in `session` contains exactly the standard key set:
/// every attribute of the import templates reads back unchanged, except the
/// secret components, which are sensitive.
fn assert_key_set(session: &Session, token: &str) {
    let all = session.find_objects(&[]).unwrap();
    assert_eq!(
        all.len(),
        keys::KEY_SET_OBJECT_COUNT,
        "objects on token {token}"
    );

    for object in keys::key_set() {
        let handle = find_key(session, object.class, object.label);
        for expected in &object.template {
            let kind = expected.attribute_type();
            if is_secret_component(object.class, expected) {
                let info = session.get_attribute_info(handle, &[kind]).unwrap();
                assert!(
                    matches!(info.as_slice(), [AttributeInfo::Sensitive]),
                    "{kind} of {} ({}) on token {token} is sensitive, got {info:?}",
                    object.label,
                    object.class
                );
            } else {
                assert_eq!(
                    &attribute(session, handle, kind),
                    expected,
                    "{kind} of {} ({}) on token {token}",
                    object.label,
                    object.class
                );
            }
        }
    }

    let aes_key = find_key(session, ObjectClass::SECRET_KEY, keys::AES_LABEL);
    assert_eq!(
        attribute(session, aes_key, AttributeType::ValueLen),
        Attribute::ValueLen(32.into()),
        "the token derives CKA_VALUE_LEN of {} on token {token}",
        keys::AES_LABEL
    );
}

/// Loads SoftHSM2 for `softhsm`'s directory in this process.
fn load_softhsm(softhsm: &SoftHsm) -> (Pkcs11, ScopedEnv) {
    let conf = ScopedEnv::set(SOFTHSM2_CONF, softhsm.conf_path());
    (load_initialized(&paths::softhsm_module()), conf)
}

isolated! {
    fn one_softhsm_tokens_and_slots() {
        let arrangement = one_softhsm_with_tokens();
        eprintln!("one_softhsm_with_tokens took {:?}", arrangement.setup_time);

        let tokens = arrangement.softhsm.tokens();
        assert_eq!(
            tokens.len(),
            5,
            "3 WLD_A tokens, OTHER and the free slot: {tokens:?}"
        );
        let free: Vec<_> = tokens.iter().filter(|t| !t.initialized).collect();
        assert_eq!(free.len(), 1, "one free slot: {tokens:?}");
        for serial in &arrangement.wld_serials {
            let token = tokens.iter().find(|t| &t.serial == serial).unwrap();
            assert_eq!(token.label, WLD_LABEL);
            assert!(token.user_pin_initialized);
        }
        let other = tokens
            .iter()
            .find(|t| t.serial == arrangement.other_serial)
            .unwrap();
        assert_eq!(other.label, OTHER_LABEL);
        assert!(other.user_pin_initialized);

        let mut serials: Vec<&String> = tokens
            .iter()
            .filter(|t| t.initialized)
            .map(|t| &t.serial)
            .collect();
        serials.sort();
        serials.dedup();
        assert_eq!(serials.len(), 4, "every token has its own serial number");

        let entry = arrangement.module_entry("softhsm");
        assert_eq!(entry.path, paths::softhsm_module());
        assert_eq!(
            entry.env,
            vec![(
                SOFTHSM2_CONF.to_owned(),
                arrangement.softhsm.conf_path().display().to_string()
            )]
        );
    }

    fn one_softhsm_key_set_on_tokens() {
        let arrangement = one_softhsm_with_tokens();
        let (pkcs11, _conf) = load_softhsm(&arrangement.softhsm);

        let wld_slots = slots_with_label(&pkcs11, WLD_LABEL);
        assert_eq!(wld_slots.len(), 3);
        for serial in arrangement
            .wld_serials
            .iter()
            .chain([&arrangement.other_serial])
        {
            let slot = slot_with_serial(&pkcs11, serial);
            let session = user_session(&pkcs11, slot, USER_PIN);
            assert_key_set(&session, serial);
        }
    }

    /// Signs on the second WLD_A token and checks the signatures with the
    /// key material of the fixture, outside any HSM.
    fn token_two_signatures_verify() {
        let arrangement = one_softhsm_with_tokens();
        let (pkcs11, _conf) = load_softhsm(&arrangement.softhsm);
        let slot = slot_with_serial(&pkcs11, &arrangement.wld_serials[1]);
        let session = user_session(&pkcs11, slot, USER_PIN);
        let message = b"signed on token 2";
        let rsa_key = find_key(&session, ObjectClass::PRIVATE_KEY, keys::RSA_LABEL);
        let ec_key = find_key(&session, ObjectClass::PRIVATE_KEY, keys::EC_LABEL);

        let pkcs1 = session
            .sign(&Mechanism::Sha256RsaPkcs, rsa_key, message)
            .unwrap();
        assert_eq!(keys::verify_rsa_pkcs1_sha256(message, &pkcs1), Ok(()));
        assert!(keys::verify_rsa_pkcs1_sha256(b"another message", &pkcs1).is_err());

        let pss = session
            .sign(&keys::rsa_pss_sha256_mechanism(), rsa_key, message)
            .unwrap();
        assert_eq!(keys::verify_rsa_pss_sha256(message, &pss), Ok(()));
        assert!(keys::verify_rsa_pss_sha256(b"another message", &pss).is_err());

        let digest = keys::sha256(message);
        let ecdsa = session.sign(&Mechanism::Ecdsa, ec_key, &digest).unwrap();
        assert_eq!(ecdsa.len(), 64, "CKM_ECDSA returns r || s");
        assert_eq!(keys::verify_ecdsa_p256_sha256(message, &ecdsa), Ok(()));
        assert_eq!(keys::verify_ecdsa_p256_prehash(&digest, &ecdsa), Ok(()));
        assert!(keys::verify_ecdsa_p256_sha256(b"another message", &ecdsa).is_err());

        // The public key objects on the token verify the same signatures.
        let rsa_public = find_key(&session, ObjectClass::PUBLIC_KEY, keys::RSA_LABEL);
        let ec_public = find_key(&session, ObjectClass::PUBLIC_KEY, keys::EC_LABEL);
        let pss_mechanism = keys::rsa_pss_sha256_mechanism();
        session
            .verify(&Mechanism::Sha256RsaPkcs, rsa_public, message, &pkcs1)
            .expect("the token's RSA public key verifies the PKCS#1 v1.5 signature");
        session
            .verify(&pss_mechanism, rsa_public, message, &pss)
            .expect("the token's RSA public key verifies the PSS signature");
        session
            .verify(&Mechanism::Ecdsa, ec_public, &digest, &ecdsa)
            .expect("the token's EC public key verifies the ECDSA signature");
    }

    /// Encrypts with the AES key of one token and decrypts with that of
    /// another, which works only if both tokens contain the same key.
    fn aes_key_same_on_tokens() {
        let arrangement = one_softhsm_with_tokens();
        let (pkcs11, _conf) = load_softhsm(&arrangement.softhsm);
        let iv = [0x24u8; 16];
        let plaintext = [0x5au8; 32];

        let mut ciphertexts = Vec::new();
        for serial in &arrangement.wld_serials {
            let session = user_session(&pkcs11, slot_with_serial(&pkcs11, serial), USER_PIN);
            let key = find_key(&session, ObjectClass::SECRET_KEY, keys::AES_LABEL);
            ciphertexts.push(
                session
                    .encrypt(&Mechanism::AesCbc(iv), key, &plaintext)
                    .unwrap(),
            );
        }
        assert_eq!(ciphertexts[0], ciphertexts[1]);
        assert_eq!(ciphertexts[0], ciphertexts[2]);
        assert_ne!(ciphertexts[0].as_slice(), plaintext.as_slice());

        let last = arrangement.wld_serials.last().unwrap();
        let session = user_session(&pkcs11, slot_with_serial(&pkcs11, last), USER_PIN);
        let key = find_key(&session, ObjectClass::SECRET_KEY, keys::AES_LABEL);
        let decrypted = session
            .decrypt(&Mechanism::AesCbc(iv), key, &ciphertexts[0])
            .unwrap();
        assert_eq!(decrypted, plaintext);
    }

    /// Checks that the fixture unloads SoftHSM2 after setting up tokens, and
    /// that a later `dlopen` of the same library, as p11wld does, initializes
    /// it again.
    fn softhsm_reloads_after_fixture_setup() {
        let arrangement = one_softhsm_with_tokens();
        assert!(
            !mapped_in_this_process("libsofthsm2.so"),
            "the fixture unloaded SoftHSM2 after setup"
        );

        let _conf = ScopedEnv::set(SOFTHSM2_CONF, arrangement.softhsm.conf_path());
        let slot_count = raw_softhsm_slot_count();
        assert_eq!(slot_count, 5, "4 tokens and the free slot");

        // A second dlopen after the first was closed works the same way.
        assert_eq!(raw_softhsm_slot_count(), 5);
    }

    /// Checks that the fixture rejects setting up tokens while SoftHSM2 is
    /// initialized in this process, instead of finalizing it under its user.
    fn softhsm_setup_rejects_loaded_module() {
        let softhsm = SoftHsm::new();
        let (pkcs11, _conf) = load_softhsm(&softhsm);

        let result = std::panic::catch_unwind(|| softhsm.init_token(WLD_LABEL, SO_PIN, USER_PIN));
        let message = match result {
            Ok(serial) => panic!("init_token succeeded with serial number {serial}"),
            Err(payload) => payload.downcast::<String>().map(|m| *m).unwrap_or_default(),
        };
        assert!(message.contains("already initialized"), "{message}");
        assert!(message.contains("CryptokiAlreadyInitialized"), "{message}");
        assert_eq!(
            pkcs11.get_slots_with_token().unwrap().len(),
            1,
            "SoftHSM2 still works"
        );
    }
}

fn mapped_in_this_process(library: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps is readable")
        .contains(library)
}

/// Loads SoftHSM2 with `dlopen`, calls `C_GetFunctionList`, `C_Initialize`,
/// `C_GetSlotList` and `C_Finalize` through the raw function list, and
/// returns the number of slots with a token.
fn raw_softhsm_slot_count() -> u64 {
    type GetFunctionList =
        unsafe extern "C" fn(*mut *mut cryptoki_sys::CK_FUNCTION_LIST) -> cryptoki_sys::CK_RV;

    // SAFETY: SoftHSM2 is a PKCS#11 module, and loading it runs no
    // initialization code with preconditions.
    let library = unsafe { libloading::Library::new(paths::softhsm_module()) }.unwrap();
    // SAFETY: the symbol has the C_GetFunctionList signature that PKCS#11
    // defines.
    let get_function_list: libloading::Symbol<GetFunctionList> =
        unsafe { library.get(b"C_GetFunctionList") }.unwrap();
    let mut list = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer.
    assert_eq!(
        unsafe { get_function_list(&mut list) },
        cryptoki_sys::CKR_OK
    );
    // SAFETY: on CKR_OK the module set `list` to its function list, which
    // stays valid while `library` is loaded.
    let functions = unsafe { &*list };

    let initialize = functions.C_Initialize.unwrap();
    let get_slot_list = functions.C_GetSlotList.unwrap();
    let finalize = functions.C_Finalize.unwrap();
    let mut count: cryptoki_sys::CK_ULONG = 0;
    // SAFETY: PKCS#11 allows NULL arguments for C_Initialize and
    // C_Finalize, and a NULL slot list to query the count.
    unsafe {
        assert_eq!(initialize(std::ptr::null_mut()), cryptoki_sys::CKR_OK);
        assert_eq!(
            get_slot_list(cryptoki_sys::CK_TRUE, std::ptr::null_mut(), &mut count),
            cryptoki_sys::CKR_OK
        );
        assert_eq!(finalize(std::ptr::null_mut()), cryptoki_sys::CKR_OK);
    }
    drop(library);
    count
}

/// Returns the PKCS#11 error code of a failed cryptoki call.
fn rv_error<T: std::fmt::Debug>(result: cryptoki::error::Result<T>) -> RvError {
    match result {
        Err(Error::Pkcs11(rv, _function)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// Signs with the RSA key through `pkcs11` on the token with `serial` and
/// checks the signature.
fn sign_and_verify(pkcs11: &Pkcs11, serial: &str) {
    let session = user_session(pkcs11, slot_with_serial(pkcs11, serial), USER_PIN);
    let key = find_key(&session, ObjectClass::PRIVATE_KEY, keys::RSA_LABEL);
    let signature = session
        .sign(&Mechanism::Sha256RsaPkcs, key, b"message")
        .unwrap();
    assert_eq!(
        keys::verify_rsa_pkcs1_sha256(b"message", &signature),
        Ok(())
    );
}

/// Starts one HSM with a WLD_A token that contains the key set.
fn start_hsm(name: &str) -> (P11KitHsm, String) {
    let softhsm = SoftHsm::new();
    let serial = softhsm.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN);
    (P11KitHsm::start(name, softhsm), serial)
}

/// Waits until `hsm` has `expected` client connections, at most 5 s.
fn wait_for_connections(hsm: &P11KitHsm, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while hsm.connection_count() != expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        hsm.connection_count(),
        expected,
        "processes: {:?}",
        hsm.processes()
    );
}

isolated! {
    /// Checks that a server started with the URI `pkcs11:` serves every
    /// slot, including the free one, and forks one process per connection
    /// into its group.
    fn p11kit_server_serves_all_slots() {
        let started = Instant::now();
        let (hsm, serial) = start_hsm("hsm1");
        eprintln!(
            "one token with the key set and its server took {:?}",
            started.elapsed()
        );
        assert_eq!(
            hsm.processes().len(),
            1,
            "only the server before any client"
        );
        assert_eq!(hsm.connection_count(), 0);

        let pkcs11 = load_p11kit_client(&hsm.address());
        wait_for_connections(&hsm, 1);
        let slots = pkcs11.get_slots_with_token().unwrap();
        let ids: Vec<u64> = slots.iter().map(|slot| slot.id()).collect();
        assert_eq!(ids, vec![0x11, 0x12], "p11-kit assigns its own slot ids");
        let infos: Vec<_> = slots
            .iter()
            .map(|slot| pkcs11.get_token_info(*slot).unwrap())
            .collect();
        let initialized: Vec<_> = infos
            .iter()
            .filter(|info| info.token_initialized())
            .collect();
        assert_eq!(initialized.len(), 1);
        assert_eq!(initialized[0].label(), WLD_LABEL);
        assert_eq!(initialized[0].serial_number(), serial);
        let session = user_session(&pkcs11, slot_with_serial(&pkcs11, &serial), USER_PIN);
        assert_key_set(&session, &serial);
        drop(session);

        let second = load_p11kit_client(&hsm.address());
        wait_for_connections(&hsm, 2);
        second.finalize().unwrap();
        pkcs11.finalize().unwrap();
        wait_for_connections(&hsm, 0);

        let entry = hsm.module_entry();
        assert_eq!(entry.name, "hsm1");
        assert_eq!(entry.path, paths::p11kit_client_module());
        assert_eq!(
            entry.env,
            vec![(P11_KIT_SERVER_ADDRESS.to_owned(), hsm.address())]
        );
        assert_eq!(
            hsm.address(),
            format!("unix:path={}", hsm.socket().display())
        );
    }

    fn p11kit_token_uri_hides_free_slot() {
        let softhsm = SoftHsm::new();
        let serial = softhsm.init_token(WLD_LABEL, SO_PIN, USER_PIN);
        let hsm = P11KitHsm::start_with_uri("hsm1", softhsm, &format!("pkcs11:token={WLD_LABEL}"));

        let pkcs11 = load_p11kit_client(&hsm.address());
        let slots = pkcs11.get_slots_with_token().unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(
            pkcs11.get_token_info(slots[0]).unwrap().serial_number(),
            serial
        );
    }

    /// Checks that after SIGKILL a client gets CKR_DEVICE_ERROR, also after
    /// the server is restarted, until it calls C_Finalize and C_Initialize.
    fn p11kit_kill_and_restart() {
        let (mut hsm, serial) = start_hsm("hsm1");
        let pkcs11 = load_p11kit_client(&hsm.address());
        let session = user_session(&pkcs11, slot_with_serial(&pkcs11, &serial), USER_PIN);
        let key = find_key(&session, ObjectClass::PRIVATE_KEY, keys::RSA_LABEL);
        session
            .sign(&Mechanism::Sha256RsaPkcs, key, b"before")
            .unwrap();

        hsm.kill_hard();
        assert!(!hsm.is_running());
        assert!(
            hsm.socket().exists(),
            "SIGKILL leaves the socket file behind"
        );
        assert_eq!(
            rv_error(session.sign(&Mechanism::Sha256RsaPkcs, key, b"after")),
            RvError::DeviceError
        );
        assert_eq!(
            rv_error(pkcs11.get_slots_with_token()),
            RvError::DeviceError
        );

        let started = Instant::now();
        hsm.restart();
        eprintln!("restart took {:?}", started.elapsed());
        assert!(hsm.is_running());
        assert_eq!(
            rv_error(session.sign(&Mechanism::Sha256RsaPkcs, key, b"after")),
            RvError::DeviceError
        );
        assert_eq!(
            rv_error(pkcs11.get_slots_with_token()),
            RvError::DeviceError
        );
        assert_eq!(rv_error(pkcs11.get_library_info()), RvError::DeviceError);

        drop(session);
        let same_instance = pkcs11.clone();
        pkcs11.finalize().unwrap();
        same_instance
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        sign_and_verify(&same_instance, &serial);
        let ids: Vec<u64> = same_instance
            .get_slots_with_token()
            .unwrap()
            .iter()
            .map(|s| s.id())
            .collect();
        assert_eq!(
            ids,
            vec![0x11, 0x12],
            "the slot ids are the same after the restart"
        );
    }

    /// Checks that with the server down, C_Initialize of p11-kit-client.so
    /// still succeeds and the client sees no slots.
    fn p11kit_client_without_server() {
        let (mut hsm, _serial) = start_hsm("hsm1");
        let pkcs11 = load_p11kit_client(&hsm.address());
        hsm.kill_hard();

        let same_instance = pkcs11.clone();
        pkcs11.finalize().unwrap();
        same_instance
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        assert_eq!(same_instance.get_all_slots().unwrap(), Vec::new());
    }

    /// Checks that SIGSTOP blocks calls, including a new client's
    /// C_Initialize, and SIGCONT lets them finish. SIGKILL ends a blocked
    /// call with CKR_DEVICE_ERROR.
    fn p11kit_stop_and_cont() {
        let (mut hsm, serial) = start_hsm("hsm1");
        let pkcs11 = load_p11kit_client(&hsm.address());
        let slot = slot_with_serial(&pkcs11, &serial);

        hsm.stop();
        assert!(
            hsm.processes().iter().all(|p| p.state == 'T'),
            "{:?}",
            hsm.processes()
        );
        let (info_sender, info_receiver) = mpsc::channel();
        let client = pkcs11.clone();
        thread::spawn(move || {
            let label = client
                .get_token_info(slot)
                .map(|info| info.label().to_owned());
            info_sender.send(label).unwrap();
        });
        let (init_sender, init_receiver) = mpsc::channel();
        let address = hsm.address();
        thread::spawn(move || {
            let second = load_p11kit_client(&address);
            init_sender
                .send(second.get_slots_with_token().map(|slots| slots.len()))
                .unwrap();
        });
        let blocked = Duration::from_millis(500);
        assert!(
            info_receiver.recv_timeout(blocked).is_err(),
            "C_GetTokenInfo blocks"
        );
        assert!(
            init_receiver.recv_timeout(blocked).is_err(),
            "a new client blocks"
        );

        hsm.cont();
        let finished = Duration::from_secs(10);
        assert_eq!(
            info_receiver.recv_timeout(finished).unwrap().unwrap(),
            WLD_LABEL
        );
        assert_eq!(init_receiver.recv_timeout(finished).unwrap().unwrap(), 2);
        sign_and_verify(&pkcs11, &serial);

        hsm.stop();
        let (sender, receiver) = mpsc::channel();
        let client = pkcs11.clone();
        thread::spawn(move || {
            sender
                .send(client.get_token_info(slot).map(|_| ()))
                .unwrap()
        });
        assert!(
            receiver.recv_timeout(blocked).is_err(),
            "C_GetTokenInfo blocks"
        );
        hsm.kill_hard();
        let result = receiver.recv_timeout(finished).unwrap();
        assert_eq!(rv_error(result), RvError::DeviceError);
    }

    /// Checks that p11-kit-client.so reads P11_KIT_SERVER_ADDRESS in
    /// C_GetFunctionList, and that each call makes an independent instance.
    fn p11kit_client_reads_address_early() {
        let (first, first_serial) = start_hsm("hsm1");
        let (second, second_serial) = start_hsm("hsm2");
        let path = paths::p11kit_client_module();
        let unreachable = "unix:path=/nonexistent/p11wld.sock";

        // Both Pkcs11::new calls dlopen the same file, which returns the
        // same library handle, and then call C_GetFunctionList.
        let to_first = {
            let _address = ScopedEnv::set(P11_KIT_SERVER_ADDRESS, first.address());
            Pkcs11::new(&path).unwrap()
        };
        let to_second = {
            let _address = ScopedEnv::set(P11_KIT_SERVER_ADDRESS, second.address());
            Pkcs11::new(&path).unwrap()
        };
        {
            let _address = ScopedEnv::set(P11_KIT_SERVER_ADDRESS, unreachable);
            for pkcs11 in [&to_first, &to_second] {
                pkcs11
                    .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                    .unwrap();
            }
        }
        sign_and_verify(&to_first, &first_serial);
        sign_and_verify(&to_second, &second_serial);
        assert!(slots_with_serial(&to_first, &second_serial).is_empty());
        assert!(slots_with_serial(&to_second, &first_serial).is_empty());

        // An address set only for C_Initialize is not used.
        let late = {
            let _address = ScopedEnv::set(P11_KIT_SERVER_ADDRESS, unreachable);
            Pkcs11::new(&path).unwrap()
        };
        {
            let _address = ScopedEnv::set(P11_KIT_SERVER_ADDRESS, first.address());
            late.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .unwrap();
        }
        assert_eq!(late.get_all_slots().unwrap(), Vec::new());
    }

    fn three_hsm_processes_arrangement() {
        let arrangement = three_hsm_processes(false);
        eprintln!("three_hsm_processes took {:?}", arrangement.setup_time);
        assert_eq!(arrangement.hsms.len(), 3);
        assert_eq!(arrangement.serials.len(), 3);

        for (hsm, serial) in arrangement.hsms.iter().zip(&arrangement.serials) {
            let pkcs11 = load_p11kit_client(&hsm.address());
            let slots = pkcs11.get_slots_with_token().unwrap();
            assert_eq!(slots.len(), 1, "only the WLD_A token of {}", hsm.name());
            let session = user_session(&pkcs11, slot_with_serial(&pkcs11, serial), USER_PIN);
            assert_key_set(&session, serial);
        }

        let config = arrangement.write_config(common::setups::DEFAULT_EXTRA);
        let parsed: toml::Table = config.text().parse().unwrap();
        let modules = parsed["module"].as_array().unwrap();
        assert_eq!(modules.len(), 3);
        for (number, (module, hsm)) in modules.iter().zip(&arrangement.hsms).enumerate() {
            assert_eq!(
                module["name"].as_str(),
                Some(format!("hsm{}", number + 1).as_str())
            );
            assert_eq!(
                module["path"].as_str(),
                Some(paths::p11kit_client_module().to_str().unwrap())
            );
            let address = module["env"][P11_KIT_SERVER_ADDRESS].as_str();
            assert_eq!(address, Some(hsm.address().as_str()));
        }
        assert_eq!(parsed["wld"]["policy"].as_str(), Some("least-sessions"));
        assert_eq!(parsed["log"]["level"].as_str(), Some("info"));
    }

    fn three_hsm_processes_spare_slot() {
        let arrangement = three_hsm_processes(true);
        for (hsm, serial) in arrangement.hsms.iter().zip(&arrangement.serials) {
            let pkcs11 = load_p11kit_client(&hsm.address());
            let infos: Vec<_> = pkcs11
                .get_slots_with_token()
                .unwrap()
                .into_iter()
                .map(|slot| pkcs11.get_token_info(slot).unwrap())
                .collect();
            assert_eq!(
                infos.len(),
                2,
                "the WLD_A token and the free slot of {}",
                hsm.name()
            );
            assert_eq!(
                infos
                    .iter()
                    .filter(|info| !info.token_initialized())
                    .count(),
                1
            );
            assert_eq!(slots_with_serial(&pkcs11, serial).len(), 1);
        }
    }

    fn config_file_escapes_values() {
        let entry = ModuleEntry::new("odd \"name\"", "/path/with \\ backslash/module.so")
            .with_env("PLAIN_NAME", "value with \"quotes\"")
            .with_env("name.with.dots", "x");
        let config = ConfigFile::write(
            &[entry.clone(), ModuleEntry::new("plain", "/m.so")],
            "[log]\nlevel = \"debug\"",
        );

        let text = config.text();
        assert!(text.contains("env = { PLAIN_NAME = "), "{text}");
        let parsed: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("invalid TOML: {e}\n{text}"));
        let modules = parsed["module"].as_array().unwrap();
        assert_eq!(modules.len(), 2);
        assert_eq!(modules[0]["name"].as_str(), Some(entry.name.as_str()));
        assert_eq!(modules[0]["path"].as_str(), entry.path.to_str());
        assert_eq!(
            modules[0]["env"]["PLAIN_NAME"].as_str(),
            Some("value with \"quotes\"")
        );
        assert_eq!(modules[0]["env"]["name.with.dots"].as_str(), Some("x"));
        assert!(modules[1].get("env").is_none());
        assert_eq!(parsed["log"]["level"].as_str(), Some("debug"));

        let _guard = config.set_env();
        assert_eq!(
            std::env::var_os("P11WLD_CONFIG").as_deref(),
            Some(config.path().as_os_str())
        );
    }
}

/// Returns the slots of the token with serial number `serial`.
fn slots_with_serial(pkcs11: &Pkcs11, serial: &str) -> Vec<cryptoki::slot::Slot> {
    pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .filter(|slot| pkcs11.get_token_info(*slot).unwrap().serial_number() == serial)
        .collect()
}

#[test]
fn key_files_match_public_keys() {
    // rsa and p256 share this trait from the pkcs8 crate.
    use p256::pkcs8::DecodePublicKey as _;

    let rsa_public = rsa::RsaPublicKey::from_public_key_pem(include_str!("data/rsa-2048.pub.pem"));
    assert_eq!(rsa_public.unwrap(), keys::rsa_public_key());
    let ec_public = p256::PublicKey::from_public_key_pem(include_str!("data/ec-p256.pub.pem"));
    assert_eq!(ec_public.unwrap(), keys::ec_secret_key().public_key());
    assert_eq!(keys::ec_public_point().len(), 65);
    assert_eq!(keys::ec_point_attribute()[..2], [0x04, 0x41]);
}

#[test]
fn built_programs_and_modules_exist() {
    for path in [
        paths::p11wld_cli(),
        paths::p11wld_module(),
        paths::softhsm_module(),
        paths::p11kit_client_module(),
    ] {
        assert!(path.exists(), "{} exists", path.display());
    }
}
