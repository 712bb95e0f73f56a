//! `/metrics` in the Prometheus text format, rendered from the gateway's own
//! counters on each scrape (no registry, no background work).

use crate::state::Shared;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Panics in this process so far (`sluice_panics_total`).
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Installs the process's panic hook: a panic goes to the log like every
/// other error and is counted in `sluice_panics_total`, so monitoring sees
/// what a log line alone would hide. sled 0.34 panics on some damaged
/// files; the store catches those and reports the data directory, so the
/// message logged here is context for that error, not a crash.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        tracing::error!(%thread, %location, "internal error: {message}");
    }));
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Renders every metric.
pub fn render(shared: &Shared) -> String {
    let mut out = Out(String::with_capacity(4096));
    let queues = shared.ingest.queue_stats();
    let stored = shared.store.service_bytes();
    let services: Vec<_> = shared.services.iter().collect();

    type Getter = fn(&crate::services::Service, &crate::ingest::QueueStats, u64) -> f64;
    let per_service: [(&str, &str, &str, Getter); 11] = [
        ("sluice_service_queue_depth", "gauge", "Ingest jobs queued", |_, q, _| q.jobs as f64),
        ("sluice_service_queue_bytes", "gauge", "Bytes queued for persisting", |s, _, _| {
            s.pending_bytes.load(Ordering::Relaxed) as f64
        }),
        ("sluice_service_oldest_pending_seconds", "gauge", "Age of the oldest queued job", |_, q, _| {
            q.oldest.map_or(0.0, |d| d.as_secs_f64())
        }),
        ("sluice_service_weight", "gauge", "Current scheduler weight", |s, _, _| f64::from(s.class().weight)),
        ("sluice_service_stored_bytes", "gauge", "Record bytes stored in the log", |_, _, b| b as f64),
        ("sluice_service_records_in_total", "counter", "Records persisted", |s, _, _| {
            s.counters.records_in.load(Ordering::Relaxed) as f64
        }),
        ("sluice_service_bytes_in_total", "counter", "Record bytes persisted", |s, _, _| {
            s.counters.bytes_in.load(Ordering::Relaxed) as f64
        }),
        (
            "sluice_service_rejected_total",
            "counter",
            "Ingest requests refused because the queue was full",
            |s, _, _| s.counters.rejected_full.load(Ordering::Relaxed) as f64,
        ),
        (
            "sluice_service_ttl_expired_total",
            "counter",
            "Records skipped at delivery past their TTL",
            |s, _, _| s.counters.ttl_expired.load(Ordering::Relaxed) as f64,
        ),
        (
            "sluice_service_retention_deleted_total",
            "counter",
            "Records deleted by topic retention",
            |s, _, _| s.counters.retention_deleted.load(Ordering::Relaxed) as f64,
        ),
        ("sluice_service_evicted_total", "counter", "Records evicted to keep the disk budget", |s, _, _| {
            s.counters.evicted.load(Ordering::Relaxed) as f64
        }),
    ];
    for (name, kind, help, get) in per_service {
        out.family(name, kind, help);
        for (s, q) in services.iter().zip(&queues) {
            let b = stored.get(&s.name).copied().unwrap_or(0);
            out.sample(name, &[("service", &s.name)], get(s, q, b));
        }
    }
    out.family("sluice_service_storage_errors_total", "counter", "Records that failed to persist");
    for s in &services {
        out.sample(
            "sluice_service_storage_errors_total",
            &[("service", &s.name)],
            s.counters.rejected_error.load(Ordering::Relaxed),
        );
    }

    let topics = shared.store.topics();
    out.family("sluice_topic_high_watermark", "gauge", "Next offset to be written");
    for t in &topics {
        for p in &t.partitions {
            let part = p.partition.0.to_string();
            out.sample(
                "sluice_topic_high_watermark",
                &[("topic", &t.spec.name), ("partition", &part)],
                p.high_watermark.0,
            );
        }
    }
    out.family("sluice_topic_durable", "gauge", "Next offset not yet durable: readers see records below it");
    for t in &topics {
        for p in &t.partitions {
            let part = p.partition.0.to_string();
            out.sample("sluice_topic_durable", &[("topic", &t.spec.name), ("partition", &part)], p.flushed.0);
        }
    }
    out.family("sluice_topic_log_start", "gauge", "First offset still stored");
    for t in &topics {
        for p in &t.partitions {
            let part = p.partition.0.to_string();
            out.sample(
                "sluice_topic_log_start",
                &[("topic", &t.spec.name), ("partition", &part)],
                p.log_start.0,
            );
        }
    }

    out.family("sluice_store_bytes", "gauge", "Record bytes stored (what store.max_bytes limits)");
    out.sample("sluice_store_bytes", &[], shared.store.total_bytes());
    out.family("sluice_store_max_bytes", "gauge", "Disk budget (store.max_bytes)");
    out.sample("sluice_store_max_bytes", &[], shared.config.store.max_bytes.as_u64());
    let fs = &shared.ingest.flush_stats;
    out.family("sluice_store_flushes_total", "counter", "Flushes to disk (group commits and background)");
    out.sample("sluice_store_flushes_total", &[], fs.flushes.load(Ordering::Relaxed));
    out.family("sluice_store_flush_seconds_total", "counter", "Time spent flushing");
    out.sample("sluice_store_flush_seconds_total", &[], fs.flush_micros.load(Ordering::Relaxed) as f64 / 1e6);
    out.family("sluice_store_unflushed_jobs", "gauge", "Ingest jobs appended but not yet flushed to disk");
    out.sample(
        "sluice_store_unflushed_jobs",
        &[],
        fs.appended_jobs.load(Ordering::Acquire).saturating_sub(fs.durable_jobs.load(Ordering::Acquire)),
    );
    out.family("sluice_store_flush_failures_total", "counter", "Failed flushes");
    out.sample("sluice_store_flush_failures_total", &[], fs.failures.load(Ordering::Relaxed));
    let m = &shared.mqtt;
    out.family("sluice_mqtt_received_total", "counter", "Publishes received from MQTT clients");
    out.sample("sluice_mqtt_received_total", &[], m.received.load(Ordering::Relaxed));
    out.family(
        "sluice_mqtt_key_missing_total",
        "counter",
        "Publishes stored without key: the route's key was missing",
    );
    out.sample("sluice_mqtt_key_missing_total", &[], m.key_missing.load(Ordering::Relaxed));
    if let Some(n) = m.ports.get().and_then(|ports| crate::mqtt::connections(ports)) {
        out.family("sluice_mqtt_connections", "gauge", "Established MQTT client connections");
        out.sample("sluice_mqtt_connections", &[], n);
    }
    render_listener(&mut out, Listener::Http, &shared.http_connections);
    render_listener(&mut out, Listener::Mqtt, &m.listener);
    #[cfg(feature = "kafka-listener")]
    render_kafka(&mut out, &shared.kafka);
    out.family("sluice_mqtt_dropped_total", "counter", "Publishes dropped, by reason");
    for (reason, v) in [
        ("unrouted", &m.dropped_unrouted),
        ("invalid_topic", &m.dropped_invalid_topic),
        ("shutting_down", &m.dropped_shutting_down),
        ("not_allowed", &m.dropped_not_allowed),
    ] {
        out.sample("sluice_mqtt_dropped_total", &[("reason", reason)], v.load(Ordering::Relaxed));
    }
    for s in &services {
        out.sample(
            "sluice_mqtt_dropped_total",
            &[("reason", "queue_full"), ("service", &s.name)],
            s.counters.mqtt_dropped_full.load(Ordering::Relaxed),
        );
        out.sample(
            "sluice_mqtt_dropped_total",
            &[("reason", "rate_limited"), ("service", &s.name)],
            s.counters.mqtt_dropped_rate.load(Ordering::Relaxed),
        );
    }
    out.family(
        "sluice_mqtt_delivery_dropped_total",
        "counter",
        "Publishes to live MQTT subscribers dropped from a slow subscriber's full queue (mqtt.delivery_queue)",
    );
    for s in &services {
        out.sample(
            "sluice_mqtt_delivery_dropped_total",
            &[("service", &s.name)],
            s.counters.mqtt_delivery_dropped.load(Ordering::Relaxed),
        );
    }
    out.family(
        "sluice_mqtt_subscribe_refused_total",
        "counter",
        "MQTT subscription filters refused: outside the user's subscribe filters",
    );
    out.sample("sluice_mqtt_subscribe_refused_total", &[], m.subscribe_refused.load(Ordering::Relaxed));
    let lags = m.session_lags();
    out.family(
        "sluice_mqtt_session_lag_records",
        "gauge",
        "Publishes sluice holds for a live MQTT subscriber, not yet sent, per service (the 100 sessions most behind)",
    );
    for l in &lags {
        let labels = [("client_id", l.client_id.as_str()), ("service", l.service.as_str())];
        out.sample("sluice_mqtt_session_lag_records", &labels, l.records);
    }
    out.family(
        "sluice_mqtt_session_lag_seconds",
        "gauge",
        "Age of the oldest publish sluice holds for a live MQTT subscriber, per service (0 when none)",
    );
    for l in &lags {
        let labels = [("client_id", l.client_id.as_str()), ("service", l.service.as_str())];
        out.sample("sluice_mqtt_session_lag_seconds", &labels, l.seconds);
    }
    out.family("sluice_mqtt_connect_refused_total", "counter", "MQTT CONNECTs refused, by reason");
    for (reason, v) in [
        ("no_credentials", &m.refused_no_credentials),
        ("bad_credentials", &m.refused_bad_credentials),
        ("busy", &m.refused_busy),
    ] {
        out.sample("sluice_mqtt_connect_refused_total", &[("reason", reason)], v.load(Ordering::Relaxed));
    }
    out.family(
        "sluice_mqtt_closed_removed_user_total",
        "counter",
        "MQTT connections closed because a configuration reload removed their user",
    );
    out.sample("sluice_mqtt_closed_removed_user_total", &[], m.closed_removed_user.load(Ordering::Relaxed));
    out.family(
        "sluice_service_rate_limited_total",
        "counter",
        "HTTP produce requests refused with 429 by the service's rate limit",
    );
    for s in &services {
        out.sample(
            "sluice_service_rate_limited_total",
            &[("service", &s.name)],
            s.counters.rejected_rate.load(Ordering::Relaxed),
        );
    }
    // Conservation: in = stored + dropped (queue_full, rate_limited) +
    // failed + still queued; acked <= stored.
    for (name, help, get) in [
        (
            "sluice_service_mqtt_in_total",
            "MQTT publishes routed to the service",
            (|c| &c.mqtt_in) as fn(&crate::services::Counters) -> &std::sync::atomic::AtomicU64,
        ),
        ("sluice_service_mqtt_stored_total", "MQTT publishes appended to the log", |c| &c.mqtt_stored),
        ("sluice_service_mqtt_acked_total", "QoS 1/2 publishes acknowledged after they were stored", |c| {
            &c.mqtt_acked
        }),
        (
            "sluice_service_mqtt_failed_total",
            "MQTT publishes queued but not stored (storage error, shutdown); not acknowledged",
            |c| &c.mqtt_failed,
        ),
    ] {
        out.family(name, "counter", help);
        for s in &services {
            out.sample(name, &[("service", &s.name)], get(&s.counters).load(Ordering::Relaxed));
        }
    }
    render_uplinks(&mut out, &shared.uplink_snapshots());
    render_groups(&mut out, &shared.store);
    #[cfg(feature = "rules")]
    render_rules(&mut out, &shared.rules.get().map(|r| r.handles()).unwrap_or_default());
    out.family("sluice_panics_total", "counter", "Panics (internal errors) in the sluice process");
    out.sample("sluice_panics_total", &[], PANICS.load(Ordering::Relaxed));
    out.family("sluice_uptime_seconds", "gauge", "Seconds since start");
    out.sample("sluice_uptime_seconds", &[], shared.started.elapsed().as_secs());
    crate::histograms::render(&mut out.0);
    out.0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Http,
    Mqtt,
}

