//! `sluice run`: open the store, start the pipeline and the listeners,
//! announce the addresses, wait for a signal, drain.

use crate::ingest::{Ingest, IngestOptions};
use crate::maintenance::Maintenance;
use crate::services::Services;
use crate::state::{Inner, Shared};
use crate::topics::Topics;
use anyhow::Context as _;
use sluice_config::Config;
use sluice_store::scheduler::ServiceClass;
use sluice_store::{Store, StoreOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long in-flight requests get to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Command-line settings of `sluice run`; the first three override the
/// configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Overrides `node.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// Overrides `http.listen`.
    pub http_listen: Option<SocketAddr>,
    /// Overrides `mqtt.listen`.
    pub mqtt_listen: Option<SocketAddr>,
    /// Open a store that lost flushed records (see the durability contract).
    pub accept_data_loss: bool,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(d) = &self.data_dir {
            config.node.data_dir = d.clone();
        }
        if let Some(a) = self.http_listen {
            config.http.listen = a;
        }
        if let Some(a) = self.mqtt_listen {
            config.mqtt.listen = a;
        }
    }
}

/// Runs the gateway until `stop` resolves (a signal in the binary). With a
/// `config_path`, SIGHUP re-reads it and applies new weights.
pub async fn run(
    mut config: Config,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    overrides.apply(&mut config);
    #[cfg(feature = "rules")]
    let rules = compile_rules(&config)?;
    #[cfg(not(feature = "rules"))]
    compile_rules(&config)?;
    // Every TLS file is read before anything starts (as check-config does).
    crate::listener::check_tls_files(&config)?;
    open_files_limit(&config);
    let data_dir = config.node.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let opened = Instant::now();
    let store = Store::open(&StoreOptions {
        cache_capacity: config.store.cache_capacity.as_u64(),
        accept_data_loss: overrides.accept_data_loss,
        segments: sluice_store::SegmentLimits {
            max_bytes: config.store.segment_bytes.as_u64(),
            max_age_ms: config.store.segment_age.as_millis() as i64,
        },
        ..StoreOptions::new(data_dir.join("log"))
    })?;
    tracing::info!(path = %data_dir.display(), topics = store.topics().len(), bytes = store.total_bytes(),
        elapsed_ms = opened.elapsed().as_millis() as u64, "store opened");

    let services = Arc::new(Services::from_config(&config));
    let topics = Topics::open(&config, &store, &services)?;
    let (ingest, threads) = Ingest::start(
        store.clone(),
        services.clone(),
        IngestOptions {
            mode: crate::ingest::scheduler_mode(&config),
            express_max_share: config.scheduler.express_max_share,
            sync_window: config.store.sync_window,
            flush_interval: config.store.flush_interval,
            writeback_step: config.store.writeback_step.as_u64(),
            max_dirty: config.store.max_dirty.as_u64(),
            checkpoint_interval: config.store.checkpoint_interval,
        },
    )
    .context("cannot start the ingest threads")?;
    let maintenance = Maintenance::start(
        store.clone(),
        services.clone(),
        config.store.max_bytes.as_u64(),
        Duration::from_secs(1),
    )
    .context("cannot start the maintenance thread")?;

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {} (http.listen)", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let http_limits = crate::http::serve::Limits {
        header_timeout: config.http.header_timeout,
        idle_timeout: config.http.idle_timeout,
        tls: config
            .http
            .tls
            .as_ref()
            .map(|tls| crate::listener::TlsListener::new(tls, "http.tls", &[b"http/1.1"]))
            .transpose()?,
    };
    let http_stats = Arc::new(crate::listener::ListenerStats::default());
    let http_gate = crate::listener::Gate::new(config.http.max_connections, http_stats.clone());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mqtt_stats = Arc::new(crate::mqtt::MqttStats::default());
    let http_tokens = std::sync::RwLock::new(Arc::new(crate::http::auth::Tokens::new(&config.http.tokens)));
    let shared = Shared(Arc::new(Inner {
        config,
        store: store.clone(),
        services,
        topics,
        ingest: ingest.clone(),
        shutdown: shutdown_rx.clone(),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        mqtt: mqtt_stats.clone(),
        http_connections: http_stats,
        #[cfg(feature = "kafka-listener")]
        kafka: Default::default(),
        #[cfg(feature = "kafka-listener")]
        kafka_accounts: std::sync::OnceLock::new(),
        commits: watch::channel(0).0,
        group_rounds: Default::default(),
        uplinks: std::sync::OnceLock::new(),
        http_tokens,
        mqtt_guard: std::sync::OnceLock::new(),
        tls_listeners: std::sync::Mutex::new(http_limits.tls.iter().cloned().collect()),
        config_path: config_path.clone(),
        #[cfg(feature = "rules")]
        rules: std::sync::OnceLock::new(),
    }));
    let mqtt = crate::mqtt::start(&shared, mqtt_stats)?;
    let uplinks = crate::uplinks::start(&shared, &shared.config)?;
    let _ = shared.uplinks.set(uplinks.iter().map(|u| u.status.clone()).collect());
    #[cfg(feature = "rules")]
    let rules = crate::rules::start(&shared, rules).await;
    #[cfg(feature = "kafka-listener")]
    let kafka = crate::kafka::start(&shared).await?.map(|k| (k.addr, k.tls));
    #[cfg(not(feature = "kafka-listener"))]
    let kafka: Option<(SocketAddr, bool)> = None;
    let http_tls = http_limits.tls.is_some();
    write_listen_json(&data_dir, http_addr, http_tls, &mqtt, kafka).context("cannot write listen.json")?;
    let app = crate::http::router(shared.clone());
    let server =
        tokio::spawn(crate::http::serve::serve(listener, app, http_limits, http_gate, shutdown_rx.clone()));
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(shared.clone(), path));
    }
    shared.ready.store(true, Ordering::Relaxed);
    crate::systemd::ready(&format!("HTTP on {http_addr}, MQTT on {}", mqtt.addr));
    tokio::spawn(crate::systemd::watchdog(shared.clone()));
    tracing::info!(http = %http_addr, http_tls, mqtt = %mqtt.addr, kafka = ?kafka.map(|(a, _)| a), mqtt_v5 = ?mqtt.addr_v5, mqtt_tls = mqtt.tls,
        data_dir = %data_dir.display(), "sluice is ready");

    stop.await;
    tracing::info!("stop requested: draining");
    crate::systemd::stopping();
    shared.ready.store(false, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => {
            tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "in-flight requests did not finish in time")
        }
    }
    // Uplinks saw the shutdown signal: a batch in flight is abandoned (its
    // cursor did not move; it is sent again after the restart).
    for u in uplinks {
        u.join().await;
    }
    // Rules saw the shutdown signal: a step in progress either committed
    // or left nothing (it runs again after the restart).
    #[cfg(feature = "rules")]
    rules.join().await;
    tokio::task::spawn_blocking(move || {
        // rumqttd cannot stop accepting; take in what it delivered so far,
        // then close the pipeline, which persists and flushes all of it.
        mqtt.stop();
        ingest.close();
        threads.join();
        maintenance.stop();
    })
    .await?;
    store.flush()?;
    tracing::info!("sluice stopped; everything accepted is on disk");
    Ok(())
}

