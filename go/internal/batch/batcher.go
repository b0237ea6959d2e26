// Package batch groups accepted calls into upsert_batch batches and hands
// them, in order, to one sender goroutine.
//
// Intake (Add) is synchronous and never blocks on delivery: it either takes
// ownership of a call or refuses it with a protocol error. A batch is cut
// when the flush interval passes, when it holds the maximum count, or when
// the next call would push its body over the byte limit. Cut batches wait in
// an ordered queue, bounded by MaxQueueBytes, while the sender delivers one
// batch at a time, so a batch being retried is never overtaken.
//
// With a spool (Config.Spool), every accepted call is appended to it first,
// and MaxQueueBytes bounds only the calls held in memory: calls that do not
// fit, and calls left by an earlier run, wait on disk and are loaded in
// order as memory frees up. Accounting, for calls:
//
//	accepted + replayed = delivered + dropped + queued (in memory, in flight included) + spooled (on disk only)
package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/spool"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// Sender delivers one batch; *backend.Client implements it. Send must
// resolve every item (delivered or dropped) before it returns, and must
// return promptly once ctx ends.
type Sender interface {
	Send(ctx context.Context, items []backend.Item) backend.Report
}

// Drainer is a Sender that can shorten its retry waits once shutdown
// begins: Close calls Drain before it sends what is left, so a batch
// waiting out a long backoff is tried again at once. *backend.Client
// implements it.
type Drainer interface {
	Drain()
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
	// With a Spool it bounds only the calls held in memory.
	MaxQueueBytes int64
	// Spool, when set, makes an ack mean "on disk" (see Durable) and holds
	// calls beyond MaxQueueBytes; intake refuses with spool_full when it is
	// full. Records it holds from an earlier run are delivered first. The
	// caller closes it after Close.
	Spool  *spool.Spool
	Stats  *stats.Stats // nil means counters are not kept
	Logger *slog.Logger // nil means slog.Default()
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
	tallies []*Tally // nil entries for calls replayed from an earlier run
	ords    []int64  // each item's ordinal within its connection (Tally)
	bytes   int64    // sum of ItemBytes
	seq     int64    // sequence number of the last item
	pos     spool.Pos
	spooled bool // pos is set
}

// tallyRun is n consecutive calls waiting on disk from one connection,
// the first with ordinal ord.
type tallyRun struct {
	t   *Tally
	ord int64
	n   int64
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
	// Calls on disk only, in order: first replayed ones (no connection),
	// then this run's, whose connections are kept run-length encoded so
	// memory grows with connection switches, not with calls.
	replayWaiting int64      // guarded by mu
	diskTallies   []tallyRun // guarded by mu
	memSeq        int64      // guarded by mu; last sequence number brought into memory
	keptInSpool   int64      // guarded by mu; cut short at shutdown, left for the next start
	draining      bool       // guarded by mu; the loader has stopped, the sender may finish
	flushTo       int64      // guarded by mu; highest sequence number a Flush waits for

	delivered   atomic.Int64
	dropped     atomic.Int64
	undelivered atomic.Int64

	kickTimer  chan struct{} // pending went from empty to non-empty
	kickSender chan struct{} // ready has a batch, or closed
	kickLoader chan struct{} // memory freed, or calls went to disk
	stopTimer  chan struct{}
	timerDone  chan struct{}
	stopLoader chan struct{}
	loaderDone chan struct{}
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
		kickLoader: make(chan struct{}, 1),
		stopTimer:  make(chan struct{}),
		timerDone:  make(chan struct{}),
		stopLoader: make(chan struct{}),
		loaderDone: make(chan struct{}),
		senderDone: make(chan struct{}),
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.st == nil {
		b.st = &stats.Stats{}
	}
	b.sendCtx, b.cancelSend = context.WithCancel(context.Background())
	if cfg.Spool != nil {
		// Replayed calls come first: sequence numbers 1..n.
		n := cfg.Spool.Usage().Waiting
		b.replayWaiting, b.seq = n, n
		go b.loadLoop()
		b.kick(b.kickLoader)
	} else {
		close(b.loaderDone)
	}
	go b.timerLoop()
	go b.sendLoop()
	return b, nil
}

// Add takes ownership of it for the connection counted by t, or refuses it:
// call_too_large, shutting_down, unauthorized, calls_complete_mode_required
// or queue_full. It never waits for delivery.
func (b *Batcher) Add(t *Tally, it backend.Item) *protocol.Error {
	b.st.CallsReceived.Add(1)
	perr := b.add(t, it)
	if perr != nil {
		b.st.CallsRefused.Add(1)
	}
	return perr
}

func (b *Batcher) add(t *Tally, it backend.Item) *protocol.Error {
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
	fits := b.queueBytes+int64(size) <= b.cfg.MaxQueueBytes
	if b.cfg.Spool != nil {
		return b.addSpooledLocked(t, it, size, fits)
	}
	if !fits {
		return protocol.Errorf(protocol.CodeQueueFull,
			"queue full: %d bytes of calls are waiting for delivery", b.queueBytes)
	}
	b.seq++
	b.memSeq = b.seq
	b.pushLocked(t, t.accepted.Add(1), it, size, spool.Pos{}, false)
	b.st.Accepted.Add(1)
	return nil
}

