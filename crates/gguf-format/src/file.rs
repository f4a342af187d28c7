//! Files on disk: opening a model (mapped or read into memory) only if it is
//! a regular file, naming the file when a mapping faults, and writing outputs
//! so that they never destroy an input.
//!
//! # Why a SIGBUS handler
//!
//! A memory map reads the file lazily: when the file is truncated (or
//! rewritten shorter) while mapped, touching a page past its new end raises
//! `SIGBUS`, and the default action kills the process without a word. No
//! Rust-level check can prevent it — the bytes vanish between any check and
//! the load. [`install_sigbus_handler`] lets a program (the `strata` binary)
//! turn that into one line naming the file, then `_exit(1)`: a fault in the
//! middle of a kernel cannot be resumed or unwound, so ending the process
//! cleanly is the best that can be done. Faults outside the files this crate
//! mapped keep the default action. The alternative is not to map at all:
//! [`GgufFile::read`] copies the file into memory (`--no-mmap`).

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::error::{GgufError, Result};
use crate::reader::Gguf;

/// The bytes of a GGUF file: a read-only memory map of it, or a copy read
/// into memory.
pub struct FileData {
    inner: Inner,
    /// This map's slot in the fault registry (mapped files only).
    slot: Option<usize>,
}

enum Inner {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl FileData {
    /// Whether the bytes are a memory map of the file (else a copy in memory).
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped(_))
    }
}

impl AsRef<[u8]> for FileData {
    fn as_ref(&self) -> &[u8] {
        match &self.inner {
            Inner::Mapped(m) => m,
            Inner::Read(v) => v,
        }
    }
}

impl std::fmt::Debug for FileData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileData")
            .field("mapped", &self.is_mapped())
            .field("len", &self.as_ref().len())
            .finish()
    }
}

impl Drop for FileData {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            unregister(slot);
        }
    }
}

/// A GGUF file on disk: mapped ([`GgufFile::open`]) or read into memory
/// ([`GgufFile::read`]).
pub type GgufFile = Gguf<FileData>;

fn io_error(path: &Path, source: std::io::Error) -> GgufError {
    GgufError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What kind of file `t` is, for messages.
fn kind_of(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file, without blocking on a
/// FIFO: the type is checked before opening, and again on the open file.
pub fn open_regular(path: &Path) -> Result<File> {
    let not_regular = |t: std::fs::FileType| {
        io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("is {}, not a regular file", kind_of(t)),
            ),
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Swapped for a FIFO after the check, the open still returns at once.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    Ok(file)
}

impl GgufFile {
    /// Maps the file at `path` (once) and parses it.
    ///
    /// `path` must be a regular file (a directory or FIFO is an error, not a
    /// hang). The map is read-only; if the file is truncated while mapped,
    /// reading past its new end raises `SIGBUS` (see
    /// [`install_sigbus_handler`]).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = open_regular(path)?;
        // SAFETY: the map is read-only. A file truncated while mapped raises
        // SIGBUS on access, never a wrong value; install_sigbus_handler turns
        // that into a clear message.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| {
            // Some regular-looking files (/proc, some network or FUSE
            // mounts) cannot be mapped: say so, rather than a bare errno.
            io_error(
                path,
                std::io::Error::new(
                    e.kind(),
                    format!("cannot be memory-mapped ({e}); --no-mmap reads it instead"),
                ),
            )
        })?;
        let slot = register(&mmap, path);
        Gguf::from_data(FileData {
            inner: Inner::Mapped(mmap),
            slot,
        })
    }

    /// Reads the whole file at `path` into memory and parses it: no map, so
    /// a file changed later cannot disturb this process (`--no-mmap`).
    ///
    /// The file's size is checked against the memory available first, so a
    /// file too large is an error naming both sizes rather than a process
    /// killed for memory.
    pub fn read(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let mut file = open_regular(path)?;
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if let Some(avail) = available_memory() {
            if len > avail {
                return Err(io_error(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::OutOfMemory,
                        format!(
                            "reading {len} bytes into memory needs more than the {avail} bytes available (map it instead)"
                        ),
                    ),
                ));
            }
        }
        let mut data = Vec::new();
        data.try_reserve_exact(len as usize).map_err(|e| {
            io_error(
                path,
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, e.to_string()),
            )
        })?;
        // O_NONBLOCK has no effect on a regular file; one that grows while
        // being read is read to its end.
        file.read_to_end(&mut data).map_err(|e| io_error(path, e))?;
        Gguf::from_data(FileData {
            inner: Inner::Read(data),
            slot: None,
        })
    }

    /// [`GgufFile::open`] if `mmap`, else [`GgufFile::read`].
    pub fn open_with(path: impl AsRef<Path>, mmap: bool) -> Result<GgufFile> {
        if mmap {
            GgufFile::open(path)
        } else {
            GgufFile::read(path)
        }
    }

    /// Whether the file is memory-mapped (else read into memory).
    pub fn is_mapped(&self) -> bool {
        self.storage().is_mapped()
    }
}

