//! The worker process: loads one PKCS#11 module and runs the commands the
//! parent sends on stdin, replying on stdout, one line each.
//!
//! SoftHSM2 is one instance per process, so the parent runs the module used
//! directly and p11wld (which loads SoftHSM2 itself) in separate workers.
//!
//! Commands and replies:
//! - `run <op> <threads> <millis>`: each thread opens a session on the
//!   token slots in turn, the first session of each slot logs in, every
//!   thread finds the keys and warms up, then all run `<op>` for
//!   `<millis>`. Replies `result <op> <threads> <summary fields>`. Before
//!   it come a line `members <open sessions> ...` when the module is
//!   p11wld, and a line `signatures <slot>:<count> ...` when the latency
//!   module is loaded.
//! - `iterate <op> <count>`: runs `<op>` `<count>` times on one thread, in
//!   the function `measured_loop`, which callgrind collects alone. Replies
//!   `done`.
//! - `memory <sessions> <operations>`: reports the resident size as lines
//!   `rss <stage> <KiB>` while it opens `<sessions>` sessions and then runs
//!   `<operations>` operations. Replies `done` last.
//! - `module <index>`: makes the module at `<index>` of the `--module`
//!   options the one the next commands use. Replies `done`.
//! - `quit`: finalizes the modules, the last loaded first, and exits.
//!
//! A worker started with `--module` twice, SoftHSM2 first and then p11wld
//! over the same SoftHSM2, holds both in one process: p11wld finds SoftHSM2
//! initialized by the application, uses that instance, and leaves it
//! initialized. The two can then alternate in blocks as short as wanted.
//!
//! Any failure is reported with `error <message>` and ends the worker.

use crate::ops::{Context, Op};
use crate::pkcs11::Module;
use crate::stats::{nanos_u32, thread_cpu_time, Summary};
use cryptoki_sys::*;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Latencies kept per thread before the vector grows; enough for 4 s of
/// 1 µs operations.
const LATENCY_CAPACITY: usize = 1 << 22;
/// Warm-up time of each thread before the measured time.
const WARM_UP: Duration = Duration::from_millis(100);
const WARM_UP_MAX_OPERATIONS: u32 = 200;

/// The worker's command-line options.
pub struct WorkerArgs {
    /// The modules to load, in order; the first is used until a `module`
    /// command selects another.
    pub modules: Vec<PathBuf>,
    pub label: String,
    pub pin: String,
    /// The fault-injection latency module, to read its signature counts.
    pub latency: Option<PathBuf>,
}

impl WorkerArgs {
    pub fn parse(args: &[String]) -> Result<WorkerArgs, String> {
        let mut modules = Vec::new();
        let mut label = None;
        let mut pin = None;
        let mut latency = None;
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let value = rest
                .next()
                .ok_or_else(|| format!("worker option {flag} needs a value"))?;
            match flag.as_str() {
                "--module" => modules.push(PathBuf::from(value)),
                "--label" => label = Some(value.clone()),
                "--pin" => pin = Some(value.clone()),
                "--latency" => latency = Some(PathBuf::from(value)),
                other => return Err(format!("unknown worker option {other}")),
            }
        }
        if modules.is_empty() {
            return Err("the worker needs --module".to_owned());
        }
        Ok(WorkerArgs {
            modules,
            label: label.ok_or("the worker needs --label")?,
            pin: pin.ok_or("the worker needs --pin")?,
            latency,
        })
    }
}

/// Runs the worker until `quit` or end of input.
pub fn main(args: &[String]) -> Result<(), String> {
    let args = WorkerArgs::parse(args)?;
    let mut modules = Vec::new();
    for path in &args.modules {
        modules.push(Module::load(path)?);
    }
    let latency = args
        .latency
        .as_deref()
        .map(LatencyCounts::load)
        .transpose()?;
    let mut workers = Vec::new();
    for (index, module) in modules.iter().enumerate() {
        let slots = module.slots_with_label(&args.label)?;
        if slots.is_empty() {
            return Err(format!(
                "no token labelled {} found through {}",
                args.label,
                args.modules[index].display()
            ));
        }
        workers.push(Worker {
            module,
            slots,
            pin: &args.pin,
            latency: latency.as_ref(),
        });
    }

    let mut active = 0;
    reply(&format!("ready {}", workers[active].slots.len()));
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("cannot read a command: {e}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let worker = &workers[active];
        match words.as_slice() {
            ["run", op, threads, millis] => {
                worker.run(Op::parse(op)?, number(threads)?, number(millis)?)?
            }
            ["iterate", op, count] => worker.iterate(Op::parse(op)?, number(count)?)?,
            ["memory", sessions, operations] => {
                worker.memory(number(sessions)?, number(operations)?)?
            }
            ["module", index] => {
                active = number(index)?;
                if active >= workers.len() {
                    return Err(format!("no module {active}; {} loaded", workers.len()));
                }
                reply("done");
            }
            ["quit"] => break,
            _ => return Err(format!("unknown command {line:?}")),
        }
    }

    drop(workers);
    for module in modules.iter().rev() {
        module.finalize()?;
    }
    Ok(())
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("invalid number {text:?} in a command"))
}

