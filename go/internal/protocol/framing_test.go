package protocol

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLineReader(t *testing.T) {
	const max = 40
	long := strings.Repeat("a", 25)     // longer than the 16-byte buffer, under max
	tooLong := strings.Repeat("b", 100) // over max
	exact := strings.Repeat("c", max)
	input := "one\n" + long + "\n" + tooLong + "\n" + exact + "\n" + exact + "d\n\ntwo\npartial"

	type got struct {
		line string
		err  string
	}
	var out []got
	lr := NewLineReader(strings.NewReader(input), 16, max)
	for {
		line, err := lr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		var tl *LineTooLongError
		if errors.As(err, &tl) {
			out = append(out, got{err: tl.Error()})
			continue
		}
		require.NoError(t, err)
		out = append(out, got{line: string(line)})
	}
	assert.Equal(t, []got{
		{line: "one"},
		{line: long},
		{err: "line is longer than 40 bytes (100 bytes skipped)"},
		{line: exact},
		{err: "line is longer than 40 bytes (41 bytes skipped)"},
		{line: ""},
		{line: "two"},
	}, out)
}

func TestLineReaderBudget(t *testing.T) {
	b := NewBudget(100)
	lineA := strings.Repeat("a", 80)
	lineB := strings.Repeat("b", 50)
	ra := NewLineReader(strings.NewReader(lineA+"\n"), 16, 1000)
	rb := NewLineReader(strings.NewReader(lineB+"\nok\n"+lineB+"\n"+lineB), 16, 1000)
	ra.SetBudget(b)
	rb.SetBudget(b)

	line, err := ra.Next()
	require.NoError(t, err)
	assert.Equal(t, lineA, string(line))
	assert.GreaterOrEqual(t, b.Used(), int64(81), "a's line is held until its next Next")

	// No room for b's long line: skipped, and the short one after it is read.
	_, err = rb.Next()
	var tl *LineTooLongError
	require.ErrorAs(t, err, &tl)
	assert.Equal(t, LineTooLongError{Len: 50, Limit: 1000, Busy: true}, *tl)
	assert.Contains(t, tl.Error(), "50 bytes skipped")
	line, err = rb.Next()
	require.NoError(t, err)
	assert.Equal(t, "ok", string(line))

	// Once a moves on, b's next long line fits.
	_, err = ra.Next()
	require.ErrorIs(t, err, io.EOF)
	assert.Zero(t, b.Used())
	line, err = rb.Next()
	require.NoError(t, err)
	assert.Equal(t, lineB, string(line))

	// A partial line at EOF releases what it held.
	_, err = rb.Next()
	require.ErrorIs(t, err, io.EOF)
	assert.Zero(t, b.Used())
}

func TestResponses(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  []byte
		want string
	}{
		{"ack", AppendAck(nil, []byte("7"), 41), `{"id":7,"success":true,"resolved":41}` + "\n"},
		{"ack without id", AppendAck(nil, nil, 0), `{"success":true,"resolved":0}` + "\n"},
		{"ack returned", AppendAckReturned(nil, nil, 4, []int64{1, 3}), `{"success":true,"resolved":4,"returned":[1,3]}` + "\n"},
		{"result", AppendResult(nil, []byte(`"x"`), []byte(`{"a":1}`)), `{"id":"x","success":true,"result":{"a":1}}` + "\n"},
		{"error", AppendError(nil, nil, Errorf(CodeQueueFull, "queue \"full\" <%d>", 3)),
			`{"success":false,"code":"queue_full","error":"queue \"full\" \u003c3\u003e"}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, string(tc.got))
		})
	}
}

func TestCheckHello(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload string
		code    Code
	}{
		{"absent", "", ""},
		{"null", "null", ""},
		{"empty object", "{}", ""},
		{"protocol 1", `{"protocol":1}`, ""},
		{"protocol 2", `{"protocol":2}`, CodeProtocolMismatch},
		{"protocol string", `{"protocol":"1"}`, CodeInvalidRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p []byte
			if tc.payload != "" {
				p = []byte(tc.payload)
			}
			err := CheckHello(p)
			if tc.code == "" {
				assert.Nil(t, err)
				return
			}
			require.NotNil(t, err)
			assert.Equal(t, tc.code, err.Code)
		})
	}
}
