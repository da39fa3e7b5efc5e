//! Targets, command runs and the table of check results that the client
//! tests fill in.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Maximum time one client command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Environment variables that select a PKCS#11 module's configuration or a
/// client's PIN. They are removed from every client's environment before the
/// target's own variables are set, so that nothing leaks in from the test
/// process.
const ISOLATED_VARIABLES: [&str; 10] = [
    "P11WLD_CONFIG",
    "SOFTHSM2_CONF",
    "P11_KIT_SERVER_ADDRESS",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "GNUTLS_PIN",
    "GNUTLS_SO_PIN",
    "PKCS11SPY",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
];

/// One way of reaching the `WLD_A` token: a PKCS#11 module and the
/// environment it needs. Each target is one column of the conformance page.
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: TargetKind,
    pub module: PathBuf,
    /// Environment variables the module reads (configuration files, server
    /// addresses).
    pub env: Vec<(String, String)>,
}

/// The four targets, in column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKind {
    /// SoftHSM2's module on the token of the first HSM.
    Direct,
    /// p11wld over one SoftHSM2 instance that contains three `WLD_A` tokens,
    /// loaded in the client's process.
    WldLocal,
    /// `p11-kit-client.so` connected to the first HSM's `p11-kit server`:
    /// one member as p11wld reaches it in [`TargetKind::Wld`].
    Member,
    /// p11wld over three HSMs, each a `p11-kit server` process.
    Wld,
}

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [
        TargetKind::Direct,
        TargetKind::WldLocal,
        TargetKind::Member,
        TargetKind::Wld,
    ];

    /// Returns the short name used in file names and logs.
    pub fn key(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::WldLocal => "wld-local",
            TargetKind::Member => "member",
            TargetKind::Wld => "wld",
        }
    }

    /// Returns the column title on the conformance page.
    pub fn title(self) -> &'static str {
        match self {
            TargetKind::Direct => "SoftHSM2 directly",
            TargetKind::WldLocal => "WLD slot over SoftHSM2",
            TargetKind::Member => "one member through p11-kit",
            TargetKind::Wld => "WLD slot over three p11-kit HSMs",
        }
    }

    /// Returns the target whose result this one must match: the same tokens
    /// reached without p11wld. `None` for the references themselves.
    pub fn reference(self) -> Option<TargetKind> {
        match self {
            TargetKind::WldLocal => Some(TargetKind::Direct),
            TargetKind::Wld => Some(TargetKind::Member),
            TargetKind::Direct | TargetKind::Member => None,
        }
    }

    pub fn is_wld(self) -> bool {
        self.reference().is_some()
    }
}

impl Target {
    /// Returns a command for `program` with this target's environment and
    /// none of the variables in [`ISOLATED_VARIABLES`] from the test
    /// process.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        for name in ISOLATED_VARIABLES {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        command
    }
}

/// What a client command did.
#[derive(Debug)]
pub struct Run {
    /// The command line, for logs and messages.
    pub display: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success()) && !self.timed_out
    }

    /// Returns standard output followed by standard error.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Describes how the command ended: its exit code, the signal that
    /// killed it, or the timeout.
    pub fn ending(&self) -> String {
        if self.timed_out {
            return format!("timed out after {} s", COMMAND_TIMEOUT.as_secs());
        }
        match self.status {
            Some(status) => match status.code() {
                Some(code) => format!("exit code {code}"),
                None => format!("ended by {status}"),
            },
            None => "did not start".to_owned(),
        }
    }
}

/// Runs `command` with standard input closed, waits at most
/// [`COMMAND_TIMEOUT`], and logs the command and its output to standard
/// error, which the isolated test runner shows when the test fails.
pub fn run(command: &mut Command) -> Run {
    let display = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("clients: failed to start {display}: {error}");
            return Run {
                display,
                status: None,
                stdout: String::new(),
                stderr: format!("failed to start: {error}\n"),
                timed_out: false,
            };
        }
    };
    let stdout = read_in_thread(child.stdout.take().expect("stdout is piped"));
    let stderr = read_in_thread(child.stderr.take().expect("stderr is piped"));

    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                // The child is this process's own, so killing it by its
                // handle cannot hit another process.
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(error) => {
                eprintln!("clients: failed to wait for {display}: {error}");
                break None;
            }
        }
    };
    let run = Run {
        display,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        timed_out,
    };
    eprintln!(
        "clients: {} ({})\n--- stdout\n{}--- stderr\n{}---",
        run.display,
        run.ending(),
        run.stdout,
        run.stderr
    );
    run
}

