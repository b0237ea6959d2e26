// Package integration runs the built weave-sidecar binary as a subprocess
// against an httptest trace server over a real Unix socket.
//
// This file is the harness: TestMain builds the binary once, and the helpers
// below start it, talk to it and record what reaches the fake backend. Test
// files in this package use them; they never contact anything but loopback.
package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// binPath is the sidecar binary built by TestMain.
var binPath string

// TestKey is the API key every sidecar gets unless Options.Env overrides it.
// Tests check that it never shows up in the logs.
const TestKey = "test-key-5f3c0e9d2b7a41c8a6e1"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsc-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: temp dir:", err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "weave-sidecar")
	build := exec.Command("go", "build", "-o", binPath, "-ldflags", "-X main.version=0.0.0-test",
		"github.com/weave-sidecar/weave-sidecar/go/cmd/weave-sidecar")
	build.Stdout = os.Stderr
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: go build:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ShortTempDir makes a directory under /tmp (Unix socket paths must stay
// short, so t.TempDir is too deep on some systems) and removes it at cleanup.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "wsc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Reply is how the scripted backend answers one request.
type Reply struct {
	Status int               // 0 means 200
	Header map[string]string // extra response headers, e.g. Retry-After
	Body   string            // response body; empty means a minimal success body
	// Delay holds the response this long (or until the request is cancelled).
	Delay time.Duration
	// Hang holds the response until the client gives up or the backend closes.
	Hang bool
}

// BatchItem is one decoded entry of an upsert_batch body.
type BatchItem struct {
	Mode      string
	ID        string
	ProjectID string
	Req       json.RawMessage // the payload exactly as it arrived
}

// Request is one request the backend received.
type Request struct {
	N      int // 1-based arrival number
	Method string
	Path   string
	Header http.Header
	Body   []byte
	Items  []BatchItem // decoded from Body when it is an upsert_batch
	Status int         // the status the backend answered with
}

// Backend is a recording httptest trace server. By default it answers 200 to
// every request; Script changes that per request.
type Backend struct {
	*httptest.Server

	mu       sync.Mutex
	requests []*Request // guarded by mu
	arrivals int        // guarded by mu; numbers requests as they arrive
	script   func(req *Request) Reply
	stop     chan struct{}
}

// NewBackend starts a backend that is closed at test cleanup.
func NewBackend(t testing.TB) *Backend {
	t.Helper()
	b := &Backend{stop: make(chan struct{})}
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(func() {
		close(b.stop)
		b.Server.Close()
	})
	return b
}

// Script sets the function that picks the reply for each request. It runs
// on the handler goroutine with the decoded request; nil restores 200.
func (b *Backend) Script(fn func(req *Request) Reply) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.script = fn
}

func (b *Backend) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := &Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body}
	req.Items = decodeBatch(body)

	b.mu.Lock()
	b.arrivals++
	req.N = b.arrivals
	script := b.script
	b.mu.Unlock()

	reply := Reply{}
	if script != nil {
		reply = script(req)
	}
	if reply.Status == 0 {
		reply.Status = http.StatusOK
	}
	req.Status = reply.Status

	// Record before waiting so tests can see a request that is being held.
	b.mu.Lock()
	b.requests = append(b.requests, req)
	b.mu.Unlock()

	if reply.Hang {
		select {
		case <-r.Context().Done():
		case <-b.stop:
		}
		return
	}
	if reply.Delay > 0 {
		select {
		case <-time.After(reply.Delay):
		case <-r.Context().Done():
			return
		case <-b.stop:
			return
		}
	}
	for k, v := range reply.Header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(reply.Status)
	if reply.Body != "" {
		io.WriteString(w, reply.Body)
	} else if reply.Status < 300 {
		io.WriteString(w, `{"res":[]}`)
	}
}

func decodeBatch(body []byte) []BatchItem {
	var batch struct {
		Batch []struct {
			Mode string          `json:"mode"`
			Req  json.RawMessage `json:"req"`
		} `json:"batch"`
	}
	if json.Unmarshal(body, &batch) != nil {
		return nil
	}
	items := make([]BatchItem, 0, len(batch.Batch))
	for _, e := range batch.Batch {
		var ids struct {
			Start *struct {
				ID        string `json:"id"`
				ProjectID string `json:"project_id"`
			} `json:"start"`
			End *struct {
				ID        string `json:"id"`
				ProjectID string `json:"project_id"`
			} `json:"end"`
		}
		_ = json.Unmarshal(e.Req, &ids)
		it := BatchItem{Mode: e.Mode, Req: e.Req}
		switch {
		case ids.Start != nil:
			it.ID, it.ProjectID = ids.Start.ID, ids.Start.ProjectID
		case ids.End != nil:
			it.ID, it.ProjectID = ids.End.ID, ids.End.ProjectID
		}
		items = append(items, it)
	}
	return items
}

