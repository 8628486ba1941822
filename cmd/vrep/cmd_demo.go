package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/demo"
)

func demoCmd() *cobra.Command {
	var o demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole pipeline and the failover cycle on this machine and check every step",
		Long: `Runs vrep end to end on embedded defaults, in a temporary directory, in two
parts. Protection: a certificate authority and certificates, a replica, a
primary protecting a VM with two disks served over NBD, a write workload,
continuous replication, recovery points, a test failover of an older point
checked block by block against what the workload had written by then, and a
clean stop. Recovery: two host daemons (vrep host) standing for two hosts,
with mutual TLS; a planned failover and a failback (0 bytes resynced), the
primary host lost, an unplanned failover to an older point, cancel, failover
again to the latest point, commit, the old primary back (superseded,
read-only), reverse replication (only the chunks that differ; the old
primary's own writes kept as a split-brain point and read back), and a last
failback. The VM's disks are checked against what was written at every
step. Exits 0 only if every check passed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			o.Out = cmd.OutOrStdout()
			o.Log = os.Stderr
			return demo.Run(ctx, o)
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", "", "work here and keep it (default a temporary directory, removed after)")
	return cmd
}