/// Connection counters of the HTTP listener or the MQTT listeners.
#[cfg(feature = "kafka-listener")]
fn render_kafka(out: &mut Out, k: &crate::kafka::KafkaStats) {
    let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    out.family("sluice_kafka_connections", "gauge", "Open Kafka-protocol connections");
    out.sample("sluice_kafka_connections", &[], get(&k.connections.open));
    out.family(
        "sluice_kafka_connections_refused_total",
        "counter",
        "Kafka connections closed at accept: kafka.max_connections were open",
    );
    out.sample("sluice_kafka_connections_refused_total", &[], get(&k.connections.refused));
    out.family(
        "sluice_kafka_tls_handshake_failures_total",
        "counter",
        "Kafka TLS handshakes that failed or timed out",
    );
    out.sample("sluice_kafka_tls_handshake_failures_total", &[], get(&k.connections.handshake_failures));
    out.family("sluice_kafka_requests_total", "counter", "Kafka requests taken");
    out.sample("sluice_kafka_requests_total", &[], get(&k.requests));
    out.family(
        "sluice_kafka_protocol_errors_total",
        "counter",
        "Kafka connections closed for bad input, by kind (ApiVersions too new is answered, and counted as unsupported)",
    );
    for (kind, v) in
        [("malformed", &k.malformed), ("oversized", &k.oversized), ("unsupported", &k.unsupported)]
    {
        out.sample("sluice_kafka_protocol_errors_total", &[("kind", kind)], get(v));
    }
    out.family(
        "sluice_kafka_produce_throttled_total",
        "counter",
        "Kafka produce requests delayed by a service's rate or pending limit",
    );
    out.sample("sluice_kafka_produce_throttled_total", &[], get(&k.throttled));
    out.family(
        "sluice_kafka_sasl_authentications_total",
        "counter",
        "Kafka SASL authentications, by result (failed: wrong password, unknown user, mechanism not offered)",
    );
    for (result, v) in [("ok", &k.sasl_authenticated), ("failed", &k.sasl_failed)] {
        out.sample("sluice_kafka_sasl_authentications_total", &[("result", result)], get(v));
    }
    out.family(
        "sluice_kafka_not_authorized_total",
        "counter",
        "Kafka topics refused TOPIC_AUTHORIZATION_FAILED (outside the user's produce or consume topics)",
    );
    out.sample("sluice_kafka_not_authorized_total", &[], get(&k.not_authorized));
    out.family(
        "sluice_kafka_connections_closed_total",
        "counter",
        "Kafka connections closed by sluice, by reason (unauthenticated: a request before SASL; idle: \
         kafka.idle_timeout; write_timeout: the client did not read for kafka.write_timeout)",
    );
    for (reason, v) in [
        ("unauthenticated", &k.unauthenticated),
        ("idle", &k.idle_closed),
        ("write_timeout", &k.write_timeouts),
    ] {
        out.sample("sluice_kafka_connections_closed_total", &[("reason", reason)], get(v));
    }
}

