//! Behaviour that PKCS#11 prescribes and that other modules and wrappers
//! got wrong: the two-call size convention, operations that must stay
//! active after a length query, mixed attribute templates, label padding,
//! initialization races, interfaces and interrupted searches. Each test
//! runs through a WLD slot of three members, on every member, and the
//! vendor quirks the proxy meets there (p11-kit-client.so 0.24, SoftHSM2
//! 2.6) must not show through.

mod common;

use std::mem::size_of;
use std::ptr::null_mut;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::p11kit::{P11KitHsm, ALL_TOKENS_URI};
use common::raw::{bytes_attribute, mechanism, ulong_attribute, Raw};
use common::setups::DEFAULT_EXTRA;
use common::table::name;
use common::{keys, ConfigFile, SoftHsm, ThreeHsms, SO_PIN, USER_PIN, WLD_LABEL};
use cryptoki_sys::*;

macro_rules! call {
    ($raw:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        // SAFETY: the tests pass pointers that are NULL or valid for the
        // lengths beside them.
        unsafe { ($raw.list3.$name.expect(stringify!($name)))($($arg),*) }
    };
}

/// Asserts that a call returned `expected`, naming both codes.
#[track_caller]
fn assert_rv(actual: CK_RV, expected: CK_RV, what: &str) {
    assert!(
        actual == expected,
        "{what}: expected {}, got {}",
        name(expected),
        name(actual)
    );
}

/// p11wld on a WLD slot of three HSM processes, initialized, with one
/// session per member, logged in.
struct Wld {
    raw: Raw,
    slot: CK_SLOT_ID,
    sessions: Vec<CK_SESSION_HANDLE>,
    _env: common::ScopedEnv,
    _config: ConfigFile,
    hsms: ThreeHsms,
}

impl Wld {
    fn start() -> Wld {
        Wld::start_with(common::three_hsm_processes(false), DEFAULT_EXTRA)
    }

    fn start_with(hsms: ThreeHsms, extra: &str) -> Wld {
        let config = hsms.write_config(extra);
        let env = config.set_env();
        let raw = Raw::load();
        assert_rv(raw.initialize(), CKR_OK, "C_Initialize");
        let slots = raw.slots();
        assert_eq!(slots.len(), 1, "one WLD slot");
        let slot = slots[0];
        let sessions: Vec<CK_SESSION_HANDLE> =
            (0..3).map(|_| raw.open(slot, CKF_RW_SESSION)).collect();
        assert_eq!(raw.open_sessions(), vec![1, 1, 1], "one session per member");
        assert_rv(raw.login(sessions[0], USER_PIN), CKR_OK, "C_Login");
        Wld {
            raw,
            slot,
            sessions,
            _env: env,
            _config: config,
            hsms,
        }
    }
}

/// Checks the two-call convention on one list function: a NULL list gives
/// the count; a list one entry too short gives CKR_BUFFER_TOO_SMALL and the
/// count; a list of the count's size is filled. Returns the list.
fn check_two_calls<T: Copy + Default>(
    what: &str,
    call: impl Fn(*mut T, *mut CK_ULONG) -> CK_RV,
) -> Vec<T> {
    let mut count: CK_ULONG = 0;
    assert_rv(
        call(null_mut(), &mut count),
        CKR_OK,
        &format!("{what} count query"),
    );
    let needed = count as usize;
    if needed > 0 {
        let mut short = vec![T::default(); needed];
        let mut short_count = count - 1;
        assert_rv(
            call(short.as_mut_ptr(), &mut short_count),
            CKR_BUFFER_TOO_SMALL,
            &format!("{what} with room for {} of {needed}", needed - 1),
        );
        assert_eq!(
            short_count, count,
            "{what}: count after CKR_BUFFER_TOO_SMALL"
        );
    }
    let mut list = vec![T::default(); needed + 1];
    let mut filled = (needed + 1) as CK_ULONG;
    assert_rv(
        call(list.as_mut_ptr(), &mut filled),
        CKR_OK,
        &format!("{what} fetch"),
    );
    assert_eq!(
        filled, count,
        "{what}: the fetch returns the count the query gave"
    );
    list.truncate(needed);
    list
}

/// Runs `operation` by the two-call convention and returns its output:
/// a NULL buffer gives CKR_OK and the length, a buffer one byte short gives
/// CKR_BUFFER_TOO_SMALL and the length, and both leave the operation
/// active, so the third call produces the output.
fn run_with_size_query(what: &str, operation: impl Fn(*mut u8, *mut CK_ULONG) -> CK_RV) -> Vec<u8> {
    let mut length: CK_ULONG = 0;
    assert_rv(
        operation(null_mut(), &mut length),
        CKR_OK,
        &format!("{what} length query"),
    );
    assert!(length > 0, "{what}: length query gave 0");
    let needed = length;
    let mut short = vec![0u8; needed as usize];
    let mut short_length = needed - 1;
    assert_rv(
        operation(short.as_mut_ptr(), &mut short_length),
        CKR_BUFFER_TOO_SMALL,
        &format!("{what} into {} of {needed} bytes", needed - 1),
    );
    assert!(
        short_length >= needed - 1,
        "{what}: length after CKR_BUFFER_TOO_SMALL"
    );
    let mut output = vec![0u8; short_length as usize];
    let mut output_length = short_length;
    assert_rv(
        operation(output.as_mut_ptr(), &mut output_length),
        CKR_OK,
        &format!("{what} after the length query"),
    );
    output.truncate(output_length as usize);
    output
}

/// The key set's objects as seen through one session.
struct Keys {
    rsa_private: CK_OBJECT_HANDLE,
    rsa_public: CK_OBJECT_HANDLE,
    ec_private: CK_OBJECT_HANDLE,
    aes: CK_OBJECT_HANDLE,
}

