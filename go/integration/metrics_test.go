package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// metricsAddr waits for the sidecar's "metrics server listening" log line
// and returns its address.
func metricsAddr(t *testing.T, s *Sidecar) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		sc := bufio.NewScanner(strings.NewReader(s.Logs()))
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "metrics server listening" {
				return line.Addr
			}
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "no metrics address logged", "%s", s.Logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// scrapeValue returns the value of the sample named series (with labels,
// exactly as exposed) in a /metrics text, or -1 if it is absent.
func scrapeValue(text, series string) float64 {
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			return -1
		}
		return v
	}
	return -1
}

// waitStatus polls url until it answers want, and returns that body.
func waitStatus(t *testing.T, url string, want int, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		status, body := httpGet(t, url)
		if status == want {
			return body
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "wrong status", "%s answered %d %q, waited for %d", url, status, body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	be := NewBackend(t)
	var down atomic.Bool
	be.Script(func(*Request) Reply {
		if down.Load() {
			return Reply{Status: http.StatusServiceUnavailable}
		}
		return Reply{}
	})
	// A long interval, so every batch is cut by a flush request.
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--metrics-addr", "127.0.0.1:0", "--unready-after", "1s",
		"--flush-interval", "10m", "--shutdown-timeout", "5s"}})
	base := "http://" + metricsAddr(t, sc)

	status, body := httpGet(t, base+"/healthz")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, "ok\n", body)
	status, body = httpGet(t, base+"/readyz")
	assert.Equal(t, http.StatusOK, status, body)

	c := Dial(t, sc.Socket)
	for i := range 3 {
		id := fmt.Sprintf("m%d", i)
		c.Send(t, StartLine("e/p", id, 100), EndLine("e/p", id))
	}
	c.Send(t, `{"method":"nope"}`)
	for i, r := range c.ReadN(t, 7) {
		assert.Equal(t, i < 6, r.Success, r.Raw)
	}
	fr := c.Flush(t, 30*time.Second)
	require.Equal(t, int64(6), fr.Delivered)

	_, text := httpGet(t, base+"/metrics")
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{"weave_sidecar_requests_received_total", 8}, // six calls, one unknown method, one flush
		{`weave_sidecar_requests_refused_total{code="unknown_method"}`, 1},
		{`weave_sidecar_requests_refused_total{code="queue_full"}`, 0},
		{"weave_sidecar_calls_received_total", 6},
		{"weave_sidecar_calls_accepted_total", 6},
		{"weave_sidecar_calls_delivered_total", 6},
		{`weave_sidecar_calls_failed_total{reason="rejected"}`, 0},
		{"weave_sidecar_queue_items", 0},
		{"weave_sidecar_queue_bytes", 0},
		{"weave_sidecar_connections", 1},
		{`weave_sidecar_batches_cut_total{trigger="flush"}`, 1},
		{`weave_sidecar_batches_cut_total{trigger="interval"}`, 0},
		{"weave_sidecar_batch_items_count", 1},
		{"weave_sidecar_batch_items_sum", 6},
		{"weave_sidecar_batches_sent_total", 1},
		{"weave_sidecar_backend_requests_total", 1},
		{`weave_sidecar_backend_responses_total{class="2xx"}`, 1},
		{`weave_sidecar_backend_responses_total{class="5xx"}`, 0},
		{"weave_sidecar_backend_request_duration_seconds_count", 1},
		{"weave_sidecar_backend_retries_total", 0},
		{"weave_sidecar_backend_failing_seconds", 0},
	} {
		assert.Equal(t, tc.want, scrapeValue(text, tc.series), tc.series)
	}
	assert.Greater(t, scrapeValue(text, "weave_sidecar_batch_bytes_sum"), 6*100.0)
	assert.Greater(t, scrapeValue(text, "process_resident_memory_bytes"), 0.0)
	assert.NotContains(t, text, TestKey)

	// A backend outage longer than --unready-after makes the sidecar not
	// ready; its health does not change. The call waits in the queue, and
	// the flush request on a second connection waits for it.
	down.Store(true)
	c.Send(t, StartLine("e/p", "m-outage", 100))
	require.True(t, c.Read(t).Success)
	c2 := Dial(t, sc.Socket)
	c2.Send(t, `{"method":"flush"}`)
	body = waitStatus(t, base+"/readyz", http.StatusServiceUnavailable, 60*time.Second)
	assert.Contains(t, body, "not ready: backend requests have failed for")
	status, _ = httpGet(t, base+"/healthz")
	assert.Equal(t, http.StatusOK, status)
	_, text = httpGet(t, base+"/metrics")
	assert.GreaterOrEqual(t, scrapeValue(text, `weave_sidecar_backend_responses_total{class="5xx"}`), 1.0)
	assert.Equal(t, 1.0, scrapeValue(text, "weave_sidecar_queue_items"))
	assert.Greater(t, scrapeValue(text, "weave_sidecar_backend_failing_seconds"), 0.0)

	// Recovery: the next attempt succeeds and the sidecar is ready again.
	down.Store(false)
	waitStatus(t, base+"/readyz", http.StatusOK, 60*time.Second)
	c2.Read(t)
	_, text = httpGet(t, base+"/metrics")
	assert.Equal(t, 7.0, scrapeValue(text, "weave_sidecar_calls_delivered_total"))
	assert.Equal(t, 2.0, scrapeValue(text, `weave_sidecar_batches_cut_total{trigger="flush"}`))
	assert.GreaterOrEqual(t, scrapeValue(text, "weave_sidecar_backend_retries_total"), 1.0)
	assert.Equal(t, 0.0, scrapeValue(text, "weave_sidecar_backend_failing_seconds"))

	// The status command reads the same counters from the socket.
	out, err := exec.Command(binPath, "status", "--socket", sc.Socket).CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Contains(t, string(out), "weave-sidecar 0.0.0-test, pid "+strconv.Itoa(sc.Cmd.Process.Pid))
	assert.Regexp(t, `\n  delivered +7\n`, string(out))
	assert.Regexp(t, `\n  refused +1 \(unknown_method 1\)\n`, string(out))

	// While it drains (a call held by a new outage), it is not ready.
	down.Store(true)
	c.Send(t, StartLine("e/p", "m-drain", 100))
	require.True(t, c.Read(t).Success)
	sc.Signal(t, syscall.SIGTERM)
	body = waitStatus(t, base+"/readyz", http.StatusServiceUnavailable, 30*time.Second)
	assert.Equal(t, "not ready: shutting down\n", body)
	assert.Equal(t, 0, sc.Wait(t, 60*time.Second))
}

func TestMetricsAddrInUse(t *testing.T) {
	be := NewBackend(t)
	first := StartSidecar(t, be.URL, Options{Args: []string{"--metrics-addr", "127.0.0.1:0"}})
	addr := metricsAddr(t, first)

	// The second sidecar cannot bind the port; it logs that and still
	// delivers.
	second := StartSidecar(t, be.URL, Options{Args: []string{"--metrics-addr", addr}})
	assert.Contains(t, second.Logs(), `"msg":"metrics server not started; serving without it"`)
	assert.Contains(t, second.Logs(), "metrics: listen tcp "+addr)
	c := Dial(t, second.Socket)
	c.Send(t, StartLine("e/p", "after-bind-error", 10))
	require.True(t, c.Read(t).Success)
	assert.Equal(t, int64(1), c.Flush(t, 30*time.Second).Delivered)
	assert.False(t, second.Exited())
}

func TestStatusCommandWithoutSidecar(t *testing.T) {
	socket := filepath.Join(ShortTempDir(t), "none")
	cmd := exec.Command(binPath, "status", "--socket", socket)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, string(out))
	assert.Equal(t, 1, ee.ExitCode())
	assert.Contains(t, string(out), "weave-sidecar: status: no sidecar answering at "+socket)
}
