//! A small fork-join pool for the many short, back-to-back parallel steps of
//! a forward pass.
//!
//! Decoding one token runs a couple of hundred matrix products of a few
//! dozen microseconds each. A general-purpose pool that parks its workers
//! between jobs (rayon's global pool) pays a futex wake-up per product and
//! keeps the calling thread idle while it waits; on a two-core machine that
//! was a quarter of the time of a generated token. This pool works like
//! ggml's CPU threadpool instead: the calling thread takes tasks too, and
//! the workers spin on an epoch counter for a short while after each job
//! before they sleep, so the next product starts without a system call.
//!
//! The number of threads a job uses is rayon's (`current_num_threads()`),
//! so `rayon::ThreadPoolBuilder::build_global` and `ThreadPool::install`
//! keep deciding it. One job runs at a time; a job started while another
//! runs (two sessions on two threads, parallel tests) or from inside a task
//! goes to rayon instead, so it is never serialized behind the first.
//!
//! ```
//! let mut out = vec![0u32; 1000];
//! quant_kernels::pool::for_each_chunk_mut(&mut out, 100, |c, chunk| {
//!     for (i, v) in chunk.iter_mut().enumerate() {
//!         *v = (c * 100 + i) as u32;
//!     }
//! });
//! assert!(out.iter().enumerate().all(|(i, &v)| v as usize == i));
//! ```

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// One round of waiting: a pause instruction for the first rounds, then a
/// yield, so that a machine with more runnable threads than cores (parallel
/// test runs, a compiler in the background) gives the core to a thread with
/// work instead of spinning through its time slice.
#[inline]
fn relax(spins: u32) {
    if spins < 256 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// One job: tasks `0..n_tasks` of `f`, taken in order by whoever is free.
struct Job {
    /// The task body, its lifetime erased (the dispatcher outlives every use).
    f: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
    /// Workers with an index below this take part (the job's thread count - 1).
    n_workers: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Job {
    /// Takes and runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n_tasks {
                return;
            }
            // SAFETY: `f` points at the dispatcher's closure, which lives
            // until `done` reaches `n_tasks` and no worker is `busy`
            // (`Pool::run` waits for both before it returns).
            let f = unsafe { &*self.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Pool {
    /// Serializes dispatchers: one job at a time.
    dispatch: Mutex<()>,
    /// The current job, or null between jobs.
    job: AtomicPtr<Job>,
    /// Bumped once per job; workers wait for it to change.
    epoch: AtomicU64,
    /// Workers that may be looking at `job`.
    busy: AtomicUsize,
    /// Workers asleep on `wake` (changed under `sleep`).
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    /// Workers started so far.
    workers: Mutex<usize>,
}

thread_local! {
    /// Set on pool workers and while a thread dispatches a job.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        dispatch: Mutex::new(()),
        job: AtomicPtr::new(std::ptr::null_mut()),
        epoch: AtomicU64::new(0),
        busy: AtomicUsize::new(0),
        sleepers: AtomicUsize::new(0),
        sleep: Mutex::new(()),
        wake: Condvar::new(),
        workers: Mutex::new(0),
    })
}

impl Pool {
    /// Starts workers until there are `n` (never stops any).
    fn ensure_workers(&'static self, n: usize) -> usize {
        let mut started = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while *started < n {
            let index = *started;
            let spawned = std::thread::Builder::new()
                .name(format!("strata-worker-{index}"))
                .spawn(move || self.worker(index));
            if spawned.is_err() {
                break;
            }
            *started += 1;
        }
        *started
    }

    fn worker(&self, index: usize) {
        IN_POOL.with(|c| c.set(true));
        let mut seen = self.epoch.load(SeqCst);
        loop {
            // Wait for a new epoch: spin first, then sleep.
            let start = Instant::now();
            let mut spins = 0u32;
            while self.epoch.load(SeqCst) == seen {
                spins += 1;
                relax(spins);
                if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                    let guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, SeqCst);
                    let guard = self
                        .wake
                        .wait_while(guard, |_| self.epoch.load(SeqCst) == seen)
                        .unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_sub(1, SeqCst);
                    drop(guard);
                }
            }
            seen = self.epoch.load(SeqCst);
            self.busy.fetch_add(1, SeqCst);
            let job = self.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: `busy` was raised before `job` was read, so the
                // dispatcher that published it waits for this worker to
                // lower `busy` before the job leaves its stack.
                let job = unsafe { &*job };
                if index < job.n_workers {
                    job.work();
                }
            }
            self.busy.fetch_sub(1, SeqCst);
        }
    }

    /// Runs `job` on the calling thread and `job.n_workers` workers.
    fn run(&'static self, job: &Job) {
        self.job.store(job as *const Job as *mut Job, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        job.work();
        let mut spins = 0u32;
        while job.done.load(SeqCst) < job.n_tasks {
            spins += 1;
            relax(spins);
        }
        self.job.store(std::ptr::null_mut(), SeqCst);
        while self.busy.load(SeqCst) > 0 {
            spins += 1;
            relax(spins);
        }
    }
}

