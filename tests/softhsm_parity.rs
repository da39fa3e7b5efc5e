//! Call sequences run twice in one process: on SoftHSM2 loaded directly and
//! on a WLD slot of three members. Each step records its return code (and
//! the lengths and states it returns), and the two records must be equal,
//! except where a step is marked as a known SoftHSM2 2.6 departure from
//! PKCS#11 that p11wld does not copy.
//!
//! Each sequence first opens one session per member, so a WLD slot spreads
//! the calls over all three members.

mod common;

use std::ptr::null_mut;

use common::raw::{bool_attribute, bytes_attribute, mechanism, ulong_attribute, Raw};
use common::setups::DEFAULT_EXTRA;
use common::softhsm::SOFTHSM2_CONF;
use common::table::name;
use common::{paths, ConfigFile, ScopedEnv, SoftHsm, ThreeHsms, SO_PIN, USER_PIN, WLD_LABEL};
use cryptoki_sys::*;

/// One module under comparison, initialized, with the slot of `WLD_A`.
struct Target {
    name: &'static str,
    list: &'static CK_FUNCTION_LIST,
    slot: CK_SLOT_ID,
    _keep: Box<dyn std::any::Any>,
}

macro_rules! call {
    ($target:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        // SAFETY: the sequences pass pointers that are NULL or valid for the
        // lengths beside them.
        unsafe { ($target.list.$name.expect(stringify!($name)))($($arg),*) }
    };
}

/// SoftHSM2 loaded directly, over a directory with one `WLD_A` token that
/// contains the standard key set.
fn direct_softhsm(softhsm: SoftHsm) -> Target {
    let conf = ScopedEnv::set(SOFTHSM2_CONF, softhsm.conf_path());
    // SAFETY: loading SoftHSM2 runs no initializer that depends on the
    // caller.
    let library = unsafe { libloading::Library::new(paths::softhsm_module()) }.unwrap();
    let list = unsafe {
        let get = *library
            .get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(
                b"C_GetFunctionList\0",
            )
            .unwrap();
        let mut list: *mut CK_FUNCTION_LIST = null_mut();
        assert_eq!(get(&mut list), CKR_OK);
        &*list
    };
    let mut args = CK_C_INITIALIZE_ARGS {
        flags: CKF_OS_LOCKING_OK,
        ..Default::default()
    };
    let rv = unsafe { list.C_Initialize.unwrap()((&mut args as *mut CK_C_INITIALIZE_ARGS).cast()) };
    assert_eq!(rv, CKR_OK, "C_Initialize of SoftHSM2");
    let mut target = Target {
        name: "SoftHSM2",
        list,
        slot: 0,
        _keep: Box::new((library, conf, softhsm)),
    };
    target.slot = slot_of_label(&target);
    target
}

/// p11wld over three HSM processes, each with one `WLD_A` token.
fn wld_slot(hsms: ThreeHsms) -> Target {
    let config: ConfigFile = hsms.write_config(DEFAULT_EXTRA);
    let env = config.set_env();
    let raw = Raw::load();
    assert_eq!(raw.initialize(), CKR_OK, "C_Initialize of p11wld");
    let list: &'static CK_FUNCTION_LIST = raw.list;
    let mut target = Target {
        name: "WLD slot",
        list,
        slot: 0,
        _keep: Box::new((raw, env, config, hsms)),
    };
    target.slot = slot_of_label(&target);
    target
}

fn slot_of_label(target: &Target) -> CK_SLOT_ID {
    let mut slots = [0 as CK_SLOT_ID; 16];
    let mut count = slots.len() as CK_ULONG;
    assert_eq!(
        call!(
            target,
            C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut count)
        ),
        CKR_OK
    );
    for &slot in &slots[..count as usize] {
        let mut info = CK_TOKEN_INFO::default();
        assert_eq!(call!(target, C_GetTokenInfo(slot, &mut info)), CKR_OK);
        if info.label.starts_with(WLD_LABEL.as_bytes())
            && info.label[WLD_LABEL.len()..].iter().all(|&b| b == b' ')
        {
            return slot;
        }
    }
    panic!("{}: no token labelled {WLD_LABEL}", target.name);
}

/// What one sequence observed, step by step.
#[derive(Default)]
struct Record {
    lines: Vec<String>,
}

impl Record {
    fn rv(&mut self, step: &str, rv: CK_RV) {
        self.lines.push(format!("{step}: {}", name(rv)));
    }

    fn note(&mut self, step: &str, value: impl std::fmt::Debug) {
        self.lines.push(format!("{step}: {value:?}"));
    }
}

