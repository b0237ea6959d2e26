// Package batch groups accepted calls into upsert_batch batches and hands
// them, in order, to one sender goroutine.
//
// Intake (Add) is synchronous and never blocks on delivery: it either takes
// ownership of a call or refuses it with a protocol error. A batch is cut
// when the flush interval passes, when it holds the maximum count, or when
// the next call would push its body over the byte limit. Cut batches wait in
// an ordered queue, bounded by MaxQueueBytes, while the sender delivers one
// batch at a time, so a batch being retried is never overtaken.
package batch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// Sender delivers one batch; *backend.Client implements it. Send must
// resolve every item (delivered or dropped) before it returns, and must
// return promptly once ctx ends.
type Sender interface {
	Send(ctx context.Context, items []backend.Item) backend.Report
}

// Encoded sizes around payloads in an upsert_batch body.
const (
	bodyOverhead = len(`{"batch":[]}`)
	startWrap    = len(`{"mode":"start","req":}`)
	endWrap      = len(`{"mode":"end","req":}`)
)

// ItemBytes is the encoded size of it inside a batch body, without the
// separating comma.
func ItemBytes(it backend.Item) int {
	if it.Mode == backend.ModeEnd {
		return len(it.Payload) + endWrap
	}
	return len(it.Payload) + startWrap
}

// Config configures a Batcher.
type Config struct {
	Sender        Sender
	FlushInterval time.Duration // a non-empty batch is sent at least this often; must be > 0
	MaxCount      int           // calls per batch; must be > 0
	// MaxBytes is the body size that triggers a send; a batch grows past it
	// only when a single call is larger. Capped at protocol.MaxBodyBytes.
	MaxBytes int
	// MaxQueueBytes bounds the encoded bytes of accepted calls not yet
	// resolved; intake refuses with queue_full beyond it.
	MaxQueueBytes int64
	Stats         *stats.Stats // nil means counters are not kept
	Logger        *slog.Logger // nil means slog.Default()
	// OnCut, when set, is called each time a batch is cut, with the mutex
	// held: it must be quick and must not call the Batcher. For metrics.
	OnCut func(Cut)
}

// Trigger says why a batch was cut.
type Trigger string

const (
	TriggerInterval Trigger = "interval" // the oldest call waited FlushInterval
	TriggerCount    Trigger = "count"    // the batch reached MaxCount
	TriggerBytes    Trigger = "bytes"    // the body reached MaxBytes
	TriggerFlush    Trigger = "flush"    // a flush request
	TriggerShutdown Trigger = "shutdown" // Close
)

// Cut describes one batch cut from the pending calls.
type Cut struct {
	Trigger Trigger
	Items   int
	Bytes   int // encoded request body size
}

// Tally counts one connection's calls. The zero value is ready to use.
type Tally struct {
	accepted  atomic.Int64
	delivered atomic.Int64
	failed    atomic.Int64

	nReturned atomic.Int64 // len(returned), read without retMu on every ack
	retMu     sync.Mutex
	returned  []int64 // guarded by retMu; ordinals not yet taken
}

// TakeReturned removes and returns the ordinals (1 = the first call this
// connection had accepted) of calls that were dropped because the trace
// server refused the key (401/403) or the project's write path
// (calls-complete mode): the client can still send those itself. Each
// ordinal is returned once. An ordinal is recorded before it counts in
// Resolved, so a caller that reads Resolved first and then calls
// TakeReturned has been given every returned ordinal Resolved covers.
func (t *Tally) TakeReturned() []int64 {
	if t.nReturned.Load() == 0 {
		return nil
	}
	t.retMu.Lock()
	defer t.retMu.Unlock()
	out := t.returned
	t.returned = nil
	t.nReturned.Store(0)
	return out
}

func (t *Tally) addReturned(ord int64) {
	t.retMu.Lock()
	t.returned = append(t.returned, ord)
	t.nReturned.Store(int64(len(t.returned)))
	t.retMu.Unlock()
}

// Accepted returns the calls accepted from this connection.
func (t *Tally) Accepted() int64 { return t.accepted.Load() }

