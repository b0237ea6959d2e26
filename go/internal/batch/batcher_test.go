package batch

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// recorder is a Sender that records batches. When gate is set, each Send
// waits for a value on it (or ctx). reply, when set, makes the report.
type recorder struct {
	gate  chan struct{}
	reply func(items []backend.Item) backend.Report

	mu      sync.Mutex
	batches [][]backend.Item
}

func (r *recorder) Send(ctx context.Context, items []backend.Item) backend.Report {
	r.mu.Lock()
	r.batches = append(r.batches, items)
	r.mu.Unlock()
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return dropAll(len(items), backend.DropShutdown)
		}
	}
	if r.reply != nil {
		return r.reply(items)
	}
	return backend.Report{Delivered: len(items), Requests: 1}
}

func (r *recorder) ids() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]string
	for _, b := range r.batches {
		var ids []string
		for _, it := range b {
			ids = append(ids, it.ID)
		}
		out = append(out, ids)
	}
	return out
}

func item(id string, payloadBytes int) backend.Item {
	prefix := `{"start":{"id":"` + id + `","project_id":"e/p","x":"`
	pad := max(0, payloadBytes-len(prefix)-4)
	return backend.Item{Mode: backend.ModeStart, ID: id, ProjectID: "e/p",
		Payload: []byte(prefix + strings.Repeat("x", pad) + `"}}`)}
}

func newBatcher(t *testing.T, s Sender, mod func(*Config)) (*Batcher, *stats.Stats) {
	t.Helper()
	st := &stats.Stats{}
	cfg := Config{Sender: s, FlushInterval: time.Hour, MaxCount: 1000, MaxBytes: 1 << 20,
		MaxQueueBytes: 1 << 30, Stats: st, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg)
	require.NoError(t, err)
	return b, st
}

func bodySize(items []backend.Item) int {
	n := bodyOverhead + len(items) - 1
	for _, it := range items {
		n += ItemBytes(it)
	}
	return n
}

func TestItemBytesMatchesEncoding(t *testing.T) {
	start := backend.Item{Mode: backend.ModeStart, Payload: []byte(`{"start":{}}`)}
	end := backend.Item{Mode: backend.ModeEnd, Payload: []byte(`{"end":{}}`)}
	body := `{"batch":[{"mode":"start","req":{"start":{}}},{"mode":"end","req":{"end":{}}}]}`
	assert.Equal(t, len(body), bodySize([]backend.Item{start, end}))
}

func TestBatchTriggers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxCount int
		maxBytes int
		sizes    []int // payload sizes, in order
		want     []int // batch lengths, the last one cut by Close
	}{
		{"count", 3, 1 << 20, []int{100, 100, 100, 100, 100, 100, 100}, []int{3, 3, 1}},
		{"bytes", 1000, 350, []int{100, 100, 100, 100, 100}, []int{2, 2, 1}},
		{"exact bytes", 1000, bodyOverhead + 2*(100+startWrap) + 1, []int{100, 100, 100}, []int{2, 1}},
		{"big call alone", 1000, 300, []int{100, 1000, 100}, []int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			b, _ := newBatcher(t, rec, func(c *Config) { c.MaxCount, c.MaxBytes = tc.maxCount, tc.maxBytes })
			var tally Tally
			for i, size := range tc.sizes {
				require.Nil(t, b.Add(&tally, item(fmt.Sprint(i), size)))
			}
			b.Close(context.Background()) // sends what is left as a last batch
			var got []int
			var flat []string
			for _, ids := range rec.ids() {
				got = append(got, len(ids))
				flat = append(flat, ids...)
			}
			assert.Equal(t, tc.want, got)
			assert.Len(t, flat, len(tc.sizes))
			for _, batch := range rec.batches {
				if len(batch) > 1 {
					assert.LessOrEqual(t, bodySize(batch), tc.maxBytes)
				}
			}
		})
	}
}

func TestIntervalFlush(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		b, _ := newBatcher(t, rec, func(c *Config) { c.FlushInterval = time.Second })
		var tally Tally
		require.Nil(t, b.Add(&tally, item("a", 50)))
		time.Sleep(500 * time.Millisecond)
		require.Nil(t, b.Add(&tally, item("b", 50)))
		synctest.Wait()
		assert.Empty(t, rec.ids(), "sent before the interval")

		time.Sleep(600 * time.Millisecond)
		synctest.Wait()
		assert.Equal(t, [][]string{{"a", "b"}}, rec.ids())
		assert.Equal(t, int64(2), tally.Resolved())

		// A new batch starts its own interval.
		require.Nil(t, b.Add(&tally, item("c", 50)))
		time.Sleep(1100 * time.Millisecond)
		synctest.Wait()
		assert.Equal(t, [][]string{{"a", "b"}, {"c"}}, rec.ids())
		b.Close(context.Background())
	})
}

