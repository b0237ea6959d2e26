package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
)

// Segment file layout (all integers little-endian):
//
//	file   = segmentMagic record*
//	record = recordMagic u32:len u32:crc body
//	body   = u8:mode uvarint:len(id) id uvarint:len(project_id) project_id payload
//
// crc is CRC-32C over the len field and the body, so a damaged length is
// caught as surely as a damaged payload. mode is 's' (call_start) or 'e'
// (call_end); payload is the client's CallStartReq/CallEndReq JSON, byte for
// byte. Nothing else is stored: no API key, no backend URL, no connection.
//
// recordMagic starts with 0xFF, a byte that never occurs in UTF-8, and every
// payload and id is checked UTF-8 before it is spooled; after a damaged
// region the reader looks for the next recordMagic and goes on from there.
var (
	segmentMagic = []byte("WSSPOOL1")
	recordMagic  = []byte{0xFF, 'W', 'S', 'R'}
)

const (
	headerBytes = 12 // magic, len, crc
	// maxBodyBytes bounds a record body: a call is at most
	// protocol.MaxBodyBytes; anything longer is damage.
	maxBodyBytes = 64 << 20
	modeStart    = 's'
	modeEnd      = 'e'
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// RecordBytes is the size of it once spooled.
func RecordBytes(it backend.Item) int64 {
	return int64(headerBytes + bodyBytes(it))
}

func bodyBytes(it backend.Item) int {
	return 1 + uvarintLen(len(it.ID)) + len(it.ID) + uvarintLen(len(it.ProjectID)) + len(it.ProjectID) + len(it.Payload)
}

func uvarintLen(n int) int {
	l := 1
	for n >= 0x80 {
		n >>= 7
		l++
	}
	return l
}

// appendRecord appends the encoded record of it to dst.
func appendRecord(dst []byte, it backend.Item) []byte {
	start := len(dst)
	dst = append(dst, recordMagic...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(bodyBytes(it)))
	dst = append(dst, 0, 0, 0, 0) // crc, filled below
	mode := byte(modeStart)
	if it.Mode == backend.ModeEnd {
		mode = modeEnd
	}
	dst = append(dst, mode)
	dst = binary.AppendUvarint(dst, uint64(len(it.ID)))
	dst = append(dst, it.ID...)
	dst = binary.AppendUvarint(dst, uint64(len(it.ProjectID)))
	dst = append(dst, it.ProjectID...)
	dst = append(dst, it.Payload...)
	rec := dst[start:]
	crc := crc32.Update(crc32.Checksum(rec[4:8], castagnoli), castagnoli, rec[headerBytes:])
	binary.LittleEndian.PutUint32(rec[8:12], crc)
	return dst
}

var errBadBody = errors.New("spool: malformed record body")

// decodeBody parses a checked body. The item's payload aliases body.
func decodeBody(body []byte) (backend.Item, error) {
	var it backend.Item
	if len(body) < 1 {
		return it, errBadBody
	}
	switch body[0] {
	case modeStart:
		it.Mode = backend.ModeStart
	case modeEnd:
		it.Mode = backend.ModeEnd
	default:
		return it, errBadBody
	}
	rest := body[1:]
	var ok bool
	if it.ID, rest, ok = readString(rest); !ok {
		return it, errBadBody
	}
	if it.ProjectID, rest, ok = readString(rest); !ok {
		return it, errBadBody
	}
	if len(rest) == 0 {
		return it, errBadBody
	}
	it.Payload = rest
	return it, nil
}

func readString(b []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, false
	}
	return string(b[k : k+int(n)]), b[k+int(n):], true
}

// Reader reads the records of one segment between two offsets, skipping
// damaged regions. It never fails on bad data; only I/O errors are returned.
type Reader struct {
	r       io.ReaderAt
	off     int64 // next byte to read
	end     int64 // stop here: bytes past it may be half written
	inBad   bool  // the last thing read was damage
	corrupt int64
	hdr     [headerBytes]byte
}

// NewReader reads r from start (0 or a record boundary) up to end. At
// offset 0 it expects the segment header.
func NewReader(r io.ReaderAt, start, end int64) *Reader {
	rd := &Reader{r: r, off: start, end: end}
	if start == 0 {
		var m [8]byte
		if end >= int64(len(m)) {
			if _, err := r.ReadAt(m[:], 0); err == nil && bytes.Equal(m[:], segmentMagic) {
				rd.off = int64(len(m))
				return rd
			}
		}
		rd.markBad()
	}
	return rd
}

// Corrupt returns how many damaged regions (a bad record, or a run of bad
// bytes up to the next good record, or a torn tail) were skipped so far.
func (rd *Reader) Corrupt() int64 { return rd.corrupt }

// Offset returns where the next record starts: after Next, the end of the
// record it returned.
func (rd *Reader) Offset() int64 { return rd.off }

func (rd *Reader) markBad() {
	if !rd.inBad {
		rd.corrupt++
		rd.inBad = true
	}
}

// Next returns the next good record, or io.EOF at the end. The item owns
// its memory.
func (rd *Reader) Next() (backend.Item, error) {
	for {
		if rd.end-rd.off < headerBytes {
			if rd.off < rd.end {
				rd.markBad() // torn tail
				rd.off = rd.end
			}
			return backend.Item{}, io.EOF
		}
		if _, err := rd.r.ReadAt(rd.hdr[:], rd.off); err != nil {
			return backend.Item{}, err
		}
		n := int64(binary.LittleEndian.Uint32(rd.hdr[4:8]))
		if !bytes.Equal(rd.hdr[:4], recordMagic) || n > maxBodyBytes || n > rd.end-rd.off-headerBytes {
			if err := rd.resync(); err != nil {
				return backend.Item{}, err
			}
			continue
		}
		body := make([]byte, n)
		if _, err := rd.r.ReadAt(body, rd.off+headerBytes); err != nil {
			return backend.Item{}, err
		}
		crc := crc32.Update(crc32.Checksum(rd.hdr[4:8], castagnoli), castagnoli, body)
		it, err := decodeBody(body)
		if crc != binary.LittleEndian.Uint32(rd.hdr[8:12]) || err != nil {
			if err := rd.resync(); err != nil {
				return backend.Item{}, err
			}
			continue
		}
		rd.off += headerBytes + n
		rd.inBad = false
		return it, nil
	}
}

// resync counts damage at off and moves to the next recordMagic after it,
// or to the end.
func (rd *Reader) resync() error {
	rd.markBad()
	buf := make([]byte, 64<<10)
	from := rd.off + 1
	for from < rd.end {
		n := min(int64(len(buf)), rd.end-from)
		if _, err := rd.r.ReadAt(buf[:n], from); err != nil {
			return err
		}
		if i := bytes.Index(buf[:n], recordMagic); i >= 0 {
			rd.off = from + int64(i)
			return nil
		}
		// Keep a partial magic at the chunk's end for the next round.
		from += max(1, n-int64(len(recordMagic))+1)
	}
	rd.off = rd.end
	return nil
}
