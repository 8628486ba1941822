package hrl

import (
	"fmt"
	"strings"

	"github.com/vrep-io/vrep/internal/vfs"
)

// Torn is a torn tail: the end of a log that a crash left short, zeroed,
// out of sequence or holding what a reused file held before, in data no
// completed sync had made durable. It is not damage: nothing acknowledged
// as durable is in it. Open cuts it; Check reports it.
type Torn struct {
	Segment string // the segment file where the tail starts
	Offset  int64  // where in it; 0 when the whole file goes
	Bytes   int64  // the bytes cut: Segment from Offset, and every later segment file
	Reason  string // what is wrong at Offset
}

func (t *Torn) String() string {
	if t == nil {
		return "no torn tail"
	}
	return fmt.Sprintf("torn tail of %d bytes from %s offset %d: %s", t.Bytes, t.Segment, t.Offset, t.Reason)
}

// Check reads the log in dir without changing it and judges it exactly as
// Open's recovery does (both read it with one record reader and one rule
// for where the records end). It calls fn for every record Open would
// keep, sync records aside. Damage is a *CorruptionError. A torn tail is
// not an error: Check returns it, with the bytes Open would cut, or nil
// when the log ends cleanly.
func Check(fs vfs.FS, dir string, fn func(Record)) (*Torn, error) {
	names, err := fs.List(dir)
	if err != nil {
		return nil, fmt.Errorf("hrl: %w", err)
	}
	var segs []string
	for _, name := range names {
		if strings.HasSuffix(name, suffix) {
			segs = append(segs, name)
		}
	}
	lay, err := readLayout(fs, dir, segs, fn)
	if err != nil {
		return nil, err
	}
	lay.close(false)
	return lay.torn, nil
}
