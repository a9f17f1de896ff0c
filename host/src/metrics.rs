//! The host's metrics, in the Prometheus text format (`/metrics`).
//!
//! Every series is labelled by what an operator configures or the protocol bounds
//! (route names, exports, close codes by class, rejection reasons), never by a
//! connection, a group or a client's choice, so the number of series does not grow
//! with the traffic. What every message moves (message and byte counts, plugin call
//! times) is counted per thread ([`sharded`]) and summed when scraped, so the hot path
//! touches no cache line another thread writes.

mod sharded;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use sharded::Sharded;

/// The media type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the plugin-call latency buckets, in nanoseconds: 10 µs to 10 s (a
/// call is interrupted at its deadline, 10 ms to 60 s).
const CALL_BUCKETS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Why a handshake was refused, as `wsplug_handshakes_rejected_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// A malformed or incomplete upgrade request (400, 405, 431).
    BadRequest,
    /// A `Sec-WebSocket-Version` other than 13 (426).
    Version,
    /// An `Origin` the route does not allow (403).
    Origin,
    /// No route serves the path (404).
    NotFound,
    /// The host's or the route's `max_connections` (503).
    Capacity,
    /// The plugin's `on-upgrade` refused it.
    Plugin,
    /// The plugin's `on-upgrade` trapped, overran or did not answer in time (503).
    PluginFailed,
    /// The handshake did not complete within the handshake timeout.
    Timeout,
    /// The TLS handshake failed or timed out.
    Tls,
    /// The server is shutting down (503).
    ShuttingDown,
    /// The client's address has too many connections open, or opened too many in the
    /// last second (429, before its request is read).
    PerIp,
}

impl Rejected {
    const ALL: [Rejected; 11] = [
        Self::BadRequest,
        Self::Version,
        Self::Origin,
        Self::NotFound,
        Self::Capacity,
        Self::Plugin,
        Self::PluginFailed,
        Self::Timeout,
        Self::Tls,
        Self::ShuttingDown,
        Self::PerIp,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Version => "version",
            Self::Origin => "origin",
            Self::NotFound => "not_found",
            Self::Capacity => "capacity",
            Self::Plugin => "plugin",
            Self::PluginFailed => "plugin_failed",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::ShuttingDown => "shutting_down",
            Self::PerIp => "per_ip",
        }
    }

    /// The reason of a rejection the protocol made, by its HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            403 => Self::Origin,
            404 => Self::NotFound,
            426 => Self::Version,
            503 => Self::Capacity,
            _ => Self::BadRequest,
        }
    }
}

/// How a plugin call failed, as `wsplug_plugin_traps_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// It ran past its CPU deadline.
    Deadline,
    /// It trapped after the memory cap refused it more memory.
    Memory,
    /// Any other trap (a panic, `unreachable`, a bad host call).
    Trap,
}

/// The exports whose calls are timed, in the order of [`PluginMetrics::calls`].
pub const EXPORTS: [&str; 8] = [
    "on-open",
    "on-text",
    "on-binary",
    "on-close",
    "on-upgrade",
    "on-timer",
    "snapshot",
    "restore",
];

/// Every metric of the host; cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    opened: IntCounterVec,
    closed: IntCounterVec,
    rejected: IntCounterVec,
    /// Every route's per-thread counters, which [`PerThread`] sums when scraped.
    per_thread: Arc<Mutex<Vec<RouteCounters>>>,
    slow_clients: IntCounterVec,
    plugin_queue: IntGaugeVec,
    traps: IntCounterVec,
    reloads: IntCounterVec,
    crashes: IntGaugeVec,
    backoff: GaugeVec,
    instances: IntGaugeVec,
    compiles: IntCounterVec,
    cluster_hosts: IntGaugeVec,
    cluster_lost: IntCounterVec,
    cluster_refused: IntCounterVec,
}

