// Package spool keeps accepted calls on disk until they are resolved, so
// an ack survives a crash of the sidecar and a long backend outage.
//
// The spool is one first-in first-out log split into segment files. Calls
// are appended in the order they are accepted and resolved (delivered or
// dropped) in the same order, so a single persisted cursor says what is
// done: a restart replays from the cursor, and a segment is deleted once the
// cursor has passed its end.
//
// A plain segment log rather than an embedded store (bbolt, Badger, SQLite):
// the access pattern is strictly append at one end and consume at the
// other, with no lookups or updates, so a log needs nothing but sequential
// writes and one fsync per group commit. An embedded store would add a
// B-tree or LSM, its own compaction and its own file-format and recovery
// rules to get less control over the one thing that matters here: which
// fsync makes which acks true.
//
// Durability policy: Append writes each record to the active segment with
// one write(2); Sync fsyncs everything appended before it was called. The
// sidecar calls Sync before writing acks to a connection, so every ack
// follows the fsync of its call, and calls that arrived together share one
// fsync (group commit). The resolve cursor is written in place after each
// delivered batch without fsync: it survives a crash of the process, and
// after a power loss at worst replays calls already delivered, which the
// trace server upserts by id.
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
)

// DropCorrupt is the drop reason of calls acked in this run whose records
// could not be read back (the disk changed under the sidecar).
const DropCorrupt backend.DropReason = "spool_corrupt"

// ErrFull is returned by Append when the record would take the spool past
// its byte limit.
var ErrFull = errors.New("spool: full")

const (
	segmentExt    = ".seg"
	cursorName    = "cursor"
	lockName      = "lock"
	cursorBytes   = 20 // u64 segment, u64 offset, u32 crc
	maxSegment    = 64 << 20
	minSegment    = 64 << 10
	segmentSlices = 8 // a segment is about MaxBytes/segmentSlices
)

// Config configures a Spool.
type Config struct {
	Dir string // created if missing (0700)
	// MaxBytes bounds the bytes of segment files; Append refuses with
	// ErrFull beyond it. Must be > 0.
	MaxBytes int64
	// SegmentBytes is the size at which a segment is closed and a new one
	// begun; zero means MaxBytes/8, within 64 KiB..64 MiB.
	SegmentBytes int64
	Logger       *slog.Logger // nil discards logs
}

// Pos is a place in the spool: the end of a record.
type Pos struct {
	Seg uint64
	Off int64
}

type segment struct {
	id   uint64
	size int64 // bytes written; readers stop here
}

// Spool is the on-disk queue. All methods are safe for concurrent use.
type Spool struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File // holds the directory lock while open
	dir  *os.File // for fsync after creating a segment

	mu       sync.Mutex
	segs     []*segment // guarded by mu; oldest first, the last one is active
	active   *os.File   // guarded by mu; the last segment, open for appending
	unsynced []*os.File // guarded by mu; closed-for-append segments awaiting fsync
	dirDirty bool       // guarded by mu
	bytes    int64      // guarded by mu; sum of segment sizes
	appended int64      // guarded by mu; records, replayed ones included
	loaded   int64      // guarded by mu; records handed out by Append(inMemory) or Next
	readPos  Pos        // guarded by mu; where Next goes on
	failed   error      // guarded by mu; a write or fsync error; the spool takes no more records
	closed   bool       // guarded by mu

	appendOps atomic.Int64 // records written, for group commit
	syncMu    sync.Mutex   // one fsync round at a time
	syncedOps atomic.Int64
	syncErr   error        // guarded by syncMu
	syncs     atomic.Int64 // fsync rounds
	syncNanos atomic.Int64 // time spent in them

	cursorMu sync.Mutex
	cursor   *os.File // guarded by cursorMu
	resolved Pos      // guarded by cursorMu

	firstNew uint64 // the first segment of this run; older ones were counted at Open
	replayed atomic.Int64
	corrupt  atomic.Int64
}