func TestRefusals(t *testing.T) {
	rec := &recorder{gate: make(chan struct{})}
	b, st := newBatcher(t, rec, func(c *Config) { c.MaxCount = 1; c.MaxQueueBytes = 1000 })
	var tally Tally

	err := b.Add(&tally, item("huge", protocol.MaxBodyBytes))
	require.NotNil(t, err)
	assert.Equal(t, protocol.CodeCallTooLarge, err.Code)

	require.Nil(t, b.Add(&tally, item("a", 400)))
	require.Nil(t, b.Add(&tally, item("b", 400)))
	err = b.Add(&tally, item("c", 400))
	require.NotNil(t, err)
	assert.Equal(t, protocol.CodeQueueFull, err.Code)
	assert.Contains(t, err.Msg, "queue full")
	assert.Equal(t, int64(2), b.Queue().Items)

	// Space comes back once the batches are resolved.
	rec.gate <- struct{}{}
	rec.gate <- struct{}{}
	require.NoError(t, b.Flush(context.Background()))
	require.Nil(t, b.Add(&tally, item("c", 400)))
	close(rec.gate)

	b.Close(context.Background())
	err = b.Add(&tally, item("d", 10))
	require.NotNil(t, err)
	assert.Equal(t, protocol.CodeShuttingDown, err.Code)
	assert.Equal(t, int64(3), st.Delivered.Load())
	assert.Equal(t, int64(3), tally.Delivered())
}

func TestReportOutcomes(t *testing.T) {
	rec := &recorder{reply: func(items []backend.Item) backend.Report {
		rep := backend.Report{Requests: 2, Retries: 1}
		for i, it := range items {
			switch it.ID {
			case "bad":
				rep.Dropped = append(rep.Dropped, backend.Drop{Index: i, Reason: backend.DropRejected})
			case "cc":
				rep.Dropped = append(rep.Dropped, backend.Drop{Index: i, Reason: backend.DropCallsComplete})
				rep.CallsCompleteProjects = []string{"e/complete"}
			case "deny":
				rep.Dropped = append(rep.Dropped, backend.Drop{Index: i, Reason: backend.DropUnauthorized})
				rep.Unauthorized = true
			default:
				rep.Delivered++
			}
		}
		return rep
	}}
	b, st := newBatcher(t, rec, nil)
	var one, two Tally
	require.Nil(t, b.Add(&one, item("ok1", 50)))
	require.Nil(t, b.Add(&two, item("bad", 50)))
	cc := item("cc", 50)
	cc.ProjectID = "e/complete"
	require.Nil(t, b.Add(&one, cc))
	require.NoError(t, b.Flush(context.Background()))

	assert.Equal(t, int64(1), one.Delivered())
	assert.Equal(t, int64(1), one.Failed())
	assert.Equal(t, int64(2), one.Resolved())
	assert.Equal(t, int64(0), two.Delivered())
	assert.Equal(t, int64(1), two.Failed())
	snap := st.Snapshot(b.Queue())
	assert.Equal(t, int64(1), snap.Failed["rejected"])
	assert.Equal(t, int64(1), snap.Failed["calls_complete_mode"])
	// Counted per attempt by the backend's hook (main wires it), never per
	// batch here, so nothing is counted twice.
	assert.Zero(t, snap.HTTPRequests)
	assert.Zero(t, snap.Retries)
	assert.Equal(t, int64(0), snap.QueuedItems)

	// The calls-complete project is refused; others still flow.
	err := b.Add(&one, cc)
	require.NotNil(t, err)
	assert.Equal(t, protocol.CodeCallsCompleteMode, err.Code)
	assert.Contains(t, err.Msg, "e/complete")
	require.Nil(t, b.Add(&one, item("deny", 50)))
	require.NoError(t, b.Flush(context.Background()))

	// After a 401/403 every call is refused.
	err = b.Add(&two, item("ok2", 50))
	require.NotNil(t, err)
	assert.Equal(t, protocol.CodeUnauthorized, err.Code)
	sum := b.Close(context.Background())
	assert.Equal(t, Summary{Delivered: 1, Dropped: 3}, sum)
}

