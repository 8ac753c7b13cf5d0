//! Huge pages for the models' weights.
//!
//! Every decode step reads whole weight matrices (whisper.cpp's, the LLM's,
//! ONNX Runtime's). With 4 KiB pages that costs a TLB miss every few KiB,
//! and on the 2-core VM this project is measured on, memory left unread for
//! a few hundred ms is slow to read again with 4 KiB pages, not with 2 MiB
//! ones: a 100 MiB sweep took 17-27 ms right after another and 170-600 ms
//! after 0.3-1 s asleep; with huge pages 7-15 ms either way.
//!
//! [`collapse_resident_memory`] asks the kernel (`MADV_COLLAPSE`, Linux 6.1
//! and later) to move the process's large, fully written anonymous mappings
//! into huge pages, once, after a model is loaded: the weights are such
//! mappings, and nothing else is large and resident that early. The
//! mappings are not marked `MADV_HUGEPAGE`, so memory faulted in later
//! (decoding scratch, synthesized audio) stays on 4 KiB pages: handing every
//! large allocation huge pages (glibc's `glibc.malloc.hugetlb=1`) made the
//! kernel compact memory on Piper's transient buffers and slowed its first
//! audio by 20-120 ms.
//!
//! Measured with `duplex run` of the ten test clips through VAD -> whisper
//! -> end_of_turn, two alternating runs each way: an end-of-turn score took
//! a median 22 and 20 ms with the collapse, 31 and 30 ms without; the
//! whisper finals were no different within this machine's noise.
//!
//! Best effort: where the kernel or its settings refuse (older kernel,
//! `transparent_hugepage/enabled = never`, no free huge pages), the memory
//! stays as it was and the reason is logged at debug level.

/// Mappings smaller than this are not worth a huge page's copy.
const MIN_MAPPING_BYTES: u64 = 4 << 20;

/// A mapping is "fully written" when at least this share of it (percent) is
/// resident: collapsing fills the holes with zeroed memory, so sparse ones
/// (thread stacks, malloc arenas) are left alone.
const MIN_RESIDENT_PERCENT: u64 = 90;

/// The huge page size of x86-64 and most aarch64 kernels.
const HUGE_PAGE: u64 = 2 << 20;

/// What [`collapse_resident_memory`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collapsed {
    /// Bytes the kernel moved into huge pages (or found already in them).
    pub bytes: u64,
    /// Bytes of eligible mappings it refused.
    pub refused_bytes: u64,
}

/// One anonymous mapping of `/proc/self/smaps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    resident: u64,
    /// Bytes of it on transparent huge pages (`AnonHugePages`).
    huge: u64,
}

/// The private, writable, anonymous mappings of an smaps text, with their
/// resident bytes.
fn anonymous_mappings(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            // "start-end perms offset dev inode [path]": a new mapping.
            out.extend(current.take());
            let perms = fields.next().unwrap_or("");
            let inode = fields.nth(2).unwrap_or("");
            let path = fields.next().unwrap_or("");
            let anonymous = inode == "0" && (path.is_empty() || path == "[heap]");
            if perms.starts_with("rw") && perms.ends_with('p') && anonymous {
                current = Some(Mapping {
                    start,
                    end,
                    resident: 0,
                    huge: 0,
                });
            }
        } else if let Some(mapping) = current.as_mut() {
            let mut bytes = || {
                fields
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            match first {
                "Rss:" => mapping.resident = bytes(),
                "AnonHugePages:" => mapping.huge = bytes(),
                _ => {}
            }
        }
    }
    out.extend(current);
    out
}

/// The huge-page-aligned part of each large, fully written mapping.
fn collapsible(mappings: &[Mapping]) -> Vec<(u64, u64)> {
    mappings
        .iter()
        .filter(|m| {
            let size = m.end - m.start;
            size >= MIN_MAPPING_BYTES && m.resident * 100 >= size * MIN_RESIDENT_PERCENT
        })
        .filter_map(|m| {
            let start = m.start.div_ceil(HUGE_PAGE) * HUGE_PAGE;
            let end = m.end / HUGE_PAGE * HUGE_PAGE;
            (end > start).then_some((start, end))
        })
        .collect()
}

