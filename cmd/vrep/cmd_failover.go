package main

import (
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/units"
)

func pointsCmd() *cobra.Command {
	var a apiFlags
	var kind string
	var last int
	var since time.Duration
	cmd := &cobra.Command{
		Use:   "points VM [--kind app|crash] [--last N] [--since DUR] [--data DIR | --api SOCKET] [--json]",
		Short: "List a VM's recovery points on the replica",
		Long: `Lists the recovery points a replica holds for a VM, oldest first: id, time,
kind (crash- or app-consistent), consistency group, and the history it
takes to keep the point readable. VM may be ROOT/VM when several primaries
replicate VMs of that name. With --json, ids are strings: 19 digits do not
survive tools that read numbers as floats (jq, JavaScript).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if kind != "" && kind != "app" && kind != "crash" {
				return fmt.Errorf("%w: --kind is app or crash, not %q", errUsage, kind)
			}
			if last < 0 {
				return fmt.Errorf("%w: --last must be a count of points, 0 or more", errUsage)
			}
			var pts []replicad.VMPoint
			if err := a.call("GET", "/v1/points?vm="+url.QueryEscape(args[0]), &pts); err != nil {
				return err
			}
			pts = filterPoints(pts, kind, since, last, time.Now())
			out := cmd.OutOrStdout()
			if a.json {
				return printJSON(out, pts)
			}
			if len(pts) == 0 {
				fmt.Fprintf(out, "VM %s has no recovery point on this replica yet\n", args[0])
				return nil
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tKIND\tGROUP\tHISTORY")
			for _, p := range pts {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", p.ID, p.Time.Format("2006-01-02 15:04:05.000"), p.Kind, p.Group, units.Bytes(p.HistoryBytes))
			}
			return tw.Flush()
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "recovery points are listed on the replica")
	cmd.Flags().StringVar(&kind, "kind", "", "only points of this kind: app or crash")
	cmd.Flags().IntVar(&last, "last", 0, "only the newest N points (after the other filters)")
	cmd.Flags().DurationVar(&since, "since", 0, "only points taken in the last DURATION (e.g. 2h)")
	return cmd
}

// filterPoints keeps the points of kind (any if empty) taken within since
// of now (any if 0), then the newest last of them (all if 0). pts is
// oldest first, and so is the result.
func filterPoints(pts []replicad.VMPoint, kind string, since time.Duration, last int, now time.Time) []replicad.VMPoint {
	out := pts[:0:0]
	for _, p := range pts {
		if (kind == "" || p.Kind == kind+"-consistent") && (since == 0 || !p.Time.Before(now.Add(-since))) {
			out = append(out, p)
		}
	}
	if last > 0 && len(out) > last {
		out = out[len(out)-last:]
	}
	return out
}

func failoverCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Fail VMs over to the replica",
	}
	var a apiFlags
	var point string
	test := &cobra.Command{
		Use:   "test VM|GROUP [--point ID] [--data DIR | --api SOCKET]",
		Short: "Start a test failover: a writable copy of a point, while replication goes on",
		Long: `Serves every disk of VM, as it was at a recovery point (default the newest),
as a writable copy-on-write overlay: NBD export VM/DISK-test on the
replica's --nbd sockets, and VM/DISK-test.img under its --fuse directory.
Boot a test VM from it; replication keeps applying underneath, and nothing
written to the test ever reaches the replica. Stop it with
vrep failover test-stop VM, which discards the test's writes.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/failover/test?vm=" + url.QueryEscape(args[0])
			if point != "" {
				if _, err := strconv.ParseUint(point, 10, 64); err != nil {
					return fmt.Errorf("%w: --point must be a point id, as vrep points shows", errUsage)
				}
				q += "&point=" + point
			}
			var t replicad.TestInfo
			gi, err := a.callVMOrGroup("POST", q, &t)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), orGroup(gi, t))
			}
			if gi != nil {
				printGroup(cmd.OutOrStdout(), "test failovers started", gi)
				return nil
			}
			printTest(cmd.OutOrStdout(), "test failover of "+t.VM+" started", t)
			return nil
		},
	}
	a.register(test.Flags())
	a.needs("replica", "a test failover runs on the replica")
	test.Flags().StringVar(&point, "point", "", "the point id to test (default the newest)")
	var sa apiFlags
	var force bool
	stop := &cobra.Command{
		Use:   "test-stop VM|GROUP [--force] [--data DIR | --api SOCKET]",
		Short: "Stop a test failover and discard what was written to it",
		Long: `Stops a test failover: its NBD exports and files go, the test's writes are
discarded and its point is no longer held. While a client still holds a
test disk (an NBD connection to VM/DISK-test, or its file open, such as a
loop device) it refuses with exit code 4 and names the holder, changing
nothing: stop the test VM first. With --force it stops anyway: the NBD
clients are disconnected and the open files answer I/O errors.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t replicad.TestInfo
			q := "/v1/failover/test-stop?vm=" + url.QueryEscape(args[0])
			if force {
				q += "&force=1"
			}
			gi, err := sa.callVMOrGroup("POST", q, &t)
			if err != nil {
				return err
			}
			if sa.json {
				return printJSON(cmd.OutOrStdout(), orGroup(gi, t))
			}
			if gi != nil {
				printGroup(cmd.OutOrStdout(), "test failovers stopped; their writes are discarded", gi)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "test failover of %s stopped; its writes are discarded and point %d is no longer held\n", t.VM, t.Point.ID)
			return nil
		},
	}
	sa.register(stop.Flags())
	sa.needs("replica", "a test failover runs on the replica")
	stop.Flags().BoolVar(&force, "force", false, "stop even while a client holds a test disk (it gets I/O errors)")
	cmd.AddCommand(test, stop, failoverStartCmd(), failoverCancelCmd(), failoverCommitCmd(), failoverPlannedCmd())
	return cmd
}

func failoverStartCmd() *cobra.Command {
	var a apiFlags
	var point string
	cmd := &cobra.Command{
		Use:   "start VM|GROUP [--point ID|latest|latest-app] [--data DIR | --api SOCKET]",
		Short: "Unplanned failover: serve a point as the VM's writable disks, on the replica",
		Long: `Run on the replica when the primary is gone. Serves every disk of VM, as it
was at the point (default latest; latest-app: the newest app-consistent
point), writable and tracked, under its own name: NBD export VM/DISK on the
replica's --nbd sockets, VM/DISK.img under its --fuse directory. Nothing is
copied first: writes go to a layer over the point. The VM's generation is
raised and its streams are refused from now on: a primary that comes back
learns it was superseded and stops taking writes.

Then either vrep failover commit VM (keep it: the VM runs here for good,
its points are dropped) or vrep failover cancel VM (discard what was
written, replicate again with every point intact, e.g. to try another
point). Exit codes: 1 unknown VM, no point, or a point that does not exist
or was pruned; 2 a bad point; 4 a test failover of the VM runs, or a
failover of it is already in progress or committed.

A consistency group's name (the primary's --group NAME=VM,...) in place of
VM fails every VM of the group over to their newest shared point (or the
one given), all or none; cancel, commit, test and test-stop take a group's
name too. A VM's name wins over a group's of the same name.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/failover/start?vm=" + url.QueryEscape(args[0])
			if point != "" {
				if _, err := strconv.ParseUint(point, 10, 64); err != nil && point != "latest" && point != "latest-app" {
					return fmt.Errorf("%w: --point must be a point id (as vrep points shows), latest or latest-app", errUsage)
				}
				q += "&point=" + url.QueryEscape(point)
			}
			var f replicad.FailoverInfo
			gi, err := a.callVMOrGroup("POST", q, &f)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), orGroup(gi, f))
			}
			if gi != nil {
				printGroup(cmd.OutOrStdout(), "every VM failed over", gi)
				f.ServingSeconds = gi.ServingSeconds
			} else {
				printFailover(cmd.OutOrStdout(), f)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "  serving after %.3f s; commit with vrep failover commit %s, or cancel with vrep failover cancel %s\n",
				f.ServingSeconds, args[0], args[0])
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "a failover runs on the replica")
	cmd.Flags().StringVar(&point, "point", "", "the point: an id, latest (default) or latest-app")
	return cmd
}