/// Registers a metric built by `make` from these options, or panics: the names are
/// constants, so a failure is a bug found by every test.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    /// Every metric at zero, with the process's own (CPU, memory, file descriptors).
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metrics register once");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let build = register(
            &registry,
            IntGauge::with_opts(
                Opts::new("wsplug_build_info", "The host's version, as a label; always 1.")
                    .const_label("version", env!("CARGO_PKG_VERSION")),
            ),
        );
        build.set(1);
        let metrics = Self {
            connections: gauge("wsplug_connections", "Open WebSocket connections.", &["route"]),
            opened: counter(
                "wsplug_connections_opened_total",
                "WebSocket connections opened (handshake completed).",
                &["route"],
            ),
            closed: counter(
                "wsplug_connections_closed_total",
                "WebSocket connections closed, by the close code on-close got (1006: no close frame); \
                 application codes by class (3xxx, 4xxx).",
                &["route", "code"],
            ),
            rejected: counter(
                "wsplug_handshakes_rejected_total",
                "Upgrade requests refused, by reason.",
                &["reason"],
            ),
            per_thread: {
                let routes = Arc::default();
                registry
                    .register(Box::new(PerThread::new(Arc::clone(&routes))))
                    .expect("metric names are unique");
                routes
            },
            slow_clients: counter(
                "wsplug_slow_clients_dropped_total",
                "Clients dropped (1008) because more waited for them than the outbound bounds allow.",
                &["route"],
            ),
            plugin_queue: gauge(
                "wsplug_plugin_queue_events",
                "Events waiting for the plugin.",
                &["route"],
            ),
            traps: counter(
                "wsplug_plugin_traps_total",
                "Plugin calls that failed, by kind: deadline, memory or trap.",
                &["route", "kind"],
            ),
            reloads: counter(
                "wsplug_plugin_reloads_total",
                "New plugin versions swapped in (ok) or refused while the old one kept serving (failed).",
                &["route", "result"],
            ),
            crashes: gauge(
                "wsplug_plugin_consecutive_crashes",
                "Crashes of the plugin since its last successful call.",
                &["route"],
            ),
            backoff: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "wsplug_plugin_restart_backoff_seconds",
                        "Delay before the plugin's next restart in a crash loop (0: not in one).",
                    ),
                    &["route"],
                ),
            ),
            instances: gauge(
                "wsplug_plugin_instances",
                "Live instances of the plugin: one on its thread, and for a stateless plugin one more on each thread that has called it.",
                &["route"],
            ),
            compiles: counter(
                "wsplug_plugin_loads_total",
                "Plugin files loaded, with compiled code from the cache (hit) or compiled (miss).",
                &["route", "cache"],
            ),
            cluster_hosts: gauge(
                "wsplug_cluster_peers",
                "Other hosts of the route's cluster this host hears (absent without a cluster).",
                &["route"],
            ),
            cluster_lost: counter(
                "wsplug_cluster_messages_lost_total",
                "Cluster messages lost: to other hosts (unsent: the outbox was full or Redis unreachable) \
                 or from them (unreceived: this host fell behind).",
                &["route", "direction"],
            ),
            cluster_refused: counter(
                "wsplug_cluster_messages_refused_total",
                "Cluster messages received and refused: forged (not tagged with the cluster's secret, or \
                 malformed), stale (older than the replay window), replayed, impostor (under a number \
                 another host holds), misdirected (for another incarnation), invalid (a close no endpoint \
                 may send), incomplete (a state's part without those before it).",
                &["route", "reason"],
            ),
            registry,
        };
        for reason in Rejected::ALL {
            metrics.rejected.with_label_values(&[reason.label()]);
        }
        Arc::new(metrics)
    }

    /// The handles of one route's metrics, every series it may have created at zero.
    pub fn route(self: &Arc<Self>, route: &str) -> RouteMetrics {
        let counters = {
            let mut routes = self.per_thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match routes.iter().find(|counters| &*counters.route == route) {
                Some(counters) => counters.clone(),
                None => {
                    let counters = RouteCounters {
                        route: route.into(),
                        traffic: Arc::default(),
                        calls: Arc::default(),
                    };
                    routes.push(counters.clone());
                    counters
                }
            }
        };
        let plugin = PluginMetrics {
            calls: counters.calls,
            deadline: self.traps.with_label_values(&[route, "deadline"]),
            memory: self.traps.with_label_values(&[route, "memory"]),
            trap: self.traps.with_label_values(&[route, "trap"]),
            reloaded: self.reloads.with_label_values(&[route, "ok"]),
            reload_failed: self.reloads.with_label_values(&[route, "failed"]),
            crashes: self.crashes.with_label_values(&[route]),
            backoff: self.backoff.with_label_values(&[route]),
            instances: self.instances.with_label_values(&[route]),
            cache_hits: self.compiles.with_label_values(&[route, "hit"]),
            cache_misses: self.compiles.with_label_values(&[route, "miss"]),
        };
        RouteMetrics {
            route: route.into(),
            connections: self.connections.with_label_values(&[route]),
            opened: self.opened.with_label_values(&[route]),
            traffic: counters.traffic,
            slow_clients: self.slow_clients.with_label_values(&[route]),
            plugin_queue: self.plugin_queue.with_label_values(&[route]),
            plugin: Arc::new(plugin),
            all: self.clone(),
        }
    }

    /// Sets a clustered route's cluster metrics to what its cluster reports: the hosts it
    /// hears, the messages lost each way and those it refused, so far.
    pub fn cluster(&self, route: &str, counts: &ClusterCounts) {
        self.cluster_hosts.with_label_values(&[route]).set(counts.peers as i64);
        let catch_up =
            |counter: prometheus::IntCounter, total: u64| counter.inc_by(total.saturating_sub(counter.get()));
        for (direction, total) in [("unsent", counts.unsent), ("unreceived", counts.unreceived)] {
            catch_up(self.cluster_lost.with_label_values(&[route, direction]), total);
        }
        for (reason, total) in &counts.refused {
            catch_up(self.cluster_refused.with_label_values(&[route, reason]), *total);
        }
    }

    /// Counts a refused handshake.
    pub fn rejected(&self, reason: Rejected) {
        self.rejected.with_label_values(&[reason.label()]).inc();
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut text)
            .expect("metrics encode as text");
        text
    }
}

