// Package backend delivers call items to the Weave trace server's
// /call/upsert_batch endpoint: it encodes bodies without re-encoding
// payloads, retries outages with backoff, splits oversized or rejected
// batches, and reports every item as delivered or dropped.
package backend

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
)

// MaxRequestBytes is the largest request body the sidecar ever sends:
// 31 MiB, the Weave SDK's own cap under the server's 32 MiB limit.
const MaxRequestBytes = 31 << 20

const (
	defaultRequestTimeout = 30 * time.Second
	upsertPath            = "/call/upsert_batch"
)

// Config configures a Client.
type Config struct {
	URL            string        // trace server base URL; any path prefix is kept
	Key            auth.Secret   // API key, sent as Basic "api:<key>"
	Version        string        // sidecar version for the User-Agent; empty means "unknown"
	RequestTimeout time.Duration // bound on one HTTP attempt; zero means 30s
	MaxBodyBytes   int           // cap on one request body; zero means MaxRequestBytes, more is an error
	Logger         *slog.Logger  // nil discards logs
	Backoff        BackoffConfig // zero value means production defaults
	// OnAttempt, when set, is called after every HTTP attempt that got an
	// answer or a network error (not one cut short by shutdown), on the
	// sender's goroutine, as it happens; it must be quick. For counters and
	// metrics.
	OnAttempt func(Attempt)
}

// Attempt describes one finished HTTP request, without its body.
type Attempt struct {
	Start    time.Time
	Duration time.Duration
	Status   int  // 0 for a network error or timeout
	Retry    bool // the answer is retried: network error, 408, 429 or 5xx
	Number   int  // 1 for a body's first attempt; more is a retry of the same body
	Items    int
	Bytes    int
}

// Client posts batches to the trace server. Send is meant to be called by
// one goroutine at a time (the sender); the streak state used for logging
// is still guarded, so concurrent calls are safe, just not ordered.
type Client struct {
	endpoint string      // <URL>/call/upsert_batch, without userinfo
	authz    auth.Secret // the whole Authorization header value
	agent    string
	timeout  time.Duration
	maxBody  int
	backoff  BackoffConfig
	log      *slog.Logger
	hc       *http.Client
	observe  func(Attempt) // nil when Config.OnAttempt is

	drainOnce sync.Once
	drain     chan struct{} // closed by Drain: shutdown has begun

	mu            sync.Mutex // guards the fields below
	failing       bool       // an outage streak is under way
	failSince     time.Time
	failures      int
	unauthorized  bool            // the last answer was 401/403
	callsComplete map[string]bool // projects the server said need calls-complete mode
}

