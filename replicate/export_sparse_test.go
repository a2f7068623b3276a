package replicate

import (
	"context"
	"testing"
)

// SendStoreFile sends the file p of the store directory store through tr
// the way the shipper sends a file, and returns the bytes it counts as
// sent (data only) and sendFile's error.
func SendStoreFile(t *testing.T, store, p string, tr Transport) (int64, error) {
	t.Helper()
	s, err := NewShipper(Options{Name: "w", Store: store, Journal: newFakeJournal(),
		Dial: func(context.Context) (Transport, error) { return tr, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.store.Close()
	s.t = tr
	return s.sendFile(t.Context(), p, 0, nil)
}

// ErrSourceChanged is errSourceChanged, for the external tests.
var ErrSourceChanged = errSourceChanged