/// Moves the process's large, fully written anonymous mappings (the loaded
/// models' weights) into huge pages. Takes tens of ms per 100 MiB; call it
/// after loading models, not on a hot path.
#[cfg(target_os = "linux")]
pub fn collapse_resident_memory() -> Collapsed {
    let smaps = match std::fs::read_to_string("/proc/self/smaps") {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!("huge pages: cannot read /proc/self/smaps: {e}");
            return Collapsed::default();
        }
    };
    let mut done = Collapsed::default();
    for (start, end) in collapsible(&anonymous_mappings(&smaps)) {
        // SAFETY: the range lies inside one of this process's private
        // anonymous mappings; MADV_COLLAPSE keeps its contents.
        let rc = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                (end - start) as usize,
                libc::MADV_COLLAPSE,
            )
        };
        if rc == 0 {
            done.bytes += end - start;
        } else {
            let err = std::io::Error::last_os_error();
            tracing::debug!("huge pages: MADV_COLLAPSE of {start:#x}-{end:#x} refused: {err}");
            done.refused_bytes += end - start;
        }
    }
    tracing::debug!(
        "huge pages: {} MiB collapsed, {} MiB refused",
        done.bytes >> 20,
        done.refused_bytes >> 20
    );
    done
}

/// Huge pages through `MADV_COLLAPSE` are a Linux matter: elsewhere this
/// does nothing.
#[cfg(not(target_os = "linux"))]
pub fn collapse_resident_memory() -> Collapsed {
    Collapsed::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0400000 rw-p 00000000 00:00 0                          [heap]
Size:               4096 kB
Rss:                4000 kB
7f0000000000-7f0003200000 rw-p 00000000 00:00 0 
Size:              51200 kB
Rss:               51200 kB
AnonHugePages:     49152 kB
7f0003200000-7f0003a00000 rw-p 00000000 00:00 0 
Size:               8192 kB
Rss:                  12 kB
7f0004000000-7f0006000000 r--p 00000000 08:01 1234                       /models/weights.bin
Size:              32768 kB
Rss:               32768 kB
7f0006001000-7f0006801000 rw-p 00000000 00:00 0 
Size:               8192 kB
Rss:                8192 kB
7f0007000000-7f0007800000 rw-s 00000000 00:01 99                         /dev/zero (deleted)
Size:               8192 kB
Rss:                8192 kB
";

    #[test]
    fn only_private_writable_anonymous_mappings_are_read() {
        let maps = anonymous_mappings(SMAPS);
        let starts: Vec<u64> = maps.iter().map(|m| m.start).collect();
        assert_eq!(
            starts,
            vec![
                0x55d0c0000000,
                0x7f0000000000,
                0x7f0003200000,
                0x7f0006001000
            ]
        );
        assert_eq!(maps[1].resident, 51200 * 1024);
        assert_eq!(maps[1].huge, 49152 * 1024);
        assert_eq!(maps[2].resident, 12 * 1024);
        assert_eq!(maps[2].huge, 0);
    }

    #[test]
    fn large_resident_mappings_are_collapsed_on_huge_page_bounds() {
        let ranges = collapsible(&anonymous_mappings(SMAPS));
        assert_eq!(
            ranges,
            vec![
                // The heap: 4 MiB, 97% resident.
                (0x55d0c0000000, 0x55d0c0400000),
                // The weights: 50 MiB, all resident.
                (0x7f0000000000, 0x7f0003200000),
                // Not on a 2 MiB boundary: the whole pages inside only.
                (0x7f0006200000, 0x7f0006800000),
            ]
        );
    }

    /// Whether this kernel collapses on request: `MADV_COLLAPSE` came in
    /// Linux 6.1, and transparent huge pages must not be `never`.
    #[cfg(target_os = "linux")]
    fn kernel_collapses() -> bool {
        let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut version = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
        !enabled.is_empty() && !enabled.contains("[never]") && (major, minor) >= (6, 1)
    }

    /// `AnonHugePages` of the mapping that holds `address`, in bytes.
    #[cfg(target_os = "linux")]
    fn huge_bytes_at(address: u64) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        anonymous_mappings(&smaps)
            .iter()
            .find(|m| (m.start..m.end).contains(&address))
            .map_or(0, |m| m.huge)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_written_buffer_is_collapsed_and_keeps_its_contents() {
        let weights: Vec<u64> = (0..(16u64 << 20) / 8).collect();
        let done = collapse_resident_memory();
        assert!(weights.iter().enumerate().all(|(i, &v)| v == i as u64));
        if !kernel_collapses() {
            eprintln!("this kernel does not collapse on request: {done:?}");
            return;
        }
        let huge = huge_bytes_at(weights.as_ptr() as u64);
        assert!(
            huge >= 12 << 20,
            "{} MiB of the 16 MiB buffer on huge pages ({done:?})",
            huge >> 20
        );
    }
}
