// Command soak overloads a weave-sidecar and reports its peak resident
// memory against --max-queue-bytes (issue 5, "Overload").
//
// It starts a loopback trace server that is down (503 to everything) or
// slow (reads request bodies at --backend-rate), starts the sidecar against
// it, and has --clients connections push call_start lines as fast as the
// sidecar answers, far more than the backend takes. Meanwhile it samples the
// sidecar's VmRSS, and a probe connection times single queue_full answers to
// show that a full queue refuses at once instead of blocking. At the end it
// prints VmHWM (peak RSS) from /proc/<pid>/status. Linux only.
//
//	go run ./cmd/soak --sidecar PATH --backend-mode down,slow
//
// Without --sidecar it builds ./cmd/weave-sidecar into a temporary directory.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	sidecar       string
	modes         string
	duration      time.Duration
	clients       int
	pad           int
	maxQueueBytes int64
	backendRate   int64
	sidecarEnv    envList
}

// envList collects repeated KEY=VALUE flags.
type envList []string

func (e *envList) String() string      { return strings.Join(*e, " ") }
func (e *envList) Set(kv string) error { *e = append(*e, kv); return nil }

func main() {
	var o options
	flag.StringVar(&o.sidecar, "sidecar", "", "weave-sidecar binary (default: build ./cmd/weave-sidecar)")
	flag.StringVar(&o.modes, "backend-mode", "down,slow", "comma-separated: down (503 to everything), slow (reads at --backend-rate)")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long the clients push, per mode")
	flag.IntVar(&o.clients, "clients", 8, "connections pushing calls")
	flag.IntVar(&o.pad, "pad", 1024, "bytes of inputs padding per call")
	flag.Int64Var(&o.maxQueueBytes, "max-queue-bytes", 64<<20, "passed to the sidecar")
	flag.Int64Var(&o.backendRate, "backend-rate", 1<<20, "request body bytes per second the slow backend reads")
	flag.Var(&o.sidecarEnv, "sidecar-env", "extra KEY=VALUE for the sidecar's environment, e.g. GOMEMLIMIT=96MiB (repeatable)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	dir, err := os.MkdirTemp("/tmp", "wsc-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if o.sidecar == "" {
		o.sidecar = filepath.Join(dir, "weave-sidecar")
		build := exec.Command("go", "build", "-o", o.sidecar, "./cmd/weave-sidecar")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build (run from the go/ directory or pass --sidecar): %w", err)
		}
	}
	fmt.Printf("soak: %d clients, %d-byte padding, %v per mode, --max-queue-bytes %d (%.0f MiB), sidecar env %q\n",
		o.clients, o.pad, o.duration, o.maxQueueBytes, mib(o.maxQueueBytes), o.sidecarEnv.String())
	for _, mode := range strings.Split(o.modes, ",") {
		if err := soak(o, dir, strings.TrimSpace(mode)); err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
	}
	return nil
}

