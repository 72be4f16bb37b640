//! Memory and CPU time of a process from `/proc`, for benchmarks that report what a component
//! costs (`modelfleet-e2e bench-start`, bench-live, the operator's and agent's benches).

/// Resident set size of a process in MiB, from /proc (0 when unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmRSS:")
}

/// A memory line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` for the peak, …) in MiB; 0 when
/// unreadable.
pub fn proc_status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat`; 0 when
/// unreadable.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat (11 and 12 after the command);
    // Linux counts them in 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}
