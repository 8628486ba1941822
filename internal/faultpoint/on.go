//go:build faultpoints

package faultpoint

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Enabled reports whether this build has fault points (the faultpoints
// build tag).
const Enabled = true

var (
	armed atomic.Bool
	name  string
	left  atomic.Int64
)

func init() {
	spec := os.Getenv("VREP_FAULTPOINT")
	if spec == "" {
		return
	}
	n := int64(1)
	if p, c, ok := strings.Cut(spec, ":"); ok {
		spec = p
		if v, err := strconv.ParseInt(c, 10, 64); err == nil && v > 0 {
			n = v
		}
	}
	name = spec
	left.Store(n)
	armed.Store(true)
}

// Hit marks a pass through the named point.
func Hit(point string) {
	if !armed.Load() || point != name {
		return
	}
	if left.Add(-1) == 0 {
		os.Stderr.WriteString("vrep: fault point " + point + " reached: killing the process\n")
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}
