package integration

// The chaos suite: faults in the backend, in the sidecar and in its clients.
// Each scenario ends by checking the accounting equation of the sidecar's
// stats and that the backend committed every acknowledged call exactly once
// (by call id and mode) and nothing else.
//
// The 503 outage lasts -chaos.outage, 5s by default so the suite stays short;
// the 30 s outage is
//
//	go test ./integration -run TestChaosOutage503 -chaos.outage=30s

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var chaosOutage = flag.Duration("chaos.outage", 5*time.Second,
	"how long the backend answers 503 in TestChaosOutage503")

const chaosProject = "ent/chaos"

// settleTimeout bounds a final flush: an outage's backoff (up to 30 s) plus
// slack for a loaded machine.
const settleTimeout = 3 * time.Minute

// chaosArgs cut batches often so faults hit many requests.
var chaosArgs = []string{"--flush-interval", "50ms", "--flush-max-count", "200"}

// load records what clients sent and how each call line was answered.
type load struct {
	mu       sync.Mutex
	accepted map[string]bool     // "mode:id" of every acked call
	refused  map[string][]string // code -> "mode:id"
}

func newLoad() *load {
	return &load{accepted: map[string]bool{}, refused: map[string][]string{}}
}

func (l *load) record(key string, success bool, code string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if success {
		l.accepted[key] = true
	} else {
		l.refused[code] = append(l.refused[code], key)
	}
}

func (l *load) acceptedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

// callKey is the "mode:id" of line k of a client's stream: call k/2's start,
// then its end.
func callKey(prefix string, k int) (key, id string) {
	id = fmt.Sprintf("%s-%d", prefix, k/2)
	if k%2 == 0 {
		return "start:" + id, id
	}
	return "end:" + id, id
}

// push has each of clients connections send calls start/end pairs (ids
// "<prefix>-<client>-<n>", inputs padded by pad bytes), pipelined: a writer
// sends every line while a reader takes the acks. It returns when every
// line was answered; a refused call is recorded, not a failure.
func (l *load) push(t *testing.T, socket, prefix string, clients, calls, pad int) {
	t.Helper()
	errs := make(chan error, clients)
	for c := range clients {
		go func() { errs <- l.pushOne(socket, fmt.Sprintf("%s-%d", prefix, c), calls, pad) }()
	}
	for range clients {
		require.NoError(t, <-errs)
	}
}

// wireResp is the part of a response push looks at.
type wireResp struct {
	Success bool   `json:"success"`
	Code    string `json:"code"`
}

func (l *load) pushOne(socket, prefix string, calls, pad int) error {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Minute)); err != nil {
		return err
	}
	lines := 2 * calls
	werr := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(conn, 1<<16)
		for k := range lines {
			_, id := callKey(prefix, k)
			line := StartLine(chaosProject, id, pad)
			if k%2 == 1 {
				line = EndLine(chaosProject, id)
			}
			w.WriteString(line)
			if err := w.WriteByte('\n'); err != nil {
				werr <- err
				return
			}
		}
		werr <- w.Flush()
	}()

	r := bufio.NewReaderSize(conn, 1<<16)
	for k := range lines {
		raw, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("%s: ack %d of %d: %w", prefix, k, lines, err)
		}
		var resp wireResp
		if err := json.Unmarshal(raw, &resp); err != nil {
			return fmt.Errorf("%s: ack %d: %w: %q", prefix, k, err, raw)
		}
		key, _ := callKey(prefix, k)
		l.record(key, resp.Success, resp.Code)
	}
	return <-werr
}

// statsNum reads a number from a stats result.
func statsNum(t *testing.T, st map[string]any, name string) int64 {
	t.Helper()
	v, ok := st[name].(float64)
	require.True(t, ok, "stats has no number %q: %v", name, st)
	return int64(v)
}

