//! SoftHSM2 token directories. One directory with its own `softhsm2.conf` is
//! one test HSM.
//!
//! The fixture sets up tokens in-process with the `cryptoki` crate: it loads
//! SoftHSM2 with `SOFTHSM2_CONF` pointing at the directory, works, then calls
//! `C_Finalize` and drops the context, which unloads the library. Code under
//! test that loads SoftHSM2 later in the same process initializes it afresh
//! (the test `softhsm_reloads_after_fixture_setup` in `tests/fixture.rs`
//! checks this).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use tempfile::TempDir;

use super::env::ScopedEnv;
use super::keys;
use super::paths;

/// Environment variable that names SoftHSM2's configuration file.
pub const SOFTHSM2_CONF: &str = "SOFTHSM2_CONF";

/// Serializes the fixture's in-process use of SoftHSM2, which is a
/// process-wide singleton configured through the process environment.
static SOFTHSM_LOCK: Mutex<()> = Mutex::new(());

/// A SoftHSM2 token directory with its configuration file, removed on drop.
pub struct SoftHsm {
    dir: TempDir,
    conf: PathBuf,
}

/// One slot of a SoftHSM2 directory, as `C_GetTokenInfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSummary {
    pub slot_id: u64,
    pub label: String,
    pub serial: String,
    pub initialized: bool,
    pub user_pin_initialized: bool,
}

impl SoftHsm {
    /// Creates an empty token directory under the system temporary
    /// directory.
    ///
    /// SoftHSM2 always shows one slot with an uninitialized token more than
    /// it has initialized tokens, so a new directory has one free slot.
    pub fn new() -> SoftHsm {
        SoftHsm::new_in(&std::env::temp_dir())
    }

    /// Creates an empty token directory under `parent`.
    pub fn new_in(parent: &Path) -> SoftHsm {
        let dir = tempfile::Builder::new()
            .prefix("p11wld-softhsm-")
            .tempdir_in(parent)
            .unwrap_or_else(|e| {
                panic!("failed to create a directory in {}: {e}", parent.display())
            });
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens)
            .unwrap_or_else(|e| panic!("failed to create {}: {e}", tokens.display()));

        let conf = dir.path().join("softhsm2.conf");
        let text = format!(
            "# SoftHSM2 configuration of one p11wld test HSM.\n\
             directories.tokendir = {}\n\
             objectstore.backend = file\n\
             log.level = ERROR\n\
             slots.removable = false\n",
            tokens.display()
        );
        std::fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("failed to write {}: {e}", conf.display()));
        SoftHsm { dir, conf }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// Returns the directory in which SoftHSM2 stores the tokens.
    pub fn token_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// Returns the environment variable that selects this directory:
    /// `("SOFTHSM2_CONF", <path of softhsm2.conf>)`.
    pub fn env(&self) -> (String, String) {
        (SOFTHSM2_CONF.to_owned(), self.conf.display().to_string())
    }

    /// Loads SoftHSM2 for this directory, runs `f`, then finalizes and
    /// unloads SoftHSM2 again.
    ///
    /// Sessions that `f` opens must be dropped before `f` returns. Panics if
    /// SoftHSM2 is already initialized in this process (for example by the
    /// code under test), because this function would otherwise finalize it
    /// under that code. Set up tokens before the code under test loads
    /// SoftHSM2.
    pub fn with_module<T>(&self, f: impl FnOnce(&Pkcs11) -> T) -> T {
        let _lock = SOFTHSM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _conf = ScopedEnv::set(SOFTHSM2_CONF, &self.conf);

        let module = paths::softhsm_module();
        paths::require_file(&module, paths::SOFTHSM_ENV);
        let pkcs11 = Pkcs11::new(&module)
            .unwrap_or_else(|e| panic!("failed to load {}: {e}", module.display()));
        if let Err(error) = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            panic!(
                "C_Initialize of {} failed with {error:?}. If SoftHSM2 is already initialized \
                 in this process, set up the tokens before the code under test loads it",
                module.display()
            );
        }
        let initialized = Initialized(Some(pkcs11));
        let pkcs11 = initialized
            .0
            .as_ref()
            .expect("the context is set until drop");
        f(pkcs11)
    }

    /// Lists every slot of the directory, including the free slot with the
    /// uninitialized token.
    pub fn tokens(&self) -> Vec<TokenSummary> {
        self.with_module(|pkcs11| {
            let slots = pkcs11
                .get_slots_with_token()
                .expect("C_GetSlotList of SoftHSM2 succeeds");
            slots
                .into_iter()
                .map(|slot| summarize(pkcs11, slot))
                .collect()
        })
    }

    /// Initializes the token in the first free slot with `label` and
    /// `so_pin`, sets its user PIN to `user_pin`, and returns its serial
    /// number.
    ///
    /// SoftHSM2 2.6.1 moves a token to a new slot id with a new serial number
    /// when `C_InitToken` runs, so the token is found again afterwards by its
    /// serial number, which is new in this directory.
    pub fn init_token(&self, label: &str, so_pin: &str, user_pin: &str) -> String {
        self.with_module(|pkcs11| {
            let before = slot_summaries(pkcs11);
            let free = before
                .iter()
                .find(|token| !token.initialized)
                .unwrap_or_else(|| panic!("no free SoftHSM2 slot in {}", self.conf.display()));
            let free_slot = slot_by_id(pkcs11, free.slot_id);
            pkcs11
                .init_token(free_slot, &AuthPin::from(so_pin), label)
                .unwrap_or_else(|e| panic!("C_InitToken of a token labelled {label} failed: {e}"));

            let token = find_new_token(pkcs11, &before, label);
            let session = open_rw_session(pkcs11, token.slot_id);
            session
                .login(UserType::So, Some(&AuthPin::from(so_pin)))
                .unwrap_or_else(|e| panic!("C_Login as SO on token {label} failed: {e}"));
            session
                .init_pin(&AuthPin::from(user_pin))
                .unwrap_or_else(|e| panic!("C_InitPIN on token {label} failed: {e}"));
            token.serial
        })
    }

    /// Runs `f` with a read-write session logged in as the user on the token
    /// with serial number `serial`.
    pub fn with_user_session<T>(
        &self,
        serial: &str,
        user_pin: &str,
        f: impl FnOnce(&Session) -> T,
    ) -> T {
        self.with_module(|pkcs11| {
            let slot_id = find_serial(pkcs11, serial);
            let session = open_rw_session(pkcs11, slot_id);
            session
                .login(UserType::User, Some(&AuthPin::from(user_pin)))
                .unwrap_or_else(|e| panic!("C_Login as user on token {serial} failed: {e}"));
            f(&session)
        })
    }

    /// Imports the standard key set (see [`keys::key_set`]) into the token
    /// with serial number `serial`.
    pub fn import_key_set(&self, serial: &str, user_pin: &str) {
        self.with_user_session(serial, user_pin, keys::import_key_set);
    }

    /// Initializes a token in the first free slot, imports the standard key
    /// set into it, and returns its serial number.
    pub fn init_token_with_key_set(&self, label: &str, so_pin: &str, user_pin: &str) -> String {
        let serial = self.init_token(label, so_pin, user_pin);
        self.import_key_set(&serial, user_pin);
        serial
    }
}