func failoverCancelCmd() *cobra.Command {
	var a apiFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "cancel VM|GROUP [--force] [--data DIR | --api SOCKET]",
		Short: "Cancel a failover: discard what was written, replicate again with every point intact",
		Long: `Stops serving the failed-over disks of VM and discards what was written to
them; the replica image and every point are exactly as before the failover,
and the VM's primary may stream again. While a client holds a disk (an NBD
connection to VM/DISK, or its file open) it refuses with exit code 4 and
names the holder: stop the VM first, or pass --force (the NBD clients are
disconnected, open files answer I/O errors). A committed failover cannot be
cancelled (exit code 4); a VM that is not failed over is exit code 1.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/failover/cancel?vm=" + url.QueryEscape(args[0])
			if force {
				q += "&force=1"
			}
			var f replicad.FailoverInfo
			gi, err := a.callVMOrGroup("POST", q, &f)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), orGroup(gi, f))
			}
			if gi != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "failover of consistency group %s cancelled: what was written is discarded; its VMs replicate again with every point intact\n", gi.Group)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "failover of %s cancelled: what was written is discarded; it replicates again with every point intact\n", f.VM)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "a failover runs on the replica")
	cmd.Flags().BoolVar(&force, "force", false, "cancel even while a client holds a disk (it gets I/O errors)")
	return cmd
}

func failoverCommitCmd() *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "commit VM|GROUP [--data DIR | --api SOCKET]",
		Short: "Commit a failover: the VM runs on the replica for good; its points are dropped",
		Long: `Keeps the failed-over VM's disks as they run: the replica image is brought
back to the point, what was written since is folded into it, and the disks
go on being served from it without dropping their clients. The VM's points
and history are dropped (as Hyper-V and Azure Site Recovery do at commit):
the image now changes under new writes, so older points could not be read
back. A kill at any step is finished at the next start. A VM that is not
failed over is exit code 1; one already committed, exit code 4.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var f replicad.FailoverInfo
			gi, err := a.callVMOrGroup("POST", "/v1/failover/commit?vm="+url.QueryEscape(args[0]), &f)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), orGroup(gi, f))
			}
			if gi != nil {
				printGroup(cmd.OutOrStdout(), "committed", gi)
				return nil
			}
			printFailover(cmd.OutOrStdout(), f)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "a failover runs on the replica")
	return cmd
}

// printFailover prints a failover's state in plain words and its disks.
func printFailover(out io.Writer, f replicad.FailoverInfo) {
	fmt.Fprintf(out, "%s: %s (generation %d)\n", f.VM, f.Summary, f.Generation)
	fmt.Fprintf(out, "  NBD exports: %s\n", strings.Join(f.Exports, ", "))
	if len(f.Files) > 0 {
		fmt.Fprintf(out, "  files:       %s\n", strings.Join(f.Files, ", "))
	}
}

func printTest(out io.Writer, title string, t replicad.TestInfo) {
	fmt.Fprintf(out, "%s at point %d (%s, %s)\n", title, t.Point.ID, t.Point.Kind, t.Point.Time.Format(time.DateTime))
	fmt.Fprintf(out, "  NBD exports: %s\n", strings.Join(t.Exports, ", "))
	if len(t.Files) > 0 {
		fmt.Fprintf(out, "  files:       %s\n", strings.Join(t.Files, ", "))
	}
}
