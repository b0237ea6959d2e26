package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const tcpToken = "integration-token-7d1e4b90c2a3"

// readyFile waits for the sidecar's --ready-file and decodes it.
func readyFile(t *testing.T, s *Sidecar, path string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			var m map[string]any
			require.NoError(t, json.Unmarshal(data, &m), "ready file %q", data)
			return m
		}
		require.False(t, s.Exited(), "sidecar exited before writing the ready file\n%s", s.Logs())
		require.True(t, time.Now().Before(deadline), "no ready file\n%s", s.Logs())
		time.Sleep(5 * time.Millisecond)
	}
}

// dialTCP connects to the sidecar's TCP listener; the connection is closed
// at cleanup.
func dialTCP(t *testing.T, addr string) *Client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &Client{Conn: c, r: bufio.NewReaderSize(c, 1<<16), w: bufio.NewWriterSize(c, 1<<16)}
}

func TestTCPTransport(t *testing.T) {
	b := NewBackend(t)
	dir := ShortTempDir(t)
	ready := filepath.Join(dir, "ready")
	s := StartSidecar(t, b.URL, Options{
		Args: []string{"--listen-tcp", "127.0.0.1:0", "--ready-file", ready, "--flush-interval", "50ms"},
		Env:  []string{"WEAVE_SIDECAR_TOKEN=" + tcpToken},
	})
	info := readyFile(t, s, ready)
	addr, _ := info["tcp"].(string)
	require.True(t, strings.HasPrefix(addr, "127.0.0.1:"), "tcp address %q", addr)
	assert.Equal(t, s.Socket, info["unix"])
	assert.Equal(t, float64(s.Cmd.Process.Pid), info["pid"])

	// With the token, TCP serves the whole protocol.
	c := dialTCP(t, addr)
	hello := c.Call(t, `{"method":"hello","payload":{"protocol":1,"token":"`+tcpToken+`"}}`)
	require.True(t, hello.Success, hello.Raw)
	assert.Contains(t, string(hello.Result), `"name":"weave-sidecar"`)
	var lines []string
	var ids []string
	for i := range 50 {
		id := fmt.Sprintf("tcp-%03d", i)
		ids = append(ids, id)
		lines = append(lines, StartLine("e/tcp", id, 200), EndLine("e/tcp", id))
	}
	c.Send(t, lines...)
	for _, r := range c.ReadN(t, len(lines)) {
		require.True(t, r.Success, r.Raw)
	}
	fr := c.Flush(t, 60*time.Second)
	assert.Equal(t, int64(100), fr.Delivered)
	got := map[string]int{}
	for _, it := range b.WaitDelivered(t, 100, 30*time.Second) {
		got[it.ID]++
	}
	for _, id := range ids {
		assert.Equal(t, 2, got[id], "call %s: start and end once each", id)
	}

	// Without it: one error line, then the connection is closed.
	for _, first := range []string{
		`{"method":"hello","payload":{"protocol":1,"token":"integration-token-wrong-00000"}}`,
		StartLine("e/tcp", "sneaky", 10),
	} {
		bad := dialTCP(t, addr)
		r := bad.Call(t, first)
		assert.False(t, r.Success)
		assert.Equal(t, "forbidden", r.Code)
		require.NoError(t, bad.Conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		_, err := bad.r.ReadByte()
		assert.Error(t, err, "the connection stays open after a rejection")
	}
	st := Dial(t, s.Socket).Stats(t)
	rejected, _ := st["rejected_connections"].(map[string]any)
	assert.Equal(t, float64(1), rejected["bad_token"])
	assert.Equal(t, float64(1), rejected["no_token"])
	assert.Equal(t, float64(0), rejected["peer_uid"])
	assert.Equal(t, float64(100), st["accepted"], "a rejected connection's call was accepted")

	// Neither secret is in argv or the log.
	if runtime.GOOS == "linux" {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.Cmd.Process.Pid))
		require.NoError(t, err)
		assert.NotContains(t, string(cmdline), TestKey)
		assert.NotContains(t, string(cmdline), tcpToken)
	}

	s.Signal(t, syscall.SIGTERM)
	assert.Equal(t, 0, s.Wait(t, 30*time.Second))
	_, err := os.Stat(ready)
	assert.True(t, os.IsNotExist(err), "the ready file outlives the sidecar")
	assert.NotContains(t, s.Logs(), TestKey)
	assert.NotContains(t, s.Logs(), tcpToken)
	assert.NotContains(t, s.Logs(), "integration-token-wrong")
}

func TestTCPRefusesOtherHostsAndMissingToken(t *testing.T) {
	b := NewBackend(t)
	for _, tc := range []struct {
		name string
		addr string
		env  []string
		want string
	}{
		{"any address", "0.0.0.0:0", []string{"WEAVE_SIDECAR_TOKEN=" + tcpToken}, "the host must be 127.0.0.1"},
		{"no token", "127.0.0.1:0", nil, "WEAVE_SIDECAR_TOKEN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := StartSidecar(t, b.URL, Options{Args: []string{"--listen-tcp", tc.addr}, Env: tc.env, NoWait: true})
			assert.Equal(t, 2, s.Wait(t, 30*time.Second))
			assert.Contains(t, s.Logs(), tc.want)
			assert.NotContains(t, s.Logs(), tcpToken)
		})
	}
}