// Requests returns a copy of the requests received so far.
func (b *Backend) Requests() []*Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Request(nil), b.requests...)
}

// Delivered returns the items of every request answered with a 2xx, in
// arrival order.
func (b *Backend) Delivered() []BatchItem {
	var items []BatchItem
	for _, r := range b.Requests() {
		if r.Status >= 200 && r.Status < 300 {
			items = append(items, r.Items...)
		}
	}
	return items
}

// WaitDelivered waits until at least n items were delivered and returns them.
func (b *Backend) WaitDelivered(t testing.TB, n int, timeout time.Duration) []BatchItem {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		items := b.Delivered()
		if len(items) >= n {
			return items
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "backend", "%d items delivered, waited for %d", len(items), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Options configure a sidecar process.
type Options struct {
	// Args are extra command-line flags (after --socket and --backend).
	Args []string
	// Env holds extra KEY=value entries. The process starts from a scrubbed
	// environment: PATH, HOME (an empty temp dir, so no ~/.netrc) and
	// WANDB_API_KEY=TestKey unless Env sets WANDB_API_KEY itself.
	Env []string
	// Socket overrides the socket path (default: s in a fresh short temp dir).
	Socket string
	// NoBackendFlag leaves --backend off the command line.
	NoBackendFlag bool
	// NoWait returns without waiting for the socket to accept connections.
	NoWait bool
	// Stdin, when set, gives the process a stdin pipe (Sidecar.Stdin).
	Stdin bool
}

// Sidecar is a running weave-sidecar process.
type Sidecar struct {
	Cmd    *exec.Cmd
	Socket string
	Stdin  io.WriteCloser // nil unless Options.Stdin

	stderr *lockedBuffer
	done   chan struct{}
	err    error // Wait's error, set before done closes
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// StartSidecar starts the binary against backendURL and, unless
// opts.NoWait, waits until its socket accepts connections. The process is
// killed at cleanup if it is still running.
func StartSidecar(t testing.TB, backendURL string, opts Options) *Sidecar {
	t.Helper()
	socket := opts.Socket
	if socket == "" {
		socket = filepath.Join(ShortTempDir(t), "s")
	}
	args := []string{"--socket", socket}
	if !opts.NoBackendFlag {
		args = append(args, "--backend", backendURL)
	}
	args = append(args, opts.Args...)

	home := ShortTempDir(t)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	hasKey := false
	for _, kv := range opts.Env {
		if strings.HasPrefix(kv, "WANDB_API_KEY=") {
			hasKey = true
		}
	}
	if !hasKey {
		env = append(env, "WANDB_API_KEY="+TestKey)
	}
	env = append(env, opts.Env...)

	s := &Sidecar{Socket: socket, stderr: &lockedBuffer{}, done: make(chan struct{})}
	s.Cmd = exec.Command(binPath, args...)
	s.Cmd.Env = env
	s.Cmd.Stderr = s.stderr
	if opts.Stdin {
		w, err := s.Cmd.StdinPipe()
		require.NoError(t, err)
		s.Stdin = w
	}
	require.NoError(t, s.Cmd.Start())
	go func() {
		s.err = s.Cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = s.Cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("sidecar stderr:\n%s", s.Logs())
		}
	})
	if !opts.NoWait {
		s.WaitReady(t, 10*time.Second)
	}
	return s
}

// WaitReady waits until the socket accepts a connection, failing the test if
// the process exits first.
func (s *Sidecar) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", s.Socket)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			require.FailNowf(t, "sidecar exited before listening", "%v\n%s", s.err, s.Logs())
		default:
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "sidecar not ready", "%v\n%s", err, s.Logs())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Logs returns everything the process wrote to stderr so far.
func (s *Sidecar) Logs() string { return s.stderr.String() }

// Signal sends sig to the process.
func (s *Sidecar) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, s.Cmd.Process.Signal(sig))
}

// Wait waits for the process to exit and returns its exit code; it fails the
// test if that takes longer than timeout.
func (s *Sidecar) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(timeout):
		require.FailNowf(t, "sidecar still running", "after %v\n%s", timeout, s.Logs())
	}
	return s.Cmd.ProcessState.ExitCode()
}