/// Bytes of memory this process can still use, as far as the system says
/// (`MemAvailable` and `SwapFree` in `/proc/meminfo`, capped by a cgroup v2
/// `memory.max` and by an address-space limit); `None` where that is unknown (then only the allocator's own
/// failure stops an allocation). An estimate: callers compare it with the
/// size of an allocation they are about to make, to fail fast with a message
/// naming both, instead of filling memory until the system kills the process.
pub fn available_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        };
        let mut avail = kib("MemAvailable:")?.saturating_mul(1024);
        avail = avail.saturating_add(kib("SwapFree:").unwrap_or(0).saturating_mul(1024));
        let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let (Some(max), Some(used)) = (cgroup, used) {
            avail = avail.min(max.saturating_sub(used));
        }
        // An address-space limit (`ulimit -v`) fails allocations beyond it.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the limit into a valid rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY
        {
            let pages: Option<u64> = std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
            let mapped = pages.unwrap_or(0).saturating_mul(page);
            avail = avail.min(limit.rlim_cur.saturating_sub(mapped));
        }
        Some(avail)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

// ---------------------------------------------------------------------------
// Mapped ranges, for the SIGBUS handler.

/// How many maps the fault handler can name at once (more are mapped all the
/// same; a fault in one of them is then reported without its path).
const SLOTS: usize = 32;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    /// A leaked, NUL-free path (bytes) and its length; null when free.
    path: AtomicPtr<u8>,
    path_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    path: AtomicPtr::new(std::ptr::null_mut()),
    path_len: AtomicUsize::new(0),
};

static MAPS: [Slot; SLOTS] = [EMPTY_SLOT; SLOTS];

fn register(map: &memmap2::Mmap, path: &Path) -> Option<usize> {
    if map.is_empty() {
        return None;
    }
    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    let bytes: Box<[u8]> = shown.display().to_string().into_bytes().into_boxed_slice();
    for (i, slot) in MAPS.iter().enumerate() {
        // Claim a free slot by its length going from 0 to the map's length.
        if slot
            .len
            .compare_exchange(0, map.len(), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.start.store(map.as_ptr() as usize, Ordering::Release);
            let len = bytes.len();
            let ptr = Box::into_raw(bytes) as *mut u8;
            slot.path_len.store(len, Ordering::Release);
            slot.path.store(ptr, Ordering::Release);
            return Some(i);
        }
    }
    None
}

/// Frees slot `i`. Its path is leaked, not freed: a handler running on
/// another thread may still be reading it, and a path per opened file is small.
fn unregister(i: usize) {
    let slot = &MAPS[i];
    slot.path.store(std::ptr::null_mut(), Ordering::Release);
    slot.path_len.store(0, Ordering::Release);
    slot.start.store(0, Ordering::Release);
    slot.len.store(0, Ordering::Release);
}

/// Installs a `SIGBUS` handler that, for a fault inside a file this crate
/// mapped (the file was truncated or replaced in place while in use),
/// writes one line to standard error —
/// `"{prefix}{path}: the file changed while mapped (truncated or rewritten in place); ..."`
/// — and ends the process with exit status 1. Faults elsewhere keep the
/// default action. For programs, not libraries: a signal handler is
/// process-wide. See the module docs for why ending the process is the
/// right response. A no-op on platforms without `SIGBUS`.
pub fn install_sigbus_handler(prefix: &'static str) {
    #[cfg(unix)]
    sigbus::install(prefix);
    #[cfg(not(unix))]
    let _ = prefix;
}

#[cfg(unix)]
mod sigbus {
    use super::{Ordering, MAPS};
    use std::sync::atomic::AtomicPtr;

