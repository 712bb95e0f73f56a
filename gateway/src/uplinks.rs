//! Running the configured uplinks: the gateway's side of
//! [`sluice_uplink::Host`] (topics, live service priorities, flushes) and
//! the choice of sink per `uplink.kind`.

use crate::state::Shared;
use sluice_config::{Config, UplinkKind};
use sluice_store::scheduler::ServiceClass;
use sluice_uplink::{Host, TopicView, UplinkHandle};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The gateway as the uplinks see it.
#[derive(Debug, Clone)]
pub struct GatewayHost(pub Shared);

impl Host for GatewayHost {
    fn topics(&self) -> Vec<TopicView> {
        self.0
            .topics
            .all()
            .iter()
            .map(|t| TopicView {
                name: t.name.to_string(),
                service: t.service.clone(),
                partitions: t.partitions,
            })
            .collect()
    }

    fn class(&self, service: &str) -> ServiceClass {
        self.0.services.resolve(service).class()
    }

    fn ttl(&self, service: &str) -> Option<Duration> {
        self.0.services.resolve(service).ttl
    }

    fn express_max_share(&self) -> f64 {
        self.0.config.scheduler.express_max_share
    }

    fn acked(&self, uplink: &str, service: &str, timestamps_ms: &[i64]) {
        crate::histograms::uplink_acked(uplink, service, timestamps_ms);
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let rx = self.0.ingest.flush_soon(false);
        Box::pin(async move { matches!(rx.await, Ok(Ok(()))) })
    }
}

/// Starts one worker per `[[uplink]]`; fails on a sink configuration the
/// sink refuses (naming the uplink).
pub fn start(shared: &Shared, config: &Config) -> anyhow::Result<Vec<UplinkHandle>> {
    let host: Arc<dyn Host> = Arc::new(GatewayHost(shared.clone()));
    config
        .uplinks
        .iter()
        .map(|u| -> anyhow::Result<UplinkHandle> {
            let (node, store) = (config.node.id.clone(), shared.store.clone());
            let (appended, shutdown) = (shared.topics.subscribe_any(), shared.shutdown.clone());
            tracing::info!(uplink = %u.name, kind = u.kind.as_str(), brokers = ?u.brokers, "starting uplink");
            let refused = |e: sluice_uplink::SinkError| anyhow::anyhow!("uplink[{:?}]: {e}", u.name);
            Ok(match u.kind {
                UplinkKind::Kafka => {
                    let sink = sluice_uplink::kafka::KafkaSink::new(u, &node);
                    sluice_uplink::spawn(u.clone(), node, store, host.clone(), sink, appended, shutdown)
                }
                UplinkKind::Mqtt => {
                    let sink = sluice_uplink::mqtt::MqttSink::new(u, &node).map_err(refused)?;
                    sluice_uplink::spawn(u.clone(), node, store, host.clone(), sink, appended, shutdown)
                }
                UplinkKind::Http => {
                    let sink = sluice_uplink::http::HttpSink::new(u, &node).map_err(refused)?;
                    sluice_uplink::spawn(u.clone(), node, store, host.clone(), sink, appended, shutdown)
                }
            })
        })
        .collect()
}
