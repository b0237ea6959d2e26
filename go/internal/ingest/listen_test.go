package ingest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheckSocketPath(t *testing.T) {
	for _, tc := range []struct {
		name string
		path string
		goos string
		want string // error substring; "" means accepted
	}{
		{"short linux", "/tmp/s", "linux", ""},
		{"107 on linux", "/" + strings.Repeat("a", 106), "linux", ""},
		{"108 on linux", "/" + strings.Repeat("a", 107), "linux", "is 108 bytes; the limit on linux is 107"},
		{"103 on darwin", "/" + strings.Repeat("a", 102), "darwin", ""},
		{"104 on darwin", "/" + strings.Repeat("a", 103), "darwin", "is 104 bytes; the limit on darwin is 103"},
		{"empty", "", "linux", "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSocketPath(tc.path, tc.goos)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "wsc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestListenExistingPaths(t *testing.T) {
	t.Run("fresh", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "s")
		ln, err := Listen(path)
		require.NoError(t, err)
		defer ln.Close()
		fi, err := os.Stat(path)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	})
	t.Run("stale", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "s")
		old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		require.NoError(t, err)
		old.SetUnlinkOnClose(false)
		old.Close()
		ln, err := Listen(path)
		require.NoError(t, err)
		ln.Close()
	})
	t.Run("live", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "s")
		other, err := net.Listen("unix", path)
		require.NoError(t, err)
		defer other.Close()
		_, err = Listen(path)
		assert.True(t, errors.Is(err, ErrInUse), "got %v", err)
		_, err = os.Stat(path)
		assert.NoError(t, err)
	})
	t.Run("directory", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "d")
		require.NoError(t, os.Mkdir(path, 0o700))
		_, err := Listen(path)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "is a directory, not a socket")
		fi, err := os.Stat(path)
		require.NoError(t, err)
		assert.True(t, fi.IsDir())
	})
	t.Run("regular file", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "f")
		require.NoError(t, os.WriteFile(path, []byte("keep"), 0o600))
		_, err := Listen(path)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "is a regular file, not a socket")
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, "keep", string(data))
	})
}
