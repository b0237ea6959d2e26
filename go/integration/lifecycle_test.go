package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const lifeProject = "ent/lifecycle"

// sendCalls sends n call_starts on c and requires every ack.
func sendCalls(t *testing.T, c *Client, prefix string, n int) {
	t.Helper()
	lines := make([]string, n)
	for i := range lines {
		lines[i] = StartLine(lifeProject, fmt.Sprintf("%s-%d", prefix, i), 100)
	}
	c.Send(t, lines...)
	for _, r := range c.ReadN(t, n) {
		require.True(t, r.Success, r.Raw)
	}
}

func TestSIGTERMDeliversAckedCalls(t *testing.T) {
	be := NewBackend(t)
	// Nothing is sent before the signal: no interval, count or byte trigger.
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--flush-interval", "1h", "--flush-max-count", "100000"}})
	c := Dial(t, sc.Socket)
	sendCalls(t, c, "term", 2000)
	require.Empty(t, be.Requests())

	sc.Signal(t, syscall.SIGTERM)
	assert.Equal(t, 0, sc.Wait(t, 30*time.Second))
	items := be.Delivered()
	assert.Len(t, items, 2000)
	for i, it := range items {
		assert.Equal(t, fmt.Sprintf("term-%d", i), it.ID)
	}
	_, err := os.Stat(sc.Socket)
	assert.ErrorIs(t, err, os.ErrNotExist, "socket removed at exit")
	assert.Contains(t, sc.Logs(), `"delivered":2000`)
}

func TestShutdownBoundWithHangingBackend(t *testing.T) {
	be := NewBackend(t)
	be.Script(func(*Request) Reply { return Reply{Hang: true} })
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--shutdown-timeout", "2s", "--flush-max-count", "10"}})
	c := Dial(t, sc.Socket)
	sendCalls(t, c, "hang", 25)
	// A late flush on another connection is released by the shutdown.
	c2 := Dial(t, sc.Socket)
	c2.Send(t, `{"method":"flush"}`)

	sc.Signal(t, syscall.SIGTERM)
	// The bound is the shutdown timeout plus the short grace; allow slack for a busy machine.
	assert.Equal(t, 0, sc.Wait(t, 20*time.Second))
	logs := sc.Logs()
	assert.Contains(t, logs, `"undelivered":25`)
	assert.NotContains(t, logs, TestKey)
}

