package integration

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Accounting holds the terms of the accounting equations, read from a
// stats request:
//
//	calls_received = accepted + calls_refused
//	accepted + replayed = delivered + failed (all reasons) + queued + spooled
//
// where queued counts calls in memory, in-flight ones included, and spooled
// counts calls on disk only. replayed is what the spool held at start.
type Accounting struct {
	CallsReceived int64            `json:"calls_received"`
	Accepted      int64            `json:"accepted"`
	CallsRefused  int64            `json:"calls_refused"`
	Refused       map[string]int64 `json:"refused"`
	Replayed      int64            `json:"replayed"`
	Delivered     int64            `json:"delivered"`
	FailedBy      map[string]int64 `json:"failed"`
	Queued        int64            `json:"queued_items"`
	QueuedBytes   int64            `json:"queued_bytes"`
	InFlight      int64            `json:"in_flight_items"`
	Spooled       int64            `json:"spooled_items"`
	SpoolBytes    int64            `json:"spool_bytes"`
	SpoolCorrupt  int64            `json:"spool_corrupt_records"`
}

// Failed is the number of calls dropped for any reason.
func (a Accounting) Failed() int64 {
	var n int64
	for _, v := range a.FailedBy {
		n += v
	}
	return n
}

// Check returns an error describing the first equation that does not hold.
func (a Accounting) Check() error {
	if a.CallsReceived != a.Accepted+a.CallsRefused {
		return fmt.Errorf("calls_received %d != accepted %d + calls_refused %d", a.CallsReceived, a.Accepted, a.CallsRefused)
	}
	out := a.Delivered + a.Failed() + a.Queued + a.Spooled
	if a.Accepted+a.Replayed != out {
		return fmt.Errorf("accepted %d + replayed %d != delivered %d + failed %d + queued %d + spooled %d",
			a.Accepted, a.Replayed, a.Delivered, a.Failed(), a.Queued, a.Spooled)
	}
	if a.InFlight < 0 || a.InFlight > a.Queued {
		return fmt.Errorf("in_flight %d outside 0..queued %d", a.InFlight, a.Queued)
	}
	return nil
}

// ReadAccounting sends a stats request on c and decodes the terms.
func ReadAccounting(t testing.TB, c *Client) Accounting {
	t.Helper()
	resp := c.Call(t, `{"method":"stats"}`)
	require.True(t, resp.Success, resp.Raw)
	var a Accounting
	require.NoError(t, json.Unmarshal(resp.Result, &a))
	return a
}

// RequireAccounting asserts the accounting equations on the sidecar c talks
// to. The counters are read one after another, so a sidecar still moving
// calls can be caught between two updates: it reads again until the
// equations hold, and fails with the last reading after timeout. It returns
// the reading that balanced.
func RequireAccounting(t testing.TB, c *Client, timeout time.Duration) Accounting {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		a := ReadAccounting(t, c)
		err := a.Check()
		if err == nil {
			return a
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "accounting does not balance", "%v\n%+v", err, a)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
