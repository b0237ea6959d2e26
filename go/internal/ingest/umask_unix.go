//go:build unix

package ingest

import "syscall"

// restrictUmask makes files created until restore runs private to the user,
// so the socket never exists with wider permissions, even briefly.
func restrictUmask() (restore func()) {
	old := syscall.Umask(0o177)
	return func() { syscall.Umask(old) }
}
