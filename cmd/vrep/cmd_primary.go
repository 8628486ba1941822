package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/units"
)

func primaryCmd() *cobra.Command {
	var (
		cfg        primary.Config
		disks      []string
		mergeAfter = units.Size(1 << 30)
		cpuprofile string
	)
	cmd := &cobra.Command{
		Use:   "primary --state DIR --disk VM/DISK=PATH... [--nbd unix:SOCK|tcp:ADDR]... [--fuse DIR]",
		Short: "Protect disks: serve them over NBD and FUSE, every write tracked",
		Example: `  vrep primary --state /var/lib/vrep --disk vm1/disk0=/images/vm1.img \
      --nbd unix:/run/vrep.sock --fuse /mnt/vrep
  qemu-system-x86_64 -drive file=nbd+unix:///vm1/disk0?socket=/run/vrep.sock,format=raw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.State == "" {
				return fmt.Errorf("%w: --state is required", errUsage)
			}
			if len(cfg.NBD) == 0 && cfg.FUSE == "" {
				return fmt.Errorf("%w: give --nbd or --fuse, or nothing is served", errUsage)
			}
			for _, s := range disks {
				spec, err := primary.ParseDisk(s)
				if err != nil {
					return err
				}
				cfg.Disks = append(cfg.Disks, spec)
			}
			cfg.MergeAfter = int64(mergeAfter)
			if cpuprofile != "" {
				f, err := os.Create(cpuprofile)
				if err != nil {
					return err
				}
				defer f.Close()
				pprof.StartCPUProfile(f)
				defer pprof.StopCPUProfile()
			}
			cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			d, err := primary.Start(cfg)
			if err != nil {
				return err
			}
			cfg.Log.Info("serving", "disks", len(d.Disks), "nbd", cfg.NBD, "fuse", cfg.FUSE)
			werr := d.Wait(ctx)
			cfg.Log.Info("stopping: draining requests, merging and syncing")
			if err := d.Close(); err != nil {
				return err
			}
			return werr
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.State, "state", "", "state directory (change logs, checkpoints, lock)")
	f.StringArrayVar(&disks, "disk", nil, "protect a disk: VM/DISK=PATH to a raw image (repeatable)")
	f.StringArrayVar(&cfg.NBD, "nbd", nil, "serve NBD on unix:PATH or tcp:HOST:PORT (repeatable)")
	f.StringVar(&cfg.FUSE, "fuse", "", "mount the disks as files under this directory")
	f.StringVar(&cpuprofile, "cpuprofile", "", "write a CPU profile here until exit")
	f.MarkHidden("cpuprofile")
	f.Var(&mergeAfter, "merge-after", "merge the log into the image once this much waits (e.g. 256M, 1G)")
	return cmd
}
