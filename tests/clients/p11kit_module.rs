//! Checks that p11-kit-aware programs load p11wld through the module file
//! `p11-kit/p11wld.module`, compared with the module files that register
//! SoftHSM2 and one member with p11-kit.
//!
//! Each target gets a home directory whose `~/.config/pkcs11/pkcs11.conf`
//! sets `user-config: only`, so p11-kit loads only the module files in
//! `~/.config/pkcs11/modules/` and none of the system's. p11-kit 0.24 skips
//! the user configuration in processes running as root, so as root the
//! programs run in a user namespace (`unshare --user`) whose user id is not
//! 0. The namespace maps that id to root, so the programs still reach the
//! test's files and sockets.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{keys, USER_PIN, WLD_LABEL};
use crate::harness::{run, write_file, Client, Outcome, Report, Target, TargetKind};
use crate::p11tool::{field, parse_entries, test_sign};
use crate::pkcs11_tool::parse_slots;
use crate::setup::Setup;

const CLIENT: Client = Client::P11Kit;

/// The module file under test.
const P11WLD_MODULE_FILE: &str = include_str!("../../p11-kit/p11wld.module");

/// Debian's module file of SoftHSM2, from the softhsm2 package.
const SOFTHSM_MODULE_FILE: &str = "/usr/share/p11-kit/modules/softhsm2.module";

/// p11-kit's proxy module, which offers the slots of every registered
/// module as one PKCS#11 module. The p11-kit-modules package installs it.
const PROXY_MODULE: &str = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so";

/// User id that the programs have inside the user namespace when the test
/// runs as root: `nobody`.
const NAMESPACE_ID: u32 = 65534;

pub fn run_checks(setup: &Setup, report: &mut Report) {
    let homes: Vec<(TargetKind, PathBuf)> = setup
        .targets
        .iter()
        .map(|target| (target.kind, write_home(setup, target)))
        .collect();
    let home = |target: &Target| {
        homes
            .iter()
            .find(|(kind, _)| *kind == target.kind)
            .map(|(_, home)| home.clone())
            .expect("every target has a home directory")
    };
    let why_differs = "Each target registers its own module file: Debian's \
                       `softhsm2.module` for SoftHSM2, a file with p11-kit's \
                       `remote: unix:path=...` option for the member, and \
                       `p11-kit/p11wld.module` for the WLD slots, with the path of the \
                       built `libp11wld.so`. The WLD slot is a token of p11wld's own: its \
                       manufacturer is p11wld and its model `WLD slot`.";

    report.check(
        CLIENT,
        "`p11-kit list-modules`",
        why_differs,
        &setup.targets,
        |target| list_modules(target, &home(target)),
    );
    report.check(
        CLIENT,
        "`p11tool --list-tokens` without `--provider`",
        why_differs,
        &setup.targets,
        |target| list_tokens(target, &home(target)),
    );
    report.check(
        CLIENT,
        "`pkcs11-tool --module p11-kit-proxy.so --list-slots`",
        why_differs,
        &setup.targets,
        |target| list_proxy_slots(target, &home(target)),
    );
    let uri = format!(
        "pkcs11:token={WLD_LABEL};object={};type=private",
        keys::RSA_LABEL
    );
    report.check(
        CLIENT,
        &format!("`p11tool --login --test-sign {uri}` without `--provider`"),
        "",
        &setup.targets,
        |target| {
            let mut command = p11kit_aware(target, &home(target), "p11tool");
            command.env("GNUTLS_PIN", USER_PIN);
            test_sign(command, &uri)
        },
    );
}

/// Returns the name and text of the module file that registers `target`
/// with p11-kit.
fn module_file(setup: &Setup, target: &Target) -> (&'static str, String) {
    match target.kind {
        TargetKind::Direct => {
            let text = std::fs::read_to_string(SOFTHSM_MODULE_FILE).unwrap_or_else(|e| {
                panic!("failed to read {SOFTHSM_MODULE_FILE}: {e}; install softhsm2")
            });
            ("softhsm2", text)
        }
        TargetKind::Member => {
            let address = setup.hsms.hsms[0].address();
            ("softhsm2-remote", format!("remote: {address}\n"))
        }
        TargetKind::Wld | TargetKind::WldLocal => (
            "p11wld",
            with_module_path(P11WLD_MODULE_FILE, &target.module),
        ),
    }
}