/// Runs `sequence` on both targets and asserts that they observed the same.
/// Each step of `softhsm_departures` is one where SoftHSM2 2.6 departs from
/// PKCS#11, so the WLD slot must return the code given there instead.
fn compare(sequence: impl Fn(&Target, &mut Record), softhsm_departures: &[(&str, CK_RV)]) {
    // The fixture sets up tokens with SoftHSM2 in this process, so every
    // token exists before either target loads a module.
    let hsms = common::three_hsm_processes(false);
    let softhsm = SoftHsm::new();
    softhsm.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN);
    let direct = direct_softhsm(softhsm);
    let wld = wld_slot(hsms);

    let mut expected = Record::default();
    sequence(&direct, &mut expected);
    let mut actual = Record::default();
    sequence(&wld, &mut actual);

    let mut differences = Vec::new();
    for (i, line) in expected.lines.iter().enumerate() {
        let other = actual
            .lines
            .get(i)
            .map(String::as_str)
            .unwrap_or("(missing)");
        let departure = softhsm_departures
            .iter()
            .find(|(step, _)| line.starts_with(&format!("{step}:")));
        let required = match departure {
            Some((step, rv)) => format!("{step}: {}", name(*rv)),
            None => line.clone(),
        };
        if other != required {
            differences.push(format!(
                "  {}: {line}\n  {}: {other}",
                direct.name, wld.name
            ));
        }
    }
    if actual.lines.len() > expected.lines.len() {
        differences.push(format!(
            "extra steps: {:?}",
            &actual.lines[expected.lines.len()..]
        ));
    }
    assert!(
        differences.is_empty(),
        "the WLD slot differs from SoftHSM2 in {} steps:\n{}\nfull record:\n{}",
        differences.len(),
        differences.join("\n"),
        actual.lines.join("\n")
    );
}

fn open(target: &Target, flags: CK_FLAGS) -> CK_SESSION_HANDLE {
    let mut session = 0;
    let rv = call!(
        target,
        C_OpenSession(target.slot, flags, null_mut(), None, &mut session)
    );
    assert_eq!(rv, CKR_OK, "{}: C_OpenSession", target.name);
    session
}

fn open_rv(target: &Target, flags: CK_FLAGS) -> CK_RV {
    let mut session = 0;
    let rv = call!(
        target,
        C_OpenSession(target.slot, flags, null_mut(), None, &mut session)
    );
    if rv == CKR_OK {
        call!(target, C_CloseSession(session));
    }
    rv
}

const RW: CK_FLAGS = CKF_SERIAL_SESSION | CKF_RW_SESSION;
const RO: CK_FLAGS = CKF_SERIAL_SESSION;

fn login(target: &Target, session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &str) -> CK_RV {
    call!(
        target,
        C_Login(
            session,
            user,
            pin.as_ptr().cast_mut(),
            pin.len() as CK_ULONG
        )
    )
}

/// Returns the session's state and flags, or the call's error.
fn session_info(
    target: &Target,
    session: CK_SESSION_HANDLE,
) -> Result<(CK_STATE, CK_FLAGS), String> {
    let mut info = CK_SESSION_INFO::default();
    match call!(target, C_GetSessionInfo(session, &mut info)) {
        CKR_OK => Ok((info.state, info.flags)),
        rv => Err(name(rv)),
    }
}

/// Finds the objects that match a class (and a label, when given).
fn find(
    target: &Target,
    session: CK_SESSION_HANDLE,
    class: CK_OBJECT_CLASS,
    label: Option<&str>,
) -> Result<Vec<CK_OBJECT_HANDLE>, CK_RV> {
    let mut class = class;
    let mut label_bytes = label.unwrap_or("").as_bytes().to_vec();
    let mut template = vec![ulong_attribute(CKA_CLASS, &mut class)];
    if label.is_some() {
        template.push(bytes_attribute(CKA_LABEL, &mut label_bytes));
    }
    let rv = call!(
        target,
        C_FindObjectsInit(session, template.as_mut_ptr(), template.len() as CK_ULONG)
    );
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut found = Vec::new();
    loop {
        let mut batch = [0 as CK_OBJECT_HANDLE; 8];
        let mut count = 0;
        let rv = call!(
            target,
            C_FindObjects(session, batch.as_mut_ptr(), 8, &mut count)
        );
        if rv != CKR_OK {
            return Err(rv);
        }
        if count == 0 {
            break;
        }
        found.extend_from_slice(&batch[..count as usize]);
    }
    let rv = call!(target, C_FindObjectsFinal(session));
    if rv != CKR_OK {
        return Err(rv);
    }
    Ok(found)
}

