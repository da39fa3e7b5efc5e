//! Instructions that p11wld adds to each call, counted by callgrind, which
//! does not depend on how busy the machine is.
//!
//! Each operation runs in a worker of its own under
//! `valgrind --tool=callgrind`, which collects only inside the worker's
//! `measured_loop`. From the call graph in the output file:
//! - p11wld's cost of a function is the inclusive cost of the calls from
//!   the benchmark program into p11wld's entry point of that name;
//! - the vendor's cost is the inclusive cost of the calls from p11wld into
//!   SoftHSM2's function of the same name;
//! - the difference, divided by the number of calls, is what p11wld adds.
//!
//! The output is read with `--compress-strings=no --compress-pos=no`, so
//! every line names its object and function in full.

use crate::ops::Op;
use crate::report::Table;
use crate::setup::{Target, Tokens};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// At most this many instructions added per forwarded call.
const FORWARDED_TARGET: f64 = 250.0;
/// At most this many instructions added for `C_OpenSession` plus
/// `C_CloseSession`.
const SESSION_PAIR_TARGET: f64 = 2500.0;

/// Functions that allocate or free heap memory.
const ALLOCATOR_FUNCTIONS: [&str; 6] = [
    "malloc",
    "calloc",
    "realloc",
    "free",
    "posix_memalign",
    "aligned_alloc",
];

/// The loaded object a function belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Object {
    Harness,
    P11wld,
    Vendor,
    Other,
}

fn classify(object: &str, harness: &str) -> Object {
    if object == harness {
        Object::Harness
    } else if object.ends_with("/libp11wld.so") {
        Object::P11wld
    } else if object.contains("libsofthsm2") {
        Object::Vendor
    } else {
        Object::Other
    }
}

/// One caller-to-callee edge of the call graph, summed over the file.
#[derive(Default, Clone, Copy, Debug)]
struct EdgeCost {
    calls: u64,
    inclusive: u64,
}

type EdgeKey = (Object, String, Object, String);

/// Reads the call edges of a callgrind output file, keyed by caller
/// object and function, callee object and function.
fn parse(text: &str, harness: &str) -> Result<HashMap<EdgeKey, EdgeCost>, String> {
    let mut edges: HashMap<EdgeKey, EdgeCost> = HashMap::new();
    let mut object = Object::Other;
    let mut function = String::new();
    let mut callee_object: Option<Object> = None;
    let mut callee = String::new();
    let mut pending_calls: Option<u64> = None;
    for line in text.lines() {
        if let Some(calls) = pending_calls.take() {
            // The line after `calls=` contains the call's position and its
            // inclusive cost.
            let inclusive = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("invalid cost line after calls=: {line:?}"))?;
            let key = (
                object,
                function.clone(),
                callee_object.take().unwrap_or(object),
                callee.clone(),
            );
            let edge = edges.entry(key).or_default();
            edge.calls += calls;
            edge.inclusive += inclusive;
        } else if let Some(name) = line.strip_prefix("ob=") {
            object = classify(name, harness);
        } else if let Some(name) = line.strip_prefix("fn=") {
            function = name.to_owned();
        } else if let Some(name) = line.strip_prefix("cob=") {
            callee_object = Some(classify(name, harness));
        } else if let Some(name) = line.strip_prefix("cfn=") {
            callee = name.to_owned();
        } else if let Some(rest) = line.strip_prefix("calls=") {
            let count = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("invalid calls= line: {line:?}"))?;
            pending_calls = Some(count);
        }
    }
    Ok(edges)
}

/// Returns the last segment of a demangled path: `p11wld::ffi::keys::C_X`
/// gives `C_X`.
fn short_name(function: &str) -> &str {
    function.rsplit("::").next().unwrap_or(function)
}

/// The cost of one entry point over all its calls in a run, and the cost
/// of the vendor function it forwards to.
#[derive(Default, Clone, Debug)]
pub struct FunctionCost {
    pub name: String,
    pub calls: u64,
    pub ours: u64,
    pub vendor: u64,
}

impl FunctionCost {
    pub fn added_per_call(&self) -> f64 {
        (self.ours as f64 - self.vendor as f64) / self.calls.max(1) as f64
    }

    pub fn vendor_per_call(&self) -> f64 {
        self.vendor as f64 / self.calls.max(1) as f64
    }
}

/// The figures of one operation's run.
#[derive(Default, Debug)]
pub struct OpCost {
    pub functions: Vec<FunctionCost>,
    /// Vendor functions that p11wld called that have no entry point of the
    /// same name in the run, with their inclusive cost.
    pub other_vendor: Vec<(String, u64)>,
    /// Calls from p11wld to the allocator.
    pub allocations: u64,
    /// Calls from p11wld into `core::fmt` (formatting of log lines).
    pub formatting: u64,
}

fn summarize(edges: &HashMap<EdgeKey, EdgeCost>, expected: &[&str]) -> OpCost {
    let mut cost = OpCost::default();
    for name in expected {
        cost.functions.push(FunctionCost {
            name: name.to_string(),
            ..FunctionCost::default()
        });
    }
    for ((from, _, to, callee), edge) in edges {
        let short = short_name(callee);
        match (from, to) {
            (Object::Harness, Object::P11wld) => {
                if let Some(f) = cost.functions.iter_mut().find(|f| f.name == short) {
                    f.calls += edge.calls;
                    f.ours += edge.inclusive;
                }
            }
            (Object::P11wld, Object::Vendor) => {
                match cost.functions.iter_mut().find(|f| f.name == short) {
                    Some(f) => f.vendor += edge.inclusive,
                    None => cost.other_vendor.push((callee.clone(), edge.inclusive)),
                }
            }
            (Object::P11wld, _) if ALLOCATOR_FUNCTIONS.contains(&short) => {
                cost.allocations += edge.calls;
            }
            (Object::P11wld, Object::P11wld) if callee.starts_with("core::fmt::") => {
                cost.formatting += edge.calls;
            }
            _ => {}
        }
    }
    cost
}

