//! The `sluice` command: `run`, `check-config`, `hash-password`, `rule test`, `bench`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// sluice: an edge-node priority message gateway.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (embedded defaults when no --config is given).
    Run {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides node.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides http.listen (port 0 picks a free port; see DATA_DIR/listen.json).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Overrides mqtt.listen.
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// Start even when the log lost records that were flushed (a damaged
        /// data file): the loss is logged, the lost offsets are skipped and
        /// never reused. Without it such a start is refused.
        #[arg(long)]
        accept_data_loss: bool,
    },
    /// Validate a configuration file; exits non-zero naming the bad field.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Hash a password for `[[mqtt.users]]` or `[[kafka.users]]` (argon2id). Reads it from the
    /// terminal without echo, or one line from standard input when that is
    /// not a terminal; never from the command line, which `ps` shows.
    HashPassword,
    /// Derive SCRAM credentials for `[[kafka.users]]` (`scram_sha_256` or
    /// `scram_sha_512`): salt, iterations, StoredKey and ServerKey, never
    /// the password. Reads the password like `hash-password`.
    #[cfg(feature = "kafka-listener")]
    ScramCredential {
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long, default_value = "SCRAM-SHA-256")]
        mechanism: String,
        /// PBKDF2 iterations (at least 4096).
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Edge rules (`[[rule]]`).
    #[cfg(feature = "rules")]
    Rule {
        #[command(subcommand)]
        action: RuleCommand,
    },
    /// Load tool against a running sluice (and, for comparison, any MQTT broker).
    Bench {
        #[command(subcommand)]
        scenario: Bench,
    },
}

