package wire

import (
	"errors"
	"testing"
)

func TestPromoteRoundTrip(t *testing.T) {
	p := Promote{VM: "vm1", Generation: 2, Reverse: "127.0.0.1:7000", Point: 42,
		Disks: []HandoverDisk{{Disk: "vm1/disk0", Size: 1 << 20, LSN: 99}}}
	got, err := DecodePromote(p.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.VM != p.VM || got.Generation != 2 || got.Disks[0] != p.Disks[0] || got.Reverse != p.Reverse || got.Point != 42 {
		t.Fatalf("got %+v", got)
	}
	r := Promoted{Generation: 3, Disks: []HandoverDisk{{Disk: "vm1/disk0", LSN: 0}}}
	if got, err := DecodePromoted(r.Encode(), "vm1"); err != nil || got.Generation != 3 {
		t.Fatalf("promoted: %+v, %v", got, err)
	}
}

func TestPromoteRefusesBadInput(t *testing.T) {
	for name, body := range map[string]string{
		"not json":      `{`,
		"unknown field": `{"vm":"vm1","disks":[{"disk":"vm1/d","size":1,"lsn":1}],"reverse":"h:1","x":1}`,
		"bad vm":        `{"vm":"../x","disks":[{"disk":"vm1/d","size":1,"lsn":1}],"reverse":"h:1"}`,
		"other vm":      `{"vm":"vm1","disks":[{"disk":"vm2/d","size":1,"lsn":1}],"reverse":"h:1"}`,
		"no disks":      `{"vm":"vm1","disks":[],"reverse":"h:1"}`,
		"twice":         `{"vm":"vm1","disks":[{"disk":"vm1/d","size":1,"lsn":1},{"disk":"vm1/d","size":1,"lsn":1}],"reverse":"h:1"}`,
		"zero size":     `{"vm":"vm1","disks":[{"disk":"vm1/d","size":0,"lsn":1}],"reverse":"h:1"}`,
		"no reverse":    `{"vm":"vm1","disks":[{"disk":"vm1/d","size":1,"lsn":1}],"reverse":"nowhere"}`,
		"trailing":      `{"vm":"vm1","disks":[{"disk":"vm1/d","size":1,"lsn":1}],"reverse":"h:1"} {}`,
		"escaping disk": `{"vm":"vm1","disks":[{"disk":"vm1/../../etc","size":1,"lsn":1}],"reverse":"h:1"}`,
	} {
		if _, err := DecodePromote([]byte(body)); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", name, err)
		}
	}
	if _, err := DecodePromoted([]byte(`{"generation":0,"disks":[{"disk":"vm1/d","lsn":0}]}`), "vm1"); !errors.Is(err, ErrFrame) {
		t.Errorf("generation 0: %v", err)
	}
}

func FuzzDecodePromote(f *testing.F) {
	f.Add(Promote{VM: "vm1", Generation: 1, Reverse: "h:1", Disks: []HandoverDisk{{Disk: "vm1/d", Size: 1, LSN: 1}}}.Encode())
	f.Add(Promoted{Generation: 1, Disks: []HandoverDisk{{Disk: "vm1/d"}}}.Encode())
	f.Add(Reverse{VM: "vm1", Generation: 2, Point: 7, Disks: []HandoverDisk{{Disk: "vm1/d", Size: 1}}}.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := DecodePromote(b); err == nil {
			if _, err := DecodePromote(p.Encode()); err != nil {
				t.Fatalf("re-encoded promote refused: %v", err)
			}
		}
		if r, err := DecodeReverse(b); err == nil {
			if _, err := DecodeReverse(r.Encode()); err != nil {
				t.Fatalf("re-encoded reverse refused: %v", err)
			}
		}
		if r, err := DecodeReversed(b, "vm1"); err == nil {
			if _, err := DecodeReversed(r.Encode(), "vm1"); err != nil {
				t.Fatalf("re-encoded reversed refused: %v", err)
			}
		}
		if p, err := DecodePromoted(b, "vm1"); err == nil {
			if _, err := DecodePromoted(p.Encode(), "vm1"); err != nil {
				t.Fatalf("re-encoded promoted refused: %v", err)
			}
		}
	})
}
