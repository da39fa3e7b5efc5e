//! Balancing efficiency: signing on members that each take a fixed service
//! time per signature (the fault-injection latency module), compared with
//! one such member used directly.

use crate::ops::Op;
use crate::report::{load_average, Table};
use crate::setup::{Latency, Target, Tokens};
use crate::stats::{format_latency, format_rate, median, Summary};
use crate::throughput::{count_distinct, members_note, run_once};

/// Settings of the balancing benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub threads: usize,
    pub millis: u64,
    pub rounds: usize,
    pub latency: Latency,
}

/// The share of the work that each of three members must get, within this
/// fraction of a third (relative: 5% of 1/3).
const SHARE_TOLERANCE: f64 = 0.05;
/// The aggregate throughput of three members must reach this fraction of
/// three times one member's.
const EFFICIENCY_TARGET: f64 = 0.95;

struct Runs {
    name: String,
    summaries: Vec<Summary>,
    /// Signature counts per token of each run.
    signatures: Vec<Vec<u64>>,
    /// The open sessions per member of each run.
    members: Vec<String>,
}

/// Runs the balancing benchmark and prints its tables.
pub fn run(tokens: &Tokens, plan: &Plan) -> Result<(), String> {
    let targets = [
        Target::latency_direct("one token, direct", &tokens.one, plan.latency),
        Target::latency_wld("WLD, one member", &tokens.one, plan.latency),
        Target::latency_wld("WLD, three members", &tokens.three, plan.latency),
    ];
    let mut workers = Vec::new();
    for target in &targets {
        workers.push(target.spawn(&[])?);
    }
    let mut runs: Vec<Runs> = targets
        .iter()
        .map(|target| Runs {
            name: target.name.clone(),
            summaries: Vec::new(),
            signatures: Vec::new(),
            members: Vec::new(),
        })
        .collect();
    for round in 0..plan.rounds {
        eprintln!("  balancing round {} of {}", round + 1, plan.rounds);
        for turn in 0..targets.len() {
            // Each round starts with the next target, so every target runs
            // early and late equally often.
            let index = (round + turn) % targets.len();
            let (summary, notes) =
                run_once(&mut workers[index], Op::Ecdsa, plan.threads, plan.millis)?;
            runs[index].summaries.push(summary);
            runs[index].signatures.push(signature_counts(&notes)?);
            runs[index].members.extend(members_note(&notes));
        }
    }
    for worker in workers {
        worker.quit()?;
    }
    print(plan, &runs);
    Ok(())
}

/// Parses the `signatures <slot>:<count> ...` line of a run.
fn signature_counts(notes: &[String]) -> Result<Vec<u64>, String> {
    let line = notes
        .iter()
        .find_map(|line| line.strip_prefix("signatures"))
        .ok_or("the worker sent no signature counts")?;
    line.split_whitespace()
        .map(|pair| {
            pair.split_once(':')
                .and_then(|(_, count)| count.parse().ok())
                .ok_or_else(|| format!("invalid signature count {pair:?}"))
        })
        .collect()
}

fn print(plan: &Plan, runs: &[Runs]) {
    let rate = |runs: &Runs| {
        let rates: Vec<f64> = runs.summaries.iter().map(|s| s.ops_per_second).collect();
        median(&rates)
    };
    let one = rate(&runs[0]);
    println!(
        "### Balancing: {} threads, ECDSA P-256, {} µs per signature, {} unit(s) per token, \
         {} µs per C_OpenSession\n",
        plan.threads, plan.latency.sign_us, plan.latency.units, plan.latency.open_us
    );
    println!("Load average at the end: {}.\n", load_average());
    let mut table = Table::new(&[
        "setup",
        "signatures/s (median)",
        "vs. one token × members",
        "mean / p50 / p99",
        "share per token (median run)",
        "sessions per member",
    ]);
    for (index, runs) in runs.iter().enumerate() {
        let members = if index == 2 { 3.0 } else { 1.0 };
        let ratio = rate(runs) / (one * members);
        let latencies = format!(
            "{} / {} / {}",
            format_latency(median(
                &runs.summaries.iter().map(|s| s.mean_ns).collect::<Vec<_>>()
            )),
            format_latency(median(
                &runs.summaries.iter().map(|s| s.p50_ns).collect::<Vec<_>>()
            )),
            format_latency(median(
                &runs.summaries.iter().map(|s| s.p99_ns).collect::<Vec<_>>()
            )),
        );
        table.row(vec![
            runs.name.clone(),
            format_rate(rate(runs)),
            format!("{ratio:.3}"),
            latencies,
            shares_text(&median_run_counts(runs)),
            count_distinct(&runs.members),
        ]);
    }
    table.print();

    let three = &runs[2];
    let efficiency = rate(three) / (3.0 * one);
    let worst = three
        .signatures
        .iter()
        .map(|counts| worst_share_deviation(counts, 3))
        .fold(0.0, f64::max);
    println!(
        "- Efficiency, three members against three times one token used directly: \
         {efficiency:.3} (target ≥ {EFFICIENCY_TARGET:.2}, {}).",
        verdict(efficiency >= EFFICIENCY_TARGET)
    );
    println!(
        "- Largest deviation of a token's share from a third, over {} runs: {:.1}% of a third \
         (target ≤ {:.0}%, {}).\n",
        three.signatures.len(),
        worst * 100.0,
        SHARE_TOLERANCE * 100.0,
        verdict(worst <= SHARE_TOLERANCE)
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Returns the counts of the run with the median throughput.
fn median_run_counts(runs: &Runs) -> Vec<u64> {
    let mut order: Vec<usize> = (0..runs.summaries.len()).collect();
    order.sort_by(|&a, &b| {
        runs.summaries[a]
            .ops_per_second
            .total_cmp(&runs.summaries[b].ops_per_second)
    });
    order
        .get(order.len() / 2)
        .map(|&index| runs.signatures[index].clone())
        .unwrap_or_default()
}

fn shares_text(counts: &[u64]) -> String {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return String::new();
    }
    counts
        .iter()
        .map(|&count| format!("{:.1}%", 100.0 * count as f64 / total as f64))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Returns the largest relative deviation of a token's share from an even
/// split over `tokens` tokens; a token missing from `counts` made no
/// signature. 1.0 when there are no signatures.
fn worst_share_deviation(counts: &[u64], tokens: usize) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 || tokens == 0 {
        return 1.0;
    }
    let even = 1.0 / tokens as f64;
    let missing = tokens.saturating_sub(counts.len());
    counts
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0, missing))
        .map(|count| ((count as f64 / total as f64) - even).abs() / even)
        .fold(0.0, f64::max)
}
