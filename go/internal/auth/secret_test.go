package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testKey = "0123456789abcdef-not-a-real-key"

func TestSecretNeverPrints(t *testing.T) {
	s := NewSecret(testKey)
	holder := struct {
		Key  Secret
		Ptr  *Secret
		Name string
	}{s, &s, "x"}

	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10s"} {
		outputs = append(outputs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, &s), fmt.Sprintf(verb, holder))
	}
	outputs = append(outputs, fmt.Sprint(s), fmt.Sprintln(s), s.String(), s.GoString())

	js, err := json.Marshal(holder)
	require.NoError(t, err)
	outputs = append(outputs, string(js))
	mapJS, err := json.Marshal(map[Secret]Secret{s: s})
	require.NoError(t, err)
	outputs = append(outputs, string(mapJS))

	var text, jsonLog bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&text, nil), slog.NewJSONHandler(&jsonLog, nil)} {
		lg := slog.New(h)
		lg.Info("key", "key", s, "ptr", &s, "holder", holder, "any", any(s))
		lg.Info("group", slog.Group("g", slog.Any("key", s)))
	}
	outputs = append(outputs, text.String(), jsonLog.String())

	for _, out := range outputs {
		assert.NotContains(t, out, testKey)
		assert.NotContains(t, out, "0123456789")
		assert.NotContains(t, out, fmt.Sprintf("%x", testKey))
	}
	assert.Contains(t, text.String(), "key=[REDACTED]")
	assert.Contains(t, jsonLog.String(), `"key":"[REDACTED]"`)
	assert.Equal(t, testKey, s.Reveal())
}

func TestSecretAbsentFromPanics(t *testing.T) {
	s := NewSecret(testKey)
	msg := func() (msg string) {
		defer func() { msg = fmt.Sprint(recover()) }()
		panic(fmt.Sprintf("bad config: %v", s))
	}()
	assert.NotContains(t, msg, testKey)
	assert.Contains(t, msg, "[REDACTED]")
}
