package ingest

import (
	"bufio"
	"io"
)

// writer buffers response lines for one connection. Once a write fails (the
// client is gone), later answers are discarded without error, so the lines
// the client wrote before it died are still read and their calls delivered.
type writer struct {
	bw  *bufio.Writer
	err error // first write error; later writes are discarded
}

// newWriter buffers writes to c, the connection as batch.Batcher.Durable
// wraps it (with a spool, acks leave only after their calls are on disk).
func newWriter(c io.Writer) *writer { return &writer{bw: bufio.NewWriterSize(c, writeBufSize)} }

func (w *writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return len(p), nil
	}
	if _, err := w.bw.Write(p); err != nil {
		w.err = err
	}
	return len(p), nil
}

func (w *writer) Flush() error {
	if w.err == nil {
		w.err = w.bw.Flush()
	}
	return nil
}
