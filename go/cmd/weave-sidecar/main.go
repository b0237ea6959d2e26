// Command weave-sidecar forwards Weave SDK call_start/call_end requests from
// a Unix socket to the trace server's /call/upsert_batch, in batches.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/ingest"
	"github.com/weave-sidecar/weave-sidecar/go/internal/metrics"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/spool"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Bounds on the shutdown steps before the drain.
const (
	maxGrace      = time.Second            // for lines already sent to be read
	parentPollGap = 200 * time.Millisecond // how often --parent-pid is checked
)

func main() {
	err := run(os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	if err == nil {
		return
	}
	if errors.Is(err, flagHelp) {
		os.Exit(0)
	}
	fmt.Fprintln(os.Stderr, "weave-sidecar:", err)
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, auth.ErrNoKey) {
		os.Exit(2)
	}
	os.Exit(1)
}

var flagHelp = errors.New("help requested")

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// run is the whole program; it returns when the sidecar has drained.
func run(args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "status" {
		return runStatus(args[1:], getenv, stdout, stderr)
	}
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) && errors.Is(ue.err, flag.ErrHelp) {
			return flagHelp
		}
		return err
	}
	if cfg.Version {
		fmt.Fprintln(stdout, "weave-sidecar", version)
		return nil
	}
	log := newLogger(stderr, cfg.LogLevel)
	signal.Ignore(syscall.SIGPIPE)
	tuneGC(cfg.MaxQueueBytes, getenv, log)

	key, keySource, err := auth.Resolve(cfg.APIKey, getenv)
	if err != nil {
		return err
	}
	if keySource == "flag" {
		keySource = cfg.APIKeySource // --api-key or its environment variable
	}
	publicURL, host := publicBackend(cfg.Backend)

	// Metrics read the counters and the batcher at scrape time; b is set
	// below, before the metrics server starts.
	st := &stats.Stats{}
	var b *batch.Batcher
	var met *metrics.Metrics
	var onCut func(batch.Cut)
	if cfg.MetricsAddr != "" {
		met = metrics.New(metrics.Config{Stats: st, Queue: func() stats.Queue { return b.Queue() },
			FailureThreshold: cfg.UnreadyAfter})
		onCut = met.ObserveCut
	}
	// Requests and retries are counted as each attempt ends, not when its
	// batch is resolved, so an outage shows in stats and metrics.
	onAttempt := func(a backend.Attempt) {
		st.HTTPRequests.Add(1)
		if a.Number > 1 {
			st.Retries.Add(1)
		}
		if met != nil {
			met.ObserveAttempt(a)
		}
	}

	client, err := backend.New(backend.Config{
		URL:            cfg.Backend,
		Key:            key,
		Version:        version,
		RequestTimeout: cfg.RequestTimeout,
		MaxBodyBytes:   protocol.MaxBodyBytes,
		Logger:         log,
		OnAttempt:      onAttempt,
	})
	if err != nil {
		return usageError{err}
	}
	defer client.Close()

	var sp *spool.Spool
	if cfg.SpoolDir != "" {
		sp, err = spool.Open(spool.Config{Dir: cfg.SpoolDir, MaxBytes: cfg.SpoolMaxBytes, Logger: log})
		if err != nil {
			return err
		}
		defer func() {
			if err := sp.Close(); err != nil {
				log.Error("closing the spool", "err", err)
			}
			if u := sp.Usage(); u.Bytes > 0 {
				log.Info("calls left in the spool for the next start", "dir", cfg.SpoolDir, "bytes", u.Bytes)
			}
		}()
		u := sp.Usage()
		log.Info("spool open", "dir", cfg.SpoolDir, "max_bytes", cfg.SpoolMaxBytes, "bytes", u.Bytes,
			"replayed", u.Replayed, "corrupt_records", u.Corrupt)
	}

	b, err = batch.New(batch.Config{
		Sender:        client,
		FlushInterval: cfg.FlushInterval,
		MaxCount:      cfg.FlushMaxCount,
		MaxBytes:      cfg.FlushMaxBytes,
		MaxQueueBytes: cfg.MaxQueueBytes,
		Spool:         sp,
		Stats:         st,
		Logger:        log,
		OnCut:         onCut,
	})
	if err != nil {
		return usageError{err}
	}
	hello, err := json.Marshal(protocol.Hello{
		Name: "weave-sidecar", Version: version, Protocol: protocol.Version, PID: os.Getpid(),
		Backend: publicURL,
		Limits: protocol.Limits{MaxLineBytes: protocol.MaxLineBytes, MaxCallBytes: protocol.MaxBodyBytes,
			MaxQueueBytes: cfg.MaxQueueBytes},
	})
	if err != nil {
		return err
	}

	if met != nil {
		// A port already taken does not stop delivery: launcher-spawned
		// sidecars inherit WEAVE_SIDECAR_METRICS_ADDR and only one can bind.
		msrv, err := metrics.Listen(cfg.MetricsAddr, met.Handler(), log)
		if err != nil {
			log.Error("metrics server not started; serving without it", "addr", cfg.MetricsAddr, "err", err)
		} else {
			// Served until the drain is over, so it can be watched.
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				msrv.Close(ctx)
			}()
			log.Info("metrics server listening", "addr", msrv.Addr())
		}
	}

	// Unfinished long lines of all connections share one bound the size of
	// the queue (at least one maximal line), so many clients each sending a
	// large call slowly cannot hold 32 MiB apiece.
	srv := ingest.New(ingest.Config{Batcher: b, Stats: st, Hello: hello, Logger: log, Token: cfg.Token,
		MaxPartialBytes: cfg.MaxQueueBytes})
	ready, err := listen(cfg, srv)
	if err != nil {
		srv.Close()
		b.Close(context.Background())
		return err
	}
	log.Info("weave-sidecar started", "version", version, "pid", os.Getpid(), "socket", ready.Unix, "tcp", ready.TCP,
		"backend_host", host, "key_source", keySource,
		"flush_interval", cfg.FlushInterval.String(), "flush_max_count", cfg.FlushMaxCount,
		"flush_max_bytes", min(cfg.FlushMaxBytes, protocol.MaxBodyBytes), "max_queue_bytes", cfg.MaxQueueBytes,
		"max_line_bytes", protocol.MaxLineBytes, "shutdown_timeout", cfg.ShutdownTimeout.String())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	reason := waitForStop(cfg, stdin, sigs)
	start := time.Now()
	log.Info("shutting down", "reason", reason)
	drained := make(chan struct{})
	defer close(drained)
	go exitOnSecondSignal(sigs, drained, b, log)
	if met != nil {
		met.Stopping()
	}

	// Stop taking connections, let the lines already sent be read, then
	// close intake and drain within the shutdown bound.
	deadline := start.Add(cfg.ShutdownTimeout)
	srv.StopAccepting()
	if cfg.ReadyFile != "" {
		os.Remove(cfg.ReadyFile) // its addresses no longer answer
	}
	graceCtx, cancelGrace := context.WithTimeout(context.Background(), min(maxGrace, cfg.ShutdownTimeout/2))
	srv.WaitIdle(graceCtx)
	cancelGrace()
	drainCtx, cancelDrain := context.WithDeadline(context.Background(), deadline)
	sum := b.Close(drainCtx)
	cancelDrain()
	srv.Close()

	attrs := []any{"delivered", sum.Delivered, "dropped", sum.Dropped, "undelivered", sum.Undelivered,
		"accepted", st.Accepted.Load(), "drain", time.Since(start).Round(time.Millisecond).String()}
	if sum.Undelivered > 0 {
		log.Warn("stopped with calls undelivered: the shutdown timeout ran out", attrs...)
	} else {
		log.Info("stopped", attrs...)
	}
	return nil
}