fn find_keys(raw: &Raw, session: CK_SESSION_HANDLE) -> Keys {
    Keys {
        rsa_private: raw.find_one(session, CKO_PRIVATE_KEY, keys::RSA_LABEL),
        rsa_public: raw.find_one(session, CKO_PUBLIC_KEY, keys::RSA_LABEL),
        ec_private: raw.find_one(session, CKO_PRIVATE_KEY, keys::EC_LABEL),
        aes: raw.find_one(session, CKO_SECRET_KEY, keys::AES_LABEL),
    }
}

isolated! {
    fn list_functions_follow_two_call_convention() {
        // A WLD label that no token has: its slot is listed without a
        // token, next to the three-member WLD_A slot.
        let hsms = common::three_hsm_processes(false);
        let extra = format!(
            "[wld]\npolicy = \"least-sessions\"\nlabels = [\"{WLD_LABEL}\", \"ABSENT\"]\n"
        );
        let config = hsms.write_config(&extra);
        let _env = config.set_env();
        let raw = Raw::load();
        assert_rv(raw.initialize(), CKR_OK, "C_Initialize");

        let with_token = check_two_calls("C_GetSlotList(TRUE)", |list, count| {
            call!(raw, C_GetSlotList(CK_TRUE, list, count))
        });
        assert_eq!(with_token.len(), 1, "slots with a token");
        let all = check_two_calls("C_GetSlotList(FALSE)", |list, count| {
            call!(raw, C_GetSlotList(CK_FALSE, list, count))
        });
        assert_eq!(all.len(), 2, "slots with and without a token");
        let wld = with_token[0];
        let absent = *all.iter().find(|&&slot| slot != wld).unwrap();

        let mechanisms = check_two_calls("C_GetMechanismList", |list, count| {
            call!(raw, C_GetMechanismList(wld, list, count))
        });
        assert!(mechanisms.contains(&CKM_SHA256_RSA_PKCS), "{mechanisms:x?}");
        // PKCS#11: a slot without a token has no mechanism list.
        let mut count: CK_ULONG = 0;
        assert_rv(
            call!(raw, C_GetMechanismList(absent, null_mut(), &mut count)),
            CKR_TOKEN_NOT_PRESENT,
            "C_GetMechanismList on the slot without a token",
        );
        let interfaces = check_two_calls("C_GetInterfaceList", |list, count| unsafe {
            (raw.get_interface_list)(list, count)
        });
        assert_eq!(interfaces.len(), 3, "interfaces");
        let members = check_two_calls("GetMemberStatus", |list, count| unsafe {
            raw.ext.GetMemberStatus.unwrap()(list, count)
        });
        assert_eq!(members.len(), 3, "members");
        let physical = check_two_calls("ListPhysicalSlots", |list, count| unsafe {
            raw.ext.ListPhysicalSlots.unwrap()(list, count)
        });
        assert_eq!(physical.len(), 3, "physical slots");

        // An empty list: count 0 with a NULL list, then CKR_OK and count 0
        // with a list and a count of 0.
        assert_rv(raw.finalize(), CKR_OK, "C_Finalize");
        let empty = ConfigFile::write(
            &hsms.module_entries(),
            "[wld]\nlabels = [\"ABSENT\"]\n",
        );
        let _empty_env = empty.set_env();
        assert_rv(raw.initialize(), CKR_OK, "C_Initialize without WLD_A");
        let mut count: CK_ULONG = 7;
        assert_rv(
            call!(raw, C_GetSlotList(CK_TRUE, null_mut(), &mut count)),
            CKR_OK,
            "C_GetSlotList(TRUE, NULL) with no token",
        );
        assert_eq!(count, 0, "slots with a token");
        let mut list = [0xAA as CK_SLOT_ID; 2];
        assert_rv(
            call!(raw, C_GetSlotList(CK_TRUE, list.as_mut_ptr(), &mut count)),
            CKR_OK,
            "C_GetSlotList(TRUE, list, &0) with no token",
        );
        assert_eq!(count, 0, "slots with a token");
        assert_eq!(list, [0xAA; 2], "an empty list writes no entry");
    }

    fn mechanism_list_agrees_across_members() {
        // The members support different mechanism sets: hsm2 offers four
        // mechanisms only, without CKM_SHA512_RSA_PKCS. The WLD slot offers what every
        // member supports, and the count query and the fetch agree,
        // whichever members they reach. p11-kit-client.so 0.24 answers a
        // count query with a larger count than its fetch returns; the
        // proxy uses the count of the fetch.
        let mut hsms = Vec::new();
        let mut serials = Vec::new();
        for number in 1..=3 {
            let softhsm = SoftHsm::new();
            serials.push(softhsm.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN));
            if number == 2 {
                let mut conf = std::fs::read_to_string(softhsm.conf_path()).unwrap();
                // SoftHSM2 2.6.1 ignores a list of exclusions ("-CKM_..."), so
                // hsm2 gets a list of what it offers.
                conf.push_str(
                    "slots.mechanisms = CKM_RSA_PKCS,CKM_SHA256_RSA_PKCS,CKM_SHA256,CKM_ECDSA\n",
                );
                std::fs::write(softhsm.conf_path(), conf).unwrap();
            }
            hsms.push(P11KitHsm::start_with_uri(
                &format!("hsm{number}"),
                softhsm,
                &format!("pkcs11:token={WLD_LABEL}"),
            ));
        }
        let three = ThreeHsms { hsms, serials, setup_time: Duration::ZERO };
        let wld = Wld::start_with(three, DEFAULT_EXTRA);
        let raw = &wld.raw;

        for round in 0..5 {
            let list = check_two_calls(&format!("C_GetMechanismList round {round}"), |l, n| {
                call!(raw, C_GetMechanismList(wld.slot, l, n))
            });
            let expected = vec![CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS, CKM_SHA256, CKM_ECDSA];
            let mut sorted = list.clone();
            sorted.sort();
            assert_eq!(sorted, expected, "the mechanisms every member offers");
        }
        let mut info = CK_MECHANISM_INFO::default();
        assert_rv(
            call!(raw, C_GetMechanismInfo(wld.slot, CKM_SHA512_RSA_PKCS, &mut info)),
            CKR_MECHANISM_INVALID,
            "C_GetMechanismInfo of a mechanism one member lacks",
        );
        for &session in &wld.sessions {
            let key = raw.find_one(session, CKO_PRIVATE_KEY, keys::RSA_LABEL);
            let mut sha512 = mechanism(CKM_SHA512_RSA_PKCS);
            assert_rv(
                call!(raw, C_SignInit(session, &mut sha512, key)),
                CKR_MECHANISM_INVALID,
                "C_SignInit with a mechanism one member lacks",
            );
        }
    }

    fn sign_size_query_keeps_operation() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let message = b"signed through a WLD slot".to_vec();
        let data = message.as_ptr().cast_mut();
        let data_len = message.len() as CK_ULONG;

        for (member, &s) in wld.sessions.iter().enumerate() {
            let k = find_keys(raw, s);

            // RSA PKCS#1 v1.5 with SHA-256, single part.
            let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
            assert_rv(call!(raw, C_SignInit(s, &mut sign, k.rsa_private)), CKR_OK, "C_SignInit");
            let signature = run_with_size_query(&format!("C_Sign on member {member}"), |out, len| {
                call!(raw, C_Sign(s, data, data_len, out, len))
            });
            keys::verify_rsa_pkcs1_sha256(&message, &signature).unwrap();
            // CKR_OK with an output ends the operation.
            let mut length: CK_ULONG = 0;
            assert_rv(
                call!(raw, C_Sign(s, data, data_len, null_mut(), &mut length)),
                CKR_OPERATION_NOT_INITIALIZED,
                "C_Sign after the signature was returned",
            );

            // The same operation, multi-part: the length query of
            // C_SignFinal keeps it active too.
            assert_rv(call!(raw, C_SignInit(s, &mut sign, k.rsa_private)), CKR_OK, "C_SignInit");
            assert_rv(call!(raw, C_SignUpdate(s, data, data_len)), CKR_OK, "C_SignUpdate");
            let signature = run_with_size_query("C_SignFinal", |out, len| {
                call!(raw, C_SignFinal(s, out, len))
            });
            keys::verify_rsa_pkcs1_sha256(&message, &signature).unwrap();

            // ECDSA over a digest.
            let digest = keys::sha256(&message);
            let mut ecdsa = mechanism(CKM_ECDSA);
            assert_rv(call!(raw, C_SignInit(s, &mut ecdsa, k.ec_private)), CKR_OK, "C_SignInit ECDSA");
            let signature = run_with_size_query("C_Sign ECDSA", |out, len| {
                call!(raw, C_Sign(s, digest.as_ptr().cast_mut(), 32, out, len))
            });
            keys::verify_ecdsa_p256_prehash(&digest, &signature).unwrap();

            // Digest.
            let mut sha256 = mechanism(CKM_SHA256);
            assert_rv(call!(raw, C_DigestInit(s, &mut sha256)), CKR_OK, "C_DigestInit");
            let output = run_with_size_query("C_Digest", |out, len| {
                call!(raw, C_Digest(s, data, data_len, out, len))
            });
            assert_eq!(output, digest, "SHA-256 digest");

            // Encrypt and decrypt with AES-ECB (p11-kit 0.24 forwards no
            // AES mode with a parameter).
            let plaintext_in = [0x42u8; 32];
            let mut ecb = mechanism(CKM_AES_ECB);
            assert_rv(call!(raw, C_EncryptInit(s, &mut ecb, k.aes)), CKR_OK, "C_EncryptInit");
            let ciphertext = run_with_size_query("C_Encrypt", |out, len| {
                call!(raw, C_Encrypt(s, plaintext_in.as_ptr().cast_mut(), 32, out, len))
            });
            assert_eq!(ciphertext.len(), 32, "AES-ECB of 32 bytes");
            assert_rv(call!(raw, C_DecryptInit(s, &mut ecb, k.aes)), CKR_OK, "C_DecryptInit");
            let plaintext = run_with_size_query("C_Decrypt", |out, len| {
                call!(raw, C_Decrypt(s, ciphertext.as_ptr().cast_mut(), 32, out, len))
            });
            assert_eq!(plaintext, plaintext_in, "decrypted text");

            // Wrap the AES key with the RSA public key.
            let mut wrap = mechanism(CKM_RSA_PKCS);
            let wrap: *mut CK_MECHANISM = &mut wrap;
            let wrapped = run_with_size_query("C_WrapKey", |out, len| {
                call!(raw, C_WrapKey(s, wrap, k.rsa_public, k.aes, out, len))
            });
            assert_eq!(wrapped.len(), 256, "RSA-2048 wrap of an AES key");
        }
    }

    fn rejected_call_ends_operation() {
        // PKCS#11: a call to C_Sign (C_Encrypt, C_Digest and the others)
        // that returns an error other than CKR_BUFFER_TOO_SMALL ends the
        // active operation, also an error the proxy finds in the arguments
        // without asking the vendor. Afterwards a new init succeeds, and
        // the old operation is gone.
        let wld = Wld::start();
        let raw = &wld.raw;
        let mut data = *b"0123456789abcdef";
        let d = data.as_mut_ptr();
        for (member, &s) in wld.sessions.iter().enumerate() {
            let k = find_keys(raw, s);
            let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
            let mut ecdsa = mechanism(CKM_ECDSA);
            let mut sha256 = mechanism(CKM_SHA256);
            let mut ecb = mechanism(CKM_AES_ECB);
            let mut out = [0u8; 512];
            let mut length: CK_ULONG = 512;
            let o = out.as_mut_ptr();
            let ecdsa: *mut CK_MECHANISM = &mut ecdsa;
            let sign: *mut CK_MECHANISM = &mut sign;
            let sha256: *mut CK_MECHANISM = &mut sha256;
            let ecb: *mut CK_MECHANISM = &mut ecb;
            let length: *mut CK_ULONG = &mut length;

            let cases: Vec<(&str, Call<'_>, Call<'_>)> = vec![
                (
                    "C_Sign with NULL data of length 16",
                    Box::new(|| call!(raw, C_SignInit(s, sign, k.rsa_private))),
                    Box::new(|| call!(raw, C_Sign(s, null_mut(), 16, o, length))),
                ),
                (
                    "C_Sign with a NULL length",
                    Box::new(|| call!(raw, C_SignInit(s, sign, k.rsa_private))),
                    Box::new(|| call!(raw, C_Sign(s, d, 16, o, null_mut()))),
                ),
                (
                    // ECDSA has no multi-part form, so a final call does
                    // not end its operation.
                    "C_Sign with a NULL length, ECDSA",
                    Box::new(|| call!(raw, C_SignInit(s, ecdsa, k.ec_private))),
                    Box::new(|| call!(raw, C_Sign(s, d, 16, o, null_mut()))),
                ),
                (
                    "C_SignUpdate with NULL data of length 16",
                    Box::new(|| call!(raw, C_SignInit(s, sign, k.rsa_private))),
                    Box::new(|| call!(raw, C_SignUpdate(s, null_mut(), 16))),
                ),
                (
                    "C_SignFinal with a NULL length",
                    Box::new(|| call!(raw, C_SignInit(s, sign, k.rsa_private))),
                    Box::new(|| call!(raw, C_SignFinal(s, o, null_mut()))),
                ),
                (
                    "C_Digest with NULL data of length 16",
                    Box::new(|| call!(raw, C_DigestInit(s, sha256))),
                    Box::new(|| call!(raw, C_Digest(s, null_mut(), 16, o, length))),
                ),
                (
                    "C_DigestUpdate with NULL data of length 16",
                    Box::new(|| call!(raw, C_DigestInit(s, sha256))),
                    Box::new(|| call!(raw, C_DigestUpdate(s, null_mut(), 16))),
                ),
                (
                    "C_Encrypt with a NULL length",
                    Box::new(|| call!(raw, C_EncryptInit(s, ecb, k.aes))),
                    Box::new(|| call!(raw, C_Encrypt(s, d, 16, o, null_mut()))),
                ),
                (
                    "C_EncryptUpdate with NULL data of length 16",
                    Box::new(|| call!(raw, C_EncryptInit(s, ecb, k.aes))),
                    Box::new(|| call!(raw, C_EncryptUpdate(s, null_mut(), 16, o, length))),
                ),
                (
                    "C_Decrypt with NULL data of length 16",
                    Box::new(|| call!(raw, C_DecryptInit(s, ecb, k.aes))),
                    Box::new(|| call!(raw, C_Decrypt(s, null_mut(), 16, o, length))),
                ),
                (
                    "C_Verify with a NULL signature of length 256",
                    Box::new(|| call!(raw, C_VerifyInit(s, sign, k.rsa_public))),
                    Box::new(|| call!(raw, C_Verify(s, d, 16, null_mut(), 256))),
                ),
            ];
            for (case, init, bad) in &cases {
                let what = format!("{case} on member {member}");
                assert_rv(init(), CKR_OK, &format!("init before {what}"));
                assert_rv(bad(), CKR_ARGUMENTS_BAD, &what);
                assert_rv(init(), CKR_OK, &format!("init again after {what}"));
                // End the operation the second init started, with a call
                // that completes it.
                finish_any(raw, s, d, o);
            }
        }
    }

    fn null_mechanism_cancels_operation() {
        // PKCS#11 3.0: an init call with a NULL mechanism ends the active
        // operation of its kind and returns CKR_OK; C_SessionCancel ends
        // the operations its flags name. The 2.40 list keeps the 2.40
        // rule: a NULL mechanism is CKR_ARGUMENTS_BAD.
        let wld = Wld::start();
        let raw = &wld.raw;
        let mut data = *b"0123456789abcdef";
        let d = data.as_mut_ptr();
        let mut out = [0u8; 512];
        let o = out.as_mut_ptr();
        for (member, &s) in wld.sessions.iter().enumerate() {
            let k = find_keys(raw, s);
            let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
            let mut ecdsa = mechanism(CKM_ECDSA);
            let mut sha256 = mechanism(CKM_SHA256);
            let mut ecb = mechanism(CKM_AES_ECB);
            let at = |what: &str| format!("{what} on member {member}");

            // Each kind: start, update where it has parts, cancel, and
            // check that the operation is gone and a new one starts.
            assert_rv(call!(raw, C_SignInit(s, &mut sign, k.rsa_private)), CKR_OK, &at("C_SignInit"));
            assert_rv(call!(raw, C_SignUpdate(s, d, 16)), CKR_OK, &at("C_SignUpdate"));
            assert_rv(call!(raw, C_SignInit(s, null_mut(), 0)), CKR_OK, &at("C_SignInit(NULL)"));
            assert_rv(
                call!(raw, C_SignUpdate(s, d, 16)),
                CKR_OPERATION_NOT_INITIALIZED,
                &at("C_SignUpdate after the cancel"),
            );
            assert_rv(call!(raw, C_SignInit(s, &mut ecdsa, k.ec_private)), CKR_OK, &at("C_SignInit ECDSA"));
            assert_rv(call!(raw, C_SignInit(s, null_mut(), 0)), CKR_OK, &at("C_SignInit(NULL) of ECDSA"));
            let mut length: CK_ULONG = 512;
            assert_rv(
                call!(raw, C_Sign(s, d, 16, o, &mut length)),
                CKR_OPERATION_NOT_INITIALIZED,
                &at("C_Sign after the cancel"),
            );

            assert_rv(call!(raw, C_DigestInit(s, &mut sha256)), CKR_OK, &at("C_DigestInit"));
            assert_rv(call!(raw, C_DigestUpdate(s, d, 16)), CKR_OK, &at("C_DigestUpdate"));
            assert_rv(call!(raw, C_DigestInit(s, null_mut())), CKR_OK, &at("C_DigestInit(NULL)"));
            assert_rv(
                call!(raw, C_DigestUpdate(s, d, 16)),
                CKR_OPERATION_NOT_INITIALIZED,
                &at("C_DigestUpdate after the cancel"),
            );

            assert_rv(call!(raw, C_EncryptInit(s, &mut ecb, k.aes)), CKR_OK, &at("C_EncryptInit"));
            length = 512;
            assert_rv(call!(raw, C_EncryptUpdate(s, d, 16, o, &mut length)), CKR_OK, &at("C_EncryptUpdate"));
            assert_rv(call!(raw, C_EncryptInit(s, null_mut(), 0)), CKR_OK, &at("C_EncryptInit(NULL)"));
            assert_rv(call!(raw, C_DecryptInit(s, &mut ecb, k.aes)), CKR_OK, &at("C_DecryptInit"));
            assert_rv(call!(raw, C_DecryptInit(s, null_mut(), 0)), CKR_OK, &at("C_DecryptInit(NULL)"));
            assert_rv(call!(raw, C_VerifyInit(s, &mut sign, k.rsa_public)), CKR_OK, &at("C_VerifyInit"));
            assert_rv(call!(raw, C_VerifyUpdate(s, d, 16)), CKR_OK, &at("C_VerifyUpdate"));
            assert_rv(call!(raw, C_VerifyInit(s, null_mut(), 0)), CKR_OK, &at("C_VerifyInit(NULL)"));

            // A cancel without an active operation changes nothing.
            assert_rv(call!(raw, C_SignInit(s, null_mut(), 0)), CKR_OK, &at("C_SignInit(NULL), none active"));

            // C_SessionCancel with flags of operations that are not
            // active as well. SoftHSM2 runs one operation per session, so
            // the signature and the search are cancelled one after the
            // other.
            let all = CKF_SIGN | CKF_DIGEST | CKF_ENCRYPT | CKF_FIND_OBJECTS;
            assert_rv(call!(raw, C_SignInit(s, &mut sign, k.rsa_private)), CKR_OK, &at("C_SignInit"));
            assert_rv(call!(raw, C_SessionCancel(s, all)), CKR_OK, &at("C_SessionCancel of a signature"));
            assert_rv(
                call!(raw, C_SignUpdate(s, d, 16)),
                CKR_OPERATION_NOT_INITIALIZED,
                &at("C_SignUpdate after C_SessionCancel"),
            );
            let mut secret = CKO_SECRET_KEY;
            let mut class = ulong_attribute(CKA_CLASS, &mut secret);
            assert_rv(call!(raw, C_FindObjectsInit(s, &mut class, 1)), CKR_OK, &at("C_FindObjectsInit"));
            assert_rv(call!(raw, C_SessionCancel(s, all)), CKR_OK, &at("C_SessionCancel of a search"));
            let mut found: CK_OBJECT_HANDLE = 0;
            let mut count: CK_ULONG = 0;
            assert_rv(
                call!(raw, C_FindObjects(s, &mut found, 1, &mut count)),
                CKR_OPERATION_NOT_INITIALIZED,
                &at("C_FindObjects after C_SessionCancel"),
            );
            // Neither is active on the member any more: new ones start.
            assert_rv(call!(raw, C_FindObjectsInit(s, &mut class, 1)), CKR_OK, &at("C_FindObjectsInit again"));
            assert_rv(call!(raw, C_FindObjectsFinal(s)), CKR_OK, &at("C_FindObjectsFinal"));
            assert_rv(call!(raw, C_SignInit(s, &mut sign, k.rsa_private)), CKR_OK, &at("C_SignInit again"));
            finish_any(raw, s, d, o);
        }

        let s = wld.sessions[0];
        assert_rv(
            call!(raw, C_SessionCancel(0x7fff_0000, CKF_SIGN)),
            CKR_SESSION_HANDLE_INVALID,
            "C_SessionCancel on an invalid session",
        );
        // SAFETY: the 2.40 list's C_SignInit with a NULL mechanism.
        let rv = unsafe { raw.list.C_SignInit.unwrap()(s, null_mut(), 0) };
        assert_rv(rv, CKR_ARGUMENTS_BAD, "C_SignInit(NULL) of the 2.40 list");
        // SAFETY: as above, for C_DigestInit.
        let rv = unsafe { raw.list.C_DigestInit.unwrap()(s, null_mut()) };
        assert_rv(rv, CKR_ARGUMENTS_BAD, "C_DigestInit(NULL) of the 2.40 list");
    }

    fn mixed_attribute_template() {
        let wld = Wld::start();
        let raw = &wld.raw;
        for (member, &s) in wld.sessions.iter().enumerate() {
            let k = find_keys(raw, s);
            for (key_name, key, sensitive_value) in
                [("RSA", k.rsa_private, false), ("EC", k.ec_private, true)]
            {
                let what = format!("{key_name} private key on member {member}");
                let mut label = [0u8; 32];
                let mut value = [0u8; 512];
                let mut value_len = [0u8; 8];
                let mut id = [0u8; 8];
                let mut template = [
                    bytes_attribute(CKA_LABEL, &mut label),
                    bytes_attribute(CKA_VALUE, &mut value),
                    bytes_attribute(CKA_VALUE_LEN, &mut value_len),
                    bytes_attribute(CKA_ID, &mut id),
                ];
                let rv = call!(raw, C_GetAttributeValue(s, key, template.as_mut_ptr(), 4));
                // PKCS#11 C_GetAttributeValue: a sensitive attribute gives
                // CKR_ATTRIBUTE_SENSITIVE, an attribute the object lacks
                // CKR_ATTRIBUTE_TYPE_INVALID; either may be returned when
                // both happen, never CKR_OK. Each such attribute gets
                // CK_UNAVAILABLE_INFORMATION; the others are filled in.
                assert!(
                    rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID,
                    "{what}: got {}",
                    name(rv)
                );
                if sensitive_value {
                    // The EC key has a CKA_VALUE, which is sensitive.
                    assert_rv(rv, CKR_ATTRIBUTE_SENSITIVE, &what);
                }
                let expected_label = if key_name == "RSA" { keys::RSA_LABEL } else { keys::EC_LABEL };
                assert_eq!(
                    template[0].ulValueLen,
                    expected_label.len() as CK_ULONG,
                    "{what}: CKA_LABEL length"
                );
                assert_eq!(&label[..expected_label.len()], expected_label.as_bytes(), "{what}: CKA_LABEL");
                assert_eq!(template[1].ulValueLen, CK_UNAVAILABLE_INFORMATION, "{what}: CKA_VALUE");
                assert_eq!(template[2].ulValueLen, CK_UNAVAILABLE_INFORMATION, "{what}: CKA_VALUE_LEN");
                assert_eq!(template[3].ulValueLen, 1, "{what}: CKA_ID length");
                let expected_id = if key_name == "RSA" { keys::RSA_ID } else { keys::EC_ID };
                assert_eq!(&id[..1], expected_id, "{what}: CKA_ID");
            }

            // A buffer too small for one attribute: that attribute gets
            // CK_UNAVAILABLE_INFORMATION, the call CKR_BUFFER_TOO_SMALL,
            // and the others are still filled in.
            let mut label = [0u8; 2];
            let mut id = [0u8; 8];
            let mut class: CK_ULONG = 0;
            let mut template = [
                ulong_attribute(CKA_CLASS, &mut class),
                bytes_attribute(CKA_LABEL, &mut label),
                bytes_attribute(CKA_ID, &mut id),
            ];
            let what = format!("short CKA_LABEL buffer on member {member}");
            assert_rv(
                call!(raw, C_GetAttributeValue(s, k.rsa_private, template.as_mut_ptr(), 3)),
                CKR_BUFFER_TOO_SMALL,
                &what,
            );
            assert_eq!(template[1].ulValueLen, CK_UNAVAILABLE_INFORMATION, "{what}: CKA_LABEL");
            assert_eq!(template[0].ulValueLen, size_of::<CK_ULONG>() as CK_ULONG, "{what}: CKA_CLASS");
            assert_eq!(class, CKO_PRIVATE_KEY, "{what}: CKA_CLASS");
            assert_eq!(template[2].ulValueLen, 1, "{what}: CKA_ID length");
            assert_eq!(&id[..1], keys::RSA_ID, "{what}: CKA_ID");
        }
    }

    fn label_compared_without_trailing_blanks_only() {
        // hsm1 also holds a token labelled " WLD_A" (a leading blank): a
        // label of its own, so a WLD slot of its own.
        let mut hsms = Vec::new();
        let mut serials = Vec::new();
        for number in 1..=3 {
            let softhsm = SoftHsm::new();
            serials.push(softhsm.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN));
            if number == 1 {
                softhsm.init_token_with_key_set(" WLD_A", SO_PIN, USER_PIN);
            }
            hsms.push(P11KitHsm::start_with_uri(&format!("hsm{number}"), softhsm, ALL_TOKENS_URI));
        }
        let config = ConfigFile::write(
            &hsms.iter().map(P11KitHsm::module_entry).collect::<Vec<_>>(),
            DEFAULT_EXTRA,
        );
        let _env = config.set_env();
        let raw = Raw::load();
        assert_rv(raw.initialize(), CKR_OK, "C_Initialize");
        let slots = raw.slots();
        assert_eq!(slots.len(), 2, "a WLD slot per label");

        let mut labels = Vec::new();
        for &slot in &slots {
            let mut info = CK_TOKEN_INFO::default();
            assert_rv(call!(raw, C_GetTokenInfo(slot, &mut info)), CKR_OK, "C_GetTokenInfo");
            // PKCS#11: the label is padded with blanks, never NUL-terminated.
            assert!(!info.label.contains(&0), "label {:?} has a NUL", info.label);
            labels.push((slot, info.label));
        }
        let mut expected_plain = [b' '; 32];
        expected_plain[..5].copy_from_slice(b"WLD_A");
        let mut expected_leading = [b' '; 32];
        expected_leading[1..6].copy_from_slice(b"WLD_A");
        let plain = labels.iter().find(|(_, l)| *l == expected_plain).expect("WLD_A slot");
        let leading = labels.iter().find(|(_, l)| *l == expected_leading).expect("\" WLD_A\" slot");
        let members = raw.member_status();
        let count = |slot: CK_SLOT_ID| members.iter().filter(|m| m.wld_slot_id == slot).count();
        assert_eq!(count(plain.0), 3, "members of WLD_A");
        assert_eq!(count(leading.0), 1, "members of \" WLD_A\"");
        drop(hsms);
    }

    fn initialize_twice_and_concurrently() {
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        let raw = Arc::new(Raw::load());

        assert_rv(raw.initialize(), CKR_OK, "first C_Initialize");
        assert_rv(raw.initialize(), CKR_CRYPTOKI_ALREADY_INITIALIZED, "second C_Initialize");
        assert_rv(raw.finalize(), CKR_OK, "C_Finalize");

        for round in 0..10 {
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let raw = raw.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        raw.initialize()
                    })
                })
                .collect();
            let mut codes: Vec<CK_RV> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            codes.sort();
            assert_eq!(
                codes,
                vec![CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED],
                "round {round}: exactly one C_Initialize succeeds"
            );
            let slot = raw.slots()[0];
            let session = raw.open(slot, 0);
            assert_rv(raw.login(session, USER_PIN), CKR_OK, "C_Login after the race");
            let key = raw.find_one(session, CKO_PRIVATE_KEY, keys::RSA_LABEL);
            let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
            assert_rv(call!(raw, C_SignInit(session, &mut sign, key)), CKR_OK, "C_SignInit");
            let mut message = *b"after the race";
            let mut signature = [0u8; 256];
            let mut length: CK_ULONG = 256;
            assert_rv(
                call!(raw, C_Sign(session, message.as_mut_ptr(), 14, signature.as_mut_ptr(), &mut length)),
                CKR_OK,
                "C_Sign after the race",
            );
            keys::verify_rsa_pkcs1_sha256(&message, &signature).unwrap();
            assert_rv(raw.finalize(), CKR_OK, "C_Finalize");
        }
    }

    fn interfaces_and_function_lists() {
        let wld = Wld::start();
        let raw = &wld.raw;
        let mut name = *b"PKCS 11\0";
        let mut version = CK_VERSION { major: 3, minor: 0 };
        let sentinel = 0x5a5a as *mut CK_INTERFACE;

        // PKCS#11 3.0 C_GetInterface: a request that no interface matches
        // (here: fork-safe, which p11wld is not) fails with
        // CKR_ARGUMENTS_BAD and leaves *ppInterface as it was.
        let mut interface = sentinel;
        let rv = unsafe {
            (raw.get_interface)(name.as_mut_ptr(), &mut version, &mut interface, CKF_INTERFACE_FORK_SAFE)
        };
        assert_rv(rv, CKR_ARGUMENTS_BAD, "C_GetInterface with CKF_INTERFACE_FORK_SAFE");
        assert_eq!(interface, sentinel, "ppInterface written on failure");
        let mut unknown = CK_VERSION { major: 3, minor: 9 };
        let rv = unsafe { (raw.get_interface)(name.as_mut_ptr(), &mut unknown, &mut interface, 0) };
        assert_rv(rv, CKR_ARGUMENTS_BAD, "C_GetInterface for version 3.9");
        assert_eq!(interface, sentinel, "ppInterface written on failure");

        let rv = unsafe { (raw.get_interface)(name.as_mut_ptr(), &mut version, &mut interface, 0) };
        assert_rv(rv, CKR_OK, "C_GetInterface(\"PKCS 11\", 3.0, 0)");
        let list = unsafe { &*((*interface).pFunctionList as *const CK_FUNCTION_LIST_3_0) };
        assert_eq!((list.version.major, list.version.minor), (3, 0));
        let mut info = CK_INFO::default();
        assert_rv(unsafe { list.C_GetInfo.unwrap()(&mut info) }, CKR_OK, "C_GetInfo");
        assert_eq!((info.cryptokiVersion.major, info.cryptokiVersion.minor), (3, 0));

        // Every entry of the 3.0 list is filled in: a CK_VERSION padded to
        // one pointer, then one pointer per function.
        let words = size_of::<CK_FUNCTION_LIST_3_0>() / size_of::<usize>();
        let entries = unsafe {
            std::slice::from_raw_parts((list as *const CK_FUNCTION_LIST_3_0).cast::<usize>(), words)
        };
        let empty: Vec<usize> = (1..words).filter(|&i| entries[i] == 0).collect();
        assert!(empty.is_empty(), "empty entries of the 3.0 list: {empty:?}");

        let mut v240 = CK_VERSION { major: 2, minor: 40 };
        let rv = unsafe { (raw.get_interface)(name.as_mut_ptr(), &mut v240, &mut interface, 0) };
        assert_rv(rv, CKR_OK, "C_GetInterface(\"PKCS 11\", 2.40, 0)");
        let list = unsafe { &*((*interface).pFunctionList as *const CK_FUNCTION_LIST) };
        assert_eq!((list.version.major, list.version.minor), (2, 40));
        assert_rv(unsafe { list.C_GetInfo.unwrap()(&mut info) }, CKR_OK, "C_GetInfo 2.40");
        assert_eq!((info.cryptokiVersion.major, info.cryptokiVersion.minor), (2, 40));

        // The members here are p11-kit-client.so instances. SoftHSM2 2.6.1
        // exports C_GetFunctionList only; a WLD slot of three SoftHSM2
        // tokens loaded directly is checked in vendor_with_function_list_only.
        let _ = &wld.hsms;
    }

    fn vendor_with_function_list_only() {
        // SoftHSM2 2.6.1 exports no C_GetInterface: p11wld loads it through
        // C_GetFunctionList, and the WLD slot of its three tokens works.
        let softhsm_path = common::paths::softhsm_module();
        let library = unsafe { libloading::Library::new(&softhsm_path) }.unwrap();
        let has_interface =
            unsafe { library.get::<unsafe extern "C" fn()>(b"C_GetInterface\0") }.is_ok();
        drop(library);
        assert!(!has_interface, "{} exports C_GetInterface", softhsm_path.display());

        let one = common::one_softhsm_with_tokens();
        let config = one.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        let raw = Raw::load();
        assert_rv(raw.initialize(), CKR_OK, "C_Initialize");
        let slot = *raw
            .slots()
            .iter()
            .find(|&&slot| {
                let mut info = CK_TOKEN_INFO::default();
                call!(raw, C_GetTokenInfo(slot, &mut info));
                info.label.starts_with(b"WLD_A ")
            })
            .expect("WLD_A slot");
        let session = raw.open(slot, 0);
        assert_rv(raw.login(session, USER_PIN), CKR_OK, "C_Login");
        let key = raw.find_one(session, CKO_PRIVATE_KEY, keys::RSA_LABEL);
        let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
        assert_rv(call!(raw, C_SignInit(session, &mut sign, key)), CKR_OK, "C_SignInit");
        let mut message = *b"direct";
        let mut signature = [0u8; 256];
        let mut length: CK_ULONG = 256;
        assert_rv(
            call!(raw, C_Sign(session, message.as_mut_ptr(), 6, signature.as_mut_ptr(), &mut length)),
            CKR_OK,
            "C_Sign",
        );
        keys::verify_rsa_pkcs1_sha256(&message, &signature).unwrap();
        assert_eq!(
            raw.member_status().iter().filter(|m| m.wld_slot_id == slot).count(),
            3,
            "members of the WLD slot"
        );
    }

    fn interrupted_find_keeps_first_search() {
        let wld = Wld::start();
        let raw = &wld.raw;
        for (member, &s) in wld.sessions.iter().enumerate() {
            let what = |step: &str| format!("{step} on member {member}");
            let everything = raw.find(s, &mut []);
            assert_eq!(everything.len(), keys::KEY_SET_OBJECT_COUNT, "{}", what("objects"));

            let mut class = CKO_PRIVATE_KEY;
            let mut t1 = [ulong_attribute(CKA_CLASS, &mut class)];
            assert_rv(call!(raw, C_FindObjectsInit(s, t1.as_mut_ptr(), 1)), CKR_OK, &what("C_FindObjectsInit(T1)"));
            let mut first = [0 as CK_OBJECT_HANDLE; 1];
            let mut count: CK_ULONG = 0;
            assert_rv(call!(raw, C_FindObjects(s, first.as_mut_ptr(), 1, &mut count)), CKR_OK, &what("C_FindObjects"));
            assert_eq!(count, 1, "{}", what("first match"));
            // PKCS#11: a search is active until C_FindObjectsFinal; a new
            // C_FindObjectsInit gives CKR_OPERATION_ACTIVE and leaves it.
            let mut label = *b"aes-key";
            let mut t2 = [bytes_attribute(CKA_LABEL, &mut label)];
            assert_rv(
                call!(raw, C_FindObjectsInit(s, t2.as_mut_ptr(), 1)),
                CKR_OPERATION_ACTIVE,
                &what("C_FindObjectsInit(T2) during T1"),
            );
            let mut rest = [0 as CK_OBJECT_HANDLE; 8];
            assert_rv(call!(raw, C_FindObjects(s, rest.as_mut_ptr(), 8, &mut count)), CKR_OK, &what("C_FindObjects after T2"));
            assert_eq!(count, 1, "{}", what("second private key of T1"));
            assert_ne!(rest[0], first[0], "{}", what("distinct matches"));
            assert_rv(call!(raw, C_FindObjectsFinal(s)), CKR_OK, &what("C_FindObjectsFinal"));

            // After Final, a new search returns every match, also one
            // handle at a time.
            assert_rv(call!(raw, C_FindObjectsInit(s, null_mut(), 0)), CKR_OK, &what("C_FindObjectsInit(all)"));
            let mut one_by_one = Vec::new();
            loop {
                let mut handle = [0 as CK_OBJECT_HANDLE; 1];
                assert_rv(call!(raw, C_FindObjects(s, handle.as_mut_ptr(), 1, &mut count)), CKR_OK, &what("C_FindObjects(1)"));
                if count == 0 {
                    break;
                }
                one_by_one.push(handle[0]);
            }
            assert_rv(call!(raw, C_FindObjectsFinal(s)), CKR_OK, &what("C_FindObjectsFinal"));
            let mut sorted = one_by_one.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), one_by_one.len(), "{}", what("no handle twice"));
            let mut expected = everything.clone();
            expected.sort();
            assert_eq!(sorted, expected, "{}", what("one at a time finds everything"));
            // PKCS#11: C_FindObjectsFinal without a search.
            assert_rv(
                call!(raw, C_FindObjectsFinal(s)),
                CKR_OPERATION_NOT_INITIALIZED,
                &what("C_FindObjectsFinal without a search"),
            );
        }
    }

    fn vendors_initialized_with_os_locking() {
        // The application passes flags 0 and no callbacks, which
        // p11-kit-client.so 0.24 itself rejects with CKR_CANT_LOCK; p11wld
        // accepts it and initializes its vendors with CKF_OS_LOCKING_OK.
        let hsms = common::three_hsm_processes(false);
        let config = hsms.write_config(DEFAULT_EXTRA);
        let _env = config.set_env();
        let raw = Raw::load();
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: 0,
            pReserved: null_mut(),
        };
        assert_rv(
            call!(raw, C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast())),
            CKR_OK,
            "C_Initialize with flags 0",
        );
        let members = raw.member_status();
        assert_eq!(members.len(), 3, "members");
        assert!(members.iter().all(|m| m.state == 0), "every member is up: {members:?}");
    }

    fn restarted_hsm_comes_back() {
        // After its server restarts, a p11-kit-client.so instance returns
        // CKR_DEVICE_ERROR until it is finalized and initialized again.
        // The session on that member moves to another one, and the probe
        // initializes the instance again, so the member returns.
        let extra = format!("{DEFAULT_EXTRA}\n[health]\nprobe_interval_ms = 200\n");
        let mut wld = Wld::start_with(common::three_hsm_processes(false), &extra);
        let raw = &wld.raw;
        let before = raw.member_status();
        wld.hsms.hsms[0].restart();

        let message = b"after a restart".to_vec();
        for &s in &wld.sessions {
            let key = raw.find_one(s, CKO_PRIVATE_KEY, keys::RSA_LABEL);
            let mut sign = mechanism(CKM_SHA256_RSA_PKCS);
            assert_rv(call!(raw, C_SignInit(s, &mut sign, key)), CKR_OK, "C_SignInit");
            let mut signature = [0u8; 256];
            let mut length: CK_ULONG = 256;
            assert_rv(
                call!(raw, C_Sign(s, message.as_ptr().cast_mut(), message.len() as CK_ULONG, signature.as_mut_ptr(), &mut length)),
                CKR_OK,
                "C_Sign",
            );
            keys::verify_rsa_pkcs1_sha256(&message, &signature).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = raw.member_status();
            if status.iter().all(|m| m.state == 0) {
                break;
            }
            assert!(Instant::now() < deadline, "members still down: {status:?} (before: {before:?})");
            std::thread::sleep(Duration::from_millis(100));
        }
        // New sessions reach the restarted member again.
        let session = raw.open(wld.slot, 0);
        let _ = session;
    }
}

/// A call of a table of cases, made when the case runs.
type Call<'a> = Box<dyn Fn() -> CK_RV + 'a>;

/// Ends whatever operation is active on `s` by running it to completion
/// with scratch buffers, ignoring the result.
fn finish_any(raw: &Raw, s: CK_SESSION_HANDLE, data: *mut u8, out: *mut u8) {
    let mut length: CK_ULONG = 512;
    call!(raw, C_Sign(s, data, 16, out, &mut length));
    length = 512;
    call!(raw, C_Digest(s, data, 16, out, &mut length));
    length = 512;
    call!(raw, C_Encrypt(s, data, 16, out, &mut length));
    length = 512;
    call!(raw, C_Decrypt(s, data, 16, out, &mut length));
    call!(raw, C_Verify(s, data, 16, out, 256));
}
