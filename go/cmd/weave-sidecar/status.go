package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

const defaultStatusTimeout = 5 * time.Second

// statusRow is one line of the status report: a stats key and its label.
type statusRow struct{ key, label string }

// statusSections orders the stats keys a person reads first. Keys a newer
// sidecar reports that are not listed here are printed under "other".
var statusSections = []struct {
	title string
	rows  []statusRow
}{
	{"calls", []statusRow{
		{"accepted", "accepted"},
		{"delivered", "delivered"},
		{"failed", "failed"},
		{"queued_items", "queued"},
		{"queued_bytes", "queued bytes"},
		{"in_flight_items", "in flight"},
		{"spool", "spool"},
		{"spooled_items", "spooled"},
		{"spool_bytes", "spool bytes"},
		{"spool_max_bytes", "spool limit"},
		{"replayed", "replayed at start"},
		{"spool_corrupt_records", "corrupt records"},
	}},
	{"requests", []statusRow{
		{"received", "lines received"},
		{"calls_received", "calls received"},
		{"calls_refused", "calls refused"},
		{"refused", "refused"},
	}},
	{"backend", []statusRow{
		{"batches", "batches"},
		{"http_requests", "http requests"},
		{"retries", "retries"},
	}},
	{"connections", []statusRow{
		{"connections", "open"},
		{"rejected_connections", "rejected"},
	}},
}

// spoolKeys are the stats keys that only mean something with a spool.
var spoolKeys = []string{"spooled_items", "spool_bytes", "spool_max_bytes", "replayed", "spool_corrupt_records"}

// runStatus is `weave-sidecar status`: it asks a running sidecar for hello
// and stats and prints them for a person (or the stats JSON with --json).
func runStatus(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	timeout := defaultStatusTimeout
	var socket string
	var asJSON bool
	fs := flag.NewFlagSet("weave-sidecar status", flag.ContinueOnError)
	usage := func() {
		fmt.Fprintf(stderr, "usage: weave-sidecar status [--socket PATH] [--json]\n\n"+
			"Prints the counters of a running sidecar. Exits 1 if it cannot be reached.\n\n")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
	}
	silenceFlagErrors(fs)
	// No flag default: the help names the fallbacks once.
	fs.StringVar(&socket, "socket", "", "the sidecar's Unix socket (default: "+envName("socket")+", then "+defaultSocket+")")
	fs.BoolVar(&asJSON, "json", false, "print the stats result as JSON instead")
	fs.Var(durationValue{&timeout}, "timeout", "bound on connecting and on each answer")
	if err := parseFlags(fs, args, usage, "weave-sidecar status --help"); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return flagHelp
		}
		return err
	}
	if socket == "" {
		socket = getenv(envName("socket"))
	}
	if socket == "" {
		socket = defaultSocket
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("status: unexpected argument %q (flags only)", fs.Arg(0))}
	}
	if timeout <= 0 {
		return usageError{errors.New("status: --timeout must be positive")}
	}

	hello, stats, err := queryStatus(socket, timeout)
	if err != nil {
		return fmt.Errorf("status: no sidecar answering at %s: %w", socket, err)
	}
	if asJSON {
		var buf bytes.Buffer
		if err := json.Indent(&buf, stats, "", "  "); err != nil {
			return fmt.Errorf("status: stats result: %w", err)
		}
		buf.WriteByte('\n')
		_, err := stdout.Write(buf.Bytes())
		return err
	}
	return printStatus(stdout, socket, hello, stats)
}

// queryStatus sends hello and stats on one connection and returns their
// results.
func queryStatus(socket string, timeout time.Duration) (hello, stats json.RawMessage, err error) {
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, nil, err
	}
	if _, err := io.WriteString(c, `{"id":1,"method":"hello"}`+"\n"+`{"id":2,"method":"stats"}`+"\n"); err != nil {
		return nil, nil, err
	}
	r := bufio.NewReader(c)
	var results [2]json.RawMessage
	for i := range results {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, nil, fmt.Errorf("reading the answer: %w", err)
		}
		var resp struct {
			Success bool            `json:"success"`
			Code    string          `json:"code"`
			Error   string          `json:"error"`
			Result  json.RawMessage `json:"result"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, nil, fmt.Errorf("the answer is not JSON: %w", err)
		}
		if !resp.Success {
			return nil, nil, fmt.Errorf("refused (%s): %s", resp.Code, resp.Error)
		}
		results[i] = resp.Result
	}
	return results[0], results[1], nil
}

// printStatus writes the report: who answered, then each section of stats.
func printStatus(w io.Writer, socket string, hello, stats json.RawMessage) error {
	var h struct {
		Version  string `json:"version"`
		Protocol int    `json:"protocol"`
		PID      int    `json:"pid"`
		Backend  string `json:"backend"`
	}
	_ = json.Unmarshal(hello, &h) // a hello missing fields still gets a report
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(stats, &fields); err != nil {
		return fmt.Errorf("status: stats result is not an object: %w", err)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "weave-sidecar %s, pid %d, protocol %d\n", h.Version, h.PID, h.Protocol)
	fmt.Fprintf(&b, "  socket   %s\n  backend  %s\n", socket, h.Backend)
	done := make(map[string]bool)
	if string(fields["spool_max_bytes"]) == "0" {
		// The spool is off: its terms are all zero, say so once.
		for _, k := range spoolKeys {
			if _, ok := fields[k]; ok {
				done[k] = true
			}
		}
		fields["spool"] = json.RawMessage(`"off"`)
	}
	for _, sec := range statusSections {
		var rows []string
		for _, r := range sec.rows {
			raw, ok := fields[r.key]
			if !ok || done[r.key] {
				continue
			}
			done[r.key] = true
			rows = append(rows, statusLine(r.label, r.key, raw))
		}
		writeSection(&b, sec.title, rows)
	}
	var rest []string
	for k := range fields {
		if !done[k] {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	var rows []string
	for _, k := range rest {
		rows = append(rows, statusLine(strings.ReplaceAll(k, "_", " "), k, fields[k]))
	}
	writeSection(&b, "other", rows)
	_, err := io.WriteString(w, b.String())
	return err
}

func writeSection(b *strings.Builder, title string, rows []string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "\n%s\n", title)
	for _, r := range rows {
		fmt.Fprintf(b, "  %s\n", r)
	}
}

// statusLine formats one value: a number (bytes in binary units when the
// key names bytes), or an object of counts as its total and the non-zero
// parts.
func statusLine(label, key string, raw json.RawMessage) string {
	const width = 18
	var n json.Number
	if dec := json.NewDecoder(bytes.NewReader(raw)); dec.Decode(&n) == nil {
		v := n.String()
		if strings.HasSuffix(key, "_bytes") {
			if i, err := n.Int64(); err == nil {
				v = humanBytes(i)
			}
		}
		return fmt.Sprintf("%-*s %s", width, label, v)
	}
	var parts map[string]int64
	if json.Unmarshal(raw, &parts) == nil {
		var total int64
		var nonzero []string
		for k, v := range parts {
			total += v
			if v != 0 {
				nonzero = append(nonzero, k+" "+strconv.FormatInt(v, 10))
			}
		}
		slices.Sort(nonzero)
		line := fmt.Sprintf("%-*s %d", width, label, total)
		if len(nonzero) > 0 {
			line += " (" + strings.Join(nonzero, ", ") + ")"
		}
		return line
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return fmt.Sprintf("%-*s %s", width, label, str)
	}
	return fmt.Sprintf("%-*s %s", width, label, raw)
}

// humanBytes prints n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v := float64(n)
	unit := "B"
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v /= 1024
		unit = u
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + unit
}
