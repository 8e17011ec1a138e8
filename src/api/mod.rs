//! The HTTP and WebSocket interface: JSON errors, parameter validation, the
//! endpoints answered from local partitions, the WS hub, and serving.

pub mod error;
mod local;
pub mod params;
pub mod ws;

use std::net::SocketAddr;

pub use error::ApiError;
pub use local::{local_routes, LocalApi};

use crate::shard::StopFlag;

/// Serves `app` on `addr` until SIGINT/SIGTERM; then sets `stop` and drains.
pub async fn serve(addr: SocketAddr, app: axum::Router, stop: StopFlag) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    serve_on(listener, app, stop).await
}

/// Like [`serve`] on an already bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: StopFlag,
) -> std::io::Result<()> {
    // Small WS updates and JSON answers must leave at once: without NODELAY,
    // Nagle waits for the client's delayed ACK (~40 ms per stall).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            stop.set();
        })
        .await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
