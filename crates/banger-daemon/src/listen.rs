//! The API's accept loop: hyper over the unix socket, with what
//! `axum::serve` does not offer. A client gets
//! [`LimitsConfig::api_header_timeout_secs`] to send a request's headers
//! (fifty half-sent requests no longer stay open for good); at most
//! [`LimitsConfig::api_connections`] connections are served at once, one
//! more is answered 503 and closed; and a shutdown does not wait for
//! connections that never end by design (a held lease, an attached
//! session), which `axum::serve`'s graceful shutdown did.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use banger_api::ErrorCode;
use banger_config::LimitsConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::api::{ErrorResponse, Peer};

/// How long requests in flight get to finish once the daemon stops.
const GRACE: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: LimitsConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.api_connections as usize));
    let header_timeout = Duration::from_secs(u64::from(limits.api_header_timeout_secs));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors and the like: the next accept may
                // work; a closed listener cannot happen while we own it.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = Arc::clone(&permits).try_acquire_owned().ok();
        if permit.is_none() {
            tracing::warn!(
                limit = limits.api_connections,
                "too many API connections; refusing one"
            );
        }
        conns.spawn(connection(stream, app.clone(), permit, header_timeout));
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::info!(
            open = conns.len(),
            "closing API connections still open (leases, attached sessions)"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// One connection: `app` with its peer's credentials, or (over the
/// limit) a 503 for whatever it asks.
async fn connection(
    stream: UnixStream,
    app: Router,
    permit: Option<OwnedSemaphorePermit>,
    header_timeout: Duration,
) {
    let peer = Peer {
        uid: stream.peer_cred().ok().map(|c| c.uid()),
    };
    let io = TokioIo::new(stream);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let served = match permit {
        Some(_held) => {
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            http.serve_connection(io, svc).with_upgrades().await
        }
        None => {
            http.keep_alive(false);
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(
                    ErrorResponse::new(
                        ErrorCode::Unavailable,
                        "bangerd has too many connections open; try again (limits.api_connections)",
                    )
                    .into_response(),
                )
            });
            http.serve_connection(io, svc).await
        }
    };
    if let Err(e) = served {
        // A client that went, or took too long over its headers.
        tracing::debug!(error = %e, "API connection ended");
    }
}
