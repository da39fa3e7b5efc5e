//! p11bench: what p11wld costs over the vendor module, and what balancing
//! over several members gains.
//!
//! Run with `cargo bench --bench p11bench -- [command] [options]` after
//! `cargo build --release --example fault_latency`; `scripts/bench.sh`
//! does both. Commands:
//!
//! - `throughput`: every operation through a WLD slot over SoftHSM2 and on
//!   SoftHSM2 directly, in alternating runs, with one and with three
//!   member tokens.
//! - `balance`: signing on members behind the fault-injection latency
//!   module, three members against one.
//! - `memory`: resident size per open session and over many operations.
//! - `callgrind`: instructions p11wld adds per call, under valgrind.
//! - `profile`: where the time goes under load, with `perf record`; not
//!   part of `all`.
//! - `all` (the default): all of the above.
//!
//! Figures go to stdout as Markdown, progress to stderr. Each workload runs
//! in a worker process of its own (`worker.rs`), because SoftHSM2 is one
//! instance per process.

#[path = "../../tests/common/mod.rs"]
mod common;

mod balance;
mod callgrind;
mod memory;
mod ops;
mod pkcs11;
mod profile;
mod report;
mod setup;
mod stats;
mod throughput;
mod worker;

use ops::Op;
use setup::{Latency, Tokens};
use std::path::PathBuf;

const USAGE: &str = "\
usage: p11bench [all|throughput|balance|memory|callgrind|profile] [options]

options (defaults in brackets):
  --millis N        measured time of one run, in milliseconds [500]
  --rounds N        alternating rounds per comparison [9]
  --threads LIST    thread counts of the throughput runs [1,2]; the profile
                    takes the largest
  --ops LIST        operations of the throughput and callgrind runs [all]:
                    random,attribute,digest,ecdsa,rsa,session,find
  --same-process    run SoftHSM2 directly and through p11wld in one worker
                    process, p11wld sharing the SoftHSM2 instance
  --members LIST    member tokens of the throughput runs, 1 and/or 3 [1,3];
                    the callgrind run takes the first
  --balance-threads N   threads of the balancing runs [12]
  --balance-millis N    measured time of one balancing run, in ms [3000]
  --sign-us N       service time of one signature in the latency module,
                    in microseconds [2000]
  --units N         processing units per token in the latency module [1]
  --open-us N       delay of C_OpenSession in the latency module, in
                    microseconds [0]
  --sessions N      sessions of the memory run [10000]
  --operations N    operations of the memory run [1000000]
  --scale N         multiplies the callgrind iterations [1]
  --callgrind-dir DIR   where callgrind and perf write their files
                    [target/callgrind]
";

/// Everything the command line sets.
struct Options {
    command: String,
    throughput: throughput::Plan,
    members: Vec<usize>,
    balance: balance::Plan,
    memory: memory::Plan,
    scale: u64,
    callgrind_dir: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            command: "all".to_owned(),
            throughput: throughput::Plan {
                ops: Op::ALL.to_vec(),
                threads: vec![1, 2],
                millis: 500,
                rounds: 9,
                same_process: false,
            },
            members: vec![1, 3],
            balance: balance::Plan {
                threads: 12,
                millis: 3000,
                rounds: 9,
                latency: Latency {
                    sign_us: 2000,
                    units: 1,
                    open_us: 0,
                },
            },
            memory: memory::Plan {
                sessions: 10_000,
                operations: 1_000_000,
            },
            scale: 1,
            callgrind_dir: callgrind::default_out_dir(),
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            if arg == "--same-process" {
                options.throughput.same_process = true;
                continue;
            }
            if !arg.starts_with("--") {
                options.command = arg.clone();
                continue;
            }
            let value = rest
                .next()
                .ok_or_else(|| format!("option {arg} needs a value\n\n{USAGE}"))?;
            match arg.as_str() {
                "--millis" => options.throughput.millis = number(arg, value)?,
                "--rounds" => {
                    options.throughput.rounds = number(arg, value)?;
                    options.balance.rounds = options.throughput.rounds;
                }
                "--threads" => options.throughput.threads = list(arg, value, number)?,
                "--ops" => options.throughput.ops = list(arg, value, |_, op| Op::parse(op))?,
                "--members" => options.members = list(arg, value, number)?,
                "--balance-threads" => options.balance.threads = number(arg, value)?,
                "--balance-millis" => options.balance.millis = number(arg, value)?,
                "--sign-us" => options.balance.latency.sign_us = number(arg, value)?,
                "--units" => options.balance.latency.units = number(arg, value)?,
                "--open-us" => options.balance.latency.open_us = number(arg, value)?,
                "--sessions" => options.memory.sessions = number(arg, value)?,
                "--operations" => options.memory.operations = number(arg, value)?,
                "--scale" => options.scale = number(arg, value)?,
                "--callgrind-dir" => options.callgrind_dir = PathBuf::from(value),
                _ => return Err(format!("unknown option {arg}\n\n{USAGE}")),
            }
        }
        if options.members.iter().any(|&m| m != 1 && m != 3) {
            return Err("--members takes 1 and 3 only".to_owned());
        }
        Ok(options)
    }
}

