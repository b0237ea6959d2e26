// Package metrics exposes the sidecar's counters to Prometheus and answers
// health and readiness probes.
//
// The counters of package stats stay the one source of truth: a collector
// reads them at scrape time, so the stats request and /metrics never
// disagree. What stats does not keep (batch sizes, cut triggers, request
// latency, answers by status class, the backend's failure streak) is fed in
// through ObserveCut and ObserveAttempt, the hooks of batch.Config and
// backend.Config. Everything lives in a private registry.
package metrics

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

const namespace = "weave_sidecar"

// DefaultFailureThreshold is how long the backend may fail before the
// sidecar reports itself not ready, when Config.FailureThreshold is zero.
const DefaultFailureThreshold = time.Minute

// spoolReadyFraction is the spool fill above which the sidecar is not ready.
const spoolReadyFraction = 0.9

// Config configures Metrics.
type Config struct {
	Stats *stats.Stats // required; the counters the stats request reports
	// Queue is required; usually (*batch.Batcher).Queue. Its Spool, when
	// set, adds the spool metrics and the spool readiness check.
	Queue func() stats.Queue
	// FailureThreshold is how long backend requests may fail in a row
	// before /readyz answers 503; zero means DefaultFailureThreshold.
	FailureThreshold time.Duration
	Now              func() time.Time // nil means time.Now; for tests
}

// Metrics holds the registry and the state fed by the hooks. All methods
// are safe for concurrent use.
type Metrics struct {
	cfg Config
	reg *prometheus.Registry

	batchItems prometheus.Histogram
	batchBytes prometheus.Histogram
	cuts       *prometheus.CounterVec
	latency    prometheus.Histogram
	answers    *prometheus.CounterVec

	stopping atomic.Bool // set by Stopping; /readyz answers 503 from then on

	mu        sync.Mutex
	failSince time.Time // guarded by mu; start of the current failure streak, zero when none
	failures  int       // guarded by mu; attempts in the streak
}

// New registers every metric in a fresh registry.
func New(cfg Config) *Metrics {
	if cfg.FailureThreshold <= 0 {
		cfg.FailureThreshold = DefaultFailureThreshold
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Metrics{cfg: cfg, reg: prometheus.NewRegistry()}
	m.batchItems = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "batch_items",
		Help:    "Calls per batch cut for delivery.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 7), // 1 .. 4096
	})
	m.batchBytes = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "batch_bytes",
		Help:    "Encoded request body size of each batch cut for delivery, in bytes.",
		Buckets: prometheus.ExponentialBuckets(1024, 4, 8), // 1 KiB .. 16 MiB
	})
	m.cuts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "batches_cut_total",
		Help: "Batches cut for delivery, by what triggered the cut (interval, count, bytes, flush, shutdown).",
	}, []string{"trigger"})
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "backend_request_duration_seconds",
		Help:    "Duration of each HTTP attempt to the trace server, answered or failed.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	})
	m.answers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "backend_responses_total",
		Help: "HTTP attempts to the trace server by outcome: 2xx, 3xx, 4xx, 5xx, or error (no answer).",
	}, []string{"class"})
	for _, tr := range []batch.Trigger{batch.TriggerInterval, batch.TriggerCount, batch.TriggerBytes,
		batch.TriggerFlush, batch.TriggerShutdown} {
		m.cuts.WithLabelValues(string(tr))
	}
	for _, c := range []string{"2xx", "3xx", "4xx", "5xx", "error"} {
		m.answers.WithLabelValues(c)
	}

	m.reg.MustRegister(
		&statsCollector{m: m},
		m.batchItems, m.batchBytes, m.cuts, m.latency, m.answers,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry returns the private registry, for tests and for serving.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveCut records one cut batch; it is batch.Config.OnCut.
func (m *Metrics) ObserveCut(c batch.Cut) {
	m.cuts.WithLabelValues(string(c.Trigger)).Inc()
	m.batchItems.Observe(float64(c.Items))
	m.batchBytes.Observe(float64(c.Bytes))
}

// ObserveAttempt records one HTTP attempt; it is backend.Config.OnAttempt.
// A retried answer (network error, 408, 429, 5xx) starts or extends the
// failure streak; any other answer ends it.
func (m *Metrics) ObserveAttempt(a backend.Attempt) {
	m.latency.Observe(a.Duration.Seconds())
	m.answers.WithLabelValues(statusClass(a.Status)).Inc()

	m.mu.Lock()
	defer m.mu.Unlock()
	if !a.Retry {
		m.failSince, m.failures = time.Time{}, 0
		return
	}
	if m.failSince.IsZero() {
		m.failSince = a.Start
	}
	m.failures++
}

func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "error"
	}
	return strconv.Itoa(status/100) + "xx"
}

// failing returns how long the current failure streak has lasted and how
// many attempts it holds; zero when the last attempt succeeded.
func (m *Metrics) failing() (time.Duration, int) {
	m.mu.Lock()
	since, n := m.failSince, m.failures
	m.mu.Unlock()
	if since.IsZero() {
		return 0, 0
	}
	return max(m.cfg.Now().Sub(since), 0), n
}

