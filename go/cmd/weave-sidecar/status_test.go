package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeSidecar answers each request line on a Unix socket with the result
// for its method from results, or with a refusal.
func fakeSidecar(t *testing.T, results map[string]string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "wsc-st-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var req struct {
						ID     json.RawMessage `json:"id"`
						Method string          `json:"method"`
					}
					_ = json.Unmarshal(sc.Bytes(), &req)
					res, ok := results[req.Method]
					if !ok {
						c.Write([]byte(`{"id":` + string(req.ID) + `,"success":false,"code":"unknown_method","error":"no"}` + "\n"))
						continue
					}
					c.Write([]byte(`{"id":` + string(req.ID) + `,"success":true,"result":` + res + "}\n"))
				}
			}()
		}
	}()
	return path
}

const testHello = `{"name":"weave-sidecar","version":"1.2.3","protocol":1,"pid":4242,"backend":"http://127.0.0.1:9/t"}`

func TestStatusReport(t *testing.T) {
	socket := fakeSidecar(t, map[string]string{
		"hello": testHello,
		"stats": `{"received":12,"accepted":10,"refused":{"invalid_request":1,"queue_full":1,"unknown_method":0},` +
			`"delivered":7,"failed":{"rejected":1,"shutdown":0},"queued_items":2,"queued_bytes":1536,` +
			`"in_flight_items":0,"batches":3,"http_requests":4,"retries":1,"connections":1,"brand_new_counter":5}`,
	})
	var out, errOut bytes.Buffer
	err := run([]string{"status", "--socket", socket}, func(string) string { return "" }, nil, &out, &errOut)
	require.NoError(t, err, errOut.String())

	want := "weave-sidecar 1.2.3, pid 4242, protocol 1\n" +
		"  socket   " + socket + "\n" +
		"  backend  http://127.0.0.1:9/t\n" +
		"\ncalls\n" +
		"  accepted           10\n" +
		"  delivered          7\n" +
		"  failed             1 (rejected 1)\n" +
		"  queued             2\n" +
		"  queued bytes       1.5 KiB\n" +
		"  in flight          0\n" +
		"\nrequests\n" +
		"  lines received     12\n" +
		"  refused            2 (invalid_request 1, queue_full 1)\n" +
		"\nbackend\n" +
		"  batches            3\n" +
		"  http requests      4\n" +
		"  retries            1\n" +
		"\nconnections\n" +
		"  open               1\n" +
		"\nother\n" +
		"  brand new counter  5\n"
	assert.Equal(t, want, out.String())
}

func TestStatusSpool(t *testing.T) {
	for _, tc := range []struct {
		name, stats string
		want        []string
		absent      []string
	}{
		{"off", `{"accepted":1,"spooled_items":0,"spool_bytes":0,"spool_max_bytes":0,"replayed":0,"spool_corrupt_records":0}`,
			[]string{"\n  accepted           1\n  spool              off\n"}, []string{"spooled", "replayed", "corrupt"}},
		{"on", `{"accepted":1,"spooled_items":5,"spool_bytes":2097152,"spool_max_bytes":1073741824,"replayed":3,"spool_corrupt_records":1}`,
			[]string{"\n  spooled            5\n", "\n  spool bytes        2.0 MiB\n", "\n  spool limit        1.0 GiB\n",
				"\n  replayed at start  3\n", "\n  corrupt records    1\n"}, []string{"spool              off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := fakeSidecar(t, map[string]string{"hello": testHello, "stats": tc.stats})
			var out bytes.Buffer
			require.NoError(t, run([]string{"status", "--socket", socket}, func(string) string { return "" }, nil, &out, &out))
			for _, w := range tc.want {
				assert.Contains(t, out.String(), w)
			}
			for _, a := range tc.absent {
				assert.NotContains(t, out.String(), a)
			}
			assert.NotContains(t, out.String(), "other")
		})
	}
}

