//! Paths of the programs and PKCS#11 modules that the tests use.
//!
//! Each path can be overridden by an environment variable, for machines
//! whose packages install them elsewhere than Debian 12 on x86_64.

use std::path::{Path, PathBuf};

/// Overrides the path of the p11wld PKCS#11 module under test.
pub const MODULE_ENV: &str = "P11WLD_TEST_MODULE";
/// Overrides the path of SoftHSM2's PKCS#11 module.
pub const SOFTHSM_ENV: &str = "P11WLD_TEST_SOFTHSM";
/// Overrides the path of p11-kit's client module (`p11-kit-client.so`).
pub const P11KIT_CLIENT_ENV: &str = "P11WLD_TEST_P11KIT_CLIENT";
/// Overrides the `p11-kit` program that starts `p11-kit server`.
pub const P11KIT_ENV: &str = "P11WLD_TEST_P11KIT";

pub const DEFAULT_SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const DEFAULT_P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
pub const DEFAULT_P11KIT: &str = "p11-kit";

/// Maximum length in bytes of a Unix socket path on Linux: `sun_path` has
/// 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

fn from_env_or(variable: &str, default: impl Into<PathBuf>) -> PathBuf {
    match std::env::var_os(variable) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => default.into(),
    }
}

/// Returns the p11wld command-line program that cargo built for this test.
pub fn p11wld_cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_p11wld"))
}

/// Returns the p11wld PKCS#11 module: `$P11WLD_TEST_MODULE`, else the
/// crate's cdylib `libp11wld.so` from the cargo build of this test.
///
/// `cargo test` (checked with cargo 1.95) builds the cdylib into the `deps`
/// directory next to the `p11wld` program and, unlike `cargo build`, does
/// not copy it next to the program. So `deps/libp11wld.so` is preferred,
/// because a copy next to the program can be left from an older build.
pub fn p11wld_module() -> PathBuf {
    if let Some(path) = std::env::var_os(MODULE_ENV).filter(|value| !value.is_empty()) {
        return PathBuf::from(path);
    }
    let profile_dir = p11wld_cli()
        .parent()
        .expect("the p11wld program has a parent directory")
        .to_owned();
    let in_deps = profile_dir.join("deps").join("libp11wld.so");
    if in_deps.exists() {
        in_deps
    } else {
        profile_dir.join("libp11wld.so")
    }
}

/// Returns SoftHSM2's PKCS#11 module: `$P11WLD_TEST_SOFTHSM`, else Debian's
/// path.
pub fn softhsm_module() -> PathBuf {
    from_env_or(SOFTHSM_ENV, DEFAULT_SOFTHSM)
}

/// Returns p11-kit's client module: `$P11WLD_TEST_P11KIT_CLIENT`, else
/// Debian's path on x86_64.
pub fn p11kit_client_module() -> PathBuf {
    from_env_or(P11KIT_CLIENT_ENV, DEFAULT_P11KIT_CLIENT)
}

/// Returns the `p11-kit` program: `$P11WLD_TEST_P11KIT`, else `p11-kit`
/// looked up on `PATH`.
pub fn p11kit_program() -> PathBuf {
    from_env_or(P11KIT_ENV, DEFAULT_P11KIT)
}

/// Returns a directory for temporary files whose paths stay short enough
/// for Unix sockets: the system temporary directory when its path has at
/// most 40 bytes, else `/tmp`.
///
/// The 40 bytes leave room for a `tempfile` directory name and a socket
/// file name within [`MAX_SOCKET_PATH`].
pub fn short_temp_dir() -> PathBuf {
    let system = std::env::temp_dir();
    if system.as_os_str().len() <= 40 {
        system
    } else {
        PathBuf::from("/tmp")
    }
}

/// Panics with a message naming the path and the override variable when a
/// module or program file does not exist.
pub fn require_file(path: &Path, override_env: &str) {
    assert!(
        path.exists(),
        "{} not found; install it or set {override_env} to its path",
        path.display()
    );
}