/// Records how many objects of `class` a search through `session` finds.
fn count_objects(
    record: &mut Record,
    step: &str,
    target: &Target,
    session: CK_SESSION_HANDLE,
    class: CK_OBJECT_CLASS,
) {
    match find(target, session, class, None) {
        Ok(found) => record.note(step, found.len()),
        Err(rv) => record.rv(step, rv),
    }
}

isolated! {
    /// Checks the login rules of one token. One login serves every session,
    /// and a second login or another user type gets its own code. An SO
    /// login needs every session read-write, and then every session runs SO
    /// functions.
    fn login_rules_match_softhsm() {
        compare(
            |target, record| {
                let sessions: Vec<CK_SESSION_HANDLE> = (0..3).map(|_| open(target, RW)).collect();
                record.rv("user login with an empty PIN", login(target, sessions[0], CKU_USER, ""));
                record.rv("user login", login(target, sessions[0], CKU_USER, USER_PIN));
                record.rv("user login in a second session", login(target, sessions[1], CKU_USER, USER_PIN));
                record.rv("user login with a wrong PIN", login(target, sessions[2], CKU_USER, "000000"));
                record.rv("SO login while the user is", login(target, sessions[2], CKU_SO, SO_PIN));
                for (i, &session) in sessions.iter().enumerate() {
                    record.note(&format!("state of session {i}"), session_info(target, session));
                    count_objects(record, &format!("private keys seen by session {i}"), target, session, CKO_PRIVATE_KEY);
                }
                record.rv("logout", call!(target, C_Logout(sessions[1])));
                record.rv("logout again", call!(target, C_Logout(sessions[2])));
                count_objects(record, "private keys after logout", target, sessions[2], CKO_PRIVATE_KEY);

                let ro = open(target, RO);
                record.rv("SO login with a read-only session", login(target, sessions[0], CKU_SO, SO_PIN));
                record.rv("close the read-only session", call!(target, C_CloseSession(ro)));
                record.rv("SO login", login(target, sessions[0], CKU_SO, SO_PIN));
                record.rv("user login while the SO is", login(target, sessions[1], CKU_USER, USER_PIN));
                record.rv("read-only session while the SO is", open_rv(target, RO));
                for (i, &session) in sessions.iter().enumerate() {
                    record.note(&format!("SO state of session {i}"), session_info(target, session));
                    let pin = USER_PIN;
                    let rv = call!(target, C_InitPIN(session, pin.as_ptr().cast_mut(), pin.len() as CK_ULONG));
                    record.rv(&format!("C_InitPIN in session {i}"), rv);
                }
                record.rv("SO logout", call!(target, C_Logout(sessions[2])));
                record.rv("user login after the SO", login(target, sessions[2], CKU_USER, USER_PIN));
                count_objects(record, "private keys after the SO", target, sessions[0], CKO_PRIVATE_KEY);
            },
            // SoftHSM2 2.6 returns CKR_OK for C_Logout without a login.
            &[("logout again", CKR_USER_NOT_LOGGED_IN)],
        );
    }

    /// Checks that C_CloseAllSessions ends every session and the login, so
    /// sessions opened afterwards start logged out.
    fn close_all_sessions_then_use() {
        compare(
            |target, record| {
                let sessions: Vec<CK_SESSION_HANDLE> = (0..3).map(|_| open(target, RW)).collect();
                record.rv("login", login(target, sessions[0], CKU_USER, USER_PIN));
                record.rv("C_CloseAllSessions", call!(target, C_CloseAllSessions(target.slot)));
                for (i, &session) in sessions.iter().enumerate() {
                    record.note(&format!("closed session {i}"), session_info(target, session));
                    record.rv(&format!("C_CloseSession of closed session {i}"), call!(target, C_CloseSession(session)));
                }
                let mut info = CK_TOKEN_INFO::default();
                record.rv("C_GetTokenInfo", call!(target, C_GetTokenInfo(target.slot, &mut info)));
                let fresh: Vec<CK_SESSION_HANDLE> = (0..3).map(|_| open(target, RO)).collect();
                for (i, &session) in fresh.iter().enumerate() {
                    record.note(&format!("new session {i}"), session_info(target, session));
                }
                record.rv("login again", login(target, fresh[2], CKU_USER, USER_PIN));
                count_objects(record, "private keys", target, fresh[0], CKO_PRIVATE_KEY);
                record.rv("C_CloseAllSessions again", call!(target, C_CloseAllSessions(target.slot)));
                record.rv("C_CloseAllSessions without sessions", call!(target, C_CloseAllSessions(target.slot)));
            },
            &[],
        );
    }
}

