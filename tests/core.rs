//! The core of the module through its C ABI: WLD slots grouped by label,
//! sessions spread over the members, virtual object handles that work in
//! every session, login applied to every member, and the configuration.

mod common;

use std::ffi::c_ulong;

use common::client::{find_key, load_initialized};
use common::keys;
use common::paths::p11wld_module;
use common::{one_softhsm_with_tokens, three_hsm_processes, ConfigFile, SoftHsm};
use common::{OTHER_LABEL, SO_PIN, USER_PIN, WLD_LABEL};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p11wld::ffi::ext::sys;

/// Reads the member status of every WLD slot through the p11wld extension
/// of the module that `pkcs11` loaded.
fn member_status(_pkcs11: &Pkcs11) -> Vec<sys::P11WLD_MEMBER_STATUS> {
    // SAFETY: the library is the one `pkcs11` already loaded, so dlopen
    // returns the same instance, and the symbol has the declared type.
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

fn open_sessions_per_member(pkcs11: &Pkcs11) -> Vec<u64> {
    member_status(pkcs11)
        .iter()
        .map(|m| m.open_sessions)
        .collect()
}

fn wld_slot(pkcs11: &Pkcs11, label: &str) -> Slot {
    let slots = common::client::slots_with_label(pkcs11, label);
    assert_eq!(slots.len(), 1, "one WLD slot labelled {label}");
    slots[0]
}

fn rv_of(error: Error) -> RvError {
    match error {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("expected a PKCS#11 error, got {other}"),
    }
}

fn login(session: &Session) {
    session
        .login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .expect("C_Login as user");
}

/// Writes a configuration from `text` and points P11WLD_CONFIG at it.
fn use_config(text: &str) -> (ConfigFile, common::ScopedEnv) {
    let config = ConfigFile::write_text(text);
    let env = config.set_env();
    (config, env)
}

fn softhsm_entry(softhsm: &SoftHsm) -> String {
    format!(
        "[[module]]\nname = \"softhsm\"\npath = \"{}\"\nenv = {{ SOFTHSM2_CONF = \"{}\" }}\n",
        common::paths::softhsm_module().display(),
        softhsm.conf_path().display()
    )
}

isolated! {
    /// Three WLD_A tokens and one OTHER token on one SoftHSM2 become two WLD
    /// slots with the tokens' labels and serials of their own.
    fn slots_grouped_by_label() {
        let setup = one_softhsm_with_tokens();
        let config = setup.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());

        let slots = pkcs11.get_slots_with_token().expect("C_GetSlotList");
        assert_eq!(slots.len(), 2);
        let labels: Vec<String> = slots
            .iter()
            .map(|s| pkcs11.get_token_info(*s).unwrap().label().to_owned())
            .collect();
        assert_eq!(labels, vec![OTHER_LABEL.to_owned(), WLD_LABEL.to_owned()]);

        let info = pkcs11.get_token_info(wld_slot(&pkcs11, WLD_LABEL)).unwrap();
        assert_eq!(info.serial_number().len(), 16);
        assert!(!setup.wld_serials.iter().any(|s| s == info.serial_number()));
        assert_eq!(info.manufacturer_id(), "p11wld");

        let status = member_status(&pkcs11);
        assert_eq!(status.len(), 4);
        let wld_members = status.iter().filter(|m| m.wld_slot_id == slots[1].id());
        assert_eq!(wld_members.count(), 3);
    }

    /// Labels compare with trailing blanks removed only: a token labelled
    /// " WLD_A" gets a WLD slot of its own.
    fn leading_blank_is_another_label() {
        let setup = one_softhsm_with_tokens();
        setup.softhsm.init_token(" WLD_A", SO_PIN, USER_PIN);
        let config = setup.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());

        let slots = pkcs11.get_slots_with_token().expect("C_GetSlotList");
        assert_eq!(slots.len(), 3);
        let raw_labels: Vec<String> = slots
            .iter()
            .map(|s| pkcs11.get_slot_info(*s).unwrap().slot_description().to_owned())
            .collect();
        assert!(raw_labels.iter().any(|d| d == "p11wld WLD slot  WLD_A"), "{raw_labels:?}");
        assert!(raw_labels.iter().any(|d| d == "p11wld WLD slot WLD_A"), "{raw_labels:?}");
    }

    /// Sessions opened on a WLD slot over three HSM processes land one on
    /// each member in turn under the least-sessions policy.
    fn sessions_spread_evenly() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);

        let sessions: Vec<Session> = (0..12).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        assert_eq!(open_sessions_per_member(&pkcs11), vec![4, 4, 4]);
        drop(sessions);
        assert_eq!(open_sessions_per_member(&pkcs11), vec![0, 0, 0]);
    }

    /// Sessions opened at the same moment from twelve threads spread four
    /// to each member: each random pick is claimed before the session opens.
    fn concurrent_opens_spread_evenly() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);
        for round in 0..5 {
            let barrier = std::sync::Barrier::new(12);
            let sessions: Vec<Session> = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..12)
                    .map(|_| {
                        let (pkcs11, barrier) = (&pkcs11, &barrier);
                        scope.spawn(move || {
                            barrier.wait();
                            pkcs11.open_ro_session(slot).unwrap()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            assert_eq!(open_sessions_per_member(&pkcs11), vec![4, 4, 4], "round {round}");
            drop(sessions);
        }
    }

    /// The round-robin policy also spreads sessions evenly.
    fn round_robin_spreads_evenly() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config("[wld]\npolicy = \"round-robin\"\n");
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);

        let _sessions: Vec<Session> = (0..9).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        assert_eq!(open_sessions_per_member(&pkcs11), vec![3, 3, 3]);
    }

    /// A key handle found in one session signs in sessions on the two other
    /// members, and every signature verifies with the fixture's public key.
    fn handle_works_across_members() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);

        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        assert_eq!(open_sessions_per_member(&pkcs11), vec![1, 1, 1]);
        login(&sessions[0]);
        let rsa = find_key(&sessions[0], ObjectClass::PRIVATE_KEY, "rsa-key");
        let ec = find_key(&sessions[0], ObjectClass::PRIVATE_KEY, "ec-key");
        let message = b"signed on every member";
        for session in &sessions {
            let signature = session.sign(&Mechanism::Sha256RsaPkcs, rsa, message).unwrap();
            keys::verify_rsa_pkcs1_sha256(message, &signature).unwrap();

            // p11-kit 0.24 forwards plain CKM_RSA_PKCS_PSS but not
            // CKM_SHA256_RSA_PKCS_PSS, so the digest is made here.
            let digest = keys::sha256(message);
            let pss = Mechanism::RsaPkcsPss(PkcsPssParams {
                hash_alg: MechanismType::SHA256,
                mgf: PkcsMgfType::MGF1_SHA256,
                s_len: 32.into(),
            });
            let signature = session.sign(&pss, rsa, &digest).unwrap();
            keys::verify_rsa_pss_sha256(message, &signature).unwrap();

            let signature = session.sign(&Mechanism::Ecdsa, ec, &digest).unwrap();
            keys::verify_ecdsa_p256_prehash(&digest, &signature).unwrap();
        }
    }

    /// Object handles are the same in every session: each session finds the
    /// same handle for the same key.
    fn find_returns_same_handle_everywhere() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);

        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        login(&sessions[0]);
        let handles: Vec<_> = sessions
            .iter()
            .map(|s| find_key(s, ObjectClass::PUBLIC_KEY, "ec-key"))
            .collect();
        assert_eq!(handles[0], handles[1]);
        assert_eq!(handles[1], handles[2]);
        let all: Vec<Vec<_>> = sessions
            .iter()
            .map(|s| {
                let mut found = s.find_objects(&[]).unwrap();
                found.sort_by_key(|h| h.handle());
                found
            })
            .collect();
        assert_eq!(all[0].len(), 5);
        assert_eq!(all[0], all[1]);
        assert_eq!(all[1], all[2]);
    }

    /// One C_Login logs the application into every member; C_Logout logs it
    /// out everywhere; the session states follow the virtual token.
    fn login_applies_to_every_member() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);

        let ro: Vec<Session> = (0..2).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        let rw = pkcs11.open_rw_session(slot).unwrap();
        assert_eq!(open_sessions_per_member(&pkcs11), vec![1, 1, 1]);
        let private_keys = [Attribute::Class(ObjectClass::PRIVATE_KEY)];
        for session in &ro {
            assert!(session.find_objects(&private_keys).unwrap().is_empty());
            assert_eq!(session.get_session_info().unwrap().session_state(), SessionState::RoPublic);
        }

        login(&ro[0]);
        for session in &ro {
            assert_eq!(session.find_objects(&private_keys).unwrap().len(), 2);
            assert_eq!(session.get_session_info().unwrap().session_state(), SessionState::RoUser);
        }
        assert_eq!(rw.find_objects(&private_keys).unwrap().len(), 2);
        assert_eq!(rw.get_session_info().unwrap().session_state(), SessionState::RwUser);
        let again = ro[1].login(UserType::User, Some(&AuthPin::from(USER_PIN)));
        assert_eq!(rv_of(again.unwrap_err()), RvError::UserAlreadyLoggedIn);

        // A session opened after the login lands on a member and is logged
        // in there too.
        let later = pkcs11.open_ro_session(slot).unwrap();
        assert_eq!(later.find_objects(&private_keys).unwrap().len(), 2);

        rw.logout().unwrap();
        for session in ro.iter().chain([&later]) {
            assert!(session.find_objects(&private_keys).unwrap().is_empty());
        }
        let twice = rw.logout();
        assert_eq!(rv_of(twice.unwrap_err()), RvError::UserNotLoggedIn);
    }

    /// A wrong PIN is tried on one member only: exactly one member's token
    /// reports a failed login afterwards.
    fn wrong_pin_tried_on_one_member() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);
        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();

        let wrong = sessions[0].login(UserType::User, Some(&AuthPin::from("999999")));
        assert_eq!(rv_of(wrong.unwrap_err()), RvError::PinIncorrect);
        assert_eq!(sessions[1].get_session_info().unwrap().session_state(), SessionState::RoPublic);
        drop(sessions);
        pkcs11.finalize().unwrap();

        let mut low = 0;
        for hsm in &hsms.hsms {
            let direct = common::client::load_p11kit_client(&hsm.address());
            let info = direct.get_token_info(direct.get_slots_with_token().unwrap()[0]).unwrap();
            if info.user_pin_count_low() {
                low += 1;
            }
        }
        assert_eq!(low, 1);
    }

    /// An SO login is refused while read-only sessions are open, and a
    /// read-only session is refused while the SO is logged in.
    fn so_login_rules() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);

        let rw = pkcs11.open_rw_session(slot).unwrap();
        let ro = pkcs11.open_ro_session(slot).unwrap();
        let so = rw.login(UserType::So, Some(&AuthPin::from(SO_PIN)));
        assert_eq!(rv_of(so.unwrap_err()), RvError::SessionReadOnlyExists);
        drop(ro);
        rw.login(UserType::So, Some(&AuthPin::from(SO_PIN))).unwrap();
        assert_eq!(rw.get_session_info().unwrap().session_state(), SessionState::RwSecurityOfficer);
        let refused = pkcs11.open_ro_session(slot);
        assert_eq!(rv_of(refused.unwrap_err()), RvError::SessionReadWriteSoExists);
    }

    /// A session object lives on the member of the session that made it.
    /// Another session that holds nothing on its own member moves there to
    /// use it, as PKCS#11 lets every session of the application use it; a
    /// session tied to another member by a session object of its own gets
    /// CKR_OBJECT_HANDLE_INVALID, never another object.
    fn session_object_followed_or_rejected() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);
        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_rw_session(slot).unwrap()).collect();
        assert_eq!(open_sessions_per_member(&pkcs11), vec![1, 1, 1]);
        login(&sessions[0]);
        let data = |label: &[u8]| {
            vec![
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(false),
                Attribute::Label(label.to_vec()),
                Attribute::Value(b"session data".to_vec()),
            ]
        };
        let object = sessions[0].create_object(&data(b"scratch")).unwrap();
        let own = sessions[2].create_object(&data(b"own")).unwrap();
        let value = sessions[0].get_attributes(object, &[AttributeType::Value]).unwrap();
        assert_eq!(value, vec![Attribute::Value(b"session data".to_vec())]);

        // The free session follows the object to its member.
        let followed = sessions[1].get_attributes(object, &[AttributeType::Value]).unwrap();
        assert_eq!(followed, value);
        let counts = open_sessions_per_member(&pkcs11);
        assert_eq!(counts.iter().filter(|&&n| n == 2).count(), 1, "{counts:?}");
        let found = sessions[1].find_objects(&[Attribute::Label(b"scratch".to_vec())]).unwrap();
        assert_eq!(found, vec![object]);

        // The tied session stays, and the object is not reachable there.
        let tied = sessions[2].get_attributes(object, &[AttributeType::Value]);
        assert_eq!(rv_of(tied.unwrap_err()), RvError::ObjectHandleInvalid);
        assert!(sessions[2].find_objects(&[Attribute::Label(b"scratch".to_vec())]).unwrap().is_empty());
        let own_value = sessions[2].get_attributes(own, &[AttributeType::Label]).unwrap();
        assert_eq!(own_value, vec![Attribute::Label(b"own".to_vec())]);

        let mut sessions = sessions.into_iter();
        drop(sessions.next());
        let rest: Vec<Session> = sessions.collect();
        let closed = rest[0].get_attributes(object, &[AttributeType::Label]);
        assert_eq!(rv_of(closed.unwrap_err()), RvError::ObjectHandleInvalid);
    }

    /// Two objects that share an identity on every member (identical in
    /// every attribute) each get a handle of their own that names the
    /// object on its member only. A session tied to another member gets
    /// CKR_OBJECT_HANDLE_INVALID for it instead of a guess; a free session
    /// moves to the handle's member.
    fn colliding_identities_stay_on_member() {
        let hsms = three_hsm_processes(false);
        for hsm in &hsms.hsms {
            let direct = common::client::load_p11kit_client(&hsm.address());
            let slot = direct.get_slots_with_token().unwrap()[0];
            let session = direct.open_rw_session(slot).unwrap();
            login(&session);
            // Identical in every attribute, so nothing tells them apart.
            for _ in 0..2 {
                session
                    .create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(false),
                        Attribute::Label(b"twin".to_vec()),
                        Attribute::Application(b"app".to_vec()),
                        Attribute::Value(b"same".to_vec()),
                    ])
                    .unwrap();
            }
        }
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);
        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_ro_session(slot).unwrap()).collect();
        assert_eq!(open_sessions_per_member(&pkcs11), vec![1, 1, 1]);
        // A session object of its own ties each session to its member.
        for session in &sessions {
            session
                .create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(false),
                    Attribute::Private(false),
                    Attribute::Label(b"tie".to_vec()),
                ])
                .unwrap();
        }

        let twins = [Attribute::Label(b"twin".to_vec())];
        let found: Vec<Vec<_>> = sessions.iter().map(|s| s.find_objects(&twins).unwrap()).collect();
        for handles in &found {
            assert_eq!(handles.len(), 2);
        }
        // Handles of one member's twins work there and nowhere else.
        for (i, session) in sessions.iter().enumerate() {
            for (j, handles) in found.iter().enumerate() {
                for handle in handles {
                    let result = session.get_attributes(*handle, &[AttributeType::Label]);
                    if i == j {
                        assert!(result.is_ok(), "own twin {handle} in session {i}");
                    } else {
                        assert_eq!(rv_of(result.unwrap_err()), RvError::ObjectHandleInvalid);
                    }
                }
            }
        }
        let all: Vec<_> = found.iter().flatten().collect();
        let mut unique = all.clone();
        unique.sort_by_key(|h| h.handle());
        unique.dedup();
        assert_eq!(unique.len(), 6, "each twin on each member has a handle of its own");

        // A free session follows a twin's handle to its member.
        let free = pkcs11.open_ro_session(slot).unwrap();
        let label = free.get_attributes(found[2][0], &[AttributeType::Label]).unwrap();
        assert_eq!(label, vec![Attribute::Label(b"twin".to_vec())]);
    }

    /// A token object created through the WLD slot lands on the session's
    /// member only, until the members are replicated.
    fn token_object_created_on_one_member() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let slot = wld_slot(&pkcs11, WLD_LABEL);
        let sessions: Vec<Session> = (0..3).map(|_| pkcs11.open_rw_session(slot).unwrap()).collect();
        login(&sessions[0]);

        let object = sessions[0]
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Label(b"one-member".to_vec()),
                Attribute::Value(b"v".to_vec()),
            ])
            .unwrap();
        let seen: Vec<usize> = sessions
            .iter()
            .map(|s| s.find_objects(&[Attribute::Label(b"one-member".to_vec())]).unwrap().len())
            .collect();
        assert_eq!(seen, vec![1, 0, 0]);
        let found = sessions[0].find_objects(&[Attribute::Label(b"one-member".to_vec())]).unwrap();
        assert_eq!(found, vec![object]);
        sessions[0].destroy_object(object).unwrap();
        let gone = sessions[0].get_attributes(object, &[AttributeType::Label]);
        assert_eq!(rv_of(gone.unwrap_err()), RvError::ObjectHandleInvalid);
    }

    /// Fixed slot ids from the configuration hold, labels not listed in
    /// `labels` are not exposed, and a listed label without tokens is a slot
    /// whose token is not present.
    fn configured_labels_and_ids() {
        let setup = one_softhsm_with_tokens();
        let text = format!(
            "{}[wld]\nlabels = [\"{WLD_LABEL}\", \"ABSENT\"]\n[[wld.slot]]\nlabel = \"{WLD_LABEL}\"\nid = 42\n",
            softhsm_entry(&setup.softhsm)
        );
        let (_config, _env) = use_config(&text);
        let pkcs11 = load_initialized(&p11wld_module());

        let all: Vec<u64> = pkcs11.get_all_slots().unwrap().iter().map(|s| s.id()).collect();
        assert_eq!(all, vec![0, 42]);
        let present: Vec<u64> = pkcs11.get_slots_with_token().unwrap().iter().map(|s| s.id()).collect();
        assert_eq!(present, vec![42]);
        let absent = pkcs11.get_all_slots().unwrap()[0];
        let info = pkcs11.get_token_info(absent);
        assert_eq!(rv_of(info.unwrap_err()), RvError::TokenNotPresent);
        let open = pkcs11.open_ro_session(absent);
        assert_eq!(rv_of(open.unwrap_err()), RvError::TokenNotPresent);
    }

    /// An invalid configuration makes C_Initialize fail with
    /// CKR_GENERAL_ERROR, and the error on stderr names the file, the line
    /// and what is wrong.
    fn invalid_config_named_in_log() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("p11wld.toml");
        std::fs::write(
            &config,
            "[log]\nlevel = \"warn\"\n\n[[module]]\nname = \"a\"\npath = \"/nonexistent.so\"\npolicy = 3\n",
        )
        .unwrap();
        let output = std::process::Command::new("pkcs11-tool")
            .arg("--module")
            .arg(p11wld_module())
            .arg("--list-slots")
            .env("P11WLD_CONFIG", &config)
            .output()
            .expect("run pkcs11-tool");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&config.display().to_string()), "{stderr}");
        assert!(stderr.contains("line 7"), "{stderr}");
        assert!(stderr.contains("policy"), "{stderr}");
        assert!(stderr.contains("CKR_GENERAL_ERROR") || stderr.contains("0x5"), "{stderr}");
    }

    /// A configuration file named by P11WLD_CONFIG that does not exist makes
    /// C_Initialize fail rather than fall back to the default.
    fn missing_config_file_fails() {
        let _env = common::ScopedEnv::set("P11WLD_CONFIG", "/nonexistent/p11wld.toml");
        let pkcs11 = Pkcs11::new(p11wld_module()).unwrap();
        let result = pkcs11.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ));
        assert_eq!(rv_of(result.unwrap_err()), RvError::GeneralError);
    }

    /// Two entries that resolve to one module instance are rejected.
    fn same_instance_twice_rejected() {
        let setup = one_softhsm_with_tokens();
        let entry = softhsm_entry(&setup.softhsm);
        let text = format!("{entry}\n{}", entry.replace("\"softhsm\"", "\"again\""));
        let (_config, _env) = use_config(&text);
        let pkcs11 = Pkcs11::new(p11wld_module()).unwrap();
        let result = pkcs11.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ));
        assert_eq!(rv_of(result.unwrap_err()), RvError::GeneralError);
    }

    /// A token that appears after C_Initialize joins at the next
    /// C_GetSlotList with a NULL list, and slot ids already given stay. The
    /// test process initializes the token through SoftHSM2 itself, which
    /// the module then shares as an instance the application initialized.
    fn new_token_found_on_refresh() {
        let setup = one_softhsm_with_tokens();
        let _softhsm_env = common::ScopedEnv::set("SOFTHSM2_CONF", setup.softhsm.conf_path());
        let direct = load_initialized(&common::paths::softhsm_module());
        let config = setup.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let pkcs11 = load_initialized(&p11wld_module());
        let labels = |pkcs11: &Pkcs11| -> Vec<(u64, String)> {
            pkcs11
                .get_slots_with_token()
                .unwrap()
                .iter()
                .map(|s| (s.id(), pkcs11.get_token_info(*s).unwrap().label().to_owned()))
                .collect()
        };
        let before = labels(&pkcs11);
        assert_eq!(before, vec![(0, OTHER_LABEL.to_owned()), (1, WLD_LABEL.to_owned())]);

        let free = direct
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| !direct.get_token_info(*s).unwrap().token_initialized())
            .expect("a free slot");
        direct.init_token(free, &AuthPin::from(SO_PIN), "LATE").unwrap();

        let after = labels(&pkcs11);
        assert_eq!(
            after,
            vec![
                (0, OTHER_LABEL.to_owned()),
                (1, WLD_LABEL.to_owned()),
                (2, "LATE".to_owned())
            ]
        );
    }

    /// OpenSC's pkcs11-tool sees one WLD slot over three HSM processes and
    /// signs through it; the signature verifies with the key set's public
    /// key.
    fn pkcs11_tool_signs_through_wld_slot() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let _pin = common::ScopedEnv::set("P11WLD_TEST_PIN", USER_PIN);
        let dir = tempfile::tempdir().unwrap();
        let tool = |args: &[&str]| {
            let output = std::process::Command::new("pkcs11-tool")
                .arg("--module")
                .arg(p11wld_module())
                .args(args)
                .output()
                .expect("run pkcs11-tool");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "pkcs11-tool {args:?}: {stdout}{stderr}");
            stdout
        };

        let slots = tool(&["--list-slots"]);
        assert_eq!(slots.matches("token label        : WLD_A").count(), 1, "{slots}");
        let objects = tool(&["--login", "--pin", "env:P11WLD_TEST_PIN", "--list-objects"]);
        assert_eq!(objects.matches("Private Key Object").count(), 2, "{objects}");

        let message = b"signed by pkcs11-tool";
        let input = dir.path().join("message");
        let output = dir.path().join("signature");
        std::fs::write(&input, message).unwrap();
        tool(&[
            "--login",
            "--pin",
            "env:P11WLD_TEST_PIN",
            "--sign",
            "--mechanism",
            "SHA256-RSA-PKCS",
            "--id",
            "01",
            "--input-file",
            input.to_str().unwrap(),
            "--output-file",
            output.to_str().unwrap(),
        ]);
        let signature = std::fs::read(&output).unwrap();
        keys::verify_rsa_pkcs1_sha256(message, &signature).unwrap();
    }

    /// A label that is not UTF-8 (31 "A" and the byte 0xE2) groups its
    /// tokens like any other, and the virtual token carries it byte for
    /// byte.
    fn label_bytes_kept_exactly() {
        let setup = one_softhsm_with_tokens();
        let mut label = [b'A'; 32];
        label[31] = 0xe2;
        for _ in 0..2 {
            init_token_raw(&setup.softhsm, &label);
        }
        let config = setup.write_config(common::setups::DEFAULT_EXTRA);
        let _env = config.set_env();
        let library = p11wld_module();
        let labels = raw_token_labels(&library);
        assert_eq!(labels.len(), 3, "{labels:?}");
        assert!(labels.contains(&label), "{labels:?}");
    }
}

