package backend

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  string
		want string
	}{
		{"bare host", "http://127.0.0.1:9", "http://127.0.0.1:9/call/upsert_batch"},
		{"trailing slash", "http://127.0.0.1:9/", "http://127.0.0.1:9/call/upsert_batch"},
		{"path prefix", "https://h.example/traces", "https://h.example/traces/call/upsert_batch"},
		{"path prefix with slashes", "https://h.example/a/traces//", "https://h.example/a/traces/call/upsert_batch"},
		{"userinfo stripped", "https://user:pw@h.example/traces", "https://h.example/traces/call/upsert_batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{URL: tc.url, Key: auth.NewSecret(testKey)})
			require.NoError(t, err)
			assert.Equal(t, tc.want, c.Endpoint())
		})
	}

	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no scheme", Config{URL: "h.example/traces", Key: auth.NewSecret(testKey)}, "absolute http or https URL"},
		{"ftp", Config{URL: "ftp://h.example", Key: auth.NewSecret(testKey)}, "absolute http or https URL"},
		{"empty url", Config{Key: auth.NewSecret(testKey)}, "absolute http or https URL"},
		{"no key", Config{URL: "http://h.example"}, "empty api key"},
		{"body over limit", Config{URL: "http://h.example", Key: auth.NewSecret(testKey), MaxBodyBytes: MaxRequestBytes + 1}, "outside 1..32505856"},
		{"negative body", Config{URL: "http://h.example", Key: auth.NewSecret(testKey), MaxBodyBytes: -1}, "outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), testKey)
		})
	}
}

func TestSendHeadersAndBody(t *testing.T) {
	fb := newFakeBackend(t, func(int, received) reply { return reply{status: http.StatusCreated} })
	c, _ := newTestClient(t, fb.srv.URL+"/traces/", nil)

	// Payload bytes that a decode/encode round trip would change.
	start := `{"start":{"id":"c1","project_id":"ent/proj","op_name":"a<b>&c","started_at":"2025-01-02T03:04:05",` +
		`"attributes":{},"inputs":{"big":123456789012345678901234567890,"f":1.0e+2,"s":"\ud800 lone","u":"\u00e9"}}}`
	end := `{"end":{"id":"c1","project_id":"ent/proj","ended_at":"2025-01-02T03:04:05.999999","summary":{},"output":"</script>"}}`
	items := []Item{
		{Mode: ModeStart, ID: "c1", ProjectID: "ent/proj", Payload: []byte(start)},
		{Mode: ModeEnd, ID: "c1", ProjectID: "ent/proj", Payload: []byte(end)},
	}

	rep := c.Send(t.Context(), items)

	assert.Equal(t, Report{Delivered: 2, Requests: 1}, rep)
	reqs := fb.requests()
	require.Len(t, reqs, 1)
	got := reqs[0]
	assert.Equal(t, "/traces/call/upsert_batch", got.Path)
	want := `{"batch":[{"mode":"start","req":` + start + `},{"mode":"end","req":` + end + `}]}`
	assert.Equal(t, want, string(got.Body))
	assert.Equal(t, "application/json", got.Header.Get("Content-Type"))
	assert.Equal(t, "Basic "+base64.StdEncoding.EncodeToString([]byte("api:"+testKey)), got.Header.Get("Authorization"))
	assert.Equal(t, "weave-sidecar/1.2.3", got.Header.Get("User-Agent"))
	_, err := uuid.Parse(got.Header.Get("X-Weave-Retry-Id"))
	assert.NoError(t, err)
}

