package integration

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const intakeProject = "ent/intake"

func TestBadLinesCostNothingElse(t *testing.T) {
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{})
	c := Dial(t, sc.Socket)

	// Payload details that must reach the backend byte for byte.
	start := `{"start":{"project_id":"ent/intake","id":"good","trace_id":"t","op_name":"weave:///e/p/op/f:0",` +
		`"started_at":"2025-01-02T03:04:05.123456","attributes":{},` +
		`"inputs":{"big":123456789012345678901234567890,"s":"\ud800 <b>&amp;</b>","f":1.0e+300}}}`
	end := `{"end":{"project_id":"ent/intake","id":"good","ended_at":"2025-01-02T03:04:06","summary":{}}}`
	lines := []string{
		`{"id":1,"method":"call_start","payload":` + start + `}`,
		`this is not json`,
		`{"id":"nan","method":"call_start","payload":{"start":{"id":"x","project_id":"p","v":NaN}}}`,
		`{"id":3,"method":"call_update","payload":{}}`,
		`{"id":4,"method":"call_start","payload":{"start":{"id":"x"}}}`,
		`{"id":5,"method":"call_end","payload":{"end":{"id":"","project_id":"p"}}}`,
		"{\"id\":6,\"method\":\"call_start\",\"payload\":{\"start\":{\"id\":\"\xff\",\"project_id\":\"p\"}}}",
		``,
		`{"id":8,"method":"call_end","payload":` + end + `}`,
	}
	c.Send(t, lines...)
	resps := c.ReadN(t, len(lines))
	for i, tc := range []struct {
		code string
		id   string
	}{
		{"", "1"}, {"invalid_request", ""}, {"invalid_request", ""}, {"unknown_method", "3"},
		{"invalid_request", "4"}, {"invalid_request", "5"}, {"invalid_request", ""}, {"invalid_request", ""},
		{"", "8"},
	} {
		assert.Equal(t, tc.code == "", resps[i].Success, "line %d: %s", i, resps[i].Raw)
		assert.Equal(t, tc.code, resps[i].Code, "line %d: %s", i, resps[i].Raw)
		assert.Equal(t, tc.id, string(resps[i].ID), "line %d", i)
		if tc.code != "" {
			assert.NotEmpty(t, resps[i].Error, "line %d", i)
		}
	}
	assert.Contains(t, resps[4].Error, "project_id")
	assert.Contains(t, resps[6].Error, "UTF-8")

	fr := c.Flush(t, 30*time.Second)
	assert.Equal(t, FlushResult{Delivered: 2, Failed: 0, Resolved: 2}, fr)
	items := be.Delivered()
	require.Len(t, items, 2)
	assert.Equal(t, "start", items[0].Mode)
	assert.Equal(t, start, string(items[0].Req))
	assert.Equal(t, "end", items[1].Mode)
	assert.Equal(t, end, string(items[1].Req))
	// The body is assembled from raw bytes: nothing is HTML-escaped.
	assert.Contains(t, string(be.Requests()[0].Body), `"s":"\ud800 <b>&amp;</b>"`)
}

func TestTwoMegabyteLine(t *testing.T) {
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{})
	c := Dial(t, sc.Socket)

	line := StartLine(intakeProject, "big", 2<<20)
	resp := c.Call(t, WithID(line, 1))
	require.True(t, resp.Success, resp.Raw)
	c.Flush(t, 30*time.Second)
	items := be.Delivered()
	require.Len(t, items, 1)
	var req struct {
		Payload json.RawMessage `json:"payload"`
	}
	require.NoError(t, json.Unmarshal([]byte(line), &req))
	assert.Equal(t, string(req.Payload), string(items[0].Req))
}