/// The compiled `[[rule]]`s, or an error naming the rule, field and column.
#[cfg(feature = "rules")]
pub fn compile_rules(config: &Config) -> anyhow::Result<Vec<Arc<crate::rules::program::Program>>> {
    Ok(crate::rules::compile(config)?)
}

/// Without the `rules` feature a configuration with rules is refused.
#[cfg(not(feature = "rules"))]
pub fn compile_rules(config: &Config) -> anyhow::Result<()> {
    if let Some(r) = config.rules.first() {
        anyhow::bail!(
            "rule {:?}: this sluice was built without the rules feature; remove the [[rule]] sections or use a build with it",
            r.name
        );
    }
    Ok(())
}

/// Re-reads the configuration on every SIGHUP and applies what can change
/// at run time (service weights and express flags).
async fn reload_on_sighup(shared: Shared, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; weights change through PUT /v1/services only");
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match reload(&shared, &path) {
            Ok(changed) => tracing::info!(path = %path.display(), changed, "configuration reloaded"),
            Err(e) => {
                tracing::error!(path = %path.display(), "reload refused, keeping the running configuration: {e:#}");
                continue;
            }
        }
        #[cfg(feature = "rules")]
        match crate::rules::reload(&shared, &path).await {
            Ok(changed) => tracing::info!(path = %path.display(), changed, "rules reloaded"),
            Err(e) => {
                tracing::error!(path = %path.display(), "rules not reloaded, keeping the running ones: {e:#}")
            }
        }
    }
}