/// Runs `f(0)`, …, `f(n_tasks - 1)`, spread over the calling thread and the
/// pool's workers (rayon's `current_num_threads()` threads in all); returns
/// when every task is done. Tasks are handed out in order, one at a time,
/// to whichever thread is free. A panic in a task is re-raised here.
pub fn for_each_task(n_tasks: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads().min(n_tasks);
    if threads <= 1 {
        return (0..n_tasks).for_each(f);
    }
    let pool = pool();
    let nested = IN_POOL.with(|c| c.get());
    let guard = if nested {
        None
    } else {
        pool.dispatch.try_lock().ok()
    };
    let Some(_guard) = guard else {
        // Busy with another job, or called from a task: rayon shares out this one.
        use rayon::prelude::*;
        return (0..n_tasks).into_par_iter().for_each(&f);
    };
    let n_workers = pool.ensure_workers(threads - 1).min(threads - 1);
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: only the lifetime is erased; `Pool::run` returns after the
    // last use of `f` by any thread (see `Job::work`).
    let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let job = Job {
        f,
        n_tasks,
        n_workers,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    IN_POOL.with(|c| c.set(true));
    pool.run(&job);
    IN_POOL.with(|c| c.set(false));
    if job.panicked.load(SeqCst) {
        panic!("a task of a parallel job panicked");
    }
}

/// A raw pointer that may cross threads; users guarantee disjoint access.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `SendPtr`).
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only used by `for_each_chunk_mut` and `row_chunks`, whose tasks
// touch disjoint parts of one exclusively borrowed slice of `Send` elements.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Splits `data` into chunks of `chunk` elements (the last may be shorter)
/// and runs `f(index, chunk)` on each in parallel, as [`for_each_task`].
///
/// # Panics
/// If `chunk` is zero.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "for_each_chunk_mut: chunk size is zero");
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each_task(len.div_ceil(chunk), move |c| {
        let start = c * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk `c` is `start..start + n`, inside `data` and disjoint
        // from every other task's chunk; `data` stays exclusively borrowed
        // until `for_each_task` returns.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(c, part);
    });
}

/// Runs `f` on a zeroed scratch tile of `len` floats kept per thread, so
/// the many products of a forward pass do not each allocate (and page-fault
/// in) fresh tiles.
fn with_tile(len: usize, f: impl FnOnce(&mut [f32])) {
    thread_local! {
        static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    TILE.with(|t| match t.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            v.resize(len, 0.0);
            f(&mut v)
        }
        // A task that itself runs a product on this thread: a fresh tile.
        Err(_) => f(&mut vec![0.0f32; len]),
    })
}

/// A batched product's parallel loop, for kernels that work on a chunk of
/// weight rows against every activation row: the output `y` is `n` rows of
/// `rows` (activation-major, as the callers want it); `f(r0, tile)` fills
/// `tile[i·n + b]` for weight rows `r0..r0 + tile.len() / n` (`chunk` rows,
/// fewer in the last chunk), and each task writes its tile into its own
/// columns of `y`, so no serial transpose follows the parallel part.
///
/// # Panics
/// If `chunk` or `n` is zero or `y.len() != rows · n`.
pub fn for_each_row_chunk_transposed(
    y: &mut [f32],
    rows: usize,
    n: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    row_chunks(y, rows, n, chunk, f, |tile, _, b, dst| {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = tile[i * n + b];
        }
    })
}

