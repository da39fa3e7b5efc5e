//! Renders the conformance page (`CONFORMANCE.md`) from the check results.

use std::fmt::Write;
use std::process::Command;

use crate::harness::{Client, Report, Row, TargetKind};

/// Environment variable that makes the test write the page instead of
/// comparing it with the committed one.
pub const UPDATE_ENV: &str = "P11WLD_UPDATE_CONFORMANCE";

/// The command that regenerates the page.
pub const UPDATE_COMMAND: &str = "P11WLD_UPDATE_CONFORMANCE=1 cargo test --test clients";

/// Debian packages whose versions the page records, with what each
/// provides.
const PACKAGES: [(&str, &str); 7] = [
    ("opensc", "`pkcs11-tool`"),
    ("gnutls-bin", "`p11tool`"),
    ("openssl", "`openssl`"),
    (
        "libengine-pkcs11-openssl",
        "libp11's `pkcs11` engine for OpenSSL",
    ),
    (
        "openjdk-17-jdk-headless",
        "`java`, `javac`, `keytool` and SunPKCS11",
    ),
    (
        "p11-kit",
        "`p11-kit`, `p11-kit server`, `p11-kit-client.so` (in p11-kit-modules)",
    ),
    ("softhsm2", "SoftHSM2, the token behind every target"),
];

/// Returns the version of a Debian package as major.minor of its upstream
/// version, or "not installed". Point releases and Debian revisions are
/// left out, so that security updates do not change the page.
pub fn package_version(package: &str) -> String {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output();
    let version = match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        _ => return "not installed".to_owned(),
    };
    major_minor(&version)
}

/// Returns major.minor of a Debian version such as `1:3.0.19-1~deb12u2`.
fn major_minor(version: &str) -> String {
    let without_epoch = version.split_once(':').map_or(version, |(_, rest)| rest);
    let upstream = without_epoch.split(['-', '+', '~']).next().unwrap_or("");
    let parts: Vec<&str> = upstream.split('.').take(2).collect();
    parts.join(".")
}

pub fn render(report: &Report) -> String {
    let mut page = String::new();
    write_header(&mut page);
    write_versions(&mut page);
    let rows = report.sorted_rows();
    write_known_gaps(&mut page, &rows);
    page.push_str("## Results\n");
    for client in Client::ALL {
        let client_rows: Vec<&Row> = rows
            .iter()
            .copied()
            .filter(|row| row.client == client)
            .collect();
        if !client_rows.is_empty() {
            write_client(&mut page, client, &client_rows);
        }
    }
    page
}

fn write_header(page: &mut String) {
    let _ = write!(
        page,
        "# PKCS#11 client conformance\n\
         \n\
         <!-- Written by the test conformance_page in tests/clients/. Edit the tests, not \
         this file. -->\n\
         \n\
         This page shows what real PKCS#11 clients do with a p11wld WLD slot, next to the \
         same clients on the same SoftHSM2 tokens without p11wld. The test \
         `conformance_page` in `tests/clients/` runs every check and writes the page. \
         Regenerate it with:\n\
         \n\
         ```sh\n\
         {UPDATE_COMMAND}\n\
         ```\n\
         \n\
         Without `{UPDATE_ENV}`, `cargo test --test clients` compares the page it produces \
         with this file and fails when they differ, so this file always shows what the \
         clients do with the current code.\n\
         \n\
         ## Targets\n\
         \n\
         Each check runs one client program against four targets. Every target reaches a \
         token labelled `WLD_A` that holds the same objects: an RSA-2048 key pair \
         (`rsa-key`, CKA_ID 01), an EC P-256 key pair (`ec-key`, CKA_ID 02), an AES-256 key \
         (`aes-key`, CKA_ID 03), and a self-signed X.509 certificate for each key pair, with \
         the label and CKA_ID of its key. The keys are the test keys in `tests/data/`.\n\
         \n\
         | Target | PKCS#11 module | Tokens behind it |\n\
         | --- | --- | --- |\n\
         | {} | SoftHSM2's `libsofthsm2.so` | the token of the first HSM below |\n\
         | {} | `libp11wld.so` | one SoftHSM2 directory with three `WLD_A` tokens, loaded by \
         p11wld in the client's process |\n\
         | {} | p11-kit's `p11-kit-client.so` | the first HSM's token, served by its own \
         `p11-kit server` process |\n\
         | {} | `libp11wld.so` | three HSMs, each a `p11-kit server` process serving one \
         SoftHSM2 token, reached through three `p11-kit-client.so` instances |\n\
         \n\
         The second and fourth targets are WLD slots of three members, with p11wld's \
         `least-sessions` policy and only the label `WLD_A` exposed. The first and third \
         reach the same tokens without p11wld: the first as an application reaches its \
         vendor's library, the third as p11wld reaches each member in the fourth. So a \
         difference between the third and fourth columns comes from p11wld, and a \
         difference between the first and third comes from p11-kit's RPC, which the test \
         HSMs use to run as separate processes.\n\
         \n\
         The test fails when a check\n\
         \n\
         - passes on *{}* but fails on *{}*, or passes on *{}* but fails on *{}*;\n\
         - fails on both targets of such a pair, with different errors;\n\
         - gives different outcomes on any two targets without a reason on this page.\n\
         \n\
         A check listed under Known gaps may fail through a WLD slot where it passes \
         without p11wld. The test fails once it passes there, so that the list stays \
         true.\n\
         \n\
         PINs never appear on a command line: `pkcs11-tool --pin env:VAR`, p11tool's \
         `GNUTLS_PIN` variable, the engine's `PIN` in an OpenSSL configuration file, \
         `keytool -storepass:file`, and a Java `CallbackHandler` that reads an environment \
         variable.\n\
         \n",
        TargetKind::Direct.title(),
        TargetKind::WldLocal.title(),
        TargetKind::Member.title(),
        TargetKind::Wld.title(),
        TargetKind::Direct.title(),
        TargetKind::WldLocal.title(),
        TargetKind::Member.title(),
        TargetKind::Wld.title(),
    );
}

