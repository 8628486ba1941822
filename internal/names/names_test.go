package names

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestDisk(t *testing.T) {
	for _, ok := range []string{"vm1/disk0", "a/b", "web-01/root.img_2"} {
		if _, _, err := Disk(ok); err != nil {
			t.Errorf("Disk(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "vm1", "vm1/", "/disk", "../x", "vm/..", "vm/.hidden", "vm/a/b",
		"vm/a b", "vm/-rf", "vm/" + strings.Repeat("x", 65), "vm/ü", "vm/a\x00"} {
		if _, _, err := Disk(bad); !errors.Is(err, ErrBadName) {
			t.Errorf("Disk(%q) = %v, want ErrBadName", bad, err)
		}
	}
}

// FuzzDisk: whatever passes stays inside the directory it is joined to.
func FuzzDisk(f *testing.F) {
	f.Add("vm1/disk0")
	f.Add("../../etc/passwd")
	f.Fuzz(func(t *testing.T, s string) {
		vm, disk, err := Disk(s)
		if err != nil {
			return
		}
		p := filepath.Join("/state", vm, disk)
		if filepath.Dir(filepath.Dir(p)) != "/state" || filepath.Base(p) != disk {
			t.Fatalf("%q escapes: %s", s, p)
		}
	})
}