// Delivered returns the calls from this connection the server accepted.
func (t *Tally) Delivered() int64 { return t.delivered.Load() }

// Failed returns the calls from this connection that were dropped.
func (t *Tally) Failed() int64 { return t.failed.Load() }

// Resolved returns Delivered + Failed. Batches are resolved in order, so
// these are the first Resolved calls the connection sent.
func (t *Tally) Resolved() int64 { return t.delivered.Load() + t.failed.Load() }

type batch struct {
	items   []backend.Item
	tallies []*Tally
	ords    []int64 // each item's ordinal within its connection (Tally)
	bytes   int64   // sum of ItemBytes
	seq     int64   // sequence number of the last item
}

type waiter struct {
	seq  int64
	done chan struct{}
}

// Summary is what Close reports.
type Summary struct {
	Delivered   int64 // calls delivered since start
	Dropped     int64 // calls dropped since start, any reason
	Undelivered int64 // of those, calls given up at shutdown
}

// Batcher collects calls and delivers them through a Sender.
type Batcher struct {
	cfg     Config
	maxBody int
	log     *slog.Logger
	st      *stats.Stats

	mu           sync.Mutex
	closed       bool                // guarded by mu; no more intake
	unauthorized bool                // guarded by mu
	refused      map[string]struct{} // guarded by mu; calls-complete projects
	pending      batch               // guarded by mu
	pendingBody  int                 // guarded by mu; encoded body size of pending
	pendingSince time.Time           // guarded by mu
	ready        []batch             // guarded by mu; cut, waiting for the sender
	seq          int64               // guarded by mu; last accepted sequence number
	resolvedSeq  int64               // guarded by mu
	queueBytes   int64               // guarded by mu; accepted, unresolved
	queueItems   int64               // guarded by mu
	inFlight     int64               // guarded by mu
	waiters      []waiter            // guarded by mu

	delivered   atomic.Int64
	dropped     atomic.Int64
	undelivered atomic.Int64

	kickTimer  chan struct{} // pending went from empty to non-empty
	kickSender chan struct{} // ready has a batch, or closed
	stopTimer  chan struct{}
	timerDone  chan struct{}
	senderDone chan struct{}
	sendCtx    context.Context
	cancelSend context.CancelFunc
}

