//! A wall-clock profile of p11wld under load. A worker runs under
//! `perf record` with the software cpu-clock event, which works where the
//! hardware counters are not available (virtual machines). The report
//! lists where the time goes, by shared object and by function.

use crate::ops::Op;
use crate::setup::{Target, Tokens};
use std::path::Path;
use std::process::Command;

/// Functions listed per operation.
const TOP_FUNCTIONS: usize = 25;

/// Runs each of `ops` with `threads` threads for `millis` through p11wld
/// over SoftHSM2 with three members under `perf record`, and prints the
/// share of the samples per shared object and the functions of p11wld and
/// the C library. The perf files stay in `out_dir`.
pub fn run(
    tokens: &Tokens,
    ops: &[Op],
    threads: usize,
    millis: u64,
    out_dir: &Path,
) -> Result<(), String> {
    let target = Target::wld("WLD, three members", &tokens.three);
    println!("### Profile (perf record -e cpu-clock)\n");
    println!(
        "Through p11wld over SoftHSM2 with three members, {threads} threads, {millis} ms per \
         operation. Output files: {}.\n",
        out_dir.display()
    );
    for &op in ops {
        let file = out_dir.join(format!("perf.{}.data", op.name()));
        eprintln!("  perf: {} with {threads} thread(s)", op.name());
        let wrapper = vec![
            "perf".to_owned(),
            "record".to_owned(),
            "--quiet".to_owned(),
            "-e".to_owned(),
            "cpu-clock".to_owned(),
            "-o".to_owned(),
            file.display().to_string(),
            "--".to_owned(),
        ];
        let mut worker = target.spawn(&wrapper)?;
        worker.command(&format!("run {} {threads} {millis}", op.name()))?;
        worker.quit()?;
        println!("#### {}\n", op.name());
        println!("```");
        print!("{}", report(&file, "dso")?);
        println!();
        let functions = report(&file, "dso,sym")?;
        for line in functions
            .lines()
            .filter(|line| line.contains("libp11wld") || line.contains("libc.so"))
            .take(TOP_FUNCTIONS)
        {
            println!("{line}");
        }
        println!("```\n");
    }
    Ok(())
}

/// Returns perf's report of `file` sorted by `keys`, without comment lines.
fn report(file: &Path, keys: &str) -> Result<String, String> {
    let output = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(file)
        .args([
            "--stdio",
            "--no-children",
            "--percent-limit",
            "0.5",
            "--sort",
            keys,
        ])
        .output()
        .map_err(|e| format!("cannot run perf report: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "perf report failed on {}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| format!("{line}\n"))
        .collect())
}
