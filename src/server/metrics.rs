//! What `/metrics` reports, in the Prometheus text format.
//!
//! Counting stays off the hot path: events that happen once per message or
//! per connection bump a shared counter, but deliveries (one per message per
//! recipient) are counted by each connection in a plain integer, added to
//! one of several cache lines once per turn of its loop, and summed when
//! `/metrics` is read. Values that something else already knows
//! (connections, rooms, lost log lines) are read at scrape time.
//!
//! The `prometheus` crate writes the classic text format (0.0.4), where a
//! gauge `wschat_connections` and a counter `wschat_connections_total` can
//! stand side by side; OpenMetrics would make them one family.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::Collector;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    /// WebSocket connections accepted since start.
    pub connections_total: IntCounter,
    /// Chat messages stored and published.
    pub messages_total: IntCounter,
    /// Connections closed for not reading fast enough (1013).
    pub slow_closes_total: IntCounter,
    /// Requests refused with `rate_limited`.
    pub rate_limited_total: IntCounter,
    /// TCP connections reset at once, before any HTTP: no handshake place,
    /// or their address opened too many.
    pub resets_total: IntCounter,
    /// Silent handshakes closed to make room for a newcomer.
    pub evictions_total: IntCounter,
    /// Connections closed because all send queues together were full, or
    /// because they read nothing for `--idle-timeout` while bytes waited.
    pub queue_closes_total: IntCounter,
    /// Join, leave and rename notices not announced: their room was over
    /// `--notice-rate`.
    pub notices_dropped_total: IntCounter,
    /// Handshakes answered with an HTTP error, by status.
    rejections: IntCounterVec,
    /// The history backend's write latency and failures (with `--db`).
    pub backend: Option<BackendMetrics>,
    deliveries: Deliveries,
}

/// A history backend's operations: how long they take, how many failed.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// Seconds per write (one transaction, which may hold many messages).
    pub latency: Histogram,
    /// Writes that failed.
    pub errors: IntCounter,
}

impl BackendMetrics {
    /// Metrics for the backend named `backend` (e.g. `sqlite`).
    pub fn new(backend: &str) -> Self {
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "wschat_backend_write_seconds",
                "Time per history write (one transaction or round trip)",
            )
            .const_label("backend", backend)
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid histogram options");
        let errors = IntCounter::with_opts(
            Opts::new(
                "wschat_backend_errors_total",
                "History writes that failed (answered `unavailable`)",
            )
            .const_label("backend", backend),
        )
        .expect("valid counter options");
        Self { latency, errors }
    }
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid counter name")
}

impl Metrics {
    /// Counters at zero; `backend` when history is not in memory.
    pub fn new(backend: Option<BackendMetrics>) -> Self {
        let metrics = Self {
            connections_total: counter(
                "wschat_connections_total",
                "WebSocket connections accepted",
            ),
            messages_total: counter("wschat_messages_total", "Chat messages stored and sent"),
            slow_closes_total: counter(
                "wschat_slow_closes_total",
                "Connections closed for falling behind (1013)",
            ),
            rate_limited_total: counter(
                "wschat_rate_limited_total",
                "Requests refused as rate_limited",
            ),
            resets_total: counter(
                "wschat_connections_reset_total",
                "TCP connections reset at once (no handshake place, or too many from the address)",
            ),
            queue_closes_total: counter(
                "wschat_queue_closes_total",
                "Connections closed (1013) for being furthest behind while all send queues together were over --max-queued-bytes, or for reading nothing for --idle-timeout while bytes waited",
            ),
            notices_dropped_total: counter(
                "wschat_notices_dropped_total",
                "Join, leave and rename notices not announced because their room was over --notice-rate",
            ),
            evictions_total: counter(
                "wschat_handshakes_evicted_total",
                "Handshakes that had sent nothing, closed to give their place to a newcomer",
            ),
            rejections: IntCounterVec::new(
                Opts::new(
                    "wschat_handshake_rejections_total",
                    "Requests answered with an HTTP error instead of an upgrade",
                ),
                &["status"],
            )
            .expect("valid counter options"),
            backend,
            deliveries: Deliveries::default(),
        };
        // Every status the handshake answers with, shown from the start.
        for status in [400, 401, 403, 404, 405, 426, 431, 503] {
            metrics.rejections.with_label_values(&[&status.to_string()]);
        }
        metrics
    }

    /// Counts a handshake answered with `status`.
    pub fn rejected(&self, status: u16) {
        self.rejections
            .with_label_values(&[status.to_string().as_str()])
            .inc();
    }

    /// Adds what `tally` counted to the total, and clears it.
    pub fn add_deliveries(&self, tally: &mut Tally) {
        if tally.count > 0 {
            self.deliveries
                .add(tally.shard, std::mem::take(&mut tally.count));
        }
    }