/// Generates an RSA key pair of session objects whose private key needs
/// re-authentication (CKA_ALWAYS_AUTHENTICATE) for every signature, and
/// returns the private key.
fn always_authenticate_key(
    record: &mut Record,
    target: &Target,
    session: CK_SESSION_HANDLE,
) -> CK_OBJECT_HANDLE {
    let mut bits: CK_ULONG = 1024;
    let mut exponent = [1u8, 0, 1];
    let mut public_flags = [CK_FALSE, CK_TRUE];
    let [public_token, verify] = &mut public_flags;
    let mut public = [
        bool_attribute(CKA_TOKEN, public_token),
        bool_attribute(CKA_VERIFY, verify),
        ulong_attribute(CKA_MODULUS_BITS, &mut bits),
        bytes_attribute(CKA_PUBLIC_EXPONENT, &mut exponent),
    ];

    let mut private_flags = [CK_FALSE, CK_TRUE, CK_TRUE, CK_TRUE];
    let [private_token, private, sign, always_authenticate] = &mut private_flags;
    let mut private = [
        bool_attribute(CKA_TOKEN, private_token),
        bool_attribute(CKA_PRIVATE, private),
        bool_attribute(CKA_SIGN, sign),
        bool_attribute(CKA_ALWAYS_AUTHENTICATE, always_authenticate),
    ];

    let mut generate = mechanism(CKM_RSA_PKCS_KEY_PAIR_GEN);
    let (mut public_key, mut private_key) = (0, 0);
    let rv = call!(
        target,
        C_GenerateKeyPair(
            session,
            &mut generate,
            public.as_mut_ptr(),
            public.len() as CK_ULONG,
            private.as_mut_ptr(),
            private.len() as CK_ULONG,
            &mut public_key,
            &mut private_key
        )
    );
    record.rv("C_GenerateKeyPair", rv);
    private_key
}

/// Signs `data` in the session's active signing operation by the two-call
/// convention and records each step.
fn sign(record: &mut Record, target: &Target, session: CK_SESSION_HANDLE, step: &str, data: &[u8]) {
    let mut length: CK_ULONG = 0;
    let rv = call!(
        target,
        C_Sign(
            session,
            data.as_ptr().cast_mut(),
            data.len() as CK_ULONG,
            null_mut(),
            &mut length
        )
    );
    record.rv(&format!("{step}: length query"), rv);
    record.note(&format!("{step}: length"), length);
    let mut signature = vec![0u8; length as usize];
    let rv = call!(
        target,
        C_Sign(
            session,
            data.as_ptr().cast_mut(),
            data.len() as CK_ULONG,
            signature.as_mut_ptr(),
            &mut length
        )
    );
    record.rv(&format!("{step}: signature"), rv);
}

isolated! {
    /// Checks that a re-authentication for one operation (CKU_CONTEXT_SPECIFIC)
    /// leaves the login as it was, so C_Logout still ends it everywhere.
    fn context_specific_login_then_logout() {
        compare(
            |target, record| {
                let sessions: Vec<CK_SESSION_HANDLE> = (0..3).map(|_| open(target, RW)).collect();
                record.rv("re-authentication before the login", login(target, sessions[1], CKU_CONTEXT_SPECIFIC, USER_PIN));
                record.rv("login", login(target, sessions[0], CKU_USER, USER_PIN));
                let key = always_authenticate_key(record, target, sessions[1]);
                record.rv("re-authentication without an operation", login(target, sessions[1], CKU_CONTEXT_SPECIFIC, USER_PIN));

                let mut sha256_rsa = mechanism(CKM_SHA256_RSA_PKCS);
                record.rv("C_SignInit", call!(target, C_SignInit(sessions[1], &mut sha256_rsa, key)));
                record.rv("re-authentication", login(target, sessions[1], CKU_CONTEXT_SPECIFIC, USER_PIN));
                sign(record, target, sessions[1], "sign after re-authentication", b"message");
                record.rv("C_SignInit again", call!(target, C_SignInit(sessions[1], &mut sha256_rsa, key)));
                sign(record, target, sessions[1], "sign without re-authentication", b"message");

                record.rv("logout", call!(target, C_Logout(sessions[0])));
                for (i, &session) in sessions.iter().enumerate() {
                    record.note(&format!("state of session {i}"), session_info(target, session));
                    count_objects(record, &format!("private keys seen by session {i}"), target, session, CKO_PRIVATE_KEY);
                }
                record.rv("login again", login(target, sessions[2], CKU_USER, USER_PIN));
                count_objects(record, "private keys after the second login", target, sessions[1], CKO_PRIVATE_KEY);
            },
            &[],
        );
    }
}

