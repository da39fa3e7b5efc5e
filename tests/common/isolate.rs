//! Process isolation: every `isolated!` test runs in a child process of its
//! own.
//!
//! A PKCS#11 module keeps process-global state (one `C_Initialize` per
//! process, libraries loaded with `dlopen`), and the tests set process-wide
//! environment variables such as `P11WLD_CONFIG` and `SOFTHSM2_CONF`. Two
//! tests must therefore never share a process, and plain `cargo test` runs
//! the tests of one file as threads of one process. `isolated!` turns each
//! function into a `#[test]` that, in the parent, re-runs the test executable
//! with `--exact <test name>` and checks the child's result. The child process
//! runs the body.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::procfs;

/// Environment variable that marks a child process. Its value is the name of
/// the one test that the child runs.
pub const CHILD_ENV: &str = "P11WLD_TEST_CHILD";

/// Environment variable that names the file in which the child registers the
/// process groups it starts (see [`register_process_group`]).
pub const CLEANUP_FILE_ENV: &str = "P11WLD_TEST_CLEANUP_FILE";

/// Time limit of one isolated test unless the test sets `#[timeout(SECS)]`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the parent checks whether the child has exited.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long the parent waits for the child's output pipes to close after the
/// child has exited. A grandchild that inherited the pipes can keep them open.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the parent waits for a process group that it killed to exit.
const GROUP_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Defines integration tests that each run in a child process of their own.
///
/// ```ignore
/// isolated! {
///     /// Documentation of the test.
///     #[ignore = "needs a real HSM"]
///     #[timeout(120)]
///     fn slots_grouped_by_label() {
///         // body, run in the child process
///     }
///
///     fn another_test() {}
/// }
/// ```
///
/// Attributes pass through to the generated `#[test]` function, except
/// `#[timeout(SECS)]`, which replaces [`DEFAULT_TIMEOUT`]. `#[should_panic]`
/// is rejected at compile time: the attribute would apply to the child's run
/// of the test too, where it would turn the panic into a pass, so the parent
/// could never see it. Assert on a `Result` instead.
///
/// Tests inside a nested `mod` need `use crate::isolated;`, because
/// `#[macro_export]` places the macro at the root of the test crate.
#[macro_export]
macro_rules! isolated {
    () => {};

    // Collects the attributes of one test: `[attributes so far] [timeout]`.
    (@collect [$($attrs:tt)*] [$timeout:expr] #[timeout($secs:expr)] $($rest:tt)*) => {
        $crate::isolated!(
            @collect [$($attrs)*] [::std::time::Duration::from_secs($secs)] $($rest)*
        );
    };
    (@collect [$($attrs:tt)*] [$timeout:expr] #[should_panic $($args:tt)*] $($rest:tt)*) => {
        ::std::compile_error!(
            "isolated! does not support #[should_panic]: the child's run would pass, \
             so assert on a Result instead"
        );
    };
    (@collect [$($attrs:tt)*] [$timeout:expr] #[$attr:meta] $($rest:tt)*) => {
        $crate::isolated!(@collect [$($attrs)* #[$attr]] [$timeout] $($rest)*);
    };
    (@collect [$($attrs:tt)*] [$timeout:expr] fn $name:ident() $body:block $($rest:tt)*) => {
        $($attrs)*
        #[test]
        fn $name() {
            let name = $crate::common::isolate::test_name(
                ::std::module_path!(),
                ::std::stringify!($name),
            );
            $crate::common::isolate::run_isolated(&name, $timeout, || $body);
        }

        $crate::isolated!($($rest)*);
    };
    (@collect $($unexpected:tt)*) => {
        ::std::compile_error!(
            "isolated! expects test functions of the form `fn name() { ... }`, each after \
             optional attributes"
        );
    };

    ($($tests:tt)+) => {
        $crate::isolated!(
            @collect [] [$crate::common::isolate::DEFAULT_TIMEOUT] $($tests)+
        );
    };
}

/// Builds the name that libtest gives a test: the module path without the
/// crate name, then the function name, joined by `::`.
///
/// `module_path` is the value of `module_path!()` at the test's definition,
/// which starts with the crate name (the test file's stem).
pub fn test_name(module_path: &str, function: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate_name, modules)) => format!("{modules}::{function}"),
        None => function.to_owned(),
    }
}

