package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/host"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/ship"
)

func statusCmd() *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "status [--state DIR | --data DIR | --api SOCKET] [--json]",
		Short: "Show a primary's disks, health and logs, or a replica's disks, points and tests",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var raw json.RawMessage
			if err := a.call("GET", "/v1/status", &raw); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var role struct{ Role string }
			json.Unmarshal(raw, &role)
			if role.Role == "replica" {
				var st replicad.Status
				if err := json.Unmarshal(raw, &st); err != nil {
					return err
				}
				if a.json {
					return printJSON(out, st)
				}
				return printReplicaStatus(out, st)
			}
			if role.Role == "host" {
				var st host.Status
				if err := json.Unmarshal(raw, &st); err != nil {
					return err
				}
				if a.json {
					return printJSON(out, st)
				}
				return printHostStatus(out, st)
			}
			var st primary.Status
			if err := json.Unmarshal(raw, &st); err != nil {
				return err
			}
			if a.json {
				return printJSON(out, st)
			}
			return printPrimaryStatus(out, st)
		},
	}
	a.register(cmd.Flags())
	return cmd
}

// printHostStatus prints a host daemon's VMs and their roles, then each
// primary VM's status and the replica's.
func printHostStatus(out io.Writer, st host.Status) error {
	fmt.Fprintf(out, "host %s, peer %s\n\n", st.Host, st.Peer)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tROLE\tGENERATION\tSTATE")
	for _, v := range st.VMs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", v.VM, v.Role, v.Generation, v.Summary)
	}
	tw.Flush()
	for _, v := range st.VMs {
		if l := v.Last; l != nil {
			fmt.Fprintf(out, "%s: last planned failover to %s at %s: writes refused %.2f s, reverse replication %s, %d bytes resynced\n",
				v.VM, l.To, l.Finished.Format("2006-01-02 15:04:05"), l.WritesRefused, map[bool]string{true: "connected", false: "not connected yet"}[l.ReverseConnected], l.ResyncBytes)
		}
	}
	var vms []string
	for vm := range st.Primaries {
		vms = append(vms, vm)
	}
	sort.Strings(vms)
	for _, vm := range vms {
		var ps primary.Status
		if err := json.Unmarshal(st.Primaries[vm], &ps); err != nil {
			return fmt.Errorf("the status of VM %s: %w", vm, err)
		}
		fmt.Fprintf(out, "\n== VM %s (primary here)\n", vm)
		if err := printPrimaryStatus(out, ps); err != nil {
			return err
		}
	}
	var rs replicad.Status
	if err := json.Unmarshal(st.Replica, &rs); err != nil {
		return fmt.Errorf("the replica's status: %w", err)
	}
	fmt.Fprintf(out, "\n== replica (VMs %s runs)\n", st.Peer)
	return printReplicaStatus(out, rs)
}

// printPrimaryStatus prints a primary's disks, replication and groups.
func printPrimaryStatus(out io.Writer, st primary.Status) error {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DISK\tSIZE\tHEALTH\tLAST LSN\tSYNCED LSN\tMERGED LSN\tSEGMENTS")
	for _, d := range st.Disks {
		fmt.Fprintf(tw, "%s\t%d MiB\t%s\t%d\t%d\t%d\t%d\n", d.Name, d.Size>>20, d.Health, d.LastLSN, d.SyncedLSN, d.Checkpoint, d.Segments)
	}
	tw.Flush()
	printReplication(out, st.Disks, time.Now())
	printResync(out, st.Disks)
	fmt.Fprintln(out)
	fmt.Fprintln(tw, "GROUP\tDISKS\tHOLD p50\tHOLD p99")
	for _, g := range st.Groups {
		fmt.Fprintf(tw, "%s\t%d\t%d µs\t%d µs\n", g.Name, len(g.Disks), g.HoldP50us, g.HoldP99us)
	}
	tw.Flush()
	if p := st.LastPoint; p != nil {
		fmt.Fprintf(out, "\nlast point: %d, %s, group %s, %s", p.ID, p.Kind, p.Group, p.Time.Format("2006-01-02 15:04:05"))
		if p.Reason != "" {
			fmt.Fprintf(out, " (%s)", p.Reason)
		}
		fmt.Fprintln(out)
	}
	return nil
}

// printReplication prints each replicated disk's stream: health, whether
// the replica is connected, the copy frequency, the last and next send and
// the lag; then, for each disk that is not Normal, the reason in full.
func printReplication(out io.Writer, disks []primary.DiskStatus, now time.Time) {
	var reasons []string
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	header := false
	for _, d := range disks {
		r := d.Replication
		if r == nil {
			continue
		}
		if !header {
			fmt.Fprintln(out)
			fmt.Fprintln(tw, "REPLICATION\tHEALTH\tREPLICA\tFREQUENCY\tLAST SEND\tNEXT SEND\tACKED LSN\tLAG")
			header = true
		}
		peer := "connected since " + clock(r.Since, now)
		if !r.Connected {
			peer = "not connected since " + clock(r.Since, now)
		}
		next := "as written"
		switch {
		case r.Health == health.Critical && !r.Connected && r.NextSend.IsZero():
			next = "stopped"
		case !r.NextSend.IsZero():
			next = clock(r.NextSend, now)
		}
		last := "never"
		if !r.LastSend.IsZero() {
			last = clock(r.LastSend, now)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.Name, r.Health, peer, r.Frequency, last, next, r.Acked, lagText(*r))
		if r.Health != health.Normal {
			reasons = append(reasons, fmt.Sprintf("%s: %s: %s", d.Name, r.Health, r.Reason))
		}
	}
	tw.Flush()
	for _, why := range reasons {
		fmt.Fprintln(out, why)
	}
}