// addSpooledLocked appends it to the spool and keeps it in memory when it
// fits and no call is waiting on disk before it.
func (b *Batcher) addSpooledLocked(t *Tally, it backend.Item, size int, fits bool) *protocol.Error {
	pos, inMemory, err := b.cfg.Spool.Append(it, fits)
	if errors.Is(err, spool.ErrFull) {
		u := b.cfg.Spool.Usage()
		return protocol.Errorf(protocol.CodeSpoolFull,
			"spool full: %d of %d bytes on disk hold calls waiting for delivery", u.Bytes, u.MaxBytes)
	}
	if err != nil {
		return protocol.Errorf(protocol.CodeSpoolFull, "spool write failed: %v", err)
	}
	b.seq++
	ord := t.accepted.Add(1)
	b.st.Accepted.Add(1)
	if inMemory {
		b.memSeq = b.seq
		b.pushLocked(t, ord, it, size, pos, true)
		return nil
	}
	if n := len(b.diskTallies); n > 0 && b.diskTallies[n-1].t == t {
		b.diskTallies[n-1].n++
	} else {
		b.diskTallies = append(b.diskTallies, tallyRun{t: t, ord: ord, n: 1})
	}
	b.kick(b.kickLoader)
	return nil
}

func (b *Batcher) kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// pushLocked adds an accepted call, sequence number b.memSeq, to the
// pending batch.
func (b *Batcher) pushLocked(t *Tally, ord int64, it backend.Item, size int, pos spool.Pos, spooled bool) {
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
	b.pending.items = append(b.pending.items, it)
	b.pending.tallies = append(b.pending.tallies, t)
	b.pending.ords = append(b.pending.ords, ord)
	b.pending.bytes += int64(size)
	b.pending.seq = b.memSeq
	b.pending.pos, b.pending.spooled = pos, spooled
	b.queueBytes += int64(size)
	b.queueItems++

	switch {
	case len(b.pending.items) >= b.cfg.MaxCount:
		b.cutLocked(TriggerCount)
	case b.pendingBody >= b.maxBody:
		b.cutLocked(TriggerBytes)
	}
}

// Durable returns w for writing acks: with a spool, each write first makes
// every call appended so far durable (one fsync shared by all connections
// writing at the time), so no ack leaves before its call is on disk. If the
// fsync fails, the write fails and the connection ends without those acks.
func (b *Batcher) Durable(w io.Writer) io.Writer {
	if b.cfg.Spool == nil {
		return w
	}
	return durableWriter{w: w, sp: b.cfg.Spool}
}

type durableWriter struct {
	w  io.Writer
	sp *spool.Spool
}

func (d durableWriter) Write(p []byte) (int, error) {
	if err := d.sp.Sync(); err != nil {
		return 0, err
	}
	return d.w.Write(p)
}

func itemBytes64(it backend.Item) int64 { return int64(ItemBytes(it)) }

// loadLoop brings calls waiting on disk into memory, in order, while there
// is room under MaxQueueBytes.
func (b *Batcher) loadLoop() {
	defer close(b.loaderDone)
	for {
		select {
		case <-b.kickLoader:
		case <-b.stopLoader:
			return
		}
		for {
			b.mu.Lock()
			room, empty := b.cfg.MaxQueueBytes-b.queueBytes, b.queueItems == 0
			b.mu.Unlock()
			if room <= 0 && !empty {
				break
			}
			// A call larger than the whole budget still goes when memory is empty.
			recs, lost, err := b.cfg.Spool.Next(room, empty, itemBytes64)
			if err != nil {
				// The records stay on disk for the next start.
				b.log.Error("cannot read the spool; calls on disk wait for a restart", "err", err)
				return
			}
			if len(recs) == 0 && lost == 0 {
				break
			}
			b.load(recs, lost)
			select {
			case <-b.stopLoader:
				return
			default:
			}
		}
	}
}

// load queues calls read back from the spool.
func (b *Batcher) load(recs []spool.Loaded, lost int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range recs {
		b.memSeq++
		t, ord := b.popTallyLocked()
		b.pushLocked(t, ord, r.Item, ItemBytes(r.Item), r.Pos, true)
	}
	if n := int64(len(b.pending.items)); n > 0 && b.pending.seq-n+1 <= b.flushTo {
		// A flush is waiting for calls that were on disk when it came.
		b.cutLocked(TriggerFlush)
	}
	if lost == 0 {
		return
	}
	// Damaged records acked in this run: counted as dropped at once, and
	// resolved in order behind the batches before them by an empty batch.
	b.log.Error("calls acked in this run could not be read back from the spool", "dropped", lost)
	b.cutLocked(TriggerFlush)
	for range lost {
		b.memSeq++
		if t, _ := b.popTallyLocked(); t != nil {
			t.failed.Add(1)
		}
	}
	b.st.Failed(spool.DropCorrupt, int(lost))
	b.dropped.Add(lost)
	b.ready = append(b.ready, batch{seq: b.memSeq})
	b.kick(b.kickSender)
}

