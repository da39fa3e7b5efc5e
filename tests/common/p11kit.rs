//! Test HSMs as separate processes: a SoftHSM2 token directory served by its
//! own `p11-kit server` on a Unix socket, reached through p11-kit's client
//! module `p11-kit-client.so`.
//!
//! Behaviour of p11-kit 0.24.1 (Debian 12), found by experiment and checked
//! by the tests in `tests/fixture.rs`:
//!
//! - `p11-kit server -f --provider <module> -n <socket> <token URI>` serves
//!   in the foreground. The URI `pkcs11:` matches every slot of the module,
//!   including SoftHSM2's free slot with its uninitialized token. With `-f`
//!   the server still prints `P11_KIT_SERVER_ADDRESS=...` lines to stdout.
//! - The `p11-kit` program execs `/usr/libexec/p11-kit/p11-kit-server`, so
//!   the pid of the spawned process is the server's pid.
//! - For every accepted connection the server forks a child that execs
//!   `p11-kit-remote`, which loads the module and serves that one client. In
//!   the foreground the server does not call `setsid`, so these children
//!   stay in the server's process group. The clients see slot ids that
//!   p11-kit assigns (0x11, 0x12, ... in slot order), not SoftHSM2's.
//! - SIGSTOP to the group freezes the HSM: the kernel still completes new
//!   connections into the listen backlog, so clients block in their next
//!   call until SIGCONT instead of getting an error.
//! - After SIGKILL to the group, a client's next call on an instance that was
//!   connected returns `CKR_DEVICE_ERROR`, and so does a call that was
//!   blocked on a stopped server. The instance keeps failing after the
//!   server is restarted on the same socket, until the client calls
//!   `C_Finalize` and `C_Initialize`, which connect again.
//! - When no server accepts at `C_Initialize`, `C_Initialize` still returns
//!   `CKR_OK`, and the instance shows no slots.
//! - `p11-kit-client.so` reads `P11_KIT_SERVER_ADDRESS` in
//!   `C_GetFunctionList`, and every call of `C_GetFunctionList` creates a new
//!   independent instance with its own function list. `C_Initialize` does
//!   not read the variable again, so one `dlopen` of the module can reach
//!   several servers if the variable is set before each
//!   `C_GetFunctionList`.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::config::ModuleEntry;
use super::isolate;
use super::paths;
use super::procfs::{live_group_members, wait_for_group, ProcessState};
use super::softhsm::{SoftHsm, SOFTHSM2_CONF};

/// Environment variable from which `p11-kit-client.so` reads the server
/// address, in the form `unix:path=<socket>`.
pub const P11_KIT_SERVER_ADDRESS: &str = "P11_KIT_SERVER_ADDRESS";

/// PKCS#11 URI that matches every slot of the module, including slots with
/// an uninitialized token.
pub const ALL_TOKENS_URI: &str = "pkcs11:";

/// Maximum time for a started server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum time for the processes of a group to reach a new state after a
/// signal (exited, stopped or running).
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A SoftHSM2 token directory served by its own `p11-kit server` process.
///
/// The server runs in a process group of its own, together with its
/// per-connection `p11-kit-remote` processes, so that signals to the group
/// reach the whole HSM. Dropping the value kills the group.
pub struct P11KitHsm {
    name: String,
    softhsm: SoftHsm,
    token_uri: String,
    /// Directory of the socket, removed on drop.
    socket_dir: TempDir,
    socket: PathBuf,
    log: PathBuf,
    server: Option<Child>,
}

impl P11KitHsm {
    /// Starts a server for every slot of `softhsm` (URI `pkcs11:`) and waits
    /// until its socket accepts connections.
    ///
    /// `name` names the HSM in the module entry and in the socket file name.
    pub fn start(name: &str, softhsm: SoftHsm) -> P11KitHsm {
        P11KitHsm::start_with_uri(name, softhsm, ALL_TOKENS_URI)
    }