/// What a route's cluster reports, for [`Metrics::cluster`].
#[derive(Debug, Default)]
pub struct ClusterCounts {
    /// Other hosts heard.
    pub peers: usize,
    /// Messages to other hosts lost so far.
    pub unsent: u64,
    /// Messages from other hosts dropped so far (this host fell behind).
    pub unreceived: u64,
    /// Messages refused so far, by reason (the label).
    pub refused: Vec<(&'static str, u64)>,
}

/// The `code` label of a close code: the code itself for those RFC 6455 and IANA
/// define (1000-1015), its class for the ones applications choose (`3xxx`, `4xxx`),
/// which clients can pick at will and would otherwise make series without end.
pub fn code_label(code: u16) -> std::borrow::Cow<'static, str> {
    match code {
        1000..=1015 => code.to_string().into(),
        3000..=3999 => "3xxx".into(),
        4000..=4999 => "4xxx".into(),
        _ => "other".into(),
    }
}

/// One route's metrics, resolved once so that counting needs no label lookup.
#[derive(Clone)]
pub struct RouteMetrics {
    route: Arc<str>,
    /// Open connections; set when scraped.
    pub connections: IntGauge,
    /// Connections opened.
    pub opened: IntCounter,
    /// Messages and bytes received and sent.
    pub traffic: Arc<Traffic>,
    /// Clients dropped for their outbound backlog.
    pub slow_clients: IntCounter,
    /// Events waiting for the plugin; set when scraped.
    pub plugin_queue: IntGauge,
    /// What the plugin's thread counts.
    pub plugin: Arc<PluginMetrics>,
    all: Arc<Metrics>,
}

