//! CPU time of a process from /proc (Linux), for CPU-seconds-per-request figures.

/// User + system CPU seconds used so far by `pid` ("self" for this process).
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing paren.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the paren.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks; USER_HZ is 100 on every Linux ABI we run on.
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let before = super::process_cpu_seconds("self").unwrap();
        // Spin until /proc shows 50 ms more CPU (bounded by wall time, so a
        // reading that never grows fails instead of hanging).
        let mut x = 0u64;
        let start = std::time::Instant::now();
        let mut after = before;
        while after - before < 0.05 && start.elapsed().as_secs() < 20 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
            after = super::process_cpu_seconds("self").unwrap();
        }
        std::hint::black_box(x);
        assert!(after - before >= 0.05, "{before} → {after}");
        assert!(after - before < 30.0, "{before} → {after}: not seconds");
    }
}
