package metrics

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

func TestResolveAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"9464", "127.0.0.1:9464"},
		{":9464", "127.0.0.1:9464"},
		{"127.0.0.1:0", "127.0.0.1:0"},
		{"localhost:9464", "localhost:9464"},
		{"[::1]:9464", "[::1]:9464"},
		{"0.0.0.0:9464", "0.0.0.0:9464"},
	} {
		got, err := ResolveAddr(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	for _, in := range []string{"abc", "host:", "host:http", "1:2:3", ":70000", ":-1"} {
		_, err := ResolveAddr(in)
		assert.Error(t, err, in)
	}
}

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestMetrics(t *testing.T, mod func(*Config)) (*Metrics, *stats.Stats, *clock) {
	t.Helper()
	st := &stats.Stats{}
	clk := &clock{now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	cfg := Config{
		Stats: st,
		Queue: func() stats.Queue { return stats.Queue{Items: 3, Bytes: 300, InFlight: 2} },
		Now:   clk.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg), st, clk
}

func TestStatsCollector(t *testing.T) {
	m, st, _ := newTestMetrics(t, nil)
	st.Received.Add(9)
	st.Accepted.Add(7)
	st.Delivered.Add(4)
	st.Refused(protocol.CodeQueueFull)
	st.Refused(protocol.CodeQueueFull)
	st.Failed(backend.DropRejected, 1)
	st.Batches.Add(2)
	st.HTTPRequests.Add(3)
	st.Retries.Add(1)
	st.Connections.Add(1)
	st.CallsReceived.Add(8)
	st.CallsRefused.Add(1)
	st.Rejected(stats.RejectPeerUID)

	want := `
# HELP weave_sidecar_calls_accepted_total Calls acked to clients: the sidecar owns their delivery.
# TYPE weave_sidecar_calls_accepted_total counter
weave_sidecar_calls_accepted_total 7
# HELP weave_sidecar_calls_delivered_total Calls the trace server accepted.
# TYPE weave_sidecar_calls_delivered_total counter
weave_sidecar_calls_delivered_total 4
# HELP weave_sidecar_queue_bytes Encoded size of the accepted calls not yet delivered or dropped.
# TYPE weave_sidecar_queue_bytes gauge
weave_sidecar_queue_bytes 300
# HELP weave_sidecar_in_flight_items Calls in the batch being sent now.
# TYPE weave_sidecar_in_flight_items gauge
weave_sidecar_in_flight_items 2
# HELP weave_sidecar_backend_retries_total HTTP requests that repeated an earlier, failed one.
# TYPE weave_sidecar_backend_retries_total counter
weave_sidecar_backend_retries_total 1
`
	require.NoError(t, testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"weave_sidecar_calls_accepted_total", "weave_sidecar_calls_delivered_total",
		"weave_sidecar_queue_bytes", "weave_sidecar_in_flight_items", "weave_sidecar_backend_retries_total"))

	// Every stats counter is exposed, with one series per code and reason.
	text := scrape(t, m)
	for _, line := range []string{
		"weave_sidecar_requests_received_total 9",
		`weave_sidecar_requests_refused_total{code="queue_full"} 2`,
		`weave_sidecar_requests_refused_total{code="invalid_request"} 0`,
		`weave_sidecar_calls_failed_total{reason="rejected"} 1`,
		`weave_sidecar_calls_failed_total{reason="shutdown"} 0`,
		"weave_sidecar_queue_items 3",
		"weave_sidecar_batches_sent_total 2",
		"weave_sidecar_backend_requests_total 3",
		"weave_sidecar_connections 1",
		"weave_sidecar_calls_received_total 8",
		"weave_sidecar_calls_refused_total 1",
		`weave_sidecar_connections_rejected_total{reason="peer_uid"} 1`,
		`weave_sidecar_connections_rejected_total{reason="bad_token"} 0`,
		"weave_sidecar_backend_failing_seconds 0",
		`weave_sidecar_batches_cut_total{trigger="interval"} 0`,
		`weave_sidecar_backend_responses_total{class="5xx"} 0`,
		"go_goroutines ",
	} {
		assert.Contains(t, text, "\n"+line, "metric line")
	}
	assert.NotContains(t, text, "weave_sidecar_spool_bytes", "no spool configured")
}

func TestObserve(t *testing.T) {
	m, _, _ := newTestMetrics(t, nil)
	m.ObserveCut(batch.Cut{Trigger: batch.TriggerCount, Items: 2000, Bytes: 3 << 20})
	m.ObserveCut(batch.Cut{Trigger: batch.TriggerInterval, Items: 3, Bytes: 900})
	m.ObserveCut(batch.Cut{Trigger: batch.TriggerInterval, Items: 1, Bytes: 300})
	m.ObserveAttempt(backend.Attempt{Status: 503, Retry: true, Duration: 20 * time.Millisecond})
	m.ObserveAttempt(backend.Attempt{Status: 0, Retry: true, Duration: 2 * time.Second})
	m.ObserveAttempt(backend.Attempt{Status: 200, Duration: 40 * time.Millisecond})
	m.ObserveAttempt(backend.Attempt{Status: 400, Duration: 10 * time.Millisecond})

	assert.Equal(t, 2.0, testutil.ToFloat64(m.cuts.WithLabelValues("interval")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.cuts.WithLabelValues("count")))
	assert.Equal(t, 0.0, testutil.ToFloat64(m.cuts.WithLabelValues("flush")))
	for class, want := range map[string]float64{"2xx": 1, "4xx": 1, "5xx": 1, "error": 1, "3xx": 0} {
		assert.Equal(t, want, testutil.ToFloat64(m.answers.WithLabelValues(class)), class)
	}

	text := scrape(t, m)
	for _, line := range []string{
		"weave_sidecar_batch_items_count 3",
		"weave_sidecar_batch_items_sum 2004",
		`weave_sidecar_batch_items_bucket{le="4"} 2`,
		`weave_sidecar_batch_items_bucket{le="1024"} 2`,
		`weave_sidecar_batch_items_bucket{le="4096"} 3`,
		`weave_sidecar_batch_bytes_bucket{le="1024"} 2`,
		"weave_sidecar_batch_bytes_sum 3.146928e+06",
		"weave_sidecar_backend_request_duration_seconds_count 4",
		`weave_sidecar_backend_request_duration_seconds_bucket{le="0.025"} 2`,
		`weave_sidecar_backend_request_duration_seconds_bucket{le="1"} 3`,
		`weave_sidecar_backend_request_duration_seconds_bucket{le="2.5"} 4`,
	} {
		assert.Contains(t, text, "\n"+line, "metric line")
	}
}

func TestReady(t *testing.T) {
	var spoolBytes int64
	m, _, clk := newTestMetrics(t, func(c *Config) {
		c.FailureThreshold = 30 * time.Second
		c.Queue = func() stats.Queue {
			return stats.Queue{Spool: &stats.SpoolUsage{Items: 4, Bytes: spoolBytes, MaxBytes: 1000, Replayed: 6, Corrupt: 1}}
		}
	})
	ready := func() bool { ok, _ := m.Ready(); return ok }
	fail := func() {
		m.ObserveAttempt(backend.Attempt{Start: clk.Now(), Status: 503, Retry: true})
	}

	require.True(t, ready())
	fail()
	clk.Add(20 * time.Second)
	fail()
	assert.True(t, ready(), "20s of failures is under the threshold")
	clk.Add(11 * time.Second)
	ok, why := m.Ready()
	assert.False(t, ok)
	assert.Equal(t, "backend requests have failed for 31s (2 attempts in a row; threshold 30s)", why)
	assert.Contains(t, scrape(t, m), "\nweave_sidecar_backend_failing_seconds 31\n")

	// A final answer that is not a success still means the backend is up.
	m.ObserveAttempt(backend.Attempt{Start: clk.Now(), Status: 400})
	assert.True(t, ready())
	fail()
	clk.Add(time.Hour)
	m.ObserveAttempt(backend.Attempt{Start: clk.Now(), Status: 200})
	assert.True(t, ready(), "a success ends the streak")

	spoolBytes = 900
	assert.True(t, ready(), "90% full is still ready")
	spoolBytes = 901
	ok, why = m.Ready()
	assert.False(t, ok)
	assert.Equal(t, "spool is 90% full (901 of 1000 bytes)", why)
	text := scrape(t, m)
	assert.Contains(t, text, "\nweave_sidecar_spool_bytes 901\n")
	spoolBytes = 0
	m.Stopping()
	ok, why = m.Ready()
	assert.False(t, ok)
	assert.Equal(t, "shutting down", why)
	assert.Contains(t, text, "\nweave_sidecar_spool_max_bytes 1000\n")
	assert.Contains(t, text, "\nweave_sidecar_spooled_items 4\n")
	assert.Contains(t, text, "\nweave_sidecar_spool_replayed_total 6\n")
	assert.Contains(t, text, "\nweave_sidecar_spool_corrupt_records_total 1\n")
}

func TestHandler(t *testing.T) {
	m, st, clk := newTestMetrics(t, func(c *Config) { c.FailureThreshold = time.Second })
	st.Accepted.Add(5)
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)

	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/healthz", 200, "ok\n"},
		{"/readyz", 200, "ready\n"},
		{"/metrics", 200, "\nweave_sidecar_calls_accepted_total 5\n"},
		{"/debug/pprof/", 200, "goroutine"},
		{"/debug/pprof/goroutine?debug=1", 200, "goroutine profile"},
		{"/debug/pprof/cmdline", 404, "not served"},
		{"/nope", 404, ""},
	} {
		status, body := get(t, srv.URL+tc.path)
		assert.Equal(t, tc.status, status, tc.path)
		assert.Contains(t, body, tc.body, tc.path)
	}

	m.ObserveAttempt(backend.Attempt{Start: clk.Now(), Retry: true})
	clk.Add(2 * time.Second)
	status, body := get(t, srv.URL+"/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, status)
	assert.Equal(t, "not ready: backend requests have failed for 2s (1 attempts in a row; threshold 1s)\n", body)
	status, _ = get(t, srv.URL+"/healthz")
	assert.Equal(t, http.StatusOK, status, "healthz does not depend on the backend")
}

func TestListen(t *testing.T) {
	m, _, _ := newTestMetrics(t, nil)
	s, err := Listen("127.0.0.1:0", m.Handler(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(s.Addr(), "127.0.0.1:"), s.Addr())
	status, body := get(t, "http://"+s.Addr()+"/healthz")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, "ok\n", body)

	_, err = Listen(s.Addr(), m.Handler(), slog.New(slog.DiscardHandler))
	require.Error(t, err, "the address is taken")
	assert.Contains(t, err.Error(), "metrics: ")

	s.Close(context.Background())
	_, err = http.Get("http://" + s.Addr() + "/healthz")
	assert.Error(t, err, "closed")
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	return rec.Body.String()
}
