//! Checks with GnuTLS's `p11tool`, which loads the target's module with
//! `--provider` and takes the PIN from `GNUTLS_PIN`.

use std::process::Command;

use crate::common::{keys, USER_PIN, WLD_LABEL};
use crate::harness::{run, Client, Outcome, Report, Target};
use crate::setup::Setup;

const CLIENT: Client = Client::P11Tool;

/// PKCS#11 URI of the `WLD_A` token.
const TOKEN_URI: &str = "pkcs11:token=WLD_A";

fn tool(target: &Target) -> Command {
    let mut command = target.command("p11tool");
    command.arg("--provider").arg(&target.module);
    command
}

/// Returns a `p11tool` command with the PIN in `GNUTLS_PIN`.
fn with_pin(target: &Target) -> Command {
    let mut command = tool(target);
    command.env("GNUTLS_PIN", USER_PIN);
    command
}

/// Returns a `p11tool --login` command with the PIN in `GNUTLS_PIN`.
fn logged_in(target: &Target) -> Command {
    let mut command = with_pin(target);
    command.arg("--login");
    command
}

pub fn run_checks(setup: &Setup, report: &mut Report) {
    report.check(
        CLIENT,
        "`--list-tokens`",
        "The WLD slot is a token of p11wld's own: its manufacturer is p11wld and its \
         model `WLD slot`.",
        &setup.targets,
        list_tokens,
    );
    report.check(
        CLIENT,
        &format!("`--list-all {TOKEN_URI}`"),
        "",
        &setup.targets,
        |target| list_all(tool(target), 4),
    );
    report.check(
        CLIENT,
        &format!("`--login --list-all {TOKEN_URI}`"),
        "",
        &setup.targets,
        |target| list_all(logged_in(target), keys::KEY_SET_OBJECT_COUNT + 2),
    );
    for label in [keys::RSA_LABEL, keys::EC_LABEL] {
        let uri = format!("{TOKEN_URI};object={label};type=private");
        report.check(
            CLIENT,
            &format!("`--login --test-sign {uri}`"),
            "",
            &setup.targets,
            |target| test_sign(with_pin(target), &uri),
        );
    }
}

/// Parses p11tool's listing of tokens or objects: a line `Token N:` or
/// `Object N:` starts each entry, and tab-indented `Name: value` lines
/// follow.
pub fn parse_entries(output: &str, header: &str) -> Vec<Vec<(String, String)>> {
    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    for line in output.lines() {
        if line.starts_with(header) && line.ends_with(':') {
            entries.push(Vec::new());
        } else if let (Some(entry), Some(field)) = (entries.last_mut(), line.strip_prefix('\t')) {
            if let Some((name, value)) = field.split_once(':') {
                entry.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    entries
}

pub fn field<'a>(entry: &'a [(String, String)], name: &str) -> &'a str {
    entry
        .iter()
        .find(|(field, _)| field == name)
        .map_or("(missing)", |(_, value)| value.as_str())
}

fn list_tokens(target: &Target) -> Outcome {
    let result = run(tool(target).arg("--list-tokens"));
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    let tokens = parse_entries(&result.stdout, "Token ");
    let Some(token) = tokens.iter().find(|t| field(t, "Label") == WLD_LABEL) else {
        return Outcome::fail(format!("no token labelled {WLD_LABEL} listed"));
    };
    Outcome::pass(format!(
        "token `{WLD_LABEL}` by {}, model {}, type {}, flags: {}",
        field(token, "Manufacturer"),
        field(token, "Model"),
        field(token, "Type"),
        field(token, "Flags")
    ))
}

/// Lists the objects of the `WLD_A` token with `command` and passes when
/// there are `expected` of them.
fn list_all(mut command: Command, expected: usize) -> Outcome {
    let result = run(command.arg("--list-all").arg(TOKEN_URI));
    if !result.success() {
        return Outcome::failed_run(&result);
    }
    let mut objects: Vec<String> = parse_entries(&result.stdout, "Object ")
        .iter()
        .map(|object| {
            let mut line = format!(
                "{} `{}` (ID {}",
                field(object, "Type"),
                field(object, "Label"),
                field(object, "ID")
            );
            // p11tool 3.7 prints no Flags line for certificates.
            if object.iter().any(|(name, _)| name == "Flags") {
                line.push_str(&format!(", flags: {}", field(object, "Flags")));
            }
            line.push(')');
            line
        })
        .collect();
    objects.sort();
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

/// Runs `command`, a `p11tool` command with `GNUTLS_PIN` set, with
/// `--login --test-sign uri`.
pub fn test_sign(mut command: Command, uri: &str) -> Outcome {
    let result = run(command.arg("--login").arg("--test-sign").arg(uri));
    let output = result.output();
    // p11tool 3.7 prints one "<step>... ok" line per step.
    let steps: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|line| line.contains("..."))
        .collect();
    let all_ok = !steps.is_empty() && steps.iter().all(|step| step.ends_with("ok"));
    let verified = steps.contains(&"Verifying against public key in the token... ok");
    if result.success() && all_ok && verified {
        Outcome::pass(steps.join("; "))
    } else {
        Outcome::failed_run(&result)
    }
}
