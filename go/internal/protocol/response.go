package protocol

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Code is a stable failure code sent in the "code" field of a response.
type Code string

const (
	CodeInvalidRequest    Code = "invalid_request"
	CodeUnknownMethod     Code = "unknown_method"
	CodeLineTooLong       Code = "line_too_long"
	CodeCallTooLarge      Code = "call_too_large"
	CodeQueueFull         Code = "queue_full"
	CodeUnauthorized      Code = "unauthorized"
	CodeCallsCompleteMode Code = "calls_complete_mode_required"
	CodeShuttingDown      Code = "shutting_down"
	CodeProtocolMismatch  Code = "protocol_mismatch"
	CodeSpoolFull         Code = "spool_full"
)

// Codes lists every failure code, for counters.
var Codes = []Code{
	CodeInvalidRequest, CodeUnknownMethod, CodeLineTooLong, CodeCallTooLarge, CodeQueueFull,
	CodeUnauthorized, CodeCallsCompleteMode, CodeShuttingDown, CodeProtocolMismatch, CodeSpoolFull,
}

// Error is a refused request: a code for programs and a message for people.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Errorf returns an *Error with the given code and message.
func Errorf(code Code, format string, args ...any) *Error { return errorf(code, format, args...) }

func appendID(dst, id []byte) []byte {
	dst = append(dst, '{')
	if id != nil {
		dst = append(dst, `"id":`...)
		dst = append(dst, id...)
		dst = append(dst, ',')
	}
	return dst
}

// AppendAck appends the response line for an accepted call.
func AppendAck(dst, id []byte, resolved int64) []byte {
	return AppendAckReturned(dst, id, resolved, nil)
}

// AppendAckReturned appends the response line for an accepted call, with
// the ordinals of returned calls when there are any (see docs/protocol.md).
func AppendAckReturned(dst, id []byte, resolved int64, returned []int64) []byte {
	dst = appendID(dst, id)
	dst = append(dst, `"success":true,"resolved":`...)
	dst = strconv.AppendInt(dst, resolved, 10)
	dst = AppendReturned(dst, returned)
	return append(dst, "}\n"...)
}

// AppendReturned appends `,"returned":[...]` when returned is not empty.
func AppendReturned(dst []byte, returned []int64) []byte {
	if len(returned) == 0 {
		return dst
	}
	dst = append(dst, `,"returned":[`...)
	for i, n := range returned {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendInt(dst, n, 10)
	}
	return append(dst, ']')
}

// AppendResult appends a success line carrying result, which must be a
// JSON value.
func AppendResult(dst, id, result []byte) []byte {
	dst = appendID(dst, id)
	dst = append(dst, `"success":true,"result":`...)
	dst = append(dst, result...)
	return append(dst, "}\n"...)
}

// AppendError appends the failure line for e.
func AppendError(dst, id []byte, e *Error) []byte {
	dst = appendID(dst, id)
	dst = append(dst, `"success":false,"code":"`...)
	dst = append(dst, e.Code...)
	dst = append(dst, `","error":`...)
	msg, err := json.Marshal(e.Msg)
	if err != nil { // cannot happen for a string; keep the line valid anyway
		msg = []byte(`"error"`)
	}
	dst = append(dst, msg...)
	return append(dst, "}\n"...)
}

// Limits are the sizes a client must respect, announced by hello.
type Limits struct {
	MaxLineBytes  int   `json:"max_line_bytes"`
	MaxCallBytes  int   `json:"max_call_bytes"`
	MaxQueueBytes int64 `json:"max_queue_bytes"`
}

// Hello is the result of a hello request.
type Hello struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
	PID      int    `json:"pid"`
	Backend  string `json:"backend"`
	Limits   Limits `json:"limits"`
}

// CheckHello validates a hello payload: absent, null, or an object whose
// optional "protocol" is Version.
func CheckHello(payload []byte) *Error {
	if payload == nil || string(payload) == "null" {
		return nil
	}
	var p struct {
		Protocol *float64 `json:"protocol"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return errorf(CodeInvalidRequest, "hello payload: protocol must be a number")
	}
	if p.Protocol != nil && *p.Protocol != Version {
		return errorf(CodeProtocolMismatch, "this sidecar speaks protocol %d, the client asked for %v", Version, *p.Protocol)
	}
	return nil
}