    static PREFIX: AtomicPtr<&'static str> = AtomicPtr::new(std::ptr::null_mut());

    pub(super) fn install(prefix: &'static str) {
        PREFIX.store(Box::into_raw(Box::new(prefix)), Ordering::Release);
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // starting point; the handler below only calls async-signal-safe
        // functions (write, _exit, sigaction).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }

    fn write_all(bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            // SAFETY: writing a valid buffer to fd 2.
            let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return;
            }
            rest = &rest[n as usize..];
        }
    }

    extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t to SA_SIGINFO handlers.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let addr = unsafe { (*info).si_addr() } as usize;
        // SAFETY: as above.
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let addr = unsafe { (*info).si_addr } as usize;
        for slot in MAPS.iter() {
            let len = slot.len.load(Ordering::Acquire);
            let start = slot.start.load(Ordering::Acquire);
            if len == 0 || start == 0 || addr < start || addr - start >= len {
                continue;
            }
            let prefix = PREFIX.load(Ordering::Acquire);
            if !prefix.is_null() {
                // SAFETY: set once from a leaked Box in `install`.
                write_all(unsafe { *prefix }.as_bytes());
            }
            let path = slot.path.load(Ordering::Acquire);
            let path_len = slot.path_len.load(Ordering::Acquire);
            if !path.is_null() {
                // SAFETY: the path buffer is leaked, never freed (see unregister).
                write_all(unsafe { std::slice::from_raw_parts(path, path_len) });
                write_all(b": ");
            }
            write_all(
                b"the file changed while mapped (truncated or rewritten in place); \
                  stop rewriting files that are in use, or pass --no-mmap to read them into memory\n",
            );
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(1) };
        }
        // Not one of our maps: restore the default action; returning re-runs
        // the faulting access, which then ends the process as usual.
        // SAFETY: resetting a signal's disposition to the default.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }
}

// ---------------------------------------------------------------------------
// Outputs.

/// Whether `a` and `b` are the same file: same device and inode (so a hard
/// link, a symbolic link or another spelling of the path is caught).
/// `false` if either does not exist.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                x.dev() == y.dev() && x.ino() == y.ino()
            }
            #[cfg(not(unix))]
            {
                let _ = (x, y);
                match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
                    (Ok(p), Ok(q)) => p == q,
                    _ => false,
                }
            }
        }
        _ => false,
    }
}

/// An output file written beside its target and renamed into place on
/// [`OutputFile::commit`]: until then the target is untouched, and a failed
/// or interrupted write leaves no partial file (the temporary is removed on
/// drop). Renaming replaces the target's directory entry, never its bytes, so
/// a reader that has the old file open or mapped keeps reading the old
/// bytes. A target that is a symbolic link is followed: the file it points to
/// is replaced, the link is kept.
pub struct OutputFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<std::io::BufWriter<File>>,
}

impl OutputFile {
    /// Creates the temporary file beside `target` (which need not exist).
    pub fn create(target: impl AsRef<Path>) -> Result<OutputFile> {
        let given = target.as_ref();
        let io = |e| io_error(given, e);
        // Follow a symbolic link to the file it names.
        let target = match std::fs::canonicalize(given) {
            Ok(p) => p,
            Err(_) => given.to_path_buf(),
        };
        if let Ok(meta) = std::fs::metadata(&target) {
            if !meta.is_file() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("is {}, not a regular file", kind_of(meta.file_type())),
                )));
            }
        }
        let name = target
            .file_name()
            .ok_or_else(|| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "names no file",
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut n = 0u32;
        loop {
            let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(OutputFile {
                        target,
                        temp,
                        file: Some(std::io::BufWriter::new(file)),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// The file that [`OutputFile::commit`] replaces.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes the data to disk and renames the temporary file over the target.
    pub fn commit(mut self) -> Result<()> {
        let io = |e| io_error(&self.target, e);
        let file = self.file.take().expect("committed once");
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        // Keep the permissions of a file being replaced.
        if let Ok(meta) = std::fs::metadata(&self.target) {
            let _ = std::fs::set_permissions(&self.temp, meta.permissions());
        }
        drop(file);
        std::fs::rename(&self.temp, &self.target).map_err(io)?;
        Ok(())
    }
}

impl std::io::Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
