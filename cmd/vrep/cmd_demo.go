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
		Short: "Run the whole pipeline on this machine and check every step",
		Long: `Runs vrep end to end on embedded defaults, in a temporary directory: a
certificate authority and certificates, a replica, a primary protecting a VM
with two disks served over NBD, a write workload, continuous replication,
recovery points, a test failover of an older point checked block by block
against what the workload had written by then, and a clean stop. Exits 0
only if every check passed.`,
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
