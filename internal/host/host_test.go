package host

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSetRoleUnchangedOnError: a role the roles file could not take stays
// what it was in memory too (it was changed in place before the write,
// and the host acted on a role no restart would find).
func TestSetRoleUnchangedOnError(t *testing.T) {
	h := &Host{cfg: Config{Data: t.TempDir()}, roles: map[string]*vmRole{}}
	if err := h.setRole("vm1", func(r *vmRole) {
		r.Role, r.Generation, r.Disks = RolePrimary, 1, []roleDisk{{Disk: "vm1/disk0", Home: "/x"}}
	}); err != nil {
		t.Fatal(err)
	}
	// A directory where the roles file goes: the next write fails.
	if err := os.Remove(h.rolesPath()); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(h.rolesPath(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.rolesPath(), "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.setRole("vm1", func(r *vmRole) {
		r.Role, r.Step, r.Generation = RoleReplica, stepDemoting, 2
		r.Disks[0].Base = 7
	}); err == nil {
		t.Fatal("setRole wrote over a directory")
	}
	if err := h.setRole("vm2", func(r *vmRole) { r.Role = RolePrimary }); err == nil {
		t.Fatal("setRole wrote over a directory")
	}
	r, ok := h.role("vm1")
	if !ok || r.Role != RolePrimary || r.Step != "" || r.Generation != 1 || r.Disks[0].Base != 0 {
		t.Fatalf("after a failed write the role in memory is %+v", r)
	}
	if _, ok := h.role("vm2"); ok {
		t.Fatal("a VM whose role could not be written is known in memory")
	}
}
