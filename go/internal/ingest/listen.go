package ingest

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"
)

// MaxSocketPath returns the longest Unix socket path goos accepts in bytes:
// sun_path less its terminating NUL.
func MaxSocketPath(goos string) int {
	switch goos {
	case "linux", "android", "windows":
		return 107
	default: // darwin and the BSDs
		return 103
	}
}

// CheckSocketPath refuses a path the OS cannot bind, naming its length and
// the limit.
func CheckSocketPath(path, goos string) error {
	if path == "" {
		return errors.New("socket path is empty")
	}
	if limit := MaxSocketPath(goos); len(path) > limit {
		return fmt.Errorf("socket path %s is %d bytes; the limit on %s is %d", path, len(path), goos, limit)
	}
	return nil
}

// ErrInUse means another process is listening on the socket path.
var ErrInUse = errors.New("ingest: socket is in use by another process")

// Listen binds a Unix socket at path with mode 0600. An existing path is
// handled so nothing of anyone else's is lost: a live socket (a dial
// succeeds) is left alone and ErrInUse returned; a stale socket (the dial is
// refused) is removed; anything that is not a socket is never deleted.
func Listen(path string) (*net.UnixListener, error) {
	if err := CheckSocketPath(path, runtime.GOOS); err != nil {
		return nil, err
	}
	if err := clearStale(path); err != nil {
		return nil, err
	}

	restore := restrictUmask()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	restore()
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// We remove the file ourselves at shutdown, after the drain starts.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is a %s, not a socket; refusing to remove it", path, fileKind(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// fileKind names the type of a file for a person.
func fileKind(m fs.FileMode) string {
	switch t := m.Type(); {
	case t == 0:
		return "regular file"
	case t&fs.ModeDir != 0:
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symbolic link"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe"
	case t&fs.ModeCharDevice != 0:
		return "character device"
	case t&fs.ModeDevice != 0:
		return "block device"
	default:
		return "file of mode " + t.String()
	}
}
