package protocol

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// LineTooLongError reports a line longer than the limit. The line was read
// and discarded up to its newline.
type LineTooLongError struct {
	Len   int // bytes discarded, not counting the newline
	Limit int
}

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("line is longer than %d bytes (%d bytes skipped)", e.Limit, e.Len)
}

// bigLine is the size above which a line's buffer is not kept for reuse.
const bigLine = 1 << 20

// LineReader splits a stream into newline-terminated lines of at most max
// bytes. A longer line is discarded as it streams in, never held in memory.
type LineReader struct {
	r   *bufio.Reader
	max int
	buf []byte // assembles a line longer than r's buffer
}

// NewLineReader reads from r through a buffer of size bufSize.
func NewLineReader(r io.Reader, bufSize, max int) *LineReader {
	return &LineReader{r: bufio.NewReaderSize(r, bufSize), max: max}
}

// Buffered reports how many bytes can be read without blocking.
func (lr *LineReader) Buffered() int { return lr.r.Buffered() }

// Next returns the next line without its newline. The slice is valid until
// the next call. A line over the limit yields a *LineTooLongError and the
// reader is positioned after it. A final line without a newline is dropped:
// Next returns io.EOF (or the read error) instead.
func (lr *LineReader) Next() ([]byte, error) {
	if cap(lr.buf) > bigLine {
		lr.buf = nil
	}
	frag, err := lr.r.ReadSlice('\n')
	if err == nil && len(frag)-1 <= lr.max {
		return frag[:len(frag)-1], nil
	}
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}

	// A long line: assemble it while it stays under the limit.
	lr.buf = append(lr.buf[:0], frag...)
	for err != nil && len(lr.buf) <= lr.max {
		frag, err = lr.r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		lr.buf = append(lr.buf, frag...)
	}
	n := len(lr.buf)
	if err == nil {
		n-- // the newline
		if n <= lr.max {
			return lr.buf[:n], nil
		}
		lr.buf = lr.buf[:0]
		return nil, &LineTooLongError{Len: n, Limit: lr.max}
	}

	// Over the limit and still no newline: discard up to it.
	lr.buf = lr.buf[:0]
	for {
		frag, err = lr.r.ReadSlice('\n')
		n += len(frag)
		if err == nil {
			return nil, &LineTooLongError{Len: n - 1, Limit: lr.max}
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}
