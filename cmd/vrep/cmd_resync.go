package main

import (
	"context"
	"encoding/json"
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
			return waitResync(&a, out, args[0], disk, info.Disks)
		},
	}
	a.register(cmd.Flags())
	cmd.Flags().StringVar(&disk, "disk", "", "resync only this disk of the VM")
	cmd.Flags().BoolVar(&now, "now", false, "run at once, outside the resync window")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the resync completes, showing its progress")
	return cmd
}

// waitResync follows the disks' resyncs on the primary's progress
// stream until each is done: a bar on a terminal, a line at each change
// otherwise, the final state as JSON with --json.
func waitResync(a *apiFlags, out io.Writer, vm, disk string, disks []string) error {
	q := "/v1/resync/progress?vm=" + url.QueryEscape(vm)
	if disk != "" {
		q += "&disk=" + url.QueryEscape(disk)
	}
	final := map[string]*ship.ResyncProgress{}
	shown := map[string]string{}
	var bar *progressbar.ProgressBar
	if !a.json && isTerminal(out) {
		bar = progressbar.NewOptions(100*max(len(disks), 1), progressbar.OptionSetWriter(out), progressbar.OptionSetDescription("resync"),
			progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond))
	}
	err := a.stream("GET", q, func(line []byte) error {
		var ev primary.ResyncEvent
		if err := json.Unmarshal(line, &ev); err != nil || ev.Progress == nil {
			return fmt.Errorf("the daemon's answer does not decode: %v", err)
		}
		final[ev.Disk] = ev.Progress
		switch {
		case bar != nil:
			sum := 0
			for _, p := range final {
				sum += p.Percent
			}
			bar.Describe(fmt.Sprintf("resync of %s", strings.Join(disks, ", ")))
			bar.Set(sum)
		case !a.json:
			// A line when the state or the percentage moves.
			if key := fmt.Sprint(ev.Progress.State, ev.Progress.Percent); shown[ev.Disk] != key {
				shown[ev.Disk] = key
				fmt.Fprintf(out, "%s: %s\n", ev.Disk, resyncLine(ev.Progress))
			}
		}
		return nil
	})
	if bar != nil {
		if err == nil {
			bar.Finish()
		} else {
			bar.Exit()
		}
		fmt.Fprintln(out)
	}
	if err != nil {
		return err
	}
	// The stream ends on a failure only when replication stopped.
	for disk, p := range final {
		if p.State == "failed" {
			return fmt.Errorf("resync of %s failed and replication stopped: %s (vrep status says why)", disk, p.Error)
		}
	}
	switch {
	case a.json:
		return printJSON(out, final)
	case bar != nil:
		for _, name := range disks {
			if p := final[name]; p != nil {
				fmt.Fprintf(out, "%s: %s\n", name, resyncLine(p))
			}
		}
	}
	return nil
}

// stream makes one API request whose answer is NDJSON lines and calls fn
// for each, with no timeout: the daemon ends the answer.
func (a *apiFlags) stream(method, path string, fn func(line []byte) error) error {
	resp, err := a.open(context.Background(), method, path, nil, 0)
	if err != nil {
		return err
	}
	return lines(resp, fn)
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
			out := cmd.OutOrStdout()
			var res []ship.VerifyResult
			shown := map[string]int{}
			err := a.stream("POST", q, func(line []byte) error {
				var ev primary.VerifyEvent
				if err := json.Unmarshal(line, &ev); err != nil {
					return fmt.Errorf("the daemon's answer does not decode: %w", err)
				}
				switch {
				case ev.Error != "":
					return &daemonError{ev.Status, ev.Error}
				case ev.Result != nil:
					res = append(res, *ev.Result)
				case ev.Chunks > 0 && !a.json:
					// A line each tenth of the disk, on stderr.
					if pct := int(100 * ev.Compared / ev.Chunks); pct/10 > shown[ev.Disk]/10 {
						shown[ev.Disk] = pct
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: verifying, %d%% compared\n", ev.Disk, pct)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			var differ uint64
			for _, r := range res {
				differ += r.DifferingCount
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
					if r.DifferingCount == 0 {
						fmt.Fprintf(out, "%s: equal at LSN %d (%d chunks of %s)\n", r.Disk, r.LSN, r.Chunks, units.Bytes(int64(r.ChunkSize)))
						continue
					}
					fmt.Fprintf(out, "%s: %d of %d chunks differ at LSN %d:", r.Disk, r.DifferingCount, r.Chunks, r.LSN)
					for _, c := range r.Differing {
						fmt.Fprintf(out, " %d", c)
					}
					if uint64(len(r.Differing)) < r.DifferingCount {
						fmt.Fprintf(out, " (the first %d listed)", len(r.Differing))
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
