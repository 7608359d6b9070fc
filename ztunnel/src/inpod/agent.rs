//! The node-agent side of ZDS: what istio-cni's node agent does on its socket, for tests and
//! for running ztunnel's in-pod mode without istio-cni.
//!
//! # Where it sits
//!
//! In a cluster the agent is istio-cni; ztunnel's [`super::zds::ZdsClient`] connects to it.
//! [`NodeAgent`] listens where the client connects (`INPOD_UDS`), and each accepted
//! [`AgentConnection`] reads the hello and sends requests one at a time, waiting for each
//! acknowledgement, as istio-cni does. It sends whatever it is told to (including malformed
//! messages, for tests); it keeps no workload state.
//!
//! ```no_run
//! # async fn example(netns: std::fs::File) -> Result<(), ztunnel::inpod::agent::AgentError> {
//! use std::os::fd::AsFd;
//! use ztunnel::inpod::agent::{Ack, NodeAgent};
//!
//! let agent = NodeAgent::bind("/tmp/ztunnel.sock")?;
//! let conn = agent.accept().await?;
//! conn.read_hello().await?;
//! assert_eq!(conn.add("pod-uid", None, netns.as_fd()).await?, Ack::Accepted);
//! assert_eq!(conn.snapshot_sent().await?, Ack::Accepted);
//! # Ok(()) }
//! ```

use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use proto::istio::workload::zds;

use super::zds::MAX_MESSAGE_SIZE;
use super::zds::packet::{SeqPacket, SeqPacketListener};
use crate::config::WorkloadInfo;

/// How long the agent waits for ztunnel's hello, and for each acknowledgement.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pending connections the listening socket queues.
const BACKLOG: i32 = 16;

/// ztunnel's answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// An empty `Ack.error`.
    Accepted,
    /// The error text.
    Rejected(String),
}

impl Ack {
    /// The rejection text, if any.
    pub fn rejection(&self) -> Option<&str> {
        match self {
            Self::Accepted => None,
            Self::Rejected(error) => Some(error),
        }
    }
}