// assertExactlyOnce checks that the backend committed each key of want once
// and nothing else, and returns the committed keys in order.
func assertExactlyOnce(t *testing.T, be *Backend, want map[string]bool) []string {
	t.Helper()
	var order []string
	seen := map[string]int{}
	for _, it := range be.Delivered() {
		k := it.Mode + ":" + it.ID
		if seen[k] == 0 {
			order = append(order, k)
		}
		seen[k]++
	}
	var dups, extra, missing []string
	for k, n := range seen {
		if n > 1 {
			dups = append(dups, k)
		}
		if !want[k] {
			extra = append(extra, k)
		}
	}
	for k := range want {
		if seen[k] == 0 {
			missing = append(missing, k)
		}
	}
	sort.Strings(dups)
	sort.Strings(extra)
	sort.Strings(missing)
	assert.Empty(t, dups, "committed more than once")
	assert.Empty(t, extra, "committed but never acked, or dropped")
	assert.Empty(t, missing, "acked but never committed")
	return order
}

// settle flushes on a fresh connection, then checks the accounting
// equations (S1's RequireAccounting) and exactly-once delivery of the
// accepted calls minus dropped. It returns the balanced reading.
func settle(t *testing.T, sc *Sidecar, be *Backend, l *load, dropped ...string) Accounting {
	t.Helper()
	c := Dial(t, sc.Socket)
	c.Flush(t, settleTimeout)
	a := RequireAccounting(t, c, 30*time.Second)
	assert.Zero(t, a.Queued, "a flush leaves nothing queued")
	assert.Zero(t, a.Spooled, "a flush leaves nothing spooled")

	want := map[string]bool{}
	l.mu.Lock()
	for k := range l.accepted {
		want[k] = true
	}
	l.mu.Unlock()
	for _, k := range dropped {
		require.True(t, want[k], "dropped %s was never accepted", k)
		delete(want, k)
	}
	assertExactlyOnce(t, be, want)
	assert.Equal(t, int64(len(want)), a.Delivered)
	assert.Equal(t, int64(len(dropped)), a.Failed())
	assert.NotContains(t, sc.Logs(), TestKey)
	return a
}

// statsNow asks for stats on a fresh connection.
func statsNow(t *testing.T, sc *Sidecar) map[string]any {
	t.Helper()
	return Dial(t, sc.Socket).Stats(t)
}

func TestChaosOutage503(t *testing.T) {
	outage := *chaosOutage
	be := NewBackend(t)
	var until atomic.Int64 // unix nanoseconds the outage ends
	until.Store(time.Now().Add(time.Hour).UnixNano())
	be.Script(func(*Request) Reply {
		if time.Now().UnixNano() < until.Load() {
			return Reply{Status: 503, Body: `{"message":"down for maintenance"}`}
		}
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: chaosArgs})
	end := time.Now().Add(outage)
	until.Store(end.UnixNano())
	l := newLoad()

	// Calls keep arriving through the outage.
	l.push(t, sc.Socket, "down1", 4, 500, 200)
	a := RequireAccounting(t, Dial(t, sc.Socket), 30*time.Second)
	if time.Now().Before(end) { // the answer came before the outage ended
		assert.Zero(t, a.Delivered, "delivered during the outage")
		assert.Equal(t, int64(l.acceptedCount()), a.Queued)
	}
	l.push(t, sc.Socket, "down2", 4, 500, 200)

	// And after it, while the backlog drains.
	time.Sleep(time.Until(end))
	l.push(t, sc.Socket, "up", 4, 500, 200)

	require.Equal(t, 2*3*4*500, l.acceptedCount(), "refused: %v", l.refused)
	settle(t, sc, be, l)
	failures := 0
	for _, r := range be.Requests() {
		if r.Status == 503 {
			failures++
		}
	}
	assert.Positive(t, failures, "the backend never answered 503")
	assert.GreaterOrEqual(t, statsNum(t, statsNow(t, sc), "retries"), int64(failures))
	waitLog(t, sc, "backend reachable again")
}

func TestChaosHangingBackend(t *testing.T) {
	be := NewBackend(t)
	var hung atomic.Int32
	be.Script(func(req *Request) Reply {
		if req.N <= 2 {
			hung.Add(1)
			// Never answered: not committed, whatever the status says.
			return Reply{Hang: true, Status: 503}
		}
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: append([]string{"--request-timeout", "1s"}, chaosArgs...)})
	l := newLoad()
	l.push(t, sc.Socket, "hang", 4, 500, 100)

	settle(t, sc, be, l)
	assert.Equal(t, int32(2), hung.Load())
	assert.GreaterOrEqual(t, statsNum(t, statsNow(t, sc), "retries"), int64(2))
}