func TestSendRetryableThenSuccess(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first reply
	}{
		{"408", reply{status: 408}},
		{"429", reply{status: 429}},
		{"500", reply{status: 500, body: `{"message":"boom"}`}},
		{"502 html", reply{status: 502, body: "<html>bad gateway</html>"}},
		{"503", reply{status: 503}},
		{"504", reply{status: 504}},
		{"connection dropped", reply{hangup: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := newFakeBackend(t, func(n int, _ received) reply {
				if n < 2 {
					return tc.first
				}
				return reply{status: 200, body: `{"res":[]}`}
			})
			c, _ := newTestClient(t, fb.srv.URL, nil)
			items := callItems(4)

			rep := c.Send(t.Context(), items)

			assert.Equal(t, Report{Delivered: 4, Requests: 3, Retries: 2}, rep)
			reqs := fb.requests()
			require.Len(t, reqs, 3)
			id := reqs[0].Header.Get("X-Weave-Retry-Id")
			for _, r := range reqs {
				assert.Equal(t, id, r.Header.Get("X-Weave-Retry-Id"), "retry id must not change between attempts")
				assert.Equal(t, reqs[0].Body, r.Body)
			}
			assert.Equal(t, itemIDs(items), fb.deliveredIDs())
		})
	}
}

func TestSendOutageThenRecovery(t *testing.T) {
	const outage = 12
	fb := newFakeBackend(t, func(n int, _ received) reply {
		switch {
		case n < outage/2:
			return reply{hangup: true}
		case n < outage:
			return reply{status: 503}
		}
		return reply{}
	})
	c, logs := newTestClient(t, fb.srv.URL, nil)
	first, second := callItems(6), callItems(2)

	rep1 := c.Send(t.Context(), first)
	rep2 := c.Send(t.Context(), second)

	assert.Equal(t, Report{Delivered: 6, Requests: outage + 1, Retries: outage}, rep1)
	assert.Equal(t, Report{Delivered: 2, Requests: 1}, rep2)
	assert.Len(t, logs.lines(t, "backend delivery failing"), 1, "one warning per streak")
	recovered := logs.lines(t, "backend reachable again")
	require.Len(t, recovered, 1)
	assert.Equal(t, "INFO", recovered[0]["level"])
	assert.EqualValues(t, outage, recovered[0]["failures"])
	assert.Len(t, logs.lines(t, "backend request"), outage+2, "one debug line per request")
}

func TestSendRetryAfter(t *testing.T) {
	fb := newFakeBackend(t, func(n int, _ received) reply {
		if n == 0 {
			return reply{status: 429, header: map[string]string{"Retry-After": "1"}}
		}
		return reply{}
	})
	c, logs := newTestClient(t, fb.srv.URL, nil)

	rep := c.Send(t.Context(), callItems(2))

	assert.Equal(t, Report{Delivered: 2, Requests: 2, Retries: 1}, rep)
	warn := logs.lines(t, "backend delivery failing")
	require.Len(t, warn, 1)
	// The backoff ceiling is 1ms here, so the wait is exactly Retry-After.
	assert.Equal(t, "1s", warn[0]["retry_in"])
	assert.EqualValues(t, 429, warn[0]["status"])
}

func TestSendSplitsOversizedBody(t *testing.T) {
	items := callItems(8)
	one := bodySize(items, []int{0})
	limit := bodySize(items, []int{0, 1, 2}) // three items fit, four do not
	big := testItem(false, "big", "ent/proj")
	big.Payload = append(big.Payload[:len(big.Payload)-2:len(big.Payload)-2], []byte(`,"pad":"`+strings.Repeat("x", limit)+`"}}`)...)
	items = slices.Insert(items, 3, big)
	fb := newFakeBackend(t, func(int, received) reply { return reply{} })
	c, logs := newTestClient(t, fb.srv.URL, func(cfg *Config) { cfg.MaxBodyBytes = limit })
	require.Less(t, one, limit)

	rep := c.Send(t.Context(), items)

	assert.Equal(t, 8, rep.Delivered)
	require.Len(t, rep.Dropped, 1)
	assert.Equal(t, Drop{Index: 3, Reason: DropTooLarge, Detail: rep.Dropped[0].Detail}, rep.Dropped[0])
	assert.Contains(t, rep.Dropped[0].Detail, "exceeds")
	for _, r := range fb.requests() {
		assert.LessOrEqual(t, len(r.Body), limit)
	}
	assert.Equal(t, itemIDs(slices.Delete(slices.Clone(items), 3, 4)), fb.deliveredIDs())
	assert.Len(t, logs.lines(t, "dropped call too large"), 1)
}