func TestStatusJSON(t *testing.T) {
	socket := fakeSidecar(t, map[string]string{"hello": testHello, "stats": `{"received":1,"accepted":0}`})
	var out bytes.Buffer
	env := map[string]string{"WEAVE_SIDECAR_SOCKET": socket}
	require.NoError(t, run([]string{"status", "--json"}, func(k string) string { return env[k] }, nil, &out, &out))
	assert.Equal(t, "{\n  \"received\": 1,\n  \"accepted\": 0\n}\n", out.String())
}

func TestStatusErrors(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "wsc-st-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	missing := filepath.Join(dir, "none")
	getenv := func(string) string { return "" }

	var out bytes.Buffer
	err = run([]string{"status", "--socket", missing, "--timeout", "1s"}, getenv, nil, &out, &out)
	require.Error(t, err)
	var ue usageError
	assert.False(t, isUsage(err, &ue), "a missing sidecar is not a usage error (exit 1)")
	assert.Contains(t, err.Error(), "no sidecar answering at "+missing)
	assert.Empty(t, out.String())

	refusing := fakeSidecar(t, map[string]string{"hello": testHello})
	err = run([]string{"status", "--socket", refusing}, getenv, nil, &out, &out)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "refused (unknown_method)")

	for _, args := range [][]string{{"status", "extra"}, {"status", "--timeout", "0"}, {"status", "--bogus"}} {
		err = run(args, getenv, nil, &out, &out)
		assert.True(t, isUsage(err, &ue), "%v: %v", args, err)
	}
	out.Reset()
	assert.ErrorIs(t, run([]string{"status", "-h"}, getenv, nil, &out, &out), flagHelp)
	assert.Contains(t, out.String(), "usage: weave-sidecar status")
	assert.Equal(t, 1, strings.Count(out.String(), defaultSocket), "the socket default is shown once:\n%s", out.String())
}

// A peer that accepts and never answers: the timeout bounds the wait.
func TestStatusTimeout(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "wsc-st-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}()
	var out bytes.Buffer
	err = run([]string{"status", "--socket", path, "--timeout", "200ms"}, func(string) string { return "" }, nil, &out, &out)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "reading the answer")
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		assert.Equal(t, want, humanBytes(n))
	}
}

func TestMetricsFlags(t *testing.T) {
	getenv := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := parseConfig([]string{"--backend", "http://h"}, getenv(nil), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, "", cfg.MetricsAddr, "off by default")
	assert.Equal(t, time.Minute, cfg.UnreadyAfter)

	for _, tc := range []struct{ flag, want string }{
		{"9464", "127.0.0.1:9464"},
		{":9464", "127.0.0.1:9464"},
		{"0.0.0.0:9464", "0.0.0.0:9464"},
	} {
		cfg, err := parseConfig([]string{"--backend", "http://h", "--metrics-addr", tc.flag}, getenv(nil), &bytes.Buffer{})
		require.NoError(t, err, tc.flag)
		assert.Equal(t, tc.want, cfg.MetricsAddr, tc.flag)
	}
	cfg, err = parseConfig([]string{"--backend", "http://h"},
		getenv(map[string]string{"WEAVE_SIDECAR_METRICS_ADDR": "9100", "WEAVE_SIDECAR_UNREADY_AFTER": "90"}), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:9100", cfg.MetricsAddr)
	assert.Equal(t, 90*time.Second, cfg.UnreadyAfter)

	for _, args := range [][]string{{"--metrics-addr", "nine"}, {"--metrics-addr", ":99999"}, {"--unready-after", "0"}} {
		_, err := parseConfig(append([]string{"--backend", "http://h"}, args...), getenv(nil), &bytes.Buffer{})
		var ue usageError
		assert.True(t, isUsage(err, &ue), "%v: %v", args, err)
		assert.True(t, strings.Contains(err.Error(), "--metrics-addr") || strings.Contains(err.Error(), "--unready-after"), err.Error())
	}
}

func isUsage(err error, ue *usageError) bool { return errors.As(err, ue) }
