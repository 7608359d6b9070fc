//! The inbound plaintext listener (15006): captured traffic that did not arrive over HBONE.
//!
//! Upstream `src/proxy/inbound_passthrough.rs`. Per connection:
//!
//! 1. the destination is the connection's original destination (`SO_ORIGINAL_DST`, set when
//!    the capture rules redirected it here); a socket that was not redirected has none, and
//!    then its local address — the listener's own — is used (see [`DestinationMode`]);
//! 2. loop protection: a destination on one of the proxy's own ports, or the listener itself,
//!    is refused;
//! 3. L4 policy is evaluated with **no peer identity**, so Istio's strict-mTLS policy
//!    (`notPrincipals: [Presence]` DENY, `istio_converted_static_strict`) refuses every
//!    plaintext connection; a refused connection is closed without connecting to the
//!    application;
//! 4. otherwise the application is connected to and bytes are copied both ways, until both
//!    sides are done or the policy watcher revokes the connection (both sockets are dropped).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{InboundContext, InboundError, Report, authorize_connection, copy_until_revoked};
use crate::connections::ConnectionGuard;
use crate::drain::ConnectionTasks;
use crate::telemetry::SecurityPolicy;

pub use crate::socket::DestinationMode;

/// How long open connections may run after the listener is shut down.
const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The 15006 listener of one local workload.
#[derive(Debug)]
pub struct PlaintextListener {
    listener: TcpListener,
    ctx: InboundContext,
    uid: Arc<str>,
    mode: DestinationMode,
    drain_deadline: Duration,
}

impl PlaintextListener {
    /// Binds `addr` for the workload `uid`, sharing the node's context.
    pub async fn new(
        addr: SocketAddr,
        ctx: InboundContext,
        uid: &str,
        mode: DestinationMode,
    ) -> io::Result<Self> {
        Ok(Self::from_listener(
            TcpListener::bind(addr).await?,
            ctx,
            uid,
            mode,
        ))
    }

    /// Serves `listener` (bound by the caller, e.g. inside a pod's network namespace) for the
    /// workload `uid`.
    pub fn from_listener(
        listener: TcpListener,
        ctx: InboundContext,
        uid: &str,
        mode: DestinationMode,
    ) -> Self {
        Self {
            listener,
            ctx,
            uid: uid.into(),
            mode,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
        }
    }

    /// Sets how long open connections may run once [`PlaintextListener::run`] is shut down.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// The bound address.
    pub fn address(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown`; open connections then get the drain deadline to
    /// finish before they are closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let own = self.listener.local_addr().ok();
        let tasks = ConnectionTasks::new();
        // One copy of the context for all connections, not one each.
        let ctx = Arc::new(self.ctx);
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "inbound plaintext accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Boxed here, so the task captures one pointer rather than the arguments.
            let open = Box::pin(open(
                ctx.clone(),
                self.uid.clone(),
                self.mode,
                own,
                stream,
                peer,
            ));
            tasks.spawn_with(move || connection(open));
        }
        drop(self.listener);
        tasks.drain(self.drain_deadline).await;
    }
}

/// Serves one plaintext connection: `open` (boxed, and freed before the copy), then the copy
/// with only what it needs.
async fn connection<F>(open: Pin<Box<F>>)
where
    F: Future<Output = Option<Admitted>> + Send,
{
    // `let else` (not `if let`): the `Option` is not kept beside the copy's state.
    let Some(admitted) = open.await else {
        return;
    };
    admitted.run().await;
}

/// Policy and the connection to the application; `None` when refused (reported, and the client
/// socket closed).
async fn open(
    ctx: Arc<InboundContext>,
    uid: Arc<str>,
    mode: DestinationMode,
    own: Option<SocketAddr>,
    client: TcpStream,
    peer: SocketAddr,
) -> Option<Admitted> {
    let _ = client.set_nodelay(true);
    let dst = mode.destination(&client)?;
    let state = ctx.state.current();
    let report = Report::open(
        &ctx.metrics,
        &state,
        &uid,
        None,
        peer,
        dst,
        SecurityPolicy::Unknown,
    );
    let admitted = async {
        if Some(dst) == own {
            return Err(InboundError::SelfCall(dst));
        }
        let authorized = authorize_connection(&state, &uid, dst, None, peer.ip())?;
        ctx.admit(&state, &uid, &authorized).await
    };
    match admitted.await {
        Ok((guard, app)) => Some(Admitted {
            report,
            guard,
            client,
            app,
        }),
        Err(e) => {
            // Dropping the client socket closes it; the application never sees the connection.
            report.fail(&e);
            None
        }
    }
}

/// An admitted connection: what it keeps while its bytes are copied.
struct Admitted {
    report: Report,
    guard: ConnectionGuard,
    client: TcpStream,
    app: TcpStream,
}

impl Admitted {
    /// Copies until both sides are done or the policy watcher revokes the connection, then
    /// reports it.
    fn run(self) -> impl Future<Output = ()> + Send {
        let Admitted {
            report,
            guard,
            mut client,
            mut app,
        } = self;
        async move {
            // a = client, b = application: a→b is the request, b→a the response.
            let mut copy = hbone::copy::copy_bidirectional(&mut client, &mut app, None);
            let (transferred, error) = copy_until_revoked(&mut copy, &guard).await;
            drop(copy);
            drop(app);
            drop(client);
            report.complete(
                transferred.a_to_b,
                transferred.b_to_a,
                error,
                guard.revocation(),
            );
        }
    }
}
