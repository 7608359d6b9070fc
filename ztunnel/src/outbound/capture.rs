//! The outbound capture listener (15001) of one local workload.
//!
//! The capture rules redirect every TCP connection the workload opens (except to loopback and
//! ztunnel's own marked traffic) to this listener. The destination the application asked for is
//! the socket's original destination ([`DestinationMode::OriginalDst`]); from there the
//! connection takes the same path as a SOCKS5 one: routing decision, upstream (HBONE or plain
//! TCP), copy, telemetry. A connection that was not redirected has no original destination; its
//! destination is then the listener itself, which is refused as a loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_DRAIN_DEADLINE, Entry, OutboundInputs, Proxied, proxy, serve};
use crate::drain::ConnectionTasks;
use crate::socket::DestinationMode;

/// The 15001 listener of one local workload.
#[derive(Debug)]
pub struct OutboundListener {
    listener: TcpListener,
    inputs: OutboundInputs,
    source_uid: Arc<str>,
    mode: DestinationMode,
    drain_deadline: Duration,
}

impl OutboundListener {
    /// Binds `addr` for the workload `source_uid`.
    pub async fn new(
        addr: SocketAddr,
        inputs: OutboundInputs,
        source_uid: &str,
        mode: DestinationMode,
    ) -> std::io::Result<Self> {
        Ok(Self::from_listener(
            TcpListener::bind(addr).await?,
            inputs,
            source_uid,
            mode,
        ))
    }

    /// Serves `listener` (bound by the caller, e.g. inside a pod's network namespace) for the
    /// workload `source_uid`.
    pub fn from_listener(
        listener: TcpListener,
        inputs: OutboundInputs,
        source_uid: &str,
        mode: DestinationMode,
    ) -> Self {
        Self {
            listener,
            inputs,
            source_uid: source_uid.into(),
            mode,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
        }
    }

    /// Sets how long open connections may run once [`OutboundListener::run`] is shut down.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// The bound address.
    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown`; open connections then get the drain deadline to
    /// finish before they are closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let own = self.listener.local_addr().ok();
        let tasks = ConnectionTasks::new();
        // One copy of the inputs for all connections, not one each.
        let inputs = Arc::new(self.inputs);
        loop {
            let (stream, client) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbound accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Boxed here, so the task captures one pointer rather than the arguments.
            let open = Box::pin(connection(
                inputs.clone(),
                self.source_uid.clone(),
                self.mode,
                own,
                stream,
                client,
            ));
            tasks.spawn_with(move || serve(open));
        }
        drop(self.listener);
        tasks.drain(self.drain_deadline).await;
    }
}

/// Opens one captured connection (routing and upstream); [`serve`] then copies.
async fn connection(
    inputs: Arc<OutboundInputs>,
    uid: Arc<str>,
    mode: DestinationMode,
    own: Option<SocketAddr>,
    stream: TcpStream,
    client: SocketAddr,
) -> Option<Proxied> {
    let start = Instant::now();
    let _ = stream.set_nodelay(true);
    let Some(target) = mode.destination(&stream) else {
        // No local address: the client is already gone.
        tracing::debug!(%client, "captured connection closed before it was served");
        return None;
    };
    proxy(
        &inputs,
        &uid,
        stream,
        client,
        target,
        start,
        Entry::Captured { own },
    )
    .await
}