func TestSend413Split(t *testing.T) {
	items := callItems(8)
	items[5] = testItem(true, "huge", "ent/proj")
	fb := newFakeBackend(t, func(_ int, r received) reply {
		if bytes.Contains(r.Body, []byte(`"huge"`)) || len(r.ids(t)) > 2 {
			return reply{status: 413, body: `{"reason":"request too large"}`}
		}
		return reply{}
	})
	c, logs := newTestClient(t, fb.srv.URL, nil)

	rep := c.Send(t.Context(), items)

	assert.Equal(t, 7, rep.Delivered)
	assert.Equal(t, []Drop{{Index: 5, Reason: DropTooLarge, Detail: "request too large"}}, rep.Dropped)
	assert.Equal(t, itemIDs(slices.Delete(slices.Clone(items), 5, 6)), fb.deliveredIDs())
	// 8 -> 4+4 -> 2+2+2+2 -> the pair holding "huge" -> 1+1: no body twice.
	reqs := fb.requests()
	assert.Len(t, reqs, 9)
	assert.Equal(t, 0, rep.Retries)
	assertDistinctBodies(t, reqs)
	dropped := logs.lines(t, "dropped call the server found too large")
	require.Len(t, dropped, 1)
	assert.Equal(t, "huge", dropped[0]["id"])
}

func TestSend400Isolation(t *testing.T) {
	for _, status := range []int{400, 422, 409} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			items := callItems(8)
			items[6] = testItem(false, "bad", "ent/proj")
			fb := newFakeBackend(t, func(_ int, r received) reply {
				if bytes.Contains(r.Body, []byte(`"bad"`)) {
					return reply{status: status, body: `{"detail":[{"loc":["body","batch",0,"req"],"msg":"op_name is not a ref","input":"x"}]}`}
				}
				return reply{}
			})
			c, logs := newTestClient(t, fb.srv.URL, nil)

			rep := c.Send(t.Context(), items)

			assert.Equal(t, 7, rep.Delivered)
			want := []Drop{{Index: 6, Reason: DropRejected, Detail: "body.batch.0.req: op_name is not a ref"}}
			assert.Equal(t, want, rep.Dropped)
			assert.Equal(t, itemIDs(slices.Delete(slices.Clone(items), 6, 7)), fb.deliveredIDs())
			reqs := fb.requests()
			assert.Len(t, reqs, 7) // 8, 4+4, 2+2 of the bad half, 1+1
			assertDistinctBodies(t, reqs)
			rejected := logs.lines(t, "dropped call the server rejected")
			require.Len(t, rejected, 1)
			assert.Equal(t, "bad", rejected[0]["id"])
			assert.EqualValues(t, status, rejected[0]["status"])
		})
	}
}

