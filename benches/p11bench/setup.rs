//! The token directories, module configurations and worker processes that
//! the benchmarks run on.

use crate::common::{paths, SO_PIN, USER_PIN, WLD_LABEL};
use crate::common::{softhsm::SOFTHSM2_CONF, ConfigFile, ModuleEntry, SoftHsm};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// `[wld]` and `[log]` tables of every p11wld configuration here: the
/// default policy, and errors only, so logging costs nothing.
const WLD_EXTRA: &str = "[wld]\npolicy = \"least-sessions\"\n\n[log]\nlevel = \"error\"\n";

/// Service time and processing units of the latency module's tokens.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub sign_us: u64,
    pub units: usize,
    /// Delay of `C_OpenSession`, in microseconds.
    pub open_us: u64,
}

/// Two SoftHSM2 token directories with the fixture's key set in every
/// token: one with one `WLD_A` token, one with three.
pub struct Tokens {
    pub one: SoftHsm,
    pub three: SoftHsm,
}

impl Tokens {
    pub fn create() -> Tokens {
        let one = SoftHsm::new_in(&paths::short_temp_dir());
        one.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN);
        let three = SoftHsm::new_in(&paths::short_temp_dir());
        for _ in 0..3 {
            three.init_token_with_key_set(WLD_LABEL, SO_PIN, USER_PIN);
        }
        Tokens { one, three }
    }
}

/// A module to start workers on: its path, its environment, and the p11wld
/// configuration it needs, if any.
pub struct Target {
    pub name: String,
    /// The modules the worker loads, in order.
    modules: Vec<PathBuf>,
    env: Vec<(String, String)>,
    latency_module: Option<PathBuf>,
    _config: Option<ConfigFile>,
}

impl Target {
    /// Returns the target of SoftHSM2 used directly on the tokens of
    /// `softhsm`.
    pub fn direct(name: &str, softhsm: &SoftHsm) -> Target {
        Target {
            name: name.to_owned(),
            modules: vec![paths::softhsm_module()],
            env: vec![softhsm.env()],
            latency_module: None,
            _config: None,
        }
    }

    /// Returns the target of one worker with SoftHSM2 on the tokens of
    /// `softhsm` as module 0 and p11wld over that same SoftHSM2 instance as
    /// module 1.
    pub fn direct_and_wld(name: &str, softhsm: &SoftHsm) -> Target {
        let mut target = Target::wld(name, softhsm);
        target.modules.insert(0, paths::softhsm_module());
        target.env.push(softhsm.env());
        target
    }

    /// Returns the target of p11wld with SoftHSM2 on the tokens of
    /// `softhsm` as its one module.
    pub fn wld(name: &str, softhsm: &SoftHsm) -> Target {
        let entry = ModuleEntry::new("softhsm", paths::softhsm_module())
            .with_env(SOFTHSM2_CONF, softhsm.conf_path().display().to_string());
        Target::through_wld(name, entry, None)
    }

    /// Returns the target of the latency module in front of SoftHSM2 on the
    /// tokens of `softhsm`, used directly.
    pub fn latency_direct(name: &str, softhsm: &SoftHsm, latency: Latency) -> Target {
        let module = latency_module();
        let mut env = vec![softhsm.env()];
        env.extend(latency_env(latency));
        Target {
            name: name.to_owned(),
            modules: vec![module.clone()],
            env,
            latency_module: Some(module),
            _config: None,
        }
    }

    /// Returns the target of p11wld with the latency module in front of
    /// SoftHSM2 on the tokens of `softhsm` as its one module.
    pub fn latency_wld(name: &str, softhsm: &SoftHsm, latency: Latency) -> Target {
        let module = latency_module();
        let mut entry = ModuleEntry::new("latency", &module)
            .with_env(SOFTHSM2_CONF, softhsm.conf_path().display().to_string());
        for (key, value) in latency_env(latency) {
            entry = entry.with_env(key, value);
        }
        Target::through_wld(name, entry, Some(module))
    }

