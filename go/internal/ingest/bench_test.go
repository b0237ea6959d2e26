package ingest

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// discard is a Sender that delivers instantly, so benchmarks measure intake.
type discard struct{}

func (discard) Send(_ context.Context, items []backend.Item) backend.Report {
	return backend.Report{Delivered: len(items), Requests: 1}
}

// startBench serves on a fresh socket with a discarding sender.
func startBench(b testing.TB) string {
	b.Helper()
	st := &stats.Stats{}
	bt, err := batch.New(batch.Config{Sender: discard{}, FlushInterval: time.Second, MaxCount: 2000,
		MaxBytes: 10 << 20, MaxQueueBytes: 1 << 30, Stats: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(shortDirB(b), "s")
	ln, err := Listen(path)
	if err != nil {
		b.Fatal(err)
	}
	srv := New(Config{Batcher: bt, Stats: st, Hello: []byte(`{}`), Logger: slog.New(slog.DiscardHandler)})
	srv.Serve(ln)
	b.Cleanup(func() {
		srv.Close()
		bt.Close(context.Background())
	})
	return path
}

func shortDirB(b testing.TB) string {
	b.Helper()
	dir := b.TempDir()
	if len(dir) > 80 {
		dir = "/tmp"
	}
	return dir
}

// callLine is a call_start request of about size bytes.
func callLine(i, size int) []byte {
	head := fmt.Sprintf(`{"method":"call_start","payload":{"start":{"project_id":"ent/bench","id":"call-%08d",`+
		`"trace_id":"trace-%08d","op_name":"weave:///ent/bench/op/f:0","started_at":"2025-01-02T03:04:05.123456",`+
		`"attributes":{},"inputs":{"x":"`, i, i)
	tail := `"}}}}` + "\n"
	return []byte(head + strings.Repeat("a", max(0, size-len(head)-len(tail))) + tail)
}

const chunk = 64 // calls per benchmark iteration

// BenchmarkIngest measures pipelined call_start intake over the Unix
// socket: each iteration is chunk 1 KiB calls acked, on 1 or 8 connections.
func BenchmarkIngest(b *testing.B) {
	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) { benchIngest(b, conns) })
	}
}

func benchIngest(b *testing.B, conns int) {
	path := startBench(b)
	var payload []byte
	for i := range chunk {
		payload = append(payload, callLine(i, 1024)...)
	}

	const window = 8 // chunks in flight per connection
	done := make(chan int, conns*window)
	tokens := make([]chan struct{}, conns)
	for k := range conns {
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		tokens[k] = make(chan struct{}, window)
		go func() { // writer
			for range tokens[k] {
				if _, err := c.Write(payload); err != nil {
					return
				}
			}
		}()
		go func() { // reader
			r := bufio.NewReaderSize(c, 64<<10)
			for {
				for range chunk {
					line, err := r.ReadSlice('\n')
					if err != nil {
						return
					}
					if line[len(line)-3] == 'e' { // `"success":false...` never ends like an ack
						panic("refused: " + string(line))
					}
				}
				done <- k
			}
		}()
		for range window {
			tokens[k] <- struct{}{}
		}
	}

	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	start, cpu0 := time.Now(), cpuTime()
	n := 0
	for b.Loop() {
		k := <-done
		tokens[k] <- struct{}{}
		n++
	}
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	runtime.ReadMemStats(&ms1)
	calls := float64(n * chunk)
	b.ReportMetric(calls/elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/calls, "allocs/call")
	b.ReportMetric(float64(cpu.Nanoseconds())/calls, "cpu-ns/call")
	for k := range conns {
		close(tokens[k])
	}
	// Drain what is still in flight so the server is idle at cleanup.
	for range conns * window {
		<-done
	}
}

// BenchmarkAckLatency paces 1 KiB call_starts at 20k calls/s on one
// connection and reports ack latency percentiles: from just before a line
// is written to when its ack has been read. The sender spins on the clock
// between lines, because time.Sleep oversleeps by more than the 50 µs gap.
// calls/s is the rate reached; it stays at 20k unless the machine stalls.
func BenchmarkAckLatency(b *testing.B) {
	measureAckLatency(b, startBench(b), 50*time.Microsecond, true)
}

// measureAckLatency sends one 1 KiB call_start per gap on one connection to
// the sidecar at path and reports the rate reached and ack latency
// percentiles, from just before a line is written to when its ack has been
// read. With spin the sender busy-waits between lines (time.Sleep
// oversleeps short gaps); otherwise it sleeps.
func measureAckLatency(b *testing.B, path string, gap time.Duration, spin bool) {
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	line := callLine(0, 1024)

	sent := make(chan time.Time, 1<<16)
	lat := make([]time.Duration, 0, 1<<16)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		r := bufio.NewReaderSize(c, 64<<10)
		for t0 := range sent {
			if _, err := r.ReadSlice('\n'); err != nil {
				return
			}
			lat = append(lat, time.Since(t0))
		}
	}()

	b.ReportAllocs()
	start := time.Now()
	next := start
	for b.Loop() {
		if spin {
			for time.Now().Before(next) {
			}
		} else if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		now := time.Now()
		if _, err := c.Write(line); err != nil {
			b.Fatal(err)
		}
		sent <- now
		next = next.Add(gap)
		if now.Sub(next) > 40*gap { // far behind (a stall): do not burst to catch up
			next = now
		}
	}
	elapsed := time.Since(start)
	close(sent)
	<-readerDone
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(0.999), "p99.9-µs")
}

// cpuTime is the CPU time this process has used, client goroutines
// included. On a shared machine it varies less than wall time, which also
// counts the time other work held the CPU.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