func TestOrderAndFlushBarrier(t *testing.T) {
	rec := &recorder{gate: make(chan struct{})}
	b, _ := newBatcher(t, rec, func(c *Config) { c.MaxCount = 2 })
	var tally Tally
	for i := range 7 {
		require.Nil(t, b.Add(&tally, item(fmt.Sprint(i), 50)))
	}
	flushed := make(chan error, 1)
	go func() { flushed <- b.Flush(context.Background()) }()

	// The first batch is held; later ones queue behind it, never overtake.
	for range 3 {
		rec.gate <- struct{}{}
	}
	select {
	case <-flushed:
		t.Fatal("flush answered before the last batch was resolved")
	default:
	}
	assert.Equal(t, int64(6), tally.Resolved())
	rec.gate <- struct{}{}
	require.NoError(t, <-flushed)
	assert.Equal(t, [][]string{{"0", "1"}, {"2", "3"}, {"4", "5"}, {"6"}}, rec.ids())
	assert.Equal(t, int64(7), tally.Resolved())

	// A flush with nothing outstanding answers at once.
	require.NoError(t, b.Flush(context.Background()))
	close(rec.gate)
	b.Close(context.Background())
}

func TestCloseDeadlineDropsTheRest(t *testing.T) {
	rec := &recorder{gate: make(chan struct{})} // never opened: a hanging backend
	b, st := newBatcher(t, rec, func(c *Config) { c.MaxCount = 2 })
	var tally Tally
	for i := range 5 {
		require.Nil(t, b.Add(&tally, item(fmt.Sprint(i), 50)))
	}
	flushed := make(chan error, 1)
	go func() { flushed <- b.Flush(context.Background()) }()

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the shutdown deadline has already passed
	sum := b.Close(ctx)
	assert.Equal(t, Summary{Delivered: 0, Dropped: 5, Undelivered: 5}, sum)
	assert.Equal(t, int64(5), tally.Failed())
	assert.Equal(t, int64(5), st.Snapshot(b.Queue()).Failed["shutdown"])
	require.NoError(t, <-flushed, "a flush waiting at shutdown is released")
	// At most the first batch reached the sender; the rest were dropped unsent.
	assert.LessOrEqual(t, len(rec.ids()), 1)
}

// drainSender holds every batch, like a backoff wait, until Drain.
type drainSender struct {
	once    sync.Once
	drained chan struct{}
}

func (d *drainSender) Drain() { d.once.Do(func() { close(d.drained) }) }

func (d *drainSender) Send(ctx context.Context, items []backend.Item) backend.Report {
	select {
	case <-d.drained:
		return backend.Report{Delivered: len(items)}
	case <-ctx.Done():
		return dropAll(len(items), backend.DropShutdown)
	}
}

func TestCloseDrainsTheSender(t *testing.T) {
	ds := &drainSender{drained: make(chan struct{})}
	b, _ := newBatcher(t, ds, func(c *Config) { c.MaxCount = 2 })
	var tally Tally
	for i := range 5 {
		require.Nil(t, b.Add(&tally, item(fmt.Sprint(i), 50)))
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sum := b.Close(ctx)
	assert.Equal(t, Summary{Delivered: 5}, sum)
	assert.Equal(t, int64(5), tally.Delivered())
}

func TestReturnedOrdinals(t *testing.T) {
	// Calls dropped for 401/403 or calls-complete mode come back by their
	// ordinal on their own connection; rejected ones (400) do not.
	rec := &recorder{reply: func(items []backend.Item) backend.Report {
		var rep backend.Report
		for i, it := range items {
			switch {
			case strings.HasPrefix(it.ID, "cc"):
				rep.Dropped = append(rep.Dropped, backend.Drop{Index: i, Reason: backend.DropCallsComplete})
			case strings.HasPrefix(it.ID, "bad"):
				rep.Dropped = append(rep.Dropped, backend.Drop{Index: i, Reason: backend.DropRejected})
			case strings.HasPrefix(it.ID, "deny"):
				rep.Dropped = append(rep.Dropped, backend.Drop{Index: i, Reason: backend.DropUnauthorized})
			default:
				rep.Delivered++
			}
		}
		return rep
	}}
	b, _ := newBatcher(t, rec, nil)
	defer b.Close(context.Background())
	var one, two Tally
	for _, add := range []struct {
		t  *Tally
		id string
	}{{&one, "ok1"}, {&two, "cc1"}, {&one, "cc2"}, {&one, "bad1"}, {&two, "ok2"}, {&one, "deny1"}, {&two, "cc3"}} {
		require.Nil(t, b.Add(add.t, item(add.id, 50)))
	}
	assert.Nil(t, one.TakeReturned(), "nothing resolved yet")
	require.NoError(t, b.Flush(context.Background()))

	assert.Equal(t, []int64{2, 4}, one.TakeReturned())
	assert.Equal(t, []int64{1, 3}, two.TakeReturned())
	assert.Nil(t, one.TakeReturned(), "each ordinal is returned once")
	assert.Equal(t, int64(4), one.Resolved())
}