impl RouteMetrics {
    /// The route's name, as labelled.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Counts a closed connection by its close code.
    pub fn closed(&self, code: u16) {
        let code = code_label(code);
        self.all.closed.with_label_values(&[&*self.route, &*code]).inc();
    }

    /// Counts a refused handshake (the reasons are the host's, not the route's).
    pub fn rejected(&self, reason: Rejected) {
        self.all.rejected(reason);
    }
}

/// What a plugin's runner counts: calls, traps, reloads, loads, crash-loop state.
/// Detached ones ([`PluginMetrics::detached`]) count into nothing scraped.
pub struct PluginMetrics {
    /// Calls and their duration, per export (in the order of [`EXPORTS`]).
    calls: Arc<[CallTimes; EXPORTS.len()]>,
    deadline: IntCounter,
    memory: IntCounter,
    trap: IntCounter,
    /// Reloads swapped in.
    pub reloaded: IntCounter,
    /// Reloads refused.
    pub reload_failed: IntCounter,
    /// Crashes since the last successful call.
    pub crashes: IntGauge,
    /// The current restart delay of a crash loop, in seconds.
    pub backoff: Gauge,
    /// Live instances.
    pub instances: IntGauge,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
}

impl PluginMetrics {
    /// Metrics of a plugin run outside a server (`host check`, benchmarks).
    pub fn detached() -> Arc<Self> {
        Metrics::new().route("detached").plugin
    }

    /// Records a call of `export` that took `took`.
    pub fn call(&self, export: usize, took: Duration) {
        if let Some(times) = self.calls.get(export) {
            times.observe(took);
        }
    }

    /// Counts a failed call.
    pub fn trapped(&self, kind: TrapKind) {
        match kind {
            TrapKind::Deadline => &self.deadline,
            TrapKind::Memory => &self.memory,
            TrapKind::Trap => &self.trap,
        }
        .inc();
    }

    /// Counts a plugin file loaded, from the cache or not.
    pub fn loaded(&self, cache_hit: bool) {
        if cache_hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        }
        .inc();
    }
}

/// A route's message counters, counted per thread.
#[derive(Default)]
pub struct Traffic(Sharded<5>);

impl Traffic {
    const TEXT_RECEIVED: usize = 0;
    const BINARY_RECEIVED: usize = 1;
    const RECEIVED_BYTES: usize = 2;
    const MESSAGES_SENT: usize = 3;
    const SENT_BYTES: usize = 4;

    /// Counts a message received: text or binary, of `bytes` bytes.
    #[inline]
    pub fn received(&self, text: bool, bytes: usize) {
        let cells = self.0.here();
        cells.add(
            if text {
                Self::TEXT_RECEIVED
            } else {
                Self::BINARY_RECEIVED
            },
            1,
        );
        cells.add(Self::RECEIVED_BYTES, bytes as u64);
    }

    /// Counts a message sent, of `bytes` bytes.
    #[inline]
    pub fn sent(&self, bytes: usize) {
        let cells = self.0.here();
        cells.add(Self::MESSAGES_SENT, 1);
        cells.add(Self::SENT_BYTES, bytes as u64);
    }
}

/// Cells of a [`CallTimes`]: one per bucket, then `+Inf`, then the sum in nanoseconds.
const CALL_CELLS: usize = CALL_BUCKETS.len() + 2;

/// One export's call-duration histogram, counted per thread.
#[derive(Default)]
pub struct CallTimes(Sharded<CALL_CELLS>);

impl CallTimes {
    const SUM: usize = CALL_CELLS - 1;