/// Finds the one object of `class` labelled `label`.
fn find_one(
    target: &Target,
    session: CK_SESSION_HANDLE,
    class: CK_OBJECT_CLASS,
    label: &str,
) -> CK_OBJECT_HANDLE {
    let found = find(target, session, class, Some(label)).expect("search");
    assert_eq!(found.len(), 1, "{}: objects labelled {label}", target.name);
    found[0]
}

/// Runs a single-part call with output by the two-call convention: a
/// length query, a buffer one byte short, then a buffer of the exact length.
fn two_calls(
    record: &mut Record,
    step: &str,
    mut run: impl FnMut(*mut u8, *mut CK_ULONG) -> CK_RV,
) {
    let mut length: CK_ULONG = 0;
    record.rv(
        &format!("{step}: length query"),
        run(null_mut(), &mut length),
    );
    record.note(&format!("{step}: length"), length);
    let mut output = vec![0u8; length as usize + 1];
    let mut short = length.saturating_sub(1);
    record.rv(
        &format!("{step}: short buffer"),
        run(output.as_mut_ptr(), &mut short),
    );
    record.note(&format!("{step}: length after the short buffer"), short);
    let mut exact = length;
    record.rv(
        &format!("{step}: exact buffer"),
        run(output.as_mut_ptr(), &mut exact),
    );
    record.note(&format!("{step}: length written"), exact);
}

isolated! {
    /// Checks the operation rules of one session: one operation of a kind
    /// at a time, the two-call convention of single-part calls, and the
    /// codes of calls without an active operation.
    fn operation_state_matches_softhsm() {
        compare(
            |target, record| {
                let sessions: Vec<CK_SESSION_HANDLE> = (0..3).map(|_| open(target, RO)).collect();
                record.rv("login", login(target, sessions[0], CKU_USER, USER_PIN));
                let key = find_one(target, sessions[0], CKO_PRIVATE_KEY, "rsa-key");
                let public = find_one(target, sessions[0], CKO_PUBLIC_KEY, "rsa-key");
                let mut data = *b"data to sign";
                let data_len = data.len() as CK_ULONG;
                let data_ptr = data.as_mut_ptr();
                let mut sha256_rsa = mechanism(CKM_SHA256_RSA_PKCS);
                let mut raw_rsa = mechanism(CKM_RSA_PKCS);
                let session = sessions[1];

                record.rv("C_Sign without C_SignInit", call!(target, C_Sign(session, data_ptr, data_len, null_mut(), &mut 0)));
                record.rv("C_SignUpdate without C_SignInit", call!(target, C_SignUpdate(session, data_ptr, data_len)));
                record.rv("C_SignFinal without C_SignInit", call!(target, C_SignFinal(session, null_mut(), &mut 0)));
                record.rv("C_SignInit with a public key", call!(target, C_SignInit(session, &mut sha256_rsa, public)));

                record.rv("C_SignInit", call!(target, C_SignInit(session, &mut sha256_rsa, key)));
                record.rv("C_SignInit twice", call!(target, C_SignInit(session, &mut sha256_rsa, key)));
                record.rv("C_DigestInit while signing", call!(target, C_DigestInit(session, &mut mechanism(CKM_SHA256))));
                two_calls(record, "C_Sign", |out, len| call!(target, C_Sign(session, data_ptr, data_len, out, len)));
                record.rv("C_Sign after the signature", call!(target, C_Sign(session, data_ptr, data_len, null_mut(), &mut 0)));
                record.rv("C_SignUpdate after the signature", call!(target, C_SignUpdate(session, data_ptr, data_len)));

                record.rv("C_SignInit for parts", call!(target, C_SignInit(session, &mut sha256_rsa, key)));
                record.rv("C_SignUpdate", call!(target, C_SignUpdate(session, data_ptr, data_len)));
                record.rv("C_SignUpdate of no bytes", call!(target, C_SignUpdate(session, data_ptr, 0)));
                two_calls(record, "C_SignFinal", |out, len| call!(target, C_SignFinal(session, out, len)));
                record.rv("C_SignFinal after the signature", call!(target, C_SignFinal(session, null_mut(), &mut 0)));

                record.rv("C_SignInit, then a length query", call!(target, C_SignInit(session, &mut sha256_rsa, key)));
                let mut length: CK_ULONG = 0;
                record.rv("C_Sign length query", call!(target, C_Sign(session, data_ptr, data_len, null_mut(), &mut length)));
                record.rv("C_SignUpdate after the length query", call!(target, C_SignUpdate(session, data_ptr, data_len)));
                two_calls(record, "C_SignFinal after the length query", |out, len| call!(target, C_SignFinal(session, out, len)));

                record.rv("C_SignInit for raw RSA", call!(target, C_SignInit(session, &mut raw_rsa, key)));
                record.rv("C_SignUpdate of raw RSA", call!(target, C_SignUpdate(session, data_ptr, data_len)));
                record.rv("C_Sign after the rejected update", call!(target, C_Sign(session, data_ptr, data_len, null_mut(), &mut 0)));

                let mut signature = [0u8; 256];
                record.rv("C_VerifyInit", call!(target, C_VerifyInit(session, &mut sha256_rsa, public)));
                record.rv("C_Verify of a wrong signature", call!(target, C_Verify(session, data_ptr, data_len, signature.as_mut_ptr(), 256)));
                record.rv("C_VerifyInit again", call!(target, C_VerifyInit(session, &mut sha256_rsa, public)));
                record.rv("C_Verify of a short signature", call!(target, C_Verify(session, data_ptr, data_len, signature.as_mut_ptr(), 10)));
                record.rv("C_Verify after the failure", call!(target, C_Verify(session, data_ptr, data_len, signature.as_mut_ptr(), 256)));

                let mut sha256 = mechanism(CKM_SHA256);
                record.rv("C_DigestInit", call!(target, C_DigestInit(session, &mut sha256)));
                two_calls(record, "C_Digest", |out, len| call!(target, C_Digest(session, data_ptr, data_len, out, len)));
                record.rv("C_DigestUpdate after the digest", call!(target, C_DigestUpdate(session, data_ptr, data_len)));

                let mut class = CKO_PUBLIC_KEY;
                let mut template = [ulong_attribute(CKA_CLASS, &mut class)];
                record.rv("C_FindObjects without C_FindObjectsInit", call!(target, C_FindObjects(session, &mut 0, 1, &mut 0)));
                record.rv("C_FindObjectsFinal without C_FindObjectsInit", call!(target, C_FindObjectsFinal(session)));
                record.rv("C_FindObjectsInit", call!(target, C_FindObjectsInit(session, template.as_mut_ptr(), 1)));
                record.rv("C_FindObjectsInit twice", call!(target, C_FindObjectsInit(session, template.as_mut_ptr(), 1)));
                record.rv("C_SignInit while searching", call!(target, C_SignInit(session, &mut sha256_rsa, key)));
                let mut found = [0 as CK_OBJECT_HANDLE; 1];
                let mut count: CK_ULONG = 0;
                record.rv("C_FindObjects of one", call!(target, C_FindObjects(session, found.as_mut_ptr(), 1, &mut count)));
                record.note("objects found", count);
                record.rv("C_FindObjectsFinal", call!(target, C_FindObjectsFinal(session)));
                record.rv("C_FindObjectsFinal twice", call!(target, C_FindObjectsFinal(session)));
                record.rv("C_FindObjects after the search", call!(target, C_FindObjects(session, found.as_mut_ptr(), 1, &mut count)));
                record.rv("C_SignInit with handle 0", call!(target, C_SignInit(session, &mut sha256_rsa, 0)));
            },
            // SoftHSM2 2.6 returns CKR_OBJECT_HANDLE_INVALID for an invalid
            // key handle.
            &[("C_SignInit with handle 0", CKR_KEY_HANDLE_INVALID)],
        );
    }
}