/// Loads the module at `path`, initializes it, and runs `f` with its
/// function list and its slots (those with a token when `token_present` is
/// set), then finalizes it.
fn with_module<R>(
    path: &std::path::Path,
    token_present: cryptoki_sys::CK_BBOOL,
    f: impl FnOnce(&cryptoki_sys::CK_FUNCTION_LIST, &[cryptoki_sys::CK_SLOT_ID]) -> R,
) -> R {
    use cryptoki_sys::*;
    // SAFETY: the module's entry points have the PKCS#11 signatures; every
    // pointer passed lives for the call, and the library stays loaded
    // until `f` returned.
    unsafe {
        let library = libloading::Library::new(path).unwrap();
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            library.get(b"C_GetFunctionList\0").unwrap();
        let mut list = std::ptr::null_mut();
        assert_eq!(get(&mut list), CKR_OK);
        let list = &*list;
        assert_eq!(list.C_Initialize.unwrap()(std::ptr::null_mut()), CKR_OK);
        let mut slots = [0 as CK_SLOT_ID; 16];
        let mut count = slots.len() as CK_ULONG;
        assert_eq!(
            list.C_GetSlotList.unwrap()(token_present, slots.as_mut_ptr(), &mut count),
            CKR_OK
        );
        let result = f(list, &slots[..count as usize]);
        assert_eq!(list.C_Finalize.unwrap()(std::ptr::null_mut()), CKR_OK);
        result
    }
}