func TestChaos429RetryAfter(t *testing.T) {
	be := NewBackend(t)
	var mu sync.Mutex
	var limitedAt []time.Time // when each 429 was answered
	var nextAt []time.Time    // when the request after each 429 arrived
	be.Script(func(req *Request) Reply {
		mu.Lock()
		defer mu.Unlock()
		if len(nextAt) < len(limitedAt) {
			nextAt = append(nextAt, time.Now())
		}
		if req.N%3 == 1 && req.N < 9 {
			limitedAt = append(limitedAt, time.Now())
			return Reply{Status: 429, Header: map[string]string{"Retry-After": "1"}}
		}
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: chaosArgs})
	l := newLoad()
	l.push(t, sc.Socket, "limit", 4, 800, 100)

	settle(t, sc, be, l)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, limitedAt, 3)
	require.Len(t, nextAt, 3)
	for i := range nextAt {
		// A lower bound only: a loaded machine makes the gap longer, never shorter.
		assert.GreaterOrEqual(t, nextAt[i].Sub(limitedAt[i]), time.Second, "retried before Retry-After (429 #%d)", i)
	}
}

func TestChaos413(t *testing.T) {
	be := NewBackend(t)
	be.Script(func(req *Request) Reply {
		if len(req.Items) > 25 || bodyHas(req, "big-0-7") {
			return Reply{Status: 413, Body: `{"reason":"payload too large"}`}
		}
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: chaosArgs})
	l := newLoad()
	l.push(t, sc.Socket, "big", 4, 500, 100)

	// Calls too large even alone are dropped; the rest of their batches are not.
	a := settle(t, sc, be, l, "start:big-0-7", "end:big-0-7")
	assert.Equal(t, int64(2), a.FailedBy["too_large"])
	assertDistinctRejected(t, be.Requests())
}

func TestChaos400OneCall(t *testing.T) {
	be := NewBackend(t)
	be.Script(func(req *Request) Reply {
		for _, it := range req.Items {
			if it.ID == "bad-2-99" && it.Mode == "start" {
				return Reply{Status: 400, Body: `{"message":"op_name must be a weave ref"}`}
			}
		}
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: chaosArgs})
	l := newLoad()
	l.push(t, sc.Socket, "bad", 4, 500, 100)

	a := settle(t, sc, be, l, "start:bad-2-99")
	assert.Equal(t, int64(1), a.FailedBy["rejected"])
	assertDistinctRejected(t, be.Requests())
}

// TestChaosConnectionReset puts a proxy in front of the backend that, for
// the first requests, reads part of the body and then resets the TCP
// connection: the request never reaches the backend, and the sidecar must
// send it again.
func TestChaosConnectionReset(t *testing.T) {
	be := NewBackend(t)
	var resets atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if resets.Load() >= 4 {
			be.serve(w, r)
			return
		}
		resets.Add(1)
		io.ReadFull(r.Body, make([]byte, 512))
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err) // httptest's HTTP/1.1 server always hijacks
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST, not FIN
		}
		conn.Close()
	}))
	t.Cleanup(front.Close)
	sc := StartSidecar(t, front.URL, Options{Args: chaosArgs})
	l := newLoad()
	l.push(t, sc.Socket, "reset", 4, 500, 100)

	settle(t, sc, be, l)
	assert.Equal(t, int32(4), resets.Load())
}