    /// Starts a server for the slots of `softhsm` that `token_uri` matches,
    /// for example `pkcs11:token=WLD_A` to hide the free slot.
    pub fn start_with_uri(name: &str, softhsm: SoftHsm, token_uri: &str) -> P11KitHsm {
        let socket_dir = tempfile::Builder::new()
            .prefix("p11wld-")
            .tempdir_in(paths::short_temp_dir())
            .expect("failed to create a temporary directory for the server socket");
        let socket = socket_dir.path().join(format!("{name}.sock"));
        let socket_length = socket.as_os_str().len();
        assert!(
            socket_length <= paths::MAX_SOCKET_PATH,
            "socket path {} has {socket_length} bytes, more than the {} that Linux allows. \
             Use a shorter HSM name or set TMPDIR to a shorter directory",
            socket.display(),
            paths::MAX_SOCKET_PATH
        );
        let log = softhsm.dir().join("p11-kit-server.log");

        let mut hsm = P11KitHsm {
            name: name.to_owned(),
            softhsm,
            token_uri: token_uri.to_owned(),
            socket_dir,
            socket,
            log,
            server: None,
        };
        hsm.spawn_server();
        hsm
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn softhsm(&self) -> &SoftHsm {
        &self.softhsm
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Returns the value of `P11_KIT_SERVER_ADDRESS` for this server:
    /// `unix:path=<socket>`.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// Returns the `[[module]]` entry that reaches this HSM through
    /// `p11-kit-client.so`.
    pub fn module_entry(&self) -> ModuleEntry {
        ModuleEntry::new(&self.name, paths::p11kit_client_module())
            .with_env(P11_KIT_SERVER_ADDRESS, self.address())
    }

    /// Returns the pid of the server, which is also its process group id,
    /// while the server runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Returns the processes of the server's group that have not exited: the
    /// server and one `p11-kit-remote` process per open connection.
    pub fn processes(&self) -> Vec<ProcessState> {
        match self.server_pid() {
            Some(pgid) => live_group_members(pgid as i32),
            None => Vec::new(),
        }
    }

    /// Returns the number of open client connections: the number of live
    /// `p11-kit-remote` processes.
    pub fn connection_count(&self) -> usize {
        self.processes().len().saturating_sub(1)
    }

    /// Returns the output of all server runs so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server and its per-connection processes with SIGKILL and
    /// waits until they have exited. The socket file stays behind, as after
    /// a crash.
    pub fn kill_hard(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let pgid = server.id() as i32;
        signal_group(pgid, libc::SIGKILL);
        if let Err(error) = server.wait() {
            eprintln!(
                "p11kit: failed to wait for server {pgid} of {}: {error}",
                self.name
            );
        }
        let exited = wait_for_group(pgid, SIGNAL_TIMEOUT, |members| members.is_empty());
        assert!(
            exited,
            "processes of HSM {} (group {pgid}) still run after SIGKILL",
            self.name
        );
    }

    /// Stops the server and its per-connection processes with SIGSTOP and
    /// waits until all of them are stopped.
    pub fn stop(&self) {
        let pgid = self.running_pgid("stop");
        signal_group(pgid, libc::SIGSTOP);
        let stopped = wait_for_group(pgid, SIGNAL_TIMEOUT, |members| {
            members.iter().all(|p| p.state == 'T')
        });
        assert!(
            stopped,
            "processes of HSM {} (group {pgid}) did not stop after SIGSTOP",
            self.name
        );
    }

    /// Continues a stopped server and its per-connection processes with
    /// SIGCONT and waits until none of them is stopped.
    pub fn cont(&self) {
        let pgid = self.running_pgid("continue");
        signal_group(pgid, libc::SIGCONT);
        let running = wait_for_group(pgid, SIGNAL_TIMEOUT, |members| {
            members.iter().all(|p| p.state != 'T')
        });
        assert!(
            running,
            "processes of HSM {} (group {pgid}) are still stopped after SIGCONT",
            self.name
        );
    }

    /// Kills the server if it runs, then starts it again on the same socket
    /// and token directory. Clients must call `C_Finalize` and `C_Initialize`
    /// to reach the new server.
    pub fn restart(&mut self) {
        self.kill_hard();
        self.spawn_server();
    }

    fn running_pgid(&self, action: &str) -> i32 {
        match self.server_pid() {
            Some(pid) => pid as i32,
            None => panic!(
                "cannot {action} HSM {}: its server is not running",
                self.name
            ),
        }
    }

    fn spawn_server(&mut self) {
        assert!(
            self.server.is_none(),
            "the server of HSM {} already runs",
            self.name
        );
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!(
                "failed to remove stale socket {}: {error}",
                self.socket.display()
            ),
        }

        let module = paths::softhsm_module();
        paths::require_file(&module, paths::SOFTHSM_ENV);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("failed to open {}: {e}", self.log.display()));
        let log_for_stderr = log.try_clone().unwrap_or_else(|e| {
            panic!(
                "failed to duplicate the handle of {}: {e}",
                self.log.display()
            )
        });

        let program = paths::p11kit_program();
        let mut command = Command::new(&program);
        command
            .arg("server")
            .arg("-f")
            .arg("--provider")
            .arg(&module)
            .arg("-n")
            .arg(&self.socket)
            .arg(&self.token_uri)
            .env(SOFTHSM2_CONF, self.softhsm.conf_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .process_group(0);
        let server = command.spawn().unwrap_or_else(|e| {
            panic!(
                "failed to start {} server (set {} to the p11-kit program): {e}",
                program.display(),
                paths::P11KIT_ENV
            )
        });
        isolate::register_process_group(server.id(), &self.socket);
        self.server = Some(server);
        self.wait_until_accepting();
    }

    /// Waits until the socket accepts a connection. The probe connection
    /// makes the server fork a `p11-kit-remote` process that exits when the
    /// probe closes.
    fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let server = self.server.as_mut().expect("the server was just spawned");
            if let Ok(Some(status)) = server.try_wait() {
                self.server = None;
                panic!(
                    "p11-kit server of HSM {} exited with {status} before accepting connections. \
                     Its output:\n{}",
                    self.name,
                    self.log()
                );
            }
            let pgid = server.id() as i32;
            let before: Vec<i32> = live_group_members(pgid).iter().map(|p| p.pid).collect();
            if let Ok(probe) = UnixStream::connect(&self.socket) {
                // connect() returns once the kernel queues the connection,
                // possibly before the server accepts it. Wait for the
                // probe's p11-kit-remote process to start and then to exit,
                // so that connection_count() counts only real clients. A
                // client that connects at the same moment (p11wld's health
                // probe) adds a process of its own, which may stay.
                let is_new = |pid: i32| !before.contains(&pid) && pid != pgid;
                let accepted = wait_for_group(pgid, SIGNAL_TIMEOUT, |members| {
                    members.iter().any(|p| is_new(p.pid))
                });
                let new: Vec<i32> = live_group_members(pgid)
                    .iter()
                    .map(|p| p.pid)
                    .filter(|&pid| is_new(pid))
                    .collect();
                drop(probe);
                // One of the new processes is the probe's; it exits now.
                let idle = wait_for_group(pgid, SIGNAL_TIMEOUT, |members| {
                    new.iter().any(|pid| members.iter().all(|p| p.pid != *pid))
                });
                assert!(
                    accepted && idle,
                    "the probe connection to HSM {} was not served and closed within {} s",
                    self.name,
                    SIGNAL_TIMEOUT.as_secs()
                );
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "p11-kit server of HSM {} did not accept connections on {} within {} s. \
                     Its output:\n{}",
                    self.name,
                    self.socket.display(),
                    START_TIMEOUT.as_secs(),
                    self.log()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for P11KitHsm {
    fn drop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let pgid = server.id() as i32;
        // A panic here during unwinding would abort the process, so errors
        // are only logged.
        if let Err(error) = try_signal_group(pgid, libc::SIGKILL) {
            eprintln!(
                "p11kit: failed to kill server group {pgid} of {}: {error}",
                self.name
            );
        }
        if let Err(error) = server.wait() {
            eprintln!(
                "p11kit: failed to wait for server {pgid} of {}: {error}",
                self.name
            );
        }
    }
}

/// Sends `signal` to process group `pgid`, which must be the group of a
/// server that this process started and has not reaped yet. Because the
/// leader is not reaped, its pid and so the group id cannot be reused.
fn try_signal_group(pgid: i32, signal: libc::c_int) -> std::io::Result<()> {
    assert!(pgid > 1, "invalid process group id {pgid}");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let result = unsafe { libc::kill(-pgid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn signal_group(pgid: i32, signal: libc::c_int) {
    if let Err(error) = try_signal_group(pgid, signal) {
        panic!("kill(-{pgid}, {signal}) failed: {error}");
    }
}