/// Creates a data object with `label` and records the result; returns its
/// handle, 0 when the call failed.
fn create_data(
    record: &mut Record,
    step: &str,
    target: &Target,
    session: CK_SESSION_HANDLE,
    token: bool,
    label: &str,
) -> CK_OBJECT_HANDLE {
    let mut class = CKO_DATA;
    let mut token = if token { CK_TRUE } else { CK_FALSE };
    let mut label = label.as_bytes().to_vec();
    let mut value = b"data value".to_vec();
    let mut template = [
        ulong_attribute(CKA_CLASS, &mut class),
        bool_attribute(CKA_TOKEN, &mut token),
        bytes_attribute(CKA_LABEL, &mut label),
        bytes_attribute(CKA_VALUE, &mut value),
    ];
    let mut object = 0;
    let rv = call!(
        target,
        C_CreateObject(
            session,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut object
        )
    );
    record.rv(step, rv);
    object
}

/// Reads one attribute by the two-call convention and records the length
/// and the value, or the error.
fn read_attribute(
    record: &mut Record,
    step: &str,
    target: &Target,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    kind: CK_ATTRIBUTE_TYPE,
) {
    let mut template = [CK_ATTRIBUTE {
        type_: kind,
        pValue: null_mut(),
        ulValueLen: 0,
    }];
    let rv = call!(
        target,
        C_GetAttributeValue(session, object, template.as_mut_ptr(), 1)
    );
    record.rv(&format!("{step}: length query"), rv);
    record.note(&format!("{step}: length"), template[0].ulValueLen);
    if rv != CKR_OK {
        return;
    }
    let mut value = vec![0u8; template[0].ulValueLen as usize];
    template[0].pValue = value.as_mut_ptr().cast();
    let rv = call!(
        target,
        C_GetAttributeValue(session, object, template.as_mut_ptr(), 1)
    );
    record.rv(&format!("{step}: value"), rv);
    record.note(&format!("{step}: value"), String::from_utf8_lossy(&value));
}

