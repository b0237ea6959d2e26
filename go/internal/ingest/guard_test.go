package ingest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

const testToken = "token-0123456789abcdef"

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// guarded is a server under test with its stats and log.
type guarded struct {
	srv *Server
	st  *stats.Stats
	log *syncBuffer
}

func startGuarded(t *testing.T, peerUID PeerUIDFunc) *guarded {
	t.Helper()
	g := &guarded{st: &stats.Stats{}, log: &syncBuffer{}}
	logger := slog.New(slog.NewTextHandler(g.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bt, err := batch.New(batch.Config{Sender: discard{}, FlushInterval: time.Second, MaxCount: 100,
		MaxBytes: 1 << 20, MaxQueueBytes: 1 << 20, Stats: g.st, Logger: logger})
	require.NoError(t, err)
	g.srv = New(Config{Batcher: bt, Stats: g.st, Hello: []byte(`{"name":"weave-sidecar"}`), Logger: logger,
		PeerUID: peerUID, Token: auth.NewSecret(testToken)})
	t.Cleanup(func() {
		g.srv.Close()
		bt.Close(context.Background())
	})
	return g
}

func (g *guarded) serveUnix(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "wsg-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	ln, err := Listen(path)
	require.NoError(t, err)
	g.srv.Serve(ln)
	return path
}

func (g *guarded) serveTCP(t *testing.T) string {
	t.Helper()
	ln, err := ListenTCP("127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, g.srv.ServeTCP(ln))
	return ln.Addr().String()
}

// exchange writes lines on a new connection and reads until the server
// closes it or want answers arrived; it returns the answers.
func exchange(t *testing.T, network, addr string, want int, lines ...string) []map[string]any {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	for _, l := range lines {
		_, err := io.WriteString(c, l+"\n")
		require.NoError(t, err)
	}
	var out []map[string]any
	r := bufio.NewReader(c)
	for len(out) < want {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			break
		}
		if err != nil && strings.Contains(err.Error(), "reset") {
			break
		}
		require.NoError(t, err)
		var m map[string]any
		require.NoError(t, json.Unmarshal(line, &m), string(line))
		out = append(out, m)
	}
	return out
}

// closedAfter reports whether the server closed c after its answers.
func closedByServer(t *testing.T, network, addr string, lines ...string) (first map[string]any, closed bool) {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	for _, l := range lines {
		if _, err := io.WriteString(c, l+"\n"); err != nil {
			break // the server may already have closed
		}
	}
	r := bufio.NewReader(c)
	line, err := r.ReadBytes('\n')
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(line, &first), string(line))
	_, err = r.ReadBytes('\n')
	return first, err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

func TestPeerSameUserAccepted(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("no peer credentials on " + runtime.GOOS)
	}
	g := startGuarded(t, nil) // the OS's credentials
	path := g.serveUnix(t)

	got := exchange(t, "unix", path, 2, `{"method":"hello"}`,
		`{"method":"call_start","payload":{"start":{"id":"c1","project_id":"e/p"}}}`)
	require.Len(t, got, 2)
	assert.Equal(t, true, got[0]["success"])
	assert.Equal(t, true, got[1]["success"])
	assert.Equal(t, map[string]int64{"peer_uid": 0, "peer_unknown": 0, "no_token": 0, "bad_token": 0},
		g.st.Snapshot(stats.Queue{}).RejectedConnections)
}

func TestOSPeerUID(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("no peer credentials on " + runtime.GOOS)
	}
	dir, err := os.MkdirTemp("/tmp", "wsg-")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	ln, err := Listen(filepath.Join(dir, "s"))
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("unix", filepath.Join(dir, "s"))
	require.NoError(t, err)
	defer c.Close()
	sc, err := ln.AcceptUnix()
	require.NoError(t, err)
	defer sc.Close()

	uid, err := osPeerUID(sc)
	require.NoError(t, err)
	assert.Equal(t, os.Geteuid(), uid)
}

func TestPeerOtherUserRejected(t *testing.T) {
	other := os.Geteuid() + 1
	g := startGuarded(t, func(*net.UnixConn) (int, error) { return other, nil })
	path := g.serveUnix(t)

	for range 3 {
		first, closed := closedByServer(t, "unix", path, `{"method":"hello"}`,
			`{"method":"call_start","payload":{"start":{"id":"c1","project_id":"e/p"}}}`)
		assert.Equal(t, false, first["success"])
		assert.Equal(t, "forbidden", first["code"])
		assert.True(t, closed, "connection left open")
	}
	snap := g.st.Snapshot(stats.Queue{})
	assert.Equal(t, int64(3), snap.RejectedConnections["peer_uid"])
	assert.Equal(t, int64(0), snap.Accepted, "a rejected peer's call was accepted")
	assert.Equal(t, 1, strings.Count(g.log.String(), "level=WARN msg=\"refused a connection from another user\""))
}

