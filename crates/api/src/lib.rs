//! What a running `lifeboat serve` shows and answers: the status board of its plan
//! ([`board::Board`]), the HTTP API with bearer tokens in two roles and TLS ([`http`], [`auth`],
//! [`tls`]), the embedded web dashboard, Prometheus metrics ([`metrics`]) and the alerting rules
//! that go with them ([`alerts`]).
//!
//! Guarantees: the listener is bound and TLS loaded before [`Listener::run`] serves anything, so
//! a bad address, certificate or token file stops `serve` at start with one line; every request
//! is answered from the board's last status (never by waiting on a site or the repository);
//! plain HTTP only on a loopback address (for a local reverse proxy that terminates TLS).
//! Assumes: a tokio runtime with the blocking pool.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod auth;
pub mod board;
mod dashboard;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use board::Board;

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TLS cannot be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Plain HTTP was asked for on an address other than loopback.
    #[error("--no-tls listens in clear: only on a loopback address (127.0.0.1, ::1), not {addr}")]
    ClearOnNetwork { addr: SocketAddr },
}

/// A bound listener, with its TLS (none: plain HTTP on loopback).
pub struct Listener {
    tcp: TcpListener,
    pub addr: SocketAddr,
    pub tls: Option<tls::Tls>,
}

impl Listener {
    /// Binds `addr` and loads TLS (`None`: plain HTTP, loopback only).
    pub async fn bind(addr: SocketAddr, tls_src: Option<&tls::TlsSource>) -> Result<Listener, StartError> {
        if tls_src.is_none() && !addr.ip().is_loopback() {
            return Err(StartError::ClearOnNetwork { addr });
        }
        let tls = tls_src.map(tls::load).transpose()?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = tcp.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        Ok(Listener { tcp, addr, tls })
    }

    /// Serves `api` until `shutdown` completes (connections under way end with the runtime).
    pub async fn run(self, api: Arc<http::Api>, shutdown: impl Future<Output = ()>) {
        let app = http::router(api);
        let acceptor = self
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        tokio::pin!(shutdown);
        loop {
            let (tcp, _peer) = tokio::select! {
                a = self.tcp.accept() => match a {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(kind = "api_accept_failed", "the API cannot accept a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => return,
            };
            let (app, acceptor) = (app.clone(), acceptor.clone());
            tokio::spawn(async move {
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match acceptor {
                    Some(a) => match tokio::time::timeout(std::time::Duration::from_secs(10), a.accept(tcp)).await {
                        // A client that does not trust the certificate ends the handshake here.
                        Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), svc).await,
                        _ => return,
                    },
                    None => builder.serve_connection(TokioIo::new(tcp), svc).await,
                };
            });
        }
    }
}
