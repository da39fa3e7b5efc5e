//! Checks with OpenSC's `pkcs11-tool`.

use std::path::Path;
use std::process::Command;

use cryptoki::object::{Attribute, ObjectClass};
use rsa::{Pkcs1v15Sign, Pss};
use sha2::Sha256;

use crate::common::client::slots_with_label;
use crate::common::{keys, SoftHsm, WLD_LABEL};
use crate::harness::{pkcs11_error, run, Client, Outcome, Report, Run, Target, TargetKind};
use crate::setup::{Setup, PIN_ENV};

const CLIENT: Client = Client::Pkcs11Tool;

/// Returns a `pkcs11-tool` command for `target` with the PIN in its
/// environment, for `--pin env:P11WLD_TEST_PIN`.
fn tool(target: &Target) -> Command {
    let mut command = target.command("pkcs11-tool");
    command
        .arg("--module")
        .arg(&target.module)
        .env(PIN_ENV, crate::common::USER_PIN);
    command
}

/// Returns a `pkcs11-tool` command on the `WLD_A` token, logged in.
fn logged_in(target: &Target) -> Command {
    let mut command = tool(target);
    command
        .args(["--token-label", WLD_LABEL, "--login", "--pin"])
        .arg(format!("env:{PIN_ENV}"));
    command
}

/// Runs the checks that leave the tokens as they are.
pub fn run_checks(setup: &Setup, report: &mut Report) {
    report.check(
        CLIENT,
        "`--list-slots`",
        "The WLD slot is a token of p11wld's own: its manufacturer is p11wld and its \
         model `WLD slot`. Its serial number is p11wld's own too. The page leaves serial \
         numbers out, because SoftHSM2 makes new ones on every run.",
        &setup.targets,
        list_slots,
    );
    report.check(
        CLIENT,
        "`--list-slots` through OpenSC's `pkcs11-spy.so`",
        "",
        &setup.targets,
        |target| list_slots_under_spy(setup, target),
    );
    report.check(
        CLIENT,
        "`--list-mechanisms`",
        "p11-kit 0.24.1's RPC lists only the mechanisms whose parameters it can carry, \
         so the member through p11-kit lists fewer than SoftHSM2 directly. Each WLD \
         slot lists the same mechanisms, with the same sizes and flags, as its members \
         reached without p11wld.",
        &setup.targets,
        |target| list_mechanisms(setup, target),
    );
    report.check(
        CLIENT,
        "`--login --list-objects`",
        "",
        &setup.targets,
        list_objects,
    );
    report.check(
        CLIENT,
        "`--test --login`",
        "SoftHSM2 2.6.1 rejects RSA-PKCS-OAEP with a label (`CKR_ARGUMENTS_BAD` from \
         `C_DecryptInit`), so pkcs11-tool 0.23 stops its self-test at that step on every \
         target. Before it, only the member through p11-kit fails a step: p11-kit \
         0.24.1's RPC rejects `C_GenerateRandom` of zero bytes, which p11wld answers \
         itself without calling a member.",
        &setup.targets,
        self_test,
    );
    for case in sign_cases() {
        let check = format!("`--sign`/`--verify` with `{}`", case.mechanism);
        report.check(CLIENT, &check, case.why_differs, &setup.targets, |target| {
            sign_and_verify(setup, target, &case)
        });
    }
}

/// Runs the key generation checks, which add token objects, so they run
/// after every other client's checks.
pub fn run_key_generation(setup: &Setup, report: &mut Report) {
    for (key_type, prefix) in [("EC:prime256v1", "ec"), ("rsa:2048", "rsa")] {
        report.check(
            CLIENT,
            &format!("`--keypairgen --key-type {key_type}`"),
            "",
            &setup.targets,
            |target| generate_key_pair(target, key_type, prefix),
        );
        report.check(
            CLIENT,
            &format!("tokens holding the generated `{key_type}` key pair"),
            "p11wld creates a token object on the member of the session that creates it \
             and on no other member, so the members differ until they are replicated. A \
             later session reaches the new key pair only when it runs on that member: \
             with three members and the `least-sessions` policy, a new \
             `pkcs11-tool --sign` process finds it with a chance of about one in three.",
            &setup.targets,
            |target| tokens_holding(setup, target.kind, &generated_label(target, prefix)),
        );
    }
}

/// One slot of `--list-slots` output: its id and its `name : value` lines.
pub struct SlotListing {
    pub id: u64,
    pub fields: Vec<(String, String)>,
}

