//! Replication and verification through the `p11wld` program, against
//! SoftHSM2 tokens served by separate `p11-kit server` processes. Every
//! check of a destination opens its token directly through SoftHSM2.

mod common;
mod replication;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{AttributeInfo, AttributeType, ObjectClass};
use replication::*;

use common::client::find_key;
use common::USER_PIN;

/// Signs on the destination and checks the signatures with the master's
/// public keys; encrypts on the master and decrypts on the destination.
fn check_keys_work(lab: &Lab, hsm: usize, serial: &str) {
    let message = b"replicated keys sign and decrypt";
    let digest = common::keys::sha256(message);
    let iv = [7u8; 16];
    let aes = Mechanism::AesCbcPad(iv);

    let (rsa_ciphertext, aes_ciphertext) =
        lab.hsms[0]
            .softhsm()
            .with_user_session(&lab.master_serial, USER_PIN, |session| {
                let rsa_public = find_key(session, ObjectClass::PUBLIC_KEY, RSA_LABEL);
                let aes_key = find_key(session, ObjectClass::SECRET_KEY, AES_LABEL);
                let rsa_ciphertext = session
                    .encrypt(&Mechanism::RsaPkcs, rsa_public, message)
                    .expect("RSA encryption on the master succeeds");
                let aes_ciphertext = session
                    .encrypt(&aes, aes_key, message)
                    .expect("AES encryption on the master succeeds");
                (rsa_ciphertext, aes_ciphertext)
            });

    let (rsa_signature, ec_signature) =
        lab.hsms[hsm]
            .softhsm()
            .with_user_session(serial, USER_PIN, |session| {
                let rsa_private = find_key(session, ObjectClass::PRIVATE_KEY, RSA_LABEL);
                let ec_private = find_key(session, ObjectClass::PRIVATE_KEY, EC_LABEL);
                let aes_key = find_key(session, ObjectClass::SECRET_KEY, AES_LABEL);
                let plain = session
                    .decrypt(&Mechanism::RsaPkcs, rsa_private, &rsa_ciphertext)
                    .expect("RSA decryption on the destination succeeds");
                assert_eq!(
                    plain, message,
                    "RSA ciphertext of the master decrypts on {serial}"
                );
                let plain = session
                    .decrypt(&aes, aes_key, &aes_ciphertext)
                    .expect("AES decryption on the destination succeeds");
                assert_eq!(
                    plain, message,
                    "AES ciphertext of the master decrypts on {serial}"
                );
                (
                    session
                        .sign(&Mechanism::Sha256RsaPkcs, rsa_private, message)
                        .expect("RSA signing on the destination succeeds"),
                    session
                        .sign(&Mechanism::Ecdsa, ec_private, &digest)
                        .expect("ECDSA signing on the destination succeeds"),
                )
            });

    lab.hsms[0]
        .softhsm()
        .with_user_session(&lab.master_serial, USER_PIN, |session| {
            let rsa_public = find_key(session, ObjectClass::PUBLIC_KEY, RSA_LABEL);
            let ec_public = find_key(session, ObjectClass::PUBLIC_KEY, EC_LABEL);
            session
                .verify(
                    &Mechanism::Sha256RsaPkcs,
                    rsa_public,
                    message,
                    &rsa_signature,
                )
                .expect("the RSA signature of the destination verifies with the master's key");
            session
                .verify(&Mechanism::Ecdsa, ec_public, &digest, &ec_signature)
                .expect("the ECDSA signature of the destination verifies with the master's key");
        });
}

/// Checks that the sensitive keys of a destination stay sensitive and
/// unreadable.
fn check_keys_sensitive(lab: &Lab, hsm: usize, serial: &str) {
    lab.hsms[hsm]
        .softhsm()
        .with_user_session(serial, USER_PIN, |session| {
            let cases = [
                (
                    ObjectClass::PRIVATE_KEY,
                    RSA_LABEL,
                    AttributeType::PrivateExponent,
                ),
                (ObjectClass::PRIVATE_KEY, EC_LABEL, AttributeType::Value),
                (ObjectClass::SECRET_KEY, AES_LABEL, AttributeType::Value),
            ];
            for (class, label, secret) in cases {
                let info = attribute_info(session, class, label, secret);
                assert!(
                    matches!(info, AttributeInfo::Sensitive),
                    "{label} on {serial} hides {secret:?}, got {info:?}"
                );
                let key = find_key(session, class, label);
                let flags = session
                    .get_attributes(key, &[AttributeType::Sensitive])
                    .expect("C_GetAttributeValue succeeds");
                assert_eq!(
                    flags,
                    vec![cryptoki::object::Attribute::Sensitive(true)],
                    "{label} on {serial} is sensitive"
                );
            }
        });
}

/// Compares every object of a destination with the master's, attribute by
/// attribute.
fn check_same_objects(lab: &Lab, hsm: usize, serial: &str) {
    let master = snapshot(lab.hsms[0].softhsm(), &lab.master_serial);
    let copy = snapshot(lab.hsms[hsm].softhsm(), serial);
    let master_names: Vec<&String> = master.keys().collect();
    let copy_names: Vec<&String> = copy.keys().collect();
    assert_eq!(copy_names, master_names, "objects on {serial}");
    for (name, attributes) in &master {
        assert_eq!(&copy[name], attributes, "attributes of {name} on {serial}");
    }
}

/// Returns the label of token `serial` of `hsm`, read directly.
fn token_label(lab: &Lab, hsm: usize, serial: &str) -> String {
    lab.hsms[hsm]
        .softhsm()
        .tokens()
        .into_iter()
        .find(|t| t.serial == serial)
        .unwrap_or_else(|| panic!("token {serial} is on HSM {hsm}"))
        .label
}