// exitOnSecondSignal ends the process at once when another SIGINT or
// SIGTERM arrives before the drain is over: the calls still held are given
// up (with a spool they stay on disk for the next start). The exit code is
// 128 + the signal number, as if the signal had killed the process.
func exitOnSecondSignal(sigs <-chan os.Signal, drained <-chan struct{}, b *batch.Batcher, log *slog.Logger) {
	select {
	case <-drained:
		return
	case sig := <-sigs:
		q := b.Queue()
		attrs := []any{"signal", sig.String(), "abandoned", q.Items}
		if q.Spool != nil {
			attrs = []any{"signal", sig.String(), "left_in_spool", q.Items + q.Spool.Items}
		}
		log.Error("second signal: exiting without finishing the drain", attrs...)
		code := 1
		if s, ok := sig.(syscall.Signal); ok {
			code = 128 + int(s)
		}
		os.Exit(code)
	}
}

// waitForStop blocks until a signal on sigs, stdin EOF (with
// --exit-on-stdin-eof) or the parent's exit (with --parent-pid), and says
// which.
func waitForStop(cfg config, stdin io.Reader, sigs <-chan os.Signal) string {
	stop := make(chan string, 3)

	if cfg.ExitOnStdinEOF {
		go func() {
			io.Copy(io.Discard, stdin)
			stop <- "stdin closed"
		}()
	}
	if cfg.ParentPID > 0 {
		// When the watched process is our parent, being re-parented also
		// means it is gone (and guards against its pid being reused).
		isParent := os.Getppid() == cfg.ParentPID
		go func() {
			for {
				time.Sleep(parentPollGap)
				if !parentAlive(cfg.ParentPID, isParent) {
					stop <- "parent process exited"
					return
				}
			}
		}()
	}
	select {
	case sig := <-sigs:
		return sig.String()
	case r := <-stop:
		return r
	}
}
