package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/jobs"
)

// jobsCmd lists a daemon's running and recent jobs.
func jobsCmd() *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "jobs [--json] (--state DIR | --data DIR | --api SOCKET)",
		Short: "List running and recent jobs: initial copies, resyncs, seeds, failovers, test failovers",
		Long: `Lists a daemon's jobs, oldest first: initial replication and resyncs (on the
primary), seed export (primary) and import (replica), failover, its commit and
cancel, and test failover start and stop (replica). Each with when it started
and ended, its progress, and its result: ok, or the error's sentence. A job
the daemon stopped in reads as interrupted. The daemon keeps the last 200
jobs, for at most 7 days, in STATE/jobs.state or DATA/jobs.state; with
--state or --data they are read from that file when the daemon is not
running.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list []jobs.Job
			err := a.call("GET", "/v1/jobs", &list)
			var de *daemonError
			if err != nil && !errors.As(err, &de) && !errors.Is(err, errUsage) && (a.state != "" || a.data != "") && a.api == "" {
				// The daemon is down: its file still tells.
				dir := a.state
				if dir == "" {
					dir = a.data
				}
				list, err = jobs.Read(filepath.Join(dir, jobs.FileName))
				if errors.Is(err, fs.ErrNotExist) {
					list, err = nil, nil
				}
			}
			if err != nil {
				return err
			}
			if list == nil {
				list = []jobs.Job{}
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), list)
			}
			printJobs(cmd.OutOrStdout(), list)
			return nil
		},
	}
	a.register(cmd.Flags())
	return cmd
}

func printJobs(w io.Writer, list []jobs.Job) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no jobs recorded")
		return
	}
	for _, j := range list {
		line := []string{fmt.Sprintf("%4d", j.ID), j.Started.Local().Format("2006-01-02 15:04:05"), string(j.Kind), j.Target, j.State}
		switch {
		case j.State == jobs.Running:
			line = append(line, fmt.Sprintf("%.1f%%, for %s", j.Percent, time.Since(j.Started).Round(time.Second)))
		case !j.Ended.IsZero():
			line = append(line, "took "+j.Ended.Sub(j.Started).Round(time.Millisecond).String())
		}
		s := strings.Join(line, "  ")
		if j.Result != "" && j.Result != jobs.OK {
			s += ": " + j.Result
		}
		fmt.Fprintln(w, s)
	}
}
