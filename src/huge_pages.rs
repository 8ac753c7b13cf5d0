//! Transparent huge pages for the models' memory.
//!
//! Every decode step reads whole weight matrices (whisper.cpp's, the LLM's,
//! ONNX Runtime's). With 4 KiB pages that costs a TLB miss every few KiB,
//! and on the 2-core VM this project is measured on, memory left unread for
//! a few hundred ms is slow to read again with 4 KiB pages, not with 2 MiB
//! ones. A 100 MiB sweep took 17-27 ms right after another and 170-600 ms
//! after 0.3-1 s asleep; with huge pages 7-15 ms either way. In the
//! pipeline's terms: a Whisper final decode right after a partial took
//! 219-249 ms instead of 272-338, a one-token end-of-turn score 10-19 ms
//! instead of 20-181 (after 0-300 ms idle).
//!
//! glibc's malloc advises huge pages (`MADV_HUGEPAGE`) for its large
//! mappings when the tunable `glibc.malloc.hugetlb=1` is set, and reads
//! tunables only when a program starts. So `duplex` sets it and executes
//! itself again, once, before anything else ([`restart_with_huge_pages`]).
//! A `GLIBC_TUNABLES` that already names `glibc.malloc.hugetlb` (`=0` turns
//! it off) is left alone. The kernel must allow huge pages on request:
//! `/sys/kernel/mm/transparent_hugepage/enabled` at `madvise` or `always`.

/// The glibc tunable that makes malloc advise huge pages.
const TUNABLE: &str = "glibc.malloc.hugetlb";

/// Executes this program again with `glibc.malloc.hugetlb=1` added to
/// `GLIBC_TUNABLES`, unless the variable already names that tunable.
/// Returns only when it does not restart (already set, or the exec failed:
/// a warning on stderr, and the program goes on without huge pages). Call
/// it first thing in `main`, before any thread starts.
#[cfg(target_os = "linux")]
pub fn restart_with_huge_pages() {
    use std::os::unix::process::CommandExt;
    let current = std::env::var_os("GLIBC_TUNABLES")
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    if current.contains(TUNABLE) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let tunables = if current.is_empty() {
        format!("{TUNABLE}=1")
    } else {
        format!("{current}:{TUNABLE}=1")
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let err = command.args(args).env("GLIBC_TUNABLES", tunables).exec();
    eprintln!(
        "warning: could not restart {} with huge pages ({err}); going on without them",
        exe.display()
    );
}

/// Huge pages through glibc's tunable are a Linux matter: elsewhere this
/// does nothing.
#[cfg(not(target_os = "linux"))]
pub fn restart_with_huge_pages() {}