/// Sets CKA_LABEL of `object` and records the result.
fn set_label(
    record: &mut Record,
    step: &str,
    target: &Target,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    label: &str,
) {
    let mut label = label.as_bytes().to_vec();
    let mut template = [bytes_attribute(CKA_LABEL, &mut label)];
    record.rv(
        step,
        call!(
            target,
            C_SetAttributeValue(session, object, template.as_mut_ptr(), 1)
        ),
    );
}

/// Copies `object` with `template` and records the result; returns the
/// copy, 0 when the call failed.
fn copy(
    record: &mut Record,
    step: &str,
    target: &Target,
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: &mut [CK_ATTRIBUTE],
) -> CK_OBJECT_HANDLE {
    let mut new = 0;
    // An empty template is passed as a valid pointer with count 0, because
    // SoftHSM2 2.6 rejects a NULL template with CKR_ARGUMENTS_BAD.
    let mut unused = [CK_ATTRIBUTE::default()];
    let template_ptr = if template.is_empty() {
        unused.as_mut_ptr()
    } else {
        template.as_mut_ptr()
    };
    let rv = call!(
        target,
        C_CopyObject(
            session,
            object,
            template_ptr,
            template.len() as CK_ULONG,
            &mut new
        )
    );
    record.rv(step, rv);
    new
}

isolated! {
    /// Checks object management as one token does it: writes to token
    /// objects rejected in a read-only session, session objects usable in
    /// every session, copies, attribute changes, and attribute reads of
    /// sensitive and unknown attributes by the two-call convention.
    fn objects_and_attributes_match_softhsm() {
        compare(
            |target, record| {
                let sessions: Vec<CK_SESSION_HANDLE> = (0..3).map(|_| open(target, RO)).collect();
                record.rv("login", login(target, sessions[0], CKU_USER, USER_PIN));
                let public = find_one(target, sessions[0], CKO_PUBLIC_KEY, "rsa-key");
                let private = find_one(target, sessions[0], CKO_PRIVATE_KEY, "rsa-key");

                create_data(record, "token object in a read-only session", target, sessions[0], true, "token data");
                let data = create_data(record, "session object in a read-only session", target, sessions[0], false, "session data");
                for (i, &session) in sessions.iter().enumerate() {
                    read_attribute(record, &format!("session object in session {i}"), target, session, data, CKA_VALUE);
                }
                set_label(record, "label of a token object in a read-only session", target, sessions[0], public, "renamed");
                record.rv("C_DestroyObject of a token object in a read-only session", call!(target, C_DestroyObject(sessions[0], public)));
                copy(record, "copy of a token object as it is", target, sessions[0], public, &mut []);
                let mut token = CK_TRUE;
                copy(record, "copy to a token object", target, sessions[0], public, &mut [bool_attribute(CKA_TOKEN, &mut token)]);
                let mut no = CK_FALSE;
                let mut label = b"copy".to_vec();
                let copied = copy(
                    record,
                    "copy to a session object",
                    target,
                    sessions[0],
                    public,
                    &mut [bool_attribute(CKA_TOKEN, &mut no), bytes_attribute(CKA_LABEL, &mut label)],
                );
                read_attribute(record, "label of the copy", target, sessions[0], copied, CKA_LABEL);
                read_attribute(record, "label of the copy in another session", target, sessions[2], copied, CKA_LABEL);
                set_label(record, "label of the copy", target, sessions[0], copied, "renamed copy");
                read_attribute(record, "new label of the copy", target, sessions[0], copied, CKA_LABEL);
                record.note("copies by the old label", find(target, sessions[0], CKO_PUBLIC_KEY, Some("copy")).map(|f| f.len()));
                record.note("copies by the new label", find(target, sessions[0], CKO_PUBLIC_KEY, Some("renamed copy")).map(|f| f.len()));
                read_attribute(record, "modulus of the copy", target, sessions[0], copied, CKA_MODULUS_BITS);
                let mut size: CK_ULONG = 0;
                record.rv("C_GetObjectSize of the copy", call!(target, C_GetObjectSize(sessions[0], copied, &mut size)));
                record.rv("C_DestroyObject of the copy", call!(target, C_DestroyObject(sessions[0], copied)));
                read_attribute(record, "label of the destroyed copy", target, sessions[0], copied, CKA_LABEL);
                read_attribute(record, "label of the destroyed copy in another session", target, sessions[1], copied, CKA_LABEL);

                read_attribute(record, "private exponent", target, sessions[1], private, CKA_PRIVATE_EXPONENT);
                read_attribute(record, "unknown attribute", target, sessions[1], private, 0x8765_4321);
                read_attribute(record, "value of a public key", target, sessions[1], public, CKA_VALUE);
                let mut label = [0u8; 7];
                let mut short = [0u8; 6];
                let mut template = [
                    CK_ATTRIBUTE { type_: CKA_LABEL, pValue: label.as_mut_ptr().cast(), ulValueLen: 7 },
                    CK_ATTRIBUTE { type_: CKA_PRIVATE_EXPONENT, pValue: null_mut(), ulValueLen: 0 },
                    CK_ATTRIBUTE { type_: CKA_ID, pValue: null_mut(), ulValueLen: 0 },
                    CK_ATTRIBUTE { type_: CKA_MODULUS, pValue: short.as_mut_ptr().cast(), ulValueLen: 6 },
                ];
                let rv = call!(target, C_GetAttributeValue(sessions[2], private, template.as_mut_ptr(), 4));
                record.rv("mixed template", rv);
                let lengths: Vec<CK_ULONG> = template.iter().map(|a| a.ulValueLen).collect();
                record.note("mixed template lengths", lengths);
                record.note("mixed template label", String::from_utf8_lossy(&label));

                let rw = open(target, RW);
                let mut no = CK_FALSE;
                let mut template = [bool_attribute(CKA_SENSITIVE, &mut no)];
                record.rv("CKA_SENSITIVE set to false", call!(target, C_SetAttributeValue(rw, private, template.as_mut_ptr(), 1)));
                record.rv("close the session of the session object", call!(target, C_CloseSession(sessions[0])));
                read_attribute(record, "session object after its session closed", target, sessions[1], data, CKA_VALUE);
            },
            &[],
        );
    }
}

