package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// spoolArgs are the flags of a sidecar spooling to dir.
func spoolArgs(dir string, extra ...string) []string {
	return append([]string{"--spool-dir", dir, "--flush-interval", "20ms", "--flush-max-count", "50"}, extra...)
}

func callIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return ids
}

// countKeys counts each "mode:id" among items.
func countKeys(items []BatchItem) map[string]int {
	m := make(map[string]int)
	for _, k := range itemKeys(items) {
		m[k]++
	}
	return m
}

// downWhile makes b answer 503 while down is set.
func downWhile(b *Backend, down *atomic.Bool) {
	b.Script(func(*Request) Reply {
		if down.Load() {
			return Reply{Status: http.StatusServiceUnavailable}
		}
		return Reply{}
	})
}

// spoolFiles returns the contents of every file in dir.
func spoolFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	out := make(map[string][]byte)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		out[e.Name()] = data
	}
	return out
}

// TestSpoolKillRestart: every acked call survives SIGKILL and is delivered
// after a restart on the same spool. The one duplicate window is the batch
// whose request was in flight at the kill: its cursor update never happened,
// so it is sent again (the trace server upserts by id).
func TestSpoolKillRestart(t *testing.T) {
	b := NewBackend(t)
	var slow atomic.Bool
	slow.Store(true)
	b.Script(func(*Request) Reply {
		if slow.Load() {
			return Reply{Delay: 300 * time.Millisecond}
		}
		return Reply{}
	})
	dir := filepath.Join(ShortTempDir(t), "spool")
	args := spoolArgs(dir)

	s1 := StartSidecar(t, b.URL, Options{Args: args})
	ids := callIDs("kill", 300)
	sendAll(t, Dial(t, s1.Socket), callLines(ids...)) // every call acked: on disk
	s1.Signal(t, syscall.SIGKILL)
	s1.Wait(t, 10*time.Second)
	firstRun := b.Requests()
	slow.Store(false)

	s2 := StartSidecar(t, b.URL, Options{Args: args})
	c := Dial(t, s2.Socket)
	c.Flush(t, 60*time.Second)
	a := RequireAccounting(t, c, 10*time.Second)
	assert.Zero(t, a.Failed())
	assert.Zero(t, a.SpoolCorrupt)
	assert.Positive(t, a.Replayed, "the kill came before everything was delivered")

	got := countKeys(b.Delivered())
	for _, k := range lineKeys(ids) {
		assert.GreaterOrEqual(t, got[k], 1, "acked call %s was lost", k)
	}
	assert.Len(t, got, 2*len(ids), "only acked calls arrive")
	var inFlight map[string]int
	if len(firstRun) > 0 {
		inFlight = countKeys(firstRun[len(firstRun)-1].Items)
	}
	for k, n := range got {
		if n > 1 {
			assert.Equal(t, 2, n, "%s delivered %d times", k, n)
			assert.Contains(t, inFlight, k, "%s duplicated but was not in the request in flight at the kill", k)
		}
	}
	s2.Signal(t, syscall.SIGTERM)
	assert.Equal(t, 0, s2.Wait(t, 30*time.Second))
	assert.Empty(t, spoolFiles(t, dir)["0000000000000001.seg"], "resolved segments are deleted")
}

// TestSpoolOutageThenRecovery: during an outage the spool grows while
// memory stays bounded; after recovery it drains in order while new calls
// keep flowing.
func TestSpoolOutageThenRecovery(t *testing.T) {
	b := NewBackend(t)
	var down atomic.Bool
	down.Store(true)
	downWhile(b, &down)
	dir := filepath.Join(ShortTempDir(t), "spool")
	const maxQueue = 64 << 10
	s := StartSidecar(t, b.URL, Options{Args: spoolArgs(dir, "--max-queue-bytes", fmt.Sprint(maxQueue))})
	c := Dial(t, s.Socket)

	early := callIDs("early", 600) // ~ 500 KB: most of it cannot be in memory
	for i := 0; i < len(early); i += 100 {
		sendAll(t, c, callLines(early[i:i+100]...))
	}
	a := RequireAccounting(t, c, 10*time.Second)
	assert.Positive(t, a.Spooled, "calls beyond --max-queue-bytes wait on disk")
	assert.LessOrEqual(t, a.QueuedBytes, int64(maxQueue))
	assert.Zero(t, a.Delivered)

	down.Store(false)
	late := callIDs("late", 200)
	for i := 0; i < len(late); i += 50 { // new calls while the backlog drains
		sendAll(t, c, callLines(late[i:i+50]...))
	}
	c.Flush(t, 120*time.Second)
	a = RequireAccounting(t, c, 10*time.Second)
	assert.Equal(t, int64(2*(len(early)+len(late))), a.Delivered)
	assert.Zero(t, a.Spooled)
	assert.Zero(t, a.Failed())
	assert.Equal(t, lineKeys(append(early, late...)), itemKeys(b.Delivered()), "each call once, in order")
}