/// Returns true in the child process that runs the test named `test_name`.
pub fn is_child(test_name: &str) -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|value| value == test_name)
}

/// Runs `body` in the child process, or starts that child in the parent and
/// panics if the child fails, runs no test or times out.
///
/// This is the function behind `isolated!`.
pub fn run_isolated(test_name: &str, timeout: Duration, body: impl FnOnce()) {
    if is_child(test_name) {
        body();
        return;
    }

    let outcome = match run_child(test_name, timeout) {
        Ok(outcome) => outcome,
        Err(error) => panic!("failed to run the child process for test {test_name}: {error}"),
    };
    if let Err(message) = outcome.check() {
        panic!("{message}");
    }
}

/// Result of one child run of a test.
#[derive(Debug)]
pub struct ChildOutcome {
    pub test_name: String,
    /// Process id of the child, which has exited and been reaped.
    pub pid: u32,
    pub status: ExitStatus,
    /// True when the parent killed the child because the timeout expired.
    pub timed_out: bool,
    pub timeout: Duration,
    pub elapsed: Duration,
    /// Standard output and standard error of the child, interleaved by line
    /// in the order the parent read them.
    pub output: String,
}

impl ChildOutcome {
    /// Checks that the child exited successfully after running exactly the
    /// one test, and returns an error message otherwise.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.test_name;
        if self.timed_out {
            return Err(format!(
                "isolated test {name} timed out after {} s, so its child process {} was killed \
                 (the child's output is printed above)",
                self.timeout.as_secs_f64(),
                self.pid
            ));
        }
        if !self.status.success() {
            return Err(format!(
                "isolated test {name} failed in child process {} with {} \
                 (the child's output is printed above)",
                self.pid, self.status
            ));
        }
        // libtest ends with "test result: ok. 1 passed; 0 failed; ..." when the
        // filter matched exactly one test and that test passed. Earlier
        // summary lines can come from grandchildren that the test started.
        let summary = self
            .output
            .lines()
            .rfind(|line| line.starts_with("test result:"));
        let ran_one_test =
            summary.is_some_and(|line| line.starts_with("test result: ok. 1 passed;"));
        if !ran_one_test {
            return Err(format!(
                "isolated test {name}: the child process ran no test because `--exact {name}` \
                 matched no test in {}. Check the name that test_name() built",
                current_exe_display()
            ));
        }
        Ok(())
    }
}

