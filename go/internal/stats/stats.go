// Package stats holds the sidecar's counters, shared by intake and delivery
// and reported by the stats request.
package stats

import (
	"sync/atomic"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/spool"
)

// dropReasons lists every backend.DropReason, for counters.
var dropReasons = []backend.DropReason{
	backend.DropRejected, backend.DropTooLarge, backend.DropUnauthorized,
	backend.DropCallsComplete, backend.DropShutdown, spool.DropCorrupt,
}

// RejectReason says why a connection was closed before it could make any
// request.
type RejectReason string

const (
	RejectPeerUID     RejectReason = "peer_uid"     // the Unix peer runs as another user
	RejectPeerUnknown RejectReason = "peer_unknown" // the Unix peer's credentials could not be read
	RejectNoToken     RejectReason = "no_token"     // TCP: the first request was not a hello with a token
	RejectBadToken    RejectReason = "bad_token"    // TCP: hello carried the wrong token
)

// rejectReasons lists every RejectReason, for counters.
var rejectReasons = []RejectReason{RejectPeerUID, RejectPeerUnknown, RejectNoToken, RejectBadToken}

// Stats are counters since the sidecar started. The zero value is ready to
// use; all methods are safe for concurrent use.
type Stats struct {
	Received atomic.Int64 // request lines read, of any method
	Accepted atomic.Int64 // calls acked
	// CallsReceived counts call_start/call_end lines that decoded and were
	// offered for intake; each is either accepted or refused
	// (CallsRefused, also counted by code in refused).
	CallsReceived atomic.Int64
	CallsRefused  atomic.Int64
	Delivered     atomic.Int64 // calls the trace server accepted
	Batches       atomic.Int64 // batches handed to the backend
	// HTTPRequests and Retries count backend attempts as each one ends
	// (backend.Config.OnAttempt), so they move during an outage; Retries
	// counts the attempts after a body's first.
	HTTPRequests atomic.Int64
	Retries      atomic.Int64
	Connections  atomic.Int64 // connections open now

	refused [16]atomic.Int64 // indexed like protocol.Codes
	failed  [8]atomic.Int64  // indexed like dropReasons
	reject  [4]atomic.Int64  // indexed like rejectReasons
}

// Refused counts one request refused with code.
func (s *Stats) Refused(code protocol.Code) {
	for i, c := range protocol.Codes {
		if c == code {
			s.refused[i].Add(1)
			return
		}
	}
}

// Failed counts n calls dropped for reason.
func (s *Stats) Failed(reason backend.DropReason, n int) {
	for i, r := range dropReasons {
		if r == reason {
			s.failed[i].Add(int64(n))
			return
		}
	}
}

// Rejected counts one connection closed for reason.
func (s *Stats) Rejected(reason RejectReason) {
	for i, r := range rejectReasons {
		if r == reason {
			s.reject[i].Add(1)
			return
		}
	}
}

// FailedTotal returns the number of calls dropped for any reason.
func (s *Stats) FailedTotal() int64 {
	var n int64
	for i := range dropReasons {
		n += s.failed[i].Load()
	}
	return n
}

// Queue describes accepted calls not yet resolved.
type Queue struct {
	Items    int64       // accepted, not yet delivered or dropped
	Bytes    int64       // their encoded size
	InFlight int64       // of those, items in the batch being sent now
	Spool    *SpoolUsage // nil when the spool is off
}

// SpoolUsage describes the disk spool.
type SpoolUsage struct {
	Items    int64 // calls on disk only, not in memory (spooled)
	Bytes    int64 // bytes of segment files
	MaxBytes int64 // --spool-max-bytes
	Replayed int64 // calls found on disk at start
	Corrupt  int64 // damaged records skipped
}

// Snapshot is the stats result object (docs/protocol.md).
type Snapshot struct {
	Received      int64            `json:"received"`
	Accepted      int64            `json:"accepted"`
	CallsReceived int64            `json:"calls_received"`
	CallsRefused  int64            `json:"calls_refused"`
	Refused       map[string]int64 `json:"refused"`
	Delivered     int64            `json:"delivered"`
	Failed        map[string]int64 `json:"failed"`
	QueuedItems   int64            `json:"queued_items"`
	QueuedBytes   int64            `json:"queued_bytes"`
	InFlightItems int64            `json:"in_flight_items"`
	Batches       int64            `json:"batches"`
	HTTPRequests  int64            `json:"http_requests"`
	Retries       int64            `json:"retries"`
	Connections   int64            `json:"connections"`
	// Spool terms; all zero when the spool is off. The accounting:
	// calls_received = accepted + calls_refused, and
	// accepted + replayed = delivered + sum(failed) + queued_items + spooled_items
	// (queued_items includes in_flight_items).
	SpooledItems        int64 `json:"spooled_items"`
	SpoolBytes          int64 `json:"spool_bytes"`
	SpoolMaxBytes       int64 `json:"spool_max_bytes"`
	Replayed            int64 `json:"replayed"`
	SpoolCorruptRecords int64 `json:"spool_corrupt_records"`
	// RejectedConnections counts connections closed before their first
	// request was served, by RejectReason.
	RejectedConnections map[string]int64 `json:"rejected_connections"`
}

// Snapshot reads every counter; q comes from the batcher.
func (s *Stats) Snapshot(q Queue) Snapshot {
	snap := Snapshot{
		Received:      s.Received.Load(),
		Accepted:      s.Accepted.Load(),
		CallsReceived: s.CallsReceived.Load(),
		CallsRefused:  s.CallsRefused.Load(),
		Refused:       make(map[string]int64, len(protocol.Codes)),
		Delivered:     s.Delivered.Load(),
		Failed:        make(map[string]int64, len(dropReasons)),
		QueuedItems:   q.Items,
		QueuedBytes:   q.Bytes,
		InFlightItems: q.InFlight,
		Batches:       s.Batches.Load(),
		HTTPRequests:  s.HTTPRequests.Load(),
		Retries:       s.Retries.Load(),
		Connections:   s.Connections.Load(),
	}
	for i, c := range protocol.Codes {
		snap.Refused[string(c)] = s.refused[i].Load()
	}
	for i, r := range dropReasons {
		snap.Failed[string(r)] = s.failed[i].Load()
	}
	if sp := q.Spool; sp != nil {
		snap.SpooledItems, snap.SpoolBytes, snap.SpoolMaxBytes = sp.Items, sp.Bytes, sp.MaxBytes
		snap.Replayed, snap.SpoolCorruptRecords = sp.Replayed, sp.Corrupt
	}
	snap.RejectedConnections = make(map[string]int64, len(rejectReasons))
	for i, r := range rejectReasons {
		snap.RejectedConnections[string(r)] = s.reject[i].Load()
	}
	return snap
}