fn render_listener(out: &mut Out, listener: Listener, stats: &crate::listener::ListenerStats) {
    let (prefix, what) = match listener {
        Listener::Http => ("sluice_http", "HTTP"),
        Listener::Mqtt => ("sluice_mqtt", "MQTT"),
    };
    let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let mut counters = vec![
        (
            "connections_refused_total",
            "connections closed at accept: max_connections were open",
            &stats.refused,
        ),
        (
            "tls_handshake_failures_total",
            "TLS handshakes that failed or timed out",
            &stats.handshake_failures,
        ),
    ];
    if listener == Listener::Http {
        // sluice_mqtt_connections comes from the kernel's table instead.
        out.family("sluice_http_connections", "gauge", "Open HTTP connections");
        out.sample("sluice_http_connections", &[], get(&stats.open));
        counters.push((
            "header_timeouts_total",
            "connections closed by http.header_timeout",
            &stats.header_timeouts,
        ));
        counters.push((
            "idle_timeouts_total",
            "connections closed by http.idle_timeout",
            &stats.idle_timeouts,
        ));
        counters.push((
            "body_timeouts_total",
            "requests answered 408: the body took longer than http.body_timeout",
            &stats.body_timeouts,
        ));
    }
    for (name, help, value) in counters {
        let name = format!("{prefix}_{name}");
        out.family(&name, "counter", &format!("{what} {help}"));
        out.sample(&name, &[], get(value));
    }
}

