package main

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/primary"
)

// replicationCmd controls a running primary's replication: retry now,
// and change the copy frequency, without a restart. (The primary has no
// configuration file to reload: its settings are flags, and these verbs
// change them on the running daemon.)
func replicationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replication",
		Short: "Control a running primary's replication: resume now, change the copy frequency",
	}
	var a apiFlags
	resume := &cobra.Command{
		Use:   "resume VM [--state DIR | --api SOCKET]",
		Short: "Retry replication of a VM's disks now, and restart disks stopped in Critical",
		Long: `Ends the wait between retries of every disk of the VM, so a replica that is
back is reconnected at once instead of at the next retry, and restarts a disk
that a non-recoverable error (authentication, a broken chain) stopped in
Critical, once its cause is fixed. Each disk's resumption is logged with how
long replication was interrupted and how far behind the replica is.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info primary.ResumeInfo
			if err := a.call("POST", "/v1/replication/resume?vm="+url.QueryEscape(args[0]), &info); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.json {
				return printJSON(out, info)
			}
			for _, disk := range slices.Sorted(maps.Keys(info.Disks)) {
				switch info.Disks[disk] {
				case "connected":
					fmt.Fprintf(out, "%s: already connected\n", disk)
				case "stopped":
					fmt.Fprintf(out, "%s: was stopped (Critical); retrying now\n", disk)
				default:
					fmt.Fprintf(out, "%s: retrying now\n", disk)
				}
			}
			return nil
		},
	}
	a.register(resume.Flags())

	var s apiFlags
	var frequency string
	var all bool
	set := &cobra.Command{
		Use:   "set VM|--all --frequency continuous|30s|5m|15m [--state DIR | --api SOCKET]",
		Short: "Change the copy frequency of a running primary",
		Long: `Changes how often the primary ships: continuous (every durable write), or at
a crash-consistent point every interval. The point schedule follows (unless
the primary was started with --points-every), every stream ships by the new
frequency from its next batch, and the replica is told, so it judges the age
of its newest point by it. The frequency is the primary's: naming a VM when
the primary protects others too is refused; give --all.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if frequency == "" {
				return fmt.Errorf("%w: give --frequency continuous or a duration such as 30s, 5m or 15m", errUsage)
			}
			if all == (len(args) == 1) {
				return fmt.Errorf("%w: give a VM or --all", errUsage)
			}
			if _, err := primary.ParseFrequency(frequency); err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			q := "/v1/replication?frequency=" + url.QueryEscape(frequency)
			if len(args) == 1 {
				q += "&vm=" + url.QueryEscape(args[0])
			}
			var st primary.ReplicationSettings
			if err := s.call("POST", q, &st); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if s.json {
				return printJSON(out, st)
			}
			fmt.Fprintf(out, "copy frequency of %s: %s (points every %gs)\n", strings.Join(st.VMs, ", "), st.Frequency, st.PointsEvery)
			return nil
		},
	}
	s.register(set.Flags())
	set.Flags().StringVar(&frequency, "frequency", "", "continuous, or a duration such as 30s, 5m or 15m")
	set.Flags().BoolVar(&all, "all", false, "change the frequency for every VM of the primary")
	cmd.AddCommand(resume, set, replicationReverseCmd(), dropSplitBrainCmd())
	return cmd
}