// backend is the loopback trace server; it counts the body bytes it
// accepted (answered 200).
type backend struct {
	mode  string
	rate  int64
	taken atomic.Int64
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	buf := make([]byte, 32<<10)
	var body int64
	for {
		start := time.Now()
		n, err := r.Body.Read(buf)
		body += int64(n)
		if b.mode == "slow" && n > 0 {
			time.Sleep(time.Duration(int64(n)*int64(time.Second)/b.rate) - time.Since(start))
		}
		if err != nil {
			break
		}
	}
	if b.mode == "down" {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	b.taken.Add(body)
	io.WriteString(w, `{"res":[]}`)
}

// tally counts what the pushing clients sent and how it was answered.
type tally struct {
	sent, accepted, refused, otherErr atomic.Int64
	bytes                             atomic.Int64
}

func soak(o options, dir, mode string) error {
	if mode != "down" && mode != "slow" {
		return errors.New("unknown backend mode (want down or slow)")
	}
	be := &backend{mode: mode, rate: o.backendRate}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: be}
	go hs.Serve(ln)
	defer hs.Close()

	socket := filepath.Join(dir, "s-"+mode)
	cmd := exec.Command(o.sidecar, "--socket", socket, "--backend", "http://"+ln.Addr().String(),
		"--max-queue-bytes", strconv.FormatInt(o.maxQueueBytes, 10), "--shutdown-timeout", "1s",
		"--log-level", "error")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "WANDB_API_KEY=soak-key-not-secret"},
		o.sidecarEnv...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	if err := waitSocket(socket, 10*time.Second); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	baseline, _ := procStatus(pid, "VmRSS")

	// Sample VmRSS while the clients push.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var peakSampled int64
	wg.Go(func() {
		for {
			if rss, err := procStatus(pid, "VmRSS"); err == nil {
				peakSampled = max(peakSampled, rss)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	var t tally
	for c := range o.clients {
		wg.Go(func() { push(socket, fmt.Sprintf("%s-%d", mode, c), o.pad, stop, &t) })
	}
	probed := make(chan []time.Duration, 1)
	go func() { probed <- probe(socket, o.pad, o.duration/2, stop) }()
	time.Sleep(o.duration)
	close(stop)
	wg.Wait()
	probeLat := <-probed

	hwm, err := procStatus(pid, "VmHWM")
	if err != nil {
		return err
	}
	queued, err := queuedBytes(socket)
	if err != nil {
		return err
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()

	secs := o.duration.Seconds()
	offered := float64(t.bytes.Load()) / secs
	taken := float64(be.taken.Load()) / secs
	fmt.Printf("\nbackend %s", mode)
	if mode == "slow" {
		fmt.Printf(" (reads %.1f MiB/s)", mib(o.backendRate))
	}
	fmt.Printf(":\n  offered      %8.1f MiB/s of calls (%d lines: %d accepted, %d queue_full, %d other)\n",
		mib(int64(offered)), t.sent.Load(), t.accepted.Load(), t.refused.Load(), t.otherErr.Load())
	if taken > 0 {
		fmt.Printf("  backend took %8.2f MiB/s of request bodies (offered / taken = %.0fx)\n", mib(int64(taken)), offered/taken)
	} else {
		fmt.Printf("  backend took        0 MiB/s (every request answered 503)\n")
	}
	fmt.Printf("  queued at end %7.1f MiB (limit %.1f MiB)\n", mib(queued), mib(o.maxQueueBytes))
	fmt.Printf("  RSS at start  %7.1f MiB; peak sampled %.1f MiB; VmHWM %.1f MiB = limit + %.1f MiB\n",
		mib(baseline), mib(peakSampled), mib(hwm), mib(hwm-o.maxQueueBytes))
	if len(probeLat) > 0 {
		slices.Sort(probeLat)
		q := func(p float64) time.Duration { return probeLat[int(p*float64(len(probeLat)-1))] }
		fmt.Printf("  queue_full answer to a single call: p50 %v, p99 %v, max %v (%d probes)\n",
			q(0.5).Round(time.Microsecond), q(0.99).Round(time.Microsecond), q(1).Round(time.Microsecond), len(probeLat))
	}
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func waitSocket(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecar not listening after %v: %w", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStatus returns a "kB" field of /proc/pid/status in bytes.
func procStatus(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func startLine(id string, pad int) string {
	return fmt.Sprintf(`{"method":"call_start","payload":{"start":{"project_id":"soak/overload","id":%q,`+
		`"trace_id":%q,"op_name":"weave:///soak/overload/op/f:0","started_at":"2025-01-02T03:04:05.123456",`+
		`"attributes":{},"inputs":{"pad":%q}}}}`+"\n", id, id, strings.Repeat("x", pad))
}

// push writes call_start lines on one connection until stop closes, while
// a reader counts the answers.
func push(socket, prefix string, pad int, stop <-chan struct{}, t *tally) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.otherErr.Add(1)
		return
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReaderSize(conn, 1<<16)
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return
			}
			switch {
			case strings.Contains(string(line), `"success":true`):
				t.accepted.Add(1)
			case strings.Contains(string(line), `"queue_full"`):
				t.refused.Add(1)
			default:
				t.otherErr.Add(1)
			}
		}
	}()
	w := bufio.NewWriterSize(conn, 1<<16)
	for i := 0; ; i++ {
		select {
		case <-stop:
			w.Flush()
			conn.(*net.UnixConn).CloseWrite()
			<-done
			return
		default:
		}
		line := startLine(fmt.Sprintf("%s-%d", prefix, i), pad)
		if _, err := w.WriteString(line); err != nil {
			return
		}
		t.sent.Add(1)
		t.bytes.Add(int64(len(line)))
	}
}

// probe waits until the queue is full, then times single calls answered
// queue_full on its own connection until stop closes.
func probe(socket string, pad int, settle time.Duration, stop <-chan struct{}) []time.Duration {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return nil
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	time.Sleep(settle)
	var lat []time.Duration
	for i := 0; ; i++ {
		select {
		case <-stop:
			return lat
		default:
		}
		start := time.Now()
		conn.SetDeadline(start.Add(10 * time.Second)) // a blocked intake ends the probe
		if _, err := io.WriteString(conn, startLine(fmt.Sprintf("probe-%d", i), pad)); err != nil {
			return lat
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return lat
		}
		if strings.Contains(line, `"queue_full"`) {
			lat = append(lat, time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// queuedBytes asks the sidecar for its queued_bytes.
func queuedBytes(socket string) (int64, error) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, `{"method":"stats"}`+"\n"); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return 0, err
	}
	var resp struct {
		Result struct {
			QueuedBytes int64 `json:"queued_bytes"`
		} `json:"result"`
	}
	return resp.Result.QueuedBytes, json.Unmarshal(line, &resp)
}
