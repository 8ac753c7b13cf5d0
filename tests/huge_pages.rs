//! `duplex` backs its large allocations with transparent huge pages: it
//! restarts itself once with glibc's `glibc.malloc.hugetlb=1` tunable.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The kernel lets a process ask for huge pages (`madvise` or `always`).
fn huge_pages_on_request() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[madvise]") || mode.contains("[always]"))
}

#[test]
fn duplex_serve_runs_with_huge_pages_for_its_models() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["serve", "--pipeline", "pipelines/voice.toml"])
        .args(["--addr", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env_remove("GLIBC_TUNABLES")
        .env_remove("DUPLEX_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn duplex serve");
    let stderr = child.stderr.take().expect("stderr");
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = ready_tx.send(());
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(120));
    // Exec keeps the process id: this is the restarted program.
    let pid = child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.is_ok(), "duplex serve did not start");
    let environ = String::from_utf8_lossy(&environ);
    let tunables: Vec<&str> = environ
        .split('\0')
        .filter(|var| var.starts_with("GLIBC_TUNABLES="))
        .collect();
    assert_eq!(
        tunables,
        ["GLIBC_TUNABLES=glibc.malloc.hugetlb=1"],
        "the server restarts itself with the tunable"
    );
    if huge_pages_on_request() {
        let huge_kb: u64 = smaps
            .lines()
            .find_map(|line| line.strip_prefix("AnonHugePages:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        println!("AnonHugePages of duplex serve: {huge_kb} kB");
        assert!(
            huge_kb >= 8 * 1024,
            "the loaded models sit on huge pages: {huge_kb} kB\n{smaps}"
        );
    } else {
        println!("transparent huge pages are off in this kernel: only the tunable is checked");
    }
}