/// Writes one reply line and flushes it, so the parent reads it at once.
fn reply(line: &str) {
    let mut out = std::io::stdout().lock();
    // A parent that went away ends the worker at its next read anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reports a failure to the parent and ends the worker, also from one of
/// its threads, whose siblings would otherwise wait for it forever. It
/// exits with `_exit`, because `exit` would run the destructors of the
/// loaded modules while other threads still call them.
fn fail(message: &str) -> ! {
    reply(&format!("error {message}"));
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(1) }
}

struct Worker<'a> {
    module: &'a Module,
    slots: Vec<CK_SLOT_ID>,
    pin: &'a str,
    latency: Option<&'a LatencyCounts>,
}

impl Worker<'_> {
    fn run(&self, op: Op, threads: usize, millis: u64) -> Result<(), String> {
        if threads == 0 {
            return Err("a run needs at least one thread".to_owned());
        }
        if let Some(latency) = self.latency {
            latency.reset();
        }

        let sync = RunSync {
            ready: Barrier::new(threads + 1),
            logged_in: Barrier::new(threads),
            start: Barrier::new(threads + 1),
            stop: AtomicBool::new(false),
        };
        let results: Vec<(Vec<u32>, (f64, f64))> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|index| {
                    let sync = &sync;
                    scope.spawn(move || self.run_thread(index, op, sync))
                })
                .collect();

            sync.ready.wait();
            self.report_members();
            sync.ready.wait();
            sync.start.wait();
            std::thread::sleep(Duration::from_millis(millis));
            sync.stop.store(true, Ordering::Relaxed);

            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|_| fail("a thread panicked")))
                .collect()
        });

        let rates: Vec<(f64, f64)> = results.iter().map(|(_, rates)| *rates).collect();
        let mut latencies: Vec<u32> = results.into_iter().flat_map(|(l, _)| l).collect();
        let summary = Summary::from_latencies(&mut latencies, &rates);
        if let Some(latency) = self.latency {
            let counts: Vec<String> = latency
                .read()
                .iter()
                .map(|(slot, count)| format!("{slot}:{count}"))
                .collect();
            reply(&format!("signatures {}", counts.join(" ")));
        }
        reply(&format!(
            "result {} {threads} {}",
            op.name(),
            summary.to_fields()
        ));
        Ok(())
    }

    /// Runs thread `index` of a run: opens its session and logs in when it
    /// is the first on its slot, finds the keys, warms up, and measures
    /// `op` until the run stops. Returns what [`measure`] returns.
    fn run_thread(&self, index: usize, op: Op, sync: &RunSync) -> (Vec<u32>, (f64, f64)) {
        let slot = self.slots[index % self.slots.len()];
        let session = self.module.open_session(slot).unwrap_or_else(|e| fail(&e));
        // Twice: the parent's thread reads the session spread in between.
        sync.ready.wait();
        sync.ready.wait();

        if index < self.slots.len() {
            self.module
                .login(session, self.pin)
                .unwrap_or_else(|e| fail(&e));
        }
        sync.logged_in.wait();

        let mut context = Context::new(self.module, slot, session).unwrap_or_else(|e| fail(&e));
        warm_up(&mut context, op);
        sync.start.wait();
        let measured = measure(&mut context, op, &sync.stop);

        self.module
            .close_session(session)
            .unwrap_or_else(|e| fail(&e));
        measured
    }

    /// Replies with the open sessions per member when the module is
    /// p11wld, so the parent sees how the sessions of a run spread.
    fn report_members(&self) {
        match self.module.member_sessions() {
            Ok(Some(counts)) => {
                let counts: Vec<String> = counts.iter().map(u64::to_string).collect();
                reply(&format!("members {}", counts.join(" ")));
            }
            Ok(None) => {}
            Err(e) => fail(&e),
        }
    }

    fn iterate(&self, op: Op, count: u64) -> Result<(), String> {
        let slot = self.slots[0];
        let session = self.module.open_session(slot)?;
        self.module.login(session, self.pin)?;
        let mut context = Context::new(self.module, slot, session)?;
        warm_up(&mut context, op);
        measured_loop(&mut context, op, count)?;
        self.module.close_session(session)?;
        reply("done");
        Ok(())
    }

    fn memory(&self, sessions: usize, operations: u64) -> Result<(), String> {
        let slot = self.slots[0];
        let session = self.module.open_session(slot)?;
        self.module.login(session, self.pin)?;
        let mut context = Context::new(self.module, slot, session)?;
        // Each operation 100 times first, so that state made on first use
        // exists before the first figure.
        for op in MEMORY_MIX {
            for _ in 0..100 {
                context.run(op)?;
            }
        }
        let mut opened = Vec::with_capacity(sessions);
        reply(&format!("rss before-sessions {}", resident_kib()?));
        for _ in 0..sessions {
            opened.push(self.module.open_session(slot)?);
        }
        reply(&format!("rss with-sessions {}", resident_kib()?));
        for handle in opened.drain(..) {
            self.module.close_session(handle)?;
        }
        reply(&format!("rss after-sessions {}", resident_kib()?));
        let checkpoint = (operations / 10).max(1);
        for done in 0..operations {
            context.run(MEMORY_MIX[(done % MEMORY_MIX.len() as u64) as usize])?;
            if (done + 1) % checkpoint == 0 {
                reply(&format!("rss operations-{} {}", done + 1, resident_kib()?));
            }
        }
        self.module.close_session(session)?;
        reply("done");
        Ok(())
    }
}

