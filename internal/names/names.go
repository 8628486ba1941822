// Package names validates the names operators give disks and VMs. A disk
// is named "VM/DISK"; both parts become directory names under vrep's state
// and, later, the replica's storage roots, so they are checked strictly.
package names

import (
	"errors"
	"fmt"
	"strings"
)

// MaxPart bounds each part of a name.
const MaxPart = 64

// ErrBadName is wrapped by every validation error.
var ErrBadName = errors.New("bad name")

// Part checks one part (a VM or a disk name): 1 to MaxPart characters
// from [A-Za-z0-9._-], not starting with '.' or '-'.
func Part(s string) error {
	if s == "" || len(s) > MaxPart {
		return fmt.Errorf("%w: %q must be 1 to %d characters", ErrBadName, s, MaxPart)
	}
	if s[0] == '.' || s[0] == '-' {
		return fmt.Errorf("%w: %q must not start with '.' or '-'", ErrBadName, s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return fmt.Errorf("%w: %q may hold only letters, digits, '.', '_' and '-'", ErrBadName, s)
		}
	}
	return nil
}

// Disk checks a disk name "VM/DISK" and returns its parts.
func Disk(s string) (vm, disk string, err error) {
	vm, disk, ok := strings.Cut(s, "/")
	if !ok || strings.Contains(disk, "/") {
		return "", "", fmt.Errorf("%w: disk %q must be VM/DISK", ErrBadName, s)
	}
	if err := Part(vm); err != nil {
		return "", "", err
	}
	if err := Part(disk); err != nil {
		return "", "", err
	}
	return vm, disk, nil
}