fn number<T: std::str::FromStr>(option: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("option {option}: invalid number {value:?}"))
}

fn list<T>(
    option: &str,
    value: &str,
    parse: impl Fn(&str, &str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    value.split(',').map(|item| parse(option, item)).collect()
}

fn main() {
    // `cargo bench` passes `--bench` to a bench target without libtest.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let result = if args.first().map(String::as_str) == Some("worker") {
        worker::main(&args[1..])
    } else if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        Ok(())
    } else {
        Options::parse(&args).and_then(|options| run(&options))
    };
    if let Err(message) = result {
        eprintln!("p11bench: {message}");
        std::process::exit(1);
    }
}

fn run(options: &Options) -> Result<(), String> {
    let command = options.command.as_str();
    let all = command == "all";
    if !matches!(
        command,
        "all" | "throughput" | "balance" | "memory" | "callgrind" | "profile"
    ) {
        return Err(format!("unknown command {command}\n\n{USAGE}"));
    }

    setup::require_modules(all || command == "balance")?;
    eprintln!("p11bench: creating the token directories");
    let tokens = Tokens::create();
    report::print_machine();

    if all || command == "callgrind" || command == "profile" {
        std::fs::create_dir_all(&options.callgrind_dir)
            .map_err(|e| format!("cannot create {}: {e}", options.callgrind_dir.display()))?;
    }

    if command == "profile" {
        let threads = options
            .throughput
            .threads
            .iter()
            .copied()
            .max()
            .unwrap_or(1);
        profile::run(
            &tokens,
            &options.throughput.ops,
            threads,
            options.throughput.millis,
            &options.callgrind_dir,
        )?;
    }
    if all || command == "callgrind" {
        callgrind::run(
            &tokens,
            options.members.first().copied().unwrap_or(1),
            &options.throughput.ops,
            options.scale,
            &options.callgrind_dir,
        )?;
    }
    if all || command == "throughput" {
        run_throughput(&tokens, options)?;
    }
    if all || command == "balance" {
        balance::run(&tokens, &options.balance)?;
    }
    if all || command == "memory" {
        memory::run(&tokens, &options.memory)?;
    }
    Ok(())
}

fn run_throughput(tokens: &Tokens, options: &Options) -> Result<(), String> {
    let plan = &options.throughput;
    for &members in &options.members {
        let (softhsm, title) = if members == 1 {
            (
                &tokens.one,
                "Throughput, one member: SoftHSM2 with one token, directly and through WLD",
            )
        } else {
            (
                &tokens.three,
                "Throughput, three members: SoftHSM2 with three tokens, thread n on token \
                 n mod 3 directly, through WLD spread by the policy",
            )
        };
        eprintln!("p11bench: throughput with {members} member(s)");
        let comparisons = throughput::compare(softhsm, plan)?;
        throughput::print(title, &comparisons, members > 1);
    }
    Ok(())
}