/// Runs the test named `test_name` of the current test executable in a child
/// process and waits for it, at most for `timeout`.
///
/// The child's output is copied line by line to this process's standard
/// output and standard error (which libtest captures unless `--nocapture` is
/// given) and kept in [`ChildOutcome::output`]. On timeout the child is killed
/// with SIGKILL. Afterwards every process group that the child registered
/// with [`register_process_group`] and that is still running is killed too.
pub fn run_child(test_name: &str, timeout: Duration) -> io::Result<ChildOutcome> {
    let exe = std::env::current_exe()?;
    let cleanup_file = tempfile::Builder::new()
        .prefix("p11wld-test-groups-")
        .tempfile()?;

    let mut command = Command::new(&exe);
    command
        .args(["--exact", test_name])
        .args(["--nocapture", "--test-threads=1", "--include-ignored"])
        .env(CHILD_ENV, test_name)
        .env(CLEANUP_FILE_ENV, cleanup_file.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id();
    let output = Arc::new(Mutex::new(String::new()));
    let (done_sender, done_receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    spawn_copier(stdout, Stream::Stdout, &output, done_sender.clone());
    spawn_copier(stderr, Stream::Stderr, &output, done_sender);

    let (status, timed_out) = wait_with_timeout(&mut child, timeout)?;
    let elapsed = started.elapsed();
    kill_registered_groups(cleanup_file.path());

    // Both copiers report when their pipe closes. Reaching the drain timeout
    // leaves a copier thread running, and the output may then be incomplete.
    let drain_deadline = Instant::now() + OUTPUT_DRAIN_TIMEOUT;
    for _ in 0..2 {
        let remaining = drain_deadline.saturating_duration_since(Instant::now());
        if done_receiver.recv_timeout(remaining).is_err() {
            break;
        }
    }

    let output = output.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(ChildOutcome {
        test_name: test_name.to_owned(),
        pid,
        status,
        timed_out,
        timeout,
        elapsed,
        output,
    })
}

fn current_exe_display() -> String {
    std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "the test executable".to_owned())
}

/// Waits for `child` to exit and kills it with SIGKILL once `timeout` has
/// passed. Returns the exit status and whether the timeout expired.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<(ExitStatus, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            child.kill()?;
            let status = child.wait()?;
            return Ok((status, true));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Copies the lines of `pipe` to this process's stream of the same kind and
/// appends them to `output`, then sends on `done` at end of file.
fn spawn_copier(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    output: &Arc<Mutex<String>>,
    done: mpsc::Sender<()>,
) {
    let output = Arc::clone(output);
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            // print! and eprint! (not io::stdout()) go through libtest's
            // output capture, which spawned threads inherit.
            match stream {
                Stream::Stdout => print!("{text}"),
                Stream::Stderr => eprint!("{text}"),
            }
            output
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&text);
        }
        let _ = done.send(());
    });
}

/// Records a process group that the current test started, so that the parent
/// process kills it if the child process dies without cleaning up (for
/// example when the parent kills a child that timed out).
///
/// `marker` must occur in the command line of the group leader, for example
/// a socket path unique to this group. The parent checks it before killing,
/// so that a process group id reused by an unrelated process is left alone.
/// Outside an isolated child this does nothing.
pub fn register_process_group(pgid: u32, marker: &Path) {
    let Some(file) = std::env::var_os(CLEANUP_FILE_ENV) else {
        return;
    };
    let marker = marker.display().to_string();
    assert!(
        !marker.contains('\n') && !marker.is_empty(),
        "the process group marker must be one non-empty line, got {marker:?}"
    );
    let result = OpenOptions::new()
        .append(true)
        .open(PathBuf::from(file))
        .and_then(|mut file| file.write_all(format!("{pgid}\t{marker}\n").as_bytes()));
    if let Err(error) = result {
        eprintln!("isolate: failed to register process group {pgid} for cleanup: {error}");
    }
}

/// Kills every process group listed in `file` whose leader is still running
/// with the registered marker in its command line.
///
/// NOTE: the killed leader's parent, the child process, is gone, so the
/// leader is reparented to init. Where init does not reap orphans (as in
/// some containers), the leader stays a zombie.
fn kill_registered_groups(file: &Path) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for line in text.lines() {
        let Some((pgid, marker)) = line.split_once('\t') else {
            continue;
        };
        let Ok(pgid) = pgid.parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        let Ok(command_line) = std::fs::read(format!("/proc/{pgid}/cmdline")) else {
            continue; // The leader has exited.
        };
        // The arguments in /proc/PID/cmdline are separated by NUL bytes.
        if !String::from_utf8_lossy(&command_line).contains(marker) {
            continue;
        }
        eprintln!("isolate: killing process group {pgid} ({marker}) left by the child process");
        // SAFETY: kill(2) has no memory-safety preconditions. A negative pid
        // names the process group whose leader was checked above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        // A killed process stays visible (in state D) while the kernel
        // finishes its exit.
        let exited = procfs::wait_for_group(pgid, GROUP_EXIT_TIMEOUT, |members| members.is_empty());
        if !exited {
            eprintln!(
                "isolate: processes of group {pgid} still run {} s after SIGKILL",
                GROUP_EXIT_TIMEOUT.as_secs()
            );
        }
    }
}
