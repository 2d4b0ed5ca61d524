//! System calls that write, as the kernel counts them for the whole
//! process (`syscw` in `/proc/self/io`, Linux only): `write` and `writev`.
//! That is every socket write (tokio writes to sockets with them; client
//! and servers share the benchmark process, so both sides of every
//! connection), and also every wake-up of a worker parked in the runtime's
//! I/O driver (a `write` to its eventfd). It is therefore not the count of
//! socket writes alone, and not comparable with a count of `writev` only.

/// Write system calls made by this process so far; `None` where the kernel
/// does not report them.
///
/// ```
/// let before = fyerrpc_benches::writes::count();
/// if let (Some(a), Some(b)) = (before, fyerrpc_benches::writes::count()) {
///     assert!(b >= a);
/// }
/// ```
pub fn count() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn writes_to_a_file_are_counted() {
        let Some(before) = super::count() else {
            return; // not reported on this system
        };
        let mut f = unlinked_temp_file();
        for _ in 0..10 {
            let _ = f.write_all(b"x");
        }
        let after = super::count().unwrap_or(0);
        assert!(after >= before + 10, "{before} -> {after}");
    }

    fn unlinked_temp_file() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("fyerrpc-writes-{}", std::process::id()));
        let f = std::fs::File::create(&path).expect("a writable temporary directory");
        let _ = std::fs::remove_file(&path);
        f
    }
}
