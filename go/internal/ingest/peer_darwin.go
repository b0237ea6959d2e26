package ingest

import "golang.org/x/sys/unix"

// fdPeerUID uses LOCAL_PEERCRED, the socket option behind getpeereid(3).
func fdPeerUID(fd int) (int, error) {
	cred, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return 0, err
	}
	return int(cred.Uid), nil
}
