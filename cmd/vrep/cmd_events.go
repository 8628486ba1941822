package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/events"
)

// eventsCmd lists a daemon's events: health changes with their reason,
// resumes, refused connections, log overflows, failovers.
func eventsCmd() *cobra.Command {
	var (
		a     apiFlags
		since string
	)
	cmd := &cobra.Command{
		Use:   "events [--since DUR] [--json] (--state DIR | --data DIR | --api SOCKET)",
		Short: "List what happened: health changes with their reason, resumes, refused connections, overflows, failovers",
		Long: `Lists the events a daemon recorded in its events log (STATE/events.jsonl on
a primary, DATA/events.jsonl on a replica), oldest first: each health change
with its reason, resumed replication, refused connections, change-log
overflows, failovers and test failovers. --since 1h shows the last hour.
With --state or --data, the log is read from the file when the daemon is not
running.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := ""
			if since != "" {
				if _, err := events.ParseSince(since, time.Now()); err != nil {
					return fmt.Errorf("%w: --since %q must be a positive duration such as 30m or 24h", errUsage, since)
				}
				q = "?since=" + url.QueryEscape(since)
			}
			var evs []events.Event
			err := a.call("GET", "/v1/events"+q, &evs)
			var de *daemonError
			if err != nil && !errors.As(err, &de) && !errors.Is(err, errUsage) && (a.state != "" || a.data != "") && a.api == "" {
				// The daemon is down: its file still tells what happened.
				dir := a.state
				if dir == "" {
					dir = a.data
				}
				from, _ := events.ParseSince(since, time.Now())
				evs, err = events.Read(filepath.Join(dir, events.FileName), from)
			}
			if err != nil {
				return err
			}
			if evs == nil {
				evs = []events.Event{}
			}
			out := cmd.OutOrStdout()
			if a.json {
				return printJSON(out, evs)
			}
			printEvents(out, evs)
			return nil
		},
	}
	a.register(cmd.Flags())
	cmd.Flags().StringVar(&since, "since", "", "only events this recent, e.g. 1h or 30m")
	return cmd
}

func printEvents(w io.Writer, evs []events.Event) {
	if len(evs) == 0 {
		fmt.Fprintln(w, "no events recorded")
		return
	}
	for _, e := range evs {
		line := []string{e.Time.Local().Format("2006-01-02 15:04:05"), string(e.Kind)}
		if e.Disk != "" {
			line = append(line, e.Disk)
		} else if e.VM != "" {
			line = append(line, e.VM)
		}
		if e.Health != "" {
			from := e.Previous
			if from == "" {
				from = "?"
			}
			line = append(line, from+" -> "+e.Health)
		}
		s := strings.Join(line, "  ")
		if e.Reason != "" {
			s += ": " + e.Reason
		}
		fmt.Fprintln(w, s)
	}
}
