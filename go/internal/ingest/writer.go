package ingest

import (
	"bufio"
	"io"
)

// writer buffers response lines for one connection.
type writer struct {
	bw  *bufio.Writer
	err error // first write error; later writes are skipped
}

// newWriter buffers writes to c, the connection as batch.Batcher.Durable
// wraps it (with a spool, acks leave only after their calls are on disk).
func newWriter(c io.Writer) *writer { return &writer{bw: bufio.NewWriterSize(c, writeBufSize)} }

func (w *writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.bw.Write(p)
	w.err = err
	return n, err
}

func (w *writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	w.err = w.bw.Flush()
	return w.err
}
