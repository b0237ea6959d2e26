package protocol

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
)

// LineTooLongError reports a line longer than the limit, or one that did
// not fit in a shared Budget (Busy). The line was read and discarded up to
// its newline.
type LineTooLongError struct {
	Len   int // bytes discarded, not counting the newline
	Limit int
	Busy  bool // under the limit, but the Budget had no room for it
}

func (e *LineTooLongError) Error() string {
	if e.Busy {
		return fmt.Sprintf("line did not fit in the memory left for long lines by other connections (%d bytes skipped)", e.Len)
	}
	return fmt.Sprintf("line is longer than %d bytes (%d bytes skipped)", e.Limit, e.Len)
}

// bigLine is the size above which a line's buffer is not kept for reuse.
const bigLine = 1 << 20

// Budget bounds the memory several LineReaders hold at once for lines
// longer than their read buffer. It is safe for concurrent use.
type Budget struct {
	max  int64
	used atomic.Int64
}

// NewBudget returns a Budget of max bytes.
func NewBudget(max int64) *Budget { return &Budget{max: max} }

// Used returns the bytes reserved now.
func (b *Budget) Used() int64 { return b.used.Load() }

func (b *Budget) reserve(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// LineReader splits a stream into newline-terminated lines of at most max
// bytes. A longer line is discarded as it streams in, never held in memory.
//
// NOTE(fixgo): a line longer than the read buffer is assembled in memory
// until its newline comes, so each connection can hold up to max bytes
// (32 MiB) of an unfinished line, outside --max-queue-bytes. With a Budget
// (SetBudget) those bytes are reserved from it, and a line that finds no
// room is skipped as too long (Busy), so the total stays bounded.
type LineReader struct {
	r      *bufio.Reader
	max    int
	buf    []byte // assembles a line longer than r's buffer
	budget *Budget
	held   int64 // bytes of budget reserved for buf
}

// NewLineReader reads from r through a buffer of size bufSize.
func NewLineReader(r io.Reader, bufSize, max int) *LineReader {
	return &LineReader{r: bufio.NewReaderSize(r, bufSize), max: max}
}

// SetBudget makes the reader reserve the memory of long lines from b. Call
// Release when done with the reader.
func (lr *LineReader) SetBudget(b *Budget) { lr.budget = b }

// Release returns the budget held for the last line. Next calls it first;
// the owner calls it once it stops reading.
func (lr *LineReader) Release() {
	if lr.held > 0 {
		lr.budget.used.Add(-lr.held)
		lr.held = 0
	}
}

// grow makes room in buf for a line of n bytes, reserving it from the
// budget; false when the budget has no room.
func (lr *LineReader) grow(n int) bool {
	if lr.budget == nil || int64(n) <= lr.held {
		return true
	}
	// Reserve ahead, like append, to keep reservations few; then exactly.
	want := max(int64(n), 2*lr.held, int64(lr.r.Size()))
	if !lr.budget.reserve(want - lr.held) {
		want = int64(n)
		if !lr.budget.reserve(want - lr.held) {
			return false
		}
	}
	lr.held = want
	lr.buf = slices.Grow(lr.buf, int(want)-len(lr.buf))
	return true
}

// Buffered reports how many bytes can be read without blocking.
func (lr *LineReader) Buffered() int { return lr.r.Buffered() }

// Next returns the next line without its newline. The slice is valid until
// the next call. A line over the limit, or one the budget has no room for,
// yields a *LineTooLongError and the reader is positioned after it. A final
// line without a newline is dropped: Next returns io.EOF (or the read
// error) instead.
func (lr *LineReader) Next() ([]byte, error) {
	lr.Release()
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

	// A long line: assemble it while it stays under the limit and the budget.
	lr.buf = lr.buf[:0]
	for {
		n := len(lr.buf) + len(frag)
		if !lr.grow(n) {
			return nil, lr.skip(n, err, true)
		}
		lr.buf = append(lr.buf, frag...)
		if err == nil || n > lr.max {
			break
		}
		frag, err = lr.r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			lr.buf = lr.buf[:0]
			lr.Release()
			return nil, err
		}
	}
	n := len(lr.buf)
	if err == nil && n-1 <= lr.max {
		return lr.buf[:n-1], nil
	}
	return nil, lr.skip(n, err, false)
}

// skip discards the rest of a line of which n bytes were read (the newline
// included when err is nil) and returns the error for it.
func (lr *LineReader) skip(n int, err error, busy bool) error {
	lr.buf = lr.buf[:0]
	lr.Release()
	for err != nil {
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
		var frag []byte
		frag, err = lr.r.ReadSlice('\n')
		n += len(frag)
	}
	return &LineTooLongError{Len: n - 1, Limit: lr.max, Busy: busy}
}
