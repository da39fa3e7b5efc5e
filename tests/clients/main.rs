//! Real PKCS#11 clients through a p11wld WLD slot, compared with the same
//! clients on SoftHSM2 without p11wld: OpenSC `pkcs11-tool`, GnuTLS
//! `p11tool`, OpenSSL with libp11's engine, Java's SunPKCS11 provider, and
//! p11-kit loading p11wld through its module file.
//!
//! The test `conformance_page` runs every check on four targets (see
//! `setup.rs` and `harness::TargetKind`), fails when p11wld does worse than
//! the same tokens without it, and renders `CONFORMANCE.md`. It compares
//! that page with the committed one, or writes it when
//! `P11WLD_UPDATE_CONFORMANCE=1` is set.
//!
//! `P11WLD_CLIENTS=pkcs11-tool,java` runs only the named clients (names as
//! in [`client_name`]), for debugging. Such a partial run checks the rules
//! and writes its page to `target/tmp/CONFORMANCE.partial.md`, but neither
//! compares nor writes `CONFORMANCE.md`.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod java;
mod openssl_engine;
mod p11kit_module;
mod p11tool;
mod page;
mod pkcs11_tool;
mod setup;

use std::path::Path;

use harness::{Client, Report};
use setup::Setup;

/// Environment variable that selects the clients to run.
const CLIENTS_ENV: &str = "P11WLD_CLIENTS";

/// Returns the name that `P11WLD_CLIENTS` uses for `client`.
fn client_name(client: Client) -> &'static str {
    match client {
        Client::Pkcs11Tool => "pkcs11-tool",
        Client::P11Tool => "p11tool",
        Client::OpensslEngine => "openssl",
        Client::Java => "java",
        Client::P11Kit => "p11-kit",
    }
}

/// Returns the clients that `P11WLD_CLIENTS` selects, or every client when
/// it is unset or empty.
fn selected_clients() -> Vec<Client> {
    let Some(value) = std::env::var(CLIENTS_ENV).ok().filter(|v| !v.is_empty()) else {
        return Client::ALL.to_vec();
    };
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    for name in &names {
        assert!(
            Client::ALL
                .iter()
                .any(|client| client_name(*client) == *name),
            "{CLIENTS_ENV} names an unknown client {name:?}; known clients: {}",
            Client::ALL.map(client_name).join(", ")
        );
    }
    Client::ALL
        .into_iter()
        .filter(|client| names.contains(&client_name(*client)))
        .collect()
}

/// Compares the rendered page with `CONFORMANCE.md`, or writes it when
/// `P11WLD_UPDATE_CONFORMANCE` is set. Returns a problem to report when the
/// committed page is out of date.
fn check_page(page: &str) -> Option<String> {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("CONFORMANCE.md");
    if std::env::var_os(page::UPDATE_ENV).is_some_and(|v| !v.is_empty()) {
        harness::write_file(&committed, page);
        eprintln!("clients: wrote {}", committed.display());
        return None;
    }
    let current = std::fs::read_to_string(&committed).unwrap_or_default();
    if current == page {
        return None;
    }
    let produced = Path::new(env!("CARGO_TARGET_TMPDIR")).join("CONFORMANCE.md");
    harness::write_file(&produced, page);
    Some(format!(
        "{} does not match what the clients do now. The page this run produced is {}: \
         compare the two with `diff`, and if the change is right, regenerate the page with \
         `{}`",
        committed.display(),
        produced.display(),
        page::UPDATE_COMMAND
    ))
}

isolated! {
    /// Runs every client check on every target, checks the conformance
    /// rules, and checks or writes `CONFORMANCE.md`.
    #[timeout(1200)]
    fn conformance_page() {
        let clients = selected_clients();
        let setup = Setup::new();
        let mut report = Report::default();

        // The key generation checks add token objects to the tokens that
        // the listing checks read, so they run last.
        for client in &clients {
            match client {
                Client::Pkcs11Tool => pkcs11_tool::run_checks(&setup, &mut report),
                Client::P11Tool => p11tool::run_checks(&setup, &mut report),
                Client::OpensslEngine => openssl_engine::run_checks(&setup, &mut report),
                Client::Java => java::run_checks(&setup, &mut report),
                Client::P11Kit => p11kit_module::run_checks(&setup, &mut report),
            }
        }
        if clients.contains(&Client::Pkcs11Tool) {
            pkcs11_tool::run_key_generation(&setup, &mut report);
        }

        let mut problems = report.violations();
        if clients.len() == Client::ALL.len() {
            let page = page::render(&report);
            problems.extend(check_page(&page));
        } else {
            let partial = Path::new(env!("CARGO_TARGET_TMPDIR")).join("CONFORMANCE.partial.md");
            harness::write_file(&partial, page::render(&report));
            eprintln!(
                "clients: {CLIENTS_ENV} selects some clients only, so CONFORMANCE.md is not \
                 checked. The page of this run is {}",
                partial.display()
            );
        }
        assert!(
            problems.is_empty(),
            "{} conformance problems:\n- {}",
            problems.len(),
            problems.join("\n- ")
        );
    }
}
