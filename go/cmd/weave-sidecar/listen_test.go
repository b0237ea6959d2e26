package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
	"github.com/weave-sidecar/weave-sidecar/go/internal/ingest"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

const tcpToken = "tcp-token-0123456789abcdef"

func TestParseConfigTCP(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		wantSocket string
		wantTCP    string
	}{
		{"tcp only", []string{"--listen-tcp", "127.0.0.1:0"}, nil, "", "127.0.0.1:0"},
		{"tcp from env", nil, map[string]string{"WEAVE_SIDECAR_LISTEN_TCP": "127.0.0.1:8765"}, "", "127.0.0.1:8765"},
		{"tcp and socket flag", []string{"--listen-tcp", "127.0.0.1:0", "--socket", "/tmp/x.sock"}, nil,
			"/tmp/x.sock", "127.0.0.1:0"},
		{"tcp and socket env", []string{"--listen-tcp", "127.0.0.1:0"}, map[string]string{"WEAVE_SIDECAR_SOCKET": "/tmp/y.sock"},
			"/tmp/y.sock", "127.0.0.1:0"},
		{"no tcp", nil, nil, "/tmp/weave_sidecar.sock", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"WEAVE_SIDECAR_BACKEND": "http://127.0.0.1:9", "WEAVE_SIDECAR_TOKEN": tcpToken}
			for k, v := range tc.env {
				env[k] = v
			}
			cfg, err := parseConfig(tc.args, func(k string) string { return env[k] }, &bytes.Buffer{})
			require.NoError(t, err)
			assert.Equal(t, tc.wantSocket, cfg.Socket)
			assert.Equal(t, tc.wantTCP, cfg.ListenTCP)
			assert.Equal(t, tcpToken, cfg.Token.Reveal())
			assert.NotContains(t, fmt.Sprintf("%+v %#v", cfg, cfg), tcpToken, "the config prints its token")
		})
	}
}

func TestParseConfigTCPErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		token string
		want  string
	}{
		{"no token", []string{"--listen-tcp", "127.0.0.1:0"}, "", "needs a random token of at least 16 bytes in WEAVE_SIDECAR_TOKEN"},
		{"short token", []string{"--listen-tcp", "127.0.0.1:0"}, "tooshort-123", "at least 16 bytes"},
		{"any address", []string{"--listen-tcp", "0.0.0.0:0"}, tcpToken, "the host must be 127.0.0.1"},
		{"hostname", []string{"--listen-tcp", "localhost:0"}, tcpToken, "the host must be 127.0.0.1"},
		{"no port", []string{"--listen-tcp", "127.0.0.1"}, tcpToken, "want 127.0.0.1:PORT"},
		{"nothing to listen on", []string{"--socket", ""}, tcpToken, "nothing to listen on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"WEAVE_SIDECAR_BACKEND": "http://127.0.0.1:9", "WEAVE_SIDECAR_TOKEN": tc.token}
			_, err := parseConfig(tc.args, func(k string) string { return env[k] }, &bytes.Buffer{})
			require.Error(t, err)
			var ue usageError
			assert.ErrorAs(t, err, &ue)
			assert.Contains(t, err.Error(), tc.want)
			if tc.token != "" {
				assert.NotContains(t, err.Error(), tc.token)
			}
		})
	}
}

func TestHelpShowsNoToken(t *testing.T) {
	var out bytes.Buffer
	env := map[string]string{"WEAVE_SIDECAR_TOKEN": tcpToken, "WEAVE_SIDECAR_LISTEN_TCP": "127.0.0.1:0"}
	_, err := parseConfig([]string{"--help"}, func(k string) string { return env[k] }, &out)
	require.Error(t, err)
	assert.Contains(t, out.String(), "-listen-tcp")
	assert.Contains(t, out.String(), "WEAVE_SIDECAR_TOKEN")
	assert.NotContains(t, out.String(), tcpToken)
}

func TestWriteReadyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ready")
	require.NoError(t, writeReadyFile(path, readyInfo{PID: 42, TCP: "127.0.0.1:5555"}))
	// A second write replaces the first whole.
	require.NoError(t, writeReadyFile(path, readyInfo{PID: 43, Unix: "/tmp/s"}))

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.JSONEq(t, `{"pid":43,"unix":"/tmp/s"}`, string(data))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	_, err = os.Stat(path + ".tmp")
	assert.True(t, os.IsNotExist(err), "the temporary file is left behind")

	err = writeReadyFile(filepath.Join(dir, "missing", "ready"), readyInfo{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ready file")
}

func TestListenBoth(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "wsl-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := config{Socket: filepath.Join(dir, "s"), ListenTCP: "127.0.0.1:0", Token: auth.NewSecret(tcpToken),
		ReadyFile: filepath.Join(dir, "ready")}
	srv := ingest.New(ingest.Config{Stats: &stats.Stats{}, Token: cfg.Token})
	t.Cleanup(srv.Close)

	info, err := listen(cfg, srv)
	require.NoError(t, err)
	data, err := os.ReadFile(cfg.ReadyFile)
	require.NoError(t, err)
	var got readyInfo
	require.NoError(t, json.Unmarshal(data, &got))
	assert.Equal(t, info, got)
	assert.Equal(t, os.Getpid(), got.PID)
	assert.Equal(t, cfg.Socket, got.Unix)
	host, port, err := net.SplitHostPort(got.TCP)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", host)
	assert.NotEqual(t, "0", port, "the ready file holds the chosen port")
}
