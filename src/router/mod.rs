//! The router tier: one endpoint for the whole cluster. It discovers the shards
//! ([`discovery`]), sends each token to the shard of its partition ([`proxy`],
//! [`service`]), answers from the store when that shard is down, not ready or too
//! slow ([`fallback`]), merges many-token and top-N answers ([`scatter`]), and
//! multiplexes client WebSockets over one upstream WS per shard ([`upstream_ws`]).
//! Routers hold no state of their own: any number can run side by side.

pub mod discovery;
pub mod fallback;
pub mod health;
pub mod proxy;
pub mod routes;
pub mod routing;
pub mod scatter;
pub mod service;
pub mod upstream_ws;

use std::sync::Arc;
use std::time::Duration;

pub use discovery::{ShardDirectory, ShardEndpoint};
pub use fallback::{StatsFallback, StoreFallback};
pub use proxy::ProxyError;
pub use routes::{router_routes, RouterApi};
pub use service::RouterService;

use crate::api::ws::Hub;
use crate::config::{Settings, WsSettings};
use crate::shard::StopFlag;
use crate::window::WindowSpec;
use health::spawn_health_poller;
use proxy::ShardClient;
use routing::Routing;
use upstream_ws::{spawn_upstream_links, UpstreamConfig};

/// Router parameters, from `shard.partitions`, `windows`, `router.*` and `ws.*`.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Number of partitions P (token → partition by the murmur2 partitioner).
    pub partitions: u32,
    /// The shards' windows (validates `/stats/top?window=`).
    pub windows: Vec<WindowSpec>,
    /// Deadline of every proxied shard call before falling back.
    pub shard_timeout: Duration,
    /// How often each shard's `/readyz` is polled.
    pub health_interval: Duration,
    /// Client-side WS behaviour (same as a shard's).
    pub ws: WsSettings,
    /// Upstream WS timing.
    pub upstream: UpstreamConfig,
}

impl RouterConfig {
    /// The configuration of a router role.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            partitions: settings.shard.partitions,
            windows: settings.windows.clone(),
            shard_timeout: settings.router.shard_timeout,
            health_interval: Duration::from_millis(500),
            ws: settings.ws.clone(),
            upstream: UpstreamConfig {
                ping_interval: settings.ws.ping_interval,
                ..UpstreamConfig::default()
            },
        }
    }
}

/// Builds the router's HTTP/WS app over `directory`, with `fallback` for
/// partitions whose shard cannot answer (`None`: no fallback, e.g. `store.kind =
/// memory`). Spawns the health poller and the upstream WS links on the current
/// runtime; they stop when `stop` is set.
pub fn router_app(
    config: RouterConfig,
    directory: ShardDirectory,
    fallback: Option<Arc<dyn StatsFallback>>,
    stop: StopFlag,
) -> Result<axum::Router, ProxyError> {
    let client = ShardClient::new(config.shard_timeout)?;
    let routing = Routing::new(directory.clone(), fallback.is_some());
    spawn_health_poller(
        routing.health.clone(),
        directory,
        client.clone(),
        config.health_interval,
        stop.clone(),
    );
    let (hub, interest) =
        Hub::new(config.ws.max_subscriptions, config.ws.client_queue).with_interest_feed();
    spawn_upstream_links(
        hub.clone(),
        interest,
        routing.clone(),
        config.upstream.clone(),
        stop,
    );
    crate::telemetry::metrics().register_hub(hub.clone());
    let service = Arc::new(RouterService::new(routing, client, fallback));
    Ok(router_routes(RouterApi {
        service,
        hub,
        ws: config.ws,
        windows: config.windows,
    }))
}
