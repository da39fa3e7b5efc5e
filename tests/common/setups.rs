//! Ready-made arrangements of test HSMs that most tests start from.

use std::time::{Duration, Instant};

use super::config::{config_text, ConfigFile, ModuleEntry};
use super::p11kit::{P11KitHsm, ALL_TOKENS_URI};
use super::paths;
use super::softhsm::{SoftHsm, SOFTHSM2_CONF};

/// Label of the tokens that p11wld groups into one WLD slot.
pub const WLD_LABEL: &str = "WLD_A";
/// Label of a token that belongs to no group.
pub const OTHER_LABEL: &str = "OTHER";
/// SO PIN of every fixture token (test-only).
pub const SO_PIN: &str = "12345678";
/// User PIN of every fixture token (test-only).
pub const USER_PIN: &str = "123456";

/// Number of `WLD_A` tokens in [`one_softhsm_with_tokens`] and of HSMs in
/// [`three_hsm_processes`].
pub const MEMBER_COUNT: usize = 3;

/// `[wld]` and `[log]` tables that the arrangements' configurations use
/// unless a test passes its own.
pub const DEFAULT_EXTRA: &str = "[wld]\npolicy = \"least-sessions\"\n\n[log]\nlevel = \"info\"\n";

/// One SoftHSM2 directory with several tokens, loaded directly (no p11-kit).
///
/// Slots in SoftHSM2's order, which is not creation order: three `WLD_A`
/// tokens and one `OTHER` token, each with the standard key set, and the free
/// slot with an uninitialized token.
pub struct OneSoftHsm {
    pub softhsm: SoftHsm,
    /// Serial numbers of the `WLD_A` tokens, in creation order.
    pub wld_serials: Vec<String>,
    pub other_serial: String,
    /// Time that setting up the tokens took.
    pub setup_time: Duration,
}

impl OneSoftHsm {
    /// Returns the `[[module]]` entry that loads SoftHSM2 for this
    /// directory.
    ///
    /// NOTE: SoftHSM2 is one singleton per process, so one p11wld process can
    /// load only one such entry. Use [`three_hsm_processes`] for several
    /// HSMs.
    pub fn module_entry(&self, name: &str) -> ModuleEntry {
        ModuleEntry::new(name, paths::softhsm_module()).with_env(
            SOFTHSM2_CONF,
            self.softhsm.conf_path().display().to_string(),
        )
    }

    /// Writes a configuration with this directory as module `softhsm`,
    /// followed by `extra`.
    pub fn write_config(&self, extra: &str) -> ConfigFile {
        ConfigFile::write(&[self.module_entry("softhsm")], extra)
    }
}

/// Sets up [`OneSoftHsm`]: one directory with three `WLD_A` tokens and one
/// `OTHER` token, each holding the standard key set.
pub fn one_softhsm_with_tokens() -> OneSoftHsm {
    let started = Instant::now();
    let softhsm = SoftHsm::new();
    let wld_serials = (0..MEMBER_COUNT)
        .map(|_| softhsm.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN))
        .collect();
    let other_serial = softhsm.init_token_with_key_set(OTHER_LABEL, SO_PIN, USER_PIN);
    OneSoftHsm {
        softhsm,
        wld_serials,
        other_serial,
        setup_time: started.elapsed(),
    }
}

/// Three HSMs as separate `p11-kit server` processes, named `hsm1` to
/// `hsm3`. Each has one `WLD_A` token with the standard key set.
pub struct ThreeHsms {
    pub hsms: Vec<P11KitHsm>,
    /// Serial numbers of the `WLD_A` tokens, in HSM order.
    pub serials: Vec<String>,
    /// Time that setting up the tokens and starting the servers took.
    pub setup_time: Duration,
}

impl ThreeHsms {
    /// Returns the `[[module]]` entries of the HSMs in order, each one
    /// `p11-kit-client.so` instance.
    pub fn module_entries(&self) -> Vec<ModuleEntry> {
        self.hsms.iter().map(P11KitHsm::module_entry).collect()
    }

    /// Returns the configuration text with the HSMs' entries and `extra`.
    pub fn config_text(&self, extra: &str) -> String {
        config_text(&self.module_entries(), extra)
    }

    /// Writes the configuration with the HSMs' entries and `extra`.
    pub fn write_config(&self, extra: &str) -> ConfigFile {
        ConfigFile::write(&self.module_entries(), extra)
    }
}

/// Sets up [`ThreeHsms`]. With `spare_slot`, each server serves every slot
/// (URI `pkcs11:`), so clients also see SoftHSM2's free slot with an
/// uninitialized token. Without it, each server serves only the `WLD_A`
/// token.
pub fn three_hsm_processes(spare_slot: bool) -> ThreeHsms {
    let started = Instant::now();
    let uri = if spare_slot {
        ALL_TOKENS_URI.to_owned()
    } else {
        format!("pkcs11:token={WLD_LABEL}")
    };

    let mut hsms = Vec::with_capacity(MEMBER_COUNT);
    let mut serials = Vec::with_capacity(MEMBER_COUNT);
    for number in 1..=MEMBER_COUNT {
        let softhsm = SoftHsm::new();
        serials.push(softhsm.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN));
        hsms.push(P11KitHsm::start_with_uri(
            &format!("hsm{number}"),
            softhsm,
            &uri,
        ));
    }
    ThreeHsms {
        hsms,
        serials,
        setup_time: started.elapsed(),
    }
}
