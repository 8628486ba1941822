// Command vrep is disaster-recovery replication for Linux VM disks: one
// binary, daemons and admin commands as subcommands (one file each).
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/blockdev/tracked"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/procs"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/seed"
	"github.com/vrep-io/vrep/replica/store"
)

// Exit codes: one per kind of failure an operator or script acts on.
const (
	exitError    = 1
	exitUsage    = 2
	exitCorrupt  = 3
	exitConflict = 4
)

func main() {
	// Blocking disk system calls must not starve the request loops of Ps
	// (internal/procs); GOMAXPROCS in the environment overrides it.
	procs.ForBlockingIO()
	root := rootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vrep:", sentence(err))
		os.Exit(exitCode(err))
	}
}

// rootCmd is vrep with every subcommand.
func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "vrep",
		Short: "Disaster-recovery replication for Linux virtual machine disks",
		Long: `vrep protects VM disks: every write is captured in a write-ordered change log,
served to VMs over NBD and FUSE, and replicated to a replica as recovery points.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(hostCmd(), primaryCmd(), replicaCmd(), statusCmd(), pointCmd(), pointsCmd(), failoverCmd(), replicationCmd(), resyncCmd(), verifyCmd(), eventsCmd(), jobsCmd(), planCmd(), measureCmd(), seedCmd(), demoCmd(), certCmd(), logCheckCmd())
	strictUsage(root)
	return root
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
	var se *seedErr
	var ve *verifyError
	switch {
	case errors.As(err, &ve):
		return exitCorrupt
	case errors.As(err, &se) && se.kind == "usage":
		return exitUsage
	case errors.As(err, &se) && se.kind == "conflict":
		return exitConflict
	case errors.As(err, &se) && se.kind == "corrupt":
		return exitCorrupt
	case errors.Is(err, seed.ErrDamaged), errors.Is(err, seed.ErrManifest), errors.Is(err, seed.ErrNoSeed):
		return exitCorrupt
	case errors.Is(err, seed.ErrBadArgs), errors.Is(err, replicad.ErrSeedMismatch):
		return exitUsage
	case errors.Is(err, store.ErrSeeded), errors.Is(err, receive.ErrStreaming), errors.Is(err, replicad.ErrImportBusy):
		return exitConflict
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

// strictUsage makes every misuse of the command line a usage error (exit
// 2, one sentence): an unknown subcommand or flag, a missing subcommand,
// or the wrong number of arguments. Cobra's defaults print the help and
// exit 0 for the first and third, which a script takes for success.
func strictUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w: %v (see %s --help)", errUsage, err, c.CommandPath())
	})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			if c.SuggestionsMinimumDistance <= 0 {
				c.SuggestionsMinimumDistance = 2
			}
			c.Args = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
					if s := c.SuggestionsFor(args[0]); len(s) > 0 {
						msg += "; did you mean " + strings.Join(s, " or ") + "?"
					}
					return fmt.Errorf("%w: %s", errUsage, msg)
				}
				return nil
			}
			c.RunE = func(c *cobra.Command, args []string) error {
				c.SetOut(c.ErrOrStderr())
				c.Help()
				var subs []string
				for _, sc := range c.Commands() {
					if sc.IsAvailableCommand() {
						subs = append(subs, sc.Name())
					}
				}
				return fmt.Errorf("%w: %s needs a subcommand: %s (see %s --help)", errUsage, c.CommandPath(), strings.Join(subs, ", "), c.CommandPath())
			}
		} else if args := c.Args; args != nil {
			c.Args = func(c *cobra.Command, a []string) error {
				if err := args(c, a); err != nil {
					return fmt.Errorf("%w: %s: %v (usage: %s)", errUsage, c.CommandPath(), err, c.UseLine())
				}
				return nil
			}
		}
		for _, sc := range c.Commands() {
			walk(sc)
		}
	}
	walk(root)
}