    /// The text `/metrics` answers, with the values known elsewhere.
    pub fn render(&self, now: Snapshot) -> String {
        let gauge = |name: &str, help: &str, value: u64| {
            let gauge = IntGauge::new(name, help).expect("valid gauge name");
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            gauge
        };
        let total = |name: &str, help: &str, value: u64| {
            let counter = counter(name, help);
            counter.inc_by(value);
            counter
        };
        let mut collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(gauge(
                "wschat_connections",
                "Open WebSocket connections",
                now.connections,
            )),
            Box::new(gauge("wschat_rooms", "Rooms with members", now.rooms)),
            Box::new(total(
                "wschat_log_lines_dropped_total",
                "Log lines lost: the log could not keep up, or writing them failed",
                now.log_lines_dropped,
            )),
            Box::new(total(
                "wschat_history_evicted_total",
                "Stored messages let go of early to keep in-memory history within --max-history-bytes",
                now.history_evicted,
            )),
            Box::new(total(
                "wschat_deliveries_total",
                "Events written to connections (one per message per recipient)",
                self.deliveries.sum(),
            )),
            Box::new(self.connections_total.clone()),
            Box::new(self.messages_total.clone()),
            Box::new(self.slow_closes_total.clone()),
            Box::new(self.rate_limited_total.clone()),
            Box::new(self.resets_total.clone()),
            Box::new(self.evictions_total.clone()),
            Box::new(self.queue_closes_total.clone()),
            Box::new(self.notices_dropped_total.clone()),
            Box::new(self.rejections.clone()),
        ];
        if let Some(backend) = &self.backend {
            collectors.push(Box::new(backend.latency.clone()));
            collectors.push(Box::new(backend.errors.clone()));
        }
        let mut families: Vec<_> = collectors.iter().flat_map(|c| c.collect()).collect();
        // The encoder refuses a family without samples.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        // Writing to a Vec fails only on malformed families, which these are not.
        let _ = prometheus::TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Values read at scrape time from where they are kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Open connections.
    pub connections: u64,
    /// Rooms with members.
    pub rooms: u64,
    /// Log lines lost.
    pub log_lines_dropped: u64,
    /// Stored messages let go of to keep in-memory history in its budget.
    pub history_evicted: u64,
}

/// Delivery counts, spread over cache lines: a connection adds what it
/// delivered in one turn of its loop to the line its id picks, so two
/// cores seldom touch the same line, and nothing is allocated per
/// connection. `/metrics` sums the lines.
#[derive(Debug, Default)]
struct Deliveries {
    shards: [Shard; SHARDS],
}

/// How many lines the delivery count is spread over.
const SHARDS: usize = 16;

/// A counter on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(AtomicU64);

impl Deliveries {
    fn add(&self, shard: usize, count: u64) {
        self.shards[shard % SHARDS]
            .0
            .fetch_add(count, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// One connection's deliveries not yet added to the total: counted in a
/// plain integer, added with [`Metrics::add_deliveries`] once per turn of
/// the session loop (before what was queued is written).
#[derive(Debug, Default)]
pub struct Tally {
    shard: usize,
    count: u64,
}

impl Tally {
    /// A tally for the connection numbered `seq`.
    pub fn new(seq: u64) -> Self {
        Self {
            shard: (seq % SHARDS as u64) as usize,
            count: 0,
        }
    }

    /// Counts one delivery.
    pub fn add(&mut self) {
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_summed_over_every_connection() {
        let metrics = Metrics::new(None);
        let mut a = Tally::new(1);
        let mut b = Tally::new(2);
        a.add();
        a.add();
        b.add();
        metrics.add_deliveries(&mut a);
        assert_eq!(metrics.deliveries.sum(), 2, "b has not added its own yet");
        metrics.add_deliveries(&mut b);
        metrics.add_deliveries(&mut a);
        assert_eq!(metrics.deliveries.sum(), 3);
    }

    #[test]
    fn renders_every_metric_in_the_classic_text_format() {
        let metrics = Metrics::new(Some(BackendMetrics::new("sqlite")));
        metrics.rejected(403);
        metrics.messages_total.inc();
        let text = metrics.render(Snapshot {
            connections: 2,
            rooms: 1,
            log_lines_dropped: 0,
            history_evicted: 0,
        });
        for line in [
            "# TYPE wschat_connections gauge",
            "wschat_connections 2",
            "# TYPE wschat_connections_total counter",
            "wschat_connections_total 0",
            "wschat_messages_total 1",
            "wschat_deliveries_total 0",
            "wschat_rooms 1",
            "wschat_slow_closes_total 0",
            "wschat_rate_limited_total 0",
            "wschat_connections_reset_total 0",
            "wschat_handshake_rejections_total{status=\"403\"} 1",
            "wschat_log_lines_dropped_total 0",
            "wschat_backend_errors_total{backend=\"sqlite\"} 0",
            "wschat_backend_write_seconds_count{backend=\"sqlite\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