isolated! {
    /// Replicates a master with generated keys, a certificate and a data
    /// object to an uninitialized token and to an initialized stale one,
    /// then checks both directly, and verifies them.
    #[timeout(300)]
    fn replicate_to_fresh_and_stale_tokens() {
        let lab = lab(Reach::Direct, &[Start::Uninitialized, Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let stale_serial = lab.stale_serials[&2].clone();
        let stale = position(&slots, "hsm3", &stale_serial);
        let output = replicate(&lab, &slots, master, &[fresh, stale], &[], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["status"], "CKR_OK");
        let tokens = report["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens[0]["objects"], 7, "master objects");
        assert_eq!(tokens[1]["initialized_by_run"], true);
        assert_eq!(tokens[1]["created"], 7);
        assert_eq!(tokens[1]["wrapped"], 3, "RSA, EC and AES keys travel wrapped");
        assert_eq!(tokens[2]["created"], 7);
        assert_eq!(tokens[2]["removed"], 1, "the stale object is removed");
        let fresh_serial = tokens[1]["serial"].as_str().unwrap().to_owned();
        assert_ne!(fresh_serial, "", "the initialized token has a serial");

        for (hsm, serial) in [(1, fresh_serial.as_str()), (2, stale_serial.as_str())] {
            assert_eq!(token_label(&lab, hsm, serial), MASTER_LABEL);
            check_same_objects(&lab, hsm, serial);
            check_keys_sensitive(&lab, hsm, serial);
            check_keys_work(&lab, hsm, serial);
        }
        let stale_copy = snapshot(lab.hsms[2].softhsm(), &stale_serial);
        assert!(
            !stale_copy.keys().any(|name| name.contains(STALE_LABEL)),
            "the stale object is gone: {:?}",
            stale_copy.keys()
        );

        let verify = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        assert!(verify.status.success(), "{}", describe(&verify));
        assert_eq!(json(&verify)["differences"], 0);
    }
}

/// Returns the problems of `kind` of a report, or of every report of a
/// `verify` result.
fn problems<'a>(report: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    let reports: Vec<&serde_json::Value> = match report["reports"].as_array() {
        Some(reports) => reports.iter().collect(),
        None => vec![report],
    };
    reports
        .into_iter()
        .flat_map(|r| r["problems"].as_array().expect("the report lists problems"))
        .filter(|p| p["kind"] == kind)
        .collect()
}

/// Checks that a stale destination still contains its own object only and
/// an uninitialized one is still uninitialized: nothing was written.
fn check_nothing_written(lab: &Lab, fresh_hsm: Option<usize>, stale_hsm: Option<usize>) {
    if let Some(hsm) = fresh_hsm {
        let states = tokens(lab, hsm);
        assert!(
            states.iter().all(|t| !t.initialized),
            "HSM {hsm} has no initialized token: {states:?}"
        );
    }
    if let Some(hsm) = stale_hsm {
        let serial = &lab.stale_serials[&hsm];
        let objects = snapshot(lab.hsms[hsm].softhsm(), serial);
        let names: Vec<&String> = objects.keys().collect();
        assert_eq!(
            names.len(),
            1,
            "HSM {hsm} holds only its stale object: {names:?}"
        );
        assert!(names[0].contains(STALE_LABEL), "{names:?}");
    }
}

/// Creates a sensitive AES key that may not leave the token.
fn add_unextractable_key(session: &cryptoki::session::Session) {
    use cryptoki::object::Attribute;
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"kept-in-place".to_vec()),
                Attribute::Id(vec![0x99]),
            ],
        )
        .expect("C_GenerateKey of an unextractable AES key succeeds");
}

