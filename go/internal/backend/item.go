package backend

import "encoding/json"

// Mode is the kind of an upsert_batch item.
type Mode string

const (
	ModeStart Mode = "start"
	ModeEnd   Mode = "end"
)

// Item is one call_start or call_end on its way to the trace server.
// Payload is the client's CallStartReq / CallEndReq JSON, byte for byte:
// it is never decoded, so timestamps, big integers and escapes survive.
type Item struct {
	Mode      Mode
	ID        string // the call id, for logs about drops
	ProjectID string // the call's project, for per-project refusals
	Payload   json.RawMessage
}

// DropReason says why the sidecar gave up on an item it had accepted.
type DropReason string

const (
	DropRejected      DropReason = "rejected"            // 400/422 or other final 4xx for this item
	DropTooLarge      DropReason = "too_large"           // 413 on a batch of one
	DropUnauthorized  DropReason = "unauthorized"        // 401/403
	DropCallsComplete DropReason = "calls_complete_mode" // project requires calls-complete mode
	DropShutdown      DropReason = "shutdown"            // shutdown deadline passed before delivery
)

// Drop records one item the sidecar gave up on.
type Drop struct {
	Index  int // index into the slice passed to Send
	Reason DropReason
	Detail string // the server's reason, trimmed; never a payload or a key
}

// Report is the outcome of Send: every item is either delivered or dropped.
type Report struct {
	Delivered int
	Dropped   []Drop
	// CallsCompleteProjects lists projects the server said need calls-complete mode.
	CallsCompleteProjects []string
	// Unauthorized is set when the server answered 401 or 403.
	Unauthorized bool
	// Requests and Retries count HTTP attempts made by this Send, once it
	// returns; Config.OnAttempt sees each attempt as it happens.
	Requests int
	Retries  int
}
