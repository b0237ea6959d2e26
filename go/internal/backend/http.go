package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"
	"github.com/google/uuid"
)

// BackoffConfig shapes the wait between attempts of one body.
type BackoffConfig struct {
	Initial    time.Duration // ceiling of the first wait; zero means 1s
	Max        time.Duration // ceiling of any wait before Retry-After; zero means 30s
	Multiplier float64       // growth of the ceiling per attempt; zero means 2
}

func (b BackoffConfig) withDefaults() BackoffConfig {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Multiplier < 1 {
		b.Multiplier = 2
	}
	return b
}

// maxRetryAfter bounds a server's Retry-After.
//
// NOTE(g2): the wait is never shorter than Retry-After up to this bound; a
// longer or absurd value (years, overflow) is treated as this bound so a
// bad header cannot park the sidecar forever. Shutdown still ends any wait,
// and during the drain (Client.Drain) waits are short whatever the header.
const maxRetryAfter = time.Hour

const (
	maxErrorBody   = 64 << 10 // bytes of an error answer read for its reason
	maxDrainBody   = 1 << 20  // bytes of a success answer drained to reuse the connection
	maxReasonBytes = 512
)

type class int

const (
	classOK            class = iota // any 2xx
	classRetry                      // network error, 408, 429, 5xx: retry the same body
	classTooLarge                   // 413: split
	classUnauthorized               // 401, 403: drop
	classCallsComplete              // 4xx with error_code CALLS_COMPLETE_MODE_REQUIRED
	classRejected                   // 400, 422, other 4xx: isolate offenders by splitting
	classEndpoint                   // 1xx, 3xx, 404, 405, unknown: the URL is wrong, drop without splitting
	classShutdown                   // ctx ended before an answer
)

const errorCodeCallsComplete = "CALLS_COMPLETE_MODE_REQUIRED"

// classify maps an HTTP answer to what Send does with the body.
func classify(status int, errorCode string) class {
	switch {
	case status >= 200 && status < 300:
		return classOK
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests, status >= 500 && status < 600:
		return classRetry
	case status >= 400 && status < 500 && errorCode == errorCodeCallsComplete:
		return classCallsComplete
	case status == http.StatusRequestEntityTooLarge:
		return classTooLarge
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return classUnauthorized
	case status == http.StatusNotFound, status == http.StatusMethodNotAllowed:
		return classEndpoint
	case status >= 400 && status < 500:
		return classRejected
	default:
		return classEndpoint
	}
}

// result is the outcome of one attempt, or of all attempts of one body.
type result struct {
	class      class
	status     int           // 0 for a network error
	err        error         // the network error, if any
	reason     string        // the server's reason or the status text, trimmed
	retryAfter time.Duration // from Retry-After; 0 if absent
}

// post sends body until the server gives a final answer or ctx ends,
// under one X-Weave-Retry-Id.
func (c *Client) post(ctx context.Context, s *sendState, body []byte, items int) result {
	retryID := uuid.NewString()
	// Full jitter: the library yields the capped exponential ceiling
	// (RandomizationFactor 0 makes it deterministic), and each wait is drawn
	// uniformly from [0, ceiling] below. The library's own randomization
	// spreads around the ceiling instead and can exceed the cap.
	bo := &backoff.ExponentialBackOff{
		InitialInterval: c.backoff.Initial,
		Multiplier:      c.backoff.Multiplier,
		MaxInterval:     c.backoff.Max,
	}
	bo.Reset()

	for attempt := 1; ; attempt++ {
		s.report.Requests++
		if attempt > 1 {
			s.report.Retries++
		}
		start := time.Now()
		res := c.attempt(ctx, body, retryID, items, attempt)
		if c.observe != nil && res.class != classShutdown {
			c.observe(Attempt{Start: start, Duration: time.Since(start), Status: res.status,
				Retry: res.class == classRetry, Number: attempt, Items: items, Bytes: len(body)})
		}
		if res.class != classRetry {
			c.answered(res)
			return res
		}
		if ctx.Err() != nil {
			return result{class: classShutdown}
		}

		wait := time.Duration(rand.Int64N(int64(bo.NextBackOff()) + 1))
		wait = max(wait, res.retryAfter)
		drain := c.drain // ends the wait when shutdown begins
		if c.draining() {
			wait = min(wait, drainWait(ctx))
			drain = nil
		}
		c.failed(res, items, len(body), wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return result{class: classShutdown}
		case <-drain:
			t.Stop()
			c.log.Debug("shutdown began: retrying now", "items", items, "retry_id", retryID)
		case <-t.C:
		}
	}
}

// drainWait bounds a wait between attempts during the drain: at most
// drainRetryWait, and at most a quarter of the time left before ctx's
// deadline, so several attempts still fit.
func drainWait(ctx context.Context) time.Duration {
	wait := drainRetryWait
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, max(time.Until(d)/4, 0))
	}
	return wait
}

