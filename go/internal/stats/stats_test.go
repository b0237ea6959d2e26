package stats

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
)

func TestSnapshot(t *testing.T) {
	var s Stats
	s.Received.Add(5)
	s.Refused(protocol.CodeQueueFull)
	s.Refused(protocol.CodeQueueFull)
	s.Refused(protocol.CodeInvalidRequest)
	s.Failed(backend.DropRejected, 3)
	s.Failed(backend.DropShutdown, 1)

	snap := s.Snapshot(Queue{Items: 2, Bytes: 100, InFlight: 1})
	assert.Equal(t, int64(5), snap.Received)
	assert.Equal(t, int64(2), snap.Refused["queue_full"])
	assert.Equal(t, int64(1), snap.Refused["invalid_request"])
	assert.Equal(t, int64(0), snap.Refused["shutting_down"])
	assert.Len(t, snap.Refused, len(protocol.Codes))
	assert.Equal(t, map[string]int64{"rejected": 3, "too_large": 0, "unauthorized": 0,
		"calls_complete_mode": 0, "shutdown": 1, "spool_corrupt": 0}, snap.Failed)
	assert.Equal(t, int64(4), s.FailedTotal())
	assert.Equal(t, int64(100), snap.QueuedBytes)
}

func TestRejected(t *testing.T) {
	var s Stats
	s.Rejected(RejectPeerUID)
	s.Rejected(RejectBadToken)
	s.Rejected(RejectBadToken)

	snap := s.Snapshot(Queue{})
	assert.Equal(t, map[string]int64{"peer_uid": 1, "peer_unknown": 0, "no_token": 0, "bad_token": 2},
		snap.RejectedConnections)
}

func TestSnapshotSpool(t *testing.T) {
	var s Stats
	s.CallsReceived.Add(7)
	s.CallsRefused.Add(2)

	snap := s.Snapshot(Queue{})
	assert.Equal(t, int64(7), snap.CallsReceived)
	assert.Equal(t, int64(2), snap.CallsRefused)
	assert.Equal(t, int64(0), snap.SpoolMaxBytes, "spool off")

	snap = s.Snapshot(Queue{Spool: &SpoolUsage{Items: 3, Bytes: 4096, MaxBytes: 1 << 20, Replayed: 5, Corrupt: 1}})
	assert.Equal(t, int64(3), snap.SpooledItems)
	assert.Equal(t, int64(4096), snap.SpoolBytes)
	assert.Equal(t, int64(1<<20), snap.SpoolMaxBytes)
	assert.Equal(t, int64(5), snap.Replayed)
	assert.Equal(t, int64(1), snap.SpoolCorruptRecords)
}
