package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
)

func item(i int) backend.Item {
	mode := backend.ModeStart
	if i%2 == 1 {
		mode = backend.ModeEnd
	}
	id := fmt.Sprintf("call-%04d", i)
	return backend.Item{Mode: mode, ID: id, ProjectID: "ent/proj",
		Payload: []byte(fmt.Sprintf(`{"start":{"id":%q,"project_id":"ent/proj","inputs":{"n":%d}}}`, id, i))}
}

// segmentBytes encodes a segment file holding items 0..n-1.
func segmentBytes(n int) []byte {
	buf := append([]byte(nil), segmentMagic...)
	for i := range n {
		buf = appendRecord(buf, item(i))
	}
	return buf
}

// readAll returns the ids read from data and the damage count.
func readAll(t *testing.T, data []byte) ([]string, int64) {
	t.Helper()
	rd := NewReader(bytes.NewReader(data), 0, int64(len(data)))
	var ids []string
	for {
		it, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return ids, rd.Corrupt()
		}
		require.NoError(t, err)
		ids = append(ids, it.ID)
	}
}

func ids(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, item(i).ID)
	}
	return out
}

func TestRecordRoundTrip(t *testing.T) {
	data := segmentBytes(3)
	rd := NewReader(bytes.NewReader(data), 0, int64(len(data)))
	for i := range 3 {
		got, err := rd.Next()
		require.NoError(t, err)
		assert.Equal(t, item(i), got)
	}
	_, err := rd.Next()
	assert.ErrorIs(t, err, io.EOF)
	assert.Equal(t, int64(0), rd.Corrupt())
	assert.Equal(t, int64(len(data)), rd.Offset())
}

func TestReaderDamage(t *testing.T) {
	whole := segmentBytes(5)
	recLen := int(RecordBytes(item(0)))
	second := len(segmentMagic) + recLen // offset of record 1
	for _, tc := range []struct {
		name    string
		mangle  func([]byte) []byte
		want    []string
		corrupt int64
	}{
		{"truncated tail", func(b []byte) []byte { return b[:len(b)-7] }, ids(0, 4), 1},
		{"truncated header", func(b []byte) []byte { return b[:len(b)-recLen+5] }, ids(0, 4), 1},
		{"payload bit flip", func(b []byte) []byte { b[second+headerBytes+20] ^= 0x04; return b }, append(ids(0, 1), ids(2, 5)...), 1},
		{"length bit flip", func(b []byte) []byte { b[second+4] ^= 0x01; return b }, append(ids(0, 1), ids(2, 5)...), 1},
		{"huge length", func(b []byte) []byte { b[second+7] = 0x7f; return b }, append(ids(0, 1), ids(2, 5)...), 1},
		{"crc bit flip", func(b []byte) []byte { b[second+9] ^= 0x80; return b }, append(ids(0, 1), ids(2, 5)...), 1},
		{"magic damaged", func(b []byte) []byte { b[second] = 'x'; return b }, append(ids(0, 1), ids(2, 5)...), 1},
		{"two damaged records", func(b []byte) []byte {
			b[second+headerBytes+3] ^= 1
			b[second+2*recLen+headerBytes+3] ^= 1
			return b
		}, []string{item(0).ID, item(2).ID, item(4).ID}, 2},
		{"header damaged", func(b []byte) []byte { b[2] = 0; return b }, ids(0, 5), 1},
		{"garbage between", func(b []byte) []byte {
			return append(append(append([]byte(nil), b[:second]...), "garbage\x00\xff"...), b[second:]...)
		}, ids(0, 5), 1},
		{"zeros", func(b []byte) []byte { return make([]byte, 100) }, nil, 1},
		{"empty", func(b []byte) []byte { return nil }, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, corrupt := readAll(t, tc.mangle(bytes.Clone(whole)))
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.corrupt, corrupt)
		})
	}
}

func TestReaderLargeRecordAfterResync(t *testing.T) {
	big := item(1)
	big.Payload = bytes.Repeat([]byte("a"), 200<<10) // larger than the resync chunk
	data := append([]byte(nil), segmentMagic...)
	data = append(data, "\xff\xff\xff junk before the first record"...)
	data = appendRecord(data, big)
	data = appendRecord(data, item(2))
	got, corrupt := readAll(t, data)
	assert.Equal(t, []string{big.ID, item(2).ID}, got)
	assert.Equal(t, int64(1), corrupt)
}

// FuzzReadSegment feeds arbitrary bytes to the segment reader: it must
// neither panic nor loop, and every record it returns must re-encode to a
// record that reads back the same.
func FuzzReadSegment(f *testing.F) {
	f.Add(segmentBytes(3))
	f.Add(segmentBytes(1)[:20])
	f.Add([]byte{})
	f.Add(append(append([]byte(nil), segmentMagic...), recordMagic...))
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := NewReader(bytes.NewReader(data), 0, int64(len(data)))
		last := rd.Offset()
		for {
			it, err := rd.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("reader error on in-memory data: %v", err)
			}
			if rd.Offset() <= last || rd.Offset() > int64(len(data)) {
				t.Fatalf("offset went from %d to %d of %d", last, rd.Offset(), len(data))
			}
			last = rd.Offset()
			again := appendRecord(append([]byte(nil), segmentMagic...), it)
			rd2 := NewReader(bytes.NewReader(again), 0, int64(len(again)))
			it2, err := rd2.Next()
			if err != nil || it2.ID != it.ID || it2.ProjectID != it.ProjectID || it2.Mode != it.Mode ||
				!bytes.Equal(it2.Payload, it.Payload) {
				t.Fatalf("record does not round-trip: %v", err)
			}
		}
		if rd.Corrupt() < 0 || rd.Corrupt() > int64(len(data))+1 {
			t.Fatalf("corrupt count %d for %d bytes", rd.Corrupt(), len(data))
		}
	})
}
