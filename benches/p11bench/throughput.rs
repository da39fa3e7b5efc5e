//! Throughput through a WLD slot against SoftHSM2 used directly, in runs
//! that alternate between the two so that drift of a shared machine
//! cancels, with the median of the per-round ratios.

use crate::common::SoftHsm;
use crate::ops::Op;
use crate::report::{load_average, Table};
use crate::setup::{Target, WorkerProcess};
use crate::stats::{format_latency, format_rate, median, Summary};

/// Settings of one comparison.
#[derive(Clone, Debug)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub threads: Vec<usize>,
    pub millis: u64,
    pub rounds: usize,
    /// Whether SoftHSM2 and p11wld run in one worker process.
    pub same_process: bool,
}

/// Runs of one operation and thread count on both targets, round by round.
pub struct Comparison {
    pub op: Op,
    pub threads: usize,
    pub direct: Vec<Summary>,
    pub wld: Vec<Summary>,
    /// The open sessions per member that the WLD worker reported, one
    /// entry per round.
    pub members: Vec<String>,
}

impl Comparison {
    /// Returns the ratio of WLD to direct throughput of each round, by
    /// wall-clock time.
    pub fn ratios(&self) -> Vec<f64> {
        self.direct
            .iter()
            .zip(&self.wld)
            .map(|(d, w)| w.ops_per_second / d.ops_per_second)
            .collect()
    }

    /// Returns the ratio of WLD to direct throughput of each round, by the
    /// threads' CPU time.
    pub fn cpu_ratios(&self) -> Vec<f64> {
        self.direct
            .iter()
            .zip(&self.wld)
            .map(|(d, w)| w.ops_per_cpu_second / d.ops_per_cpu_second)
            .collect()
    }
}

/// Runs one operation on a worker and returns its summary, with the
/// `members` line if the worker sent one.
pub fn run_once(
    worker: &mut WorkerProcess,
    op: Op,
    threads: usize,
    millis: u64,
) -> Result<(Summary, Vec<String>), String> {
    let lines = worker.command(&format!("run {} {threads} {millis}", op.name()))?;
    let result = lines.last().ok_or("the worker sent an empty reply")?;
    let fields: Vec<&str> = result.split_whitespace().collect();
    let summary = Summary::parse_fields(fields.get(3..).unwrap_or(&[]))?;
    Ok((summary, lines[..lines.len() - 1].to_vec()))
}

/// The workers of a comparison: one per module, or one that holds both
/// (see `worker.rs`) and switches between them.
enum Workers {
    Separate {
        direct: WorkerProcess,
        wld: WorkerProcess,
    },
    Shared(WorkerProcess),
}

impl Workers {
    /// Runs `op` on SoftHSM2 directly (`wld` false) or through p11wld.
    fn run(
        &mut self,
        wld: bool,
        op: Op,
        threads: usize,
        millis: u64,
    ) -> Result<(Summary, Vec<String>), String> {
        match self {
            Workers::Separate { direct, .. } if !wld => run_once(direct, op, threads, millis),
            Workers::Separate { wld: worker, .. } => run_once(worker, op, threads, millis),
            Workers::Shared(worker) => {
                worker.command(if wld { "module 1" } else { "module 0" })?;
                run_once(worker, op, threads, millis)
            }
        }
    }

    fn quit(self) -> Result<(), String> {
        match self {
            Workers::Separate { direct, wld } => {
                direct.quit()?;
                wld.quit()
            }
            Workers::Shared(worker) => worker.quit(),
        }
    }
}