/// As [`for_each_row_chunk_transposed`], for kernels that fill their tile
/// activation-major: `f(r0, tile)` writes `tile[b·nrows + i]` for weight row
/// `r0 + i` and activation row `b` (`nrows = tile.len() / n`), and each
/// task copies its tile's `n` runs into `y` whole.
///
/// # Panics
/// If `chunk` or `n` is zero or `y.len() != rows · n`.
pub fn for_each_row_chunk_columns(
    y: &mut [f32],
    rows: usize,
    n: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    row_chunks(y, rows, n, chunk, f, |tile, nrows, b, dst| {
        dst.copy_from_slice(&tile[b * nrows..][..nrows])
    })
}

/// One task's columns of a batched product's output: for activation row
/// `b < n`, the outputs of weight rows `r0..r0 + nrows` are the run of
/// `nrows` floats at `b·stride` from [`ColumnBlock::as_mut_ptr`]. Runs of
/// different tasks never overlap, so each task writes its outputs straight
/// into `y` ([`for_each_row_chunk_direct`]).
pub struct ColumnBlock<'a> {
    ptr: *mut f32,
    stride: usize,
    nrows: usize,
    n: usize,
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> ColumnBlock<'a> {
    /// The whole of `out` as `n` runs of `out.len() / n` (stride the same).
    ///
    /// # Panics
    /// If `n` is zero or does not divide `out.len()`.
    pub fn new(out: &'a mut [f32], n: usize) -> Self {
        assert!(
            n > 0 && out.len().is_multiple_of(n),
            "ColumnBlock: {} floats in {n} runs",
            out.len()
        );
        ColumnBlock {
            ptr: out.as_mut_ptr(),
            stride: out.len() / n,
            nrows: out.len() / n,
            n,
            _y: std::marker::PhantomData,
        }
    }

    /// Outputs per activation row (the run's length).
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Activation rows (runs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Floats from one run's start to the next one's.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Activation row `b`'s run.
    ///
    /// # Panics
    /// If `b >= n`.
    pub fn row_mut(&mut self, b: usize) -> &mut [f32] {
        assert!(b < self.n);
        // SAFETY: run `b` lies inside the block's `y` and belongs to this
        // block alone (`new`, `for_each_row_chunk_direct`); `&mut self`
        // keeps it the only reference made through this block.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(b * self.stride), self.nrows) }
    }

    /// The start of run 0: element `i < nrows` of run `b < n` is writable at
    /// `b·stride + i` from it, while the block is borrowed mutably.
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr
    }
}

