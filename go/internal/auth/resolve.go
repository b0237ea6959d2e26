package auth

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/bgentry/go-netrc/netrc"
)

// ErrNoKey is returned by Resolve when no source holds a key.
var ErrNoKey = errors.New("no api key: pass --api-key, set WANDB_API_KEY, or add the W&B host with a password to ~/.netrc")

// DefaultBaseURL is the W&B API host used for the netrc lookup when
// WANDB_BASE_URL is unset.
const DefaultBaseURL = "https://api.wandb.ai"

// Resolve finds the API key, trying in order:
//
//  1. flagKey (the --api-key flag), if not blank;
//  2. the WANDB_API_KEY environment variable, if not blank;
//  3. the password of the netrc entry for host[:port] of WANDB_BASE_URL
//     (default api.wandb.ai), or of its "default" entry, in the first file
//     that exists of $NETRC, ~/.netrc and ~/_netrc.
//
// getenv reads the environment (os.Getenv outside tests). The second result
// names the source: "flag", "WANDB_API_KEY" or "netrc <path>". With no key
// the error wraps ErrNoKey. No error or result ever holds the key itself.
func Resolve(flagKey string, getenv func(string) string) (Secret, string, error) {
	if k := strings.TrimSpace(flagKey); k != "" {
		return NewSecret(k), "flag", nil
	}
	if k := strings.TrimSpace(getenv("WANDB_API_KEY")); k != "" {
		return NewSecret(k), "WANDB_API_KEY", nil
	}

	machine, err := netrcMachine(getenv("WANDB_BASE_URL"))
	if err != nil {
		return Secret{}, "", err
	}
	path, ok := findNetrc(getenv)
	if !ok {
		return Secret{}, "", fmt.Errorf("%w (no netrc file found)", ErrNoKey)
	}
	key, err := netrcPassword(path, machine)
	if err != nil {
		return Secret{}, "", err
	}
	if key == "" {
		return Secret{}, "", fmt.Errorf("%w (no password for machine %q in %s)", ErrNoKey, machine, path)
	}
	return NewSecret(key), "netrc " + path, nil
}

// netrcMachine returns the netrc machine name for a W&B base URL: its
// host and any explicit port, as the Python SDK looks it up.
func netrcMachine(baseURL string) (string, error) {
	baseURL = strings.TrimSpace(baseURL)
	if baseURL == "" {
		baseURL = DefaultBaseURL
	}
	u, err := url.Parse(baseURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("auth: WANDB_BASE_URL is not an absolute URL with a host")
	}
	return u.Host, nil
}

// findNetrc returns the first existing file of $NETRC, ~/.netrc, ~/_netrc.
func findNetrc(getenv func(string) string) (string, bool) {
	var candidates []string
	if p := getenv("NETRC"); p != "" {
		candidates = append(candidates, p)
	}
	home := getenv("HOME")
	if home == "" {
		home = getenv("USERPROFILE")
	}
	if home != "" {
		candidates = append(candidates, filepath.Join(home, ".netrc"), filepath.Join(home, "_netrc"))
	}
	for _, p := range candidates {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, true
		}
	}
	return "", false
}

// netrcPassword returns the password for machine in the netrc file at path,
// falling back to a "default" entry; "" when neither exists.
func netrcPassword(path, machine string) (string, error) {
	n, err := netrc.ParseFile(path)
	if err != nil {
		// The parser's own message can quote a token of the file, which may be
		// part of a key: report only the file and line.
		var perr *netrc.Error
		if errors.As(err, &perr) {
			return "", fmt.Errorf("auth: netrc %s is malformed near line %d", path, perr.LineNum)
		}
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			return "", fmt.Errorf("auth: reading netrc %s: %w", path, pathErr.Err)
		}
		return "", fmt.Errorf("auth: netrc %s could not be read", path)
	}
	m := n.FindMachine(machine)
	if m == nil {
		return "", nil
	}
	return unquote(m.Password), nil
}

// unquote removes the double quotes around a netrc value, as Python's
// netrc module does ("abc" -> abc, with \" and \\ escapes). The parser
// splits on whitespace, so a quoted value cannot contain spaces.
func unquote(v string) string {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return v
	}
	inner := v[1 : len(v)-1]
	var b strings.Builder
	for i := 0; i < len(inner); i++ {
		if inner[i] == '\\' && i+1 < len(inner) {
			i++
		}
		b.WriteByte(inner[i])
	}
	return b.String()
}
