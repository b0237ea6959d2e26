package backend

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		code   string
		want   class
	}{
		{"200", 200, "", classOK},
		{"201", 201, "", classOK},
		{"204", 204, "", classOK},
		{"408", 408, "", classRetry},
		{"429", 429, "", classRetry},
		{"500", 500, "", classRetry},
		{"502", 502, "", classRetry},
		{"503", 503, "", classRetry},
		{"504", 504, "", classRetry},
		{"599", 599, "", classRetry},
		{"413", 413, "", classTooLarge},
		{"401", 401, "", classUnauthorized},
		{"403", 403, "", classUnauthorized},
		{"400", 400, "", classRejected},
		{"422", 422, "", classRejected},
		{"409", 409, "", classRejected},
		{"400 calls complete", 400, errorCodeCallsComplete, classCallsComplete},
		{"403 calls complete", 403, errorCodeCallsComplete, classCallsComplete},
		{"500 calls complete", 500, errorCodeCallsComplete, classRetry},
		{"400 other code", 400, "SOMETHING_ELSE", classRejected},
		{"404", 404, "", classEndpoint},
		{"405", 405, "", classEndpoint},
		{"301", 301, "", classEndpoint},
		{"307", 307, "", classEndpoint},
		{"600", 600, "", classEndpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, classify(tc.status, tc.code))
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		header string
		want   time.Duration
	}{
		{"absent", "", 0},
		{"zero seconds", "0", 0},
		{"seconds", "7", 7 * time.Second},
		{"seconds with spaces", " 3 ", 3 * time.Second},
		{"http date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{"rfc850 date", now.Add(time.Minute).Format(time.RFC850), time.Minute},
		{"past date", now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"garbage", "soon", 0},
		{"negative", "-5", 0},
		{"fraction", "1.5", 0},
		{"huge seconds", "99999999999999999999", maxRetryAfter},
		{"far date", now.Add(1000 * time.Hour).Format(http.TimeFormat), maxRetryAfter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, parseRetryAfter(tc.header, now))
		})
	}
}

func TestParseErrorBody(t *testing.T) {
	for _, tc := range []struct {
		name       string
		body       string
		wantCode   string
		wantReason string
	}{
		{"message", `{"message":" bad  op_name\n"}`, "", "bad op_name"},
		{"error before detail", `{"detail":"d","error":"e"}`, "", "e"},
		{"detail string", `{"detail":"project not found"}`, "", "project not found"},
		{"reason", `{"reason":"too big"}`, "", "too big"},
		{"fastapi list without input", `{"detail":[{"loc":["body","batch",0],"msg":"Field required","input":{"secret":"payload"}}]}`, "", "body.batch.0: Field required"},
		{"nested error object", `{"error":{"message":"nested"}}`, "", "nested"},
		{"calls complete", `{"error_code":"CALLS_COMPLETE_MODE_REQUIRED","message":"use calls complete"}`, errorCodeCallsComplete, "use calls complete"},
		{"not json", `<html>Bad Gateway</html>`, "", ""},
		{"json array", `["x"]`, "", ""},
		{"empty", ``, "", ""},
		{"long reason", `{"message":"` + strings.Repeat("é", 400) + `"}`, "", strings.Repeat("é", 256) + "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, reason := parseErrorBody([]byte(tc.body))
			assert.Equal(t, tc.wantCode, code)
			assert.Equal(t, tc.wantReason, reason)
		})
	}
}

func TestBodyEncoding(t *testing.T) {
	items := []Item{
		{Mode: ModeStart, ID: "a", Payload: []byte(`{"start":{"id":"a"}}`)},
		{Mode: ModeEnd, ID: "a", Payload: []byte(`{"end":{"id":"a","output":"<&>"}}`)},
	}
	for _, tc := range []struct {
		name string
		idx  []int
		want string
	}{
		{"empty", []int{}, `{"batch":[]}`},
		{"one", []int{1}, `{"batch":[{"mode":"end","req":{"end":{"id":"a","output":"<&>"}}}]}`},
		{"two", []int{0, 1}, `{"batch":[{"mode":"start","req":{"start":{"id":"a"}}},{"mode":"end","req":{"end":{"id":"a","output":"<&>"}}}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := bodySize(items, tc.idx)
			got := encodeBody(items, tc.idx, size)
			assert.Equal(t, tc.want, string(got))
			assert.Len(t, got, size)
		})
	}
}