func TestSendEndpointErrorsDoNotSplit(t *testing.T) {
	for _, tc := range []struct {
		name string
		rep  reply
	}{
		{"404", reply{status: 404, body: `{"detail":"Not Found"}`}},
		{"405", reply{status: 405}},
		{"redirect", reply{status: 302, header: map[string]string{"Location": "https://elsewhere.example/"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := newFakeBackend(t, func(int, received) reply { return tc.rep })
			c, _ := newTestClient(t, fb.srv.URL, nil)

			rep := c.Send(t.Context(), callItems(8))

			assert.Equal(t, 0, rep.Delivered)
			assert.Len(t, rep.Dropped, 8)
			for _, d := range rep.Dropped {
				assert.Equal(t, DropRejected, d.Reason)
			}
			assert.Len(t, fb.requests(), 1)
		})
	}
}

func TestSendUnauthorized(t *testing.T) {
	var accept atomic.Bool
	fb := newFakeBackend(t, func(int, received) reply {
		if accept.Load() {
			return reply{}
		}
		return reply{status: 401, body: `{"message":"invalid api key"}`}
	})
	items := callItems(6)
	// Two items per body, so one Send would need three bodies.
	limit := bodySize(items, []int{0, 1})
	c, logs := newTestClient(t, fb.srv.URL, func(cfg *Config) { cfg.MaxBodyBytes = limit })

	rep1 := c.Send(t.Context(), items)
	rep2 := c.Send(t.Context(), items[:2])

	assert.True(t, rep1.Unauthorized)
	assert.Equal(t, 0, rep1.Delivered)
	assert.Equal(t, 1, rep1.Requests, "the rest of the Send is dropped without asking again")
	require.Len(t, rep1.Dropped, 6)
	for i, d := range rep1.Dropped {
		assert.Equal(t, Drop{Index: i, Reason: DropUnauthorized, Detail: "invalid api key"}, d)
	}
	assert.True(t, rep2.Unauthorized)
	assert.Len(t, rep2.Dropped, 2)
	assert.Len(t, logs.lines(t, "trace server refused the api key"), 1, "one line per streak")

	accept.Store(true)
	rep3 := c.Send(t.Context(), items[:2])
	assert.Equal(t, Report{Delivered: 2, Requests: 1}, rep3)
	assert.Len(t, logs.lines(t, "trace server accepts the api key again"), 1)
	assert.Len(t, fb.requests(), 3)
}

func TestSendForbiddenIsUnauthorized(t *testing.T) {
	fb := newFakeBackend(t, func(int, received) reply { return reply{status: 403} })
	c, _ := newTestClient(t, fb.srv.URL, nil)

	rep := c.Send(t.Context(), callItems(2))

	assert.True(t, rep.Unauthorized)
	assert.Equal(t, []Drop{{0, DropUnauthorized, "HTTP 403 Forbidden"}, {1, DropUnauthorized, "HTTP 403 Forbidden"}}, rep.Dropped)
}

func TestSendCallsComplete(t *testing.T) {
	const ccBody = `{"error_code":"CALLS_COMPLETE_MODE_REQUIRED","message":"project requires calls_complete mode; upgrade weave"}`
	fb := newFakeBackend(t, func(_ int, r received) reply {
		if bytes.Contains(r.Body, []byte(`"ent/complete"`)) {
			return reply{status: 400, body: ccBody}
		}
		return reply{}
	})
	c, logs := newTestClient(t, fb.srv.URL, nil)
	items := []Item{
		testItem(false, "a1", "ent/legacy"),
		testItem(false, "b1", "ent/complete"),
		testItem(true, "a1", "ent/legacy"),
		testItem(true, "b1", "ent/complete"),
		testItem(false, "d1", "ent/other"),
	}

	rep := c.Send(t.Context(), items)

	assert.Equal(t, 3, rep.Delivered)
	assert.Equal(t, []string{"ent/complete"}, rep.CallsCompleteProjects)
	detail := "project requires calls_complete mode; upgrade weave"
	assert.Equal(t, []Drop{{1, DropCallsComplete, detail}, {3, DropCallsComplete, detail}}, rep.Dropped)
	assert.Equal(t, []string{"start:a1", "end:a1", "start:d1"}, fb.deliveredIDs())
	assert.Len(t, fb.requests(), 4) // mixed body, then one per project

	// Later calls of that project are dropped without a request.
	rep2 := c.Send(t.Context(), []Item{testItem(false, "b2", "ent/complete"), testItem(false, "a2", "ent/legacy")})
	assert.Equal(t, 1, rep2.Delivered)
	assert.Equal(t, DropCallsComplete, rep2.Dropped[0].Reason)
	assert.Equal(t, []string{"ent/complete"}, rep2.CallsCompleteProjects)
	assert.Len(t, fb.requests(), 5)

	explained := logs.lines(t, "project requires calls-complete mode")
	require.Len(t, explained, 1, "explained once per project")
	assert.Contains(t, explained[0]["msg"], "weave >= 0.52.26")
	assert.Contains(t, explained[0]["msg"], "WEAVE_USE_SIDECAR")
	dropped := logs.lines(t, "dropped calls of a calls-complete project")
	require.Len(t, dropped, 2)
	assert.Equal(t, []any{"b1", "b1"}, dropped[0]["ids"])
}

func TestSendHangingBackendCancel(t *testing.T) {
	fb := newFakeBackend(t, func(int, received) reply { return reply{hang: true} })
	c, _ := newTestClient(t, fb.srv.URL, nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-fb.hit
		cancel()
	}()

	rep := c.Send(ctx, callItems(4))

	assert.Equal(t, 0, rep.Delivered)
	assert.Equal(t, 1, rep.Requests)
	require.Len(t, rep.Dropped, 4)
	for i, d := range rep.Dropped {
		assert.Equal(t, Drop{Index: i, Reason: DropShutdown}, d)
	}
}

func TestSendCancelDuringBackoff(t *testing.T) {
	fb := newFakeBackend(t, func(int, received) reply {
		return reply{status: 503, header: map[string]string{"Retry-After": "3600"}}
	})
	c, _ := newTestClient(t, fb.srv.URL, nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-fb.hit
		cancel()
	}()

	rep := c.Send(ctx, callItems(3))

	assert.Equal(t, 0, rep.Delivered)
	assert.Len(t, rep.Dropped, 3)
	assert.Equal(t, DropShutdown, rep.Dropped[2].Reason)

	// An already ended context sends nothing.
	rep = c.Send(ctx, callItems(2))
	assert.Equal(t, 0, rep.Requests)
	assert.Len(t, rep.Dropped, 2)
}

func TestSendRequestTimeoutIsRetried(t *testing.T) {
	fb := newFakeBackend(t, func(n int, _ received) reply {
		if n == 0 {
			return reply{hang: true}
		}
		return reply{}
	})
	c, _ := newTestClient(t, fb.srv.URL, func(cfg *Config) { cfg.RequestTimeout = 50 * time.Millisecond })

	rep := c.Send(t.Context(), callItems(2))

	assert.Equal(t, Report{Delivered: 2, Requests: 2, Retries: 1}, rep)
}

func TestSendInvalidItems(t *testing.T) {
	fb := newFakeBackend(t, func(int, received) reply { return reply{} })
	c, _ := newTestClient(t, fb.srv.URL, nil)
	items := callItems(3)
	items[0].Mode = "middle"
	items[2].Payload = nil

	rep := c.Send(t.Context(), items)

	assert.Equal(t, 1, rep.Delivered)
	assert.Equal(t, []Drop{{0, DropRejected, `unknown mode "middle"`}, {2, DropRejected, "empty payload"}}, rep.Dropped)
	assert.Equal(t, []string{"end:c0"}, fb.deliveredIDs())
}

func TestSendEmpty(t *testing.T) {
	fb := newFakeBackend(t, func(int, received) reply { return reply{} })
	c, _ := newTestClient(t, fb.srv.URL, nil)

	assert.Equal(t, Report{}, c.Send(t.Context(), nil))
	assert.Empty(t, fb.requests())
}

// TestLogsHoldNoSecrets drives every logging path and checks that neither
// the key, its Authorization form, nor payload content reaches the log.
func TestLogsHoldNoSecrets(t *testing.T) {
	fb := newFakeBackend(t, func(n int, r received) reply {
		switch {
		case n == 0:
			return reply{hangup: true}
		case n == 1:
			return reply{status: 500}
		case bytes.Contains(r.Body, []byte(`"ent/complete"`)):
			return reply{status: 400, body: `{"error_code":"CALLS_COMPLETE_MODE_REQUIRED"}`}
		case bytes.Contains(r.Body, []byte(`"bad"`)):
			return reply{status: 422, body: `{"detail":[{"loc":["x"],"msg":"m","input":"` + payloadMarker + `"}]}`}
		case bytes.Contains(r.Body, []byte(`"huge"`)):
			return reply{status: 413}
		case bytes.Contains(r.Body, []byte(`"deny"`)):
			return reply{status: 401}
		}
		return reply{}
	})
	c, logs := newTestClient(t, fb.srv.URL, nil)

	c.Send(t.Context(), []Item{testItem(false, "ok", "ent/p"), testItem(false, "bad", "ent/p"),
		testItem(false, "huge", "ent/p"), testItem(false, "x", "ent/complete")})
	c.Send(t.Context(), []Item{testItem(false, "deny", "ent/p")})

	out := logs.String()
	require.NotEmpty(t, out)
	for _, secret := range []string{testKey, base64.StdEncoding.EncodeToString([]byte("api:" + testKey)), payloadMarker} {
		assert.NotContains(t, out, secret)
	}
}

func assertDistinctBodies(t *testing.T, reqs []received) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range reqs {
		assert.False(t, seen[string(r.Body)], "a body was sent twice")
		seen[string(r.Body)] = true
	}
}