// New checks cfg and returns a Client with a pooled keep-alive transport.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(cfg.URL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("backend: URL must be an absolute http or https URL")
	}
	if cfg.Key.Empty() {
		return nil, errors.New("backend: empty api key")
	}
	u.User = nil
	u.Fragment, u.RawFragment = "", ""
	u.Path = strings.TrimRight(u.Path, "/") + upsertPath
	u.RawPath = ""

	switch {
	case cfg.MaxBodyBytes == 0:
		cfg.MaxBodyBytes = MaxRequestBytes
	case cfg.MaxBodyBytes < 0 || cfg.MaxBodyBytes > MaxRequestBytes:
		return nil, fmt.Errorf("backend: max body bytes %d is outside 1..%d", cfg.MaxBodyBytes, MaxRequestBytes)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = defaultRequestTimeout
	}
	if cfg.Version == "" {
		cfg.Version = "unknown"
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4
	token := base64.StdEncoding.EncodeToString([]byte("api:" + cfg.Key.Reveal()))
	return &Client{
		endpoint: u.String(),
		authz:    auth.NewSecret("Basic " + token),
		agent:    "weave-sidecar/" + cfg.Version,
		timeout:  cfg.RequestTimeout,
		maxBody:  cfg.MaxBodyBytes,
		backoff:  cfg.Backoff.withDefaults(),
		log:      lg.With("component", "backend", "host", u.Host),
		observe:  cfg.OnAttempt,
		hc: &http.Client{
			Transport: tr,
			// A redirected POST would be replayed as a GET: report the 3xx instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		callsComplete: make(map[string]bool),
		drain:         make(chan struct{}),
	}, nil
}

// drainRetryWait caps every wait between attempts once Drain was called,
// Retry-After included: the shutdown deadline, not the server's hint, now
// bounds the retries, and a backend that is back must get the calls before
// the deadline drops them.
const drainRetryWait = time.Second

// Drain tells c that shutdown has begun. A backoff wait under way ends at
// once and the body is tried again; from then on a failed attempt is
// retried after at most drainRetryWait (and at most a quarter of the time
// left before the ctx deadline of Send), until that ctx ends. Drain may be
// called more than once, from any goroutine.
func (c *Client) Drain() { c.drainOnce.Do(func() { close(c.drain) }) }

func (c *Client) draining() bool {
	select {
	case <-c.drain:
		return true
	default:
		return false
	}
}

// Endpoint returns the URL batches are posted to (never with credentials).
func (c *Client) Endpoint() string { return c.endpoint }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// sendState is the bookkeeping of one Send.
type sendState struct {
	items        []Item
	report       Report
	unauthorized string // the server's reason once a 401/403 was seen in this Send
}

func (s *sendState) drop(idx []int, reason DropReason, detail string) {
	for _, i := range idx {
		s.report.Dropped = append(s.report.Dropped, Drop{Index: i, Reason: reason, Detail: detail})
	}
}

// Send delivers items in order and blocks until each one is delivered or
// dropped, or ctx ends; then the items not yet delivered are dropped with
// DropShutdown (an attempt cut short may still have reached the server).
//
// Network errors, 408, 429 and 5xx are retried without an attempt limit,
// with capped exponential backoff and full jitter, never sooner than the
// server's Retry-After, so an outage holds the batch. A body over
// MaxBodyBytes or answered 413 is split in halves; a single item still too
// large is dropped (DropTooLarge). 400, 422 and other final 4xx split the
// batch to isolate the offending items, which alone are dropped
// (DropRejected); a 3xx, 404 or 405 means the URL is wrong, not the items,
// and drops the body without splitting. 401/403 drops the rest of items
// (DropUnauthorized) and sets Report.Unauthorized. A 4xx carrying
// error_code CALLS_COMPLETE_MODE_REQUIRED drops the items of the projects
// concerned (DropCallsComplete), reported in Report.CallsCompleteProjects;
// later items of those projects are dropped without a request.
//
// Once Drain was called, retry waits are short (see Drain).
//
// Send logs each drop once, with call ids and reasons, never payloads.
func (c *Client) Send(ctx context.Context, items []Item) Report {
	s := &sendState{items: items}
	idx := make([]int, 0, len(items))
	for i, it := range items {
		switch {
		case it.Mode != ModeStart && it.Mode != ModeEnd:
			s.drop([]int{i}, DropRejected, fmt.Sprintf("unknown mode %q", string(it.Mode)))
			c.log.Error("dropped call with an unknown mode", "id", it.ID, "mode", string(it.Mode))
		case len(it.Payload) == 0:
			s.drop([]int{i}, DropRejected, "empty payload")
			c.log.Error("dropped call with an empty payload", "id", it.ID)
		default:
			idx = append(idx, i)
		}
	}
	c.deliver(ctx, s, idx)

	slices.SortFunc(s.report.Dropped, func(a, b Drop) int { return a.Index - b.Index })
	return s.report
}

// deliver sends the items at idx (indices into s.items, in order),
// splitting as the server's answers require.
func (c *Client) deliver(ctx context.Context, s *sendState, idx []int) {
	idx = c.dropCallsComplete(s, idx)
	if len(idx) == 0 {
		return
	}
	if ctx.Err() != nil {
		s.drop(idx, DropShutdown, "")
		return
	}
	if s.unauthorized != "" {
		s.drop(idx, DropUnauthorized, s.unauthorized)
		return
	}

	size := bodySize(s.items, idx)
	if size > c.maxBody {
		if len(idx) > 1 {
			c.split(ctx, s, idx)
			return
		}
		detail := fmt.Sprintf("call of %d bytes exceeds the %d-byte request limit", size, c.maxBody)
		s.drop(idx, DropTooLarge, detail)
		c.log.Error("dropped call too large to send", "id", s.items[idx[0]].ID, "body_bytes", size, "limit", c.maxBody)
		return
	}

	res := c.post(ctx, s, encodeBody(s.items, idx, size), len(idx))
	switch res.class {
	case classOK:
		s.report.Delivered += len(idx)
	case classShutdown:
		s.drop(idx, DropShutdown, "")
	case classTooLarge:
		if len(idx) > 1 {
			c.split(ctx, s, idx)
			return
		}
		s.drop(idx, DropTooLarge, res.reason)
		c.log.Error("dropped call the server found too large", "id", s.items[idx[0]].ID,
			"body_bytes", size, "status", res.status, "reason", res.reason)
	case classUnauthorized:
		s.unauthorized = res.reason
		s.report.Unauthorized = true
		s.drop(idx, DropUnauthorized, res.reason)
	case classCallsComplete:
		c.callsCompleteAnswer(ctx, s, idx, res)
	case classRejected:
		if len(idx) > 1 {
			c.split(ctx, s, idx)
			return
		}
		s.drop(idx, DropRejected, res.reason)
		c.log.Error("dropped call the server rejected", "id", s.items[idx[0]].ID,
			"project_id", s.items[idx[0]].ProjectID, "status", res.status, "reason", res.reason)
	case classEndpoint:
		s.drop(idx, DropRejected, res.reason)
		c.log.Error("dropped batch: the backend URL answered with a status no split can fix",
			"status", res.status, "reason", res.reason, "items", len(idx), idsAttr(s.items, idx))
	}
}

// split delivers the two halves of idx in order, each as a new body.
func (c *Client) split(ctx context.Context, s *sendState, idx []int) {
	half := len(idx) / 2
	c.deliver(ctx, s, idx[:half])
	c.deliver(ctx, s, idx[half:])
}

// callsCompleteAnswer handles CALLS_COMPLETE_MODE_REQUIRED: a body that spans
// several projects is split by project to find which need the mode; the
// items of a single such project are dropped.
func (c *Client) callsCompleteAnswer(ctx context.Context, s *sendState, idx []int, res result) {
	groups := byProject(s.items, idx)
	if len(groups) > 1 {
		for _, g := range groups {
			c.deliver(ctx, s, g)
		}
		return
	}
	project := s.items[idx[0]].ProjectID
	c.mu.Lock()
	first := !c.callsComplete[project]
	c.callsComplete[project] = true
	c.mu.Unlock()
	if first {
		c.log.Error("project requires calls-complete mode, which this sidecar cannot send; "+
			"route it through the SDK's calls-complete write path (weave >= 0.52.26 with WEAVE_USE_SIDECAR off for this project)",
			"project_id", project, "reason", res.reason)
	}
	c.dropProject(s, project, idx, res.reason)
}

// dropCallsComplete drops the items of projects already known to need
// calls-complete mode and returns the rest.
func (c *Client) dropCallsComplete(s *sendState, idx []int) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.callsComplete) == 0 {
		return idx
	}
	var keep []int
	dropped := map[string][]int{}
	var order []string
	for _, i := range idx {
		p := s.items[i].ProjectID
		if !c.callsComplete[p] {
			keep = append(keep, i)
			continue
		}
		if _, ok := dropped[p]; !ok {
			order = append(order, p)
		}
		dropped[p] = append(dropped[p], i)
	}
	for _, p := range order {
		c.dropProjectLocked(s, p, dropped[p], "project requires calls-complete mode")
	}
	return keep
}

