package backend

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
)

const testKey = "k3y-for-tests-only-9f8e7d"

// received is one request as the fake backend saw it.
type received struct {
	Path   string
	Header http.Header
	Body   []byte
	Status int // the status answered; 0 when the connection was dropped
}

// ids returns the call ids of the body's batch entries, in order.
func (r received) ids(t *testing.T) []string {
	t.Helper()
	var body struct {
		Batch []struct {
			Mode string `json:"mode"`
			Req  struct {
				Start *struct{ ID string } `json:"start"`
				End   *struct{ ID string } `json:"end"`
			} `json:"req"`
		} `json:"batch"`
	}
	require.NoError(t, json.Unmarshal(r.Body, &body))
	var ids []string
	for _, e := range body.Batch {
		if e.Req.Start != nil {
			ids = append(ids, e.Mode+":"+e.Req.Start.ID)
		} else {
			ids = append(ids, e.Mode+":"+e.Req.End.ID)
		}
	}
	return ids
}

// reply is the fake backend's answer to one request.
type reply struct {
	status int
	body   string
	header map[string]string
	hangup bool // close the connection without an answer
	hang   bool // block until the client gives up
}

// fakeBackend is an httptest server that records each request and answers
// it with script(n, request), n counting from 0.
type fakeBackend struct {
	t      *testing.T
	srv    *httptest.Server
	script func(n int, r received) reply
	hit    chan struct{} // receives once per request, when it arrives

	mu   sync.Mutex
	reqs []received
}

func newFakeBackend(t *testing.T, script func(n int, r received) reply) *fakeBackend {
	t.Helper()
	f := &fakeBackend{t: t, script: script, hit: make(chan struct{}, 1000)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeBackend) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	rec := received{Path: r.URL.Path, Header: r.Header.Clone(), Body: body}
	f.mu.Lock()
	n := len(f.reqs)
	f.reqs = append(f.reqs, rec)
	f.mu.Unlock()
	f.hit <- struct{}{}

	rep := f.script(n, rec)
	if rep.status == 0 && !rep.hang && !rep.hangup {
		rep.status = http.StatusOK
	}
	f.mu.Lock()
	f.reqs[n].Status = rep.status
	f.mu.Unlock()
	switch {
	case rep.hang:
		<-r.Context().Done()
		return
	case rep.hangup:
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
		return
	}
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, rep.body)
}

func (f *fakeBackend) requests() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.reqs...)
}

// deliveredIDs returns, in order, the ids of every body answered 2xx.
func (f *fakeBackend) deliveredIDs() []string {
	var ids []string
	for _, r := range f.requests() {
		if r.Status >= 200 && r.Status < 300 {
			ids = append(ids, r.ids(f.t)...)
		}
	}
	return ids
}

// logBuffer collects JSON log lines at debug level.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the decoded log records whose msg starts with prefix.
func (b *logBuffer) lines(t *testing.T, prefix string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if l == "" {
			continue
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &rec))
		if msg, _ := rec["msg"].(string); strings.HasPrefix(msg, prefix) {
			out = append(out, rec)
		}
	}
	return out
}

// newTestClient returns a client for url with tiny backoff waits and a
// captured debug log.
func newTestClient(t *testing.T, url string, tweak func(*Config)) (*Client, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg := Config{
		URL:            url,
		Key:            auth.NewSecret(testKey),
		Version:        "1.2.3",
		RequestTimeout: time.Minute,
		Logger:         slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Backoff:        BackoffConfig{Initial: time.Millisecond, Max: 5 * time.Millisecond},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c, logs
}

// payloadMarker is in every test payload, so logs can be checked for it.
const payloadMarker = "PAYLOAD-MARKER"

// callItems makes n start/end items: even indices start call c<i/2>, odd
// indices end it, all in project "ent/proj".
func callItems(n int) []Item {
	items := make([]Item, n)
	for i := range items {
		items[i] = testItem(i%2 == 1, fmt.Sprintf("c%d", i/2), "ent/proj")
	}
	return items
}

func testItem(end bool, id, project string) Item {
	if end {
		return Item{Mode: ModeEnd, ID: id, ProjectID: project, Payload: json.RawMessage(fmt.Sprintf(
			`{"end":{"id":%q,"project_id":%q,"ended_at":"2025-01-02T03:04:05.123456","summary":{},"output":%q}}`,
			id, project, payloadMarker))}
	}
	return Item{Mode: ModeStart, ID: id, ProjectID: project, Payload: json.RawMessage(fmt.Sprintf(
		`{"start":{"id":%q,"project_id":%q,"op_name":"op","started_at":"2025-01-02T03:04:05","attributes":{},"inputs":{"m":%q}}}`,
		id, project, payloadMarker))}
}

// itemIDs returns "mode:id" for items, as received.ids does for bodies.
func itemIDs(items []Item) []string {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = string(it.Mode) + ":" + it.ID
	}
	return ids
}
