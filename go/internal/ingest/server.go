// Package ingest accepts client connections on the Unix socket and turns
// request lines into batcher calls and response lines.
//
// Each connection is served by one goroutine that reads a line, answers it
// and moves on; answers are buffered while more input is already waiting
// and written out before the goroutine blocks for more, so a pipelining
// client gets its answers in order with few system calls.
package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weave-sidecar/weave-sidecar/go/internal/auth"
	"github.com/weave-sidecar/weave-sidecar/go/internal/backend"
	"github.com/weave-sidecar/weave-sidecar/go/internal/batch"
	"github.com/weave-sidecar/weave-sidecar/go/internal/protocol"
	"github.com/weave-sidecar/weave-sidecar/go/internal/stats"
)

// Buffer sizes per connection.
const (
	readBufSize  = 64 << 10
	writeBufSize = 64 << 10
	// slabSize is the chunk payload copies are carved from, so a small call
	// costs no allocation of its own; larger payloads get their own.
	slabSize     = 64 << 10
	slabMaxPiece = 8 << 10
)

// Config configures a Server.
type Config struct {
	Batcher      *batch.Batcher
	Stats        *stats.Stats // must be the batcher's
	Hello        []byte       // the JSON result of a hello request
	MaxLineBytes int          // zero means protocol.MaxLineBytes
	// MaxPartialBytes bounds the memory all connections together hold for
	// unfinished lines longer than the read buffer; a line that finds no
	// room is skipped with line_too_long. It is raised to MaxLineBytes +
	// 1 MiB, so one line of the largest size always fits. Zero means no
	// bound: each connection may then hold up to MaxLineBytes.
	MaxPartialBytes int64
	Logger          *slog.Logger // nil means slog.Default()

	// PeerUID reads a Unix peer's user id; nil means the OS's way (see
	// guard.go). Peers running as another user are refused.
	PeerUID PeerUIDFunc
	// Token is what every TCP connection must present in its first request;
	// only ServeTCP needs it.
	Token auth.Secret
}

// Server serves the protocol on one listener.
type Server struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context // ends at Close; bounds flush waits
	cancel context.CancelFunc

	mu    sync.Mutex
	ln    *net.UnixListener // guarded by mu
	path  string            // guarded by mu; socket file to remove
	tcp   net.Listener      // guarded by mu; the token-checked listener, if any
	conns map[*conn]struct{}
	wg    sync.WaitGroup // accept loop and connection goroutines

	lines    *protocol.Budget // nil: unfinished lines are not bounded together
	uid      int              // the only user a Unix peer may run as
	peerUID  PeerUIDFunc      // reads it
	tokenSum [32]byte         // SHA-256 of cfg.Token
	warned   map[string]bool  // guarded by mu; see warnOnce
}

// New returns a Server; Serve starts it.
func New(cfg Config) *Server {
	if cfg.MaxLineBytes <= 0 {
		cfg.MaxLineBytes = protocol.MaxLineBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, conns: make(map[*conn]struct{}),
		uid: os.Geteuid(), peerUID: cfg.PeerUID, tokenSum: sha256.Sum256([]byte(cfg.Token.Reveal())),
		warned: make(map[string]bool)}
	if s.peerUID == nil {
		s.peerUID = osPeerUID
	}
	if cfg.MaxPartialBytes > 0 {
		s.lines = protocol.NewBudget(max(cfg.MaxPartialBytes, int64(cfg.MaxLineBytes)+1<<20))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Serve accepts connections on ln in a goroutine and returns at once. The
// server owns ln and removes its socket file in StopAccepting.
func (s *Server) Serve(ln *net.UnixListener) {
	s.mu.Lock()
	s.ln, s.path = ln, ln.Addr().String()
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.acceptLoop(ln, false)
	}()
}

// acceptLoop serves ln until it closes; tcp connections must authenticate.
func (s *Server) acceptLoop(ln net.Listener, tcp bool) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and go on.
			s.log.Warn("accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		cn := &conn{c: c, needToken: tcp}
		s.mu.Lock()
		s.conns[cn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.cfg.Stats.Connections.Add(1)
		go func() {
			defer s.wg.Done()
			if s.admit(cn) {
				s.serveConn(cn)
			} else {
				cn.c.Close()
			}
			s.mu.Lock()
			delete(s.conns, cn)
			s.mu.Unlock()
			s.cfg.Stats.Connections.Add(-1)
		}()
	}
}

// StopAccepting closes the listeners and removes the socket file; open
// connections stay up.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	ln, path, tcp := s.ln, s.path, s.tcp
	s.ln, s.tcp = nil, nil
	s.mu.Unlock()
	if tcp != nil {
		tcp.Close()
	}
	if ln == nil {
		return
	}
	ln.Close()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("could not remove the socket", "path", path, "err", err)
	}
}