/// Replaces the `module:` line of a module file with `path`, because the
/// file names the library relative to p11-kit's module directory, where
/// the test build is not installed.
fn with_module_path(text: &str, path: &Path) -> String {
    let mut replaced = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("module:") {
                replaced = true;
                format!("module: {}", path.display())
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(replaced, "p11-kit/p11wld.module has no `module:` line");
    lines.join("\n") + "\n"
}

/// Writes a home directory for `target` with a p11-kit user configuration
/// that loads only `target`'s module file, and returns its path.
fn write_home(setup: &Setup, target: &Target) -> PathBuf {
    let home = setup.path(target, "p11kit-home");
    let config = home.join(".config").join("pkcs11");
    let modules = config.join("modules");
    std::fs::create_dir_all(&modules)
        .unwrap_or_else(|e| panic!("failed to create {}: {e}", modules.display()));
    write_file(&config.join("pkcs11.conf"), "user-config: only\n");
    let (name, text) = module_file(setup, target);
    write_file(&modules.join(format!("{name}.module")), text);
    home
}

/// Returns a command for `program` with `home` as its home directory, in a
/// user namespace when this process runs as root.
fn p11kit_aware(target: &Target, home: &Path, program: &str) -> Command {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut command = target.command("unshare");
        command
            .arg("--user")
            .arg(format!("--map-user={NAMESPACE_ID}"))
            .arg(format!("--map-group={NAMESPACE_ID}"))
            .arg(program);
        command
    } else {
        target.command(program)
    };
    command.env("HOME", home);
    command
}

/// Parses `p11-kit list-modules` output into the modules' names and the
/// `(token label, manufacturer)` of each token.
fn parse_modules(output: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut modules: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in output.lines() {
        let indent = line.len() - line.trim_start().len();
        let Some((name, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match (indent, name) {
            (0, _) => modules.push((name.to_owned(), Vec::new())),
            (4, "token") => {
                if let Some((_, tokens)) = modules.last_mut() {
                    tokens.push((value, String::new()));
                }
            }
            (8, "manufacturer") => {
                if let Some(token) = modules.last_mut().and_then(|(_, t)| t.last_mut()) {
                    token.1 = value;
                }
            }
            _ => {}
        }
    }
    modules
}

fn list_modules(target: &Target, home: &Path) -> Outcome {
    let result = run(p11kit_aware(target, home, "p11-kit").arg("list-modules"));
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    let modules = parse_modules(&result.stdout);
    let found = modules.iter().find_map(|(name, tokens)| {
        tokens
            .iter()
            .find(|(label, _)| label == WLD_LABEL)
            .map(|(_, manufacturer)| (name, manufacturer))
    });
    match found {
        Some((name, manufacturer)) => Outcome::pass(format!(
            "module `{name}` with token `{WLD_LABEL}` by {manufacturer}"
        )),
        None => Outcome::fail(format!("no module lists a token labelled {WLD_LABEL}")),
    }
}

fn list_tokens(target: &Target, home: &Path) -> Outcome {
    let result = run(p11kit_aware(target, home, "p11tool").arg("--list-tokens"));
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    let tokens = parse_entries(&result.stdout, "Token ");
    match tokens.iter().find(|t| field(t, "Label") == WLD_LABEL) {
        Some(token) => Outcome::pass(format!(
            "token `{WLD_LABEL}` by {}, model {}",
            field(token, "Manufacturer"),
            field(token, "Model")
        )),
        None => Outcome::fail(format!("no token labelled {WLD_LABEL} listed")),
    }
}

fn list_proxy_slots(target: &Target, home: &Path) -> Outcome {
    assert!(
        Path::new(PROXY_MODULE).exists(),
        "{PROXY_MODULE} not found; install p11-kit-modules"
    );
    let result = run(p11kit_aware(target, home, "pkcs11-tool").args([
        "--module",
        PROXY_MODULE,
        "--list-slots",
    ]));
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    let slots = parse_slots(&result.stdout);
    match slots
        .iter()
        .find(|slot| slot.field("token label") == Some(WLD_LABEL))
    {
        Some(slot) => Outcome::pass(format!(
            "token `{WLD_LABEL}` by {}",
            slot.field("token manufacturer").unwrap_or("(missing)")
        )),
        None => Outcome::fail(format!("no token labelled {WLD_LABEL} listed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_line_replaced() {
        let text = with_module_path(P11WLD_MODULE_FILE, Path::new("/build/libp11wld.so"));
        assert!(text.contains("\nmodule: /build/libp11wld.so\n"), "{text}");
        assert!(!text.contains("module: libp11wld.so"), "{text}");
        assert!(text.contains("critical: no"), "{text}");
    }

    #[test]
    fn modules_parsed_with_tokens() {
        let output = "p11wld: /x/libp11wld.so\n    library-description: p11wld WLD slots\n    \
                      token: WLD_A\n        manufacturer: p11wld\n        model: WLD slot\n\
                      opensc-pkcs11: opensc-pkcs11.so\n";
        let modules = parse_modules(output);
        assert_eq!(modules.len(), 2);
        assert_eq!(modules[0].0, "p11wld");
        assert_eq!(modules[0].1, [("WLD_A".to_owned(), "p11wld".to_owned())]);
        assert!(modules[1].1.is_empty());
    }
}
