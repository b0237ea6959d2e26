package backend

const (
	batchOpen  = `{"batch":[`
	batchClose = `]}`
	modeOpen   = `{"mode":"`
	reqOpen    = `","req":`
	itemClose  = `}`
)

// itemSize is the encoded size of one batch entry, without its comma.
func itemSize(it Item) int {
	return len(modeOpen) + len(it.Mode) + len(reqOpen) + len(it.Payload) + len(itemClose)
}

// bodySize is the encoded size of the body holding the items at idx.
func bodySize(items []Item, idx []int) int {
	n := len(batchOpen) + len(batchClose)
	for _, i := range idx {
		n += itemSize(items[i])
	}
	if len(idx) > 1 {
		n += len(idx) - 1
	}
	return n
}

// encodeBody builds {"batch":[{"mode":"start","req":<payload>},...]} by
// appending bytes: payloads go out exactly as received, never decoded or
// HTML-escaped. size must be bodySize(items, idx).
func encodeBody(items []Item, idx []int, size int) []byte {
	b := make([]byte, 0, size)
	b = append(b, batchOpen...)
	for k, i := range idx {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, modeOpen...)
		b = append(b, items[i].Mode...)
		b = append(b, reqOpen...)
		b = append(b, items[i].Payload...)
		b = append(b, itemClose...)
	}
	return append(b, batchClose...)
}