func TestSendOnAttempt(t *testing.T) {
	fb := newFakeBackend(t, func(n int, _ received) reply {
		switch n {
		case 0:
			return reply{status: 503}
		case 1:
			return reply{hangup: true}
		default:
			return reply{status: 200, body: `{"res":[]}`}
		}
	})
	var got []Attempt
	c, _ := newTestClient(t, fb.srv.URL, func(cfg *Config) {
		cfg.OnAttempt = func(a Attempt) { got = append(got, a) }
	})

	rep := c.Send(t.Context(), callItems(3))

	require.Equal(t, 3, rep.Delivered)
	require.Len(t, got, 3)
	body := len(fb.requests()[0].Body)
	for i, want := range []struct {
		status int
		retry  bool
	}{{503, true}, {0, true}, {200, false}} {
		assert.Equal(t, want.status, got[i].Status, "attempt %d", i)
		assert.Equal(t, want.retry, got[i].Retry, "attempt %d", i)
		assert.Equal(t, i+1, got[i].Number, "attempt %d", i)
		assert.Equal(t, 3, got[i].Items, "attempt %d", i)
		assert.Equal(t, body, got[i].Bytes, "attempt %d", i)
		assert.False(t, got[i].Start.IsZero(), "attempt %d", i)
		assert.GreaterOrEqual(t, got[i].Duration, time.Duration(0), "attempt %d", i)
	}
}

