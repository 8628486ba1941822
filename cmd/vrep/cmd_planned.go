package main

import (
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/host"
	"github.com/vrep-io/vrep/internal/units"
)

func failoverPlannedCmd() *cobra.Command {
	var a apiFlags
	var abort bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "planned VM [--timeout 10m] [--abort] [--data DIR | --api SOCKET]",
		Short: "Planned failover: move a running VM to the other host, nothing lost; replication reverses",
		Long: `Run on the host daemon (vrep host) where VM runs. Its disks stop taking
writes (NBD clients are disconnected; FUSE files turn read-only), a final
point is taken (an app-consistent one first when the VM has quiescers),
every record is shipped, and once the other host holds them all durable it
is asked to take the VM over: it serves the disks under their own names
(VM/DISK over NBD, VM/DISK.img under FUSE), tracked, taking points, and
replicates them back here. This host's image, identical, becomes the
replica copy: 0 bytes to resync. Run it again where the VM then runs to
fail back.

Should the other host not confirm (a network fault), the VM stays
read-only here, never writable on both hosts: run the command again to ask
once more, or --abort to give the disks back to their clients here, only
when the other host surely did not take the VM over.

Exit codes: 1 the VM is unknown, or the other host did not confirm;
2 bad usage; 4 the VM runs on the other host, a role change of it is under
way, the replica is not caught up or refused (nothing changed).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/failover/planned?vm=" + url.QueryEscape(args[0]) + "&timeout=" + timeout.String()
			if abort {
				q += "&abort=1"
			}
			a.timeout = timeout + 30*time.Second
			var raw map[string]any
			if abort {
				if err := a.call("POST", q, &raw); err != nil {
					return err
				}
				if a.json {
					return printJSON(cmd.OutOrStdout(), raw)
				}
				fmt.Fprintln(cmd.OutOrStdout(), raw["message"])
				return nil
			}
			var p host.Planned
			if err := a.call("POST", q, &p); err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "VM %s runs on %s now (generation %d); final point %d (%s)\n", p.VM, p.To, p.Generation, p.Point, p.Kind)
			fmt.Fprintf(out, "  writes were refused for %.3f s\n", p.WritesRefused)
			for _, d := range p.Disks {
				fmt.Fprintf(out, "  %s: every record through LSN %d is on %s; this host's image %s is its replica copy from LSN %d\n", d.Disk, d.Final, p.To, d.Image, d.Base)
			}
			if p.ReverseConnected {
				fmt.Fprintf(out, "  reverse replication from %s connected: %d bytes to resync\n", p.To, p.ResyncBytes)
			} else {
				fmt.Fprintf(out, "  reverse replication from %s has not connected yet (vrep status shows it)\n", p.To)
			}
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("host", "a planned failover runs on the host daemon (vrep host) where the VM runs")
	cmd.Flags().BoolVar(&abort, "abort", false, "give the VM back to its clients here after a handover the other host never confirmed")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the replica to hold every record")
	return cmd
}

func replicationReverseCmd() *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "reverse VM [--data DIR | --api SOCKET]",
		Short: "After an unplanned failover, replicate the VM back to its old primary, which keeps its own writes",
		Long: `Run on the host daemon (vrep host) where VM runs after an unplanned failover
(vrep failover start, then commit), once the old primary's host is back.
The old primary closes its copy (superseded, read-only since it came back),
makes its images the VM's replica and keeps them, as they were, as a
split-brain point (group split-brain-VM in vrep points VM there; retention
keeps it): its writes after the failover point are not thrown away. This
host then serves the VM as a primary replicating to it, and a resync sends
only the chunks that differ (vrep status shows its progress). The VM's NBD
clients here are disconnected once while its disks move from the failover
to the primary role: reconnect them.

Exit codes: 1 the old primary did not answer (nothing changed); 2 bad usage;
4 the VM has not failed over here and been committed, or the old primary
refused (it runs the VM at the same or a newer generation).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r host.Reversed
			if err := a.call("POST", "/v1/replication/reverse?vm="+url.QueryEscape(args[0]), &r); err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "VM %s runs here (generation %d) and replicates to %s\n", r.VM, r.Generation, r.To)
			for _, d := range r.Report {
				if d.Method == "logs" {
					fmt.Fprintf(cmd.OutOrStdout(), "  %s: %s diverged (known from the logs), %s sent (%s on the wire) of a %s disk\n", d.Disk,
						units.Bytes(d.DivergedBytes), units.Bytes(d.SentBytes), units.Bytes(d.WireBytes), units.Bytes(d.Size))
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "  %s: a log could not tell what diverged: a checksum resync sends what differs (vrep status shows it)\n", d.Disk)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "  %s keeps what it wrote after the failover point as the point of group %s (vrep points %s there)\n", r.To, r.SplitBrainPoint, r.VM)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("host", "reverse replication runs on the host daemon (vrep host) where the VM runs")
	return cmd
}

func dropSplitBrainCmd() *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "drop-split-brain VM [--data DIR | --api SOCKET]",
		Short: "Drop a VM's split-brain points (what the old primary wrote after a failover point), once looked at",
		Long: `Run where the VM's replica is kept (the old primary after vrep replication
reverse). Retention never drops a split-brain point by itself; this does,
and the history only it kept is pruned at the next retention pass.
Exit codes: 1 no such VM, or it has no split-brain point; 2 bad usage.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r map[string]int
			if err := a.call("POST", "/v1/points/split-brain/drop?vm="+url.QueryEscape(args[0]), &r); err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dropped %d split-brain point(s) of %s\n", r["dropped"], args[0])
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "split-brain points are kept with the replica")
	return cmd
}
