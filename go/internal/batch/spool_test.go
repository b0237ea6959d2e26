package batch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/spool"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

func openSpool(t *testing.T, dir string, maxBytes int64) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(spool.Config{Dir: dir, MaxBytes: maxBytes})
	require.NoError(t, err)
	return sp
}

// checkAccounting asserts the call equation on a quiet batcher.
func checkAccounting(t *testing.T, b *Batcher, st *stats.Stats) stats.Snapshot {
	t.Helper()
	snap := st.Snapshot(b.Queue())
	var failed int64
	for _, n := range snap.Failed {
		failed += n
	}
	assert.Equal(t, snap.CallsReceived, snap.Accepted+snap.CallsRefused, "calls_received")
	assert.Equal(t, snap.Accepted+snap.Replayed, snap.Delivered+failed+snap.QueuedItems+snap.SpooledItems,
		"accepted + replayed = delivered + failed + queued + spooled: %+v", snap)
	return snap
}

func flatten(batches [][]string) []string {
	var out []string
	for _, b := range batches {
		out = append(out, b...)
	}
	return out
}

func TestSpoolHoldsWhatMemoryCannot(t *testing.T) {
	rec := &recorder{gate: make(chan struct{})}
	sp := openSpool(t, t.TempDir(), 1<<30)
	b, st := newBatcher(t, rec, func(c *Config) {
		c.Spool = sp
		c.MaxCount = 10
		c.MaxQueueBytes = 20 * int64(ItemBytes(item("c000", 500)))
	})
	var tally Tally
	var want []string
	for i := range 100 {
		id := fmt.Sprintf("c%03d", i)
		want = append(want, id)
		require.Nil(t, b.Add(&tally, item(id, 500)))
	}

	// The sender is stuck on the first batch: 20 calls fit in memory,
	// the other 80 wait on disk.
	q := b.Queue()
	assert.LessOrEqual(t, q.Bytes, b.cfg.MaxQueueBytes)
	assert.Equal(t, int64(20), q.Items)
	assert.Equal(t, int64(80), q.Spool.Items)
	checkAccounting(t, b, st)

	close(rec.gate) // the backend is back
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, b.Flush(ctx))
	assert.Equal(t, want, flatten(rec.ids()), "delivered once each, in order")
	assert.Equal(t, int64(100), tally.Resolved())
	snap := checkAccounting(t, b, st)
	assert.Equal(t, int64(100), snap.Delivered)
	assert.Zero(t, snap.SpooledItems)
	b.Close(ctx)
	require.NoError(t, sp.Close())
}

func TestSpoolReplayFirstThenNewCalls(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// First run: the backend never answers; shutdown gives up at once.
	stuck := &recorder{gate: make(chan struct{})}
	sp := openSpool(t, dir, 1<<30)
	b, _ := newBatcher(t, stuck, func(c *Config) { c.Spool = sp; c.MaxCount = 4 })
	var tally Tally
	for i := range 10 {
		require.Nil(t, b.Add(&tally, item(fmt.Sprintf("old%d", i), 100)))
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	sum := b.Close(short)
	cancelShort()
	assert.Zero(t, sum.Dropped, "cut short with a spool: kept, not dropped")
	require.NoError(t, sp.Close())

	// Second run: the ten come back first, then new calls.
	rec := &recorder{}
	sp2 := openSpool(t, dir, 1<<30)
	b2, st2 := newBatcher(t, rec, func(c *Config) { c.Spool = sp2; c.MaxCount = 4 })
	var tally2 Tally
	for i := range 3 {
		require.Nil(t, b2.Add(&tally2, item(fmt.Sprintf("new%d", i), 100)))
	}
	require.NoError(t, b2.Flush(ctx))
	var want []string
	for i := range 10 {
		want = append(want, fmt.Sprintf("old%d", i))
	}
	want = append(want, "new0", "new1", "new2")
	assert.Equal(t, want, flatten(rec.ids()))
	assert.Equal(t, int64(3), tally2.Resolved())
	snap := checkAccounting(t, b2, st2)
	assert.Equal(t, int64(10), snap.Replayed)
	b2.Close(ctx)
	require.NoError(t, sp2.Close())

	// Everything was delivered: a third run finds nothing.
	sp3 := openSpool(t, dir, 1<<30)
	assert.Zero(t, sp3.Usage().Waiting)
	require.NoError(t, sp3.Close())
}

func TestSpoolFullRefuses(t *testing.T) {
	rec := &recorder{gate: make(chan struct{})}
	one := spool.RecordBytes(item("c000", 1000))
	sp := openSpool(t, t.TempDir(), 8+5*one)
	b, st := newBatcher(t, rec, func(c *Config) { c.Spool = sp })
	var tally Tally
	for i := range 5 {
		require.Nil(t, b.Add(&tally, item(fmt.Sprintf("c%03d", i), 1000)))
	}
	perr := b.Add(&tally, item("c005", 1000))
	require.NotNil(t, perr)
	assert.Equal(t, protocol.CodeSpoolFull, perr.Code)
	assert.Contains(t, perr.Msg, "spool full")
	checkAccounting(t, b, st)

	close(rec.gate)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, b.Flush(ctx))
	assert.Len(t, flatten(rec.ids()), 5, "what was acked is kept and delivered")
	b.Close(ctx)
	require.NoError(t, sp.Close())
}
