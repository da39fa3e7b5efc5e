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
        let expect = format!("{master}={},{fresh}=@hsm2,{stale}={stale_serial}", lab.master_serial);
        let output = run(
            &lab.config,
            &[
                "--json", "replicate", "-s", &master.to_string(),
                "-d", &format!("{fresh},{stale}"), "--expect-serial", &expect,
            ],
            &BOTH_PINS,
        );
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
