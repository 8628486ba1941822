// Package faultpoint kills the process at named places in the code, for
// crash tests: with VREP_FAULTPOINT=NAME:N in the environment, the N-th
// time the code passes Hit(NAME) the process sends itself SIGKILL, as a
// power cut or an OOM kill would end it there. Without the variable, Hit
// costs one atomic load.
package faultpoint

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// The named points. Each is a moment where a crash must lose nothing
// acknowledged and leave nothing half-done that recovery cannot finish.
const (
	LogAfterWrite      = "log-after-write"      // records written to the segment, not yet fsynced
	LogAfterSync       = "log-after-sync"       // segment fsynced, appenders not yet told
	ShipBeforeSend     = "ship-before-send"     // a batch built, not sent
	ShipAfterAck       = "ship-after-ack"       // the replica acknowledged, the log not yet released
	ApplyBeforeIndex   = "apply-before-index"   // undo bytes durable, the index not yet committed
	ApplyBeforeImage   = "apply-before-image"   // history committed, the image not yet written
	ApplyBeforeState   = "apply-before-state"   // the image written and synced, the applied LSN not yet published
	PruneBetweenDelete = "prune-between-delete" // old points deleted, their history not yet
	// ResyncAfterMark: the replica made a batch of resync chunks and its
	// progress durable. Not in All: only a resync passes it.
	ResyncAfterMark = "resync-after-mark"
)

// All lists every point, for test loops.
var All = []string{LogAfterWrite, LogAfterSync, ShipBeforeSend, ShipAfterAck,
	ApplyBeforeIndex, ApplyBeforeImage, ApplyBeforeState, PruneBetweenDelete}

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