func TestNewCallsRefusedWhileDraining(t *testing.T) {
	be := NewBackend(t)
	release := make(chan struct{})
	be.Script(func(*Request) Reply {
		<-release // hold delivery so the drain lasts until the test is done
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--shutdown-timeout", "60s", "--flush-max-count", "1"}})
	c := Dial(t, sc.Socket)
	sendCalls(t, c, "drain", 1)

	sc.Signal(t, syscall.SIGTERM)
	// Calls sent during the short grace may still be accepted; once intake
	// closes, every call is answered shutting_down.
	deadline := time.Now().Add(30 * time.Second)
	accepted := 0
	for {
		r := c.Call(t, StartLine(lifeProject, fmt.Sprintf("late-%d", accepted), 10))
		if r.Code == "shutting_down" {
			break
		}
		require.True(t, r.Success, r.Raw)
		accepted++
		require.True(t, time.Now().Before(deadline), "still accepting calls after 30s of shutdown")
		time.Sleep(20 * time.Millisecond)
	}
	_, err := os.Stat(sc.Socket)
	assert.True(t, os.IsNotExist(err), "socket removed once the drain began")

	close(release)
	assert.Equal(t, 0, sc.Wait(t, 30*time.Second))
	assert.Len(t, be.Delivered(), 1+accepted, "calls accepted during the grace are delivered too")
}

func TestSocketPaths(t *testing.T) {
	be := NewBackend(t)

	t.Run("stale socket is replaced", func(t *testing.T) {
		path := filepath.Join(ShortTempDir(t), "s")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		require.NoError(t, err)
		ln.SetUnlinkOnClose(false)
		ln.Close()
		sc := StartSidecar(t, be.URL, Options{Socket: path})
		resp := Dial(t, sc.Socket).Call(t, `{"method":"hello"}`)
		assert.True(t, resp.Success)
	})

	t.Run("live socket is left alone", func(t *testing.T) {
		path := filepath.Join(ShortTempDir(t), "s")
		ln, err := net.Listen("unix", path)
		require.NoError(t, err)
		defer ln.Close()
		sc := StartSidecar(t, be.URL, Options{Socket: path, NoWait: true})
		assert.Equal(t, 1, sc.Wait(t, 10*time.Second))
		assert.Contains(t, sc.Logs(), "in use")
		c, err := net.Dial("unix", path)
		require.NoError(t, err, "the other listener still owns the path")
		c.Close()
	})

	t.Run("regular file is never deleted", func(t *testing.T) {
		path := filepath.Join(ShortTempDir(t), "s")
		require.NoError(t, os.WriteFile(path, []byte("keep me"), 0o644))
		sc := StartSidecar(t, be.URL, Options{Socket: path, NoWait: true})
		assert.Equal(t, 1, sc.Wait(t, 10*time.Second))
		assert.Contains(t, sc.Logs(), "not a socket")
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, "keep me", string(data))
	})

	t.Run("path too long", func(t *testing.T) {
		path := "/tmp/" + strings.Repeat("d", 120)
		sc := StartSidecar(t, be.URL, Options{Socket: path, NoWait: true})
		assert.Equal(t, 1, sc.Wait(t, 10*time.Second))
		assert.Contains(t, sc.Logs(), "is 125 bytes; the limit on linux is 107")
	})

	t.Run("socket mode is 0600", func(t *testing.T) {
		sc := StartSidecar(t, be.URL, Options{})
		fi, err := os.Stat(sc.Socket)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		assert.NotZero(t, fi.Mode()&os.ModeSocket)
	})
}

func TestKeyNeverLogged(t *testing.T) {
	be := NewBackend(t)
	be.Script(func(req *Request) Reply {
		if req.N == 1 {
			return Reply{Status: 401, Body: `{"message":"bad key"}`}
		}
		return Reply{}
	})
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--log-level", "debug", "--api-key", TestKey,
		"--flush-max-count", "1"}, Env: []string{"WANDB_API_KEY=other-" + TestKey}})
	c := Dial(t, sc.Socket)
	sendCalls(t, c, "key", 1)
	c.Flush(t, 30*time.Second)
	resp := c.Call(t, StartLine(lifeProject, "after-401", 10))
	assert.Equal(t, "unauthorized", resp.Code)

	sc.Signal(t, syscall.SIGTERM)
	assert.Equal(t, 0, sc.Wait(t, 30*time.Second))
	require.NotEmpty(t, be.Requests())
	assert.Contains(t, be.Requests()[0].Header.Get("Authorization"), "Basic ")
	assert.NotContains(t, sc.Logs(), TestKey)
}

func TestNoKeyExits2(t *testing.T) {
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{NoWait: true, Env: []string{"WANDB_API_KEY="}})
	assert.Equal(t, 2, sc.Wait(t, 10*time.Second))
	logs := sc.Logs()
	assert.Contains(t, logs, "--api-key")
	assert.Contains(t, logs, "WANDB_API_KEY")
	assert.Contains(t, logs, "netrc")
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no backend", Options{NoBackendFlag: true, NoWait: true}, "--backend is required"},
		{"bad env value", Options{NoWait: true, Env: []string{"WEAVE_SIDECAR_FLUSH_MAX_COUNT=many"}},
			"WEAVE_SIDECAR_FLUSH_MAX_COUNT"},
		{"positional argument", Options{NoWait: true, Args: []string{"extra"}}, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := StartSidecar(t, "http://127.0.0.1:1", tc.opts)
			assert.Equal(t, 2, sc.Wait(t, 10*time.Second))
			assert.Contains(t, sc.Logs(), tc.want)
		})
	}
}

func TestStdinEOFDrainsAndExits(t *testing.T) {
	be := NewBackend(t)
	sc := StartSidecar(t, be.URL, Options{Stdin: true, Env: []string{"WEAVE_SIDECAR_EXIT_ON_STDIN_EOF=true"},
		Args: []string{"--flush-interval", "1h"}})
	c := Dial(t, sc.Socket)
	sendCalls(t, c, "stdin", 50)
	require.NoError(t, sc.Stdin.Close())
	assert.Equal(t, 0, sc.Wait(t, 30*time.Second))
	assert.Len(t, be.Delivered(), 50)
	assert.Contains(t, sc.Logs(), "stdin closed")
}

