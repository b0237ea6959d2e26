//go:build !linux && !darwin

package ingest

import "net"

// osPeerUID cannot tell the peer's user here. The socket is created 0600
// (see Listen) in a directory the launcher makes 0700, so only its owner
// (and root) can connect; that permission check is the guard on these
// systems. Windows clients use the token-checked TCP listener instead.
func osPeerUID(*net.UnixConn) (int, error) { return 0, errNoPeerCred }
