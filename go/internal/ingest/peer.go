package ingest

import (
	"errors"
	"net"
)

// PeerUIDFunc returns the user id of the process at the other end of a Unix
// connection.
type PeerUIDFunc func(c *net.UnixConn) (int, error)

// errNoPeerCred means this OS gives no way to learn a Unix peer's user. The
// socket's mode 0600 inside a 0700 directory is then the only guard.
var errNoPeerCred = errors.New("peer credentials are not available on this system")
