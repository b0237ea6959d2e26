package ingest

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// A client that has written part of a line still gets the answers to the
// complete lines before it: answers go out before the server waits for
// more input, not when the next line is complete.
func TestAnswersBeforePartialLine(t *testing.T) {
	c, err := net.Dial("unix", startBench(t))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)

	first, second := callLine(1, 300), callLine(2, 300)
	_, err = c.Write(append(first, second[:100]...))
	require.NoError(t, err)
	// Generous: this only fails when the answer never comes.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Second)))
	ack, err := r.ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, ack, `"success":true`)

	_, err = c.Write(second[100:])
	require.NoError(t, err)
	ack, err = r.ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, ack, `"success":true`)
}

// Many pipelined calls in writes that split lines anywhere are each
// answered once, in order.
func TestPipelinedSplitWrites(t *testing.T) {
	c, err := net.Dial("unix", startBench(t))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	const n = 3000
	var all []byte
	for i := range n {
		all = append(all, callLine(i, 200+i%900)...)
	}
	go func() {
		for off, step := 0, 1; off < len(all); step = step*7%5003 + 1 {
			end := min(len(all), off+step)
			if _, err := c.Write(all[off:end]); err != nil {
				return
			}
			off = end
		}
	}()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(60*time.Second)))
	r := bufio.NewReader(c)
	for i := range n {
		ack, err := r.ReadString('\n')
		require.NoError(t, err, "ack %d", i)
		require.Contains(t, ack, `"success":true`, "ack %d", i)
	}
}

// Unfinished long lines of all connections share one budget: a second
// large line that arrives while another is held is skipped with
// line_too_long, and fits once the first is done.
func TestLongLinesShareABudget(t *testing.T) {
	st := &stats.Stats{}
	bt, err := batch.New(batch.Config{Sender: discard{}, FlushInterval: time.Second, MaxCount: 2000,
		MaxBytes: 10 << 20, MaxQueueBytes: 1 << 30, Stats: st, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	path := filepath.Join(shortDirB(t), "s")
	ln, err := Listen(path)
	require.NoError(t, err)
	// The budget is raised to MaxLineBytes + 1 MiB: 5 MiB.
	srv := New(Config{Batcher: bt, Stats: st, Hello: []byte(`{}`), Logger: slog.New(slog.DiscardHandler),
		MaxLineBytes: 4 << 20, MaxPartialBytes: 1})
	srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		bt.Close(context.Background())
	})
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		require.NoError(t, c.SetDeadline(time.Now().Add(60*time.Second)))
		return c, bufio.NewReader(c)
	}
	big1, big2 := callLine(1, 3<<20), callLine(2, 3<<20)

	a, ar := dial()
	_, err = a.Write(big1[:len(big1)-1]) // all but the newline
	require.NoError(t, err)
	for srv.lines.Used() < 3<<20 {
		time.Sleep(time.Millisecond)
	}

	b, br := dial()
	_, err = b.Write(big2)
	require.NoError(t, err)
	ans, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, ans, `"code":"line_too_long"`)
	assert.Contains(t, ans, "memory left for long lines")

	_, err = a.Write([]byte("\n"))
	require.NoError(t, err)
	ans, err = ar.ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, ans, `"success":true`)

	// a's next read released its line: b's now fits.
	for srv.lines.Used() > 0 {
		time.Sleep(time.Millisecond)
	}
	_, err = b.Write(big2)
	require.NoError(t, err)
	ans, err = br.ReadString('\n')
	require.NoError(t, err)
	assert.Contains(t, ans, `"success":true`)
}
