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
	// SeedPublished: a seed import made one disk seeded, its point not
	// yet indexed, the next disk not yet published. Not in All: only a
	// seed import passes it.
	SeedPublished = "seed-published"
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

// PlanStepDone: a recovery plan's step finished and its result was
// persisted; the next step not yet begun (not in All).
const PlanStepDone = "plan-step-done"

// Failover lists the failover's points, in the order a commit passes
// them.
var Failover = []string{FailoverStateSaved, CommitRolledBack, CommitFolded, CommitSwitched, CommitHistoryDropped}

// The planned failover's points (not in All), in the order a handover
// passes them: on the old primary (Handover*), on the new one (Promote*),
// then the old primary again (Demote*).
const (
	HandoverFenced  = "handover-fenced"  // writes refused, the final point not yet taken
	HandoverShipped = "handover-shipped" // the replica holds every record, not yet asked to promote
	HandoverAsked   = "handover-asked"   // "handing over" persisted, the replica not yet asked
	PromoteSaved    = "promote-saved"    // the new role persisted, nothing moved yet
	PromoteMoved    = "promote-moved"    // images moved out of the replica's store, history not yet dropped
	PromoteServing  = "promote-serving"  // the VM served and replicating back, the answer not yet sent
	DemoteConfirmed = "demote-confirmed" // the replica promoted the VM, the old primary not yet closed
	DemoteAdopted   = "demote-adopted"   // the images adopted as the replica copy, the role not yet final
	ReverseDemoting = "reverse-demoting" // the old primary persisted that it keeps the replica, nothing closed yet
	ReverseAnswered = "reverse-answered" // the old primary keeps the replica; the new one not yet serving as a primary
)

// Reverse lists the reverse replication's points in order.
var Reverse = []string{ReverseDemoting, DemoteAdopted, ReverseAnswered, PromoteMoved}

// Planned lists the planned failover's points in order.
var Planned = []string{HandoverFenced, HandoverShipped, HandoverAsked, PromoteSaved, PromoteMoved,
	PromoteServing, DemoteConfirmed, DemoteAdopted}

// All lists every point, for test loops.
var All = []string{LogAfterWrite, LogAfterSync, ShipBeforeSend, ShipAfterAck,
	ApplyBeforeIndex, ApplyBeforeImage, ApplyBeforeState, PruneBetweenDelete}
