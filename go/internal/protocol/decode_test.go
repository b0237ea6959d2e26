package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeAccepts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		line      string
		method    Method
		id        string
		callID    string
		projectID string
		payload   string
	}{
		{"call start", `{"id":7,"method":"call_start","payload":{"start":{"id":"c1","project_id":"e/p"}}}`,
			MethodCallStart, "7", "c1", "e/p", `{"start":{"id":"c1","project_id":"e/p"}}`},
		{"call end with string id", `{"method":"call_end","id":"a b","payload":{"end":{"project_id":"e/p","id":"c2","x":[1,2.5e-3,{"y":null}]}}}`,
			MethodCallEnd, `"a b"`, "c2", "e/p", `{"end":{"project_id":"e/p","id":"c2","x":[1,2.5e-3,{"y":null}]}}`},
		{"whitespace and CR", " {\t\"method\" : \"call_start\" , \"payload\" : {\"start\":{\"id\":\"c\",\"project_id\":\"p\"} } }\r",
			MethodCallStart, "", "c", "p", `{"start":{"id":"c","project_id":"p"} }`},
		{"escaped keys and values", `{"method":"call_start","payload":{"st\u0061rt":{"\u0069d":"c\u00e9","project_id":"e\/p"}}}`,
			MethodCallStart, "", "cé", "e/p", `{"st\u0061rt":{"\u0069d":"c\u00e9","project_id":"e\/p"}}`},
		{"escaped method", `{"method":"call\u005fstart","payload":{"start":{"id":"c","project_id":"p"}}}`,
			MethodCallStart, "", "c", "p", `{"start":{"id":"c","project_id":"p"}}`},
		{"big ints and lone surrogate kept", `{"method":"call_start","payload":{"start":{"id":"c","project_id":"p","n":123456789012345678901234567890,"s":"\ud800<&>","t":"2025-01-02T03:04:05"}}}`,
			MethodCallStart, "", "c", "p", `{"start":{"id":"c","project_id":"p","n":123456789012345678901234567890,"s":"\ud800<&>","t":"2025-01-02T03:04:05"}}`},
		{"hello", `{"method":"hello","payload":{"protocol":1}}`, MethodHello, "", "", "", `{"protocol":1}`},
		{"hello without payload", `{"method":"hello"}`, MethodHello, "", "", "", ""},
		{"flush ignores payload", `{"id":-1.5e3,"method":"flush","payload":[1]}`, MethodFlush, "-1.5e3", "", "", "[1]"},
		{"stats", `{"method":"stats","extra":{"a":[true,false,null]}}`, MethodStats, "", "", "", ""},
		{"other payload keys ignored", `{"method":"call_end","payload":{"start":5,"end":{"id":"c","project_id":"p"}}}`,
			MethodCallEnd, "", "c", "p", `{"start":5,"end":{"id":"c","project_id":"p"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req Request
			err := Decode([]byte(tc.line), &req)
			require.Nil(t, err)
			assert.Equal(t, tc.method, req.Method)
			assert.Equal(t, tc.id, string(req.ID))
			assert.Equal(t, tc.callID, string(req.CallID))
			assert.Equal(t, tc.projectID, string(req.ProjectID))
			assert.Equal(t, tc.payload, string(req.Payload))
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		line   string
		code   Code
		msg    string // a substring of the message
		echoID string
	}{
		{"empty", ``, CodeInvalidRequest, "empty line", ""},
		{"blank", "  \r", CodeInvalidRequest, "empty line", ""},
		{"not utf8", "{\"method\":\"stats\",\"x\":\"\xff\"}", CodeInvalidRequest, "UTF-8", ""},
		{"not json", `hello`, CodeInvalidRequest, "invalid JSON", ""},
		{"array", `[1]`, CodeInvalidRequest, "object", ""},
		{"trailing data", `{"method":"stats"} x`, CodeInvalidRequest, "after the request", ""},
		{"two objects", `{"method":"stats"}{"method":"stats"}`, CodeInvalidRequest, "after the request", ""},
		{"NaN", `{"id":1,"method":"call_start","payload":{"start":{"id":"c","project_id":"p","x":NaN}}}`, CodeInvalidRequest, "invalid JSON", ""},
		{"Infinity", `{"method":"call_start","payload":{"start":{"id":"c","project_id":"p","x":-Infinity}}}`, CodeInvalidRequest, "invalid JSON", ""},
		{"leading zero", `{"method":"stats","x":01}`, CodeInvalidRequest, "invalid JSON", ""},
		{"trailing comma", `{"method":"stats",}`, CodeInvalidRequest, "invalid JSON", ""},
		{"single quotes", `{'method':'stats'}`, CodeInvalidRequest, "invalid JSON", ""},
		{"raw control char", "{\"method\":\"st\tats\"}", CodeInvalidRequest, "control character", ""},
		{"bad escape", `{"method":"stats","x":"\x"}`, CodeInvalidRequest, "invalid escape", ""},
		{"truncated", `{"method":"call_start","payload":{"start":{"id":"c"`, CodeInvalidRequest, "invalid JSON", ""},
		{"missing method", `{"id":3}`, CodeInvalidRequest, "missing method", "3"},
		{"method not string", `{"id":3,"method":1}`, CodeInvalidRequest, "method must be a string", "3"},
		{"unknown method", `{"id":"x","method":"call_update"}`, CodeUnknownMethod, `"call_update"`, `"x"`},
		{"id object", `{"id":{},"method":"stats"}`, CodeInvalidRequest, "id must be", "{}"},
		{"missing payload", `{"method":"call_start"}`, CodeInvalidRequest, "missing payload", ""},
		{"payload not object", `{"method":"call_start","payload":"x"}`, CodeInvalidRequest, "payload must be an object", ""},
		{"start missing", `{"method":"call_start","payload":{"end":{"id":"c","project_id":"p"}}}`, CodeInvalidRequest, "payload.start must be an object", ""},
		{"start not object", `{"method":"call_start","payload":{"start":[]}}`, CodeInvalidRequest, "payload.start must be an object", ""},
		{"id missing", `{"method":"call_start","payload":{"start":{"project_id":"p"}}}`, CodeInvalidRequest, "payload.start.id is missing", ""},
		{"id empty", `{"method":"call_end","payload":{"end":{"id":"","project_id":"p"}}}`, CodeInvalidRequest, "payload.end.id must not be empty", ""},
		{"id number", `{"method":"call_end","payload":{"end":{"id":5,"project_id":"p"}}}`, CodeInvalidRequest, "payload.end.id must be a string", ""},
		{"project null", `{"method":"call_start","payload":{"start":{"id":"c","project_id":null}}}`, CodeInvalidRequest, "project_id must be a string", ""},
		{"project missing", `{"method":"call_start","payload":{"start":{"id":"c"}}}`, CodeInvalidRequest, "project_id is missing", ""},
		{"hello payload string", `{"method":"hello","payload":"v1"}`, CodeInvalidRequest, "hello payload", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req Request
			err := Decode([]byte(tc.line), &req)
			require.NotNil(t, err)
			assert.Equal(t, tc.code, err.Code)
			assert.Contains(t, err.Msg, tc.msg)
			assert.Equal(t, tc.echoID, string(req.ID))
		})
	}
}

func TestDecodeDepthLimit(t *testing.T) {
	deep := strings.Repeat("[", maxDepth+5) + strings.Repeat("]", maxDepth+5)
	var req Request
	err := Decode([]byte(`{"method":"stats","x":`+deep+`}`), &req)
	require.NotNil(t, err)
	assert.Contains(t, err.Msg, "nesting too deep")
}

// FuzzDecode checks the hand-written decoder against encoding/json: it must
// accept exactly the lines that are valid UTF-8 JSON objects, and the fields
// it extracts must match what encoding/json finds.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"id":7,"method":"call_start","payload":{"start":{"id":"c1","project_id":"e/p"}}}`))
	f.Add([]byte(`{"method":"call_end","payload":{"end":{"id":"c\u00e9","project_id":"p","x":[1e5,-0.5,true]}}}`))
	f.Add([]byte(`{"method":"hello","payload":{"protocol":1}}`))
	f.Add([]byte(`{"method":"flush"}`))
	f.Add([]byte(`{"method":"stats","x":NaN}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var req Request
		derr := Decode(line, &req)

		valid := utf8.Valid(line) && json.Valid(line) && len(bytes.TrimSpace(line)) > 0
		if !valid || bytes.TrimSpace(line)[0] != '{' {
			require.NotNil(t, derr, "accepted %q", line)
			return
		}
		if derr != nil && strings.HasPrefix(derr.Msg, "invalid JSON") {
			t.Fatalf("decoder says %q for valid line %q", derr.Msg, line)
		}
		if derr != nil {
			return
		}
		// Exact keys, last one wins: the same rules as the decoder.
		var env map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(line, &env))
		assert.Equal(t, string(env["id"]), string(req.ID))
		if req.Method != MethodCallStart && req.Method != MethodCallEnd {
			return
		}
		var p map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(env["payload"], &p))
		key := "start"
		if req.Method == MethodCallEnd {
			key = "end"
		}
		var inner map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(p[key], &inner))
		var id, project string
		require.NoError(t, json.Unmarshal(inner["id"], &id))
		require.NoError(t, json.Unmarshal(inner["project_id"], &project))
		assert.Equal(t, id, string(req.CallID))
		assert.Equal(t, project, string(req.ProjectID))
	})
}

func TestPlain8(t *testing.T) {
	for c := range 256 {
		for pos := range 8 {
			var b [8]byte
			for i := range b {
				b[i] = 'a'
			}
			b[pos] = byte(c)
			x := uint64(0)
			for i := 7; i >= 0; i-- {
				x = x<<8 | uint64(b[i])
			}
			want := c >= 0x20 && c != '"' && c != '\\'
			if got := plain8(x); got != want {
				t.Fatalf("plain8 with %#x at %d = %v, want %v", c, pos, got, want)
			}
		}
	}
	// High bytes (UTF-8) next to specials must not hide them.
	for _, s := range []string{"\xff\"aaaaaa", "\x80\x80\x80\x80\x80\x80\x80\\", "\xe9\x1f\xe9\xe9\xe9\xe9\xe9\xe9"} {
		x := uint64(0)
		for i := 7; i >= 0; i-- {
			x = x<<8 | uint64(s[i])
		}
		assert.False(t, plain8(x), "%q", s)
	}
	assert.True(t, plain8(0xe9e9e9e9e9e9e9e9))
}

func TestHasControl(t *testing.T) {
	for _, n := range []int{1, 7, 8, 15, 16, 17, 33} {
		for pos := range n {
			for _, c := range []byte{0x00, 0x09, 0x1f, 0x20, 0x7f, 0x80, 0xff} {
				b := bytes.Repeat([]byte{0xe9}, n)
				b[pos] = c
				if got, want := hasControl(b), c < 0x20; got != want {
					t.Fatalf("hasControl with %#x at %d of %d = %v, want %v", c, pos, n, got, want)
				}
			}
		}
	}
	assert.False(t, hasControl(nil))
}

func TestDecodeLongEscapedString(t *testing.T) {
	// Many escapes before a far closing quote: each byte is scanned once, so
	// this stays fast; the decoded fields are still exact.
	s := strings.Repeat(`\n`, 200000) + strings.Repeat(`\"`, 1000)
	line := `{"method":"call_start","payload":{"start":{"x":"` + s + `","id":"c\"1","project_id":"p\\"}}}`
	var req Request
	require.Nil(t, Decode([]byte(line), &req))
	assert.Equal(t, `c"1`, string(req.CallID))
	assert.Equal(t, `p\`, string(req.ProjectID))
}

func TestScanLine(t *testing.T) {
	// One odd byte (or a UTF-8 sequence) at each position of printable
	// lines around the 32-byte block size.
	for _, n := range []int{0, 5, 31, 32, 33, 64, 70} {
		for pos := range n {
			for _, odd := range []string{"\x00", "\t", "\x1f", " ", "\x7f", "\x80", "\xa0", "\xff", "é", "\xe2\x82", "€"} {
				b := append(bytes.Repeat([]byte{'a'}, pos), odd...)
				b = append(b, bytes.Repeat([]byte{'a'}, max(0, n-pos-len(odd)))...)
				valid, control := scanLine(b)
				assert.Equal(t, utf8.Valid(b), valid, "valid %q", b)
				assert.Equal(t, bytes.ContainsFunc(b, func(r rune) bool { return r < 0x20 }), control, "control %q", b)
			}
		}
	}
}

func TestQuoteOrSlash(t *testing.T) {
	for c := range 256 {
		for pos := range 8 {
			b := []byte("aaaaaaaa")
			b[pos] = byte(c)
			m := quoteOrSlash(binary.LittleEndian.Uint64(b))
			if c != '"' && c != '\\' {
				assert.Zero(t, m, "%#x at %d", c, pos)
				continue
			}
			assert.Equal(t, pos*8+7, bits.TrailingZeros64(m), "%#x at %d", c, pos)
		}
	}
	// The first of several specials is found, whatever follows it.
	m := quoteOrSlash(binary.LittleEndian.Uint64([]byte("a\\\"\"\\\x00\xff\"")))
	assert.Equal(t, 15, bits.TrailingZeros64(m))
}
