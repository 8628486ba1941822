// Package faultpoint kills the process at named places in the code, for
// crash tests: with VREP_FAULTPOINT=NAME:N in the environment, the N-th
// time the code passes Hit(NAME) the process sends itself SIGKILL, as a
// power cut or an OOM kill would end it there.
//
// Fault points exist only in test builds: built with the faultpoints tag
// (go build -tags faultpoints), Hit does the above and costs one atomic
// load when the variable is unset; in every other build, production ones
// included, Hit is an empty function the compiler inlines away, and
// VREP_FAULTPOINT is ignored.
package faultpoint

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
	// ResyncAfterDurable: the primary heard that the replica made a
	// resync mark durable. Not in All: only a resync passes it.
	ResyncAfterDurable = "resync-after-durable"
)

// The failover's points, on the replica (not in All: a crash loop of
// the replication path never passes them).
const (
	FailoverStateSaved   = "failover-state-saved"   // failed-over state persisted, nothing served yet
	CommitRolledBack     = "commit-rolled-back"     // the image rolled back to the point, the step not yet persisted
	CommitFolded         = "commit-folded"          // the overlay folded into the image, the base not yet switched
	CommitSwitched       = "commit-switched"        // the volume's base switched to the image, history not yet dropped
	CommitHistoryDropped = "commit-history-dropped" // points and undo dropped, Committed not yet persisted
)

// Failover lists the failover's points, in the order a commit passes
// them.
var Failover = []string{FailoverStateSaved, CommitRolledBack, CommitFolded, CommitSwitched, CommitHistoryDropped}

// All lists every point, for test loops.
var All = []string{LogAfterWrite, LogAfterSync, ShipBeforeSend, ShipAfterAck,
	ApplyBeforeIndex, ApplyBeforeImage, ApplyBeforeState, PruneBetweenDelete}
