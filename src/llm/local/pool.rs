//! The thread pool the packed matmuls and attention run on.
//!
//! The calling thread works too, and work is handed out in chunks through an
//! atomic cursor, so the caller never waits for a worker that has not
//! started: on a busy machine (speech recognition and synthesis run next to
//! the LLM) a descheduled worker just takes no part, instead of stalling
//! every matmul the way a spin barrier does. The caller waits only for
//! workers that took a share of the current job.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

type Task = dyn Fn(Range<usize>) + Sync;

/// A job as workers see it: raw pointers into the caller's stack frame,
/// valid while the job is posted (the caller withdraws it, and waits for
/// every worker that joined, before returning).
#[derive(Clone, Copy)]
struct Job {
    f: *const Task,
    cursor: *const AtomicUsize,
    n: usize,
    chunk: usize,
}

// SAFETY: see `Job`; the pointees are `Sync`.
unsafe impl Send for Job {}

struct State {
    job: Option<Job>,
    generation: u64,
    active: usize,
    panicked: bool,
}

struct Inner {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    posted: AtomicU64,
}

pub struct Pool {
    inner: Arc<Inner>,
    workers: usize,
    /// One job at a time (sessions on other threads queue here).
    call: Mutex<()>,
}

/// How long a worker polls for the next job before sleeping: a prefill
/// posts jobs back to back, microseconds apart.
const SPIN: std::time::Duration = std::time::Duration::from_micros(30);

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn drain(job: &Job) {
    // SAFETY: the job is posted, so the caller's frame is alive.
    let (f, cursor) = unsafe { (&*job.f, &*job.cursor) };
    loop {
        let start = cursor.fetch_add(job.chunk, Ordering::Relaxed);
        if start >= job.n {
            break;
        }
        f(start..job.n.min(start + job.chunk));
    }
}

fn worker(inner: Arc<Inner>) {
    let mut seen = 0u64;
    loop {
        let started = std::time::Instant::now();
        'spin: while started.elapsed() < SPIN {
            for _ in 0..32 {
                if inner.posted.load(Ordering::Acquire) != seen {
                    break 'spin;
                }
                std::hint::spin_loop();
            }
        }
        let mut st = lock(&inner.state);
        while st.job.is_none() || st.generation == seen {
            if st.job.is_none() && st.generation != seen {
                // Missed a whole job: nothing to do for it.
                seen = st.generation;
            }
            st = inner.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        seen = st.generation;
        let job = st.job.expect("posted job");
        st.active += 1;
        drop(st);
        let ok = catch_unwind(AssertUnwindSafe(|| drain(&job))).is_ok();
        let mut st = lock(&inner.state);
        st.active -= 1;
        st.panicked |= !ok;
        if st.active == 0 {
            inner.done.notify_all();
        }
    }
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                job: None,
                generation: 0,
                active: 0,
                panicked: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            posted: AtomicU64::new(0),
        });
        let workers = threads.saturating_sub(1);
        for i in 0..workers {
            let shared = inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("duplex-llm-{i}"))
                .spawn(move || worker(shared));
            if spawned.is_err() {
                return Pool {
                    inner,
                    workers: i,
                    call: Mutex::new(()),
                };
            }
        }
        Pool {
            inner,
            workers,
            call: Mutex::new(()),
        }
    }

    /// The process-wide pool: one thread per core (candle's count, so
    /// `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` apply), the caller being
    /// one of them.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads().max(1)))
    }

    /// Runs `f` over `0..n` in chunks, on the caller and the workers.
    pub fn run<F: Fn(Range<usize>) + Sync>(&self, n: usize, f: F) {
        if n == 0 {
            return;
        }
        if self.workers == 0 || n == 1 {
            f(0..n);
            return;
        }
        let _one = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = AtomicUsize::new(0);
        let chunk = n.div_ceil(4 * (self.workers + 1)).max(1);
        let task: &(dyn Fn(Range<usize>) + Sync + '_) = &f;
        // SAFETY: the lifetime is erased only while the job is posted; the
        // guard below withdraws it and waits for the workers before `f` and
        // `cursor` go out of scope, even if `f` panics here.
        let task: *const Task = unsafe {
            std::mem::transmute::<*const (dyn Fn(Range<usize>) + Sync + '_), *const Task>(task)
        };
        let job = Job {
            f: task,
            cursor: &cursor,
            n,
            chunk,
        };
        {
            let mut st = lock(&self.inner.state);
            st.generation += 1;
            st.job = Some(job);
            self.inner.posted.store(st.generation, Ordering::Release);
        }
        self.inner.work.notify_all();

        struct Withdraw<'a>(&'a Inner);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                let mut st = lock(&self.0.state);
                st.job = None;
                while st.active > 0 {
                    st = self.0.done.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                let panicked = std::mem::take(&mut st.panicked);
                drop(st);
                if panicked && !std::thread::panicking() {
                    panic!("an LLM worker thread panicked");
                }
            }
        }
        let _withdraw = Withdraw(&self.inner);
        drain(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once() {
        let pool = Pool::new(3);
        for n in [1usize, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.run(n, |r| {
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                "n={n}"
            );
        }
    }

    #[test]
    fn callers_on_several_threads_take_turns() {
        let pool = Arc::new(Pool::new(2));
        let total = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (pool, total) = (pool.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        pool.run(64, |r| {
                            total.fetch_add(r.len(), Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 64);
    }
}
