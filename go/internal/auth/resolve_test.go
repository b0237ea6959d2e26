package auth

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// env returns a getenv over a fixed map, so tests never read the real
// environment or the real home directory.
func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// homeWith makes a home directory holding the fixture under name.
func homeWith(t *testing.T, fixture, name string) string {
	t.Helper()
	home := t.TempDir()
	data, err := os.ReadFile(filepath.Join("testdata", fixture))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(home, name), data, 0o600))
	return home
}

func fixture(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", name))
	require.NoError(t, err)
	return p
}

func TestResolveOrder(t *testing.T) {
	home := homeWith(t, "machine_port.netrc", ".netrc")
	for _, tc := range []struct {
		name       string
		flag       string
		vars       map[string]string
		wantKey    string
		wantSource string
	}{
		{"flag wins", "flag-key", map[string]string{"WANDB_API_KEY": "env-key", "HOME": home}, "flag-key", "flag"},
		{"env before netrc", "", map[string]string{"WANDB_API_KEY": "env-key", "HOME": home}, "env-key", "WANDB_API_KEY"},
		{"blank env skipped", "  ", map[string]string{"WANDB_API_KEY": " ", "HOME": home}, "key-for-api-host", "netrc " + filepath.Join(home, ".netrc")},
		{"flag trimmed", " k1 \n", nil, "k1", "flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, source, err := Resolve(tc.flag, env(tc.vars))
			require.NoError(t, err)
			assert.Equal(t, tc.wantKey, key.Reveal())
			assert.Equal(t, tc.wantSource, source)
		})
	}
}

func TestResolveNetrc(t *testing.T) {
	portHome := homeWith(t, "machine_port.netrc", ".netrc")
	underscoreHome := homeWith(t, "machine_port.netrc", "_netrc")
	bothHome := homeWith(t, "default.netrc", ".netrc")
	data, err := os.ReadFile(fixture(t, "machine_port.netrc"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(bothHome, "_netrc"), data, 0o600))

	for _, tc := range []struct {
		name       string
		vars       map[string]string
		wantKey    string
		wantSource string
	}{
		{"default host", map[string]string{"HOME": portHome}, "key-for-api-host", filepath.Join(portHome, ".netrc")},
		{"machine with port", map[string]string{"HOME": portHome, "WANDB_BASE_URL": "http://127.0.0.1:8080/"}, "key-for-port-8080", filepath.Join(portHome, ".netrc")},
		{"default entry", map[string]string{"HOME": bothHome, "WANDB_BASE_URL": "https://wandb.example.com"}, "key-from-default", filepath.Join(bothHome, ".netrc")},
		{"dot netrc before underscore", map[string]string{"HOME": bothHome}, "key-from-default", filepath.Join(bothHome, ".netrc")},
		{"underscore netrc", map[string]string{"HOME": underscoreHome}, "key-for-api-host", filepath.Join(underscoreHome, "_netrc")},
		{"NETRC override", map[string]string{"HOME": portHome, "NETRC": fixture(t, "default.netrc")}, "key-from-default", fixture(t, "default.netrc")},
		{"missing NETRC falls through", map[string]string{"HOME": portHome, "NETRC": filepath.Join(portHome, "absent")}, "key-for-api-host", filepath.Join(portHome, ".netrc")},
		{"USERPROFILE when no HOME", map[string]string{"USERPROFILE": underscoreHome}, "key-for-api-host", filepath.Join(underscoreHome, "_netrc")},
		{"quoted password", map[string]string{"NETRC": fixture(t, "quoted.netrc")}, `quoted"key`, fixture(t, "quoted.netrc")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, source, err := Resolve("", env(tc.vars))
			require.NoError(t, err)
			assert.Equal(t, tc.wantKey, key.Reveal())
			assert.Equal(t, "netrc "+tc.wantSource, source)
		})
	}
}

func TestResolveNoKey(t *testing.T) {
	emptyHome := t.TempDir()
	portHome := homeWith(t, "machine_port.netrc", ".netrc")
	for _, tc := range []struct {
		name    string
		vars    map[string]string
		wantMsg string
	}{
		{"no netrc file", map[string]string{"HOME": emptyHome}, "no netrc file found"},
		{"no home at all", nil, "no netrc file found"},
		{"unknown machine", map[string]string{"HOME": portHome, "WANDB_BASE_URL": "https://other.example.com"}, `machine "other.example.com"`},
		{"entry without password", map[string]string{"NETRC": fixture(t, "nopassword.netrc")}, "no password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, source, err := Resolve("", env(tc.vars))
			require.ErrorIs(t, err, ErrNoKey)
			assert.Contains(t, err.Error(), tc.wantMsg)
			for _, src := range []string{"--api-key", "WANDB_API_KEY", "netrc"} {
				assert.Contains(t, err.Error(), src)
			}
			assert.True(t, key.Empty())
			assert.Empty(t, source)
		})
	}
}

func TestResolveBadInput(t *testing.T) {
	t.Run("malformed netrc hides its tokens", func(t *testing.T) {
		_, _, err := Resolve("", env(map[string]string{"NETRC": fixture(t, "malformed.netrc")}))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "malformed.netrc is malformed near line 1")
		assert.NotContains(t, err.Error(), "secret-part")
	})
	t.Run("base url without host", func(t *testing.T) {
		_, _, err := Resolve("", env(map[string]string{"WANDB_BASE_URL": "not a url"}))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "WANDB_BASE_URL")
	})
	t.Run("unreadable netrc", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads files regardless of mode")
		}
		p := filepath.Join(t.TempDir(), "netrc")
		require.NoError(t, os.WriteFile(p, []byte("machine api.wandb.ai password k\n"), 0o000))
		_, _, err := Resolve("", env(map[string]string{"NETRC": p}))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "permission denied")
	})
}
