package main

import (
	"log/slog"
	"runtime/debug"
)

// The collector's pace. The daemon keeps little alive (the calls waiting
// in memory) while it allocates about one payload per call, so at the
// default GOGC=100 it collects about 100 times a second at full intake and
// spends ~15% more CPU per call than at 400 (docs/performance.md, "Sidecar
// alone"). The memory limit keeps the larger goal from mattering when the
// queue fills: the heap then holds up to MaxQueueBytes of calls, and past
// that plus a fixed headroom for buffers the collector works harder, so
// resident memory stays near --max-queue-bytes + 64 MiB under overload
// (docs/performance.md, "Overload"). The cost is CPU while the queue is full,
// which is when intake is refusing calls anyway.
const (
	gcPercent    = 400
	gcLimitExtra = 64 << 20
)

// gcSettings returns the GC percent and memory limit to set, each -1 when
// the environment (GOGC, GOMEMLIMIT) already chose one.
func gcSettings(maxQueueBytes int64, getenv func(string) string) (percent int, limit int64) {
	percent, limit = gcPercent, maxQueueBytes+gcLimitExtra
	if getenv("GOGC") != "" {
		percent = -1
	}
	if getenv("GOMEMLIMIT") != "" {
		limit = -1
	}
	return percent, limit
}

// tuneGC applies gcSettings.
func tuneGC(maxQueueBytes int64, getenv func(string) string, log *slog.Logger) {
	percent, limit := gcSettings(maxQueueBytes, getenv)
	if percent >= 0 {
		debug.SetGCPercent(percent)
	}
	if limit >= 0 {
		debug.SetMemoryLimit(limit)
	}
	log.Debug("garbage collector", "gogc", percent, "memory_limit", limit)
}
