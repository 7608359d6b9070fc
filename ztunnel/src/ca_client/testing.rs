//! Test support: an in-process fake Istio CA that signs CSRs with an `hbone::LocalCa`, or
//! misbehaves on request. Served alone with [`crate::xds::testing::serve`] or next to the fake
//! ADS server with [`crate::xds::testing::fake_istiod`]. Not part of any data path.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone::Identity;
use hbone::LocalCa;
use hbone::cert::certs_to_pem;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use rustls::pki_types::CertificateDer;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// What the fake CA answers.
#[derive(Clone)]
pub enum Mode {
    /// Sign the CSR; the chain ends with the root, as Istio's does.
    Sign,
    /// A leaf for another identity (and another key).
    Identity(Identity),
    /// A leaf for the requested identity but with a key of the CA's choosing.
    OtherKey(Identity),
    /// Sign the CSR with another CA (a chain not to the trust roots).
    OtherCa(Arc<LocalCa>),
    /// No certificate at all.
    Empty,
    /// `UNAVAILABLE`.
    Down,
}

/// One request as the fake CA saw it.
pub struct Seen {
    /// The call metadata (headers).
    pub metadata: MetadataMap,
    /// The request.
    pub request: IstioCertificateRequest,
}

/// The fake CA; clones share the mode and the requests seen.
#[derive(Clone)]
pub struct FakeCa {
    /// The CA that signs.
    pub ca: Arc<LocalCa>,
    /// What it answers; may be changed while it runs.
    pub mode: Arc<Mutex<Mode>>,
    /// Every request so far.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeCa {
    /// A CA signing every CSR with `ca`.
    pub fn signing(ca: Arc<LocalCa>) -> Self {
        Self {
            ca,
            mode: Arc::new(Mutex::new(Mode::Sign)),
            seen: Arc::default(),
        }
    }

    fn pem_chain(&self, chain: &[CertificateDer<'static>]) -> Vec<String> {
        chain
            .iter()
            .chain(self.ca.roots())
            .map(|c| certs_to_pem(std::slice::from_ref(c)))
            .collect()
    }
}

#[tonic::async_trait]
impl IstioCertificateService for FakeCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let ttl = Duration::from_secs(u64::try_from(request.validity_duration).unwrap_or(0));
        let csr = request.csr.clone();
        self.seen.lock().unwrap().push(Seen { metadata, request });
        let mode = self.mode.lock().unwrap().clone();
        let cert_chain = match mode {
            Mode::Sign => self.pem_chain(&self.ca.sign_csr(&csr, ttl).unwrap()),
            Mode::Identity(other) | Mode::OtherKey(other) => {
                self.pem_chain(self.ca.issue(&other, ttl).unwrap().chain())
            }
            Mode::OtherCa(other) => self.pem_chain(&other.sign_csr(&csr, ttl).unwrap()),
            Mode::Empty => Vec::new(),
            Mode::Down => return Err(Status::unavailable("CA is down")),
        };
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