#[cfg(feature = "rules")]
#[derive(Debug, Subcommand)]
enum RuleCommand {
    /// Run one rule over records from a JSON-lines file, without a node, and
    /// print what it emits (one JSON object per line; counters on stderr).
    /// Each input line is {"value": ..., "key": "k", "headers": {..},
    /// "timestamp": ms}, only value required. Open windows close at the end.
    Test {
        /// The rule's name.
        rule: String,
        /// JSON-lines file of input records ("-" for standard input).
        #[arg(long)]
        input: PathBuf,
        /// The configuration that defines the rule.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// sluice's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Produce throughput and latency with concurrent clients.
    Http {
        #[command(flatten)]
        common: LoadArgs,
        /// Topic to produce to.
        #[arg(long, default_value = "bench")]
        topic: String,
        /// Concurrent connections.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Records per request.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Requests per second per client (0 = as fast as acknowledged).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Express latency idle vs while a low-priority service floods.
    Isolation {
        #[command(flatten)]
        common: LoadArgs,
        /// Topic of the express service.
        #[arg(long, default_value = "alarms")]
        express_topic: String,
        /// Express requests per second (one connection).
        #[arg(long, default_value_t = 50.0)]
        express_rate: f64,
        /// Topic of the flooding service.
        #[arg(long, default_value = "logs")]
        flood_topic: String,
        /// Flooding connections.
        #[arg(long, default_value_t = 32)]
        flood_clients: usize,
        /// Records per flood request.
        #[arg(long, default_value_t = 64)]
        flood_batch: usize,
        /// Value size of express records in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Value size of flood records in bytes.
        #[arg(long, default_value_t = 100)]
        flood_payload: usize,
    },
    /// MQTT publish throughput (acknowledged QoS 1 msg/s) and publish ->
    /// PUBACK latency against any MQTT 3.1.1 broker.
    Mqtt {
        #[command(flatten)]
        publish: MqttArgs,
        /// Concurrent publisher connections.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Publishes per second per publisher (0 = as fast as acknowledged).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Publisher i publishes to PREFIX/i.
        #[arg(long, default_value = "bench")]
        topic_prefix: String,
        /// Seconds sent before measuring.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// sluice's HTTP address: also report what sluice received,
        /// persisted and dropped (from /metrics).
        #[arg(long)]
        sluice_http: Option<SocketAddr>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per-service publish -> consumer latency and delivered shares with
    /// a consumer draining at a fixed rate: idle vs under a flood.
    MqttPriority {
        #[command(flatten)]
        publish: MqttArgs,
        /// A publishing service, NAME:MQTT_TOPIC:RATE (rate 0 = max); repeat.
        #[arg(long = "service", required = true)]
        services: Vec<sluice_gateway::bench::priority::ServiceSpec>,
        /// The service measured idle vs loaded (default: the first).
        #[arg(long)]
        probe: Option<String>,
        /// Where the consumer reads: `sluice` (HTTP group fetch + commit),
        /// `sse` (the SSE group stream, committing every --commit-ms) or
        /// `mqtt` (a subscriber on the broker at --addr).
        #[arg(long, value_enum, default_value_t = ConsumerKind::Sluice)]
        consumer: ConsumerKind,
        /// sluice's HTTP address (consumer `sluice`).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Consumer group (default: a new one per run).
        #[arg(long)]
        group: Option<String>,
        /// Log topic to read (repeat; default: the first level of each
        /// service's MQTT topic, as sluice's unrouted policy maps them).
        #[arg(long = "log-topic")]
        log_topics: Vec<String>,
        /// Interval between the SSE consumer's commits (consumer `sse`).
        #[arg(long, default_value_t = 100)]
        commit_ms: u64,
        /// QoS of the MQTT subscription (consumer `mqtt`; 0 or 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        sub_qos: u8,
        /// The MQTT subscriber keeps a persistent session (clean session
        /// 0; consumer `mqtt`).
        #[arg(long)]
        persistent: bool,
        /// Records per second the consumer takes.
        #[arg(long, default_value_t = 1000.0)]
        drain_rate: f64,
        /// Seconds of load before the loaded window.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Seconds the consumer drains after the publishers stop.
        #[arg(long, default_value_t = 3.0)]
        grace: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A subscriber with a persistent session is away while a bulk flood
    /// with alarms among it is published, then comes back: when it holds
    /// every alarm, and how fast it catches up.
    MqttResume {
        /// MQTT broker address.
        #[arg(long, default_value = "127.0.0.1:1883")]
        addr: SocketAddr,
        /// Topic of the bulk publishes.
        #[arg(long, default_value = "bulk/line-1")]
        bulk_topic: String,
        /// Topic of the alarms.
        #[arg(long, default_value = "alarms/line-1")]
        alarm_topic: String,
        /// Bulk publishes while the subscriber is away.
        #[arg(long, default_value_t = 100_000)]
        bulk: u64,
        /// Alarms among them.
        #[arg(long, default_value_t = 100)]
        alarms: u64,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Publishes in flight.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
        inflight: u16,
        /// Records per second the subscriber takes (0: as they come).
        #[arg(long, default_value_t = 0.0)]
        drain_rate: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run stock rumqttd (the version sluice embeds) with sluice's broker
    /// settings but without persisting; blocks until killed.
    Rumqttd {
        /// MQTT 3.1.1 listener (port 0 picks one; the address is printed).
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
        /// sluice configuration whose [mqtt] settings to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Attach a local link that subscribes to `#` and discards, like
        /// sluice's ingest link without the persisting.
        #[arg(long)]
        drain_link: bool,
    },
}

#[derive(Debug, clap::Args)]
struct MqttArgs {
    /// MQTT broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// Unacknowledged QoS 1 publishes per connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
    /// QoS of the publishes (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload bytes (a JSON timestamp padded to this size).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

/// Where `bench mqtt-priority` consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConsumerKind {
    /// sluice's HTTP consumer-group API (priority order).
    Sluice,
    /// An MQTT subscription on the broker (arrival order).
    Mqtt,
    /// sluice's SSE group stream, committing every --commit-ms.
    Sse,
}

#[cfg(feature = "rules")]
fn rule_test(rule: &str, input: &std::path::Path, config: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let config = Config::load(config)?;
    let text = if input == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(input).with_context(|| format!("cannot read {}", input.display()))?
    };
    let run = sluice_gateway::rules::dry_run::run(&config, rule, &text)?;
    let mut out = std::io::stdout().lock();
    for rec in &run.outputs {
        writeln!(out, "{rec}")?;
    }
    let c = &run.counts;
    eprintln!(
        "rule {rule:?}: {} in, {} out, {} filtered, {} suppressed ({} bytes saved), {} late, {} errors, {} refused at max_keys",
        c.records_in, c.records_out, c.filtered, c.suppressed, c.bytes_saved, c.late, c.errors, c.state_full
    );
    if let Some(e) = &c.last_error {
        eprintln!("last error: {e}");
    }
    Ok(())
}

#[cfg(feature = "kafka-listener")]
fn scram_credential(mechanism: &str, iterations: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let hash = match mechanism {
        "SCRAM-SHA-256" => sluice_config::ScramHash::Sha256,
        "SCRAM-SHA-512" => sluice_config::ScramHash::Sha512,
        other => anyhow::bail!("--mechanism {other:?}: use SCRAM-SHA-256 or SCRAM-SHA-512"),
    };
    if iterations < sluice_config::MIN_SCRAM_ITERATIONS {
        anyhow::bail!("--iterations {iterations}: use at least {}", sluice_config::MIN_SCRAM_ITERATIONS);
    }
    let password = read_password()?;
    let salt = sluice_gateway::kafka::sasl::random_salt();
    let credential = sluice_gateway::kafka::sasl::derive_credential(hash, &password, salt, iterations);
    writeln!(std::io::stdout().lock(), "{credential}")?;
    Ok(())
}

fn hash_password() -> anyhow::Result<()> {
    use std::io::Write as _;
    let password = read_password()?;
    let hash = sluice_gateway::mqtt::auth::hash_password(&password)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{hash}")?;
    Ok(())
}

/// A password from the terminal (asked twice, without echo) or one line of
/// standard input.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    // Echo off through stty: no unsafe termios code, and the terminal is
    // restored even when reading fails.
    let stty = |arg: &str| std::process::Command::new("stty").arg(arg).status().is_ok_and(|s| s.success());
    let read = |prompt: &str| -> anyhow::Result<String> {
        if tty {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
        }
        let mut line = String::new();
        stdin.lock().read_line(&mut line).context("cannot read the password from standard input")?;
        if tty {
            eprintln!();
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    if tty && !stty("-echo") {
        anyhow::bail!("cannot turn terminal echo off (stty -echo failed); pipe the password in instead");
    }
    let entered =
        read("Password: ").and_then(|p| if tty { Ok((read("Again: ")?, p)) } else { Ok((p.clone(), p)) });
    if tty {
        stty("echo");
    }
    let (again, password) = entered?;
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    if again != password {
        anyhow::bail!("the passwords do not match");
    }
    Ok(password)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    sluice_gateway::metrics::install_panic_hook();
    let result = match cli.command {
        Command::Run { config, data_dir, http_listen, mqtt_listen, accept_data_loss } => {
            let overrides =
                sluice_gateway::run::Overrides { data_dir, http_listen, mqtt_listen, accept_data_loss };
            run(config, overrides)
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::HashPassword => hash_password(),
        #[cfg(feature = "kafka-listener")]
        Command::ScramCredential { mechanism, iterations } => scram_credential(&mechanism, iterations),
        #[cfg(feature = "rules")]
        Command::Rule { action: RuleCommand::Test { rule, input, config } } => {
            rule_test(&rule, &input, &config)
        }
        Command::Bench { scenario } => bench(scenario),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    sluice_gateway::logs::init();
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    sluice_gateway::run::compile_rules(&config)?;
    sluice_gateway::listener::check_tls_files(&config)?;
    for warning in secret_warnings(&config, file) {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "{}: ok ({} services, {} topics, {} routes, {} uplinks, {} rules)",
        file.display(),
        config.services.len(),
        config.topics.len(),
        config.routes.len(),
        config.uplinks.len(),
        config.rules.len()
    );
    Ok(())
}

/// Secrets of `config` (loaded from `file`) that other users may read.
fn secret_warnings(config: &Config, file: &std::path::Path) -> Vec<String> {
    let credentials = std::env::var_os(sluice_config::secrets::CREDENTIALS_DIRECTORY).map(PathBuf::from);
    sluice_config::secrets::permission_warnings(config, file, credentials.as_deref())
}

fn run(config_file: Option<PathBuf>, overrides: sluice_gateway::run::Overrides) -> anyhow::Result<()> {
    let config = match &config_file {
        Some(path) => {
            let config = Config::load(path)?;
            for warning in secret_warnings(&config, path) {
                tracing::warn!("{warning}");
            }
            config
        }
        None => Config::default(),
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(8)
        .thread_name("sluice-rt")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(sluice_gateway::run::run(config, config_file, overrides, stop_signal()))
}

fn bench(scenario: Bench) -> anyhow::Result<()> {
    use sluice_gateway::bench::{self, Load};
    use std::time::Duration;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async move {
        match scenario {
            Bench::Http { common, topic, clients, batch, payload, rate } => {
                let load = Load { addr: common.addr, topic, clients, batch, payload, rate };
                bench::http(load, Duration::from_secs_f64(common.duration)).await
            }
            Bench::Isolation {
                common,
                express_topic,
                express_rate,
                flood_topic,
                flood_clients,
                flood_batch,
                payload,
                flood_payload,
            } => {
                let express = Load {
                    addr: common.addr,
                    topic: express_topic,
                    clients: 1,
                    batch: 1,
                    payload,
                    rate: express_rate,
                };
                let flood = Load {
                    addr: common.addr,
                    topic: flood_topic,
                    clients: flood_clients,
                    batch: flood_batch,
                    payload: flood_payload,
                    rate: 0.0,
                };
                bench::isolation(express, flood, Duration::from_secs_f64(common.duration)).await
            }
            Bench::Mqtt { publish, publishers, rate, topic_prefix, warmup, sluice_http, json } => {
                let run = bench::mqtt::MqttBench {
                    publishers: bench::publish::Publishers {
                        addr: publish.addr,
                        count: publishers,
                        inflight: publish.inflight,
                        qos: qos(publish.qos),
                        payload: publish.payload,
                        rate,
                        topic: format!("{topic_prefix}/{{i}}"),
                        service: 0,
                        client_prefix: format!("sluice-bench-{}", std::process::id()),
                    },
                    duration: Duration::from_secs_f64(publish.duration),
                    warmup: Duration::from_secs_f64(warmup),
                    sluice_http,
                };
                let report = bench::mqtt::run(run).await?;
                render(&report, json)
            }
            Bench::MqttPriority {
                publish,
                services,
                probe,
                consumer,
                http,
                group,
                log_topics,
                sub_qos,
                persistent,
                commit_ms,
                drain_rate,
                warmup,
                grace,
                json,
            } => {
                let probe = match probe {
                    None => 0,
                    Some(name) => services
                        .iter()
                        .position(|s| s.name == name)
                        .with_context(|| format!("--probe {name:?} names none of the --service NAMEs"))?,
                };
                let source = match consumer {
                    ConsumerKind::Sluice => bench::consume::Source::Sluice {
                        http,
                        group: group
                            .unwrap_or_else(|| format!("bench-{}-{}", std::process::id(), now_secs())),
                        topics: if log_topics.is_empty() { first_levels(&services) } else { log_topics },
                    },
                    ConsumerKind::Sse => bench::consume::Source::Sse {
                        http,
                        group: group
                            .unwrap_or_else(|| format!("bench-{}-{}", std::process::id(), now_secs())),
                        topics: if log_topics.is_empty() { first_levels(&services) } else { log_topics },
                        commit_every: Duration::from_millis(commit_ms),
                    },
                    ConsumerKind::Mqtt => bench::consume::Source::Mqtt {
                        addr: publish.addr,
                        filters: services.iter().map(|s| s.topic.replace("{i}", "+")).collect(),
                        qos: qos(sub_qos),
                        persistent,
                    },
                };
                let run = bench::priority::PriorityBench {
                    mqtt: publish.addr,
                    services,
                    probe,
                    source,
                    drain_rate,
                    payload: publish.payload,
                    qos: qos(publish.qos),
                    inflight: publish.inflight,
                    duration: Duration::from_secs_f64(publish.duration),
                    warmup: Duration::from_secs_f64(warmup),
                    grace: Duration::from_secs_f64(grace),
                };
                let report = bench::priority::run(run).await?;
                render(&report, json)
            }
            Bench::MqttResume {
                addr,
                bulk_topic,
                alarm_topic,
                bulk,
                alarms,
                payload,
                inflight,
                drain_rate,
                json,
            } => {
                let run = bench::resume::ResumeBench {
                    mqtt: addr,
                    bulk_topic,
                    alarm_topic,
                    bulk,
                    alarms,
                    payload,
                    inflight,
                    drain_rate,
                };
                render(&bench::resume::run(run).await?, json)
            }
            Bench::Rumqttd { listen, config, drain_link } => {
                let config = match &config {
                    Some(path) => Config::load(path)?,
                    None => Config::default(),
                };
                let addr = bench::rumqttd::start_stock(&config.mqtt, listen, drain_link)?;
                eprintln!("stock rumqttd listening on {addr} (MQTT 3.1.1); stop it with SIGTERM or SIGINT");
                stop_signal().await;
                Ok(String::new())
            }
        }
    })?;
    if !report.is_empty() {
        // The report is the command's output.
        #[allow(clippy::print_stdout)]
        {
            println!("{report}");
        }
    }
    // rumqttd's threads never end: leave without waiting for them.
    runtime.shutdown_background();
    Ok(())
}

fn qos(level: u8) -> rumqttc::QoS {
    if level == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

/// A report as text or as JSON.
fn render<T: std::fmt::Display + serde::Serialize>(report: &T, json: bool) -> anyhow::Result<String> {
    Ok(if json { serde_json::to_string(report)? } else { report.to_string() })
}

/// The log topics sluice's default unrouted policy maps the services'
/// MQTT topics to: their first levels, each once.
fn first_levels(services: &[sluice_gateway::bench::priority::ServiceSpec]) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    for s in services {
        let first = s.topic.split('/').next().unwrap_or(&s.topic).to_owned();
        if !topics.contains(&first) {
            topics.push(first);
        }
    }
    topics
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
