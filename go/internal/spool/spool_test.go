package spool

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
)

func openSpool(t *testing.T, dir string, maxBytes, segBytes int64) *Spool {
	t.Helper()
	s, err := Open(Config{Dir: dir, MaxBytes: maxBytes, SegmentBytes: segBytes})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// appendN appends items from..to-1, none kept in memory, and syncs.
func appendN(t *testing.T, s *Spool, from, to int) []Pos {
	t.Helper()
	var out []Pos
	for i := from; i < to; i++ {
		p, kept, err := s.Append(item(i), false)
		require.NoError(t, err)
		assert.False(t, kept)
		out = append(out, p)
	}
	require.NoError(t, s.Sync())
	return out
}

func loadAll(t *testing.T, s *Spool) []Loaded {
	t.Helper()
	var out []Loaded
	for {
		recs, lost, err := s.Next(1<<20, true, func(it backend.Item) int64 { return int64(len(it.Payload)) })
		require.NoError(t, err)
		assert.Zero(t, lost)
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
	}
}

func loadedIDs(recs []Loaded) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Item.ID)
	}
	return out
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	require.NoError(t, err)
	return m
}

func TestAppendRotateResolveDelete(t *testing.T) {
	dir := t.TempDir()
	recLen := RecordBytes(item(0))
	s := openSpool(t, dir, 1<<20, 8+3*recLen) // three records per segment

	pos := appendN(t, s, 0, 10)
	assert.Len(t, segFiles(t, dir), 4)
	assert.Equal(t, int64(10), s.Usage().Waiting)

	recs := loadAll(t, s)
	assert.Equal(t, ids(0, 10), loadedIDs(recs))
	for i, r := range recs {
		assert.Equal(t, pos[i], r.Pos)
	}
	assert.Equal(t, int64(0), s.Usage().Waiting)

	// Resolving through record 4 (the middle of the second segment)
	// deletes only the first segment.
	require.NoError(t, s.Resolve(pos[4]))
	assert.Len(t, segFiles(t, dir), 3)
	require.NoError(t, s.Resolve(pos[5]))
	assert.Len(t, segFiles(t, dir), 2)
	// The active segment stays until Close, which removes it once resolved.
	require.NoError(t, s.Resolve(pos[9]))
	assert.Len(t, segFiles(t, dir), 1)
	require.NoError(t, s.Close())
	assert.Empty(t, segFiles(t, dir))
}

func TestInMemoryAppendSkipsLoading(t *testing.T) {
	s := openSpool(t, t.TempDir(), 1<<20, 0)
	_, kept, err := s.Append(item(0), true)
	require.NoError(t, err)
	assert.True(t, kept)
	appendN(t, s, 1, 3) // backlog: the next in-memory append must wait its turn
	_, kept, err = s.Append(item(3), true)
	require.NoError(t, err)
	assert.False(t, kept, "a call behind the disk backlog is not kept in memory")
	assert.Equal(t, ids(1, 4), loadedIDs(loadAll(t, s)))
	_, kept, err = s.Append(item(4), true)
	require.NoError(t, err)
	assert.True(t, kept)
}

func TestReplayFromCursor(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 8 + 4*RecordBytes(item(0))})
	require.NoError(t, err)
	pos := appendN(t, s, 0, 10)
	loadAll(t, s)
	require.NoError(t, s.Resolve(pos[5]))
	require.NoError(t, s.Close()) // not everything is resolved: the files stay

	s2 := openSpool(t, dir, 1<<20, 0)
	u := s2.Usage()
	assert.Equal(t, int64(4), u.Replayed)
	assert.Equal(t, int64(4), u.Waiting)
	assert.Zero(t, u.Corrupt)
	// New calls go after the replayed ones.
	appendN(t, s2, 10, 12)
	assert.Equal(t, ids(6, 12), loadedIDs(loadAll(t, s2)))
}

