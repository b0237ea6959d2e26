package ingest

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/spool"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// BenchmarkSpool measures pipelined intake with the spool on (every ack
// after an fsync), on 1 and 8 connections: each iteration is chunk 1 KiB
// calls acked. It reports calls/s, the latency from writing a chunk to
// reading its last ack, calls per fsync (the group-commit window) and the
// mean fsync time. The spool lives under /tmp, a real disk here; set
// WEAVE_SIDECAR_BENCH_SPOOL to measure another filesystem.
func BenchmarkSpool(b *testing.B) {
	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) { benchSpool(b, conns) })
	}
}

// startSpoolBench serves on a fresh socket with a discarding sender and a
// spool under /tmp (or WEAVE_SIDECAR_BENCH_SPOOL).
func startSpoolBench(b *testing.B) (string, *spool.Spool) {
	b.Helper()
	root := os.Getenv("WEAVE_SIDECAR_BENCH_SPOOL")
	if root == "" {
		root = "/tmp"
	}
	dir, err := os.MkdirTemp(root, "wsc-spool-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	sp, err := spool.Open(spool.Config{Dir: filepath.Join(dir, "spool"), MaxBytes: 16 << 30})
	if err != nil {
		b.Fatal(err)
	}
	st := &stats.Stats{}
	bt, err := batch.New(batch.Config{Sender: discard{}, FlushInterval: time.Second, MaxCount: 2000,
		MaxBytes: 10 << 20, MaxQueueBytes: 256 << 20, Spool: sp, Stats: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := Listen(filepath.Join(dir, "s"))
	if err != nil {
		b.Fatal(err)
	}
	srv := New(Config{Batcher: bt, Stats: st, Hello: []byte(`{}`), Logger: slog.New(slog.DiscardHandler)})
	srv.Serve(ln)
	b.Cleanup(func() {
		srv.Close()
		bt.Close(context.Background())
		sp.Close()
	})
	return ln.Addr().String(), sp
}

func benchSpool(b *testing.B, conns int) {
	path, sp := startSpoolBench(b)
	var payload []byte
	for i := range chunk {
		payload = append(payload, callLine(i, 1024)...)
	}
	const window = 4 // chunks in flight per connection
	type result struct {
		conn int
		lat  time.Duration
	}
	done := make(chan result, conns*window)
	tokens := make([]chan struct{}, conns)
	for k := range conns {
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		tokens[k] = make(chan struct{}, window)
		sent := make(chan time.Time, window)
		go func() { // writer
			for range tokens[k] {
				sent <- time.Now()
				if _, err := c.Write(payload); err != nil {
					return
				}
			}
			close(sent)
		}()
		go func() { // reader
			r := bufio.NewReaderSize(c, 64<<10)
			for t0 := range sent {
				for range chunk {
					line, err := r.ReadSlice('\n')
					if err != nil {
						return
					}
					if line[len(line)-3] == 'e' {
						panic("refused: " + string(line))
					}
				}
				done <- result{k, time.Since(t0)}
			}
		}()
		for range window {
			tokens[k] <- struct{}{}
		}
	}

	syncs0, syncTime0 := sp.Syncs()
	var lat []time.Duration
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	start := time.Now()
	for b.Loop() {
		r := <-done
		lat = append(lat, r.lat)
		tokens[r.conn] <- struct{}{}
	}
	elapsed := time.Since(start)
	syncs, syncTime := sp.Syncs()
	for k := range conns {
		close(tokens[k])
	}
	for range conns * window {
		<-done
	}

	calls := float64(len(lat) * chunk)
	b.ReportMetric(calls/elapsed.Seconds(), "calls/s")
	if n := syncs - syncs0; n > 0 {
		b.ReportMetric(calls/float64(n), "calls/fsync")
		b.ReportMetric(float64((syncTime-syncTime0).Microseconds())/float64(n), "fsync-µs")
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "chunk-ack-p50-µs")
	b.ReportMetric(pct(0.99), "chunk-ack-p99-µs")
}

// BenchmarkSpoolAckLatency paces 1 KiB call_starts at 2,000 calls/s on one
// connection with the spool on and reports the ack latency of single calls:
// about one fsync, since each call finds the writer idle.
func BenchmarkSpoolAckLatency(b *testing.B) {
	path, _ := startSpoolBench(b)
	measureAckLatency(b, path, 500*time.Microsecond, false)
}
