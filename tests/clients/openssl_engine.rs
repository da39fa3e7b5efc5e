//! Checks with OpenSSL 3 and libp11's `pkcs11` engine: keys addressed by
//! PKCS#11 URIs sign a certificate request and a file, and plain OpenSSL
//! verifies the results with the public keys from `tests/data/`.
//!
//! The engine's module and PIN come from an OpenSSL configuration file
//! (`MODULE_PATH` and `PIN` in the engine section) that `OPENSSL_CONF`
//! names, so the PIN is never on a command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{keys, USER_PIN};
use crate::harness::{run, write_file, Client, Outcome, Report, Run, Target};
use crate::setup::Setup;

const CLIENT: Client = Client::OpensslEngine;

/// Returns the path of libp11's engine: `pkcs11.so` in the engines
/// directory that `openssl version -e` names.
fn engine_path() -> PathBuf {
    let result = run(Command::new("openssl").args(["version", "-e"]));
    let directory = result
        .stdout
        .split_once("ENGINESDIR: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(directory, _)| directory.to_owned())
        .unwrap_or_else(|| {
            panic!(
                "`openssl version -e` names no engines directory ({}); install openssl",
                result.ending()
            )
        });
    let path = Path::new(&directory).join("pkcs11.so");
    assert!(
        path.exists(),
        "{} not found; install libengine-pkcs11-openssl",
        path.display()
    );
    path
}

/// Writes an OpenSSL configuration that loads libp11's engine for
/// `target`'s module with the user PIN, and returns its path.
fn write_config(setup: &Setup, target: &Target, engine: &Path) -> PathBuf {
    let path = setup.path(target, "openssl.cnf");
    let text = format!(
        "# OpenSSL configuration of the client checks: libp11's engine on one target.\n\
         openssl_conf = openssl_init\n\
         \n\
         [openssl_init]\n\
         engines = engine_section\n\
         \n\
         [engine_section]\n\
         pkcs11 = pkcs11_section\n\
         \n\
         [pkcs11_section]\n\
         engine_id = pkcs11\n\
         dynamic_path = {}\n\
         MODULE_PATH = {}\n\
         PIN = {USER_PIN}\n\
         init = 0\n",
        engine.display(),
        target.module.display()
    );
    write_file(&path, text);
    path
}

/// Returns an `openssl` command that uses the engine on `target`.
fn with_engine(target: &Target, config: &Path) -> Command {
    let mut command = target.command("openssl");
    command.env("OPENSSL_CONF", config);
    command
}

/// Returns an `openssl` command without the engine or any target, for
/// verifying.
fn plain() -> Command {
    let mut command = Command::new("openssl");
    command.env_remove("OPENSSL_CONF");
    command
}

/// PKCS#11 URI of the private key labelled `label` on the `WLD_A` token.
fn key_uri(label: &str) -> String {
    format!("pkcs11:token=WLD_A;object={label};type=private")
}

/// The RSA-PSS options of `openssl dgst`: SHA-256 for MGF1 and a 32-byte
/// salt.
const PSS_OPTIONS: [&str; 6] = [
    "-sigopt",
    "rsa_padding_mode:pss",
    "-sigopt",
    "rsa_pss_saltlen:32",
    "-sigopt",
    "rsa_mgf1_md:sha256",
];

pub fn run_checks(setup: &Setup, report: &mut Report) {
    let engine = engine_path();
    let configs: Vec<(crate::harness::TargetKind, PathBuf)> = setup
        .targets
        .iter()
        .map(|target| (target.kind, write_config(setup, target, &engine)))
        .collect();
    let config = |target: &Target| {
        configs
            .iter()
            .find(|(kind, _)| *kind == target.kind)
            .map(|(_, path)| path.clone())
            .expect("every target has a configuration")
    };

    let public_keys = [
        (keys::RSA_LABEL, &setup.files.rsa_public_pem),
        (keys::EC_LABEL, &setup.files.ec_public_pem),
    ];
    for (label, public_key) in public_keys {
        report.check(
            CLIENT,
            &format!("`openssl req -new` signed by `{}`", key_uri(label)),
            "",
            &setup.targets,
            |target| sign_request(setup, target, &config(target), label, public_key),
        );
    }
    let signatures: [(&str, &Path, &[&str]); 3] = [
        (keys::RSA_LABEL, &setup.files.rsa_public_pem, &[]),
        (keys::RSA_LABEL, &setup.files.rsa_public_pem, &PSS_OPTIONS),
        (keys::EC_LABEL, &setup.files.ec_public_pem, &[]),
    ];
    for (label, public_key, options) in signatures {
        let padding = if options.is_empty() {
            ""
        } else {
            " with RSA-PSS"
        };
        report.check(
            CLIENT,
            &format!(
                "`openssl dgst -sha256 -sign` of a file{padding} with `{}`",
                key_uri(label)
            ),
            "",
            &setup.targets,
            |target| sign_file(setup, target, &config(target), label, public_key, options),
        );
    }
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

fn sign_request(
    setup: &Setup,
    target: &Target,
    config: &Path,
    label: &str,
    public_key: &Path,
) -> Outcome {
    let request = setup.path(target, &format!("{label}.csr"));
    let signed = run(with_engine(target, config)
        .args(["req", "-new", "-engine", "pkcs11", "-keyform", "engine"])
        .arg("-key")
        .arg(key_uri(label))
        .args(["-subj", "/CN=p11wld conformance check"])
        .arg("-out")
        .arg(&request));
    if !signed.success() {
        return Outcome::failed_run(&signed);
    }
    let verified = run(plain()
        .args(["req", "-verify", "-noout", "-pubkey", "-in"])
        .arg(&request));
    if !verified.success() || !verified.output().contains("verify OK") {
        return verify_failure(&verified);
    }
    if verified.stdout.trim() != read_text(public_key).trim() {
        return Outcome::fail(format!(
            "the request carries a public key other than {}",
            public_key.display()
        ));
    }
    Outcome::pass("request signature verifies, with the key set's public key")
}

fn sign_file(
    setup: &Setup,
    target: &Target,
    config: &Path,
    label: &str,
    public_key: &Path,
    options: &[&str],
) -> Outcome {
    let name = if options.is_empty() { "dgst" } else { "pss" };
    let signature = setup.path(target, &format!("{label}-{name}.sig"));
    let signed = run(with_engine(target, config)
        .args(["dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine"])
        .arg("-sign")
        .arg(key_uri(label))
        .args(options)
        .arg("-out")
        .arg(&signature)
        .arg(&setup.files.message));
    if !signed.success() {
        return Outcome::failed_run(&signed);
    }
    let verified = run(plain()
        .args(["dgst", "-sha256", "-verify"])
        .arg(public_key)
        .args(options)
        .arg("-signature")
        .arg(&signature)
        .arg(&setup.files.message));
    if !verified.success() || !verified.stdout.contains("Verified OK") {
        return verify_failure(&verified);
    }
    Outcome::pass("signature verifies with the key set's public key")
}

fn verify_failure(verified: &Run) -> Outcome {
    let failed = Outcome::failed_run(verified);
    Outcome::fail(format!("verification: {}", failed.detail))
}
