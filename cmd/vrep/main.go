// Command vrep is disaster-recovery replication for Linux VM disks: one
// binary, daemons and admin commands as subcommands (one file each).
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/primary"
)

// Exit codes: one per kind of failure an operator or script acts on.
const (
	exitError    = 1
	exitUsage    = 2
	exitCorrupt  = 3
	exitConflict = 4
)

func main() {
	root := &cobra.Command{
		Use:   "vrep",
		Short: "Disaster-recovery replication for Linux virtual machine disks",
		Long: `vrep protects VM disks: every write is captured in a write-ordered change log,
served to VMs over NBD and FUSE, and replicated to a replica as recovery points.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(primaryCmd(), replicaCmd(), statusCmd(), pointCmd(), pointsCmd(), failoverCmd(), replicationCmd(), demoCmd(), certCmd(), logCheckCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vrep:", sentence(err))
		os.Exit(exitCode(err))
	}
}

// sentence turns an error into the one sentence an operator reads.
func sentence(err error) string {
	if tracked.IsCorruption(err) {
		return err.Error() + ". The disk needs a resync; its image was left untouched."
	}
	return err.Error()
}

func exitCode(err error) int {
	var de *daemonError
	switch {
	case errors.As(err, &de) && de.status == 409:
		return exitConflict
	case errors.As(err, &de) && de.status == 400:
		return exitUsage
	case tracked.IsCorruption(err):
		return exitCorrupt
	case errors.Is(err, primary.ErrLocked):
		return exitConflict
	case errors.Is(err, pki.ErrExists):
		return exitConflict
	case errors.Is(err, names.ErrBadName), errors.Is(err, errUsage):
		return exitUsage
	}
	return exitError
}

var errUsage = errors.New("usage")
