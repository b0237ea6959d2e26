package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/weave-sidecar/weave-sidecar/go/internal/ingest"
)

// readyInfo is what --ready-file receives once every listener is up.
type readyInfo struct {
	PID  int    `json:"pid"`
	Unix string `json:"unix,omitempty"` // socket path
	TCP  string `json:"tcp,omitempty"`  // 127.0.0.1:PORT, the port the OS chose
}

// listen opens the listeners cfg asks for, serves them on srv and writes
// the ready file. On error, listeners already served are srv's to close.
func listen(cfg config, srv *ingest.Server) (readyInfo, error) {
	info := readyInfo{PID: os.Getpid()}
	if cfg.Socket != "" {
		ln, err := ingest.Listen(cfg.Socket)
		if err != nil {
			return info, err
		}
		srv.Serve(ln)
		info.Unix = cfg.Socket
	}
	if cfg.ListenTCP != "" {
		ln, err := ingest.ListenTCP(cfg.ListenTCP)
		if err != nil {
			return info, err
		}
		if err := srv.ServeTCP(ln); err != nil {
			return info, err
		}
		info.TCP = ln.Addr().String()
	}
	if cfg.ReadyFile != "" {
		if err := writeReadyFile(cfg.ReadyFile, info); err != nil {
			return info, err
		}
	}
	return info, nil
}

// writeReadyFile writes info to path.tmp and renames it to path, so a
// reader polling for path never sees a partial file.
func writeReadyFile(path string, info readyInfo) error {
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("ready file: %w", err)
	}
	_, err = f.Write(append(data, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ready file: %w", err)
	}
	return nil
}
