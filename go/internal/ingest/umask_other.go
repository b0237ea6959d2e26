//go:build !unix

package ingest

// restrictUmask does nothing where there is no umask; Listen still
// chmods the socket.
func restrictUmask() (restore func()) { return func() {} }