// popTallyLocked returns the connection and ordinal of the next call on
// disk (nil for a replayed one).
func (b *Batcher) popTallyLocked() (*Tally, int64) {
	if b.replayWaiting > 0 {
		b.replayWaiting--
		return nil, 0
	}
	if len(b.diskTallies) == 0 {
		return nil, 0
	}
	r := &b.diskTallies[0]
	t, ord := r.t, r.ord
	r.ord++
	if r.n--; r.n == 0 {
		b.diskTallies[0] = tallyRun{}
		b.diskTallies = b.diskTallies[1:]
	}
	return t, ord
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
	b.flushTo = max(b.flushTo, target)
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
	q := stats.Queue{Items: b.queueItems, Bytes: b.queueBytes, InFlight: b.inFlight}
	if b.cfg.Spool != nil {
		u := b.cfg.Spool.Usage()
		q.Spool = &stats.SpoolUsage{Items: u.Waiting + b.keptInSpool, Bytes: u.Bytes, MaxBytes: u.MaxBytes,
			Replayed: u.Replayed, Corrupt: u.Corrupt}
	}
	return q
}

// Close refuses further intake, sends everything accepted and waits for
// the sender. When ctx ends first, the batch in flight and every batch
// behind it are dropped as undelivered. Close returns the delivery totals.
// A Sender that is a Drainer is told first, so retries become prompt.
//
// With a spool, Close delivers what is in memory and leaves calls still on
// disk for the next start; calls cut short by ctx stay in the spool too
// (Summary.Undelivered counts them, but they are not dropped).
func (b *Batcher) Close(ctx context.Context) Summary {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	if d, ok := b.cfg.Sender.(Drainer); ok {
		d.Drain()
	}
	close(b.stopLoader)
	<-b.loaderDone
	b.mu.Lock()
	b.draining = true
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
			if b.draining {
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
		if len(bt.items) == 0 {
			// A marker for calls already counted as dropped.
		} else if b.sendCtx.Err() != nil {
			rep = dropAll(len(bt.items), backend.DropShutdown)
		} else {
			b.st.Batches.Add(1)
			rep = b.cfg.Sender.Send(b.sendCtx, bt.items)
		}
		b.finish(bt, rep)
	}
}

// unauthorizedDetail returns the server's reason for a 401/403 in rep.
func unauthorizedDetail(rep backend.Report) string {
	for _, d := range rep.Dropped {
		if d.Reason == backend.DropUnauthorized {
			return d.Detail
		}
	}
	return ""
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
	// With a spool, calls cut short by shutdown stay on disk for the next
	// start: not dropped, and the cursor stays before them.
	inSpool := 0
	if bt.spooled {
		for _, reason := range dropped {
			if reason == backend.DropShutdown {
				inSpool++
			}
		}
	}
	byReason := make(map[backend.DropReason]int)
	for i, t := range bt.tallies {
		reason, ok := dropped[i]
		switch {
		case ok && inSpool > 0 && reason == backend.DropShutdown:
			// left in the spool
		case ok && t == nil: // replayed: no connection to tell
			byReason[reason]++
		case ok:
			if reason == backend.DropUnauthorized || reason == backend.DropCallsComplete {
				t.addReturned(bt.ords[i])
			}
			t.failed.Add(1)
			byReason[reason]++
		case t != nil:
			t.delivered.Add(1)
		}
	}
	nDropped := len(dropped) - inSpool
	nDelivered := len(bt.items) - len(dropped)
	if rep.Delivered != nDelivered {
		b.log.Warn("backend report does not add up", "items", len(bt.items), "delivered", rep.Delivered, "dropped", nDropped)
	}
	for reason, n := range byReason {
		b.st.Failed(reason, n)
		if reason == backend.DropShutdown {
			b.undelivered.Add(int64(n))
		}
	}
	b.undelivered.Add(int64(inSpool))
	if bt.spooled && inSpool == 0 {
		if err := b.cfg.Spool.Resolve(bt.pos); err != nil {
			// Delivered calls may be delivered again after a restart.
			b.log.Error("cannot record progress in the spool", "err", err)
		}
	}
	b.st.Delivered.Add(int64(nDelivered))
	b.delivered.Add(int64(nDelivered))
	b.dropped.Add(int64(nDropped))
	if nDropped > 0 {
		b.log.Debug("batch resolved with drops", "items", len(bt.items), "dropped", nDropped)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if rep.Unauthorized && !b.unauthorized {
		b.unauthorized = true
		// The one line about it; the backend logs the answer at debug level.
		b.log.Error("trace server refused the api key (401/403): the calls it refused go back to their clients, "+
			"and new calls are refused until the sidecar restarts, so clients send them directly",
			"reason", unauthorizedDetail(rep))
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
	b.keptInSpool += int64(inSpool)
	b.inFlight = 0
	if b.cfg.Spool != nil {
		b.kick(b.kickLoader)
	}
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