func TestSendDrainEndsBackoffWait(t *testing.T) {
	// Down with an hour-long Retry-After and backoff, until two attempts
	// after the drain began; then up.
	var drained atomic.Bool
	var afterDrain atomic.Int32
	fb := newFakeBackend(t, func(int, received) reply {
		if drained.Load() && afterDrain.Add(1) > 2 {
			return reply{status: 200, body: `{"res":[]}`}
		}
		return reply{status: 503, header: map[string]string{"Retry-After": "3600"}}
	})
	var numbers []int
	c, logs := newTestClient(t, fb.srv.URL, func(cfg *Config) {
		cfg.Backoff = BackoffConfig{Initial: time.Hour, Max: time.Hour}
		cfg.OnAttempt = func(a Attempt) { numbers = append(numbers, a.Number) }
	})
	go func() {
		// The first attempt failed and its wait of an hour began.
		for len(logs.lines(t, "backend delivery failing")) == 0 {
			time.Sleep(time.Millisecond)
		}
		drained.Store(true)
		c.Drain()
		c.Drain() // twice is harmless
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	rep := c.Send(ctx, callItems(4))

	assert.Equal(t, Report{Delivered: 4, Requests: 4, Retries: 3}, rep)
	assert.Equal(t, []int{1, 2, 3, 4}, numbers)
	assert.Len(t, logs.lines(t, "shutdown began: retrying now"), 1)
	for _, l := range logs.lines(t, "backend delivery still failing") {
		wait, err := time.ParseDuration(l["retry_in"].(string))
		require.NoError(t, err)
		assert.LessOrEqual(t, wait, drainRetryWait, "a wait during the drain")
	}
}

func TestDrainWait(t *testing.T) {
	assert.Equal(t, drainRetryWait, drainWait(t.Context()))
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	assert.Equal(t, drainRetryWait, drainWait(ctx))
	ctx, cancel = context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	assert.Equal(t, time.Duration(0), drainWait(ctx), "past deadline")
}
