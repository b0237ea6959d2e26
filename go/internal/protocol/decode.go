// Package protocol implements the sidecar's wire protocol (docs/protocol.md):
// newline framing with a line-size limit, strict decoding and validation of
// request lines, and encoding of response lines.
package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"unicode/utf8"
)

// Version is the protocol version this package speaks.
const Version = 1

// Limits shared by intake and delivery.
const (
	// MaxBodyBytes is the largest upsert_batch body the sidecar sends
	// (31 MiB, the SDK's own cap; the trace server refuses 32 MiB).
	MaxBodyBytes = 31 << 20
	// MaxLineBytes is the largest request line accepted: a call that fits
	// in MaxBodyBytes plus room for the request envelope.
	MaxLineBytes = 32 << 20
	// maxDepth bounds JSON nesting, as encoding/json does.
	maxDepth = 10000
)

// Method is a request method.
type Method uint8

const (
	MethodHello Method = iota + 1
	MethodCallStart
	MethodCallEnd
	MethodFlush
	MethodStats
)

// Request is a decoded request line. Its byte slices point into the line
// passed to Decode and are valid only as long as that line is.
type Request struct {
	ID      []byte // the raw JSON "id" value, nil when absent
	Method  Method
	Payload []byte // the raw JSON "payload" value, nil when absent

	// For call_start and call_end: the call's id and project_id,
	// unescaped. They point into the line unless the JSON string held an
	// escape; either way they are never written to.
	CallID    []byte
	ProjectID []byte
}

// callFields are the id and project_id found in one of "start" or "end".
type callFields struct {
	present        bool // the key was there and held an object
	id, projectID  []byte
	idErr, projErr string // why a field is unusable, "" when fine
}

// decoder is a strict single-pass JSON scanner over one line. It validates
// the whole line and records the few members the sidecar needs.
type decoder struct {
	data []byte
	pos  int
	// clean means the line holds no byte below 0x20, so strings need only
	// be searched for their closing quote and for backslashes.
	clean bool
	// escaped is set by str when the string it just read had an escape;
	// keyEsc keeps it for the key being handled.
	escaped, keyEsc bool

	method     []byte
	methodPos  int
	methodSet  bool
	methodStr  bool
	payloadSet bool
	start, end callFields
}

// Decode parses and validates one request line (without its newline) into
// req. On failure it returns an *Error with code invalid_request or
// unknown_method; req.ID is still set when the line got that far, so the
// error response can echo it.
func Decode(line []byte, req *Request) *Error {
	*req = Request{}
	if len(bytes.TrimSpace(line)) == 0 {
		return errorf(CodeInvalidRequest, "empty line")
	}
	valid, control := scanLine(line)
	if !valid {
		return errorf(CodeInvalidRequest, "line is not valid UTF-8")
	}
	d := decoder{data: line, clean: !control}
	if err := d.top(req); err != nil {
		req.ID = nil
		return errorf(CodeInvalidRequest, "invalid JSON: %s", err)
	}
	if req.ID != nil && req.ID[0] != '"' && req.ID[0] != '-' && (req.ID[0] < '0' || req.ID[0] > '9') {
		return errorf(CodeInvalidRequest, "id must be a string or a number")
	}
	if !d.methodSet {
		return errorf(CodeInvalidRequest, "missing method")
	}
	if !d.methodStr {
		return errorf(CodeInvalidRequest, "method must be a string")
	}
	switch string(d.method) {
	case `"hello"`:
		req.Method = MethodHello
	case `"call_start"`:
		req.Method = MethodCallStart
	case `"call_end"`:
		req.Method = MethodCallEnd
	case `"flush"`:
		req.Method = MethodFlush
	case `"stats"`:
		req.Method = MethodStats
	default:
		name, err := unquote(d.method)
		if err != nil {
			return errorf(CodeInvalidRequest, "method: %s", err)
		}
		switch name {
		case "hello", "call_start", "call_end", "flush", "stats":
			// Spelled with escapes; still the same method.
			return Decode(canonicalMethod(line, d.methodPos, len(d.method), name), req)
		}
		if len(name) > 64 {
			name = name[:64] + "..."
		}
		return errorf(CodeUnknownMethod, "unknown method %q (want hello, call_start, call_end, flush or stats)", name)
	}
	switch req.Method {
	case MethodCallStart:
		return d.call(req, "start", &d.start)
	case MethodCallEnd:
		return d.call(req, "end", &d.end)
	case MethodHello:
		if req.Payload != nil && req.Payload[0] != '{' && string(req.Payload) != "null" {
			return errorf(CodeInvalidRequest, "hello payload must be an object")
		}
	}
	return nil
}

