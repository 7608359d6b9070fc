//! The Kubernetes client of the commands, and Kubernetes API errors in istioctl's words.
//!
//! The client comes from `--kubeconfig` (else KUBECONFIG, else `~/.kube/config`, else the
//! in-cluster service account), with `--context` picking the context; the namespace is `-n`,
//! else the context's namespace, else `default`, as for istioctl and kubectl.

use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{CommonArgs, Error};

/// A client and the namespace the command works in.
#[derive(Clone)]
pub struct Cluster {
    /// The API client.
    pub client: kube::Client,
    /// `-n`, else the kubeconfig context's namespace, else `default`.
    pub namespace: String,
}

impl Cluster {
    /// Gateways of `namespace`.
    pub fn gateways(&self, namespace: &str) -> Api<Gateway> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Gateways of every namespace.
    pub fn all_gateways(&self) -> Api<Gateway> {
        Api::all(self.client.clone())
    }

    /// Namespaces (cluster-scoped).
    pub fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    /// Reads `namespace`, with istioctl's errors.
    pub async fn namespace(&self, namespace: &str) -> Result<Namespace, Error> {
        self.namespaces()
            .get(namespace)
            .await
            .map_err(|e| match is_not_found(&e) {
                true => Error::NamespaceNotFound(namespace.to_owned()),
                false => Error::NamespaceGet {
                    namespace: namespace.to_owned(),
                    message: message(&e),
                },
            })
    }
}

/// Builds the client from the flags and the environment.
pub async fn connect(args: &CommonArgs) -> Result<Cluster, Error> {
    // kube's rustls needs a process-wide provider: the same aws-lc-rs as the rest of the
    // workspace. Another one already installed is fine too.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(client_error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(client_error)?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(client_error)?,
        (None, None) => kube::Config::infer().await.map_err(client_error)?,
    };
    let namespace = args
        .namespace()
        .map_or_else(|| config.default_namespace.clone(), str::to_owned);
    let client = kube::Client::try_from(config).map_err(client_error)?;
    Ok(Cluster { client, namespace })
}

fn client_error(e: impl std::fmt::Display) -> Error {
    Error::Client(e.to_string())
}

/// Whether the API server answered 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// The error as client-go prints it: the API server's `Status` message, else the transport
/// error.
pub fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// An API error as a command error.
pub fn api_error(e: &kube::Error) -> Error {
    Error::Api(message(e))
}
