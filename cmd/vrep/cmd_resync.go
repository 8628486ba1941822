package main

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/ship"
)

// resyncCmd asks a running primary to resync a VM's disks with their
// replica by chunk checksums.
func resyncCmd() *cobra.Command {
	var a apiFlags
	var disk string
	var now, wait bool
	cmd := &cobra.Command{
		Use:   "resync VM [--disk D] [--now] [--wait] [--state DIR | --api SOCKET]",
		Short: "Bring a VM's replica back in line by comparing chunk checksums, sending only what differs",
		Long: `Compares fixed-size chunks (64 KiB, xxh3-128) of each disk of the VM on the
primary and on the replica, in parallel on every core, and sends only the
chunks that differ; the writes made meanwhile follow as ordinary records.
The replica's recovery points from before stay readable during and after it.
Without --now the resync waits for the resync window of the primary
(--resync-window, 18:00-06:00 by default). Progress is in vrep status;
--wait follows it until the resync is done: a progress bar on a terminal,
a line at each change otherwise, the final state as JSON with --json.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/resync?vm=" + url.QueryEscape(args[0])
			if disk != "" {
				q += "&disk=" + url.QueryEscape(disk)
			}
			if now {
				q += "&now=1"
			}
			var info primary.ResyncInfo
			asked := time.Now()
			if err := a.call("POST", q, &info); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.json && !wait {
				return printJSON(out, info)
			}
			when := "in the resync window"
			if now {
				when = "now"
			}
			if !a.json {
				fmt.Fprintf(out, "resync of %s asked for, %s\n", strings.Join(info.Disks, ", "), when)
			}
			if !wait {
				return nil
			}
			return waitResync(&a, out, info.Disks, asked)
		},
	}
	a.register(cmd.Flags())
	cmd.Flags().StringVar(&disk, "disk", "", "resync only this disk of the VM")
	cmd.Flags().BoolVar(&now, "now", false, "run at once, outside the resync window")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the resync completes, showing its progress")
	return cmd
}

// waitResync follows the disks' resyncs in the status until each is
// done (one that finished before asked is an older resync, not this one):
// a bar on a terminal, a line at each change otherwise, the final state
// as JSON with --json.
func waitResync(a *apiFlags, out io.Writer, disks []string, asked time.Time) error {
	shown := map[string]string{}
	final := map[string]*ship.ResyncProgress{}
	var bar *progressbar.ProgressBar
	if !a.json && isTerminal(out) {
		bar = progressbar.NewOptions(100*len(disks), progressbar.OptionSetWriter(out), progressbar.OptionSetDescription("resync"),
			progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond))
	}
	for {
		var st primary.Status
		if err := a.call("GET", "/v1/status", &st); err != nil {
			return err
		}
		done, sum := 0, 0
		for _, d := range st.Disks {
			if !contains(disks, d.Name) || d.Replication == nil || d.Replication.Resync == nil {
				continue
			}
			r := d.Replication.Resync
			if r.State == "done" && r.Finished.Before(asked) {
				continue // the one before
			}
			final[d.Name] = r
			sum += r.Percent
			// A line when the state or the percentage moves.
			if key := fmt.Sprint(r.State, r.Percent); shown[d.Name] != key && bar == nil && !a.json {
				shown[d.Name] = key
				fmt.Fprintf(out, "%s: %s\n", d.Name, resyncLine(r))
			}
			switch r.State {
			case "done":
				done++
			case "failed":
				if bar != nil {
					bar.Exit()
					fmt.Fprintln(out)
				}
				return fmt.Errorf("resync of %s failed: %s", d.Name, r.Error)
			}
		}
		if bar != nil {
			bar.Describe(fmt.Sprintf("resync of %s", strings.Join(disks, ", ")))
			bar.Set(sum)
		}
		if done == len(disks) {
			switch {
			case a.json:
				return printJSON(out, final)
			case bar != nil:
				bar.Finish()
				fmt.Fprintln(out)
				for _, name := range disks {
					fmt.Fprintf(out, "%s: %s\n", name, resyncLine(final[name]))
				}
			}
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// resyncLine is a resync's progress in one line.
func resyncLine(r *ship.ResyncProgress) string {
	switch r.State {
	case "waiting":
		return "resync " + r.Reason
	case "done":
		return fmt.Sprintf("resync done at LSN %d: %s compared, %d chunks (%s) sent in %d session(s)",
			r.TargetLSN, units.Bytes(r.BytesCompared), r.Sent, units.Bytes(r.BytesSent), r.Sessions)
	case "failed":
		return fmt.Sprintf("resync at %d%% interrupted (%s); it resumes where it stopped", r.Percent, r.Error)
	}
	eta := "unknown"
	if r.ETA > 0 {
		eta = (time.Duration(r.ETA * float64(time.Second))).Round(time.Second).String()
	}
	return fmt.Sprintf("resync running %d%%: %s compared, %d chunks (%s) sent, ETA %s (%s)",
		r.Percent, units.Bytes(r.BytesCompared), r.Sent, units.Bytes(r.BytesSent), eta, r.Reason)
}

// printResync prints each disk's resync, for vrep status.
func printResync(out io.Writer, disks []primary.DiskStatus) {
	for _, d := range disks {
		if d.Replication != nil && d.Replication.Resync != nil {
			fmt.Fprintf(out, "%s: %s\n", d.Name, resyncLine(d.Replication.Resync))
		}
	}
}

// verifyCmd compares a VM's replica with the primary by checksums.
func verifyCmd() *cobra.Command {
	var a apiFlags
	var disk string
	var point uint64
	cmd := &cobra.Command{
		Use:   "verify VM [--disk D] [--point ID] [--state DIR | --api SOCKET] [--json]",
		Short: "Compare a VM's replica with the primary at the same LSN by chunk checksums, sending no data",
		Long: `Like DRBD's online verify: the replica hashes its disk at a point (by default
its latest state), the primary hashes its own disk at the same LSN (its base,
frozen at the checkpoint, with the log after it laid over), and the chunks
whose checksums differ are listed. A point older than the primary's
checkpoint cannot be reproduced there: the latest state is verified instead,
and the output says so. Exits 3 when any chunk differs (then: vrep resync VM).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/verify?vm=" + url.QueryEscape(args[0])
			if disk != "" {
				q += "&disk=" + url.QueryEscape(disk)
			}
			if point != 0 {
				q += fmt.Sprintf("&point=%d", point)
			}
			var res []ship.VerifyResult
			if err := a.call("POST", q, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			differ := 0
			for _, r := range res {
				differ += len(r.Differing)
			}
			if a.json {
				if err := printJSON(out, res); err != nil {
					return err
				}
			} else {
				for _, r := range res {
					if r.Note != "" {
						fmt.Fprintf(out, "%s: %s\n", r.Disk, r.Note)
					}
					if len(r.Differing) == 0 {
						fmt.Fprintf(out, "%s: equal at LSN %d (%d chunks of %s)\n", r.Disk, r.LSN, r.Chunks, units.Bytes(int64(r.ChunkSize)))
						continue
					}
					fmt.Fprintf(out, "%s: %d of %d chunks differ at LSN %d:", r.Disk, len(r.Differing), r.Chunks, r.LSN)
					for _, c := range r.Differing {
						fmt.Fprintf(out, " %d", c)
					}
					fmt.Fprintf(out, " (chunks of %s)\n", units.Bytes(int64(r.ChunkSize)))
				}
			}
			if differ > 0 {
				return &verifyError{fmt.Sprintf("%d chunk(s) of %s differ from the primary; run vrep resync %s --now", differ, args[0], args[0])}
			}
			return nil
		},
	}
	a.register(cmd.Flags())
	cmd.Flags().StringVar(&disk, "disk", "", "verify only this disk of the VM")
	cmd.Flags().Uint64Var(&point, "point", 0, "verify at this point (its ID, see vrep points); default the replica's latest state")
	return cmd
}

// verifyError is a verify that found differences (exit 3).
type verifyError struct{ msg string }

func (e *verifyError) Error() string { return e.msg }