    /// Records a call that took `took`.
    fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = CALL_BUCKETS
            .iter()
            .position(|&le| nanos <= le)
            .unwrap_or(CALL_BUCKETS.len());
        let cells = self.0.here();
        cells.add(bucket, 1);
        cells.add(Self::SUM, nanos);
    }

    /// The histogram as scraped: cumulative buckets, count and sum in seconds.
    fn sample(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = CALL_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, &le)| {
                cumulative += self.0.get(i);
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(le as f64 / 1e9);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(cumulative + self.0.get(CALL_BUCKETS.len()));
        histogram.set_sample_sum(self.0.get(Self::SUM) as f64 / 1e9);
        histogram
    }
}

/// One route's per-thread counters.
#[derive(Clone)]
struct RouteCounters {
    route: Arc<str>,
    traffic: Arc<Traffic>,
    calls: Arc<[CallTimes; EXPORTS.len()]>,
}

/// The metrics counted per thread, summed for each scrape.
struct PerThread {
    routes: Arc<Mutex<Vec<RouteCounters>>>,
    descs: Vec<Desc>,
}

/// Name, help and labels of each family [`PerThread`] collects, in the order it
/// collects them.
const PER_THREAD: [(&str, &str, &[&str]); 5] = [
    (
        "wsplug_messages_received_total",
        "Messages received from clients.",
        &["route", "type"],
    ),
    (
        "wsplug_received_bytes_total",
        "Payload bytes of the messages received (after inflation).",
        &["route"],
    ),
    (
        "wsplug_messages_sent_total",
        "Messages sent to clients (a broadcast counts once per recipient).",
        &["route"],
    ),
    (
        "wsplug_sent_bytes_total",
        "Payload bytes of the messages sent (before compression).",
        &["route"],
    ),
    (
        "wsplug_plugin_call_duration_seconds",
        "Plugin export calls and their duration.",
        &["route", "export"],
    ),
];

impl PerThread {
    fn new(routes: Arc<Mutex<Vec<RouteCounters>>>) -> Self {
        let descs = PER_THREAD
            .iter()
            .map(|(name, help, labels)| {
                let labels = labels.iter().map(|label| label.to_string()).collect();
                Desc::new(name.to_string(), help.to_string(), labels, Default::default()).expect("valid metric")
            })
            .collect();
        Self { routes, descs }
    }
}

/// A sample labelled `labels`.
fn sample(labels: &[(&str, &str)]) -> proto::Metric {
    proto::Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect(),
    )
}

/// A counter's sample.
fn counter_sample(labels: &[(&str, &str)], value: u64) -> proto::Metric {
    let mut metric = sample(labels);
    let mut counter = proto::Counter::default();
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

impl Collector for PerThread {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut samples: [Vec<proto::Metric>; 5] = Default::default();
        for counters in routes.iter() {
            let route = &*counters.route;
            let traffic = &counters.traffic.0;
            let [received, received_bytes, sent, sent_bytes, calls] = &mut samples;
            for (kind, i) in [("text", Traffic::TEXT_RECEIVED), ("binary", Traffic::BINARY_RECEIVED)] {
                received.push(counter_sample(&[("route", route), ("type", kind)], traffic.get(i)));
            }
            received_bytes.push(counter_sample(
                &[("route", route)],
                traffic.get(Traffic::RECEIVED_BYTES),
            ));
            sent.push(counter_sample(&[("route", route)], traffic.get(Traffic::MESSAGES_SENT)));
            sent_bytes.push(counter_sample(&[("route", route)], traffic.get(Traffic::SENT_BYTES)));
            for (export, times) in EXPORTS.iter().zip(counters.calls.iter()) {
                let mut metric = sample(&[("route", route), ("export", export)]);
                metric.set_histogram(times.sample());
                calls.push(metric);
            }
        }
        PER_THREAD
            .iter()
            .zip(samples)
            .map(|((name, help, _), metrics)| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(match *name {
                    "wsplug_plugin_call_duration_seconds" => MetricType::HISTOGRAM,
                    _ => MetricType::COUNTER,
                });
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}
