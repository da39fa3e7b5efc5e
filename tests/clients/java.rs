//! Checks with Java's SunPKCS11 provider (OpenJDK 17): `keytool -list` on
//! the token, and signatures made through `java.security.Signature` by
//! `java/SignatureCheck.java`, which the test compiles with `javac`.
//!
//! SunPKCS11 reads the module path and slot id from a configuration file.
//! `keytool` reads the PIN from a file (`-storepass:file`), and the Java
//! program gets it from an environment variable through a
//! `CallbackHandler`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::USER_PIN;
use crate::harness::{run, write_file, Client, Outcome, Report, Target, TargetKind};
use crate::pkcs11_tool::wld_slot_id;
use crate::setup::{Setup, PIN_ENV};

const CLIENT: Client = Client::Java;

const PROGRAM_SOURCE: &str = include_str!("java/SignatureCheck.java");
const PROGRAM_CLASS: &str = "SignatureCheck";

/// The checks of `SignatureCheck.java` in its output order: the name in
/// its `RESULT` lines, and the check as the page shows it.
const PROGRAM_CHECKS: [(&str, &str); 5] = [
    (
        "SHA256withRSA",
        "`Signature.getInstance(\"SHA256withRSA\")` with `rsa-key`",
    ),
    (
        "RSASSA-PSS",
        "`Signature.getInstance(\"RSASSA-PSS\")` with `rsa-key`",
    ),
    (
        "SHA256withRSASSA-PSS",
        "`Signature.getInstance(\"SHA256withRSASSA-PSS\")` with `rsa-key`",
    ),
    (
        "SHA256withECDSA",
        "`Signature.getInstance(\"SHA256withECDSA\")` with `ec-key`",
    ),
    (
        "KeyPairGenerator-EC",
        "`KeyPairGenerator.getInstance(\"EC\")`, then `SHA256withECDSA` with the new key",
    ),
];

/// Why `SHA256withRSASSA-PSS` fails through p11-kit.
const P11KIT_LACKS_PSS_SHA256: &str = "SunPKCS11 offers this algorithm only when the token lists \
     `CKM_SHA256_RSA_PKCS_PSS`, which p11-kit 0.24.1's RPC leaves out of \
     `C_GetMechanismList`, with or without p11wld (see pkcs11-tool's \
     `SHA256-RSA-PKCS-PSS` check). `RSASSA-PSS` above signs with the same parameters \
     through `CKM_RSA_PKCS_PSS` on every target.";

/// Why a key pair that SunPKCS11 generates fails through a WLD slot.
pub fn run_checks(setup: &Setup, report: &mut Report) {
    let classes = compile_program(setup.work.path());
    let pin_file = setup.work.path().join("keytool-pin.txt");
    write_file(&pin_file, format!("{USER_PIN}\n"));

    let mut configs: BTreeMap<TargetKind, Result<PathBuf, String>> = BTreeMap::new();
    for target in &setup.targets {
        configs.insert(target.kind, write_config(setup, target));
    }
    let config = |target: &Target| configs[&target.kind].clone();

    report.check(
        CLIENT,
        "`keytool -list -storetype PKCS11`",
        "",
        &setup.targets,
        |target| match config(target) {
            Ok(path) => keytool_list(target, &path, &pin_file),
            Err(error) => Outcome::fail(error),
        },
    );

    let mut results: BTreeMap<TargetKind, BTreeMap<String, Outcome>> = BTreeMap::new();
    for target in &setup.targets {
        let outcomes = match config(target) {
            Ok(path) => run_program(setup, target, &classes, &path),
            Err(error) => PROGRAM_CHECKS
                .iter()
                .map(|(name, _)| (name.to_string(), Outcome::fail(error.clone())))
                .collect(),
        };
        results.insert(target.kind, outcomes);
    }
    for (name, check) in PROGRAM_CHECKS {
        let why_differs = match name {
            "SHA256withRSASSA-PSS" => P11KIT_LACKS_PSS_SHA256,
            _ => "",
        };
        report.check(CLIENT, check, why_differs, &setup.targets, |target| {
            results[&target.kind][name].clone()
        });
    }
}

