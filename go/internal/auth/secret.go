// Package auth finds the W&B API key the sidecar sends to the trace server
// and holds it in a Secret that never prints itself.
package auth

import (
	"fmt"
	"log/slog"
)

const redacted = "[REDACTED]"

// Secret holds an API key. Every way of printing it (fmt verbs, slog,
// encoding/json) shows a placeholder; only Reveal returns the key.
// The zero value is an empty secret.
type Secret struct {
	key string
}

// NewSecret wraps key.
func NewSecret(key string) Secret { return Secret{key: key} }

// Reveal returns the key. Call it only to build an Authorization header.
func (s Secret) Reveal() string { return s.key }

// Empty reports whether the secret holds no key.
func (s Secret) Empty() bool { return s.key == "" }

// String implements fmt.Stringer without the key.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer without the key, for %#v.
func (s Secret) GoString() string { return "auth.Secret{" + redacted + "}" }

// Format implements fmt.Formatter so that every verb, including %x, %q and
// %d, prints the placeholder instead of the key.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = f.Write([]byte(s.GoString()))
		return
	}
	_, _ = f.Write([]byte(redacted))
}

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler, used by slog's text and
// JSON handlers and by encoding/json for map keys.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