/// Applies what can change at run time from a re-read configuration:
/// service weights and express flags, the HTTP bearer tokens and the MQTT
/// users (their secret files re-read too); returns how many of these
/// changed. Other changes need a restart. A configuration that does not
/// load changes nothing.
pub fn reload(shared: &Shared, path: &Path) -> anyhow::Result<usize> {
    let new = Config::load(path)?;
    let mut changed = 0;
    let tokens = crate::http::auth::Tokens::new(&new.http.tokens);
    if *shared.tokens() != tokens {
        *shared.http_tokens.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tokens);
        tracing::info!(tokens = new.http.tokens.len(), "HTTP bearer tokens reloaded");
        changed += 1;
    }
    let listeners = shared.tls_listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    for tls in listeners {
        let table = match tls.field() {
            "http.tls" => new.http.tls.as_ref(),
            "kafka.tls" => new.kafka.tls.as_ref(),
            _ => new.mqtt.tls.as_ref(),
        };
        match table {
            Some(t) => match tls.reload(t) {
                Ok(()) => {
                    tracing::info!(listener = tls.field(), "TLS certificate and key reloaded");
                    changed += 1;
                }
                Err(e) => tracing::error!(
                    listener = tls.field(),
                    "TLS reload refused, keeping the files in force: {e:#}"
                ),
            },
            None => tracing::error!(listener = tls.field(), "turning TLS off needs a restart; TLS stays on"),
        }
    }
    if let Some(guard) = shared.mqtt_guard.get() {
        changed += users_reloaded("MQTT", guard.reload(&new.mqtt));
    }
    #[cfg(feature = "kafka-listener")]
    if shared.kafka_accounts.get().is_none()
        && !new.kafka.sasl.is_empty()
        && shared.config.kafka.listen.is_some()
    {
        tracing::error!("kafka.sasl: turning SASL on needs a restart; the Kafka listener stays without SASL");
    }
    #[cfg(feature = "kafka-listener")]
    if let Some(accounts) = shared.kafka_accounts.get() {
        changed += users_reloaded("Kafka", accounts.reload(&new.kafka));
    }
    for s in &new.services {
        match shared.services.get(&s.name) {
            Some(service) => {
                let class = ServiceClass::new(s.weight, s.express);
                if class != service.class() {
                    shared.ingest.set_class(service.id, class);
                    tracing::info!(service = %s.name, weight = class.weight, express = class.express, "service class changed");
                    changed += 1;
                }
            }
            None => {
                tracing::warn!(service = %s.name, "service added to the configuration: restart sluice to use it")
            }
        }
    }
    Ok(changed)
}

/// File descriptors one MQTT client connection holds: its socket (and a
/// duplicate the writer sets options on) and both ends of the front's
/// loopback connection to the embedded broker.
const FDS_PER_MQTT_CONNECTION: u64 = 4;

/// Descriptors the rest of the process may hold: segment files, sled,
/// HTTP and Kafka connections, the uplinks.
const FDS_BESIDES_MQTT: u64 = 1024;

/// Warns when the open-files limit is below what `mqtt.max_connections`
/// needs: at the limit, accepting fails (and rumqttd logs an error per
/// try, in a loop). Read from `/proc/self/limits` (Linux); elsewhere,
/// nothing is checked.
fn open_files_limit(config: &Config) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let Some(soft) = open_files_soft_limit(&limits) else { return };
    let need = u64::from(config.mqtt.max_connections) * FDS_PER_MQTT_CONNECTION + FDS_BESIDES_MQTT;
    if soft < need {
        tracing::warn!(
            limit = soft,
            need,
            "the open files limit is below what mqtt.max_connections = {} needs ({FDS_PER_MQTT_CONNECTION} per \
             connection + {FDS_BESIDES_MQTT}): raise LimitNOFILE (systemd) or `ulimit -n`, or lower mqtt.max_connections",
            config.mqtt.max_connections
        );
    }
}

/// The soft "Max open files" of a `/proc/PID/limits` text (`None` when
/// unlimited or absent).
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Logs the outcome of reloading the `what` (MQTT, Kafka) users; 1 when
/// they changed.
fn users_reloaded(what: &str, result: Result<crate::mqtt::auth::UsersReloaded, String>) -> usize {
    match result {
        Ok(r) if r == crate::mqtt::auth::UsersReloaded::default() => 0,
        Ok(r) => {
            tracing::info!(
                added = r.added,
                removed = r.removed,
                changed = r.changed,
                "{what} users reloaded"
            );
            1
        }
        Err(e) => {
            tracing::error!("{e}");
            0
        }
    }
}

/// Writes `DATA_DIR/listen.json` atomically (temp file + rename): the
/// address of each listener and which of them speak TLS.
fn write_listen_json(
    data_dir: &Path,
    http: SocketAddr,
    http_tls: bool,
    mqtt: &crate::mqtt::MqttHandle,
    kafka: Option<(SocketAddr, bool)>,
) -> std::io::Result<()> {
    let body = serde_json::json!({
        "http": http.to_string(),
        "mqtt": mqtt.addr.to_string(),
        "mqtt_v5": mqtt.addr_v5.map(|a| a.to_string()),
        "kafka": kafka.map(|(a, _)| a.to_string()),
        "tls": {"http": http_tls, "mqtt": mqtt.tls, "mqtt_v5": mqtt.tls && mqtt.addr_v5.is_some(),
                "kafka": kafka.is_some_and(|(_, tls)| tls)},
    });
    let tmp = data_dir.join("listen.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&body)?)?;
    std::fs::rename(&tmp, data_dir.join("listen.json"))
}

#[cfg(test)]
mod tests {
    use super::open_files_soft_limit;

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95806                95806                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(limits), Some(1024));
        assert_eq!(
            open_files_soft_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(open_files_soft_limit(""), None);
    }
}