func TestOversizedLines(t *testing.T) {
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{})
	c := Dial(t, sc.Socket)

	// Over the line limit: answered and skipped without being kept.
	c.Send(t, StartLine(intakeProject, "too-long", 33<<20), WithID(StartLine(intakeProject, "after", 10), 2))
	resp := c.Read(t)
	assert.False(t, resp.Success)
	assert.Equal(t, "line_too_long", resp.Code)
	assert.Contains(t, resp.Error, "33554432")
	resp = c.Read(t)
	assert.True(t, resp.Success, resp.Raw)
	assert.Equal(t, "2", string(resp.ID))

	// Under the line limit but over the largest request body.
	resp = c.Call(t, WithID(StartLine(intakeProject, "too-large", 31<<20), 3))
	assert.False(t, resp.Success)
	assert.Equal(t, "call_too_large", resp.Code)
	assert.Equal(t, "3", string(resp.ID))

	// A partial line at EOF is dropped.
	c.Write(t, []byte(StartLine(intakeProject, "partial", 10)))
	c.Conn.Close()

	c2 := Dial(t, sc.Socket)
	c2.Flush(t, 30*time.Second)
	var ids []string
	for _, it := range be.Delivered() {
		ids = append(ids, it.ID)
	}
	assert.Equal(t, []string{"after"}, ids)
	stats := c2.Stats(t)
	refused := stats["refused"].(map[string]any)
	assert.Equal(t, 1.0, refused["line_too_long"])
	assert.Equal(t, 1.0, refused["call_too_large"])
}

func TestConcurrentClientsExactlyOnce(t *testing.T) {
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--flush-max-count", "300"}})
	const clients, calls = 8, 500

	var wg sync.WaitGroup
	results := make([]FlushResult, clients)
	for k := range clients {
		c := Dial(t, sc.Socket)
		wg.Go(func() {
			lines := make([]string, 0, 2*calls)
			for i := range calls {
				id := fmt.Sprintf("c%d-%d", k, i)
				lines = append(lines, StartLine(intakeProject, id, 200), EndLine(intakeProject, id))
			}
			c.Send(t, lines...)
			for _, r := range c.ReadN(t, len(lines)) {
				assert.True(t, r.Success, r.Raw)
			}
			results[k] = c.Flush(t, 60*time.Second)
		})
	}
	wg.Wait()

	for k, fr := range results {
		assert.Equal(t, FlushResult{Delivered: 2 * calls, Resolved: 2 * calls}, fr, "client %d", k)
	}
	seen := make(map[string]int)
	startedAt := make(map[string]int)
	for i, it := range be.Delivered() {
		seen[it.Mode+":"+it.ID]++
		if it.Mode == "start" {
			startedAt[it.ID] = i
		} else {
			pos, ok := startedAt[it.ID]
			assert.True(t, ok && pos < i, "end of %s before its start", it.ID)
		}
	}
	assert.Len(t, seen, 2*clients*calls)
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", k, n)
		}
	}
}