fn read_in_thread(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Result of one check on one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub passed: bool,
    /// What the client showed, in a short form that is the same on every
    /// run: no handles, serial numbers, timestamps or key bytes. A failure
    /// lists its errors separated by "; ".
    pub detail: String,
}

impl Outcome {
    pub fn pass(detail: impl Into<String>) -> Outcome {
        Outcome {
            passed: true,
            detail: detail.into(),
        }
    }

    pub fn fail(detail: impl Into<String>) -> Outcome {
        Outcome {
            passed: false,
            detail: detail.into(),
        }
    }

    /// Returns the errors of a failed outcome: its detail split at "; ".
    pub fn errors(&self) -> Vec<&str> {
        self.detail.split("; ").collect()
    }

    /// Whether every error of this failed outcome is also an error of
    /// `reference`, so that it fails in no way the reference does not.
    pub fn fails_within(&self, reference: &Outcome) -> bool {
        let allowed = reference.errors();
        self.errors().iter().all(|error| allowed.contains(error))
    }

    /// Returns a failed outcome for a command that did not succeed, with the
    /// PKCS#11 error in its output or else how it ended.
    pub fn failed_run(run: &Run) -> Outcome {
        let reason = pkcs11_error(&run.output()).unwrap_or_else(|| {
            let line = first_error_line(&run.output());
            match line {
                Some(line) => format!("{}: {line}", run.ending()),
                None => run.ending(),
            }
        });
        Outcome::fail(reason)
    }
}

/// Returns the first PKCS#11 function and return code named on one line of
/// `output`, as "C_SignInit: CKR_MECHANISM_INVALID".
pub fn pkcs11_error(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let code = word_starting_with(line, "CKR_")?;
        match word_starting_with(line, "C_") {
            Some(function) => Some(format!("{function}: {code}")),
            None => Some(code.to_owned()),
        }
    })
}

/// Returns the first word of `line` that starts with `prefix`, up to the
/// first character that cannot be part of a C identifier.
fn word_starting_with<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let start = line.find(prefix)?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Returns the first line of `output` that reads like an error message,
/// trimmed and without file paths of the test run.
fn first_error_line(output: &str) -> Option<String> {
    output
        .lines()
        .map(str::trim)
        .find(|line| {
            let lower = line.to_ascii_lowercase();
            lower.contains("error") || lower.contains("fail") || lower.contains("exception")
        })
        .map(strip_temp_paths)
}

/// Replaces paths under the temporary directory by `<tmp>`, so that a
/// detail is the same on every run.
pub fn strip_temp_paths(text: &str) -> String {
    let temp = std::env::temp_dir().display().to_string();
    let mut result = String::new();
    for word in text.split(' ') {
        if !result.is_empty() {
            result.push(' ');
        }
        if word.contains(&temp) || word.contains("/tmp/") {
            result.push_str("<tmp>");
        } else {
            result.push_str(word);
        }
    }
    result
}

/// The program that the checks of one row run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Client {
    Pkcs11Tool,
    P11Tool,
    OpensslEngine,
    Java,
    P11Kit,
}

impl Client {
    pub const ALL: [Client; 5] = [
        Client::Pkcs11Tool,
        Client::P11Tool,
        Client::OpensslEngine,
        Client::Java,
        Client::P11Kit,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Client::Pkcs11Tool => "OpenSC pkcs11-tool",
            Client::P11Tool => "GnuTLS p11tool",
            Client::OpensslEngine => "OpenSSL with the libp11 engine",
            Client::Java => "Java SunPKCS11",
            Client::P11Kit => "p11-kit module file",
        }
    }
}