// New starts a Batcher. Close must be called to deliver what it holds and
// stop its goroutines.
func New(cfg Config) (*Batcher, error) {
	if cfg.Sender == nil || cfg.FlushInterval <= 0 || cfg.MaxCount <= 0 || cfg.MaxBytes <= 0 || cfg.MaxQueueBytes <= 0 {
		return nil, fmt.Errorf("batch: invalid config (sender set, interval %v, count %d, bytes %d, queue %d)",
			cfg.FlushInterval, cfg.MaxCount, cfg.MaxBytes, cfg.MaxQueueBytes)
	}
	b := &Batcher{
		cfg:        cfg,
		maxBody:    min(cfg.MaxBytes, protocol.MaxBodyBytes),
		log:        cfg.Logger,
		st:         cfg.Stats,
		refused:    make(map[string]struct{}),
		kickTimer:  make(chan struct{}, 1),
		kickSender: make(chan struct{}, 1),
		stopTimer:  make(chan struct{}),
		timerDone:  make(chan struct{}),
		senderDone: make(chan struct{}),
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.st == nil {
		b.st = &stats.Stats{}
	}
	b.sendCtx, b.cancelSend = context.WithCancel(context.Background())
	go b.timerLoop()
	go b.sendLoop()
	return b, nil
}

// Add takes ownership of it for the connection counted by t, or refuses it:
// call_too_large, shutting_down, unauthorized, calls_complete_mode_required
// or queue_full. It never waits for delivery.
func (b *Batcher) Add(t *Tally, it backend.Item) *protocol.Error {
	size := ItemBytes(it)
	if size+bodyOverhead > protocol.MaxBodyBytes {
		return protocol.Errorf(protocol.CodeCallTooLarge,
			"call is %d bytes; the largest request body is %d bytes", size, protocol.MaxBodyBytes)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return protocol.Errorf(protocol.CodeShuttingDown, "sidecar is shutting down")
	case b.unauthorized:
		return protocol.Errorf(protocol.CodeUnauthorized, "the trace server refused this sidecar's API key (401/403)")
	}
	if _, ok := b.refused[it.ProjectID]; ok {
		return protocol.Errorf(protocol.CodeCallsCompleteMode,
			"project %q requires the calls-complete write path, which this sidecar does not speak", it.ProjectID)
	}
	if b.queueBytes+int64(size) > b.cfg.MaxQueueBytes {
		return protocol.Errorf(protocol.CodeQueueFull,
			"queue full: %d bytes of calls are waiting for delivery", b.queueBytes)
	}

	// Cut first if this call would push the body over the limit.
	if len(b.pending.items) > 0 && b.pendingBody+1+size > b.maxBody {
		b.cutLocked(TriggerBytes)
	}
	if len(b.pending.items) == 0 {
		b.pendingBody = bodyOverhead + size
		b.pendingSince = time.Now()
		select {
		case b.kickTimer <- struct{}{}:
		default:
		}
	} else {
		b.pendingBody += 1 + size
	}
	b.seq++
	b.pending.items = append(b.pending.items, it)
	b.pending.tallies = append(b.pending.tallies, t)
	b.pending.ords = append(b.pending.ords, t.accepted.Add(1))
	b.pending.bytes += int64(size)
	b.pending.seq = b.seq
	b.queueBytes += int64(size)
	b.queueItems++
	b.st.Accepted.Add(1)

	switch {
	case len(b.pending.items) >= b.cfg.MaxCount:
		b.cutLocked(TriggerCount)
	case b.pendingBody >= b.maxBody:
		b.cutLocked(TriggerBytes)
	}
	return nil
}

// cutLocked moves the pending batch to the ready queue.
func (b *Batcher) cutLocked(why Trigger) {
	if len(b.pending.items) == 0 {
		return
	}
	if b.cfg.OnCut != nil {
		b.cfg.OnCut(Cut{Trigger: why, Items: len(b.pending.items), Bytes: b.pendingBody})
	}
	b.ready = append(b.ready, b.pending)
	n := min(len(b.pending.items), b.cfg.MaxCount)
	b.pending = batch{items: make([]backend.Item, 0, n), tallies: make([]*Tally, 0, n), ords: make([]int64, 0, n)}
	b.pendingBody = 0
	select {
	case b.kickSender <- struct{}{}:
	default:
	}
}

// Flush returns once every call accepted before it, on any connection, is
// delivered or dropped, or with ctx's error when ctx ends first.
func (b *Batcher) Flush(ctx context.Context) error {
	b.mu.Lock()
	target := b.seq
	b.cutLocked(TriggerFlush)
	if b.resolvedSeq >= target {
		b.mu.Unlock()
		return nil
	}
	w := waiter{seq: target, done: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()

	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Queue reports the calls accepted and not yet resolved.
func (b *Batcher) Queue() stats.Queue {
	b.mu.Lock()
	defer b.mu.Unlock()
	return stats.Queue{Items: b.queueItems, Bytes: b.queueBytes, InFlight: b.inFlight}
}

// Close refuses further intake, sends everything accepted and waits for
// the sender. When ctx ends first, the batch in flight and every batch
// behind it are dropped as undelivered. Close returns the delivery totals.
func (b *Batcher) Close(ctx context.Context) Summary {
	b.mu.Lock()
	b.closed = true
	b.cutLocked(TriggerShutdown)
	b.mu.Unlock()
	close(b.stopTimer)
	<-b.timerDone
	select {
	case b.kickSender <- struct{}{}:
	default:
	}

	select {
	case <-b.senderDone:
	case <-ctx.Done():
		b.cancelSend()
		<-b.senderDone
	}
	b.cancelSend()
	return Summary{Delivered: b.delivered.Load(), Dropped: b.dropped.Load(), Undelivered: b.undelivered.Load()}
}

// timerLoop cuts the pending batch once it is FlushInterval old.
func (b *Batcher) timerLoop() {
	defer close(b.timerDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		b.mu.Lock()
		wait := time.Duration(-1)
		if len(b.pending.items) > 0 {
			wait = b.cfg.FlushInterval - time.Since(b.pendingSince)
			if wait <= 0 {
				b.cutLocked(TriggerInterval)
				wait = -1
			}
		}
		b.mu.Unlock()

		if wait < 0 {
			select {
			case <-b.kickTimer:
			case <-b.stopTimer:
				return
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-b.stopTimer:
			timer.Stop()
			return
		}
	}
}

// sendLoop delivers ready batches one at a time, in order.
func (b *Batcher) sendLoop() {
	defer close(b.senderDone)
	for {
		b.mu.Lock()
		for len(b.ready) == 0 {
			if b.closed {
				b.mu.Unlock()
				return
			}
			b.mu.Unlock()
			<-b.kickSender
			b.mu.Lock()
		}
		bt := b.ready[0]
		b.ready[0] = batch{}
		b.ready = b.ready[1:]
		b.inFlight = int64(len(bt.items))
		b.mu.Unlock()

		var rep backend.Report
		if b.sendCtx.Err() != nil {
			rep = dropAll(len(bt.items), backend.DropShutdown)
		} else {
			b.st.Batches.Add(1)
			rep = b.cfg.Sender.Send(b.sendCtx, bt.items)
		}
		b.finish(bt, rep)
	}
}

func dropAll(n int, reason backend.DropReason) backend.Report {
	rep := backend.Report{Dropped: make([]backend.Drop, n)}
	for i := range rep.Dropped {
		rep.Dropped[i] = backend.Drop{Index: i, Reason: reason}
	}
	return rep
}

// finish records the outcome of one batch and releases its queue space and
// any flush waiting for it.
func (b *Batcher) finish(bt batch, rep backend.Report) {
	dropped := make(map[int]backend.DropReason, len(rep.Dropped))
	for _, d := range rep.Dropped {
		if d.Index >= 0 && d.Index < len(bt.items) {
			dropped[d.Index] = d.Reason
		}
	}
	byReason := make(map[backend.DropReason]int)
	for i, t := range bt.tallies {
		if reason, ok := dropped[i]; ok {
			if reason == backend.DropUnauthorized || reason == backend.DropCallsComplete {
				t.addReturned(bt.ords[i])
			}
			t.failed.Add(1)
			byReason[reason]++
		} else {
			t.delivered.Add(1)
		}
	}
	nDropped := len(dropped)
	nDelivered := len(bt.items) - nDropped
	if rep.Delivered != nDelivered {
		b.log.Warn("backend report does not add up", "items", len(bt.items), "delivered", rep.Delivered, "dropped", nDropped)
	}
	for reason, n := range byReason {
		b.st.Failed(reason, n)
		if reason == backend.DropShutdown {
			b.undelivered.Add(int64(n))
		}
	}
	b.st.Delivered.Add(int64(nDelivered))
	b.st.HTTPRequests.Add(int64(rep.Requests))
	b.st.Retries.Add(int64(rep.Retries))
	b.delivered.Add(int64(nDelivered))
	b.dropped.Add(int64(nDropped))
	if nDropped > 0 {
		b.log.Debug("batch resolved with drops", "items", len(bt.items), "dropped", nDropped)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if rep.Unauthorized && !b.unauthorized {
		b.unauthorized = true
		b.log.Error("the trace server refused the API key (401/403); refusing new calls so clients fall back")
	}
	for _, p := range rep.CallsCompleteProjects {
		if _, ok := b.refused[p]; !ok {
			b.refused[p] = struct{}{}
			b.log.Warn("project requires the calls-complete write path; refusing its calls so clients send them directly",
				"project_id", p)
		}
	}
	b.queueBytes -= bt.bytes
	b.queueItems -= int64(len(bt.items))
	b.inFlight = 0
	b.resolvedSeq = bt.seq
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if w.seq <= b.resolvedSeq {
			close(w.done)
		} else {
			kept = append(kept, w)
		}
	}
	b.waiters = kept
}