// Open opens or creates the spool in cfg.Dir. Records left by an earlier
// run after its resolve cursor become the first records Next returns;
// damaged ones are skipped and counted (Corrupt). Open fails if another
// process holds the directory.
func Open(cfg Config) (*Spool, error) {
	if cfg.Dir == "" || cfg.MaxBytes <= 0 {
		return nil, fmt.Errorf("spool: need a directory and a positive byte limit")
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = min(max(cfg.MaxBytes/segmentSlices, minSegment), maxSegment)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{cfg: cfg, log: cfg.Logger.With("component", "spool")}
	lock, err := lockDir(filepath.Join(cfg.Dir, lockName))
	if err != nil {
		return nil, err
	}
	s.lock = lock
	if err := s.open(); err != nil {
		s.closeFiles()
		return nil, err
	}
	return s, nil
}

func (s *Spool) open() error {
	var err error
	if s.dir, err = os.Open(s.cfg.Dir); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if s.cursor, err = os.OpenFile(filepath.Join(s.cfg.Dir, cursorName), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	cur, curOK := s.readCursor()

	ids, err := s.listSegments()
	if err != nil {
		return err
	}
	var last uint64
	if len(ids) > 0 {
		last = ids[len(ids)-1]
	}
	if !curOK && len(ids) > 0 {
		s.log.Warn("spool cursor missing or damaged; replaying every segment (the trace server upserts by id)")
		cur = Pos{Seg: ids[0]}
	}
	last = max(last, cur.Seg)

	// Drop what an earlier run finished, then count what is left.
	for _, id := range ids {
		path := s.segPath(id)
		if id < cur.Seg {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("spool: %w", err)
			}
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		start := int64(0)
		if id == cur.Seg {
			start = min(cur.Off, fi.Size())
		}
		n, bad, err := countRecords(path, start, fi.Size())
		if err != nil {
			return err
		}
		if n == 0 {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("spool: %w", err)
			}
			s.corrupt.Add(bad)
			continue
		}
		if len(s.segs) == 0 {
			s.readPos = Pos{Seg: id, Off: start}
		}
		s.segs = append(s.segs, &segment{id: id, size: fi.Size()})
		s.bytes += fi.Size()
		s.appended += n
		s.replayed.Add(n)
		s.corrupt.Add(bad)
	}
	if c := s.corrupt.Load(); c > 0 {
		s.log.Warn("skipped damaged spool records", "corrupt_records", c)
	}
	if len(s.segs) == 0 {
		s.readPos = Pos{Seg: last + 1, Off: int64(len(segmentMagic))}
	}
	s.resolved = s.readPos
	if err := s.writeCursor(s.resolved); err != nil {
		return err
	}
	// New records always go to a new segment: old ones are never written again.
	s.firstNew = last + 1
	return s.newSegmentLocked(last + 1)
}

func countRecords(path string, start, end int64) (n, bad int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	rd := NewReader(f, start, end)
	for {
		if _, err := rd.Next(); err != nil {
			if errors.Is(err, io.EOF) {
				return n, rd.Corrupt(), nil
			}
			return 0, 0, fmt.Errorf("spool: reading %s: %w", filepath.Base(path), err)
		}
		n++
	}
}

func (s *Spool) listSegments() ([]uint64, error) {
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var ids []uint64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), segmentExt)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		id, err := strconv.ParseUint(name, 16, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

func (s *Spool) segPath(id uint64) string {
	return filepath.Join(s.cfg.Dir, fmt.Sprintf("%016x%s", id, segmentExt))
}

// newSegmentLocked makes segment id the active one.
func (s *Spool) newSegmentLocked(id uint64) error {
	f, err := os.OpenFile(s.segPath(id), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if _, err := f.Write(segmentMagic); err != nil {
		f.Close()
		os.Remove(s.segPath(id))
		return fmt.Errorf("spool: %w", err)
	}
	if s.active != nil {
		s.unsynced = append(s.unsynced, s.active)
	}
	s.active = f
	s.dirDirty = true
	s.segs = append(s.segs, &segment{id: id, size: int64(len(segmentMagic))})
	s.bytes += int64(len(segmentMagic))
	return nil
}

// Append writes it at the end of the spool and returns the end of its
// record. With inMemory, the caller keeps the call in memory, and when no
// records are waiting to be loaded the spool counts it as loaded (Next will
// not return it); the result says whether it did. The record is durable
// only after the next Sync. Append returns ErrFull when the record would
// take the spool past MaxBytes, or the write error; either way nothing was
// added.
func (s *Spool) Append(it backend.Item, inMemory bool) (Pos, bool, error) {
	n := RecordBytes(it)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return Pos{}, false, errors.New("spool: closed")
	case s.failed != nil:
		return Pos{}, false, s.failed
	case s.bytes+n > s.cfg.MaxBytes:
		return Pos{}, false, ErrFull
	}
	seg := s.segs[len(s.segs)-1]
	if seg.size > int64(len(segmentMagic)) && seg.size+n > s.cfg.SegmentBytes {
		if err := s.newSegmentLocked(seg.id + 1); err != nil {
			return Pos{}, false, err
		}
		seg = s.segs[len(s.segs)-1]
	}

	rec := appendRecord(make([]byte, 0, n), it)
	if w, err := s.active.Write(rec); err != nil {
		// Cut a partial record off so the segment stays well formed.
		if w > 0 {
			if terr := s.active.Truncate(seg.size); terr != nil {
				s.failed = fmt.Errorf("spool: write failed and could not be undone: %w", terr)
				s.log.Error("spool write failed; refusing new calls", "err", terr)
			}
		}
		return Pos{}, false, fmt.Errorf("spool: %w", err)
	}
	seg.size += n
	s.bytes += n
	pos := Pos{Seg: seg.id, Off: seg.size}
	kept := inMemory && s.loaded == s.appended
	s.appended++
	if kept {
		s.loaded++
		s.readPos = pos
	}
	s.appendOps.Add(1)
	return pos, kept, nil
}

// Sync makes every record appended before the call durable. Concurrent
// callers share one fsync. After an fsync error the spool takes no more
// records and Sync keeps failing: the kernel may have dropped the pages.
func (s *Spool) Sync() error {
	target := s.appendOps.Load()
	if s.syncedOps.Load() >= target {
		return nil
	}
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.syncErr != nil {
		return s.syncErr
	}
	if s.syncedOps.Load() >= target {
		return nil
	}

	s.mu.Lock()
	upTo := s.appendOps.Load()
	active, old, dirty := s.active, s.unsynced, s.dirDirty
	s.unsynced, s.dirDirty = nil, false
	s.mu.Unlock()

	start := time.Now()
	err := syncFiles(old, active, dirty, s.dir)
	s.syncs.Add(1)
	s.syncNanos.Add(int64(time.Since(start)))
	if err != nil {
		s.syncErr = fmt.Errorf("spool: fsync: %w", err)
		s.mu.Lock()
		s.failed = s.syncErr
		s.mu.Unlock()
		s.log.Error("spool fsync failed; refusing new calls", "err", err)
		return s.syncErr
	}
	s.syncedOps.Store(upTo)
	return nil
}

func syncFiles(old []*os.File, active *os.File, dirty bool, dir *os.File) error {
	var errs []error
	for _, f := range old {
		errs = append(errs, f.Sync(), f.Close())
	}
	if active != nil {
		errs = append(errs, active.Sync())
	}
	if dirty {
		errs = append(errs, dir.Sync())
	}
	return errors.Join(errs...)
}

// Loaded is one record read back by Next.
type Loaded struct {
	Item backend.Item
	Pos  Pos
}

// Next reads records not yet loaded, in order, while the sum of size over
// them stays within maxBytes; with force, the first record is returned
// even if it alone is larger. lost counts records appended in this run
// that could not be read back. Next is meant for one goroutine at a time.
func (s *Spool) Next(maxBytes int64, force bool, size func(backend.Item) int64) (recs []Loaded, lost int64, err error) {
	s.mu.Lock()
	if s.loaded == s.appended {
		s.mu.Unlock()
		return nil, 0, nil
	}
	pos, waiting := s.readPos, s.appended-s.loaded
	limits := make([]segment, 0, len(s.segs))
	for _, sg := range s.segs {
		if sg.id >= pos.Seg {
			limits = append(limits, *sg)
		}
	}
	s.mu.Unlock()

	var bytes int64
	full := false
	for _, sg := range limits {
		if full {
			break
		}
		start := int64(0)
		if sg.id == pos.Seg {
			start = pos.Off
		}
		if start >= sg.size {
			pos = Pos{Seg: sg.id, Off: sg.size}
			continue
		}
		f, err := os.Open(s.segPath(sg.id))
		if err != nil {
			return nil, 0, fmt.Errorf("spool: %w", err)
		}
		rd := NewReader(f, start, sg.size)
		for {
			it, err := rd.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				f.Close()
				return nil, 0, fmt.Errorf("spool: %w", err)
			}
			n := size(it)
			if bytes+n > maxBytes && !(force && len(recs) == 0) {
				full = true // read again next time
				break
			}
			pos = Pos{Seg: sg.id, Off: rd.Offset()}
			recs = append(recs, Loaded{Item: it, Pos: pos})
			bytes += n
		}
		if !full && rd.Offset() >= sg.size {
			pos = Pos{Seg: sg.id, Off: sg.size}
		}
		f.Close()
		if c := rd.Corrupt(); c > 0 && sg.id >= s.firstNew {
			s.corrupt.Add(c)
			s.log.Error("damaged spool records in this run's segment", "segment", sg.id, "corrupt_records", c)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.readPos = pos
	s.loaded += int64(len(recs))
	if len(limits) == 0 {
		return recs, 0, nil
	}
	last := limits[len(limits)-1]
	if pos.Seg == last.id && pos.Off >= last.size && int64(len(recs)) < waiting {
		// Read to the end of what was there, yet fewer records than
		// were appended: some could not be read back.
		lost = waiting - int64(len(recs))
		s.loaded += lost
	}
	return recs, lost, nil
}

// Resolve records that every record up to and including the one ending at
// p is resolved, and deletes segments wholly before p. Records resolve in
// order, so p only moves forward.
func (s *Spool) Resolve(p Pos) error {
	s.cursorMu.Lock()
	defer s.cursorMu.Unlock()
	if p.Seg < s.resolved.Seg || (p.Seg == s.resolved.Seg && p.Off <= s.resolved.Off) {
		return nil
	}
	s.resolved = p
	if err := s.writeCursor(p); err != nil {
		return err
	}
	return s.deleteResolved(p)
}

// deleteResolved removes segments every record of which is before p,
// except the active one.
func (s *Spool) deleteResolved(p Pos) error {
	s.mu.Lock()
	var gone []uint64
	for len(s.segs) > 1 {
		sg := s.segs[0]
		if sg.id > p.Seg || (sg.id == p.Seg && p.Off < sg.size) {
			break
		}
		gone = append(gone, sg.id)
		s.bytes -= sg.size
		s.segs = s.segs[1:]
	}
	s.mu.Unlock()
	var errs []error
	for _, id := range gone {
		if err := os.Remove(s.segPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

func (s *Spool) readCursor() (Pos, bool) {
	var b [cursorBytes]byte
	if _, err := s.cursor.ReadAt(b[:], 0); err != nil {
		return Pos{}, false
	}
	if crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:]) {
		return Pos{}, false
	}
	p := Pos{Seg: binary.LittleEndian.Uint64(b[0:8]), Off: int64(binary.LittleEndian.Uint64(b[8:16]))}
	return p, p.Off >= 0
}

// writeCursor overwrites the cursor in place: one small pwrite, which a
// crash of the process cannot tear.
func (s *Spool) writeCursor(p Pos) error {
	var b [cursorBytes]byte
	binary.LittleEndian.PutUint64(b[0:8], p.Seg)
	binary.LittleEndian.PutUint64(b[8:16], uint64(p.Off))
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
	if _, err := s.cursor.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("spool: cursor: %w", err)
	}
	return nil
}

// Syncs returns the number of fsync rounds so far and the time they took,
// for benchmarks: calls per round is the group-commit window.
func (s *Spool) Syncs() (int64, time.Duration) {
	return s.syncs.Load(), time.Duration(s.syncNanos.Load())
}

// Usage is the spool's state for stats and readiness.
type Usage struct {
	Bytes    int64 // bytes of segment files
	MaxBytes int64 // Config.MaxBytes
	Waiting  int64 // records on disk not loaded into memory
	Replayed int64 // records found at Open
	Corrupt  int64 // damaged regions skipped
}

// Usage reports sizes and counters. Readiness checks compare Bytes with
// MaxBytes.
func (s *Spool) Usage() Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Usage{Bytes: s.bytes, MaxBytes: s.cfg.MaxBytes, Waiting: s.appended - s.loaded,
		Replayed: s.replayed.Load(), Corrupt: s.corrupt.Load()}
}

// Dir returns the spool directory.
func (s *Spool) Dir() string { return s.cfg.Dir }

// Close syncs and closes the spool. When every record is resolved, the
// segments are deleted; otherwise they wait for the next Open.
func (s *Spool) Close() error {
	err := s.Sync()
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return err
	}
	s.closed = true
	last := s.segs[len(s.segs)-1].id
	s.mu.Unlock()

	s.cursorMu.Lock()
	if s.allResolved(s.resolved) {
		// Everything is done: leave an empty directory and a cursor past it.
		s.resolved = Pos{Seg: last + 1, Off: int64(len(segmentMagic))}
		err = errors.Join(err, s.writeCursor(s.resolved))
		s.mu.Lock()
		for _, sg := range s.segs {
			if rerr := os.Remove(s.segPath(sg.id)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
		s.segs = s.segs[:0]
		s.bytes = 0
		s.mu.Unlock()
	}
	s.cursorMu.Unlock()
	s.closeFiles()
	return err
}

// allResolved reports whether no record lies after p.
func (s *Spool) allResolved(p Pos) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sg := range s.segs {
		switch {
		case sg.id < p.Seg:
		case sg.id == p.Seg && p.Off >= sg.size:
		case sg.id > p.Seg && sg.size <= int64(len(segmentMagic)):
		default:
			return false
		}
	}
	return true
}

func (s *Spool) closeFiles() {
	s.mu.Lock()
	for _, f := range s.unsynced {
		f.Close()
	}
	s.unsynced = nil
	for _, f := range []*os.File{s.active, s.dir, s.lock} {
		if f != nil {
			f.Close()
		}
	}
	s.active, s.dir, s.lock = nil, nil, nil
	s.mu.Unlock()

	s.cursorMu.Lock()
	if s.cursor != nil {
		s.cursor.Close()
		s.cursor = nil
	}
	s.cursorMu.Unlock()
}
