//! The few operating-system calls that mio and std do not expose: file-descriptor limits,
//! SO_REUSEPORT listeners, core pinning, and waiting for SIGINT/SIGTERM/SIGHUP.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};

/// Soft and hard RLIMIT_NOFILE before and after `raise_nofile_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit before.
    pub before: u64,
    /// Soft limit now.
    pub after: u64,
    /// Hard limit (the ceiling for an unprivileged raise).
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every connection is a descriptor, and the
/// default soft limit (often 1024) is far below what a broadcast server holds.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(NofileLimit { before, after: limit.rlim_cur, hard: limit.rlim_max })
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sets SO_REUSEADDR and SO_REUSEPORT on socket `fd` (before bind): several listeners (or
/// several multicast receivers) on one address.
pub(crate) fn share_address(fd: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: `one` outlives the call and the length matches its type.
        check(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// Opens a non-blocking listener with SO_REUSEPORT (and SO_REUSEADDR) set before bind, so that
/// every worker can listen on the same address and the kernel spreads accepts among them.
pub fn reuseport_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = check(unsafe {
        libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; OwnedFd closes it on every error path.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    share_address(fd)?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of the family given to socket(2), `len` bytes long.
    check(unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    let backlog = backlog.min(libc::c_int::MAX as u32) as libc::c_int;
    // SAFETY: `fd` is a bound stream socket.
    check(unsafe { libc::listen(fd, backlog) })?;
    Ok(TcpListener::from(socket))
}

/// Starts a non-blocking connect to `server` from `source` (port chosen by the kernel). Binding
/// the source address lets a load generator use more than one address's worth of ephemeral ports
/// (127.0.0.2, 127.0.0.3, ... all reach a server on 127.0.0.1).
pub fn connect_from(
    source: std::net::IpAddr,
    server: SocketAddr,
) -> io::Result<std::net::TcpStream> {
    let family = if server.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = check(unsafe {
        libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; OwnedFd closes it on every error path.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (local, local_len) = sockaddr(SocketAddr::new(source, 0));
    // SAFETY: `local` holds a sockaddr of the socket's family, `local_len` bytes long.
    check(unsafe { libc::bind(fd, (&local as *const libc::sockaddr_storage).cast(), local_len) })?;
    let (remote, remote_len) = sockaddr(server);
    // SAFETY: as above, for the destination.
    let rc =
        unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_storage).cast(), remote_len) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(std::net::TcpStream::from(socket))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Caps a socket's kernel send buffer at `bytes` (the kernel doubles it for its bookkeeping and
/// stops autotuning it).
pub fn set_send_buffer(socket: &impl std::os::fd::AsRawFd, bytes: usize) -> io::Result<()> {
    let value = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `socket` owns an open descriptor for the call; `value` outlives it and the length
    // matches its type.
    check(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Runs `body` (a worker's or the storage thread's loop); if it panics, logs what died and aborts
/// the whole process. A dead worker would leave its ring cursor behind and stall every publisher
/// once the ring wraps, and a dead storage thread would leave acknowledgements unanswered: a
/// half-alive server breaks its promises quietly, while a restarted one keeps them (clients
/// reconnect and resume by offset; the data directory is recovered).
pub fn abort_on_panic(what: &str, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        fatal(&format!("{what} panicked: {message}"));
    }
}

/// Logs a fatal error and aborts the process (see `abort_on_panic` for why not carry on).
pub fn fatal(why: &str) -> ! {
    log::error!("{why}; aborting the process");
    std::process::abort()
}

/// Pins the calling thread to `core` (modulo the cores there are). Returns the core used.
pub fn pin_current_thread(core: usize) -> Result<usize, PinError> {
    let cores = core_affinity::get_core_ids().ok_or(PinError::NoCores)?;
    if cores.is_empty() {
        return Err(PinError::NoCores);
    }
    let chosen = cores[core % cores.len()];
    if core_affinity::set_for_current(chosen) {
        Ok(chosen.id)
    } else {
        Err(PinError::Refused(chosen.id))
    }
}

/// Why pinning failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The core list could not be read.
    #[error("could not list the cores this process may run on")]
    NoCores,
    /// sched_setaffinity refused.
    #[error("the kernel refused to pin to core {0}")]
    Refused(usize),
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every thread it spawns
/// afterwards), so that `wait_for_signal` can take them synchronously instead of in a handler.
pub fn block_signals() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT, SIGTERM or SIGHUP arrives; returns its number. Requires `block_signals`.
pub fn wait_for_signal() -> io::Result<i32> {
    let set = signal_set();
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised and `signal` is writable.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Resident memory of this process in bytes (from /proc/self/statm), for the stats line.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// A secret kept in a file (a key, a token): its bytes without the trailing whitespace an
/// editor or `echo` leaves.
pub fn read_secret(path: &std::path::Path) -> io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    Ok(bytes)
}