// canonicalMethod rewrites an escaped method string (rare) into plain form
// so the fast path can decode the line.
func canonicalMethod(line []byte, off, n int, name string) []byte {
	out := make([]byte, 0, len(line))
	out = append(out, line[:off]...)
	out = append(out, '"')
	out = append(out, name...)
	out = append(out, '"')
	return append(out, line[off+n:]...)
}

func (d *decoder) call(req *Request, key string, f *callFields) *Error {
	if !d.payloadSet {
		return errorf(CodeInvalidRequest, "missing payload")
	}
	if req.Payload[0] != '{' {
		return errorf(CodeInvalidRequest, "payload must be an object holding %q", key)
	}
	if !f.present {
		return errorf(CodeInvalidRequest, "payload.%s must be an object", key)
	}
	if f.idErr != "" {
		return errorf(CodeInvalidRequest, "payload.%s.id %s", key, f.idErr)
	}
	if f.projErr != "" {
		return errorf(CodeInvalidRequest, "payload.%s.project_id %s", key, f.projErr)
	}
	req.CallID, req.ProjectID = f.id, f.projectID
	return nil
}

type syntaxError struct {
	pos int
	msg string
}

func (e *syntaxError) Error() string { return fmt.Sprintf("%s at byte %d", e.msg, e.pos) }

func (d *decoder) fail(msg string) error { return &syntaxError{pos: d.pos, msg: msg} }

func (d *decoder) skipSpace() {
	for d.pos < len(d.data) {
		// All four whitespace bytes are at most ' ', which lets the usual
		// case, a token right away, out after one comparison.
		c := d.data[d.pos]
		if c > ' ' || c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return
		}
		d.pos++
	}
}