/// Compiles `SignatureCheck.java` into `work/java` and returns that
/// directory.
fn compile_program(work: &Path) -> PathBuf {
    let directory = work.join("java");
    std::fs::create_dir_all(&directory)
        .unwrap_or_else(|e| panic!("failed to create {}: {e}", directory.display()));
    let source = directory.join(format!("{PROGRAM_CLASS}.java"));
    write_file(&source, PROGRAM_SOURCE);
    let result = run(Command::new("javac").arg("-d").arg(&directory).arg(&source));
    assert!(
        result.success(),
        "javac failed to compile {} ({}): {}. Install openjdk-17-jdk-headless",
        source.display(),
        result.ending(),
        result.stderr
    );
    directory
}

/// Writes the SunPKCS11 configuration of `target`: its module and the id of
/// its `WLD_A` slot, which `pkcs11-tool --list-slots` finds.
fn write_config(setup: &Setup, target: &Target) -> Result<PathBuf, String> {
    let slot = wld_slot_id(target)?;
    let path = setup.path(target, "sunpkcs11.cfg");
    let text = format!(
        "name = p11wld-{}\nlibrary = {}\nslot = {slot}\n",
        target.kind.key(),
        target.module.display()
    );
    write_file(&path, text);
    Ok(path)
}

fn keytool_list(target: &Target, config: &Path, pin_file: &Path) -> Outcome {
    let result = run(target
        .command("keytool")
        .args(["-list", "-keystore", "NONE", "-storetype", "PKCS11"])
        .args(["-providerClass", "sun.security.pkcs11.SunPKCS11"])
        .arg("-providerArg")
        .arg(config)
        .arg("-storepass:file")
        .arg(pin_file));
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    // keytool prints each entry as "<alias>, <type>, " followed by a
    // fingerprint line for certificates.
    let mut entries: Vec<String> = result
        .stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(", ");
            let alias = parts.next()?;
            let kind = parts.next()?;
            kind.ends_with("Entry")
                .then(|| format!("`{alias}` ({kind})"))
        })
        .collect();
    entries.sort();
    let detail = entries.join("; ");
    let expected = ["`ec-key` (PrivateKeyEntry)", "`rsa-key` (PrivateKeyEntry)"];
    if expected
        .iter()
        .all(|entry| entries.iter().any(|found| found == entry))
    {
        Outcome::pass(detail)
    } else {
        Outcome::fail(format!("missing private key entries: {detail}"))
    }
}

/// Runs `SignatureCheck` on `target` and returns the outcome of each of
/// its checks by name.
fn run_program(
    setup: &Setup,
    target: &Target,
    classes: &Path,
    config: &Path,
) -> BTreeMap<String, Outcome> {
    let result = run(target
        .command("java")
        .arg("-cp")
        .arg(classes)
        .arg(PROGRAM_CLASS)
        .arg(config)
        .arg(&setup.files.message)
        .env(PIN_ENV, USER_PIN));
    let mut outcomes = BTreeMap::new();
    for (name, _) in PROGRAM_CHECKS {
        let prefix = format!("RESULT {name} ");
        let line = result
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()));
        let outcome = match line {
            Some("ok") => Outcome::pass("signature verifies with the public key"),
            Some(failure) => Outcome::fail(java_error(failure)),
            None => Outcome::failed_run(&result),
        };
        outcomes.insert(name.to_owned(), outcome);
    }
    outcomes
}

/// Returns the error of a `failed: ...` result line without the provider
/// name, which differs per target: SunPKCS11 names its provider
/// `SunPKCS11-<name from the configuration>`.
fn java_error(failure: &str) -> String {
    let error = failure.strip_prefix("failed: ").unwrap_or(failure);
    match error.split_once(" for provider ") {
        Some((before, _)) => before.to_owned(),
        None => error.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_error_drops_provider_name() {
        assert_eq!(
            java_error(
                "failed: java.security.NoSuchAlgorithmException: no such algorithm: \
                 SHA256withRSASSA-PSS for provider SunPKCS11-p11wld-member"
            ),
            "java.security.NoSuchAlgorithmException: no such algorithm: SHA256withRSASSA-PSS"
        );
        assert_eq!(java_error("failed: boom"), "boom");
    }
}
