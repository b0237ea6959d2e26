package integration

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// deliveryProject is the project of every call in these tests.
const deliveryProject = "ent/delivery"

// callLines returns start and end lines for calls ids, each start right
// before its end.
func callLines(ids ...string) []string {
	var lines []string
	for _, id := range ids {
		lines = append(lines, StartLine(deliveryProject, id, 64), EndLine(deliveryProject, id))
	}
	return lines
}

// itemKeys returns "mode:id" for each item.
func itemKeys(items []BatchItem) []string {
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.Mode + ":" + it.ID
	}
	return keys
}

// lineKeys returns the "mode:id" of lines built by callLines, minus skip.
func lineKeys(ids []string, skip ...string) []string {
	var keys []string
	for _, id := range ids {
		for _, mode := range []string{"start", "end"} {
			k := mode + ":" + id
			if !contains(skip, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sendAll writes lines on one connection and requires every ack to succeed.
func sendAll(t *testing.T, c *Client, lines []string) {
	t.Helper()
	c.Send(t, lines...)
	for i, r := range c.ReadN(t, len(lines)) {
		require.True(t, r.Success, "line %d: %s", i, r.Raw)
	}
}

// waitLog waits until the sidecar's stderr, which reaches the test
// asynchronously, holds want, and returns it.
func waitLog(t *testing.T, s *Sidecar, want string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		logs := s.Logs()
		if strings.Contains(logs, want) {
			return logs
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "log line missing", "%q not in:\n%s", want, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// bodyHas reports whether a request carries the call id.
func bodyHas(req *Request, id string) bool {
	for _, it := range req.Items {
		if it.ID == id {
			return true
		}
	}
	return false
}

// assertDistinctRejected checks that no body answered with a final 4xx was
// sent twice.
func assertDistinctRejected(t *testing.T, reqs []*Request) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range reqs {
		if r.Status < 400 || r.Status >= 500 {
			continue
		}
		assert.False(t, seen[string(r.Body)], "request %d resent a rejected body unchanged", r.N)
		seen[string(r.Body)] = true
	}
}

// A flush interval this long means only flush, count or bytes send a batch,
// so the first batch holds everything written before the flush.
var manualFlush = []string{"--flush-interval", "1h"}

func TestDeliveryOutageThenRecovery(t *testing.T) {
	const outage = 3
	b := NewBackend(t)
	b.Script(func(req *Request) Reply {
		if req.N <= outage {
			return Reply{Status: 503, Body: `{"message":"down for maintenance"}`}
		}
		return Reply{}
	})
	s := StartSidecar(t, b.URL, Options{Args: manualFlush})
	c := Dial(t, s.Socket)
	ids := []string{"o1", "o2", "o3", "o4", "o5"}

	sendAll(t, c, callLines(ids...))
	fr := c.Flush(t, 90*time.Second)

	assert.Equal(t, FlushResult{Delivered: 10, Failed: 0, Resolved: 10}, fr)
	assert.Equal(t, lineKeys(ids), itemKeys(b.Delivered()))
	reqs := b.Requests()
	require.Len(t, reqs, outage+1)
	for _, r := range reqs {
		assert.Equal(t, reqs[0].Body, r.Body, "request %d changed the held batch", r.N)
		assert.Equal(t, reqs[0].Header.Get("X-Weave-Retry-Id"), r.Header.Get("X-Weave-Retry-Id"))
	}
	assert.NotEmpty(t, reqs[0].Header.Get("X-Weave-Retry-Id"))
	logs := waitLog(t, s, "backend reachable again")
	assert.Equal(t, 1, strings.Count(logs, "backend delivery failing"), "one warning per outage")
	assert.Equal(t, 1, strings.Count(logs, "backend reachable again"), "one recovery line")
	assert.Contains(t, logs, `"failures":3`)
	assert.NotContains(t, logs, TestKey)
}

func TestDelivery413Split(t *testing.T) {
	b := NewBackend(t)
	b.Script(func(req *Request) Reply {
		if len(req.Items) > 2 || bodyHas(req, "huge") {
			return Reply{Status: 413, Body: `{"reason":"payload too large"}`}
		}
		return Reply{}
	})
	s := StartSidecar(t, b.URL, Options{Args: manualFlush})
	c := Dial(t, s.Socket)
	ids := []string{"s1", "s2", "huge", "s4"}
	lines := callLines(ids...)
	lines[4] = StartLine(deliveryProject, "huge", 4096)

	sendAll(t, c, lines)
	fr := c.Flush(t, 60*time.Second)

	assert.Equal(t, FlushResult{Delivered: 6, Failed: 2, Resolved: 8}, fr)
	assert.Equal(t, lineKeys(ids, "start:huge", "end:huge"), itemKeys(b.Delivered()))
	reqs := b.Requests()
	assertDistinctRejected(t, reqs)
	assert.LessOrEqual(t, len(reqs), 2*8-1, "splitting must end")
	logs := waitLog(t, s, "dropped call the server found too large")
	assert.Contains(t, logs, `"id":"huge"`)
}

func TestDelivery400Isolation(t *testing.T) {
	b := NewBackend(t)
	b.Script(func(req *Request) Reply {
		for _, it := range req.Items {
			if it.ID == "bad" && it.Mode == "start" {
				return Reply{Status: 400, Body: `{"message":"op_name must be a weave ref"}`}
			}
		}
		return Reply{}
	})
	s := StartSidecar(t, b.URL, Options{Args: manualFlush})
	c := Dial(t, s.Socket)
	ids := []string{"g1", "g2", "g3", "bad"}

	sendAll(t, c, callLines(ids...))
	fr := c.Flush(t, 60*time.Second)

	assert.Equal(t, FlushResult{Delivered: 7, Failed: 1, Resolved: 8}, fr)
	assert.Equal(t, lineKeys(ids, "start:bad"), itemKeys(b.Delivered()))
	assertDistinctRejected(t, b.Requests())
	logs := waitLog(t, s, "dropped call the server rejected")
	assert.Contains(t, logs, `"reason":"op_name must be a weave ref"`)
	assert.Contains(t, logs, `"id":"bad"`)
	assert.NotContains(t, logs, strings.Repeat("x", 64), "payloads never reach the log")
}

func TestDelivery429RetryAfter(t *testing.T) {
	b := NewBackend(t)
	var mu sync.Mutex
	var arrivals []time.Time
	b.Script(func(req *Request) Reply {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		if req.N == 1 {
			return Reply{Status: 429, Header: map[string]string{"Retry-After": "2"}}
		}
		return Reply{}
	})
	s := StartSidecar(t, b.URL, Options{Args: manualFlush})
	c := Dial(t, s.Socket)

	sendAll(t, c, callLines("r1"))
	fr := c.Flush(t, 60*time.Second)

	assert.Equal(t, FlushResult{Delivered: 2, Failed: 0, Resolved: 2}, fr)
	reqs := b.Requests()
	require.Len(t, reqs, 2)
	assert.Equal(t, reqs[0].Body, reqs[1].Body)
	mu.Lock()
	defer mu.Unlock()
	// A lower bound only: a slow machine makes the gap longer, never shorter.
	assert.GreaterOrEqual(t, arrivals[1].Sub(arrivals[0]), 2*time.Second, "retried before Retry-After")
}

// TestDeliveryOrderingSlowFirstRequest holds the first batch (then fails it
// once) while the client keeps sending: later batches must wait for it, and
// no call's end may be committed before its start.
func TestDeliveryOrderingSlowFirstRequest(t *testing.T) {
	b := NewBackend(t)
	var inFlight, overlaps atomic.Int32
	firstSeen := make(chan struct{})
	var once sync.Once
	b.Script(func(req *Request) Reply {
		if inFlight.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer inFlight.Add(-1)
		if req.N == 1 {
			once.Do(func() { close(firstSeen) })
			time.Sleep(700 * time.Millisecond) // slow, then a retryable failure
			return Reply{Status: 503}
		}
		return Reply{}
	})
	s := StartSidecar(t, b.URL, Options{Args: []string{"--flush-interval", "20ms"}})
	c := Dial(t, s.Socket)

	// The first batch holds only o0's start; its end and the other calls
	// arrive while that batch is in flight and being retried.
	sendAll(t, c, []string{StartLine(deliveryProject, "o0", 16)})
	<-firstSeen
	var lines []string
	ids := []string{"o0"}
	lines = append(lines, EndLine(deliveryProject, "o0"))
	for i := 1; i < 40; i++ {
		id := fmt.Sprintf("o%d", i)
		ids = append(ids, id)
		lines = append(lines, StartLine(deliveryProject, id, 16), EndLine(deliveryProject, id))
	}
	sendAll(t, c, lines)
	fr := c.Flush(t, 60*time.Second)

	assert.Equal(t, int64(80), fr.Delivered)
	assert.Zero(t, overlaps.Load(), "a request was sent while another was in flight")
	reqs := b.Requests()
	require.GreaterOrEqual(t, len(reqs), 3)
	assert.Equal(t, reqs[0].Body, reqs[1].Body, "the retried batch was overtaken")
	assert.Equal(t, []string{"start:o0"}, itemKeys(reqs[0].Items))

	// Every item committed exactly once, each start before its end.
	delivered := itemKeys(b.Delivered())
	pos := map[string]int{}
	for i, k := range delivered {
		_, dup := pos[k]
		assert.False(t, dup, "%s delivered twice", k)
		pos[k] = i
	}
	assert.ElementsMatch(t, lineKeys(ids), delivered)
	for _, id := range ids {
		assert.Less(t, pos["start:"+id], pos["end:"+id], "end of %s committed before its start", id)
	}
}