fn render_groups(out: &mut Out, store: &sluice_store::Store) {
    let lags = match crate::delivery::group_lags(store) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot list group offsets");
            return;
        }
    };
    out.family("sluice_group_lag_records", "gauge", "Durable records a consumer group has not committed");
    for g in &lags {
        let p = g.partition.0.to_string();
        let labels = [("group", g.group.as_str()), ("topic", g.topic.as_str()), ("partition", p.as_str())];
        out.sample("sluice_group_lag_records", &labels, g.lag_records.unwrap_or(0));
    }
    out.family(
        "sluice_group_lag_seconds",
        "gauge",
        "Age of the oldest record a consumer group has not committed (0 when caught up)",
    );
    for g in &lags {
        let p = g.partition.0.to_string();
        let labels = [("group", g.group.as_str()), ("topic", g.topic.as_str()), ("partition", p.as_str())];
        out.sample("sluice_group_lag_seconds", &labels, g.lag_seconds);
    }
}

/// `sluice_rule_*{rule="..."}`: one family per counter or gauge of
/// [`crate::rules::stats::RuleStats`].
#[cfg(feature = "rules")]
fn render_rules(out: &mut Out, rules: &[std::sync::Arc<crate::rules::RuleHandle>]) {
    let Some(first) = rules.first() else { return };
    for (i, (name, counter, _)) in first.stats.values().into_iter().enumerate() {
        let family =
            if counter { format!("sluice_rule_{name}_total") } else { format!("sluice_rule_{name}") };
        out.family(&family, if counter { "counter" } else { "gauge" }, crate::rules::stats::help(name));
        for r in rules {
            out.sample(&family, &[("rule", &r.program.name)], r.stats.values()[i].2);
        }
    }
}

