//go:build unix

package main

import (
	"errors"
	"os"
	"syscall"
)

// parentAlive reports whether pid still runs and, when isParent, is still
// our parent.
func parentAlive(pid int, isParent bool) bool {
	if isParent && os.Getppid() != pid {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