// top parses the request object.
func (d *decoder) top(req *Request) error {
	d.skipSpace()
	if d.pos >= len(d.data) || d.data[d.pos] != '{' {
		return d.fail("request must be a JSON object")
	}
	err := d.object(1, func(key []byte) error {
		begin := d.pos
		switch {
		case d.keyIs(key, "id"):
			if err := d.value(1); err != nil {
				return err
			}
			req.ID = d.data[begin:d.pos]
		case d.keyIs(key, "method"):
			if err := d.value(1); err != nil {
				return err
			}
			d.method, d.methodPos, d.methodSet = d.data[begin:d.pos], begin, true
			d.methodStr = d.method[0] == '"'
		case d.keyIs(key, "payload"):
			if err := d.payload(); err != nil {
				return err
			}
			req.Payload, d.payloadSet = d.data[begin:d.pos], true
		default:
			return d.value(1)
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.skipSpace()
	if d.pos != len(d.data) {
		return d.fail("data after the request object")
	}
	return nil
}

// payload parses the payload value, recording "start"/"end" fields when it
// is an object.
func (d *decoder) payload() error {
	d.start, d.end = callFields{}, callFields{}
	if d.pos >= len(d.data) || d.data[d.pos] != '{' {
		return d.value(1)
	}
	return d.object(2, func(key []byte) error {
		var f *callFields
		switch {
		case d.keyIs(key, "start"):
			f = &d.start
		case d.keyIs(key, "end"):
			f = &d.end
		default:
			return d.value(2)
		}
		*f = callFields{}
		if d.pos >= len(d.data) || d.data[d.pos] != '{' {
			return d.value(2)
		}
		f.present = true
		f.idErr, f.projErr = "is missing", "is missing"
		return d.object(3, func(key []byte) error {
			var dst *[]byte
			var why *string
			switch {
			case d.keyIs(key, "id"):
				dst, why = &f.id, &f.idErr
			case d.keyIs(key, "project_id"):
				dst, why = &f.projectID, &f.projErr
			default:
				return d.value(3)
			}
			begin := d.pos
			if err := d.value(3); err != nil {
				return err
			}
			raw := d.data[begin:d.pos]
			*dst, *why = nil, ""
			switch {
			case raw[0] != '"':
				*why = "must be a string"
			case len(raw) == 2:
				*why = "must not be empty"
			case !d.escaped:
				*dst = raw[1 : len(raw)-1]
			default:
				s, err := unquote(raw)
				if err != nil {
					return err
				}
				*dst = []byte(s)
			}
			return nil
		})
	})
}

// keyIs reports whether the raw key (quotes stripped, escapes kept) of the
// member being handled is name.
func (d *decoder) keyIs(raw []byte, name string) bool {
	if !d.keyEsc {
		return string(raw) == name
	}
	s, err := unquote(append(append([]byte{'"'}, raw...), '"'))
	return err == nil && s == name
}

// unquote decodes a JSON string token. Without escapes it is a plain copy.
func unquote(raw []byte) (string, error) {
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	return s, nil
}

// object parses an object at d.pos ('{' already checked), calling member
// for each key with d.pos at the start of its value; member must consume it.
func (d *decoder) object(depth int, member func(key []byte) error) error {
	if depth > maxDepth {
		return d.fail("nesting too deep")
	}
	d.pos++ // '{'
	d.skipSpace()
	if d.pos < len(d.data) && d.data[d.pos] == '}' {
		d.pos++
		return nil
	}
	for {
		if d.pos >= len(d.data) || d.data[d.pos] != '"' {
			return d.fail("expected a string key")
		}
		begin := d.pos
		if err := d.str(); err != nil {
			return err
		}
		key, esc := d.data[begin+1:d.pos-1], d.escaped
		d.skipSpace()
		if d.pos >= len(d.data) || d.data[d.pos] != ':' {
			return d.fail("expected ':'")
		}
		d.pos++
		d.skipSpace()
		if d.pos >= len(d.data) {
			return d.fail("unexpected end")
		}
		d.keyEsc = esc
		if err := member(key); err != nil {
			return err
		}
		if done, err := d.afterElement('}'); done || err != nil {
			return err
		}
		d.skipSpace()
	}
}

// afterElement consumes what follows an object member or array element: a
// ',' (more to come) or the closing byte (done).
func (d *decoder) afterElement(closing byte) (done bool, err error) {
	d.skipSpace()
	if d.pos >= len(d.data) {
		return false, d.fail("unexpected end")
	}
	switch d.data[d.pos] {
	case ',':
		d.pos++
		return false, nil
	case closing:
		d.pos++
		return true, nil
	}
	return false, d.fail("expected ',' or '" + string(closing) + "'")
}

// value parses any JSON value at d.pos (whitespace already skipped).
func (d *decoder) value(depth int) error {
	if d.pos >= len(d.data) {
		return d.fail("unexpected end")
	}
	switch c := d.data[d.pos]; {
	case c == '"':
		return d.str()
	case c == '{':
		return d.object(depth+1, func([]byte) error { return d.value(depth + 1) })
	case c == '[':
		return d.array(depth + 1)
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	default:
		return d.fail(fmt.Sprintf("unexpected character %q", c))
	}
}

func (d *decoder) array(depth int) error {
	if depth > maxDepth {
		return d.fail("nesting too deep")
	}
	d.pos++ // '['
	d.skipSpace()
	if d.pos < len(d.data) && d.data[d.pos] == ']' {
		d.pos++
		return nil
	}
	for {
		d.skipSpace()
		if err := d.value(depth); err != nil {
			return err
		}
		if done, err := d.afterElement(']'); done || err != nil {
			return err
		}
	}
}

func (d *decoder) literal(word string) error {
	if len(d.data)-d.pos < len(word) || string(d.data[d.pos:d.pos+len(word)]) != word {
		return d.fail("invalid literal")
	}
	d.pos += len(word)
	return nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (d *decoder) digits() bool {
	begin := d.pos
	for d.pos < len(d.data) && isDigit(d.data[d.pos]) {
		d.pos++
	}
	return d.pos > begin
}

func (d *decoder) number() error {
	if d.data[d.pos] == '-' {
		d.pos++
	}
	switch {
	case d.pos < len(d.data) && d.data[d.pos] == '0':
		d.pos++
	case !d.digits():
		return d.fail("invalid number")
	}
	if d.pos < len(d.data) && d.data[d.pos] == '.' {
		d.pos++
		if !d.digits() {
			return d.fail("invalid number")
		}
	}
	if d.pos < len(d.data) && (d.data[d.pos] == 'e' || d.data[d.pos] == 'E') {
		d.pos++
		if d.pos < len(d.data) && (d.data[d.pos] == '+' || d.data[d.pos] == '-') {
			d.pos++
		}
		if !d.digits() {
			return d.fail("invalid number")
		}
	}
	return nil
}

// SWAR constants: test eight string bytes at a time for the three that
// need attention (a quote, a backslash, a control character).
const (
	swarLo = 0x0101010101010101
	swarHi = 0x8080808080808080
)

// plain8 reports whether none of the eight bytes in x is '"', '\\' or
// below 0x20. Each test is exact about whether such a byte exists.
func plain8(x uint64) bool {
	quote := x ^ (swarLo * '"')
	slash := x ^ (swarLo * '\\')
	special := (quote - swarLo) & ^quote & swarHi
	special |= (slash - swarLo) & ^slash & swarHi
	special |= (x - swarLo*0x20) & ^x & swarHi
	return special == 0
}

// str parses a string token (UTF-8 validity was checked for the whole
// line) and sets d.escaped.
func (d *decoder) str() error {
	d.pos++ // opening quote
	d.escaped = false
	if d.clean {
		return d.cleanStr()
	}
	for {
		// Skip plain bytes eight at a time.
		for d.pos+8 <= len(d.data) && plain8(binary.LittleEndian.Uint64(d.data[d.pos:])) {
			d.pos += 8
		}
		if d.pos >= len(d.data) {
			return d.fail("unterminated string")
		}
		c := d.data[d.pos]
		switch {
		case c >= 0x20 && c != '"' && c != '\\':
			d.pos++
			continue
		case c == '"':
			d.pos++
			return nil
		case c < 0x20:
			return d.fail("control character in string")
		}
		if err := d.escape(); err != nil {
			return err
		}
	}
}

// cleanStr is str for a line without control characters: the string ends
// at the first quote that no backslash escapes. The first bytes are
// searched eight at a time, which suits keys and short values; the rest of
// a long string goes to bytes.IndexByte.
func (d *decoder) cleanStr() error {
	for words := 0; words < 8 && d.pos+8 <= len(d.data); {
		m := quoteOrSlash(binary.LittleEndian.Uint64(d.data[d.pos:]))
		if m == 0 {
			d.pos += 8
			words++
			continue
		}
		d.pos += bits.TrailingZeros64(m) >> 3
		if d.data[d.pos] == '"' {
			d.pos++
			return nil
		}
		if err := d.escape(); err != nil {
			return err
		}
	}
	return d.longStr()
}

// longStr finishes a string in a clean line. Neither search looks at a
// byte twice, however many escapes there are.
func (d *decoder) longStr() error {
	quote := -1 // position of the next '"' at or after d.pos
	for {
		if quote < d.pos {
			i := bytes.IndexByte(d.data[d.pos:], '"')
			if i < 0 {
				d.pos = len(d.data)
				return d.fail("unterminated string")
			}
			quote = d.pos + i
		}
		i := bytes.IndexByte(d.data[d.pos:quote], '\\')
		if i < 0 {
			d.pos = quote + 1
			return nil
		}
		d.pos += i
		if err := d.escape(); err != nil {
			return err
		}
	}
}

// escape parses a backslash escape at d.pos and sets d.escaped.
func (d *decoder) escape() error {
	d.escaped = true
	d.pos++ // backslash
	if d.pos >= len(d.data) {
		return d.fail("unterminated string")
	}
	switch d.data[d.pos] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		d.pos++
	case 'u':
		if len(d.data)-d.pos < 5 || !isHex4(d.data[d.pos+1:d.pos+5]) {
			return d.fail("invalid \\u escape")
		}
		d.pos += 5
	default:
		return d.fail("invalid escape")
	}
	return nil
}

// quoteOrSlash returns, for the eight bytes in x, a mask whose lowest set
// bit is the high bit of the first '"' or '\\' (bits above it may be
// spurious); zero when there is neither.
func quoteOrSlash(x uint64) uint64 {
	quote := x ^ (swarLo * '"')
	slash := x ^ (swarLo * '\\')
	return ((quote-swarLo)&^quote | (slash-swarLo)&^slash) & swarHi
}

// scanLine reports whether line is valid UTF-8 and whether it holds a byte
// below 0x20. Printable ASCII, the usual content, is passed 32 bytes at a
// time: a byte b below 0x80 is at least 0x20 exactly when b+0x60 has its
// high bit set (no carry crosses bytes below 0xa0, and a byte at or above
// 0x80 fails the test through ^x anyway).
func scanLine(line []byte) (valid, control bool) {
	const k = swarLo * 0x60
	i := 0
	for ; i+32 <= len(line); i += 32 {
		a := binary.LittleEndian.Uint64(line[i:])
		b := binary.LittleEndian.Uint64(line[i+8:])
		c := binary.LittleEndian.Uint64(line[i+16:])
		e := binary.LittleEndian.Uint64(line[i+24:])
		if (a+k)&^a&(b+k)&^b&(c+k)&^c&(e+k)&^e&swarHi != swarHi {
			break
		}
	}
	rest := line[i:]
	return utf8.Valid(rest), hasControl(rest)
}

// hasControl reports whether line holds a byte below 0x20, testing eight
// bytes at a time (the test is exact about whether one exists).
func hasControl(line []byte) bool {
	i := 0
	for ; i+16 <= len(line); i += 16 {
		x := binary.LittleEndian.Uint64(line[i:])
		y := binary.LittleEndian.Uint64(line[i+8:])
		if ((x-swarLo*0x20)&^x|(y-swarLo*0x20)&^y)&swarHi != 0 {
			return true
		}
	}
	for ; i < len(line); i++ {
		if line[i] < 0x20 {
			return true
		}
	}
	return false
}

func isHex4(b []byte) bool {
	for _, c := range b[:4] {
		if !isDigit(c) && (c < 'a' || c > 'f') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}
