//go:build linux || darwin

package ingest

import "net"

// osPeerUID reads the uid the peer had when it connected, through the
// per-OS socket option in fdPeerUID.
func osPeerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var uid int
	var uidErr error
	if err := raw.Control(func(fd uintptr) { uid, uidErr = fdPeerUID(int(fd)) }); err != nil {
		return 0, err
	}
	return uid, uidErr
}