/// Calls `C_InitToken` with a raw 32-byte label on the free slot of
/// `softhsm`, through SoftHSM2 loaded in this process.
fn init_token_raw(softhsm: &SoftHsm, label: &[u8; 32]) {
    use cryptoki_sys::*;
    let _conf = common::ScopedEnv::set("SOFTHSM2_CONF", softhsm.conf_path());
    with_module(&common::paths::softhsm_module(), CK_FALSE, |list, slots| {
        // SAFETY: SoftHSM2's entry points have the PKCS#11 signatures;
        // every pointer passed lives for the call.
        unsafe {
            let free = slots
                .iter()
                .copied()
                .find(|&slot| {
                    let mut info = CK_TOKEN_INFO::default();
                    list.C_GetTokenInfo.unwrap()(slot, &mut info) == CKR_OK
                        && info.flags & CKF_TOKEN_INITIALIZED == 0
                })
                .expect("a free slot");
            let mut pin = SO_PIN.as_bytes().to_vec();
            let mut label = *label;
            let rv = list.C_InitToken.unwrap()(
                free,
                pin.as_mut_ptr(),
                pin.len() as CK_ULONG,
                label.as_mut_ptr(),
            );
            assert_eq!(rv, CKR_OK);
        }
    })
}

/// Returns the raw token labels of the module's slots with a token.
fn raw_token_labels(path: &std::path::Path) -> Vec<[u8; 32]> {
    use cryptoki_sys::*;
    with_module(path, CK_TRUE, |list, slots| {
        slots
            .iter()
            .map(|&slot| {
                let mut info = CK_TOKEN_INFO::default();
                // SAFETY: p11wld's C_GetTokenInfo with a valid out pointer.
                let rv = unsafe { list.C_GetTokenInfo.unwrap()(slot, &mut info) };
                assert_eq!(rv, CKR_OK);
                info.label
            })
            .collect()
    })
}