impl SlotListing {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Parses `pkcs11-tool --list-slots` output: a line `Slot N (0xID): ...`
/// starts each slot, and indented `name : value` lines follow.
pub fn parse_slots(output: &str) -> Vec<SlotListing> {
    let mut slots: Vec<SlotListing> = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("Slot ") {
            let id = rest
                .split_once("(0x")
                .and_then(|(_, after)| after.split_once(')'))
                .and_then(|(hex, _)| u64::from_str_radix(hex, 16).ok());
            if let Some(id) = id {
                slots.push(SlotListing {
                    id,
                    fields: Vec::new(),
                });
            }
        } else if let (Some(slot), Some((name, value))) = (slots.last_mut(), line.split_once(':')) {
            if line.starts_with(' ') {
                slot.fields
                    .push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    slots
}

/// Returns the id of the slot whose token is labelled `WLD_A` on `target`,
/// from `pkcs11-tool --list-slots`.
pub fn wld_slot_id(target: &Target) -> Result<u64, String> {
    let result = run(tool(target).arg("--list-slots"));
    if !result.success() {
        return Err(format!(
            "pkcs11-tool --list-slots failed: {}",
            result.ending()
        ));
    }
    parse_slots(&result.stdout)
        .into_iter()
        .find(|slot| slot.field("token label") == Some(WLD_LABEL))
        .map(|slot| slot.id)
        .ok_or_else(|| format!("pkcs11-tool --list-slots shows no token labelled {WLD_LABEL}"))
}

fn list_slots(target: &Target) -> Outcome {
    let mut command = tool(target);
    command.arg("--list-slots");
    list_slots_with(command)
}

/// Runs `command`, a `pkcs11-tool --list-slots` command, and describes the
/// `WLD_A` token it lists.
fn list_slots_with(mut command: Command) -> Outcome {
    let result = run(&mut command);
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    let slots = parse_slots(&result.stdout);
    let Some(slot) = slots
        .iter()
        .find(|slot| slot.field("token label") == Some(WLD_LABEL))
    else {
        return Outcome::fail(format!("no token labelled {WLD_LABEL} listed"));
    };
    let field = |name| slot.field(name).unwrap_or("(missing)");
    Outcome::pass(format!(
        "token `{WLD_LABEL}` by {}, model {}, flags: {}",
        field("token manufacturer"),
        field("token model"),
        field("token flags")
    ))
}

/// OpenSC's PKCS#11 module that logs every call to the module that
/// `PKCS11SPY` names and passes it on.
const SPY_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";

fn list_slots_under_spy(setup: &Setup, target: &Target) -> Outcome {
    assert!(
        Path::new(SPY_MODULE).exists(),
        "{SPY_MODULE} not found; install opensc-pkcs11"
    );
    let log = setup.path(target, "pkcs11-spy.log");
    let spied = Target {
        kind: target.kind,
        module: SPY_MODULE.into(),
        env: target.env.clone(),
    };
    let mut command = tool(&spied);
    command
        .env("PKCS11SPY", &target.module)
        .env("PKCS11SPY_OUTPUT", &log)
        .arg("--list-slots");
    let outcome = list_slots_with(command);
    if !outcome.passed {
        return outcome;
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    if logged.contains("C_GetSlotList") && logged.contains("CKR_OK") {
        Outcome::pass("token `WLD_A` listed, and the spy logged the calls")
    } else {
        Outcome::fail("pkcs11-spy logged no C_GetSlotList call")
    }
}

/// Returns the lines of `pkcs11-tool --list-mechanisms` on `target`, one
/// per mechanism with its key sizes and flags, sorted.
fn mechanisms(target: &Target) -> Result<Vec<String>, Outcome> {
    let result = run(tool(target).args(["--token-label", WLD_LABEL, "--list-mechanisms"]));
    if !result.success() {
        return Err(Outcome::failed_run(&result));
    }
    let mut lines: Vec<String> = result
        .stdout
        .lines()
        .filter(|line| line.starts_with("  "))
        .map(|line| line.trim().to_owned())
        .collect();
    lines.sort();
    Ok(lines)
}

/// Lists the mechanisms of `target`. A WLD slot must list exactly the
/// mechanisms of its reference target, with the same sizes and flags.
fn list_mechanisms(setup: &Setup, target: &Target) -> Outcome {
    let listed = match mechanisms(target) {
        Ok(listed) => listed,
        Err(outcome) => return outcome,
    };
    let Some(reference_kind) = target.kind.reference() else {
        return Outcome::pass(format!("{} mechanisms", listed.len()));
    };
    let reference = setup
        .targets
        .iter()
        .find(|t| t.kind == reference_kind)
        .expect("the setup has every target");
    let expected = match mechanisms(reference) {
        Ok(expected) => expected,
        Err(outcome) => return Outcome::fail(format!("reference: {}", outcome.detail)),
    };
    let missing: Vec<&str> = expected
        .iter()
        .filter(|line| !listed.contains(line))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = listed
        .iter()
        .filter(|line| !expected.contains(line))
        .map(String::as_str)
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return Outcome::pass(format!(
            "{} mechanisms, the same as on {}",
            listed.len(),
            reference_kind.title()
        ));
    }
    let mut errors = Vec::new();
    if !missing.is_empty() {
        errors.push(format!("missing: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        errors.push(format!(
            "not on {}: {}",
            reference_kind.title(),
            extra.join(", ")
        ));
    }
    Outcome::fail(errors.join("; "))
}

/// Parses `pkcs11-tool --list-objects` output into one line per object:
/// its kind and algorithm from the header line, its label and, for keys,
/// its usage. Sorted, so that the order of the listing does not matter.
pub fn parse_objects(output: &str) -> Vec<String> {
    struct Listed {
        header: String,
        label: String,
        usage: String,
    }
    let mut objects: Vec<Listed> = Vec::new();
    for line in output.lines() {
        if !line.starts_with(' ') && line.contains(" Object;") {
            let (kind, rest) = line.split_once(';').expect("the line contains ';'");
            let algorithm = rest.split_whitespace().next().unwrap_or("");
            let algorithm = if algorithm == "type" { "" } else { algorithm };
            objects.push(Listed {
                header: format!("{kind} {algorithm}").trim().to_owned(),
                label: String::new(),
                usage: String::new(),
            });
        } else if let Some(object) = objects.last_mut() {
            let trimmed = line.trim_start();
            if let Some(label) = trimmed.strip_prefix("label:") {
                object.label = label.trim().to_owned();
            } else if let Some(usage) = trimmed.strip_prefix("Usage:") {
                object.usage = usage.trim().to_owned();
            }
        }
    }
    let mut lines: Vec<String> = objects
        .into_iter()
        .map(|object| {
            if object.usage.is_empty() {
                format!("{} `{}`", object.header, object.label)
            } else {
                format!("{} `{}` ({})", object.header, object.label, object.usage)
            }
        })
        .collect();
    lines.sort();
    lines
}

fn list_objects(target: &Target) -> Outcome {
    let result = run(logged_in(target).arg("--list-objects"));
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    let objects = parse_objects(&result.stdout);
    let expected = keys::KEY_SET_OBJECT_COUNT + 2;
    let detail = objects.join("; ");
    if objects.len() == expected {
        Outcome::pass(detail)
    } else {
        Outcome::fail(format!(
            "{} objects listed, expected {expected}: {detail}",
            objects.len()
        ))
    }
}

fn self_test(target: &Target) -> Outcome {
    let result = run(logged_in(target).arg("--test"));
    let mut errors: Vec<String> = Vec::new();
    for line in result.output().lines() {
        let lower = line.to_ascii_lowercase();
        if !(line.contains("ERR") || lower.contains("error") || lower.contains("failed")) {
            continue;
        }
        let error = pkcs11_error(line).unwrap_or_else(|| line.trim().to_owned());
        if !errors.contains(&error) {
            errors.push(error);
        }
    }
    if result.success() && errors.is_empty() {
        Outcome::pass("no errors")
    } else if errors.is_empty() {
        Outcome::fail(result.ending())
    } else {
        Outcome::fail(errors.join("; "))
    }
}

/// Checks a signature outside any token, given the message, its SHA-256
/// digest and the signature.
type Verifier = fn(message: &[u8], digest: &[u8], signature: &[u8]) -> Result<(), String>;

/// One mechanism of the signing checks.
struct SignCase {
    mechanism: &'static str,
    key_id: &'static str,
    /// Whether the mechanism signs the SHA-256 digest of the message
    /// rather than the message.
    signs_digest: bool,
    options: &'static [&'static str],
    why_differs: &'static str,
    verify: Verifier,
}

/// Explains a difference that p11-kit's RPC causes.
const P11KIT_LACKS_PSS_SHA256: &str =
    "p11-kit 0.24.1's RPC, which connects p11wld to the test HSM processes, does not \
     carry `CKM_SHA256_RSA_PKCS_PSS`: `p11-kit-client.so` leaves it out of \
     `C_GetMechanismList` and `C_SignInit` returns `CKR_MECHANISM_INVALID`, with or \
     without p11wld. p11wld forwards the mechanism: over SoftHSM2 loaded directly it \
     passes.";

fn sign_cases() -> Vec<SignCase> {
    vec![
        SignCase {
            mechanism: "RSA-PKCS",
            key_id: "01",
            signs_digest: true,
            options: &[],
            why_differs: "",
            verify: |_, digest, signature| verify_rsa_pkcs_raw(digest, signature),
        },
        SignCase {
            mechanism: "SHA256-RSA-PKCS",
            key_id: "01",
            signs_digest: false,
            options: &[],
            why_differs: "",
            verify: |message, _, signature| keys::verify_rsa_pkcs1_sha256(message, signature),
        },
        SignCase {
            mechanism: "RSA-PKCS-PSS",
            key_id: "01",
            signs_digest: true,
            options: &[
                "--hash-algorithm",
                "SHA256",
                "--mgf",
                "MGF1-SHA256",
                "--salt-len",
                "32",
            ],
            why_differs: "",
            verify: |_, digest, signature| verify_rsa_pss_digest(digest, signature),
        },
        SignCase {
            mechanism: "SHA256-RSA-PKCS-PSS",
            key_id: "01",
            signs_digest: false,
            options: &["--mgf", "MGF1-SHA256", "--salt-len", "32"],
            why_differs: P11KIT_LACKS_PSS_SHA256,
            verify: |message, _, signature| keys::verify_rsa_pss_sha256(message, signature),
        },
        SignCase {
            mechanism: "ECDSA",
            key_id: "02",
            signs_digest: true,
            options: &[],
            why_differs: "",
            verify: |_, digest, signature| keys::verify_ecdsa_p256_prehash(digest, signature),
        },
    ]
}

/// Verifies an RSA PKCS#1 v1.5 signature made by `CKM_RSA_PKCS` over
/// `data` as given, without a DigestInfo prefix.
fn verify_rsa_pkcs_raw(data: &[u8], signature: &[u8]) -> Result<(), String> {
    keys::rsa_public_key()
        .verify(Pkcs1v15Sign::new_unprefixed(), data, signature)
        .map_err(|error| format!("RSA PKCS#1 v1.5 signature does not verify: {error}"))
}

/// Verifies an RSA-PSS signature made by `CKM_RSA_PKCS_PSS` over a SHA-256
/// `digest`, with MGF1-SHA-256 and a 32-byte salt.
fn verify_rsa_pss_digest(digest: &[u8], signature: &[u8]) -> Result<(), String> {
    keys::rsa_public_key()
        .verify(
            Pss::new_with_salt::<Sha256>(keys::PSS_SALT_LEN),
            digest,
            signature,
        )
        .map_err(|error| format!("RSA-PSS signature does not verify: {error}"))
}

fn sign_and_verify(setup: &Setup, target: &Target, case: &SignCase) -> Outcome {
    let input = if case.signs_digest {
        &setup.files.digest
    } else {
        &setup.files.message
    };
    let signature_path = setup.path(target, &format!("{}.sig", case.mechanism));
    let signed = run(logged_in(target)
        .args(["--sign", "-m", case.mechanism, "--id", case.key_id])
        .args(case.options)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(&signature_path));
    if !signed.success() {
        return Outcome::failed_run(&signed);
    }

    let verified = run(tool(target)
        .args(["--token-label", WLD_LABEL])
        .args(["--verify", "-m", case.mechanism, "--id", case.key_id])
        .args(case.options)
        .arg("-i")
        .arg(input)
        .arg("--signature-file")
        .arg(&signature_path));
    if !verified.success() || !verified.stdout.contains("Signature is valid") {
        return verify_failure(&verified);
    }

    let message = read(&setup.files.message);
    let digest = read(&setup.files.digest);
    let signature = read(&signature_path);
    match (case.verify)(&message, &digest, &signature) {
        Ok(()) => Outcome::pass("signature valid for pkcs11-tool and for the test's own check"),
        Err(error) => Outcome::fail(format!("pkcs11-tool's signature: {error}")),
    }
}

fn verify_failure(verified: &Run) -> Outcome {
    let failed = Outcome::failed_run(verified);
    Outcome::fail(format!("`--verify`: {}", failed.detail))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// Returns the label of the key pair that the key generation check makes on
/// `target`, different per target because three targets reach the first
/// HSM's token.
fn generated_label(target: &Target, prefix: &str) -> String {
    format!("gen-{prefix}-{}", target.kind.key())
}

/// Returns a two-byte CKA_ID in hex for the generated key pair, different
/// per target and key type.
fn generated_id(target: &Target, prefix: &str) -> String {
    let target_digit = match target.kind {
        TargetKind::Direct => 1,
        TargetKind::WldLocal => 2,
        TargetKind::Member => 3,
        TargetKind::Wld => 4,
    };
    let type_digit = if prefix == "ec" { 1 } else { 2 };
    format!("a0{target_digit}{type_digit}")
}

fn generate_key_pair(target: &Target, key_type: &str, prefix: &str) -> Outcome {
    let result = run(logged_in(target)
        .args(["--keypairgen", "--key-type", key_type])
        .args(["--id", &generated_id(target, prefix)])
        .args(["--label", &generated_label(target, prefix)]));
    if result.success() && result.stdout.contains("Key pair generated") {
        Outcome::pass("key pair generated")
    } else {
        Outcome::failed_run(&result)
    }
}

/// Returns how many of the tokens behind `kind` hold a public key labelled
/// `label`, counted by loading SoftHSM2 in the test process on each token
/// directory.
fn tokens_holding(setup: &Setup, kind: TargetKind, label: &str) -> Outcome {
    let directories: Vec<&SoftHsm> = match kind {
        TargetKind::Direct | TargetKind::Member => vec![setup.hsms.hsms[0].softhsm()],
        TargetKind::Wld => setup.hsms.hsms.iter().map(|hsm| hsm.softhsm()).collect(),
        TargetKind::WldLocal => vec![&setup.local.softhsm],
    };
    let mut holding = 0;
    let mut total = 0;
    for directory in directories {
        let (found, tokens) = directory.with_module(|pkcs11| {
            let slots = slots_with_label(pkcs11, WLD_LABEL);
            let mut found = 0;
            for slot in &slots {
                let session = pkcs11
                    .open_ro_session(*slot)
                    .unwrap_or_else(|e| panic!("C_OpenSession on SoftHSM2 failed: {e}"));
                let template = [
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Label(label.as_bytes().to_vec()),
                ];
                let objects = session
                    .find_objects(&template)
                    .unwrap_or_else(|e| panic!("C_FindObjects on SoftHSM2 failed: {e}"));
                if !objects.is_empty() {
                    found += 1;
                }
            }
            (found, slots.len())
        });
        holding += found;
        total += tokens;
    }
    let noun = if kind.is_wld() { "members" } else { "tokens" };
    let detail = format!("on {holding} of {total} {noun}");
    if holding == 0 {
        Outcome::fail(detail)
    } else {
        Outcome::pass(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_parsed_with_fields() {
        let output = "Available slots:\n\
                      Slot 0 (0x133974f8): SoftHSM slot ID 0x133974f8\n  \
                      token label        : WLD_A\n  \
                      token flags        : login required, rng\n\
                      Slot 1 (0x1): SoftHSM slot ID 0x1\n  \
                      token state:   uninitialized\n";
        let slots = parse_slots(output);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].id, 0x1339_74f8);
        assert_eq!(slots[0].field("token label"), Some("WLD_A"));
        assert_eq!(slots[0].field("token flags"), Some("login required, rng"));
        assert_eq!(slots[1].field("token state"), Some("uninitialized"));
    }

    #[test]
    fn objects_parsed_and_sorted() {
        let output = "Public Key Object; RSA 2048 bits\n  label:      rsa-key\n  \
                      ID:         01\n  Usage:      encrypt, verify\n\
                      Certificate Object; type = X.509 cert\n  label:      rsa-key\n\
                      Private Key Object; EC\n  label:      ec-key\n  Usage:      sign\n";
        assert_eq!(
            parse_objects(output),
            [
                "Certificate Object `rsa-key`",
                "Private Key Object EC `ec-key` (sign)",
                "Public Key Object RSA `rsa-key` (encrypt, verify)",
            ]
        );
    }
}