func TestReplayDamagedFiles(t *testing.T) {
	dir := t.TempDir()
	recLen := RecordBytes(item(0))
	s, err := Open(Config{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 8 + 5*recLen})
	require.NoError(t, err)
	appendN(t, s, 0, 10)
	require.NoError(t, s.Close())
	segs := segFiles(t, dir)
	require.Len(t, segs, 2)

	// Flip a bit in record 1's payload and cut record 9 in half.
	first, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	first[8+int(recLen)+headerBytes+15] ^= 0x20
	require.NoError(t, os.WriteFile(segs[0], first, 0o600))
	require.NoError(t, os.Truncate(segs[1], 8+4*recLen+recLen/2))

	for range 2 { // opening twice must give the same answer: no crash loop
		s2, err := Open(Config{Dir: dir, MaxBytes: 1 << 20})
		require.NoError(t, err)
		u := s2.Usage()
		assert.Equal(t, int64(8), u.Replayed)
		assert.Equal(t, int64(2), u.Corrupt)
		require.NoError(t, s2.Close())
	}
	s3 := openSpool(t, dir, 1<<20, 0)
	want := append(ids(0, 1), ids(2, 9)...)
	assert.Equal(t, want, loadedIDs(loadAll(t, s3)))
	assert.Equal(t, int64(2), s3.Usage().Corrupt, "damage is counted once, at open")
}

func TestDamagedCursorReplaysEverything(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, MaxBytes: 1 << 20})
	require.NoError(t, err)
	pos := appendN(t, s, 0, 4)
	loadAll(t, s)
	require.NoError(t, s.Resolve(pos[1]))
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, cursorName), []byte("garbage"), 0o600))

	s2 := openSpool(t, dir, 1<<20, 0)
	assert.Equal(t, ids(0, 4), loadedIDs(loadAll(t, s2)), "duplicates, never losses")
}

func TestFull(t *testing.T) {
	recLen := RecordBytes(item(0))
	s := openSpool(t, t.TempDir(), 8+3*recLen, 0)
	pos := appendN(t, s, 0, 3)
	_, _, err := s.Append(item(3), false)
	assert.ErrorIs(t, err, ErrFull)
	assert.Equal(t, int64(3), s.Usage().Waiting, "a refused call adds nothing")

	// Space comes back when a whole segment is resolved; the active one
	// is only deleted at Close, so here it stays full.
	loadAll(t, s)
	require.NoError(t, s.Resolve(pos[2]))
	_, _, err = s.Append(item(3), false)
	assert.ErrorIs(t, err, ErrFull)
}

func TestFullFreesWithRotation(t *testing.T) {
	recLen := RecordBytes(item(0))
	s := openSpool(t, t.TempDir(), 2*(8+2*recLen), 8+2*recLen) // two segments of two
	pos := appendN(t, s, 0, 3)                                 // second segment half full
	_, _, err := s.Append(item(3), false)
	require.NoError(t, err)
	_, _, err = s.Append(item(4), false)
	assert.ErrorIs(t, err, ErrFull)
	loadAll(t, s)
	require.NoError(t, s.Resolve(pos[1])) // the first segment is done and deleted
	_, _, err = s.Append(item(4), false)
	assert.NoError(t, err)
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	openSpool(t, dir, 1<<20, 0)
	_, err := Open(Config{Dir: dir, MaxBytes: 1 << 20})
	assert.ErrorContains(t, err, "in use by another sidecar")
}

func TestFilePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := openSpool(t, dir, 1<<20, 0)
	appendN(t, s, 0, 1)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	for _, f := range segFiles(t, dir) {
		fi, err := os.Stat(f)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	}
}

func BenchmarkAppendSync(b *testing.B) {
	dir, err := os.MkdirTemp("", "wsc-spool-bench-")
	require.NoError(b, err)
	defer os.RemoveAll(dir)
	s, err := Open(Config{Dir: dir, MaxBytes: 1 << 40})
	require.NoError(b, err)
	defer s.Close()
	it := item(1)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.Append(it, false); err != nil {
			b.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}
