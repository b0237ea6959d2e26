package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
	"github.com/weave-sidecar/weave-sidecar/go/internal/ingest"
	"github.com/weave-sidecar/weave-sidecar/go/internal/metrics"
)

// Defaults, documented in the README.
const (
	defaultSocket          = "/tmp/weave_sidecar.sock"
	defaultFlushInterval   = time.Second
	defaultFlushMaxCount   = 2000
	defaultFlushMaxBytes   = 10 << 20
	defaultRequestTimeout  = 30 * time.Second
	defaultShutdownTimeout = 10 * time.Second
	defaultMaxQueueBytes   = 256 << 20
	defaultSpoolMaxBytes   = 1 << 30
	defaultUnreadyAfter    = metrics.DefaultFailureThreshold
	envPrefix              = "WEAVE_SIDECAR_"
	// tokenEnv holds the TCP token. It has no flag: argv is visible to
	// every local user.
	tokenEnv = envPrefix + "TOKEN"
)

// config is everything the command line and environment decide.
type config struct {
	Socket          string
	Backend         string
	APIKey          string
	APIKeySource    string // "flag", or the environment variable APIKey came from; empty when unset
	FlushInterval   time.Duration
	FlushMaxCount   int
	FlushMaxBytes   int
	RequestTimeout  time.Duration
	ShutdownTimeout time.Duration
	MaxQueueBytes   int64
	SpoolDir        string // empty: no spool
	SpoolMaxBytes   int64
	ParentPID       int
	ExitOnStdinEOF  bool
	LogLevel        slog.Level
	Version         bool
	MetricsAddr     string        // listen address after metrics.ResolveAddr; empty: off
	UnreadyAfter    time.Duration // backend failure streak before /readyz answers 503
	ListenTCP       string        // 127.0.0.1:PORT for the token-checked TCP listener; empty: off
	Token           auth.Secret   // from tokenEnv only; required with ListenTCP
	ReadyFile       string        // receives the listening addresses; empty: off
}

// usageError is a bad command line or environment: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// durationValue accepts a Go duration ("1s", "250ms") or plain seconds ("1.5").
type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		*v.d = time.Duration(secs * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as 1s or 250ms, or seconds")
	}
	*v.d = d
	return nil
}

type levelValue struct{ l *slog.Level }

func (v levelValue) String() string {
	if v.l == nil {
		return ""
	}
	return strings.ToLower(v.l.String())
}

func (v levelValue) Set(s string) error {
	switch strings.ToLower(s) {
	case "debug":
		*v.l = slog.LevelDebug
	case "info":
		*v.l = slog.LevelInfo
	case "warn", "warning":
		*v.l = slog.LevelWarn
	case "error":
		*v.l = slog.LevelError
	default:
		return errors.New("want debug, info, warn or error")
	}
	return nil
}