func (c *Client) dropProject(s *sendState, project string, idx []int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropProjectLocked(s, project, idx, reason)
}

func (c *Client) dropProjectLocked(s *sendState, project string, idx []int, reason string) {
	s.drop(idx, DropCallsComplete, reason)
	if !slices.Contains(s.report.CallsCompleteProjects, project) {
		s.report.CallsCompleteProjects = append(s.report.CallsCompleteProjects, project)
	}
	c.log.Warn("dropped calls of a calls-complete project", "project_id", project, "items", len(idx), idsAttr(s.items, idx))
}

// byProject groups idx by project, keeping first-seen project order and the
// order of items within each project.
func byProject(items []Item, idx []int) [][]int {
	pos := map[string]int{}
	var groups [][]int
	for _, i := range idx {
		p := items[i].ProjectID
		g, ok := pos[p]
		if !ok {
			g = len(groups)
			pos[p] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	return groups
}

// maxLoggedIDs bounds the ids listed in one log line.
const maxLoggedIDs = 50

// idsAttr lists the call ids at idx for a log line, at most maxLoggedIDs.
func idsAttr(items []Item, idx []int) slog.Attr {
	n := min(len(idx), maxLoggedIDs)
	ids := make([]string, 0, n)
	for _, i := range idx[:n] {
		ids = append(ids, items[i].ID)
	}
	if len(idx) > n {
		ids = append(ids, fmt.Sprintf("... %d more", len(idx)-n))
	}
	return slog.Any("ids", ids)
}
