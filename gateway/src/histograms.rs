//! Latency histograms in `/metrics`, from `prometheus-client` (the
//! Prometheus histogram type: `_bucket{le}`, `_sum`, `_count`), per service:
//!
//! - `sluice_ingest_durable_seconds{service}`: from the moment a produce
//!   (an HTTP request's records, an MQTT publish) was queued to the moment
//!   its records were durable: the sync lane's group commit for `sync` and
//!   express services, the bulk lane's flush for buffered ones (about
//!   `store.flush_interval`).
//! - `sluice_delivery_age_seconds{service, path}`: age of a record when it
//!   was handed to a local consumer: `path` is `fetch` (partition fetch),
//!   `group` (group fetch), `sse`, `websocket`, `kafka` (now minus the record's
//!   timestamp), or `mqtt` (live subscribers: time the publish waited in
//!   sluice's outbox before it was written to the subscriber's socket).
//! - `sluice_uplink_ack_age_seconds{uplink, service}`: age of a record
//!   (now minus its timestamp) when the central side acknowledged it.
//!
//! Record ages use the record's timestamp: set by sluice at ingest unless
//! the producer gave one (then the producer's clock counts).
//!
//! Buckets (seconds): 1, 2, 5, 10, 20, 50, 100, 200, 500 ms, 1, 2, 5, 10,
//! 30, 60, 300, 3600 s, +Inf.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

/// Upper bounds of the buckets, seconds.
pub const BUCKETS: [f64; 17] =
    [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    service: String,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkLabels {
    uplink: String,
    service: String,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

struct Histograms {
    registry: Registry,
    durable: Hist<ServiceLabels>,
    delivery: Hist<DeliveryLabels>,
    uplink: Hist<UplinkLabels>,
}

fn latency() -> Histogram {
    Histogram::new(BUCKETS)
}

static HISTOGRAMS: LazyLock<Histograms> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let durable: Hist<ServiceLabels> = Family::new_with_constructor(latency);
    let delivery: Hist<DeliveryLabels> = Family::new_with_constructor(latency);
    let uplink: Hist<UplinkLabels> = Family::new_with_constructor(latency);
    registry.register(
        "sluice_ingest_durable_seconds",
        "From a produce queued to its records durable, per service",
        durable.clone(),
    );
    registry.register(
        "sluice_delivery_age_seconds",
        "Age of a record handed to a local consumer, per service and path",
        delivery.clone(),
    );
    registry.register(
        "sluice_uplink_ack_age_seconds",
        "Age of a record when the central side acknowledged it, per uplink and service",
        uplink.clone(),
    );
    Histograms { registry, durable, delivery, uplink }
});

/// Seconds since `timestamp_ms` (0 for a timestamp in the future).
fn age_of(timestamp_ms: i64) -> f64 {
    (sluice_store::now_ms().saturating_sub(timestamp_ms)).max(0) as f64 / 1000.0
}

/// A produce of `service` became durable `elapsed` after it was queued.
pub fn durable(service: &str, elapsed: Duration) {
    HISTOGRAMS
        .durable
        .get_or_create(&ServiceLabels { service: service.to_owned() })
        .observe(elapsed.as_secs_f64());
}

/// Records of `service` with these timestamps were handed to a consumer
/// over `path`.
pub fn delivered(service: &str, path: &str, timestamps_ms: impl IntoIterator<Item = i64>) {
    let h = HISTOGRAMS
        .delivery
        .get_or_create_owned(&DeliveryLabels { service: service.to_owned(), path: path.to_owned() });
    for ts in timestamps_ms {
        h.observe(age_of(ts));
    }
}

/// A publish of `service` waited `waited` in a live subscriber's outbox.
pub fn delivered_mqtt(service: &str, waited: Duration) {
    HISTOGRAMS
        .delivery
        .get_or_create(&DeliveryLabels { service: service.to_owned(), path: "mqtt".to_owned() })
        .observe(waited.as_secs_f64());
}

/// The central side acknowledged records of `service` with these
/// timestamps.
pub fn uplink_acked(uplink: &str, service: &str, timestamps_ms: &[i64]) {
    let h = HISTOGRAMS
        .uplink
        .get_or_create_owned(&UplinkLabels { uplink: uplink.to_owned(), service: service.to_owned() });
    for &ts in timestamps_ms {
        h.observe(age_of(ts));
    }
}

/// Appends the histograms in the text exposition format.
pub fn render(out: &mut String) {
    if let Err(e) = prometheus_client::encoding::text::encode_registry(out, &HISTOGRAMS.registry) {
        tracing::error!(error = %e, "cannot encode the histograms");
    }
}