fn write_known_gaps(page: &mut String, rows: &[&Row]) {
    page.push_str(
        "## Known gaps\n\n\
         Checks that fail through a WLD slot and pass on the same tokens without p11wld, \
         because of a limit of p11wld that the test accepts until it is fixed:\n\n",
    );
    let gaps: Vec<&&Row> = rows
        .iter()
        .filter(|row| !row.known_gap.is_empty())
        .collect();
    if gaps.is_empty() {
        page.push_str("- None.\n");
    }
    for row in gaps {
        let _ = writeln!(
            page,
            "- {}, {}: {}",
            row.client.title(),
            row.check,
            row.known_gap
        );
    }
    page.push('\n');
}

fn write_versions(page: &mut String) {
    page.push_str(
        "## Versions\n\
         \n\
         Debian 12 packages, major and minor version.\n\
         \n\
         | Package | Version | Provides |\n\
         | --- | --- | --- |\n",
    );
    for (package, provides) in PACKAGES {
        let _ = writeln!(
            page,
            "| {package} | {} | {provides} |",
            package_version(package)
        );
    }
    page.push('\n');
}

fn write_client(page: &mut String, client: Client, rows: &[&Row]) {
    let _ = writeln!(page, "\n### {}\n", client.title());
    page.push_str("| Check |");
    for kind in TargetKind::ALL {
        let _ = write!(page, " {} |", kind.title());
    }
    page.push_str("\n| --- |");
    for _ in TargetKind::ALL {
        page.push_str(" --- |");
    }
    page.push('\n');
    for row in rows {
        let _ = write!(page, "| {} |", row.check);
        for kind in TargetKind::ALL {
            let known_gap = !row.known_gap.is_empty()
                && kind
                    .reference()
                    .is_some_and(|reference| row.outcome(reference).passed);
            let cell = match (row.outcome(kind).passed, known_gap) {
                (true, _) => "pass",
                (false, true) => "**fail** (known gap)",
                (false, false) => "**fail**",
            };
            let _ = write!(page, " {cell} |");
        }
        page.push('\n');
    }

    page.push_str("\nWhat differs and why:\n\n");
    let mut explained = false;
    for row in rows {
        if row.why_differs.is_empty() && !row.differs() {
            continue;
        }
        explained = true;
        let reason = if row.why_differs.is_empty() {
            "(no reason given: the test fails)"
        } else {
            row.why_differs.as_str()
        };
        let _ = writeln!(page, "- {}: {reason}", row.check);
    }
    if !explained {
        page.push_str("- Nothing: every check gives the same outcome on every target.\n");
    }

    page.push_str("\nWhat each target showed:\n\n");
    for row in rows {
        write_details(page, row);
    }
}

fn write_details(page: &mut String, row: &Row) {
    let first = row.outcome(TargetKind::Direct);
    let same = row.outcomes.iter().all(|(_, outcome)| outcome == first);
    if same {
        let _ = writeln!(
            page,
            "- {}: every target: {}",
            row.check,
            describe(first.passed, &first.detail)
        );
        return;
    }
    let _ = writeln!(page, "- {}:", row.check);
    for (kind, outcome) in &row.outcomes {
        let _ = writeln!(
            page,
            "  - {}: {}",
            kind.title(),
            describe(outcome.passed, &outcome.detail)
        );
    }
}

fn describe(passed: bool, detail: &str) -> String {
    let result = if passed { "pass" } else { "fail" };
    if detail.is_empty() {
        result.to_owned()
    } else {
        format!("{result}, {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_minor_of_debian_versions() {
        assert_eq!(major_minor("3.0.19-1~deb12u2"), "3.0");
        assert_eq!(major_minor("17.0.15+6-1~deb12u1"), "17.0");
        assert_eq!(major_minor("1:2.6.1-2.1"), "2.6");
        assert_eq!(major_minor("0.4.12-0.1"), "0.4");
    }
}