/// One row of the conformance page: a check and its outcome on every
/// target.
#[derive(Clone, Debug)]
pub struct Row {
    pub client: Client,
    /// The check as the page shows it (Markdown).
    pub check: String,
    /// Why the outcomes differ between targets, when they do. Empty when
    /// they are expected to be the same everywhere.
    pub why_differs: String,
    /// A gap of p11wld that makes this check fail through a WLD slot where
    /// it passes without p11wld, with its cause. Empty for other checks.
    /// The test accepts that failure, and fails once the gap is gone, so
    /// that the mark is removed.
    pub known_gap: String,
    /// Outcomes in [`TargetKind::ALL`] order.
    pub outcomes: Vec<(TargetKind, Outcome)>,
}

impl Row {
    pub fn outcome(&self, kind: TargetKind) -> &Outcome {
        &self
            .outcomes
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every row has an outcome for every target")
            .1
    }

    /// Whether any two targets' outcomes differ in result or detail.
    pub fn differs(&self) -> bool {
        let distinct: BTreeSet<(bool, &str)> = self
            .outcomes
            .iter()
            .map(|(_, outcome)| (outcome.passed, outcome.detail.as_str()))
            .collect();
        distinct.len() > 1
    }

    /// Whether a WLD slot fails this check where its reference target
    /// passes.
    pub fn wld_fails_alone(&self) -> bool {
        TargetKind::ALL.into_iter().any(|kind| {
            kind.reference().is_some_and(|reference| {
                self.outcome(reference).passed && !self.outcome(kind).passed
            })
        })
    }

    /// Returns the ways this row breaks the rules that the test enforces.
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        if !self.known_gap.is_empty() && !self.wld_fails_alone() {
            violations.push(format!(
                "{} {}: is marked as a known gap of p11wld, but no WLD slot fails it where \
                 its reference passes any more. Remove the mark in tests/clients",
                self.client.title(),
                self.check
            ));
        }
        for kind in TargetKind::ALL {
            let Some(reference) = kind.reference() else {
                continue;
            };
            let wld = self.outcome(kind);
            let expected = self.outcome(reference);
            if expected.passed && !wld.passed && !self.known_gap.is_empty() {
                // Accepted: the row names the gap.
            } else if expected.passed && !wld.passed {
                violations.push(format!(
                    "{} {}: passes on {} but fails on {}: {}",
                    self.client.title(),
                    self.check,
                    reference.title(),
                    kind.title(),
                    wld.detail
                ));
            } else if !expected.passed && !wld.passed && !wld.fails_within(expected) {
                violations.push(format!(
                    "{} {}: fails with other errors on {} ({}) than on {} ({})",
                    self.client.title(),
                    self.check,
                    kind.title(),
                    wld.detail,
                    reference.title(),
                    expected.detail
                ));
            }
        }
        if self.differs() && self.why_differs.is_empty() {
            violations.push(format!(
                "{} {}: the targets' outcomes differ and the check gives no reason",
                self.client.title(),
                self.check
            ));
        }
        violations
    }
}

/// The rows of the conformance page, in the order the checks ran.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Runs `check` on every target and records the outcomes as one row.
    pub fn check(
        &mut self,
        client: Client,
        check: &str,
        why_differs: &str,
        targets: &[Target],
        mut run_check: impl FnMut(&Target) -> Outcome,
    ) {
        let mut outcomes = Vec::with_capacity(targets.len());
        for target in targets {
            eprintln!(
                "clients: {} {check} on {}",
                client.title(),
                target.kind.key()
            );
            outcomes.push((target.kind, run_check(target)));
        }
        outcomes.sort_by_key(|(kind, _)| *kind);
        self.rows.push(Row {
            client,
            check: check.to_owned(),
            why_differs: why_differs.to_owned(),
            known_gap: String::new(),
            outcomes,
        });
    }

    /// Marks the check recorded last as one that p11wld is known to fail,
    /// for the reason `gap`.
    #[allow(
        dead_code,
        reason = "no check is a known gap now; the page and the test keep supporting them"
    )]
    pub fn mark_known_gap(&mut self, gap: &str) {
        let row = self
            .rows
            .last_mut()
            .expect("a known gap follows the check it belongs to");
        row.known_gap = gap.to_owned();
    }

    /// Returns the rows sorted by client, keeping the check order within
    /// each client.
    pub fn sorted_rows(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|row| row.client);
        rows
    }

    pub fn violations(&self) -> Vec<String> {
        self.sorted_rows()
            .into_iter()
            .flat_map(Row::violations)
            .collect()
    }
}

