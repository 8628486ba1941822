package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	vdaemon "github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/events"
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
		configFile   string
		ops          opsFlags
	)
	cmd := &cobra.Command{
		Use:   "primary --state DIR --disk VM/DISK=PATH... [--nbd unix:SOCK|tcp:ADDR]... [--fuse DIR]",
		Short: "Protect disks: serve them over NBD and FUSE, every write tracked",
		Example: `  vrep primary --state /var/lib/vrep --disk vm1/disk0=/images/vm1.img \
      --nbd unix:/run/vrep.sock --fuse /mnt/vrep
  qemu-system-x86_64 -drive file=nbd+unix:///vm1/disk0?socket=/run/vrep.sock,format=raw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmdline := map[string]bool{} // what the command line set: a reload leaves it
			cmd.Flags().Visit(func(f *pflag.Flag) { cmdline[f.Name] = true })
			if configFile != "" {
				if err := applyConfig(cmd.Flags(), configFile); err != nil {
					return err
				}
			}
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
			replica, err := replicaSettings(cmd.Flags())
			if err != nil {
				return err
			}
			cfg.Replica = replica
			if cfg.Points.Groups, err = primary.ParseGroups(groups); err != nil {
				return err
			}
			if err := parseQuiescers(&cfg.Points, freeze, preFreeze, postThaw, agents); err != nil {
				return err
			}
			stopProfile, err := startCPUProfile(cpuprofile)
			if err != nil {
				return err
			}
			defer stopProfile()
			ops.tlsDir, ops.name = rc.TLSDir, rc.Name
			if _, err = ops.policy(); err != nil { // checks --http too
				return err
			}
			rec, log, err := ops.recorder(cfg.State)
			if err != nil {
				return err
			}
			defer rec.Close()
			cfg.Log, cfg.Events = log, rec
			if cfg.Jobs, err = ops.jobs(cfg.State, log); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			d, err := primary.Start(cfg)
			if err != nil {
				return err
			}
			rec.Record(events.Event{Kind: events.Started, Reason: fmt.Sprintf("primary started with %d disks", len(d.Disks))})
			stopWatch := rec.Watch(d.HealthSamples)
			closeHTTP, err := ops.serveHTTP(d.PublicHandler(), cfg.Log)
			if err != nil {
				stopWatch()
				d.Close()
				return err
			}
			apiSock := cfg.API
			if apiSock == "" {
				apiSock = filepath.Join(cfg.State, "api.sock")
			}
			systemd := vdaemon.NotifyReady(cfg.Log, vdaemon.ProbeAPI(apiSock, 30*time.Second))
			cfg.Log.Info("serving", "disks", len(d.Disks), "nbd", cfg.NBD, "fuse", cfg.FUSE)
			if configFile != "" {
				stopReload := reloadOnHUP(cfg.Log, cmd.Flags(), cmdline, configFile, reloadable{
					frequency: func(interval time.Duration) error {
						_, err := d.SetFrequency("", interval)
						return err
					},
					enable: d.EnableReplication,
				})
				defer stopReload()
			}
			werr := d.Wait(ctx)
			systemd.Stop()
			closeHTTP()
			stopWatch()
			cfg.Log.Info("stopping: draining requests, merging and syncing")
			if err := d.Close(); err != nil {
				return err
			}
			return werr
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "read settings from this YAML file, named like the flags (flags override it); SIGHUP rereads it: the copy frequency changes at once, other changes at the next start")
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
	ops.register(f, "the replica's lag")
	f.Var(&mergeAfter, "merge-after", "merge the log into the image once this much waits (e.g. 256M, 1G)")
	return cmd
}

// reloadOnHUP rereads the primary's config file at each SIGHUP until the
// returned stop is called. What a running daemon can change (the copy
// frequency) changes at once; any other setting that differs from what
// the daemon started with is named in the log as waiting for a restart.
// A setting given on the command line wins over the file, as at start.
// reloadable is what a running primary can change: the copy frequency,
// and replication itself, when the daemon started without it.
type reloadable struct {
	frequency func(time.Duration) error
	enable    func(*primary.ReplicaConfig) error
}

// replicaSettings reads where and how to replicate from f (nil: the
// daemon does not replicate): at start, and again at a reload.
func replicaSettings(f *pflag.FlagSet) (*primary.ReplicaConfig, error) {
	get := func(name string) string { return f.Lookup(name).Value.String() }
	rc := &primary.ReplicaConfig{Addr: get("replica"), TLSDir: get("tls-dir"), Name: get("name"), ReplicaName: get("replica-name")}
	if rc.Addr == "" {
		return nil, nil
	}
	if rc.TLSDir == "" || rc.Name == "" || rc.ReplicaName == "" {
		return nil, fmt.Errorf("%w: --replica needs --tls-dir, --name and --replica-name", errUsage)
	}
	if frequency := get("frequency"); frequency != "continuous" {
		iv, err := time.ParseDuration(frequency)
		if err != nil || iv <= 0 {
			return nil, fmt.Errorf("%w: --frequency %q must be continuous or a duration such as 30s, 5m or 15m", errUsage, frequency)
		}
		rc.Interval = iv
	}
	var err error
	if rc.Codec, err = wire.ParseCodec(get("compression")); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if rc.Backoff, err = f.GetDurationSlice("retry-schedule"); err != nil {
		return nil, fmt.Errorf("%w: --retry-schedule: %v", errUsage, err)
	}
	for _, d := range rc.Backoff {
		if d <= 0 {
			return nil, fmt.Errorf("%w: --retry-schedule waits must be positive, not %v", errUsage, d)
		}
	}
	if rc.ResyncWindow, err = health.ParseResyncWindow(get("resync-window")); err != nil {
		return nil, fmt.Errorf("%w: --resync-window: %v", errUsage, err)
	}
	rpo, err := f.GetStringArray("rpo-threshold")
	if err != nil {
		return nil, err
	}
	if rc.RPO, err = (&opsFlags{rpo: rpo}).policy(); err != nil {
		return nil, err
	}
	return rc, nil
}

func reloadOnHUP(log *slog.Logger, running *pflag.FlagSet, cmdline map[string]bool, file string, can reloadable) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-hup:
				reloadConfig(log, running, cmdline, file, can)
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
		wg.Wait()
	}
}

func reloadConfig(log *slog.Logger, running *pflag.FlagSet, cmdline map[string]bool, file string, can reloadable) {
	fresh := primaryCmd().Flags()
	if err := applyConfig(fresh, file); err != nil {
		log.Error("config reload refused; nothing changed", "file", file, "err", err)
		return
	}
	// The command line still wins over the file.
	running.Visit(func(f *pflag.Flag) {
		if cmdline[f.Name] {
			copyValue(fresh.Lookup(f.Name), f)
		}
	})
	changed := 0
	if running.Lookup("replica").Value.String() == "" && fresh.Lookup("replica").Value.String() != "" {
		rc, err := replicaSettings(fresh)
		if err == nil {
			err = can.enable(rc)
		}
		if err != nil {
			log.Error("config reload: replication not enabled", "err", err)
			return
		}
		// The daemon now runs with the file's replication settings.
		for _, name := range []string{"replica", "tls-dir", "name", "replica-name", "frequency", "compression", "retry-schedule", "rpo-threshold", "resync-window"} {
			copyValue(running.Lookup(name), fresh.Lookup(name))
		}
		changed++
	}
	fresh.VisitAll(func(f *pflag.Flag) {
		cur := running.Lookup(f.Name)
		if cur == nil || f.Name == "config" || cmdline[f.Name] || f.Value.String() == cur.Value.String() {
			return
		}
		changed++
		if f.Name != "frequency" {
			log.Warn("config reload: this setting changes at the next start", "setting", f.Name, "now", cur.Value.String(), "file", f.Value.String())
			return
		}
		var interval time.Duration
		if v := f.Value.String(); v != "continuous" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				log.Error("config reload: bad frequency; unchanged", "frequency", v)
				return
			}
			interval = d
		}
		if err := can.frequency(interval); err != nil {
			log.Error("config reload: the copy frequency did not change", "err", err)
			return
		}
		copyValue(cur, f)
		log.Info("config reload: copy frequency changed", "frequency", f.Value.String())
	})
	log.Info("config reloaded", "file", file, "changed", changed)
}

// copyValue sets dst's value to src's (whole lists for list flags, which
// Set would append to).
func copyValue(dst, src *pflag.Flag) {
	if d, ok := dst.Value.(pflag.SliceValue); ok {
		if s, ok := src.Value.(pflag.SliceValue); ok {
			d.Replace(s.GetSlice())
			return
		}
	}
	dst.Value.Set(src.Value.String())
}

// parseQuiescers sets a points configuration's quiescers from the
// --freeze, --pre-freeze, --post-thaw and --guest-agent flags (VM=VALUE;
// only --freeze repeats per VM).
func parseQuiescers(pc *primary.PointsConfig, freeze, preFreeze, postThaw, agents []string) error {
	var err error
	if pc.Freeze, err = primary.ParseVMValues("freeze", freeze); err != nil {
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
	if pc.PreFreeze, err = one("pre-freeze", preFreeze); err != nil {
		return err
	}
	if pc.PostThaw, err = one("post-thaw", postThaw); err != nil {
		return err
	}
	pc.GuestAgent, err = one("guest-agent", agents)
	return err
}

// startCPUProfile writes a CPU profile to path until the returned stop is
// called; with no path it does nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