// attempt makes one HTTP request.
func (c *Client) attempt(ctx context.Context, body []byte, retryID string, items, attempt int) result {
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return result{class: classEndpoint, err: err, reason: "cannot build request"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", c.authz.Reveal())
	req.Header.Set("User-Agent", c.agent)
	req.Header.Set("X-Weave-Retry-Id", retryID)

	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return result{class: classShutdown}
		}
		c.log.Debug("backend request failed", "items", items, "body_bytes", len(body), "attempt", attempt,
			"retry_id", retryID, "duration", time.Since(start).Round(time.Microsecond).String(), "err", err)
		return result{class: classRetry, err: err, reason: err.Error()}
	}
	defer resp.Body.Close()

	res := result{status: resp.StatusCode}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainBody))
		res.class = classOK
	} else {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainBody))
		code, reason := parseErrorBody(data)
		if reason == "" {
			reason = fmt.Sprintf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		}
		res.class = classify(resp.StatusCode, code)
		res.reason = reason
		res.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	c.log.Debug("backend request", "status", resp.StatusCode, "items", items, "body_bytes", len(body),
		"attempt", attempt, "retry_id", retryID, "duration", time.Since(start).Round(time.Microsecond).String())
	return res
}

// failed records a retryable failure: a warning starts a streak, later
// failures of the streak are debug lines.
func (c *Client) failed(res result, items, bodyBytes int, wait time.Duration) {
	c.mu.Lock()
	first := !c.failing
	if first {
		c.failing = true
		c.failSince = time.Now()
		c.failures = 0
	}
	c.failures++
	c.mu.Unlock()

	attrs := []any{"items", items, "body_bytes", bodyBytes, "retry_in", wait.Round(time.Millisecond).String()}
	if res.err != nil {
		attrs = append(attrs, "err", res.err)
	} else {
		attrs = append(attrs, "status", res.status, "reason", res.reason)
	}
	if first {
		c.log.Warn("backend delivery failing, retrying until it recovers", attrs...)
	} else {
		c.log.Debug("backend delivery still failing", attrs...)
	}
}

// answered ends an outage streak with one info line, and logs the start of
// an authorization streak with one debug line (its owner, the batcher,
// logs what the sidecar does about it).
func (c *Client) answered(res result) {
	c.mu.Lock()
	recovered, failures, since := c.failing, c.failures, c.failSince
	c.failing = false
	wasUnauthorized := c.unauthorized
	c.unauthorized = res.class == classUnauthorized
	c.mu.Unlock()

	if recovered {
		c.log.Info("backend reachable again", "failures", failures, "duration", time.Since(since).Round(time.Millisecond).String())
	}
	switch {
	case res.class == classUnauthorized && !wasUnauthorized:
		c.log.Debug("trace server refused the api key", "status", res.status, "reason", res.reason)
	case res.class == classOK && wasUnauthorized:
		c.log.Info("trace server accepts the api key again")
	}
}

// parseRetryAfter reads a Retry-After header: delta-seconds or an HTTP-date.
// Absent, unparsable or past values give 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if strings.Trim(v, "0123456789") == "" {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil || secs > uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter // only digits, so err is out of range
		}
		return time.Duration(secs) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	return min(max(t.Sub(now), 0), maxRetryAfter)
}

// parseErrorBody returns the error_code and the reason of a JSON error
// answer, from its message, error, detail or reason field (a FastAPI
// validation list is summarized by location and message, without the
// offending input). A body that is not a JSON object gives "", "".
func parseErrorBody(data []byte) (code, reason string) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) != nil {
		return "", ""
	}
	_ = json.Unmarshal(obj["error_code"], &code)
	for _, key := range []string{"message", "error", "detail", "reason"} {
		if r := reasonText(obj[key]); r != "" {
			return code, trimReason(r)
		}
	}
	return code, ""
}

func reasonText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var list []struct {
		Loc []any  `json:"loc"`
		Msg string `json:"msg"`
	}
	if json.Unmarshal(raw, &list) == nil {
		var parts []string
		for _, e := range list {
			if e.Msg == "" {
				continue
			}
			loc := make([]string, 0, len(e.Loc))
			for _, l := range e.Loc {
				loc = append(loc, fmt.Sprint(l))
			}
			parts = append(parts, strings.TrimLeft(strings.Join(loc, ".")+": ", ": ")+e.Msg)
		}
		return strings.Join(parts, "; ")
	}
	var nested struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &nested) == nil {
		return nested.Message
	}
	return ""
}

// trimReason makes a server reason one short line of valid UTF-8.
func trimReason(r string) string {
	r = strings.Join(strings.Fields(r), " ")
	if len(r) <= maxReasonBytes {
		return r
	}
	cut := maxReasonBytes
	for cut > 0 && !utf8.RuneStart(r[cut]) {
		cut--
	}
	return r[:cut] + "..."
}