// statsCollector reads package stats at scrape time.
type statsCollector struct{ m *Metrics }

var (
	descReceived = prometheus.NewDesc(namespace+"_requests_received_total",
		"Request lines read from clients, of any method.", nil, nil)
	descRefused = prometheus.NewDesc(namespace+"_requests_refused_total",
		"Requests answered with an error, by protocol code.", []string{"code"}, nil)
	descCallsReceived = prometheus.NewDesc(namespace+"_calls_received_total",
		"Call requests that decoded and were offered for intake; each is accepted or refused.", nil, nil)
	descCallsRefused = prometheus.NewDesc(namespace+"_calls_refused_total",
		"Call requests refused at intake (also counted by code in requests_refused_total).", nil, nil)
	descRejected = prometheus.NewDesc(namespace+"_connections_rejected_total",
		"Connections closed before their first request, by reason.", []string{"reason"}, nil)
	descAccepted = prometheus.NewDesc(namespace+"_calls_accepted_total",
		"Calls acked to clients: the sidecar owns their delivery.", nil, nil)
	descDelivered = prometheus.NewDesc(namespace+"_calls_delivered_total",
		"Calls the trace server accepted.", nil, nil)
	descFailed = prometheus.NewDesc(namespace+"_calls_failed_total",
		"Accepted calls the sidecar gave up on, by reason.", []string{"reason"}, nil)
	descQueueItems = prometheus.NewDesc(namespace+"_queue_items",
		"Accepted calls not yet delivered or dropped.", nil, nil)
	descQueueBytes = prometheus.NewDesc(namespace+"_queue_bytes",
		"Encoded size of the accepted calls not yet delivered or dropped.", nil, nil)
	descInFlight = prometheus.NewDesc(namespace+"_in_flight_items",
		"Calls in the batch being sent now.", nil, nil)
	descBatches = prometheus.NewDesc(namespace+"_batches_sent_total",
		"Batches handed to the backend client.", nil, nil)
	descRequests = prometheus.NewDesc(namespace+"_backend_requests_total",
		"HTTP requests made to the trace server, retries included.", nil, nil)
	descRetries = prometheus.NewDesc(namespace+"_backend_retries_total",
		"HTTP requests that repeated an earlier, failed one.", nil, nil)
	descConnections = prometheus.NewDesc(namespace+"_connections",
		"Client connections open now.", nil, nil)
	descFailing = prometheus.NewDesc(namespace+"_backend_failing_seconds",
		"How long backend requests have failed in a row; 0 while the last one succeeded.", nil, nil)
	descSpoolBytes = prometheus.NewDesc(namespace+"_spool_bytes",
		"Bytes of spool segment files on disk.", nil, nil)
	descSpoolMax = prometheus.NewDesc(namespace+"_spool_max_bytes",
		"Limit of the spool in bytes (--spool-max-bytes).", nil, nil)
	descSpooled = prometheus.NewDesc(namespace+"_spooled_items",
		"Accepted calls held on disk only, not in memory.", nil, nil)
	descReplayed = prometheus.NewDesc(namespace+"_spool_replayed_total",
		"Calls found in the spool at start.", nil, nil)
	descCorrupt = prometheus.NewDesc(namespace+"_spool_corrupt_records_total",
		"Damaged spool records skipped.", nil, nil)
)

// spoolDescs are described always and collected only when a spool is on.
var spoolDescs = []*prometheus.Desc{descSpoolBytes, descSpoolMax, descSpooled, descReplayed, descCorrupt}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReceived, descRefused, descCallsReceived, descCallsRefused,
		descAccepted, descDelivered, descFailed, descQueueItems, descQueueBytes, descInFlight, descBatches,
		descRequests, descRetries, descConnections, descRejected, descFailing} {
		ch <- d
	}
	for _, d := range spoolDescs {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	q := c.m.cfg.Queue()
	s := c.m.cfg.Stats.Snapshot(q)
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}

	counter(descReceived, s.Received)
	for code, n := range s.Refused {
		counter(descRefused, n, code)
	}
	counter(descCallsReceived, s.CallsReceived)
	counter(descCallsRefused, s.CallsRefused)
	counter(descAccepted, s.Accepted)
	counter(descDelivered, s.Delivered)
	for reason, n := range s.Failed {
		counter(descFailed, n, reason)
	}
	gauge(descQueueItems, float64(s.QueuedItems))
	gauge(descQueueBytes, float64(s.QueuedBytes))
	gauge(descInFlight, float64(s.InFlightItems))
	counter(descBatches, s.Batches)
	counter(descRequests, s.HTTPRequests)
	counter(descRetries, s.Retries)
	gauge(descConnections, float64(s.Connections))
	for reason, n := range s.RejectedConnections {
		counter(descRejected, n, reason)
	}
	d, _ := c.m.failing()
	gauge(descFailing, d.Seconds())
	if q.Spool != nil {
		gauge(descSpoolBytes, float64(s.SpoolBytes))
		gauge(descSpoolMax, float64(s.SpoolMaxBytes))
		gauge(descSpooled, float64(s.SpooledItems))
		counter(descReplayed, s.Replayed)
		counter(descCorrupt, s.SpoolCorruptRecords)
	}
}