/// As [`for_each_row_chunk_columns`], for kernels that write their outputs
/// in place: `f(r0, block)` writes, for weight rows `r0..r0 + block.nrows()`,
/// every activation row's outputs into `y` itself, with no tile and no copy.
///
/// # Panics
/// If `chunk` or `n` is zero or `y.len() != rows · n`.
pub fn for_each_row_chunk_direct(
    y: &mut [f32],
    rows: usize,
    n: usize,
    chunk: usize,
    f: impl Fn(usize, ColumnBlock<'_>) + Sync,
) {
    assert!(
        chunk > 0 && n > 0 && y.len() == rows * n,
        "for_each_row_chunk_direct: bad shape ({} outputs for {rows} rows × {n}, chunk {chunk})",
        y.len()
    );
    let base = SendPtr(y.as_mut_ptr());
    for_each_task(rows.div_ceil(chunk), move |c| {
        let r0 = c * chunk;
        let block = ColumnBlock {
            // SAFETY: `r0 < rows`, inside `y`.
            ptr: unsafe { base.get().add(r0) },
            stride: rows,
            nrows: chunk.min(rows - r0),
            n,
            _y: std::marker::PhantomData,
        };
        // Columns `r0..r0 + nrows` of every run are this task's alone, and
        // `y` stays exclusively borrowed until `for_each_task` returns.
        f(r0, block)
    });
}

/// The two `for_each_row_chunk_*`: one task per chunk of `chunk` weight
/// rows, a per-thread tile, and `copy(tile, nrows, b, dst)` writing the
/// tile's part of output row `b` into `dst` (that row's `nrows` columns
/// from `r0`). With one activation row the tile is the output itself.
fn row_chunks(
    y: &mut [f32],
    rows: usize,
    n: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
    copy: impl Fn(&[f32], usize, usize, &mut [f32]) + Sync,
) {
    assert!(
        chunk > 0 && n > 0 && y.len() == rows * n,
        "for_each_row_chunk: bad shape ({} outputs for {rows} rows × {n}, chunk {chunk})",
        y.len()
    );
    if n == 1 {
        return for_each_chunk_mut(y, chunk, |c, tile| f(c * chunk, tile));
    }
    let base = SendPtr(y.as_mut_ptr());
    for_each_task(rows.div_ceil(chunk), move |c| {
        let r0 = c * chunk;
        let nrows = chunk.min(rows - r0);
        with_tile(nrows * n, |tile| {
            f(r0, tile);
            for b in 0..n {
                // SAFETY: `b·rows + r0 .. + nrows` lies inside `y` (`r0 + nrows
                // <= rows`, `b < n`), and columns `r0..r0 + nrows` belong to this
                // task alone; `y` stays exclusively borrowed until
                // `for_each_task` returns.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(base.get().add(b * rows + r0), nrows) };
                copy(tile, nrows, b, dst);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        pool.install(|| {
            for n in [0usize, 1, 2, 3, 7, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each_task(n, |i| {
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
            }
        });
    }

    #[test]
    fn chunks_cover_the_slice() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            let mut v = vec![0usize; 1001];
            for_each_chunk_mut(&mut v, 10, |c, part| {
                for (i, x) in part.iter_mut().enumerate() {
                    *x = c * 10 + i + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1));
        });
    }

    #[test]
    fn transposed_chunks_fill_every_column() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            let (rows, n) = (37, 5);
            let mut y = vec![0.0f32; rows * n];
            for_each_row_chunk_transposed(&mut y, rows, n, 8, |r0, tile| {
                for (i, row) in tile.chunks_mut(n).enumerate() {
                    for (b, v) in row.iter_mut().enumerate() {
                        *v = ((r0 + i) * 100 + b) as f32;
                    }
                }
            });
            for b in 0..n {
                for r in 0..rows {
                    assert_eq!(y[b * rows + r], (r * 100 + b) as f32);
                }
            }
        });
    }

    #[test]
    fn column_chunks_fill_every_column() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            let (rows, n) = (37, 5);
            let mut y = vec![0.0f32; rows * n];
            for_each_row_chunk_columns(&mut y, rows, n, 8, |r0, tile| {
                let nrows = tile.len() / n;
                for (b, col) in tile.chunks_mut(nrows).enumerate() {
                    for (i, v) in col.iter_mut().enumerate() {
                        *v = ((r0 + i) * 100 + b) as f32;
                    }
                }
            });
            for b in 0..n {
                for r in 0..rows {
                    assert_eq!(y[b * rows + r], (r * 100 + b) as f32);
                }
            }
        });
    }

    #[test]
    fn concurrent_and_nested_jobs_complete() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        pool.install(|| {
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        for _ in 0..200 {
                            let total = AtomicUsize::new(0);
                            for_each_task(8, |_| {
                                for_each_task(4, |_| {
                                    total.fetch_add(1, SeqCst);
                                });
                            });
                            assert_eq!(total.load(SeqCst), 32);
                        }
                    });
                }
            });
        });
    }

    #[test]
    fn a_panicking_task_is_reported() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r =
            pool.install(|| std::panic::catch_unwind(|| for_each_task(4, |i| assert_ne!(i, 2))));
        assert!(r.is_err());
        // The pool still works afterwards.
        pool.install(|| {
            let n = AtomicUsize::new(0);
            for_each_task(10, |_| {
                n.fetch_add(1, SeqCst);
            });
            assert_eq!(n.load(SeqCst), 10);
        });
    }
}
