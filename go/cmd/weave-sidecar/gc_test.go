package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestGCSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		percent int
		limit   int64
	}{
		{"defaults", nil, 400, 256<<20 + 64<<20},
		{"GOGC set", map[string]string{"GOGC": "100"}, -1, 256<<20 + 64<<20},
		{"GOMEMLIMIT set", map[string]string{"GOMEMLIMIT": "1GiB"}, 400, -1},
		{"both set", map[string]string{"GOGC": "off", "GOMEMLIMIT": "1GiB"}, -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			percent, limit := gcSettings(256<<20, func(k string) string { return tc.env[k] })
			assert.Equal(t, tc.percent, percent)
			assert.Equal(t, tc.limit, limit)
		})
	}
}