// envName is the environment variable for a flag: --flush-max-count is
// WEAVE_SIDECAR_FLUSH_MAX_COUNT.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads args, then fills every flag not given on the command
// line from its environment variable. The environment is read after
// parsing, so -help never shows a secret from it.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	cfg := config{
		Socket:          defaultSocket,
		FlushInterval:   defaultFlushInterval,
		FlushMaxCount:   defaultFlushMaxCount,
		FlushMaxBytes:   defaultFlushMaxBytes,
		RequestTimeout:  defaultRequestTimeout,
		ShutdownTimeout: defaultShutdownTimeout,
		MaxQueueBytes:   defaultMaxQueueBytes,
		SpoolMaxBytes:   defaultSpoolMaxBytes,
		LogLevel:        slog.LevelInfo,
		UnreadyAfter:    defaultUnreadyAfter,
	}
	fs := flag.NewFlagSet("weave-sidecar", flag.ContinueOnError)
	usage := func() {
		fmt.Fprintf(stderr, "usage: weave-sidecar --backend URL [flags]\n\n"+
			"Forwards Weave call_start/call_end from a Unix socket (or loopback TCP) to the trace server in batches.\n"+
			"Every flag can also be set as %s<FLAG_NAME> (e.g. %s); a flag on the command line wins.\n\n",
			envPrefix, envName("flush-interval"))
		fs.SetOutput(stderr)
		fs.PrintDefaults()
	}
	silenceFlagErrors(fs)
	fs.StringVar(&cfg.Socket, "socket", cfg.Socket, "Unix socket to listen on (created with mode 0600)")
	fs.StringVar(&cfg.Backend, "backend", "", "trace server base URL, e.g. https://trace.wandb.ai (required; a path prefix is kept)")
	fs.StringVar(&cfg.APIKey, "api-key", "", "W&B API key (default: "+envName("api-key")+", then WANDB_API_KEY, then netrc; prefer the environment, argv is visible in ps)")
	fs.Var(durationValue{&cfg.FlushInterval}, "flush-interval", "send a non-empty batch at least this often")
	fs.IntVar(&cfg.FlushMaxCount, "flush-max-count", cfg.FlushMaxCount, "send when this many calls are waiting")
	fs.IntVar(&cfg.FlushMaxBytes, "flush-max-bytes", cfg.FlushMaxBytes, "send when the request body would exceed this many bytes (never above 32505856)")
	fs.Var(durationValue{&cfg.RequestTimeout}, "request-timeout", "bound on one HTTP attempt")
	fs.Var(durationValue{&cfg.ShutdownTimeout}, "shutdown-timeout", "bound on the final drain at exit; calls still undelivered then are dropped and counted")
	fs.Int64Var(&cfg.MaxQueueBytes, "max-queue-bytes", cfg.MaxQueueBytes, "accepted but undelivered bytes before new calls are refused with queue_full")
	fs.StringVar(&cfg.SpoolDir, "spool-dir", "", "keep accepted calls in this directory until delivered: an ack then means the call is on disk, and calls survive a crash or restart (empty: off)")
	fs.Int64Var(&cfg.SpoolMaxBytes, "spool-max-bytes", cfg.SpoolMaxBytes, "bytes of spool files before new calls are refused with spool_full; with a spool, --max-queue-bytes bounds only the calls held in memory")
	fs.IntVar(&cfg.ParentPID, "parent-pid", 0, "drain and exit when this process is gone (0: off)")
	fs.BoolVar(&cfg.ExitOnStdinEOF, "exit-on-stdin-eof", false, "drain and exit when stdin reaches end of file")
	fs.Var(levelValue{&cfg.LogLevel}, "log-level", "debug, info, warn or error")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz, /readyz and /debug/pprof/ over HTTP at PORT or HOST:PORT; a bare port binds 127.0.0.1 (empty: off)")
	fs.Var(durationValue{&cfg.UnreadyAfter}, "unready-after", "/readyz answers 503 once backend requests have failed in a row this long")
	fs.StringVar(&cfg.ListenTCP, "listen-tcp", "", "also listen on loopback TCP at 127.0.0.1:PORT (port 0: the OS chooses), for platforms without Unix sockets; "+
		"each connection must first send hello with the token from "+tokenEnv+"; without an explicit --socket, TCP is the only listener (empty: off)")
	fs.StringVar(&cfg.ReadyFile, "ready-file", "", "once listening, write the pid and listening addresses as JSON to this file, atomically (empty: off)")
	fs.BoolVar(&cfg.Version, "version", false, "print the version and exit")

	if err := parseFlags(fs, args, usage, "weave-sidecar --help"); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, usageError{fmt.Errorf("unexpected argument %q (flags only)", fs.Arg(0))}
	}
	if cfg.Version {
		return cfg, nil
	}

	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["api-key"] {
		cfg.APIKeySource = "flag"
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || envErr != nil {
			return
		}
		name := envName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		if _, isBool := f.Value.(interface{ IsBoolFlag() bool }); isBool {
			switch strings.ToLower(v) {
			case "yes", "on":
				v = "true"
			case "no", "off":
				v = "false"
			}
		}
		if err := fs.Set(f.Name, v); err != nil {
			// The value may be a secret: name the variable, not what it holds.
			envErr = usageError{fmt.Errorf("environment variable %s: invalid value for --%s", name, f.Name)}
		}
		if f.Name == "api-key" {
			cfg.APIKeySource = name
		}
	})
	if envErr != nil {
		return cfg, envErr
	}
	cfg.Token = auth.NewSecret(getenv(tokenEnv))
	if cfg.ListenTCP != "" && !set["socket"] && getenv(envName("socket")) == "" {
		cfg.Socket = "" // TCP only, unless a socket was asked for too
	}
	return cfg, cfg.validate()
}

// silenceFlagErrors stops fs from printing its own errors and usage:
// parseFlags prints the usage for -help, and main reports any other error
// once.
func silenceFlagErrors(fs *flag.FlagSet) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
}

// parseFlags parses args into fs. For -help it calls usage and returns a
// usageError wrapping flag.ErrHelp; any other error is a usageError that
// points at helpCmd.
func parseFlags(fs *flag.FlagSet, args []string, usage func(), helpCmd string) error {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		usage()
		return usageError{err}
	default:
		return usageError{fmt.Errorf("%w (see %s)", err, helpCmd)}
	}
}

func (cfg *config) validate() error {
	bad := func(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }
	if cfg.Backend == "" {
		return bad("--backend is required (or %s)", envName("backend"))
	}
	u, err := url.Parse(cfg.Backend)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return bad("--backend must be an http or https URL with a host")
	}
	switch {
	case cfg.FlushInterval <= 0:
		return bad("--flush-interval must be positive")
	case cfg.FlushMaxCount <= 0:
		return bad("--flush-max-count must be positive")
	case cfg.FlushMaxBytes <= 0:
		return bad("--flush-max-bytes must be positive")
	case cfg.RequestTimeout <= 0:
		return bad("--request-timeout must be positive")
	case cfg.ShutdownTimeout <= 0:
		return bad("--shutdown-timeout must be positive")
	case cfg.MaxQueueBytes <= 0:
		return bad("--max-queue-bytes must be positive")
	case cfg.SpoolMaxBytes <= 0:
		return bad("--spool-max-bytes must be positive")
	case cfg.ParentPID < 0:
		return bad("--parent-pid must not be negative")
	case cfg.UnreadyAfter <= 0:
		return bad("--unready-after must be positive")
	}
	if cfg.Socket == "" && cfg.ListenTCP == "" {
		return bad("--socket is empty and --listen-tcp is not set: nothing to listen on")
	}
	if cfg.ListenTCP != "" {
		if err := ingest.CheckTCPAddr(cfg.ListenTCP); err != nil {
			return bad("--listen-tcp: %v", err)
		}
		if len(cfg.Token.Reveal()) < ingest.MinTokenLen {
			return bad("--listen-tcp needs a random token of at least %d bytes in %s", ingest.MinTokenLen, tokenEnv)
		}
	}
	addr, err := metrics.ResolveAddr(cfg.MetricsAddr)
	if err != nil {
		return bad("--metrics-addr: %v", err)
	}
	cfg.MetricsAddr = addr
	return nil
}

// publicBackend returns the backend URL without credentials, and its host.
func publicBackend(raw string) (string, string) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", ""
	}
	u.User = nil
	return u.String(), u.Host
}