isolated! {
    /// Checks session flags, mechanism lists and mechanism information by
    /// the two-call convention, and the codes for unknown mechanisms and
    /// sessions without CKF_SERIAL_SESSION.
    fn session_and_mechanism_info() {
        compare(
            |target, record| {
                let mut session = 0;
                let rv = call!(target, C_OpenSession(target.slot, CKF_RW_SESSION, null_mut(), None, &mut session));
                record.rv("session without CKF_SERIAL_SESSION", rv);
                let rv = call!(target, C_OpenSession(target.slot, RO | 0x100, null_mut(), None, &mut session));
                record.rv("session with an unknown flag", rv);
                record.note("flags of that session", session_info(target, session));
                let rw = open(target, RW);
                record.note("flags of a read-write session", session_info(target, rw));

                let mut count: CK_ULONG = 0;
                record.rv("mechanism count", call!(target, C_GetMechanismList(target.slot, null_mut(), &mut count)));
                let mut list = vec![0 as CK_MECHANISM_TYPE; count as usize];
                let mut short = count - 1;
                record.rv("mechanism list too short", call!(target, C_GetMechanismList(target.slot, list.as_mut_ptr(), &mut short)));
                record.note("count after the short list", short == count);
                let mut exact = count;
                record.rv("mechanism list", call!(target, C_GetMechanismList(target.slot, list.as_mut_ptr(), &mut exact)));
                record.note("count of the list", exact == count);
                for mechanism in [CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS, CKM_ECDSA, CKM_SHA256] {
                    let mut info = CK_MECHANISM_INFO::default();
                    let rv = call!(target, C_GetMechanismInfo(target.slot, mechanism, &mut info));
                    record.rv(&format!("mechanism {mechanism:#x}"), rv);
                    record.note(&format!("mechanism {mechanism:#x} info"), (info.ulMinKeySize, info.ulMaxKeySize, info.flags));
                }
                let mut info = CK_MECHANISM_INFO::default();
                record.rv("unknown mechanism", call!(target, C_GetMechanismInfo(target.slot, 0x8765_4321, &mut info)));
                let mut sha = mechanism(0x8765_4321);
                record.rv("C_DigestInit of an unknown mechanism", call!(target, C_DigestInit(rw, &mut sha)));
                let mut random = [0u8; 16];
                record.rv("C_GenerateRandom", call!(target, C_GenerateRandom(rw, random.as_mut_ptr(), 16)));
                record.rv("C_SeedRandom", call!(target, C_SeedRandom(rw, random.as_mut_ptr(), 16)));
            },
            &[],
        );
    }
}
