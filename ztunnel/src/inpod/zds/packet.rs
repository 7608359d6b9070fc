//! The ZDS transport: a non-blocking Unix `SOCK_SEQPACKET` socket driven by tokio's reactor,
//! with file descriptors passed as `SCM_RIGHTS` ancillary data. Shared by the client
//! ([`super::ZdsClient`]) and the node-agent side ([`crate::inpod::agent`]).
//!
//! Each `send` is one message and each `recv` returns exactly one (sequenced packets keep
//! boundaries). Received descriptors arrive as [`OwnedFd`] with `CLOEXEC` set, so whatever the
//! caller does not keep is closed when dropped.
//!
//! The socket is registered with tokio as a [`tokio::net::UnixStream`] (a listening one as a
//! [`tokio::net::UnixListener`]): only their readiness (`readable`, `writable`, `try_io`) is
//! used, never their byte-stream reads and writes, and `sendmsg`/`recvmsg` go through rustix.
//! Both take ownership of an [`OwnedFd`] safely, whereas tokio's `AsyncFd` constructor became
//! `unsafe` (`AsyncFd::register`, tokio#8587) and the workspace denies `unsafe_code`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

/// Descriptors one received message may carry; the kernel closes any beyond this and flags
/// the message ([`Packet::fds_truncated`]).
pub(crate) const MAX_RECEIVED_FDS: usize = 4;

/// A connected sequenced-packet socket.
#[derive(Debug)]
pub(crate) struct SeqPacket {
    io: UnixStream,
}

/// A listening sequenced-packet socket.
#[derive(Debug)]
pub(crate) struct SeqPacketListener {
    io: UnixListener,
}

/// One received message.
#[derive(Debug)]
pub(crate) struct Packet {
    /// Bytes placed in the buffer.
    pub len: usize,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
    /// The message was longer than the buffer; the rest is lost.
    pub truncated: bool,
    /// More descriptors came than [`MAX_RECEIVED_FDS`]; the kernel closed the others.
    pub fds_truncated: bool,
}

impl Packet {
    /// An empty read without descriptors: the peer closed the connection.
    pub(crate) fn is_eof(&self) -> bool {
        self.len == 0 && self.fds.is_empty() && !self.truncated && !self.fds_truncated
    }
}

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}

impl SeqPacketListener {
    /// Listens at `path` (which must not exist). Must be called inside a tokio runtime.
    pub(crate) fn bind(path: &Path, backlog: i32) -> io::Result<Self> {
        let fd = socket()?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&fd, backlog)?;
        let io = UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))?;
        Ok(Self { io })
    }

    /// Accepts one connection (non-blocking and close-on-exec, like every socket here).
    pub(crate) async fn accept(&self) -> io::Result<SeqPacket> {
        let (io, _) = self.io.accept().await?;
        Ok(SeqPacket { io })
    }
}

impl SeqPacket {
    /// Connects to the listener at `path`. Never waits: a Unix socket connects at once, or
    /// fails (absent, refused, or `EAGAIN` when the listener's backlog is full). Must be
    /// called inside a tokio runtime.
    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        let fd = socket()?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        let io = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
        Ok(Self { io })
    }

    /// Sends `bytes` as one message, with `fds` attached.
    pub(crate) async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        loop {
            self.io.writable().await?;
            let sent = self.io.try_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::other("no room for the file descriptors"));
                }
                Ok(rustix::net::sendmsg(
                    &self.io,
                    &[IoSlice::new(bytes)],
                    &mut control,
                    // A closed peer is an error here, not a SIGPIPE.
                    SendFlags::NOSIGNAL,
                )?)
            });
            match sent {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "sent {n} of {} bytes of a message",
                        bytes.len()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one message into `buf`.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<Packet> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECEIVED_FDS))];
        loop {
            self.io.readable().await?;
            let received = self.io.try_io(Interest::READABLE, || {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    &self.io,
                    &mut [IoSliceMut::new(buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                Ok(Packet {
                    len: msg.bytes,
                    fds,
                    truncated: msg.flags.contains(ReturnFlags::TRUNC),
                    fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
                })
            });
            match received {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}
