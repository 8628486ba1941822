package main

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/units"
)

// measureCmd shows a VM's replication statistics over a window, as
// Hyper-V's Measure-VMReplication does.
func measureCmd() *cobra.Command {
	var (
		a      apiFlags
		window time.Duration
	)
	cmd := &cobra.Command{
		Use:   "measure VM [--window DUR] [--json] (--state DIR | --api SOCKET)",
		Short: "Show a VM's replication statistics over a window: cycles, sizes, latencies, errors",
		Long: `Shows, like Measure-VMReplication, a VM's replication over the last --window
(default 1h, at most 24h, since the primary started): state, mode, health,
the last replication time, the bytes pending, the average and maximum
replication size (record bytes per acknowledged batch) and latency (from
sending a batch to its ack), the successful cycles (batches) and the errors
(stream interruptions).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if window <= 0 || window > 24*time.Hour {
				return fmt.Errorf("%w: --window must be a duration up to 24h, such as 1h", errUsage)
			}
			var m primary.Measure
			if err := a.call("GET", "/v1/measure?vm="+url.QueryEscape(args[0])+"&window="+url.QueryEscape(window.String()), &m); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.json {
				return printJSON(out, m)
			}
			last := "never"
			if !m.LastReplication.IsZero() {
				last = m.LastReplication.Local().Format("2006-01-02 15:04:05")
			}
			rows := [][2]string{
				{"VM", m.VM + " (" + strings.Join(m.Disks, ", ") + ")"},
				{"State", m.State},
				{"Mode", m.Mode},
				{"Health", m.Health},
				{"Last replication", last},
				{"Pending", units.Bytes(m.PendingBytes)},
				{"Window", m.Window},
				{"Successful cycles", fmt.Sprint(m.Cycles)},
				{"Replicated", fmt.Sprintf("%s (%s on the wire)", units.Bytes(m.Bytes), units.Bytes(m.WireBytes))},
				{"Average size", units.Bytes(m.AverageSize)},
				{"Maximum size", units.Bytes(m.MaximumSize)},
				{"Average latency", seconds(m.AverageLatency)},
				{"Maximum latency", seconds(m.MaximumLatency)},
				{"Errors", fmt.Sprint(m.Errors)},
			}
			for _, r := range rows {
				fmt.Fprintf(out, "%-18s %s\n", r[0]+":", r[1])
			}
			for _, why := range m.Reason {
				fmt.Fprintf(out, "%-18s %s\n", "Reason:", why)
			}
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("primary", "replication is measured on the primary")
	cmd.Flags().DurationVar(&window, "window", time.Hour, "measure over this much recent time (at most 24h)")
	return cmd
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Microsecond).String()
}
