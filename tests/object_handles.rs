//! Object handles of a WLD slot after the vendor gives its objects new
//! handles: SoftHSM2 2.6.1 does so when the last session on a token closes,
//! and for private objects at C_Logout. An object found again afterwards must
//! work in sessions on every member, as it does on a single token.

mod common;

use common::client::{find_key, load_initialized, slots_with_label};
use common::{keys, paths, three_hsm_processes, USER_PIN, WLD_LABEL};
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

/// Number of sessions each round opens. With the `least-sessions` policy
/// and three members, three sessions land on three different members.
const SESSIONS: usize = 3;

fn open_sessions(pkcs11: &Pkcs11, slot: Slot) -> Vec<Session> {
    (0..SESSIONS)
        .map(|_| {
            pkcs11
                .open_ro_session(slot)
                .unwrap_or_else(|e| panic!("C_OpenSession on the WLD slot failed: {e}"))
        })
        .collect()
}

fn login(session: &Session) {
    session
        .login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .unwrap_or_else(|e| panic!("C_Login on the WLD slot failed: {e}"));
}

/// Finds the RSA key in the first session and signs with it in every
/// session, checking each signature.
fn sign_in_every_session(sessions: &[Session], round: &str) {
    let key = find_key(&sessions[0], ObjectClass::PRIVATE_KEY, keys::RSA_LABEL);
    let message = format!("message of {round}");
    for (index, session) in sessions.iter().enumerate() {
        let signature = session
            .sign(&Mechanism::Sha256RsaPkcs, key, message.as_bytes())
            .unwrap_or_else(|e| panic!("{round}: signing in session {index} failed: {e}"));
        if let Err(error) = keys::verify_rsa_pkcs1_sha256(message.as_bytes(), &signature) {
            panic!("{round}: signature of session {index}: {error}");
        }
    }
}

isolated! {
    /// Closes every session between rounds, so that each member drops its
    /// object handles, then finds the key again.
    fn key_found_again_after_sessions_closed() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _config_env = config.set_env();
        let pkcs11 = load_initialized(&paths::p11wld_module());
        let slot = slots_with_label(&pkcs11, WLD_LABEL)[0];

        for round in 0..3 {
            let sessions = open_sessions(&pkcs11, slot);
            login(&sessions[0]);
            sign_in_every_session(&sessions, &format!("round {round}"));
        }
    }

    /// Logs out and in again between rounds without closing the sessions,
    /// so that each member drops the handles of its private objects.
    fn key_found_again_after_logout() {
        let hsms = three_hsm_processes(false);
        let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
        let _config_env = config.set_env();
        let pkcs11 = load_initialized(&paths::p11wld_module());
        let slot = slots_with_label(&pkcs11, WLD_LABEL)[0];

        let sessions = open_sessions(&pkcs11, slot);
        for round in 0..3 {
            login(&sessions[0]);
            sign_in_every_session(&sessions, &format!("login {round}"));
            sessions[0]
                .logout()
                .unwrap_or_else(|e| panic!("C_Logout on the WLD slot failed: {e}"));
        }
    }
}