// WaitIdle returns once no connection has a request line in hand or in its
// read buffer (every reader is waiting for new input), or when ctx ends.
func (s *Server) WaitIdle(ctx context.Context) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := false
		s.mu.Lock()
		for c := range s.conns {
			if !c.idle.Load() {
				busy = true
				break
			}
		}
		s.mu.Unlock()
		if !busy {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Close stops accepting, closes every connection and waits for their
// goroutines. Flush requests still waiting are answered shutting_down.
func (s *Server) Close() {
	s.StopAccepting()
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// conn is one client connection.
type conn struct {
	c     net.Conn
	idle  atomic.Bool // the reader is waiting for input with nothing buffered
	tally batch.Tally
	// needToken: a TCP connection whose first request is still to come; it
	// must be a hello carrying the token (see authenticate).
	needToken bool

	slab    []byte // unused tail of the current payload chunk
	project string // the last call's project_id
}

// connReader is what the line reader reads the connection through. Before
// each read, which may wait for the client, it writes out the answers
// buffered so far: answers go out in one write per read, and never wait
// for input that may not come (a client that wrote part of a line still
// gets the answers to the lines before it).
type connReader struct {
	cn *conn
	w  *writer
	lr *protocol.LineReader
}

func (r *connReader) Read(p []byte) (int, error) {
	if err := r.w.Flush(); err != nil {
		return 0, err
	}
	// A partial line in the buffer is a request in hand: not idle.
	r.cn.idle.Store(r.lr.Buffered() == 0)
	n, err := r.cn.c.Read(p)
	r.cn.idle.Store(false)
	return n, err
}

func (s *Server) serveConn(cn *conn) {
	defer cn.c.Close()
	r := &connReader{cn: cn, w: newWriter(s.cfg.Batcher.Durable(cn.c))}
	r.lr = protocol.NewLineReader(r, readBufSize, s.cfg.MaxLineBytes)
	lr, w := r.lr, r.w
	if s.lines != nil {
		lr.SetBudget(s.lines)
		defer lr.Release()
	}
	var out []byte
	var req protocol.Request
	var tooLong *protocol.LineTooLongError // out of the loop: errors.As makes it escape
	for {
		line, err := lr.Next()
		switch {
		case err == nil:
		case errors.As(err, &tooLong):
			s.cfg.Stats.Received.Add(1)
			if cn.needToken {
				s.reject(cn, nil, stats.RejectNoToken, "the first request on a TCP connection must be hello with the sidecar's token")
				return
			}
			s.cfg.Stats.Refused(protocol.CodeLineTooLong)
			out = protocol.AppendError(out[:0], nil, protocol.Errorf(protocol.CodeLineTooLong,
				"%s; send this call another way", tooLong))
			if _, err := w.Write(out); err != nil {
				return
			}
			continue
		default:
			if cn.needToken && !errors.Is(err, net.ErrClosed) {
				// Closed or timed out before saying who it is.
				s.reject(cn, nil, stats.RejectNoToken, "no hello with the sidecar's token")
				return
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("connection failed", "err", err)
			}
			w.Flush()
			return
		}

		s.cfg.Stats.Received.Add(1)
		if cn.needToken && !s.authenticate(cn, line) {
			return
		}
		out = s.handle(cn, w, line, &req, out[:0])
		if _, err := w.Write(out); err != nil {
			s.log.Debug("connection write failed", "err", err)
			return
		}
		if cap(out) > 1<<20 {
			out = nil
		}
	}
}

// handle answers one request line, appending the response to out.
func (s *Server) handle(cn *conn, w *writer, line []byte, req *protocol.Request, out []byte) []byte {
	if perr := protocol.Decode(line, req); perr != nil {
		s.cfg.Stats.Refused(perr.Code)
		return protocol.AppendError(out, req.ID, perr)
	}
	switch req.Method {
	case protocol.MethodCallStart, protocol.MethodCallEnd:
		it := backend.Item{Mode: backend.ModeStart, ID: string(req.CallID), ProjectID: cn.projectID(req.ProjectID),
			Payload: cn.copyPayload(req.Payload)}
		if req.Method == protocol.MethodCallEnd {
			it.Mode = backend.ModeEnd
		}
		if perr := s.cfg.Batcher.Add(&cn.tally, it); perr != nil {
			s.cfg.Stats.Refused(perr.Code)
			return protocol.AppendError(out, req.ID, perr)
		}
		// Resolved first: every returned call it counts is then taken below.
		resolved := cn.tally.Resolved()
		return protocol.AppendAckReturned(out, req.ID, resolved, cn.tally.TakeReturned())

	case protocol.MethodHello:
		if perr := protocol.CheckHello(req.Payload); perr != nil {
			s.cfg.Stats.Refused(perr.Code)
			return protocol.AppendError(out, req.ID, perr)
		}
		return protocol.AppendResult(out, req.ID, s.cfg.Hello)

	case protocol.MethodFlush:
		// Answers already computed go out before the wait.
		if err := w.Flush(); err != nil {
			return out
		}
		if err := s.cfg.Batcher.Flush(s.ctx); err != nil {
			return protocol.AppendError(out, req.ID, protocol.Errorf(protocol.CodeShuttingDown,
				"sidecar stopped before the flush completed"))
		}
		res := make([]byte, 0, 64)
		res = append(res, `{"delivered":`...)
		res = strconv.AppendInt(res, cn.tally.Delivered(), 10)
		res = append(res, `,"failed":`...)
		res = strconv.AppendInt(res, cn.tally.Failed(), 10)
		res = append(res, `,"resolved":`...)
		res = strconv.AppendInt(res, cn.tally.Resolved(), 10)
		res = protocol.AppendReturned(res, cn.tally.TakeReturned())
		res = append(res, '}')
		return protocol.AppendResult(out, req.ID, res)

	default: // protocol.MethodStats
		res, err := json.Marshal(s.cfg.Stats.Snapshot(s.cfg.Batcher.Queue()))
		if err != nil { // plain structs of ints and maps cannot fail
			return protocol.AppendError(out, req.ID, protocol.Errorf(protocol.CodeInvalidRequest, "stats: %v", err))
		}
		return protocol.AppendResult(out, req.ID, res)
	}
}

// projectID returns p as a string, reusing the last call's: calls on one
// connection nearly always share their project.
func (cn *conn) projectID(p []byte) string {
	if string(p) != cn.project {
		cn.project = string(p)
	}
	return cn.project
}

// copyPayload copies p out of the read buffer. The copy is never written
// again, so small ones can share a chunk.
func (cn *conn) copyPayload(p []byte) []byte {
	if len(p) > slabMaxPiece {
		return append([]byte(nil), p...)
	}
	if len(p) > cap(cn.slab) {
		cn.slab = make([]byte, 0, slabSize)
	}
	piece := cn.slab[:len(p):len(p)]
	copy(piece, p)
	cn.slab = cn.slab[len(p):len(p)]
	return piece
}
