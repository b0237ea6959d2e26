package protocol

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// benchLine is a call_start line of about size bytes whose "inputs" string
// is made of fill, the shape the SDK's to_json produces.
func benchLine(size int, fill string) []byte {
	head := `{"id":12345,"method":"call_start","payload":{"start":{"project_id":"ent/bench","id":"0193c1a2-7d4e-7f00-8a1b-2c3d4e5f6a7b",` +
		`"trace_id":"0193c1a2-7d4e-7f00-8a1b-2c3d4e5f6a7c","op_name":"weave:///ent/bench/op/f:0","started_at":"2025-01-02T03:04:05.123456Z",` +
		`"attributes":{"weave":{"client_version":"0.54.0","os_name":"Linux"}},"inputs":{"n":42,"ok":true,"x":"`
	tail := `"}}}}`
	n := max(0, size-len(head)-len(tail))
	body := strings.Repeat(fill, n/len(fill)+1)[:n]
	return []byte(head + body + tail)
}

// BenchmarkDecode measures Decode on one call_start line per iteration.
func BenchmarkDecode(b *testing.B) {
	for _, tc := range []struct {
		name string
		line []byte
	}{
		{"ascii-1KiB", benchLine(1024, "abcdefgh")},
		{"ascii-16KiB", benchLine(16<<10, "abcdefgh")},
		{"utf8-1KiB", benchLine(1024, "abcdéfgh")},
		{"escapes-1KiB", benchLine(1024, `ab\"cd\nef\u00e9`)},
		{"spaced-1KiB", []byte(strings.ReplaceAll(string(benchLine(1024, "abcdefgh")), `,"`, ", \""))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var req Request
			if err := Decode(tc.line, &req); err != nil {
				b.Fatalf("%s: %v", tc.line, err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.line)))
			cpu0 := cpuTime()
			for b.Loop() {
				Decode(tc.line, &req)
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the CPU time this process has used. On a shared machine it
// varies less than wall time, which counts the time other work held the CPU.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