// lagText is the lag as the operator reads it: unknown until it is.
func lagText(r ship.ShipStatus) string {
	switch {
	case r.AwaitingSeed > 0 && !r.LagKnown:
		return fmt.Sprintf("waiting for its seed (LSN %d) to be imported on the replica", r.AwaitingSeed)
	case r.LagKnown:
		return fmt.Sprintf("%s / %s", units.Bytes(r.LagBytes), (time.Duration(r.LagSeconds * float64(time.Second))).Round(time.Second))
	case r.Connected && r.Initial < 100:
		return fmt.Sprintf("initial copy %d%%", r.Initial)
	}
	return fmt.Sprintf("unknown (%s of log unacknowledged)", units.Bytes(r.LagBytes))
}

// clock shows a time of today as hh:mm:ss, else with its date.
func clock(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	t = t.Local()
	if y, m, d := t.Date(); now.Local().Year() == y && now.Local().Month() == m && now.Local().Day() == d {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04:05")
}

func printReplicaStatus(out io.Writer, st replicad.Status) error {
	now := time.Now()
	var reasons []string
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DISK\tROOT\tSIZE\tHEALTH\tPRIMARY\tFREQUENCY\tINITIAL COPY\tAPPLIED LSN\tPOINTS\tLAST POINT\tHISTORY")
	for _, d := range st.Disks {
		peer := "none connected since " + clock(d.Since, now)
		if d.Connected {
			peer = d.Primary + " connected since " + clock(d.Since, now)
		}
		freq := d.Frequency
		if freq == "" {
			freq = "unknown"
		}
		if d.Health != string(health.Normal) {
			reasons = append(reasons, fmt.Sprintf("%s/%s: %s: %s", d.Root, d.Name, d.Health, d.Reason))
		}
		seed, last := "in progress", "-"
		if d.Seeded {
			seed = "complete"
		}
		if p := d.LastPoint; p != nil {
			last = fmt.Sprintf("%d (%s, %.0f s ago)", p.ID, p.Kind, d.LastPointAge)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", d.Name, d.Root, units.Bytes(d.Size), d.Health, peer, freq, seed, d.AppliedLSN, d.Points, last, units.Bytes(d.HistoryBytes))
	}
	tw.Flush()
	for _, why := range reasons {
		fmt.Fprintln(out, why)
	}
	if si := st.SeedImport; si != nil {
		fmt.Fprintln(out)
		fmt.Fprintln(out, seedImportLine(si, now))
	}
	for _, t := range st.Tests {
		fmt.Fprintln(out)
		printTest(out, "test failover of "+t.VM+" running since "+t.Started, t)
	}
	for _, f := range st.Failovers {
		fmt.Fprintln(out)
		printFailover(out, f)
	}
	return nil
}

func pointCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "point",
		Short: "Recovery points",
	}
	var a apiFlags
	var app bool
	create := &cobra.Command{
		Use:   "create VM|GROUP [--app] [--state DIR | --api SOCKET]",
		Short: "Take a recovery point of a VM's consistency group now",
		Long: `Takes a crash-consistent point of the consistency group the VM belongs to (or
of the named group). With --app the VMs are quiesced first (fsfreeze, hooks,
guest agent); if nothing is configured to quiesce, or quiescing fails or
times out, the point is crash-consistent and the reason is printed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/points?target=" + url.QueryEscape(args[0])
			if app {
				q += "&app=1"
			}
			var p primary.PointInfo
			if err := a.call("POST", q, &p); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.json {
				return printJSON(out, p)
			}
			fmt.Fprintf(out, "point %d taken: %s, group %s, %d disks, writes held %d µs\n", p.ID, p.Kind, p.Group, len(p.LSNs), p.HoldUS)
			if p.Reason != "" {
				fmt.Fprintf(out, "not app-consistent: %s\n", p.Reason)
			}
			return nil
		},
	}
	a.register(create.Flags())
	a.needs("primary", "points are taken on the primary")
	create.Flags().BoolVar(&app, "app", false, "quiesce applications first (app-consistent point)")
	cmd.AddCommand(create)
	return cmd
}

// seedImportLine tells the replica's seed import, running or finished.
func seedImportLine(si *replicad.SeedImportStatus, now time.Time) string {
	head := fmt.Sprintf("seed import %.8s of %s/%s", si.SeedID, si.Root, si.VM)
	drives := fmt.Sprintf("%d drives rebuilt from parity", si.DrivesRebuilt)
	switch si.State {
	case "running":
		what := si.Phase
		if si.Disk != "" {
			what += " " + si.Disk
		}
		return fmt.Sprintf("%s: %d%% (%s of %s, %d of %d disks), %s; %s; started %s", head, si.Percent,
			units.Bytes(si.BytesDone), units.Bytes(si.BytesTotal), si.DisksDone, si.Disks, what, drives, clock(si.Started, now))
	case "failed":
		return fmt.Sprintf("%s: failed at %s: %s", head, clock(si.Finished, now), si.Error)
	}
	return fmt.Sprintf("%s: done at %s (%s, %d disks), %s", head, clock(si.Finished, now), units.Bytes(si.BytesTotal), si.Disks, drives)
}
