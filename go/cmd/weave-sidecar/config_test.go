package main

import (
	"bytes"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, cfg config)
	}{
		{"defaults", []string{"--backend", "http://127.0.0.1:9"}, nil, func(t *testing.T, cfg config) {
			assert.Equal(t, "/tmp/weave_sidecar.sock", cfg.Socket)
			assert.Equal(t, time.Second, cfg.FlushInterval)
			assert.Equal(t, 2000, cfg.FlushMaxCount)
			assert.Equal(t, 10485760, cfg.FlushMaxBytes)
			assert.Equal(t, 30*time.Second, cfg.RequestTimeout)
			assert.Equal(t, int64(256<<20), cfg.MaxQueueBytes)
			assert.Equal(t, slog.LevelInfo, cfg.LogLevel)
			assert.Empty(t, cfg.SpoolDir, "the spool is off by default")
			assert.Equal(t, int64(1<<30), cfg.SpoolMaxBytes)
		}},
		{"spool from the environment", []string{"--backend", "http://h"}, map[string]string{
			"WEAVE_SIDECAR_SPOOL_DIR": "/var/tmp/wsc", "WEAVE_SIDECAR_SPOOL_MAX_BYTES": "1048576",
		}, func(t *testing.T, cfg config) {
			assert.Equal(t, "/var/tmp/wsc", cfg.SpoolDir)
			assert.Equal(t, int64(1<<20), cfg.SpoolMaxBytes)
		}},
		{"env fills unset flags", []string{"--flush-max-count", "7"}, map[string]string{
			"WEAVE_SIDECAR_BACKEND": "https://h.example/p", "WEAVE_SIDECAR_FLUSH_MAX_COUNT": "9",
			"WEAVE_SIDECAR_FLUSH_INTERVAL": "250ms", "WEAVE_SIDECAR_API_KEY": "k",
			"WEAVE_SIDECAR_EXIT_ON_STDIN_EOF": "yes", "WEAVE_SIDECAR_PARENT_PID": "42",
			"WEAVE_SIDECAR_LOG_LEVEL": "debug",
		}, func(t *testing.T, cfg config) {
			assert.Equal(t, "https://h.example/p", cfg.Backend)
			assert.Equal(t, 7, cfg.FlushMaxCount, "the flag wins")
			assert.Equal(t, 250*time.Millisecond, cfg.FlushInterval)
			assert.Equal(t, "k", cfg.APIKey)
			assert.Equal(t, "WEAVE_SIDECAR_API_KEY", cfg.APIKeySource)
			assert.True(t, cfg.ExitOnStdinEOF)
			assert.Equal(t, 42, cfg.ParentPID)
			assert.Equal(t, slog.LevelDebug, cfg.LogLevel)
		}},
		{"key on the command line", []string{"--backend", "http://h", "--api-key", "k"},
			map[string]string{"WEAVE_SIDECAR_API_KEY": "other"}, func(t *testing.T, cfg config) {
				assert.Equal(t, "k", cfg.APIKey)
				assert.Equal(t, "flag", cfg.APIKeySource)
			}},
		{"seconds as numbers", []string{"--backend", "http://h", "--shutdown-timeout", "2.5", "--request-timeout", "3"}, nil,
			func(t *testing.T, cfg config) {
				assert.Equal(t, 2500*time.Millisecond, cfg.ShutdownTimeout)
				assert.Equal(t, 3*time.Second, cfg.RequestTimeout)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
			require.NoError(t, err)
			tc.check(t, cfg)
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no backend", nil, nil, "--backend is required"},
		{"backend not http", []string{"--backend", "ftp://h"}, nil, "http or https"},
		{"zero interval", []string{"--backend", "http://h", "--flush-interval", "0s"}, nil, "--flush-interval must be positive"},
		{"bad duration", []string{"--backend", "http://h", "--flush-interval", "soon"}, nil, "want a duration"},
		{"bad level", []string{"--backend", "http://h", "--log-level", "loud"}, nil, "debug, info, warn or error"},
		{"bad env names the variable, not the value", []string{"--backend", "http://h"},
			map[string]string{"WEAVE_SIDECAR_MAX_QUEUE_BYTES": "s3cret"}, "WEAVE_SIDECAR_MAX_QUEUE_BYTES"},
		{"positional", []string{"--backend", "http://h", "x"}, nil, `unexpected argument "x"`},
		{"zero spool bytes", []string{"--backend", "http://h", "--spool-max-bytes", "0"}, nil, "--spool-max-bytes must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
			require.Error(t, err)
			var ue usageError
			assert.ErrorAs(t, err, &ue)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "s3cret")
		})
	}
}

func TestHelpNeverShowsEnvKey(t *testing.T) {
	var out bytes.Buffer
	env := map[string]string{"WEAVE_SIDECAR_API_KEY": "s3cret-key", "WANDB_API_KEY": "s3cret-key"}
	err := run([]string{"-help"}, func(k string) string { return env[k] }, nil, &out, &out)
	assert.ErrorIs(t, err, flagHelp)
	assert.Contains(t, out.String(), "--backend")
	assert.Contains(t, out.String(), "WEAVE_SIDECAR_")
	assert.NotContains(t, out.String(), "s3cret")
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run([]string{"--version"}, func(string) string { return "" }, nil, &out, &out))
	assert.Equal(t, "weave-sidecar dev\n", out.String())
}

func TestPublicBackend(t *testing.T) {
	u, host := publicBackend("https://user:pw@trace.example:8443/prefix/")
	assert.Equal(t, "https://trace.example:8443/prefix/", u)
	assert.Equal(t, "trace.example:8443", host)
}

// A bad flag is reported once, by main, with a pointer to --help.
func TestBadFlagReportedOnce(t *testing.T) {
	for _, args := range [][]string{{"--bogus"}, {"status", "--bogus"}} {
		var out bytes.Buffer
		err := run(args, func(string) string { return "" }, nil, &out, &out)
		var ue usageError
		require.ErrorAs(t, err, &ue, "%v", args)
		assert.Contains(t, err.Error(), "flag provided but not defined: -bogus", "%v", args)
		assert.Contains(t, err.Error(), "--help", "%v", args)
		assert.Empty(t, out.String(), "%v: nothing printed besides main's one line", args)
	}
}
