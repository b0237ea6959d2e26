package batch

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOnCutTriggers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var cuts []Cut
		rec := &recorder{}
		maxBytes := bodyOverhead + 2*(400+startWrap) + 1 // two 400-byte calls fit, three do not
		b, _ := newBatcher(t, rec, func(c *Config) {
			c.MaxCount, c.MaxBytes, c.FlushInterval = 3, maxBytes, time.Second
			c.OnCut = func(cut Cut) {
				mu.Lock()
				cuts = append(cuts, cut)
				mu.Unlock()
			}
		})
		var tally Tally
		add := func(id string, size int) { require.Nil(t, b.Add(&tally, item(id, size))) }

		add("a", 400) // waits for the interval
		time.Sleep(1100 * time.Millisecond)
		synctest.Wait()
		add("b", 400)
		add("c", 400)
		add("d", 400) // does not fit beside b and c: they are cut for bytes
		add("e", 60)
		add("f", 60) // d, e, f: the count
		add("g", 60)
		require.NoError(t, b.Flush(t.Context()))
		add("h", 60)
		b.Close(context.Background())

		require.Equal(t, [][]string{{"a"}, {"b", "c"}, {"d", "e", "f"}, {"g"}, {"h"}}, rec.ids())
		var want []Cut
		for i, why := range []Trigger{TriggerInterval, TriggerBytes, TriggerCount, TriggerFlush, TriggerShutdown} {
			want = append(want, Cut{Trigger: why, Items: len(rec.batches[i]), Bytes: bodySize(rec.batches[i])})
		}
		assert.Equal(t, want, cuts)
	})
}