/// A failure of the agent side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket could not be created at the path.
    #[error("failed to listen at {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Accepting a connection failed.
    #[error("failed to accept a ZDS connection: {0}")]
    Accept(#[source] std::io::Error),
    /// Sending failed.
    #[error("failed to send to ztunnel: {0}")]
    Send(#[source] std::io::Error),
    /// Receiving failed.
    #[error("failed to receive from ztunnel: {0}")]
    Receive(#[source] std::io::Error),
    /// ztunnel did not answer within [`REPLY_TIMEOUT`].
    #[error("ztunnel did not answer within {0:?}")]
    Timeout(Duration),
    /// ztunnel closed the connection.
    #[error("ztunnel closed the connection")]
    Closed,
    /// ztunnel's message does not decode.
    #[error("malformed message from ztunnel: {0}")]
    Decode(#[from] prost::DecodeError),
    /// ztunnel's message was not what the protocol expects at this point.
    #[error("unexpected message from ztunnel: {0}")]
    Unexpected(String),
}

/// A listening ZDS socket; the file is removed when dropped.
#[derive(Debug)]
pub struct NodeAgent {
    socket: SeqPacketListener,
    path: PathBuf,
}

impl NodeAgent {
    /// Listens at `path`. A stale socket file there (from an earlier run) is replaced; any
    /// other file is an error. Must be called inside a tokio runtime.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, AgentError> {
        let path = path.as_ref().to_path_buf();
        let bind_error = |source| AgentError::Bind {
            path: path.clone(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.file_type().is_socket()
        {
            std::fs::remove_file(&path).map_err(bind_error)?;
        }
        let socket = SeqPacketListener::bind(&path, BACKLOG).map_err(bind_error)?;
        Ok(Self { socket, path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for ztunnel to connect.
    pub async fn accept(&self) -> Result<AgentConnection, AgentError> {
        let socket = self.socket.accept().await.map_err(AgentError::Accept)?;
        Ok(AgentConnection { socket })
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection from ztunnel; dropping it closes the connection.
#[derive(Debug)]
pub struct AgentConnection {
    socket: SeqPacket,
}

impl AgentConnection {
    /// Reads the client's first message, `ZdsHello`.
    pub async fn read_hello(&self) -> Result<zds::ZdsHello, AgentError> {
        let bytes = self.recv().await?;
        Ok(zds::ZdsHello::decode(bytes.as_slice())?)
    }

    /// `AddWorkload` with the pod's namespace.
    pub async fn add(
        &self,
        uid: &str,
        info: Option<&WorkloadInfo>,
        netns: BorrowedFd<'_>,
    ) -> Result<Ack, AgentError> {
        let add = zds::AddWorkload {
            uid: uid.to_string(),
            workload_info: info.map(|info| zds::WorkloadInfo {
                name: info.name.clone(),
                namespace: info.namespace.clone(),
                service_account: info.service_account.clone(),
            }),
        };
        self.request(zds::workload_request::Payload::Add(add), &[netns])
            .await
    }

    /// `KeepWorkload`.
    pub async fn keep(&self, uid: &str) -> Result<Ack, AgentError> {
        let keep = zds::KeepWorkload {
            uid: uid.to_string(),
        };
        self.request(zds::workload_request::Payload::Keep(keep), &[])
            .await
    }

    /// `DelWorkload`.
    pub async fn del(&self, uid: &str) -> Result<Ack, AgentError> {
        let del = zds::DelWorkload {
            uid: uid.to_string(),
        };
        self.request(zds::workload_request::Payload::Del(del), &[])
            .await
    }

    /// `SnapshotSent`.
    pub async fn snapshot_sent(&self) -> Result<Ack, AgentError> {
        self.request(
            zds::workload_request::Payload::SnapshotSent(zds::SnapshotSent {}),
            &[],
        )
        .await
    }

    /// Sends a `WorkloadRequest` with `fds` attached, and waits for the acknowledgement.
    pub async fn request(
        &self,
        payload: zds::workload_request::Payload,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Ack, AgentError> {
        let request = zds::WorkloadRequest {
            payload: Some(payload),
        };
        self.send_raw(&request.encode_to_vec(), fds).await
    }

    /// Sends `bytes` as one message (well-formed or not) with `fds` attached, and waits for
    /// the acknowledgement.
    pub async fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Ack, AgentError> {
        tokio::time::timeout(REPLY_TIMEOUT, self.socket.send(bytes, fds))
            .await
            .map_err(|_| AgentError::Timeout(REPLY_TIMEOUT))?
            .map_err(AgentError::Send)?;
        let bytes = self.recv().await?;
        match zds::WorkloadResponse::decode(bytes.as_slice())?.payload {
            Some(zds::workload_response::Payload::Ack(ack)) if ack.error.is_empty() => {
                Ok(Ack::Accepted)
            }
            Some(zds::workload_response::Payload::Ack(ack)) => Ok(Ack::Rejected(ack.error)),
            None => Err(AgentError::Unexpected(
                "WorkloadResponse without an Ack".into(),
            )),
        }
    }

    /// Waits until ztunnel closes the connection (or sends something, which is an error).
    pub async fn closed(&self) -> Result<(), AgentError> {
        match self.recv().await {
            Err(AgentError::Closed) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(AgentError::Unexpected(
                "a message while waiting for the connection to close".into(),
            )),
        }
    }

    async fn recv(&self) -> Result<Vec<u8>, AgentError> {
        let mut buf = vec![0; MAX_MESSAGE_SIZE];
        let packet = tokio::time::timeout(REPLY_TIMEOUT, self.socket.recv(&mut buf))
            .await
            .map_err(|_| AgentError::Timeout(REPLY_TIMEOUT))?
            .map_err(AgentError::Receive)?;
        if packet.is_eof() {
            return Err(AgentError::Closed);
        }
        if packet.truncated || packet.fds_truncated || !packet.fds.is_empty() {
            return Err(AgentError::Unexpected(format!(
                "a message of more than {MAX_MESSAGE_SIZE} bytes or with file descriptors"
            )));
        }
        buf.truncate(packet.len);
        Ok(buf)
    }
}