fn render_uplinks(out: &mut Out, uplinks: &[sluice_uplink::UplinkSnapshot]) {
    if uplinks.is_empty() {
        return;
    }
    out.family("sluice_uplink_state", "gauge", "1 for the uplink's current state");
    for u in uplinks {
        for state in ["starting", "connected", "backing_off", "failing"] {
            let v = u8::from(u.state.label() == state);
            out.sample("sluice_uplink_state", &[("uplink", &u.name), ("state", state)], v);
        }
    }
    out.family("sluice_uplink_retries_total", "counter", "Batches retried after an error");
    for u in uplinks {
        out.sample("sluice_uplink_retries_total", &[("uplink", &u.name)], u.retries);
    }
    out.family("sluice_uplink_throughput_bytes_per_second", "gauge", "Forwarding throughput, smoothed");
    for u in uplinks {
        out.sample("sluice_uplink_throughput_bytes_per_second", &[("uplink", &u.name)], u.throughput_bps);
    }
    out.family("sluice_uplink_eta_seconds", "gauge", "Estimated time to forward the lag (-1: unknown)");
    for u in uplinks {
        out.sample("sluice_uplink_eta_seconds", &[("uplink", &u.name)], u.eta_seconds().unwrap_or(-1.0));
    }
    out.family("sluice_uplink_in_flight_batches", "gauge", "Batches sent and not acknowledged yet");
    for u in uplinks {
        out.sample("sluice_uplink_in_flight_batches", &[("uplink", &u.name)], u.in_flight);
    }
    out.family(
        "sluice_uplink_cursor_checkpoints_total",
        "counter",
        "Cursor checkpoints (store flushes) written",
    );
    for u in uplinks {
        out.sample("sluice_uplink_cursor_checkpoints_total", &[("uplink", &u.name)], u.checkpoints);
    }
    out.family(
        "sluice_uplink_resent_records_total",
        "counter",
        "Records sent again after a restart that an earlier run had sent already (at least)",
    );
    for u in uplinks {
        out.sample("sluice_uplink_resent_records_total", &[("uplink", &u.name)], u.resent_records);
    }
    type Budget = fn(&sluice_uplink::BudgetStatus) -> f64;
    let budget: [(&str, &str, Budget); 4] = [
        ("sluice_uplink_budget_bytes", "Metered link: bytes per budget period", |b| b.bytes as f64),
        ("sluice_uplink_budget_used_bytes", "Metered link: bytes charged in this period", |b| b.used as f64),
        ("sluice_uplink_budget_left_bytes", "Metered link: bytes left in this period", |b| b.left as f64),
        ("sluice_uplink_budget_bulk_open", "Metered link: 1 when services outside `always` may send", |b| {
            f64::from(u8::from(b.bulk_open))
        }),
    ];
    for (name, help, get) in budget {
        out.family(name, "gauge", help);
        for u in uplinks {
            if let Some(b) = &u.budget {
                out.sample(name, &[("uplink", &u.name)], get(b));
            }
        }
    }
    type Get = fn(&sluice_uplink::ServiceLag) -> f64;
    let per_service: [(&str, &str, &str, Get); 8] = [
        ("sluice_uplink_lag_records", "gauge", "Records not forwarded yet", |s| s.lag_records as f64),
        ("sluice_uplink_lag_bytes", "gauge", "Bytes not forwarded yet (estimated)", |s| s.lag_bytes as f64),
        ("sluice_uplink_oldest_unsent_seconds", "gauge", "Age of the oldest record not forwarded", |s| {
            s.oldest_unsent_ms.map_or(0.0, |ms| ms as f64 / 1000.0)
        }),
        ("sluice_uplink_sent_records_total", "counter", "Records forwarded", |s| s.sent_records as f64),
        ("sluice_uplink_sent_bytes_total", "counter", "Bytes forwarded", |s| s.sent_bytes as f64),
        ("sluice_uplink_ttl_skipped_total", "counter", "Records not forwarded: older than the TTL", |s| {
            s.ttl_skipped as f64
        }),
        (
            "sluice_uplink_lost_before_forward_total",
            "counter",
            "Records deleted before they were forwarded",
            |s| s.lost_before_forward as f64,
        ),
        (
            "sluice_uplink_unfit_skipped_total",
            "counter",
            "Records not forwarded: the sink can never carry them (e.g. over the broker's maximum packet size)",
            |s| s.unfit_skipped as f64,
        ),
    ];
    for (name, kind, help, get) in per_service {
        out.family(name, kind, help);
        for u in uplinks {
            for (service, s) in &u.services {
                out.sample(name, &[("uplink", &u.name), ("service", service)], get(s));
            }
        }
    }
}

/// Lets a repeated log line through at most once per period.
#[derive(Debug)]
pub struct LogLimit {
    period: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogLimit {
    /// At most one line per `period`.
    pub fn new(period: std::time::Duration) -> LogLimit {
        LogLimit { period, state: std::sync::Mutex::new((None, 0)) }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// suppressed since the last one; `None` (and counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}
