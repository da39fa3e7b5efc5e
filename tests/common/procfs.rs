//! Process groups as Linux shows them in `/proc`.

use std::thread;
use std::time::{Duration, Instant};

const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessState {
    pub pid: i32,
    /// Single-letter state: `R` running, `S` sleeping, `T` stopped, `Z` zombie, ...
    pub state: char,
}

/// Polls the live members of group `pgid` until `done` returns true, at most
/// for `timeout`. Returns whether `done` returned true.
pub fn wait_for_group(
    pgid: i32,
    timeout: Duration,
    done: impl Fn(&[ProcessState]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done(&live_group_members(pgid)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Lists the processes in group `pgid` that are not zombies, from `/proc`.
///
/// Zombies are left out: a killed `p11-kit-remote` whose parent server died
/// too is reparented and stays a zombie until its new parent reaps it.
pub fn live_group_members(pgid: i32) -> Vec<ProcessState> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // The process can exit between read_dir and this read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, group)) = parse_stat(&stat) {
            if group == pgid && state != 'Z' && state != 'X' {
                members.push(ProcessState { pid, state });
            }
        }
    }
    members.sort_by_key(|p| p.pid);
    members
}

/// Parses the state and the process group id from `/proc/<pid>/stat`:
/// `pid (comm) state ppid pgrp ...`. The command name can contain spaces
/// and parentheses, so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}
