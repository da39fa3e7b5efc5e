//! Resident size per open session, and over a long run of operations,
//! through a WLD slot and directly.

use crate::report::{load_average, Table};
use crate::setup::{Target, Tokens};

/// Settings of the memory benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub sessions: usize,
    pub operations: u64,
}

/// Resident size must grow by less than this per open session, in KiB.
const PER_SESSION_TARGET_KIB: f64 = 2.0;

/// The `rss` lines of one worker: stage name and resident size in KiB.
type Stages = Vec<(String, u64)>;

/// Runs the memory benchmark on SoftHSM2 directly and through p11wld, and
/// prints the figures.
pub fn run(tokens: &Tokens, plan: &Plan) -> Result<(), String> {
    let targets = [
        Target::direct("direct", &tokens.one),
        Target::wld("WLD, one member", &tokens.one),
    ];
    let mut results = Vec::new();
    for target in &targets {
        eprintln!("  memory: {}", target.name);
        let mut worker = target.spawn(&[])?;
        let lines = worker.command(&format!("memory {} {}", plan.sessions, plan.operations))?;
        worker.quit()?;
        results.push((target.name.clone(), parse_stages(&lines)?));
    }
    print(plan, &results);
    Ok(())
}

fn parse_stages(lines: &[String]) -> Result<Stages, String> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("rss "))
        .map(|rest| {
            let (stage, kib) = rest
                .split_once(' ')
                .ok_or_else(|| format!("invalid rss line {rest:?}"))?;
            let kib = kib
                .parse()
                .map_err(|_| format!("invalid size in rss line {rest:?}"))?;
            Ok((stage.to_owned(), kib))
        })
        .collect()
}

fn stage(stages: &Stages, name: &str) -> u64 {
    stages
        .iter()
        .find(|(stage, _)| stage == name)
        .map(|(_, kib)| *kib)
        .unwrap_or(0)
}

fn print(plan: &Plan, results: &[(String, Stages)]) {
    println!("### Memory\n");
    println!("Load average at the end: {}.\n", load_average());
    let per_session = |stages: &Stages| {
        let grown = stage(stages, "with-sessions") as f64 - stage(stages, "before-sessions") as f64;
        grown / plan.sessions as f64
    };
    let mut table = Table::new(&[
        "module",
        "KiB per open session",
        &format!("RSS after {} sessions closed", plan.sessions),
        "RSS over the operations (KiB, every tenth)",
    ]);
    for (name, stages) in results {
        let operations: Vec<String> = stages
            .iter()
            .filter(|(stage, _)| stage.starts_with("operations-"))
            .map(|(_, kib)| kib.to_string())
            .collect();
        table.row(vec![
            name.clone(),
            format!("{:.2}", per_session(stages)),
            format!("{} KiB", stage(stages, "after-sessions")),
            operations.join(" "),
        ]);
    }
    table.print();
    if let [(_, direct), (_, wld)] = results {
        let added = per_session(wld) - per_session(direct);
        let first = stage(wld, "after-sessions");
        let last = wld
            .iter()
            .rev()
            .find(|(stage, _)| stage.starts_with("operations-"))
            .map(|(_, kib)| *kib)
            .unwrap_or(0);
        println!(
            "- Through WLD: {:.2} KiB per open session in all, {added:.2} KiB more than \
             SoftHSM2 alone (target < {PER_SESSION_TARGET_KIB} KiB, {}).",
            per_session(wld),
            if per_session(wld) < PER_SESSION_TARGET_KIB {
                "met"
            } else {
                "MISSED"
            }
        );
        println!(
            "- Through WLD over {} operations: resident size {first} KiB before, {last} KiB \
             after ({:+} KiB).\n",
            plan.operations,
            last as i64 - first as i64
        );
    }
}