func TestPeerCredentialsUnreadable(t *testing.T) {
	g := startGuarded(t, func(*net.UnixConn) (int, error) { return 0, errors.New("getsockopt: bad file descriptor") })
	path := g.serveUnix(t)

	first, closed := closedByServer(t, "unix", path, `{"method":"hello"}`)
	assert.Equal(t, "forbidden", first["code"])
	assert.True(t, closed)
	assert.Equal(t, int64(1), g.st.Snapshot(stats.Queue{}).RejectedConnections["peer_unknown"])
}

func TestPeerCredentialsUnsupported(t *testing.T) {
	g := startGuarded(t, func(*net.UnixConn) (int, error) { return 0, errNoPeerCred })
	path := g.serveUnix(t)

	got := exchange(t, "unix", path, 1, `{"method":"hello"}`)
	require.Len(t, got, 1)
	assert.Equal(t, true, got[0]["success"])
}

func TestTCPToken(t *testing.T) {
	g := startGuarded(t, nil)
	addr := g.serveTCP(t)

	// The token opens the connection for everything else.
	got := exchange(t, "tcp", addr, 3, `{"id":1,"method":"hello","payload":{"protocol":1,"token":"`+testToken+`"}}`,
		`{"method":"call_start","payload":{"start":{"id":"c1","project_id":"e/p"}}}`, `{"method":"stats"}`)
	require.Len(t, got, 3)
	assert.Equal(t, map[string]any{"name": "weave-sidecar"}, got[0]["result"])
	assert.Equal(t, true, got[1]["success"])
	assert.Equal(t, true, got[2]["success"])

	for _, tc := range []struct {
		name   string
		first  string
		reason string
	}{
		{"call first", `{"method":"call_start","payload":{"start":{"id":"c2","project_id":"e/p"}}}`, "no_token"},
		{"stats first", `{"method":"stats"}`, "no_token"},
		{"hello without token", `{"method":"hello","payload":{"protocol":1}}`, "no_token"},
		{"hello without payload", `{"method":"hello"}`, "no_token"},
		{"token not a string", `{"method":"hello","payload":{"token":12345678901234567890}}`, "no_token"},
		{"not json", `hello ` + testToken, "no_token"},
		{"wrong token", `{"id":"x","method":"hello","payload":{"token":"token-0123456789abcdeX"}}`, "bad_token"},
		{"token prefix", `{"method":"hello","payload":{"token":"token-0123456789"}}`, "bad_token"},
		{"empty token", `{"method":"hello","payload":{"token":""}}`, "bad_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := g.st.Snapshot(stats.Queue{}).RejectedConnections[tc.reason]
			first, closed := closedByServer(t, "tcp", addr, tc.first,
				`{"method":"hello","payload":{"token":"`+testToken+`"}}`)
			assert.Equal(t, false, first["success"])
			assert.Equal(t, "forbidden", first["code"])
			assert.NotContains(t, first["error"], "token-0123", "the error repeats a token")
			assert.True(t, closed, "connection left open")
			assert.Equal(t, before+1, g.st.Snapshot(stats.Queue{}).RejectedConnections[tc.reason])
		})
	}
	assert.Equal(t, int64(1), g.st.Accepted.Load(), "only the authenticated call is accepted")
	assert.NotContains(t, g.log.String(), "0123456789abcde", "a token reached the log")
}

func TestTCPSilentClientCounted(t *testing.T) {
	g := startGuarded(t, nil)
	addr := g.serveTCP(t)

	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	c.Close()
	require.Eventually(t, func() bool {
		return g.st.Snapshot(stats.Queue{}).RejectedConnections["no_token"] == 1
	}, 30*time.Second, 10*time.Millisecond)
}

func TestServeTCPNeedsToken(t *testing.T) {
	st := &stats.Stats{}
	srv := New(Config{Stats: st, Token: auth.NewSecret("short")})
	ln, err := ListenTCP("127.0.0.1:0")
	require.NoError(t, err)
	err = srv.ServeTCP(ln)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "at least 16 bytes")
	assert.NotContains(t, err.Error(), "short")
}

func TestCheckTCPAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want string // error substring; "" means accepted
	}{
		{"127.0.0.1:0", ""},
		{"127.0.0.1:8765", ""},
		{"0.0.0.0:0", "host must be 127.0.0.1"},
		{"localhost:0", "host must be 127.0.0.1"},
		{"[::1]:0", "host must be 127.0.0.1"},
		{"192.168.1.2:80", "host must be 127.0.0.1"},
		{":0", "host must be 127.0.0.1"},
		{"127.0.0.1", "want 127.0.0.1:PORT"},
		{"127.0.0.1:http", "port must be a number"},
		{"127.0.0.1:65536", "port must be a number"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := CheckTCPAddr(tc.addr)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