func TestFlushStatsAndIDs(t *testing.T) {
	be := NewBackend(t)
	gate := make(chan struct{})
	arrived := make(chan struct{})
	be.Script(func(req *Request) Reply {
		if req.N == 1 {
			close(arrived)
			<-gate // hold the first batch until the test lets it go
		}
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--flush-interval", "1h"}})
	a := Dial(t, sc.Socket)
	b := Dial(t, sc.Socket)

	resp := a.Call(t, `{"id":"hello-1","method":"hello","payload":{"protocol":1}}`)
	require.True(t, resp.Success, resp.Raw)
	assert.Equal(t, `"hello-1"`, string(resp.ID))
	var hello struct {
		Name     string `json:"name"`
		Version  string `json:"version"`
		Protocol int    `json:"protocol"`
		PID      int    `json:"pid"`
		Backend  string `json:"backend"`
		Limits   struct {
			MaxLineBytes  int `json:"max_line_bytes"`
			MaxCallBytes  int `json:"max_call_bytes"`
			MaxQueueBytes int `json:"max_queue_bytes"`
		} `json:"limits"`
	}
	require.NoError(t, json.Unmarshal(resp.Result, &hello))
	assert.Equal(t, "weave-sidecar", hello.Name)
	assert.Equal(t, "0.0.0-test", hello.Version)
	assert.Equal(t, 1, hello.Protocol)
	assert.Equal(t, sc.Cmd.Process.Pid, hello.PID)
	assert.Equal(t, be.URL, hello.Backend)
	assert.Equal(t, 32505856, hello.Limits.MaxCallBytes)
	assert.Equal(t, 33554432, hello.Limits.MaxLineBytes)
	assert.Equal(t, 268435456, hello.Limits.MaxQueueBytes)

	resp = a.Call(t, `{"id":2,"method":"hello","payload":{"protocol":2}}`)
	assert.Equal(t, "protocol_mismatch", resp.Code)

	// Three calls on a, two on b; the first batch (a's) is held at the backend.
	a.Send(t, WithID(StartLine(intakeProject, "a1", 10), 10), WithID(StartLine(intakeProject, "a2", 10), 11),
		WithID(StartLine(intakeProject, "a3", 10), 12))
	for i, r := range a.ReadN(t, 3) {
		assert.True(t, r.Success)
		assert.Equal(t, fmt.Sprint(10+i), string(r.ID))
		assert.Equal(t, int64(0), *r.Resolved)
	}
	a.Send(t, `{"id":"f","method":"flush"}`) // cuts a batch of a1..a3 and waits
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the first batch never reached the backend")
	}
	b.Send(t, StartLine(intakeProject, "b1", 10), StartLine(intakeProject, "b2", 10))
	b.ReadN(t, 2)

	st := b.Stats(t)
	assert.Equal(t, 5.0, st["accepted"])
	assert.Equal(t, 5.0, st["queued_items"])
	assert.Equal(t, 2.0, st["connections"])
	assert.Equal(t, 1.0, st["refused"].(map[string]any)["protocol_mismatch"])

	close(gate)
	flushA := a.Read(t)
	require.True(t, flushA.Success, flushA.Raw)
	assert.Equal(t, `"f"`, string(flushA.ID))
	assert.JSONEq(t, `{"delivered":3,"failed":0,"resolved":3}`, string(flushA.Result))
	assert.Equal(t, FlushResult{Delivered: 2, Resolved: 2}, b.Flush(t, 30*time.Second))

	// Acks report what this connection has had resolved so far.
	resp = a.Call(t, StartLine(intakeProject, "a4", 10))
	assert.Equal(t, int64(3), *resp.Resolved)

	st = a.Stats(t)
	assert.Equal(t, 5.0, st["delivered"])
	assert.GreaterOrEqual(t, st["received"].(float64), 12.0)
	assert.GreaterOrEqual(t, st["http_requests"].(float64), 2.0)
	assert.GreaterOrEqual(t, st["batches"].(float64), 2.0)
	keys := make([]string, 0, len(st))
	for k := range st {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	assert.Equal(t, []string{"accepted", "batches", "calls_received", "calls_refused", "connections", "delivered",
		"failed", "http_requests", "in_flight_items", "queued_bytes", "queued_items", "received", "refused",
		"rejected_connections", "replayed", "retries", "spool_bytes", "spool_corrupt_records", "spool_max_bytes",
		"spooled_items"}, keys)
}

func TestQueueFull(t *testing.T) {
	be := NewBackend(t)
	be.Script(func(*Request) Reply { return Reply{Hang: true} })
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--max-queue-bytes", "5000", "--flush-max-count", "1",
		"--shutdown-timeout", "1s"}})
	c := Dial(t, sc.Socket)
	var codes []string
	for i := range 10 {
		r := c.Call(t, StartLine(intakeProject, fmt.Sprint(i), 1000))
		codes = append(codes, r.Code)
	}
	// About four 1.2 kB calls fit in 5000 bytes; the rest are refused at once.
	assert.Equal(t, "", codes[0])
	assert.Equal(t, "queue_full", codes[9])
	assert.True(t, strings.Contains(strings.Join(codes, ","), ",queue_full"))
}
