package ingest

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