// TestChaosKillAndRestartWithSpool: the backend is down while clients send,
// so every acked call is only on disk when the sidecar is killed; a new
// sidecar on the same spool delivers each of them exactly once.
func TestChaosKillAndRestartWithSpool(t *testing.T) {
	be := NewBackend(t)
	var down atomic.Bool
	down.Store(true)
	be.Script(func(*Request) Reply {
		if down.Load() {
			return Reply{Status: 503}
		}
		return Reply{}
	})
	args := append([]string{"--spool-dir", ShortTempDir(t) + "/spool"}, chaosArgs...)
	first := StartSidecar(t, be.URL, Options{Args: args})
	l := newLoad()
	l.push(t, first.Socket, "kill", 4, 500, 100)
	require.Equal(t, 4*2*500, l.acceptedCount(), "refused: %v", l.refused)
	first.Signal(t, syscall.SIGKILL)
	first.Wait(t, 30*time.Second)
	require.Empty(t, be.Delivered())

	down.Store(false)
	second := StartSidecar(t, be.URL, Options{Args: args})
	c := Dial(t, second.Socket)
	c.Flush(t, settleTimeout)
	be.WaitDelivered(t, l.acceptedCount(), settleTimeout)
	a := RequireAccounting(t, c, 30*time.Second)
	assert.Equal(t, int64(l.acceptedCount()), a.Replayed)
	assert.Equal(t, a.Replayed, a.Delivered)
	assert.Zero(t, a.SpoolCorrupt)
	assertExactlyOnce(t, be, l.accepted)
	assert.NotContains(t, second.Logs(), TestKey)
}