/// The barriers and the stop flag that the threads of one run share.
struct RunSync {
    /// Every thread has opened its session; passed twice, so the sessions
    /// are counted before any thread opens more.
    ready: Barrier,
    /// Every slot is logged in.
    logged_in: Barrier,
    /// Every thread has warmed up; the measured time starts.
    start: Barrier,
    stop: AtomicBool,
}

/// The operations the memory run cycles through: every kind except the
/// slow RSA signature.
const MEMORY_MIX: [Op; 6] = [
    Op::Random,
    Op::Attribute,
    Op::Digest,
    Op::Ecdsa,
    Op::Session,
    Op::Find,
];

fn warm_up(context: &mut Context<'_>, op: Op) {
    let started = Instant::now();
    for _ in 0..WARM_UP_MAX_OPERATIONS {
        context.run(op).unwrap_or_else(|e| fail(&e));
        if started.elapsed() > WARM_UP {
            break;
        }
    }
}

/// Runs `op` until `stop` is set. Returns each operation's latency in
/// nanoseconds, and the thread's operations per second of wall-clock time
/// and of its own CPU time.
fn measure(context: &mut Context<'_>, op: Op, stop: &AtomicBool) -> (Vec<u32>, (f64, f64)) {
    let mut latencies = Vec::with_capacity(LATENCY_CAPACITY);
    let cpu_started = thread_cpu_time();
    let started = Instant::now();
    let mut last = started;
    while !stop.load(Ordering::Relaxed) {
        context.run(op).unwrap_or_else(|e| fail(&e));
        let now = Instant::now();
        latencies.push(nanos_u32(now - last));
        last = now;
    }
    let cpu = (thread_cpu_time() - cpu_started).as_secs_f64();
    let elapsed = (last - started).as_secs_f64();
    let rate = |seconds: f64| {
        if seconds > 0.0 {
            latencies.len() as f64 / seconds
        } else {
            0.0
        }
    };
    let rates = (rate(elapsed), rate(cpu));
    (latencies, rates)
}

/// Runs `op` `count` times. callgrind collects inside this function only
/// (`--toggle-collect=*measured_loop*`), so it is never inlined.
#[inline(never)]
fn measured_loop(context: &mut Context<'_>, op: Op, count: u64) -> Result<(), String> {
    for _ in 0..count {
        context.run(op)?;
    }
    Ok(())
}

/// Reads the resident set size of this process, in KiB.
fn resident_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS line in /proc/self/status".to_owned())
}

/// The signature counters of the fault-injection latency module, reached
/// through the same loaded copy as the module under test uses.
struct LatencyCounts {
    read: unsafe extern "C" fn(*mut CK_SLOT_ID, *mut u64, usize) -> usize,
    reset: extern "C" fn(),
    _library: libloading::Library,
}

impl LatencyCounts {
    fn load(path: &std::path::Path) -> Result<LatencyCounts, String> {
        // SAFETY: the module is loaded already (by the module under test),
        // so this only takes another reference to it.
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        // SAFETY: the latency module defines these functions with these
        // types (examples/fault_latency.rs).
        let (read, reset) = unsafe {
            let read = *library
                .get::<unsafe extern "C" fn(*mut CK_SLOT_ID, *mut u64, usize) -> usize>(
                    b"fault_latency_signatures\0",
                )
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let reset = *library
                .get::<extern "C" fn()>(b"fault_latency_reset\0")
                .map_err(|e| format!("{}: {e}", path.display()))?;
            (read, reset)
        };
        Ok(LatencyCounts {
            read,
            reset,
            _library: library,
        })
    }

    fn reset(&self) {
        (self.reset)();
    }

    /// Returns each token's slot id and signature count.
    fn read(&self) -> Vec<(CK_SLOT_ID, u64)> {
        let mut slots = [0 as CK_SLOT_ID; 64];
        let mut counts = [0u64; 64];
        // SAFETY: both buffers have room for 64 entries.
        let found = unsafe { (self.read)(slots.as_mut_ptr(), counts.as_mut_ptr(), 64) };
        slots.into_iter().zip(counts).take(found.min(64)).collect()
    }
}