/// Returns how many times an operation runs under callgrind: enough that the
/// per-call figure is stable, few enough for valgrind's speed.
fn iterations(op: Op, scale: u64) -> u64 {
    let base = match op {
        Op::Random | Op::Attribute | Op::Digest => 20_000,
        Op::Session | Op::Find => 5_000,
        Op::Ecdsa => 1_000,
        Op::Rsa => 100,
    };
    base * scale
}

/// Runs `ops` under callgrind through p11wld over SoftHSM2 with `members`
/// member tokens (1 or 3) and prints instructions per call. The output files stay in `out_dir`.
pub fn run(
    tokens: &Tokens,
    members: usize,
    ops: &[Op],
    scale: u64,
    out_dir: &Path,
) -> Result<(), String> {
    let harness = std::env::current_exe()
        .map_err(|e| format!("cannot find this program: {e}"))?
        .display()
        .to_string();
    let target = if members == 1 {
        Target::wld("WLD, one member", &tokens.one)
    } else {
        Target::wld("WLD, three members", &tokens.three)
    };
    let mut results = Vec::new();
    for &op in ops {
        let file = out_dir.join(format!("callgrind.{}.out", op.name()));
        let count = iterations(op, scale);
        eprintln!("  callgrind: {} x {count}", op.name());
        let mut worker = target.spawn(&valgrind_command(&file))?;
        worker.command(&format!("iterate {} {count}", op.name()))?;
        worker.quit()?;
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let edges = parse(&text, &harness)?;
        let cost = summarize(&edges, op.functions());
        check_calls(op, &cost, count)?;
        results.push((op, cost));
    }
    print(&results, members, out_dir);
    Ok(())
}

fn valgrind_command(file: &Path) -> Vec<String> {
    vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--quiet".to_owned(),
        format!("--callgrind-out-file={}", file.display()),
        "--dump-instr=no".to_owned(),
        "--compress-strings=no".to_owned(),
        "--compress-pos=no".to_owned(),
        "--collect-atstart=no".to_owned(),
        "--toggle-collect=*measured_loop*".to_owned(),
    ]
}

/// Checks that every entry point was seen as often as the loop ran, so a
/// renamed or inlined function cannot go unnoticed.
fn check_calls(op: Op, cost: &OpCost, count: u64) -> Result<(), String> {
    for function in &cost.functions {
        if function.calls != count {
            return Err(format!(
                "callgrind saw {} calls of {} in the {} run, expected {count}",
                function.calls,
                function.name,
                op.name()
            ));
        }
        if function.vendor == 0 {
            return Err(format!(
                "callgrind saw no call from p11wld into SoftHSM2's {} in the {} run",
                function.name,
                op.name()
            ));
        }
    }
    Ok(())
}

fn print(results: &[(Op, OpCost)], members: usize, out_dir: &Path) {
    println!("### Instructions per call (callgrind)\n");
    println!(
        "Through p11wld over SoftHSM2 with {members} member(s), one thread. Output files: {}.\n",
        out_dir.display()
    );
    let mut table = Table::new(&[
        "operation",
        "function",
        "calls",
        "SoftHSM2 instr/call",
        "added by p11wld instr/call",
        "target",
    ]);
    let mut notes = Vec::new();
    for (op, cost) in results {
        for function in &cost.functions {
            let added = function.added_per_call();
            let target = if *op == Op::Session {
                String::from("pair ≤ 2500")
            } else {
                verdict_text(added <= FORWARDED_TARGET, "≤ 250")
            };
            table.row(vec![
                op.name().to_owned(),
                function.name.clone(),
                function.calls.to_string(),
                format!("{:.0}", function.vendor_per_call()),
                format!("{added:.0}"),
                target,
            ]);
        }
        if *op == Op::Session {
            let pair: f64 = cost
                .functions
                .iter()
                .map(FunctionCost::added_per_call)
                .sum();
            table.row(vec![
                op.name().to_owned(),
                "open + close".to_owned(),
                String::new(),
                String::new(),
                format!("{pair:.0}"),
                verdict_text(pair <= SESSION_PAIR_TARGET, "≤ 2500"),
            ]);
        }
        let calls = cost.functions.first().map_or(1, |f| f.calls.max(1)) as f64;
        notes.push(format!(
            "- {}: {:.2} allocator calls and {:.2} formatting calls per operation in p11wld{}",
            op.name(),
            cost.allocations as f64 / calls,
            cost.formatting as f64 / calls,
            if cost.other_vendor.is_empty() {
                String::from(".")
            } else {
                let others: Vec<String> = cost
                    .other_vendor
                    .iter()
                    .map(|(name, inclusive)| format!("{name} {:.0}/op", *inclusive as f64 / calls))
                    .collect();
                format!("; other SoftHSM2 calls: {}.", others.join(", "))
            }
        ));
    }
    table.print();
    for note in notes {
        println!("{note}");
    }
    println!();
}

fn verdict_text(met: bool, target: &str) -> String {
    format!("{target} {}", if met { "met" } else { "MISSED" })
}

/// Returns the directory for callgrind's output files: `target/callgrind`
/// next to the profile directory of this build.
pub fn default_out_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/release/deps/p11bench-<hash> -> target/callgrind
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("callgrind"))
        .unwrap_or_else(|| PathBuf::from("callgrind"))
}
