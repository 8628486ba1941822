package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/health"
	"github.com/vrep-io/vrep/replica/wire"
)

func primaryCmd() *cobra.Command {
	var (
		cfg          primary.Config
		disks        []string
		mergeAfter   = units.Size(1 << 30)
		cpuprofile   string
		groups       []string
		freeze       []string
		preFreeze    []string
		postThaw     []string
		agents       []string
		rc           primary.ReplicaConfig
		codec        string
		backoff      []time.Duration
		frequency    string
		resyncWindow string
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
			if rc.Addr != "" {
				if rc.TLSDir == "" || rc.Name == "" || rc.ReplicaName == "" {
					return fmt.Errorf("%w: --replica needs --tls-dir, --name and --replica-name", errUsage)
				}
				var err error
				if frequency != "continuous" {
					if rc.Interval, err = time.ParseDuration(frequency); err != nil || rc.Interval <= 0 {
						return fmt.Errorf("%w: --frequency %q must be continuous or a duration such as 30s, 5m or 15m", errUsage, frequency)
					}
				}
				if rc.Codec, err = wire.ParseCodec(codec); err != nil {
					return fmt.Errorf("%w: %v", errUsage, err)
				}
				for _, d := range backoff {
					if d <= 0 {
						return fmt.Errorf("%w: --retry-schedule waits must be positive, not %v", errUsage, d)
					}
				}
				rc.Backoff = backoff
				if rc.ResyncWindow, err = health.ParseResyncWindow(resyncWindow); err != nil {
					return fmt.Errorf("%w: --resync-window: %v", errUsage, err)
				}
				cfg.Replica = &rc
			}
			var err error
			if cfg.Points.Groups, err = primary.ParseGroups(groups); err != nil {
				return err
			}
			if cfg.Points.Freeze, err = primary.ParseVMValues("freeze", freeze); err != nil {
				return err
			}
			one := func(flag string, specs []string) (map[string]string, error) {
				m, err := primary.ParseVMValues(flag, specs)
				out := map[string]string{}
				for vm, v := range m {
					if len(v) > 1 {
						return nil, fmt.Errorf("%w: --%s given twice for VM %s", errUsage, flag, vm)
					}
					out[vm] = v[0]
				}
				return out, err
			}
			if cfg.Points.PreFreeze, err = one("pre-freeze", preFreeze); err != nil {
				return err
			}
			if cfg.Points.PostThaw, err = one("post-thaw", postThaw); err != nil {
				return err
			}
			if cfg.Points.GuestAgent, err = one("guest-agent", agents); err != nil {
				return err
			}
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
	f.StringVar(&resyncWindow, "resync-window", "18:00-06:00", "when automatic resyncs (log overflow, corrupt log, broken chain) run: HH:MM-HH:MM local time, or always; vrep resync --now runs one at once")
	f.StringVar(&rc.Addr, "replica", "", "replicate every disk to this replica, host:port (continuous)")
	f.StringVar(&rc.TLSDir, "tls-dir", "", "directory with ca.crt and this host's NAME.crt/NAME.key")
	f.StringVar(&rc.Name, "name", "", "this primary's certificate name")
	f.StringVar(&rc.ReplicaName, "replica-name", "", "the name the replica's certificate must carry")
	f.StringVar(&codec, "compression", "zstd", "zstd, s2 or none")
	f.StringVar(&frequency, "frequency", "continuous", "copy frequency: continuous, or ship at a point every 30s, 5m or 15m (any duration)")
	f.DurationSliceVar(&backoff, "retry-schedule", nil, "retry waits after recoverable errors, e.g. 1m,2m,4m,8m,10m,30m (default Hyper-V's)")
	f.StringVar(&cfg.API, "api", "", "API socket, [unix:]PATH, for vrep status and vrep point (default STATE/api.sock)")
	f.StringArrayVar(&groups, "group", nil, "consistency group: NAME=VM[,VM...] (repeatable; a VM in no group is its own)")
	f.DurationVar(&cfg.Points.Every, "points-every", 0, "take a crash-consistent point of every group this often (default: at each --frequency tick, every 5s when continuous, by hand without --replica)")
	f.DurationVar(&cfg.Points.AppEvery, "app-every", 0, "take an app-consistent point of every group this often (0: by hand)")
	f.StringArrayVar(&freeze, "freeze", nil, "VM=MOUNTPOINT to fsfreeze for app-consistent points (repeatable; never a directory where nothing is mounted, nor the file system of --state, the images or /)")
	f.StringArrayVar(&preFreeze, "pre-freeze", nil, "VM=COMMAND run before freezing (sh -c)")
	f.StringArrayVar(&postThaw, "post-thaw", nil, "VM=COMMAND run after thawing (sh -c)")
	f.StringArrayVar(&agents, "guest-agent", nil, "VM=SOCKET of the VM's QEMU guest agent, to freeze inside the guest")
	f.DurationVar(&cfg.Points.FreezeTimeout, "freeze-timeout", 10*time.Second, "past this a freeze is thawed and the point is crash-consistent")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", 30*time.Second, "on SIGTERM, wait this long for the disks' holders (a loop device, a VM) to let go; then their I/O fails and the FUSE mount is detached lazily")
	f.StringVar(&cpuprofile, "cpuprofile", "", "write a CPU profile here until exit")
	f.MarkHidden("cpuprofile")
	f.Var(&mergeAfter, "merge-after", "merge the log into the image once this much waits (e.g. 256M, 1G)")
	return cmd
}
