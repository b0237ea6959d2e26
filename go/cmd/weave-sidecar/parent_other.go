//go:build !unix

package main

import "os"

// parentAlive reports whether pid still runs.
func parentAlive(pid int, _ bool) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	p.Release()
	return true
}
