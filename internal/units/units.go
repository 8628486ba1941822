// Package units parses the sizes operators type: 4096, 64K, 1M, 1G, 2T
// (powers of 1024).
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// Size is a byte count that implements pflag.Value.
type Size int64

// ParseSize parses a size with an optional K, M, G or T suffix (an
// optional trailing "iB" or "B" is accepted).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number with an optional K, M, G or T suffix", s)
	}
	return v * mult, nil
}

func (s *Size) String() string { return strconv.FormatInt(int64(*s), 10) }

// Set parses a size.
func (s *Size) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// Type names the flag type in help output.
func (s *Size) Type() string { return "size" }

// Bytes formats a byte count for people: 512 B, 4.0 KiB, 1.5 GiB.
func Bytes(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, unit := float64(n), 0
	for v >= 1024 && unit < 5 {
		v /= 1024
		unit++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + []string{"", "KiB", "MiB", "GiB", "TiB", "PiB"}[unit]
}