// Exited reports whether the process has exited.
func (s *Sidecar) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Client is one connection to a sidecar socket.
type Client struct {
	Conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

// Dial connects to the socket; the connection is closed at cleanup.
func Dial(t testing.TB, socket string) *Client {
	t.Helper()
	c, err := net.Dial("unix", socket)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &Client{Conn: c, r: bufio.NewReaderSize(c, 1<<16), w: bufio.NewWriterSize(c, 1<<16)}
}

// Write sends raw bytes (no newline is added) and flushes.
func (c *Client) Write(t testing.TB, data []byte) {
	t.Helper()
	_, err := c.w.Write(data)
	require.NoError(t, err)
	require.NoError(t, c.w.Flush())
}

// Send writes each line followed by a newline, then flushes once.
func (c *Client) Send(t testing.TB, lines ...string) {
	t.Helper()
	for _, l := range lines {
		_, err := c.w.WriteString(l)
		require.NoError(t, err)
		require.NoError(t, c.w.WriteByte('\n'))
	}
	require.NoError(t, c.w.Flush())
}

// Response is one decoded response line.
type Response struct {
	Raw      string
	ID       json.RawMessage `json:"id"`
	Success  bool            `json:"success"`
	Code     string          `json:"code"`
	Error    string          `json:"error"`
	Resolved *int64          `json:"resolved"`
	Result   json.RawMessage `json:"result"`
}

// Read reads one response line, failing the test after 30s.
func (c *Client) Read(t testing.TB) Response {
	t.Helper()
	require.NoError(t, c.Conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	line, err := c.r.ReadBytes('\n')
	require.NoError(t, err, "reading a response")
	var resp Response
	require.NoError(t, json.Unmarshal(line, &resp), "response %q", line)
	resp.Raw = strings.TrimSuffix(string(line), "\n")
	return resp
}

// ReadN reads n responses.
func (c *Client) ReadN(t testing.TB, n int) []Response {
	t.Helper()
	out := make([]Response, n)
	for i := range out {
		out[i] = c.Read(t)
	}
	return out
}

// Call sends one line and reads its response.
func (c *Client) Call(t testing.TB, line string) Response {
	t.Helper()
	c.Send(t, line)
	return c.Read(t)
}

// FlushResult is the result of a flush request.
type FlushResult struct {
	Delivered int64 `json:"delivered"`
	Failed    int64 `json:"failed"`
	Resolved  int64 `json:"resolved"`
}

// Flush sends a flush and waits (up to timeout) for its answer.
func (c *Client) Flush(t testing.TB, timeout time.Duration) FlushResult {
	t.Helper()
	c.Send(t, `{"method":"flush"}`)
	require.NoError(t, c.Conn.SetReadDeadline(time.Now().Add(timeout)))
	line, err := c.r.ReadBytes('\n')
	require.NoError(t, err, "reading the flush response")
	var resp Response
	require.NoError(t, json.Unmarshal(line, &resp))
	require.True(t, resp.Success, "flush failed: %s", line)
	var fr FlushResult
	require.NoError(t, json.Unmarshal(resp.Result, &fr))
	return fr
}

// Stats sends a stats request and decodes its result.
func (c *Client) Stats(t testing.TB) map[string]any {
	t.Helper()
	resp := c.Call(t, `{"method":"stats"}`)
	require.True(t, resp.Success, resp.Raw)
	var m map[string]any
	require.NoError(t, json.Unmarshal(resp.Result, &m))
	return m
}

// StartLine is a call_start request line for call id in project, with an
// inputs object padded so the payload is about pad bytes longer.
func StartLine(project, id string, pad int) string {
	return fmt.Sprintf(`{"method":"call_start","payload":{"start":{"project_id":%q,"id":%q,"trace_id":%q,`+
		`"op_name":"weave:///e/p/op/f:0","started_at":"2025-01-02T03:04:05.123456","attributes":{},`+
		`"inputs":{"pad":%q}}}}`, project, id, id, strings.Repeat("x", pad))
}

// EndLine is a call_end request line for call id in project.
func EndLine(project, id string) string {
	return fmt.Sprintf(`{"method":"call_end","payload":{"end":{"project_id":%q,"id":%q,`+
		`"ended_at":"2025-01-02T03:04:06.5","output":null,"summary":{}}}}`, project, id)
}

// WithID adds an "id" member to a request line built by StartLine/EndLine.
func WithID(line string, id int) string {
	return fmt.Sprintf(`{"id":%d,%s`, id, line[1:])
}