isolated! {
    /// Through p11-kit-client.so 0.24, which carries no AES key wrap
    /// mechanism, sensitive private keys cannot travel: the run is rejected
    /// before anything is written, and with the skip flag everything else
    /// arrives, the AES key wrapped with RSA-OAEP.
    #[timeout(300)]
    fn p11kit_private_keys_reported() {
        let lab = lab(Reach::P11Kit, &[Start::Uninitialized, Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let stale = position(&slots, "hsm3", &lab.stale_serials[&2]);

        let output = replicate(&lab, &slots, master, &[fresh, stale], &[], &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().filter(|l| l.starts_with("p11wld:")).count(), 1, "{stderr}");
        let report = json(&output);
        assert_eq!(report["status"], "CKR_MECHANISM_INVALID");
        let blocked = problems(&report, "cannot-travel");
        assert_eq!(blocked.len(), 4, "two private keys for each of two destinations");
        for problem in &blocked {
            assert_eq!(problem["object"]["class"], 3, "CKO_PRIVATE_KEY: {problem}");
            assert_eq!(problem["skipped"], false);
        }
        let labels: Vec<&str> = blocked.iter().map(|p| p["object"]["label"].as_str().unwrap()).collect();
        assert!(labels.contains(&RSA_LABEL), "{labels:?}");
        assert!(labels.contains(&EC_LABEL), "{labels:?}");
        let ids: Vec<&str> = blocked.iter().map(|p| p["object"]["id"].as_str().unwrap()).collect();
        assert!(ids.contains(&"11"), "{ids:?}");
        assert!(ids.contains(&"12"), "{ids:?}");
        check_nothing_written(&lab, Some(1), Some(2));

        let output = replicate(&lab, &slots, master, &[fresh, stale], &["--skip-unextractable"], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        let tokens = report["tokens"].as_array().unwrap();
        for token in &tokens[1..] {
            assert_eq!(token["skipped"], 2, "{token}");
            assert_eq!(token["created"], 5, "{token}");
            assert_eq!(token["wrapped"], 1, "the AES key travels wrapped: {token}");
        }
        assert_eq!(tokens[2]["removed"], 1);
        assert!(problems(&report, "cannot-travel").iter().all(|p| p["skipped"] == true));

        let fresh_serial = tokens[1]["serial"].as_str().unwrap();
        let message = b"sixteen byte msg";
        let iv = [1u8; 16];
        let ciphertext = lab.hsms[0].softhsm().with_user_session(&lab.master_serial, USER_PIN, |s| {
            let key = find_key(s, ObjectClass::SECRET_KEY, AES_LABEL);
            s.encrypt(&Mechanism::AesCbcPad(iv), key, message).unwrap()
        });
        lab.hsms[1].softhsm().with_user_session(fresh_serial, USER_PIN, |s| {
            let key = find_key(s, ObjectClass::SECRET_KEY, AES_LABEL);
            let plain = s.decrypt(&Mechanism::AesCbcPad(iv), key, &ciphertext).unwrap();
            assert_eq!(plain, message);
            let info = attribute_info(s, ObjectClass::SECRET_KEY, AES_LABEL, AttributeType::Value);
            assert!(matches!(info, AttributeInfo::Sensitive), "{info:?}");
        });
        let copy = snapshot(lab.hsms[1].softhsm(), fresh_serial);
        let master_objects = snapshot(lab.hsms[0].softhsm(), &lab.master_serial);
        for (name, attributes) in &master_objects {
            if name.starts_with("CKO_PRIVATE_KEY") {
                assert!(!copy.contains_key(name), "{name} was skipped");
            } else {
                assert_eq!(copy.get(name), Some(attributes), "{name} on {fresh_serial}");
            }
        }

        let verify = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        assert_eq!(verify.status.code(), Some(1), "{}", describe(&verify));
        let verify = json(&verify);
        assert_eq!(problems(&verify, "missing").len(), 4, "{verify:#}");
    }

    /// A key with CKA_EXTRACTABLE false is named in the report and rejects
    /// the run, unless the caller asks to skip it.
    #[timeout(300)]
    fn unextractable_key_reported() {
        let lab = lab(Reach::Direct, &[Start::Uninitialized], add_unextractable_key);
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");

        let output = replicate(&lab, &slots, master, &[fresh], &[], &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["status"], "CKR_KEY_UNEXTRACTABLE");
        let blocked = problems(&report, "cannot-travel");
        assert_eq!(blocked.len(), 1, "{report:#}");
        assert_eq!(blocked[0]["object"]["class"], 4, "CKO_SECRET_KEY");
        assert_eq!(blocked[0]["object"]["label"], "kept-in-place");
        assert_eq!(blocked[0]["object"]["id"], "99");
        let message = blocked[0]["message"].as_str().unwrap();
        assert!(message.contains("CKA_EXTRACTABLE is false"), "{message}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("kept-in-place"), "{stderr}");
        check_nothing_written(&lab, Some(1), None);

        let output = replicate(&lab, &slots, master, &[fresh], &["--skip-unextractable"], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["tokens"][1]["skipped"], 1);
        assert_eq!(report["tokens"][1]["created"], 7);
        assert_eq!(problems(&report, "cannot-travel")[0]["skipped"], true);
    }

    /// A wrong SO PIN is rejected on the initialized destination before
    /// anything is written anywhere.
    #[timeout(300)]
    fn wrong_so_pin_refused() {
        let lab = lab(Reach::Direct, &[Start::Uninitialized, Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let stale = position(&slots, "hsm3", &lab.stale_serials[&2]);
        let pins = Pins { so: Some("87654321"), user: Some(USER_PIN) };

        let output = replicate(&lab, &slots, master, &[fresh, stale], &[], &pins);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["status"], "CKR_PIN_INCORRECT");
        assert_eq!(problems(&report, "pin").len(), 1, "{report:#}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
        assert_eq!(reason.len(), 1, "{stderr}");
        assert!(reason[0].contains("CKR_PIN_INCORRECT"), "{stderr}");
        check_nothing_written(&lab, Some(1), Some(2));
    }

    /// The master changes after a replication: verify reports the new
    /// object and the changed attribute, and a second replication makes
    /// the tokens equal again.
    #[timeout(300)]
    fn verify_fails_after_master_changes() {
        let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let stale = position(&slots, "hsm2", &lab.stale_serials[&1]);
        let output = replicate(&lab, &slots, master, &[stale], &[], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let verify = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        assert!(verify.status.success(), "{}", describe(&verify));

        lab.hsms[0].softhsm().with_user_session(&lab.master_serial, USER_PIN, |s| {
            create_data_object(s, "added-later", b"new");
            let key = find_key(s, ObjectClass::SECRET_KEY, AES_LABEL);
            s.update_attributes(key, &[cryptoki::object::Attribute::Decrypt(false)])
                .expect("C_SetAttributeValue of CKA_DECRYPT succeeds");
        });
        let verify = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        assert_eq!(verify.status.code(), Some(1), "{}", describe(&verify));
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(stderr.contains("differ"), "{stderr}");
        let report = json(&verify);
        assert_eq!(report["differences"], 2, "{report:#}");
        let missing = problems(&report, "missing");
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0]["object"]["label"], "added-later");
        let changed = problems(&report, "attribute-differs");
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0]["object"]["label"], AES_LABEL);
        assert_eq!(changed[0]["attribute"], 0x105, "CKA_DECRYPT");

        let output = replicate(&lab, &slots, master, &[stale], &[], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["tokens"][1]["created"], 1, "{report:#}");
        assert_eq!(report["tokens"][1]["replaced"], 1, "{report:#}");
        assert_eq!(report["tokens"][1]["unchanged"], 6, "{report:#}");
        let verify = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        assert!(verify.status.success(), "{}", describe(&verify));
    }

    /// Copied objects keep every attribute a copy template with CKA_CLASS
    /// would endanger: a data object's label, application, object id and
    /// value; a certificate's subject, issuer and serial number; every
    /// usage flag of a key.
    #[timeout(300)]
    fn copies_keep_every_attribute() {
        use cryptoki::object::Attribute;
        let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let output = replicate(&lab, &slots, master, &[fresh], &[], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let serial = json(&output)["tokens"][1]["serial"].as_str().unwrap().to_owned();

        lab.hsms[1].softhsm().with_user_session(&serial, USER_PIN, |s| {
            let data = find_key(s, ObjectClass::DATA, DATA_LABEL);
            let values = s
                .get_attributes(data, &[AttributeType::Application, AttributeType::ObjectId, AttributeType::Value, AttributeType::Private])
                .unwrap();
            assert_eq!(
                values,
                vec![
                    Attribute::Application(DATA_APPLICATION.to_vec()),
                    Attribute::ObjectId(DATA_OBJECT_ID.to_vec()),
                    Attribute::Value(DATA_VALUE.to_vec()),
                    Attribute::Private(true),
                ]
            );
            let cert = find_key(s, ObjectClass::CERTIFICATE, CERT_LABEL);
            let values = s
                .get_attributes(cert, &[AttributeType::Subject, AttributeType::Issuer, AttributeType::SerialNumber, AttributeType::Id, AttributeType::Value])
                .unwrap();
            assert_eq!(
                values,
                vec![
                    Attribute::Subject(CERT_SUBJECT.to_vec()),
                    Attribute::Issuer(CERT_ISSUER.to_vec()),
                    Attribute::SerialNumber(CERT_SERIAL.to_vec()),
                    Attribute::Id(RSA_ID.to_vec()),
                    Attribute::Value(CERT_VALUE.to_vec()),
                ]
            );
            let aes = find_key(s, ObjectClass::SECRET_KEY, AES_LABEL);
            let flags = s
                .get_attributes(aes, &[AttributeType::Encrypt, AttributeType::Decrypt, AttributeType::Sign, AttributeType::Verify, AttributeType::Wrap, AttributeType::Unwrap, AttributeType::Derive, AttributeType::Extractable, AttributeType::Id])
                .unwrap();
            assert_eq!(
                flags,
                vec![
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Sign(true),
                    Attribute::Verify(true),
                    Attribute::Wrap(true),
                    Attribute::Unwrap(true),
                    Attribute::Derive(false),
                    Attribute::Extractable(true),
                    Attribute::Id(AES_ID.to_vec()),
                ]
            );
        });
        check_same_objects(&lab, 1, &serial);
    }

    /// An uninitialized destination gets exactly the master's label in the
    /// 32-byte field: blank-padded, never NUL-terminated.
    #[timeout(300)]
    fn label_blank_padded_to_32_bytes() {
        let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let output = replicate(&lab, &slots, master, &[fresh], &[], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let serial = json(&output)["tokens"][1]["serial"].as_str().unwrap().to_owned();

        let field = raw_token_label(lab.hsms[1].softhsm(), &serial);
        let mut expected = [b' '; 32];
        expected[..MASTER_LABEL.len()].copy_from_slice(MASTER_LABEL.as_bytes());
        assert_eq!(field, expected, "label field {:?}", String::from_utf8_lossy(&field));
        assert!(!field.contains(&0), "no NUL in the label field");
    }

    /// Positions shift when an HSM goes offline: a run by the positions and
    /// serials of an older listing is rejected and writes nothing.
    #[timeout(300)]
    fn shifted_positions_refused() {
        let mut lab = lab(Reach::P11Kit, &[Start::Stale, Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let second = position(&slots, "hsm2", &lab.stale_serials[&1]);
        let third = position(&slots, "hsm3", &lab.stale_serials[&2]);

        lab.hsms[1].served().kill_hard();
        let now = list(&lab.config);
        assert_eq!(now.len(), slots.len() - 2, "hsm2's two slots are gone: {now:#?}");
        assert_eq!(position(&now, "hsm3", &lab.stale_serials[&2]), second, "hsm3 moved up");

        let output = replicate(&lab, &slots, master, &[second, third], &["--skip-unextractable"], &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["status"], "CKR_SLOT_ID_INVALID");
        let rejected = problems(&report, "slot");
        assert!(rejected.len() >= 2, "{report:#}");
        let messages: Vec<&str> = rejected.iter().map(|p| p["message"].as_str().unwrap()).collect();
        assert!(messages.iter().any(|m| m.contains(&lab.stale_serials[&2])), "{messages:?}");
        check_nothing_written(&lab, None, Some(2));
    }

    /// Uninitialized tokens all have an empty serial, so a position that
    /// expects one is pinned by its module. Without the module the run is
    /// rejected as invalid. After the positions shifted onto another
    /// module's free slot, it is rejected too. Neither run writes anything.
    #[timeout(300)]
    fn blank_serial_pinned_by_module() {
        let mut lab = lab(Reach::P11Kit, &[Start::Stale, Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master_uri = format!("pkcs11:serial={}", lab.stale_serials[&1]);
        let free = position(&slots, "hsm2", "");

        lab.hsms[0].served().kill_hard();
        let now = list(&lab.config);
        assert_eq!(position(&now, "hsm3", ""), free, "hsm3's free slot moved up: {now:#?}");

        let target = free.to_string();
        let bare = format!("{free}=");
        let output = run(
            &lab.config,
            &["replicate", "-s", &master_uri, "-d", &target, "--expect-serial", &bare],
            &BOTH_PINS,
        );
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("@MODULE"), "{stderr}");

        let pinned = format!("{free}=@hsm2");
        let output = run(
            &lab.config,
            &["--json", "replicate", "-s", &master_uri, "-d", &target, "--expect-serial", &pinned],
            &BOTH_PINS,
        );
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["status"], "CKR_SLOT_ID_INVALID");
        let rejected = problems(&report, "slot");
        let messages: Vec<&str> = rejected.iter().map(|p| p["message"].as_str().unwrap()).collect();
        assert!(messages.iter().any(|m| m.contains("module hsm3")), "{messages:?}");

        let states = tokens(&lab, 2);
        let initialized: Vec<_> = states.iter().filter(|t| t.initialized).collect();
        assert_eq!(initialized.len(), 1, "hsm3 holds only its stale token: {states:?}");
        check_nothing_written(&lab, None, Some(2));
    }

    /// A process never learns the tokens of a module it cannot reach, so
    /// while one HSM is down, replicating to all members and verifying WLD
    /// slots are rejected with one line naming it, and nothing is written.
    #[timeout(300)]
    fn unreachable_hsm_rejects_all() {
        let mut lab = lab(Reach::P11Kit, &[Start::Stale, Start::Stale], |_| {});
        lab.hsms[2].served().kill_hard();
        let master_uri = format!("pkcs11:serial={}", lab.master_serial);
        // Private keys cannot travel through p11-kit 0.24, so they are
        // skipped, and only the unreachable module can reject the run.
        let cases: [&[&str]; 4] = [
            &["--json", "replicate", "-s", &master_uri, "-d", "all", "--skip-unextractable"],
            &["--json", "verify"],
            &["--json", "verify", "--wld-slot", "0"],
            &["--json", "verify", "-s", &master_uri, "-d", "all"],
        ];
        for args in cases {
            let output = run(&lab.config, args, &BOTH_PINS);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {}", describe(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
            assert_eq!(reasons.len(), 1, "{args:?}: one reason: {stderr}");
            assert!(reasons[0].contains("module hsm3 is not reachable"), "{args:?}: {stderr}");
        }
        check_nothing_written(&lab, None, Some(1));

        let output = run(&lab.config, &["--json", "status"], &Pins { so: None, user: None });
        assert!(output.status.success(), "{}", describe(&output));
        let status = json(&output);
        let modules = status["modules"].as_array().expect("status lists the modules");
        let states: Vec<&str> = modules.iter().map(|m| m["state"].as_str().unwrap()).collect();
        assert_eq!(states[..2], ["up", "up"], "{status:#}");
        assert_ne!(states[2], "up", "{status:#}");
        assert_eq!(modules[2]["module"], "hsm3");
        let output = run(&lab.config, &["status"], &Pins { so: None, user: None });
        let text = String::from_utf8_lossy(&output.stdout);
        let hsm3 = text.lines().find(|l| l.starts_with("hsm3 ")).unwrap_or_else(|| panic!("{text}"));
        assert!(!hsm3.contains(" up "), "{text}");
    }

    /// SoftHSM2 gives a token it initializes a new slot id and serial; the
    /// run finds it again and writes the objects there.
    #[timeout(300)]
    fn initialized_token_found_again() {
        let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
        let slots = list(&lab.config);
        let fresh = position(&slots, "hsm2", "");
        let free = slots.iter().find(|s| s["position"] == fresh).unwrap();
        assert_eq!(free["initialized"], false);
        assert_eq!(free["serial"], "", "a fresh SoftHSM2 token has a blank serial");

        let master = position(&slots, "hsm1", &lab.master_serial);
        let output = replicate(&lab, &slots, master, &[fresh], &[], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let token = json(&output)["tokens"][1].clone();
        let serial = token["serial"].as_str().unwrap().to_owned();
        assert_ne!(serial, "", "the token has the serial C_InitToken gave it");
        assert_eq!(token["initialized_by_run"], true);

        let states = tokens(&lab, 1);
        let state = states
            .iter()
            .find(|t| t.serial == serial)
            .unwrap_or_else(|| panic!("token {serial} is among {states:?}"));
        assert!(state.initialized);
        assert!(state.user_pin_initialized);
        assert_eq!(state.label, MASTER_LABEL);
        assert_eq!(snapshot(lab.hsms[1].softhsm(), &serial).len(), 7);
    }
}

isolated! {
    /// A label that is not valid UTF-8 (31 times "A", then the byte 0xE2)
    /// reaches the destination byte for byte. The CLI prints it escaped,
    /// and its JSON carries the bytes in hex.
    #[timeout(300)]
    fn invalid_utf8_label_copied_exactly() {
        let mut label = [b'A'; 32];
        label[31] = 0xE2;
        let lab = lab_with_label(Reach::Direct, &[Start::Uninitialized], &label, |session| {
            create_data_object(session, DATA_LABEL, DATA_VALUE);
        });
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let output = replicate(&lab, &slots, master, &[fresh], &[], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        let serial = report["tokens"][1]["serial"].as_str().unwrap().to_owned();
        let field = raw_token_label(lab.hsms[1].softhsm(), &serial);
        assert_eq!(field, label, "label field {field:02x?}");

        let hex: String = label.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(report["tokens"][0]["label_hex"], hex.as_str(), "{report:#}");
        assert_eq!(report["tokens"][1]["label_hex"], hex.as_str(), "{report:#}");
        let slots = list(&lab.config);
        let labelled = slots.iter().filter(|s| s["label_hex"] == hex.as_str()).count();
        assert_eq!(labelled, 2, "the master and its copy: {slots:#?}");

        let output = run(&lab.config, &["list"], &Pins { so: None, user: None });
        assert!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8(output.stdout).expect("list prints UTF-8");
        let escaped = format!("{}\\xe2", "A".repeat(31));
        assert_eq!(text.matches(&escaped).count(), 2, "{text}");
        assert!(!text.contains('\u{fffd}'), "{text}");
    }
}

/// Reads the raw 32-byte label field of token `serial` with
/// C_GetTokenInfo, which the cryptoki crate trims.
fn raw_token_label(softhsm: &common::SoftHsm, serial: &str) -> [u8; 32] {
    use cryptoki_sys::*;
    let _conf = common::ScopedEnv::set(common::softhsm::SOFTHSM2_CONF, softhsm.conf_path());
    // SAFETY: loading SoftHSM2 runs its initializers only.
    let library = unsafe { libloading::Library::new(common::paths::softhsm_module()) }.unwrap();
    // SAFETY: C_GetFunctionList has this signature.
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList\0") }.unwrap();
    let mut list = std::ptr::null_mut();
    // SAFETY: valid out pointer; the list stays valid while loaded.
    let functions = unsafe {
        assert_eq!(get(&mut list), CKR_OK);
        &*list
    };
    // SAFETY: plain PKCS#11 calls with valid buffers.
    unsafe {
        assert_eq!(
            functions.C_Initialize.unwrap()(std::ptr::null_mut()),
            CKR_OK
        );
        let mut count: CK_ULONG = 0;
        functions.C_GetSlotList.unwrap()(CK_TRUE, std::ptr::null_mut(), &mut count);
        let mut slots = vec![0; count as usize];
        functions.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut count);
        let mut found = None;
        for slot in slots {
            let mut info = CK_TOKEN_INFO::default();
            functions.C_GetTokenInfo.unwrap()(slot, &mut info);
            if String::from_utf8_lossy(&info.serialNumber).trim_end() == serial {
                found = Some(info.label);
            }
        }
        functions.C_Finalize.unwrap()(std::ptr::null_mut());
        found.unwrap_or_else(|| panic!("no token with serial {serial}"))
    }
}

/// Counts the object files SoftHSM2's file backend keeps in a token
/// directory, over all tokens.
fn object_files(softhsm: &common::SoftHsm) -> usize {
    let Ok(tokens) = std::fs::read_dir(softhsm.token_dir()) else {
        return 0;
    };
    tokens
        .flatten()
        .filter_map(|token| std::fs::read_dir(token.path()).ok())
        .flat_map(|files| files.flatten())
        .filter(|f| {
            let name = f.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".object") && name != "token.object"
        })
        .count()
}

/// Data objects on the master of the kill test: enough that the copy
/// takes long enough to be killed in the middle.
const MANY_OBJECTS: usize = 600;

isolated! {
    /// The replicating process is killed in the middle; a second run over
    /// the other members of the WLD slot converges, and verify passes.
    #[timeout(300)]
    fn rerun_after_kill_converges() {
        let lab = lab_with_master(Reach::P11Kit, &[Start::Uninitialized], |session| {
            use cryptoki::object::Attribute;
            session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(true),
                        Attribute::Encrypt(true),
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(AES_LABEL.as_bytes().to_vec()),
                    ],
                )
                .unwrap();
            for n in 0..MANY_OBJECTS {
                create_data_object(session, &format!("bulk-{n:04}"), format!("value {n}").as_bytes());
            }
        });
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let expect = expect_serials(&slots, &[master, fresh]);
        let (master_arg, fresh_arg) = (master.to_string(), fresh.to_string());
        let mut child = command(
            &lab.config,
            &["replicate", "-s", &master_arg, "-d", &fresh_arg, "--expect-serial", &expect],
            &BOTH_PINS,
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("p11wld starts");

        let started = std::time::Instant::now();
        while object_files(lab.hsms[1].softhsm()) < MANY_OBJECTS / 4 {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
            assert!(started.elapsed().as_secs() < 120, "the copy did not start");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill().expect("SIGKILL to p11wld");
        child.wait().unwrap();
        let written = object_files(lab.hsms[1].softhsm());
        assert!(written < MANY_OBJECTS + 1, "killed in the middle: {written} objects");

        let uri = format!("pkcs11:serial={}", lab.master_serial);
        let output = run(&lab.config, &["--json", "replicate", "-s", &uri, "-d", "all"], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        let token = &report["tokens"][1];
        assert_eq!(token["initialized_by_run"], false, "the killed run initialized it");
        let unchanged = token["unchanged"].as_u64().unwrap();
        let created = token["created"].as_u64().unwrap();
        assert!(unchanged >= (MANY_OBJECTS / 4) as u64, "{token}");
        assert_eq!(unchanged + created, (MANY_OBJECTS + 1) as u64, "{token}");

        let verify = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        assert!(verify.status.success(), "{}", describe(&verify));
        let serial = token["serial"].as_str().unwrap();
        let copy = snapshot(lab.hsms[1].softhsm(), serial);
        assert_eq!(copy, snapshot(lab.hsms[0].softhsm(), &lab.master_serial));
    }
}

isolated! {
    /// The destination's HSM dies in the middle of the copy: the run stops
    /// writing to it, reports the failure once instead of once per object
    /// left, and exits with 1.
    #[timeout(300)]
    fn dead_destination_reported_once() {
        let mut lab = lab_with_master(Reach::P11Kit, &[Start::Uninitialized], |session| {
            for n in 0..MANY_OBJECTS {
                create_data_object(session, &format!("bulk-{n:04}"), format!("value {n}").as_bytes());
            }
        });
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let fresh = position(&slots, "hsm2", "");
        let expect = expect_serials(&slots, &[master, fresh]);
        let (master_arg, fresh_arg) = (master.to_string(), fresh.to_string());
        let child = command(
            &lab.config,
            &["--json", "replicate", "-s", &master_arg, "-d", &fresh_arg, "--expect-serial", &expect],
            &BOTH_PINS,
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("p11wld starts");

        let started = std::time::Instant::now();
        while object_files(lab.hsms[1].softhsm()) < MANY_OBJECTS / 4 {
            assert!(started.elapsed().as_secs() < 120, "the copy did not start");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        lab.hsms[1].served().kill_hard();
        let output = child.wait_with_output().expect("p11wld exits");
        let written = object_files(lab.hsms[1].softhsm());
        assert!(written < MANY_OBJECTS, "killed in the middle: {written} objects");

        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "one problem for the dead device: {problems:#?}");
        let message = problems[0]["message"].as_str().unwrap();
        assert!(message.contains("its device failed"), "{message}");
        assert_eq!(problems[0]["token"], 1, "{problems:#?}");
        assert_ne!(report["status"], "CKR_OK");
        assert_eq!(report["tokens"][1]["complete"], false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
        assert_eq!(reasons.len(), 1, "{stderr}");
        assert!(stderr.lines().count() < 10, "no line per object left: {stderr}");
    }
}

/// Secret keys on the master of the test whose master dies: each travels
/// wrapped, so each copy calls the master.
const MANY_KEYS: usize = 300;

isolated! {
    /// The master's HSM dies in the middle of the copy to the first of two
    /// destinations: the run stops, reports the master's failure once and
    /// the destination it did not reach once, and exits with 1.
    #[timeout(300)]
    fn dead_master_reported_once() {
        use cryptoki::object::Attribute;
        let mut lab = lab_with_master(Reach::P11Kit, &[Start::Uninitialized, Start::Uninitialized], |session| {
            for n in 0..MANY_KEYS {
                session
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Extractable(true),
                            Attribute::Encrypt(true),
                            Attribute::ValueLen(32.into()),
                            Attribute::Label(format!("key-{n:04}").into_bytes()),
                        ],
                    )
                    .unwrap();
            }
        });
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let first = position(&slots, "hsm2", "");
        let second = position(&slots, "hsm3", "");
        let expect = expect_serials(&slots, &[master, first, second]);
        let master_arg = master.to_string();
        let targets = format!("{first},{second}");
        let child = command(
            &lab.config,
            &["--json", "replicate", "-s", &master_arg, "-d", &targets, "--expect-serial", &expect],
            &BOTH_PINS,
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("p11wld starts");

        let started = std::time::Instant::now();
        while object_files(lab.hsms[1].softhsm()) < MANY_KEYS / 4 {
            assert!(started.elapsed().as_secs() < 120, "the copy did not start");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        lab.hsms[0].served().kill_hard();
        let output = child.wait_with_output().expect("p11wld exits");
        assert!(object_files(lab.hsms[1].softhsm()) < MANY_KEYS, "killed in the middle");

        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 2, "the master's failure and the skipped destination: {problems:#?}");
        let master_failure = problems[0]["message"].as_str().unwrap();
        assert!(master_failure.contains("the master's device failed"), "{master_failure}");
        assert_eq!(problems[0]["token"], 0, "{problems:#?}");
        let skipped = problems[1]["message"].as_str().unwrap();
        assert!(skipped.contains(&format!("position {second} (hsm3")), "{skipped}");
        assert_eq!(problems[1]["token"], 2, "{problems:#?}");
        assert_eq!(problems[1]["rv"], problems[0]["rv"], "{problems:#?}");
        assert!(
            tokens(&lab, 2).iter().all(|t| !t.initialized),
            "the second destination was not touched"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
        assert_eq!(reasons.len(), 1, "{stderr}");
    }
}

/// Fills a master with 1,000 objects of mixed kinds: 100 EC key pairs and
/// 100 AES keys generated on the token (sensitive, extractable), 100
/// certificates and 600 data objects.
fn populate_thousand(session: &cryptoki::session::Session) {
    use cryptoki::object::{Attribute, CertificateType};
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    for n in 0..100u32 {
        let id = n.to_be_bytes().to_vec();
        let label = format!("bench-ec-{n:03}").into_bytes();
        session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::Verify(true),
                    Attribute::EcParams(p256.clone()),
                    Attribute::Label(label.clone()),
                    Attribute::Id(id.clone()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                    Attribute::Sign(true),
                    Attribute::Label(label),
                    Attribute::Id(id.clone()),
                ],
            )
            .unwrap();
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                    Attribute::Encrypt(true),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(format!("bench-aes-{n:03}").into_bytes()),
                    Attribute::Id(id.clone()),
                ],
            )
            .unwrap();
        session
            .create_object(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(CertificateType::X_509),
                Attribute::Token(true),
                Attribute::Label(format!("bench-cert-{n:03}").into_bytes()),
                Attribute::Id(id),
                Attribute::Subject(CERT_SUBJECT.to_vec()),
                Attribute::Issuer(CERT_ISSUER.to_vec()),
                Attribute::SerialNumber(n.to_be_bytes().to_vec()),
                Attribute::Value(CERT_VALUE.to_vec()),
            ])
            .unwrap();
    }
    for n in 0..600 {
        create_data_object(
            session,
            &format!("bench-data-{n:03}"),
            format!("value {n}").as_bytes(),
        );
    }
}

/// Runs `p11wld` with `args` and returns the wall time, checking success.
fn timed(lab: &Lab, args: &[&str]) -> (f64, serde_json::Value) {
    let started = std::time::Instant::now();
    let output = run(&lab.config, args, &BOTH_PINS);
    let seconds = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "{}", describe(&output));
    (seconds, json(&output))
}

isolated! {
    /// Prints the time to replicate 1,000 mixed objects, with each HSM
    /// loaded directly and through p11-kit. Run it with
    /// `cargo test --release --test replicate -- --ignored --nocapture
    /// replication_benchmark`.
    #[ignore = "benchmark; prints timings"]
    #[timeout(1800)]
    fn replication_benchmark() {
        for reach in [Reach::Direct, Reach::P11Kit] {
            let name = match reach {
                Reach::Direct => "direct (a copy of libsofthsm2.so per HSM)",
                Reach::P11Kit => "p11-kit server per HSM (EC private keys skipped)",
            };
            let lab = lab_with_master(reach, &[Start::Uninitialized], populate_thousand);
            let slots = list(&lab.config);
            let master = position(&slots, "hsm1", &lab.master_serial);
            let fresh = position(&slots, "hsm2", "");
            let expect = expect_serials(&slots, &[master, fresh]);
            let (master, fresh) = (master.to_string(), fresh.to_string());
            let args = [
                "--json", "replicate", "-s", &master, "-d", &fresh, "--expect-serial", &expect,
                "--skip-unextractable",
            ];
            let (first, report) = timed(&lab, &args);
            let token = &report["tokens"][1];
            let serial = token["serial"].as_str().unwrap().to_owned();
            let uri = format!("pkcs11:serial={serial}");
            let master_uri = format!("pkcs11:serial={}", lab.master_serial);
            let (again, _) = timed(&lab, &["--json", "replicate", "-s", &master_uri, "-d", &uri, "--skip-unextractable"]);
            let verify_started = std::time::Instant::now();
            let verify = run(&lab.config, &["--json", "verify", "-s", &master_uri, "-d", &uri], &BOTH_PINS);
            let verify_seconds = verify_started.elapsed().as_secs_f64();
            println!(
                "BENCH {name}: {} master objects; first run {first:.2} s (created {}, wrapped {}, \
                 skipped {}); second run with nothing to do {again:.2} s; verify {verify_seconds:.2} s \
                 (exit {:?})",
                report["master_objects"], token["created"], token["wrapped"], token["skipped"],
                verify.status.code()
            );
            assert_eq!(report["master_objects"], 1000);
        }
    }
}

isolated! {
    /// Reading CKA_WRAP_TEMPLATE through p11wld, which p11-kit-client.so
    /// 0.24 answers with CKR_DEVICE_ERROR, fails that call only and leaves
    /// every member up.
    #[timeout(120)]
    fn array_attribute_keeps_members_up() {
        use cryptoki_sys::*;
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _config = config.set_env();
        let path = common::paths::p11wld_module();
        // SAFETY: loading the module under test.
        let library = unsafe { libloading::Library::new(&path) }.unwrap();
        type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
        type GetExtension =
            unsafe extern "C" fn(*mut *mut p11wld::ffi::ext::sys::P11WLD_FUNCTION_LIST) -> CK_RV;
        // SAFETY: plain PKCS#11 calls with valid pointers, in order.
        unsafe {
            let get = library.get::<GetFunctionList>(b"C_GetFunctionList\0").unwrap();
            let mut list = std::ptr::null_mut();
            assert_eq!(get(&mut list), CKR_OK);
            let f = &*list;
            assert_eq!(f.C_Initialize.unwrap()(std::ptr::null_mut()), CKR_OK);
            let mut slots = [0; 4];
            let mut count = 4;
            assert_eq!(f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut count), CKR_OK);
            let mut session = 0;
            let flags = CKF_SERIAL_SESSION;
            assert_eq!(
                f.C_OpenSession.unwrap()(slots[0], flags, std::ptr::null_mut(), None, &mut session),
                CKR_OK
            );
            let pin = common::USER_PIN.as_bytes();
            let rv = f.C_Login.unwrap()(session, CKU_USER, pin.as_ptr() as *mut _, pin.len() as CK_ULONG);
            assert_eq!(rv, CKR_OK);
            let mut class: CK_ULONG = CKO_SECRET_KEY;
            let mut template = CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: (&mut class as *mut CK_ULONG).cast(),
                ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
            };
            assert_eq!(f.C_FindObjectsInit.unwrap()(session, &mut template, 1), CKR_OK);
            let mut key = 0;
            let mut found = 0;
            assert_eq!(f.C_FindObjects.unwrap()(session, &mut key, 1, &mut found), CKR_OK);
            assert_eq!(found, 1);
            assert_eq!(f.C_FindObjectsFinal.unwrap()(session), CKR_OK);

            let mut wrap_template = CK_ATTRIBUTE {
                type_: CKA_WRAP_TEMPLATE,
                pValue: std::ptr::null_mut(),
                ulValueLen: 0,
            };
            let rv = f.C_GetAttributeValue.unwrap()(session, key, &mut wrap_template, 1);
            assert_eq!(rv, CKR_FUNCTION_FAILED);

            let get = library.get::<GetExtension>(b"P11WLD_GetFunctionList\0").unwrap();
            let mut ext = std::ptr::null_mut();
            assert_eq!(get(&mut ext), CKR_OK);
            let mut members = vec![p11wld::ffi::ext::sys::P11WLD_MEMBER_STATUS::default(); 4];
            let mut count = 4;
            assert_eq!((*ext).GetMemberStatus.unwrap()(members.as_mut_ptr(), &mut count), CKR_OK);
            assert_eq!(count, 3);
            for member in &members[..3] {
                assert_eq!(member.state, p11wld::ffi::ext::sys::P11WLD_MEMBER_UP);
                assert_eq!(member.failures, 0);
            }
            assert_eq!(f.C_Finalize.unwrap()(std::ptr::null_mut()), CKR_OK);
        }
    }
}
