package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ResolveAddr turns a --metrics-addr value into a listen address. Empty
// means off and gives "". A bare port ("9464") or an empty host (":9464")
// binds 127.0.0.1; any other host is used as given, so exposing the
// endpoint beyond this machine takes an explicit host.
func ResolveAddr(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if !strings.Contains(s, ":") {
		s = ":" + s
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("want PORT or HOST:PORT, got %q", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("port must be a number from 0 to 65535, got %q", port)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// Stopping marks the sidecar as shutting down: it is not ready from now on.
func (m *Metrics) Stopping() { m.stopping.Store(true) }

// Ready reports whether the sidecar should get traffic, and why not: it is
// not ready once Stopping was called, while backend requests have failed in
// a row for longer than Config.FailureThreshold, or while the spool is more
// than 90% full.
func (m *Metrics) Ready() (bool, string) {
	if m.stopping.Load() {
		return false, "shutting down"
	}
	if d, n := m.failing(); d > m.cfg.FailureThreshold {
		return false, fmt.Sprintf("backend requests have failed for %s (%d attempts in a row; threshold %s)",
			d.Round(time.Second), n, m.cfg.FailureThreshold)
	}
	if sp := m.cfg.Queue().Spool; sp != nil {
		n, limit := sp.Bytes, sp.MaxBytes
		if limit > 0 && float64(n) > spoolReadyFraction*float64(limit) {
			return false, fmt.Sprintf("spool is %d%% full (%d of %d bytes)", n*100/limit, n, limit)
		}
	}
	return true, "ready"
}

// Handler serves /metrics, /healthz, /readyz and Go's profiles under
// /debug/pprof/. /debug/pprof/cmdline is left out: argv may hold --api-key.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := m.Ready()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			why = "not ready: " + why
		}
		fmt.Fprintln(w, why)
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not served: the command line may hold a secret", http.StatusNotFound)
	})
	return mux
}

// Server serves a Handler on its own listener.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// Listen binds addr (as ResolveAddr returns it) and serves h in a
// goroutine until Close.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr returns the address the server listens on, with the port chosen
// when addr asked for port 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, letting requests in progress finish until ctx
// ends (a CPU profile being taken may hold it that long).
func (s *Server) Close(ctx context.Context) {
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
}