    fn through_wld(name: &str, entry: ModuleEntry, latency_module: Option<PathBuf>) -> Target {
        let config = ConfigFile::write(&[entry], WLD_EXTRA);
        Target {
            name: name.to_owned(),
            modules: vec![paths::p11wld_module()],
            env: vec![(
                "P11WLD_CONFIG".to_owned(),
                config.path().display().to_string(),
            )],
            latency_module,
            _config: Some(config),
        }
    }

    /// Starts a worker on this target, run by `wrapper` (for example
    /// valgrind with its options) when it is not empty.
    pub fn spawn(&self, wrapper: &[String]) -> Result<WorkerProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        command.arg("worker");
        for module in &self.modules {
            command.arg("--module").arg(module);
        }
        command.args(["--label", WLD_LABEL, "--pin", USER_PIN]);
        if let Some(latency) = &self.latency_module {
            command.arg("--latency").arg(latency);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());

        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start a worker for {}: {e}", self.name))?;
        let stdin = child.stdin.take().ok_or("the worker has no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("the worker has no stdout")?);
        let mut worker = WorkerProcess {
            name: self.name.clone(),
            child,
            stdin,
            stdout,
        };
        // The worker replies `ready <slots>` once it has loaded the module.
        let ready = worker.read_reply()?;
        if !ready.last().is_some_and(|line| line.starts_with("ready ")) {
            return Err(format!("worker {} did not start: {ready:?}", self.name));
        }
        Ok(worker)
    }
}

/// Returns the latency module that `cargo build --release --example
/// fault_latency` makes, next to the p11wld module's profile directory.
pub fn latency_module() -> PathBuf {
    let profile_dir = paths::p11wld_cli()
        .parent()
        .expect("the p11wld program has a parent directory")
        .to_owned();
    profile_dir.join("examples").join("libfault_latency.so")
}

fn latency_env(latency: Latency) -> Vec<(String, String)> {
    vec![
        (
            "FAULT_LATENCY_MODULE".to_owned(),
            paths::softhsm_module().display().to_string(),
        ),
        (
            "FAULT_LATENCY_SIGN_US".to_owned(),
            latency.sign_us.to_string(),
        ),
        ("FAULT_LATENCY_UNITS".to_owned(), latency.units.to_string()),
        (
            "FAULT_LATENCY_OPEN_US".to_owned(),
            latency.open_us.to_string(),
        ),
    ]
}

/// Checks that the modules the benchmarks load exist.
pub fn require_modules(with_latency: bool) -> Result<(), String> {
    let mut needed = vec![
        (paths::p11wld_module(), "cargo build --release"),
        (paths::softhsm_module(), "apt-get install softhsm2"),
    ];
    if with_latency {
        needed.push((
            latency_module(),
            "cargo build --release --example fault_latency",
        ));
    }
    for (path, fix) in needed {
        if !path.exists() {
            return Err(format!("{} not found; run {fix}", path.display()));
        }
    }
    Ok(())
}

/// A running worker process (see `worker.rs`).
pub struct WorkerProcess {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WorkerProcess {
    /// Sends one command and returns the lines of its reply, the last one
    /// being `result ...`, `done` or `ready ...`.
    pub fn command(&mut self, line: &str) -> Result<Vec<String>, String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("worker {}: cannot send {line:?}: {e}", self.name))?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| format!("worker {}: cannot read: {e}", self.name))?;
            if read == 0 {
                return Err(format!(
                    "worker {} exited before it replied; its output so far: {lines:?}",
                    self.name
                ));
            }
            let line = line.trim_end().to_owned();
            if let Some(message) = line.strip_prefix("error ") {
                return Err(format!("worker {}: {message}", self.name));
            }
            let last = line.starts_with("result ") || line == "done" || line.starts_with("ready ");
            lines.push(line);
            if last {
                return Ok(lines);
            }
        }
    }

    /// Sends `quit` and waits for the worker to exit.
    pub fn quit(mut self) -> Result<(), String> {
        writeln!(self.stdin, "quit")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("worker {}: cannot send quit: {e}", self.name))?;
        let status = self
            .child
            .wait()
            .map_err(|e| format!("worker {}: {e}", self.name))?;
        if !status.success() {
            return Err(format!("worker {} exited with {status}", self.name));
        }
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A worker that received no quit command (an error path) is ended
        // here, by its own pid.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
