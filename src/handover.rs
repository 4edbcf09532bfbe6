//! Binary upgrade: handing the listening sockets to a newly started binary
//! over a Unix socket (`SCM_RIGHTS`), so that no connection attempt is
//! refused, not even one already waiting in a listen backlog: both processes
//! hold the same sockets, the new one starts accepting, then the old one
//! stops and drains.
//!
//! The protocol, on a private Unix socket the old process creates:
//! 1. the old process starts `tidegate run --config FILE --upgrade-from SOCKET`;
//! 2. the new one connects; the old sends one message: the listener names
//!    (JSON, in fd order) with the listening sockets attached;
//! 3. the new one starts serving on them and writes one byte, `R`, when ready;
//! 4. the old one stops accepting and drains (`lifecycle::shutdown`).
//!
//! If the new binary fails at any step, the old one keeps serving.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use tracing::{info, warn};

/// Listening sockets this process may hand over, by listener name (the
/// admin endpoint's is [`ADMIN`]).
pub type Sockets = HashMap<String, std::net::TcpListener>;

/// The name under which the admin endpoint's socket travels.
pub const ADMIN: &str = "@admin";
/// The most sockets one hand-over carries.
const MAX_SOCKETS: usize = 64;
/// How long the new binary has to connect and to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a binary upgrade did not happen (the old process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the config was not read from a file, so a new binary could not be started with it")]
    NoConfigFile,
    #[error("binary upgrade failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the new binary exited before it was ready ({0}); the running one keeps serving")]
    ChildExited(std::process::ExitStatus),
    #[error("the new binary was not ready within {0:?}; it was stopped and the running one keeps serving")]
    NotReady(Duration),
    #[error("the hand-over message is malformed: {0}")]
    Malformed(String),
}

/// Old side: starts `exe` on `config` and hands it `sockets`; returns once the
/// new process is serving. Blocking: run it off the async runtime.
pub fn hand_over(exe: &Path, config: &Path, sockets: Vec<(String, OwnedFd)>) -> Result<u32, HandoverError> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("tidegate-upgrade-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let _cleanup = RemoveOnDrop(path.clone());
    let mut child =
        Command::new(exe).arg("run").arg("--config").arg(config).arg("--upgrade-from").arg(&path).spawn()?;
    info!(pid = child.id(), exe = %exe.display(), "binary upgrade: new process started");
    match serve_child(&listener, &mut child, sockets) {
        Ok(()) => Ok(child.id()),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn serve_child(
    listener: &UnixListener,
    child: &mut Child,
    sockets: Vec<(String, OwnedFd)>,
) -> Result<(), HandoverError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    listener.set_nonblocking(true)?;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait()? {
                    return Err(HandoverError::ChildExited(status));
                }
                if Instant::now() >= deadline {
                    return Err(HandoverError::NotReady(READY_TIMEOUT));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    };
    stream.set_nonblocking(false)?;
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    let payload = serde_json::to_vec(&names).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    let fds: Vec<_> = sockets.iter().map(|(_, fd)| std::os::fd::AsFd::as_fd(fd)).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(HandoverError::Malformed(format!("more than {MAX_SOCKETS} sockets")));
    }
    rustix::net::sendmsg(&stream, &[IoSlice::new(&payload)], &mut control, SendFlags::empty())
        .map_err(std::io::Error::from)?;

    // Wait for "ready", watching the child: a crash must not leave us waiting.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut ready = [0u8; 1];
    loop {
        match stream.read(&mut ready) {
            Ok(1) if ready[0] == b'R' => return Ok(()),
            Ok(_) => {
                let status = child.wait()?;
                return Err(HandoverError::ChildExited(status));
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if let Some(status) = child.try_wait()? {
                    return Err(HandoverError::ChildExited(status));
                }
                if Instant::now() >= deadline {
                    return Err(HandoverError::NotReady(READY_TIMEOUT));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// New side: connects to the old process and receives its listening sockets.
/// The returned stream is what [`ready`] answers on.
pub fn receive(path: &Path) -> Result<(Sockets, UnixStream), HandoverError> {
    let stream = UnixStream::connect(path)?;
    let mut data = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(&stream, &mut [IoSliceMut::new(&mut data)], &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    let names: Vec<String> =
        serde_json::from_slice(&data[..msg.bytes]).map_err(|e| HandoverError::Malformed(e.to_string()))?;
    if names.len() != fds.len() {
        return Err(HandoverError::Malformed(format!("{} names for {} sockets", names.len(), fds.len())));
    }
    let sockets = names.into_iter().zip(fds).map(|(n, fd)| (n, std::net::TcpListener::from(fd))).collect();
    Ok((sockets, stream))
}

/// New side: tells the old process it is serving, so it may stop and drain.
pub fn ready(mut stream: UnixStream) -> std::io::Result<()> {
    stream.write_all(b"R")
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            warn!(path = %self.0.display(), error = %e, "could not remove the hand-over socket");
        }
    }
}