/// Writes `contents` to `path`, panicking with the path on failure.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs11_error_names_function_and_code() {
        let output = "Using slot 0\nerror: PKCS11 function C_SignInit failed: rv = \
                      CKR_MECHANISM_INVALID (0x70)\nAborting.\n";
        assert_eq!(
            pkcs11_error(output).as_deref(),
            Some("C_SignInit: CKR_MECHANISM_INVALID")
        );
    }

    #[test]
    fn pkcs11_error_without_function() {
        assert_eq!(
            pkcs11_error("rv = CKR_PIN_INCORRECT\n").as_deref(),
            Some("CKR_PIN_INCORRECT")
        );
        assert_eq!(pkcs11_error("all fine\n"), None);
    }

    fn row(outcomes: [Outcome; 4], why_differs: &str) -> Row {
        Row {
            client: Client::Pkcs11Tool,
            check: "check".to_owned(),
            why_differs: why_differs.to_owned(),
            known_gap: String::new(),
            outcomes: TargetKind::ALL.into_iter().zip(outcomes).collect(),
        }
    }

    #[test]
    fn known_gap_accepts_wld_failure() {
        let mut row = row(
            [
                Outcome::pass(""),
                Outcome::fail("CKR_KEY_HANDLE_INVALID"),
                Outcome::pass(""),
                Outcome::fail("CKR_KEY_HANDLE_INVALID"),
            ],
            "reason",
        );
        row.known_gap = "session objects stay on one member".to_owned();
        assert_eq!(row.violations(), Vec::<String>::new());
    }

    #[test]
    fn closed_known_gap_violates() {
        let mut row = row(
            [
                Outcome::pass(""),
                Outcome::pass(""),
                Outcome::pass(""),
                Outcome::pass(""),
            ],
            "",
        );
        row.known_gap = "session objects stay on one member".to_owned();
        let violations = row.violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("Remove the mark"));
    }

    #[test]
    fn wld_failure_after_reference_pass_violates() {
        let row = row(
            [
                Outcome::pass(""),
                Outcome::pass(""),
                Outcome::pass(""),
                Outcome::fail("C_Sign: CKR_GENERAL_ERROR"),
            ],
            "reason",
        );
        let violations = row.violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("passes on one member through p11-kit"));
    }

    #[test]
    fn shared_transport_failure_allowed() {
        let failure = Outcome::fail("C_SignInit: CKR_MECHANISM_INVALID");
        let row = row(
            [
                Outcome::pass(""),
                Outcome::pass(""),
                failure.clone(),
                failure,
            ],
            "the transport lacks the mechanism",
        );
        assert_eq!(row.violations(), Vec::<String>::new());
    }

    #[test]
    fn different_failure_violates() {
        let row = row(
            [
                Outcome::fail("C_DecryptInit: CKR_ARGUMENTS_BAD"),
                Outcome::fail("C_GenerateRandom: CKR_ARGUMENTS_BAD"),
                Outcome::pass(""),
                Outcome::pass(""),
            ],
            "reason",
        );
        assert_eq!(row.violations().len(), 1);
    }

    #[test]
    fn fewer_errors_than_reference_allowed() {
        let row = row(
            [
                Outcome::pass(""),
                Outcome::pass(""),
                Outcome::fail(
                    "C_GenerateRandom: CKR_ARGUMENTS_BAD; C_DecryptInit: CKR_ARGUMENTS_BAD",
                ),
                Outcome::fail("C_DecryptInit: CKR_ARGUMENTS_BAD"),
            ],
            "reason",
        );
        assert_eq!(row.violations(), Vec::<String>::new());
    }

    #[test]
    fn unexplained_difference_violates() {
        let row = row(
            [
                Outcome::pass("a"),
                Outcome::pass("b"),
                Outcome::pass("a"),
                Outcome::pass("a"),
            ],
            "",
        );
        assert_eq!(row.violations().len(), 1);
    }

    #[test]
    fn temp_paths_replaced() {
        let text = format!(
            "cannot open {}/x/key.pem now",
            std::env::temp_dir().display()
        );
        assert_eq!(strip_temp_paths(&text), "cannot open <tmp> now");
    }
}
