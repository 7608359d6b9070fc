//! A one-machine demonstration of the tunnel every ztunnel data path rides on.
//!
//! It plays both nodes on loopback: a local CA (persisted in a state directory) issues a
//! certificate for a client workload and one for a server workload; the server side terminates
//! HBONE like ztunnel's inbound listener does (mTLS, `CONNECT`, then plain TCP to the
//! application), the client side opens a tunnel through the HBONE pool like the outbound
//! listener does. The report says which identity each side verified, what reached the
//! application, and how the tunnel's throughput compares with plain loopback TCP.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hbone::{
    CertStore, Config, Identity, InboundRequest, LocalCa, Pool, Responder, Server, Shutdown,
    TunnelRequest, headers,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Trust domain of the demo mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// What the demo observed.
#[derive(Clone, Debug)]
pub struct Report {
    /// Where the CA root lives.
    pub ca_root: std::path::PathBuf,
    /// The client workload's identity.
    pub client: Identity,
    /// The server workload's identity.
    pub server: Identity,
    /// The identity the client verified in the server's certificate.
    pub client_saw: Identity,
    /// The identity the server verified in the client's certificate.
    pub server_saw: Identity,
    /// The `CONNECT` authority the server received.
    pub authority: String,
    /// The original client address the server learned from `forwarded`.
    pub forwarded_for: Option<SocketAddr>,
    /// What the application behind the server received.
    pub app_received: Vec<u8>,
    /// What came back through the tunnel.
    pub reply: Vec<u8>,
    /// Bytes per second through one HBONE tunnel, and through plain loopback TCP.
    pub throughput: Option<(f64, f64)>,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A tunnel or certificate operation failed.
    #[error(transparent)]
    Hbone(#[from] hbone::Error),
    /// Loading or issuing certificates failed.
    #[error(transparent)]
    Cert(#[from] hbone::cert::CertError),
    /// A socket operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server side never reported what it saw.
    #[error("the server did not see the tunnel request")]
    NothingSeen,
}

/// What the server side recorded about the tunnel request.
#[derive(Clone, Debug)]
struct Seen {
    peer: Identity,
    authority: String,
    forwarded_for: Option<SocketAddr>,
}

/// Runs the demo; `measure` adds the throughput comparison (`bytes` through each path).
pub async fn run(state_dir: &Path, measure: Option<u64>) -> Result<Report, DemoError> {
    let ca = LocalCa::load_or_generate(state_dir, TRUST_DOMAIN)?;
    let client_id = Identity::new(TRUST_DOMAIN, "default", "sleep").map_err(hbone::Error::from)?;
    let server_id =
        Identity::new(TRUST_DOMAIN, "default", "httpbin").map_err(hbone::Error::from)?;
    let client = Arc::new(CertStore::new(
        ca.issue(&client_id, Duration::from_secs(3600))?,
    ));
    let server = Arc::new(CertStore::new(
        ca.issue(&server_id, Duration::from_secs(3600))?,
    ));

    // The application: records the first message and answers it; or counts bulk bytes.
    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    let received = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(app_server(app, received.clone()));

    // The server node: HBONE in, plain TCP to the application.
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        move |req: InboundRequest, responder: Responder| {
            let seen = seen.clone();
            async move { inbound(req, responder, seen).await }
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hbone_addr = listener.local_addr()?;
    let tls = hbone::tls::server_config(server, ca.roots()).map_err(hbone::Error::from)?;
    let shutdown = Shutdown::default();
    let server = Server::new(Config::default(), tls, handler)?;
    let server_task = tokio::spawn(server.run(listener, shutdown.clone(), Duration::from_secs(1)));

    // The client node: a tunnel on behalf of a local client at 127.0.0.1:45000.
    let pool = Pool::new(Config::default(), ca.roots().to_vec())?;
    let request = TunnelRequest::new(app_addr)
        .header(
            headers::FORWARDED,
            headers::forwarded("127.0.0.1:45000".parse().unwrap_or(app_addr), None)?,
        )
        .header(
            headers::TRACEPARENT,
            headers::TraceParent::random().to_header(),
        );
    let mut tunnel = pool
        .connect(&client, vec![server_id.clone()], hbone_addr, &request)
        .await?;
    let message = b"Mhello from sleep to httpbin".to_vec();
    tunnel.stream.write_all(&message).await?;
    tunnel.stream.shutdown().await?;
    let mut reply = Vec::new();
    tunnel.stream.read_to_end(&mut reply).await?;
    let client_saw = tunnel.peer_identity.clone();

    let throughput = match measure {
        Some(bytes) => {
            let through_tunnel = {
                let t = pool
                    .connect(
                        &client,
                        vec![server_id.clone()],
                        hbone_addr,
                        &TunnelRequest::new(app_addr),
                    )
                    .await?;
                bulk(t.stream, bytes).await?
            };
            let direct = bulk(TcpStream::connect(app_addr).await?, bytes).await?;
            Some((through_tunnel, direct))
        }
        None => None,
    };

    shutdown.drain.cancel();
    let _ = server_task.await;
    let seen = seen
        .lock()
        .map_err(|_| DemoError::NothingSeen)?
        .clone()
        .ok_or(DemoError::NothingSeen)?;
    let app_received = received.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(Report {
        ca_root: state_dir.join("root-cert.pem"),
        client: client_id,
        server: server_id,
        client_saw,
        server_saw: seen.peer,
        authority: seen.authority,
        forwarded_for: seen.forwarded_for,
        app_received,
        reply,
        throughput,
    })
}

/// The server node's part: what ztunnel's inbound listener does, minus policy.
async fn inbound(req: InboundRequest, responder: Responder, seen: Arc<Mutex<Option<Seen>>>) {
    if let Ok(mut s) = seen.lock() {
        s.get_or_insert(Seen {
            peer: req.peer_identity.clone(),
            authority: req.authority.to_string(),
            forwarded_for: req.forwarded_for(),
        });
    }
    let Ok(target) = req.target() else {
        responder.reject(http::StatusCode::BAD_REQUEST);
        return;
    };
    let Ok(mut app) = TcpStream::connect(target).await else {
        responder.reject(http::StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    let Ok(mut stream) = responder.accept(http::HeaderMap::new()) else {
        return;
    };
    if let Err(e) = hbone::copy::copy_tunnel(&mut app, &mut stream, None).await {
        tracing::debug!(error = %e, "demo tunnel ended with error");
    }
}

/// The application: `M` + message → records it and answers; `B` + bulk → answers the count.
async fn app_server(listener: TcpListener, received: Arc<Mutex<Vec<u8>>>) {
    while let Ok((mut s, _)) = listener.accept().await {
        let received = received.clone();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if s.read_exact(&mut kind).await.is_err() {
                return;
            }
            if kind[0] == b'M' {
                let mut msg = Vec::new();
                if s.read_to_end(&mut msg).await.is_ok() {
                    let reply = format!("httpbin got {} bytes", msg.len());
                    if let Ok(mut r) = received.lock() {
                        *r = msg;
                    }
                    let _ = s.write_all(reply.as_bytes()).await;
                }
            } else {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            }
            let _ = s.shutdown().await;
        });
    }
}

/// Sends `bytes` of bulk data and returns bytes per second as the application counted them.
async fn bulk<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    bytes: u64,
) -> Result<f64, DemoError> {
    let buf = vec![0x42u8; 256 * 1024];
    let start = Instant::now();
    s.write_all(b"B").await?;
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    s.shutdown().await?;
    let mut total = [0u8; 8];
    s.read_exact(&mut total).await?;
    Ok(u64::from_be_bytes(total) as f64 / start.elapsed().as_secs_f64())
}
