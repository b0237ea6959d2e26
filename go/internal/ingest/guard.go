package ingest

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// Who may use the sidecar. A Unix peer must run as the sidecar's own user
// (where the OS can tell, see osPeerUID); a TCP peer must present the
// launch token in its first request, a hello. Anyone else gets one error
// line and the connection is closed, and the rejection is counted by reason.

// codeForbidden answers a connection refused by these checks.
const codeForbidden protocol.Code = "forbidden"

// Bounds on a connection that has not yet proved who it is.
const (
	authTimeout   = 10 * time.Second // for the first line on TCP
	rejectTimeout = time.Second      // for writing the error line
)

// MinTokenLen is the shortest TCP token ServeTCP accepts.
const MinTokenLen = 16

// admit checks a new connection before any request is read. A TCP
// connection gets a deadline for its first line, checked by authenticate.
func (s *Server) admit(cn *conn) bool {
	if cn.needToken {
		cn.c.SetReadDeadline(time.Now().Add(authTimeout))
		return true
	}
	uc, ok := cn.c.(*net.UnixConn)
	if !ok {
		return true
	}
	uid, err := s.peerUID(uc)
	switch {
	case errors.Is(err, errNoPeerCred):
		return true
	case err != nil:
		s.warnOnce("peer_unknown", "refused a connection whose peer credentials could not be read", "err", err)
		s.reject(cn, nil, stats.RejectPeerUnknown, "the sidecar could not check who is connecting")
		return false
	case uid != s.uid:
		s.warnOnce("uid:"+strconv.Itoa(uid), "refused a connection from another user",
			"peer_uid", uid, "uid", s.uid)
		s.reject(cn, nil, stats.RejectPeerUID, "this sidecar serves only the user it runs as")
		return false
	}
	return true
}

// authenticate checks the first line of a TCP connection: a hello whose
// payload carries the token. On success the connection is served as usual
// (the same line is then answered as a hello); otherwise it is rejected.
func (s *Server) authenticate(cn *conn, line []byte) bool {
	var req protocol.Request
	if perr := protocol.Decode(line, &req); perr != nil || req.Method != protocol.MethodHello {
		s.warnOnce(string(stats.RejectNoToken), "refused a TCP connection: its first request was not hello")
		s.reject(cn, req.ID, stats.RejectNoToken, "the first request on a TCP connection must be hello with the sidecar's token")
		return false
	}
	var p struct {
		Token *string `json:"token"`
	}
	if req.Payload != nil {
		if err := json.Unmarshal(req.Payload, &p); err != nil {
			p.Token = nil
		}
	}
	if p.Token == nil {
		s.warnOnce(string(stats.RejectNoToken), "refused a TCP connection: its hello carried no token")
		s.reject(cn, req.ID, stats.RejectNoToken, "hello on a TCP connection must carry the sidecar's token")
		return false
	}
	if !s.tokenMatches(*p.Token) {
		s.warnOnce(string(stats.RejectBadToken), "refused a TCP connection: wrong token")
		s.reject(cn, req.ID, stats.RejectBadToken, "hello carried a wrong token")
		return false
	}
	cn.needToken = false
	cn.c.SetReadDeadline(time.Time{})
	return true
}

// tokenMatches compares digests in constant time, so neither the token's
// content nor its length shows in how long the check takes.
func (s *Server) tokenMatches(got string) bool {
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) == 1
}

// reject counts the connection, writes one error line (best effort) and
// leaves the caller to close it.
func (s *Server) reject(cn *conn, id []byte, reason stats.RejectReason, msg string) {
	s.cfg.Stats.Rejected(reason)
	line := protocol.AppendError(nil, id, protocol.Errorf(codeForbidden, "%s", msg))
	cn.c.SetWriteDeadline(time.Now().Add(rejectTimeout))
	cn.c.Write(line)
}

// warnOnce logs msg at warn the first time key is seen and at debug after,
// so a misbehaving local client cannot flood the log.
func (s *Server) warnOnce(key, msg string, args ...any) {
	s.mu.Lock()
	first := !s.warned[key]
	if first {
		s.warned[key] = true
	}
	s.mu.Unlock()
	if first {
		s.log.Warn(msg, args...)
	} else {
		s.log.Debug(msg, args...)
	}
}

// CheckTCPAddr accepts 127.0.0.1:PORT only: loopback TCP is reachable by
// every local user (hence the token) and must not be reachable from
// anywhere else. Port 0 lets the OS choose.
func CheckTCPAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("tcp address %q: want 127.0.0.1:PORT", addr)
	}
	if host != "127.0.0.1" {
		return fmt.Errorf("tcp address %q: the host must be 127.0.0.1", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("tcp address %q: the port must be a number from 0 to 65535", addr)
	}
	return nil
}

// ListenTCP binds addr, which CheckTCPAddr must accept; ServeTCP serves it.
func ListenTCP(addr string) (*net.TCPListener, error) {
	if err := CheckTCPAddr(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// ServeTCP accepts connections on ln in a goroutine and returns at once;
// each must present Config.Token in its first request. It refuses to
// start without a token of at least MinTokenLen bytes. The server owns ln.
func (s *Server) ServeTCP(ln *net.TCPListener) error {
	if len(s.cfg.Token.Reveal()) < MinTokenLen {
		ln.Close()
		return fmt.Errorf("a TCP listener needs a token of at least %d bytes", MinTokenLen)
	}
	s.mu.Lock()
	s.tcp = ln
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		s.acceptLoop(ln, true)
	}()
	return nil
}