/// A cryptoki context that is finalized when dropped, also during a panic.
struct Initialized(Option<Pkcs11>);

impl Drop for Initialized {
    fn drop(&mut self) {
        if let Some(pkcs11) = self.0.take() {
            if let Err(error) = pkcs11.finalize() {
                // A panic here during unwinding would abort the process.
                eprintln!("softhsm: C_Finalize of SoftHSM2 failed: {error}");
            }
        }
    }
}

fn summarize(pkcs11: &Pkcs11, slot: Slot) -> TokenSummary {
    let info = pkcs11
        .get_token_info(slot)
        .unwrap_or_else(|e| panic!("C_GetTokenInfo of SoftHSM2 slot {} failed: {e}", slot.id()));
    TokenSummary {
        slot_id: slot.id(),
        label: info.label().to_owned(),
        serial: info.serial_number().to_owned(),
        initialized: info.token_initialized(),
        user_pin_initialized: info.user_pin_initialized(),
    }
}

/// Returns the one initialized token labelled `label` whose serial number
/// is not among the tokens in `before`.
fn find_new_token(pkcs11: &Pkcs11, before: &[TokenSummary], label: &str) -> TokenSummary {
    let after = slot_summaries(pkcs11);
    let is_old = |token: &TokenSummary| {
        before
            .iter()
            .any(|old| old.initialized && old.serial == token.serial)
    };
    let new_tokens: Vec<&TokenSummary> = after
        .iter()
        .filter(|token| token.initialized && token.label == label && !is_old(token))
        .collect();
    match new_tokens.as_slice() {
        [token] => (*token).clone(),
        _ => panic!(
            "expected one new token labelled {label} after C_InitToken, \
             found {} in slots {after:?}",
            new_tokens.len()
        ),
    }
}

fn slot_summaries(pkcs11: &Pkcs11) -> Vec<TokenSummary> {
    pkcs11
        .get_slots_with_token()
        .expect("C_GetSlotList of SoftHSM2 succeeds")
        .into_iter()
        .map(|slot| summarize(pkcs11, slot))
        .collect()
}

fn slot_by_id(pkcs11: &Pkcs11, slot_id: u64) -> Slot {
    pkcs11
        .get_slots_with_token()
        .expect("C_GetSlotList of SoftHSM2 succeeds")
        .into_iter()
        .find(|slot| slot.id() == slot_id)
        .unwrap_or_else(|| panic!("SoftHSM2 slot {slot_id:#x} not found"))
}

fn find_serial(pkcs11: &Pkcs11, serial: &str) -> u64 {
    let slots = slot_summaries(pkcs11);
    slots
        .iter()
        .find(|token| token.initialized && token.serial == serial)
        .map(|token| token.slot_id)
        .unwrap_or_else(|| {
            panic!("no SoftHSM2 token with serial number {serial} found in slots {slots:?}")
        })
}

fn open_rw_session(pkcs11: &Pkcs11, slot_id: u64) -> Session {
    let slot = slot_by_id(pkcs11, slot_id);
    pkcs11
        .open_rw_session(slot)
        .unwrap_or_else(|e| panic!("C_OpenSession on SoftHSM2 slot {slot_id:#x} failed: {e}"))
}