func TestParentGoneDrainsAndExits(t *testing.T) {
	be := NewBackend(t)
	parent := exec.Command("sleep", "300")
	require.NoError(t, parent.Start())
	t.Cleanup(func() { parent.Process.Kill(); parent.Wait() })

	sc := StartSidecar(t, be.URL, Options{Args: []string{"--parent-pid", fmt.Sprint(parent.Process.Pid),
		"--flush-interval", "1h"}})
	c := Dial(t, sc.Socket)
	sendCalls(t, c, "parent", 20)
	require.NoError(t, parent.Process.Kill())
	parent.Wait() // reap it, or it lingers as a zombie that still answers kill(0)
	assert.Equal(t, 0, sc.Wait(t, 30*time.Second))
	assert.Len(t, be.Delivered(), 20)
	assert.Contains(t, sc.Logs(), "parent process exited")
}

func TestBackendCredentialsNotShown(t *testing.T) {
	be := NewBackend(t)
	withUser := strings.Replace(be.URL, "http://", "http://user:pw-secret@", 1)
	sc := StartSidecar(t, withUser, Options{})
	resp := Dial(t, sc.Socket).Call(t, `{"method":"hello"}`)
	require.True(t, resp.Success)
	assert.NotContains(t, string(resp.Result), "pw-secret")
	assert.Contains(t, string(resp.Result), be.URL)
	assert.NotContains(t, sc.Logs(), "pw-secret")
}

// TestSIGTERMDuringOutageBackoff: a batch held by an outage waits out an
// hour-long backoff when the backend comes back and SIGTERM arrives. The
// drain must end that wait and deliver, not sleep out --shutdown-timeout.
// While the outage lasts, the request and retry counters move.
func TestSIGTERMDuringOutageBackoff(t *testing.T) {
	be := NewBackend(t)
	var up atomic.Bool
	var afterUp atomic.Int32
	be.Script(func(req *Request) Reply {
		switch {
		case up.Load() && afterUp.Add(1) > 2: // back, after two more failures
			return Reply{}
		case req.N <= 3 && !up.Load(): // quick retries first, so retries move
			return Reply{Status: 503}
		default: // then a wait of an hour
			return Reply{Status: 503, Header: map[string]string{"Retry-After": "3600"}}
		}
	})
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--shutdown-timeout", "20s", "--flush-max-count", "10",
		"--metrics-addr", "127.0.0.1:0"}})
	metricsURL := "http://" + metricsAddr(t, sc) + "/metrics"
	sendCalls(t, Dial(t, sc.Socket), "outage", 10)

	// Counted per attempt, while the batch is still undelivered.
	deadline := time.Now().Add(60 * time.Second)
	var st map[string]any
	for {
		st = statsNow(t, sc)
		if statsNum(t, st, "http_requests") >= 4 {
			break
		}
		require.True(t, time.Now().Before(deadline), "stats during the outage: %v", st)
		time.Sleep(20 * time.Millisecond)
	}
	// The fourth answer asked for an hour: the counts stand still and match
	// the backend's, each attempt counted once.
	assert.Zero(t, statsNum(t, st, "delivered"))
	assert.Equal(t, int64(4), statsNum(t, st, "http_requests"))
	assert.Equal(t, int64(3), statsNum(t, st, "retries"))
	assert.Len(t, be.Requests(), 4)
	_, text := httpGet(t, metricsURL)
	assert.Equal(t, 4.0, scrapeValue(text, "weave_sidecar_backend_requests_total"))
	assert.Equal(t, 3.0, scrapeValue(text, "weave_sidecar_backend_retries_total"))

	up.Store(true)
	sc.Signal(t, syscall.SIGTERM)
	assert.Equal(t, 0, sc.Wait(t, 60*time.Second))
	assert.Len(t, be.Delivered(), 10)
	logs := sc.Logs()
	assert.Contains(t, logs, `"delivered":10,"dropped":0,"undelivered":0`)
	assert.Contains(t, logs, "backend reachable again")
}

// A second SIGTERM during the drain exits at once, saying how many calls
// it gives up.
func TestSecondSignalDuringDrain(t *testing.T) {
	be := NewBackend(t)
	be.Script(func(*Request) Reply { return Reply{Hang: true} })
	sc := StartSidecar(t, be.URL, Options{Args: []string{"--shutdown-timeout", "5m", "--flush-max-count", "2"}})
	sendCalls(t, Dial(t, sc.Socket), "twice", 5)

	sc.Signal(t, syscall.SIGTERM)
	waitLog(t, sc, `"msg":"shutting down"`)
	sc.Signal(t, syscall.SIGTERM)
	assert.Equal(t, 128+int(syscall.SIGTERM), sc.Wait(t, 60*time.Second))
	assert.Contains(t, sc.Logs(), `"msg":"second signal: exiting without finishing the drain","signal":"terminated","abandoned":5`)
}