// TestSpoolFull: when --spool-max-bytes is reached, intake refuses with
// spool_full and what was acked is delivered after recovery. The spool
// holds neither the key nor the backend URL.
func TestSpoolFull(t *testing.T) {
	b := NewBackend(t)
	var down atomic.Bool
	down.Store(true)
	downWhile(b, &down)
	dir := filepath.Join(ShortTempDir(t), "spool")
	s := StartSidecar(t, b.URL, Options{Args: spoolArgs(dir, "--spool-max-bytes", "100000")})
	c := Dial(t, s.Socket)

	ids := callIDs("full", 300) // ~ 250 KB
	lines := callLines(ids...)
	c.Send(t, lines...)
	var acked []string
	full := 0
	for i, r := range c.ReadN(t, len(lines)) {
		if r.Success {
			require.Zero(t, full, "line %d acked after a spool_full: %s", i, r.Raw)
			acked = append(acked, itemKeys([]BatchItem{lineItem(i, ids)})...)
			continue
		}
		require.Equal(t, "spool_full", r.Code, r.Raw)
		assert.Contains(t, r.Error, "spool full")
		full++
	}
	require.NotEmpty(t, acked)
	require.Positive(t, full)
	a := RequireAccounting(t, c, 10*time.Second)
	assert.Equal(t, int64(full), a.Refused["spool_full"])
	assert.LessOrEqual(t, a.SpoolBytes, int64(100000))

	files := spoolFiles(t, dir)
	require.NotEmpty(t, files)
	host := strings.TrimPrefix(b.URL, "http://")
	for name, data := range files {
		assert.NotContains(t, string(data), TestKey, "API key in spool file %s", name)
		assert.NotContains(t, string(data), host, "backend address in spool file %s", name)
	}

	down.Store(false)
	c.Flush(t, 120*time.Second)
	a = RequireAccounting(t, c, 10*time.Second)
	assert.Equal(t, int64(len(acked)), a.Delivered)
	assert.Equal(t, acked, itemKeys(b.Delivered()), "every acked call once, in order")
}

// lineItem is the "mode:id" item of line i of callLines(ids...).
func lineItem(i int, ids []string) BatchItem {
	mode := "start"
	if i%2 == 1 {
		mode = "end"
	}
	return BatchItem{Mode: mode, ID: ids[i/2]}
}

// TestSpoolDamagedRestart: a spool with a flipped bit and a torn tail
// starts, skips and counts the damage, and delivers the rest.
func TestSpoolDamagedRestart(t *testing.T) {
	b := NewBackend(t)
	var down atomic.Bool
	down.Store(true)
	downWhile(b, &down)
	dir := filepath.Join(ShortTempDir(t), "spool")
	args := spoolArgs(dir)

	s1 := StartSidecar(t, b.URL, Options{Args: args})
	ids := callIDs("dmg", 50)
	sendAll(t, Dial(t, s1.Socket), callLines(ids...))
	s1.Signal(t, syscall.SIGKILL)
	s1.Wait(t, 10*time.Second)

	seg := filepath.Join(dir, "0000000000000001.seg")
	data, err := os.ReadFile(seg)
	require.NoError(t, err)
	data[len(data)/2] ^= 0x08                      // damage one record in the middle
	data = append(data, 0xFF, 'W', 'S', 'R', 9, 9) // and a torn record at the end
	require.NoError(t, os.WriteFile(seg, data, 0o600))

	down.Store(false)
	s2 := StartSidecar(t, b.URL, Options{Args: args})
	c := Dial(t, s2.Socket)
	c.Flush(t, 60*time.Second)
	a := RequireAccounting(t, c, 10*time.Second)
	assert.Equal(t, int64(2), a.SpoolCorrupt)
	assert.Equal(t, int64(2*len(ids)-1), a.Replayed)
	assert.Equal(t, a.Replayed, a.Delivered)
	got := countKeys(b.Delivered())
	assert.Len(t, got, 2*len(ids)-1)
	for k, n := range got {
		assert.Equal(t, 1, n, k)
	}
}