// stoppedSummary returns the counters of the sidecar's final log line.
func stoppedSummary(t *testing.T, logs string) map[string]int64 {
	t.Helper()
	var line string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"undelivered":`) {
			line = l
		}
	}
	require.NotEmpty(t, line, "no final summary in:\n%s", logs)
	out := map[string]int64{}
	for _, m := range regexp.MustCompile(`"(\w+)":(\d+)`).FindAllStringSubmatch(line, -1) {
		n, err := strconv.ParseInt(m[2], 10, 64)
		require.NoError(t, err)
		out[m[1]] = n
	}
	return out
}

func TestChaosSIGTERMWithFullQueue(t *testing.T) {
	for _, tc := range []struct {
		name        string
		reply       Reply
		timeout     string
		delivered   bool // every accepted call reaches the backend
		wantCleanup string
	}{
		{"slow backend drains everything", Reply{Delay: 100 * time.Millisecond}, "120s", true, "stopped"},
		{"dead backend runs out the timeout", Reply{Hang: true, Status: 503}, "2s", false,
			"stopped with calls undelivered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := NewBackend(t)
			be.Script(func(*Request) Reply { return tc.reply })
			sc := StartSidecar(t, be.URL, Options{Args: []string{"--max-queue-bytes", "262144",
				"--shutdown-timeout", tc.timeout, "--flush-interval", "50ms", "--flush-max-count", "50"}})
			l := newLoad()
			l.push(t, sc.Socket, "full", 4, 500, 200)
			require.NotEmpty(t, l.refused["queue_full"], "the queue never filled")
			require.Equal(t, []string{"queue_full"}, keysOf(l.refused))
			a := RequireAccounting(t, Dial(t, sc.Socket), 30*time.Second)
			assert.Equal(t, int64(len(l.refused["queue_full"])), a.Refused["queue_full"])
			assert.Equal(t, int64(l.acceptedCount()), a.Accepted)

			sc.Signal(t, syscall.SIGTERM)
			assert.Equal(t, 0, sc.Wait(t, 3*time.Minute))
			sum := stoppedSummary(t, waitLog(t, sc, tc.wantCleanup))
			accepted := int64(l.acceptedCount())
			assert.Equal(t, accepted, sum["accepted"])
			// Undelivered calls are the part of the dropped ones given up at exit.
			assert.Equal(t, accepted, sum["delivered"]+sum["dropped"], "summary %v", sum)
			assert.LessOrEqual(t, sum["undelivered"], sum["dropped"], "summary %v", sum)
			if tc.delivered {
				assert.Equal(t, accepted, sum["delivered"])
				assertExactlyOnce(t, be, l.accepted)
			} else {
				assert.Equal(t, accepted, sum["undelivered"])
				assertExactlyOnce(t, be, map[string]bool{})
			}
			assert.NotContains(t, sc.Logs(), TestKey)
		})
	}
}

func keysOf[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestChaosClientKilledMidLine closes a connection in the middle of a line,
// as a killed client's is: every whole line is delivered and the cut one is
// dropped without being counted as a request.
func TestChaosClientKilledMidLine(t *testing.T) {
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{Args: chaosArgs})
	lines := func(prefix string) []byte {
		var buf []byte
		for i := range 20000 { // 7 MB, far more than the socket buffers hold
			buf = append(buf, StartLine(chaosProject, fmt.Sprintf("%s-%d", prefix, i), 100)...)
			buf = append(buf, '\n')
		}
		return buf
	}

	t.Run("after its acks", func(t *testing.T) {
		// The client dies once every whole line it wrote was acked.
		buf := lines("acked")
		conn, err := net.Dial("unix", sc.Socket)
		require.NoError(t, err)
		defer conn.Close()
		cut := len(buf) - 150 // inside the last line
		l := wholeLines(t, buf[:cut])
		acks := make(chan error, 1)
		go func() {
			r := bufio.NewReader(conn)
			for range len(l.accepted) {
				if _, err := r.ReadBytes('\n'); err != nil {
					acks <- err
					return
				}
			}
			acks <- nil
		}()
		require.NoError(t, conn.SetDeadline(time.Now().Add(2*time.Minute)))
		_, err = conn.Write(buf[:cut])
		require.NoError(t, err)
		require.NoError(t, <-acks)
		require.NoError(t, conn.Close())

		a := settle(t, sc, be, l)
		assert.Zero(t, a.CallsRefused)
		assert.Equal(t, a.CallsReceived, a.Accepted, "the cut line is not a call")
	})

	t.Run("with lines unread", func(t *testing.T) {
		// A client that never reads writes until the socket buffers are
		// full, so when it dies the sidecar is blocked on acks no one will
		// read while whole lines wait unread in its socket.
		buf := lines("unread")
		before := int64(len(statsKeysDelivered(be))) // all of "after its acks"
		conn, err := net.Dial("unix", sc.Socket)
		require.NoError(t, err)
		require.NoError(t, conn.SetWriteDeadline(time.Now().Add(2*time.Second)))
		written, err := conn.Write(buf)
		require.Error(t, err, "the sidecar read 7 MB without its acks being read")
		require.NoError(t, conn.Close())
		l := wholeLines(t, buf[:written])
		t.Logf("the client wrote %d whole lines and part of the next", len(l.accepted))
		waitRead(t, sc, before+int64(len(l.accepted)))
		for k := range statsKeysDelivered(be) {
			l.accepted[k] = true // committed earlier in this test
		}
		a := settle(t, sc, be, l)
		assert.Equal(t, a.CallsReceived, a.Accepted, "the cut line is not a call")
	})
}

// statsKeysDelivered returns the "mode:id" of every committed item.
func statsKeysDelivered(be *Backend) map[string]bool {
	keys := map[string]bool{}
	for _, it := range be.Delivered() {
		keys[it.Mode+":"+it.ID] = true
	}
	return keys
}

// wholeLines returns a load holding the call_start of every whole line in
// data as accepted.
func wholeLines(t *testing.T, data []byte) *load {
	t.Helper()
	l := newLoad()
	whole := string(data[:strings.LastIndexByte(string(data), '\n')+1])
	for line := range strings.Lines(whole) {
		var req struct {
			Payload struct {
				Start struct{ ID string } `json:"start"`
			} `json:"payload"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &req))
		l.accepted["start:"+req.Payload.Start.ID] = true
	}
	return l
}

// waitRead polls stats until the sidecar has read n call lines.
func waitRead(t *testing.T, sc *Sidecar, n int64) {
	t.Helper()
	c := Dial(t, sc.Socket)
	deadline := time.Now().Add(time.Minute)
	for {
		read := ReadAccounting(t, c).CallsReceived
		if read >= n {
			return
		}
		require.True(t, time.Now().Before(deadline), "sidecar read %d of %d whole lines", read, n)
		time.Sleep(20 * time.Millisecond)
	}
}

func TestChaosManyClients(t *testing.T) {
	const clients, calls = 8, 10_000
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{})
	l := newLoad()
	l.push(t, sc.Socket, "many", clients, calls, 64)
	require.Equal(t, 2*clients*calls, l.acceptedCount(), "refused: %v", l.refused)

	settle(t, sc, be, l)
	pos := map[string]int{}
	for i, k := range assertExactlyOnce(t, be, l.accepted) {
		pos[k] = i
	}
	late := 0
	for k := range l.accepted {
		if id, ok := strings.CutPrefix(k, "start:"); ok && pos["end:"+id] < pos[k] {
			late++
		}
	}
	assert.Zero(t, late, "calls whose end was committed before their start")
}