/// Runs `plan` on SoftHSM2 with the tokens of `softhsm`, directly and
/// through p11wld, alternating: rounds with an even number run direct
/// first, the others WLD first. With `plan.same_process` one worker holds
/// both, else each runs in a worker of its own.
pub fn compare(softhsm: &SoftHsm, plan: &Plan) -> Result<Vec<Comparison>, String> {
    let mut workers = if plan.same_process {
        Workers::Shared(Target::direct_and_wld("direct and WLD", softhsm).spawn(&[])?)
    } else {
        Workers::Separate {
            direct: Target::direct("direct", softhsm).spawn(&[])?,
            wld: Target::wld("WLD", softhsm).spawn(&[])?,
        }
    };
    let mut comparisons = Vec::new();
    for &threads in &plan.threads {
        for &op in &plan.ops {
            let mut comparison = Comparison {
                op,
                threads,
                direct: Vec::new(),
                wld: Vec::new(),
                members: Vec::new(),
            };
            for round in 0..plan.rounds {
                eprintln!(
                    "  {} {threads} thread(s), round {} of {}",
                    op.name(),
                    round + 1,
                    plan.rounds
                );
                let direct_first = round % 2 == 0;
                for turn in 0..2 {
                    let wld = (turn == 0) != direct_first;
                    let (summary, notes) = workers.run(wld, op, threads, plan.millis)?;
                    if wld {
                        comparison.wld.push(summary);
                        comparison.members.extend(members_note(&notes));
                    } else {
                        comparison.direct.push(summary);
                    }
                }
            }
            comparisons.push(comparison);
        }
    }
    workers.quit()?;
    Ok(comparisons)
}

/// Returns the session spread of a `members` line, as "a/b/c".
pub fn members_note(notes: &[String]) -> Option<String> {
    notes
        .iter()
        .find_map(|line| line.strip_prefix("members "))
        .map(|counts| counts.split_whitespace().collect::<Vec<_>>().join("/"))
}

/// Returns the throughput target of an operation, as a ratio to direct.
pub fn target(op: Op) -> f64 {
    match op {
        Op::Ecdsa | Op::Rsa => 0.99,
        _ => 0.95,
    }
}

/// Prints one scenario's comparisons as a Markdown table.
pub fn print(title: &str, comparisons: &[Comparison], with_members: bool) {
    println!("### {title}\n");
    println!("Load average at the end: {}.\n", load_average());
    let mut header = vec![
        "operation",
        "threads",
        "direct ops/s",
        "WLD ops/s",
        "ratio (median)",
        "ratio range",
        "target",
        "ratio by CPU time",
        "direct mean / p50 / p99",
        "WLD mean / p50 / p99",
    ];
    if with_members {
        header.push("sessions per member");
    }
    let mut table = Table::new(&header);
    for c in comparisons {
        let ratios = c.ratios();
        let ratio = median(&ratios);
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let goal = target(c.op);
        let mut row = vec![
            c.op.name().to_owned(),
            c.threads.to_string(),
            format_rate(median_of(&c.direct, |s| s.ops_per_second)),
            format_rate(median_of(&c.wld, |s| s.ops_per_second)),
            format!("{:.3}", ratio),
            format!("{low:.3} – {high:.3}"),
            format!(
                "≥ {goal:.2} {}",
                if ratio >= goal { "met" } else { "MISSED" }
            ),
            format!("{:.3}", median(&c.cpu_ratios())),
            latencies(&c.direct),
            latencies(&c.wld),
        ];
        if with_members {
            row.push(count_distinct(&c.members));
        }
        table.row(row);
    }
    table.print();
}

/// Formats each distinct value with how often it occurs, in order of
/// first occurrence: "1/1/0 ×4, 2/0/0 ×1".
pub fn count_distinct(values: &[String]) -> String {
    let mut counted: Vec<(&str, usize)> = Vec::new();
    for value in values {
        match counted.iter_mut().find(|(seen, _)| seen == value) {
            Some((_, count)) => *count += 1,
            None => counted.push((value, 1)),
        }
    }
    counted
        .iter()
        .map(|(value, count)| format!("{value} ×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median_of(summaries: &[Summary], field: impl Fn(&Summary) -> f64) -> f64 {
    let values: Vec<f64> = summaries.iter().map(field).collect();
    median(&values)
}

/// Formats the median mean, p50 and p99 latency over the rounds.
fn latencies(summaries: &[Summary]) -> String {
    format!(
        "{} / {} / {}",
        format_latency(median_of(summaries, |s| s.mean_ns)),
        format_latency(median_of(summaries, |s| s.p50_ns)),
        format_latency(median_of(summaries, |s| s.p99_ns)),
    )
}
