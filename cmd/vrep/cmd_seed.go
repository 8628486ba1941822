package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	vdaemon "github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/replicad"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/store"
)

// seedCmd is offline initial replication: a VM's first copy on media
// (directories, one per drive) instead of over the network.
func seedCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "seed",
		Short: "Offline initial replication: export a VM's disks to media, import them on the replica",
	}
	cmd.AddCommand(seedExportCmd(), seedImportCmd())
	return cmd
}

func seedExportCmd() *cobra.Command {
	var a apiFlags
	var to []string
	var parity int
	var app bool
	cmd := &cobra.Command{
		Use:   "export VM --to DIR [--to DIR ...] [--parity M] [--app] [--state DIR | --api SOCKET]",
		Short: "Write a VM's disks as Reed-Solomon-coded seed media, one directory per drive",
		Long: `Takes a point of the VM (app-consistent with --app) and writes its disks, as
they are at that point, over the directories: each directory stands for one
drive and holds one shard; up to --parity of them may be lost or damaged and the
seed still imports. Chunks of zeros are recorded, not written. The primary then
keeps its change log from the seed on, and sends no initial copy over the
network, until the replica has imported the seed (vrep seed import) and
reconnected; vrep status shows the disk waiting for its seed. The primary
daemon writes the directories: give paths it can write.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(to) == 0 {
				return fmt.Errorf("%w: give --to DIR for each drive", errUsage)
			}
			req := primary.SeedRequest{VM: args[0], Parity: parity, App: app}
			for _, d := range to {
				abs, err := filepath.Abs(d)
				if err != nil {
					return err
				}
				req.To = append(req.To, abs)
			}
			a.needs("primary", "seeds are exported on the primary")
			res, err := a.exportSeed(cmd.Context(), req, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.json {
				return printJSON(out, res)
			}
			fmt.Fprintf(out, "seed %s of %s exported over %d directories (%d data, %d parity): %s of disks, %s on the media, %.0f MB/s\n",
				res.SeedID[:8], res.VM, res.Data+res.Parity, res.Data, res.Parity, units.Bytes(res.Bytes), units.Bytes(res.OnMedia), res.MBPerSec)
			if res.PointID != 0 {
				fmt.Fprintf(out, "point %d (%s)\n", res.PointID, res.Kind)
			}
			if res.Note != "" {
				fmt.Fprintln(out, "note:", res.Note)
			}
			for _, d := range res.Disks {
				fmt.Fprintf(out, "%s: at LSN %d, %d chunks stored, %d zero; the primary keeps its log from LSN %d until the replica imports the seed\n",
					d.Name, d.LSN, d.Stored, d.Zero, d.LSN+1)
			}
			fmt.Fprintf(out, "next: carry the directories to the replica host and run vrep seed import --from DIR ... --data DIR there\n")
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&to, "to", nil, "a directory of the seed (one per drive; repeat)")
	cmd.Flags().IntVar(&parity, "parity", 1, "how many of the directories hold parity: that many may be lost or damaged")
	cmd.Flags().BoolVar(&app, "app", false, "take an app-consistent point (quiesce the VM's applications)")
	a.register(cmd.Flags())
	return cmd
}

// seedErr is an export error told in a progress line, with its kind
// ("usage", "conflict" or "") for the exit code.
type seedErr struct{ msg, kind string }

func (e *seedErr) Error() string { return e.msg }

// exportSeed asks the primary to export and follows its progress lines.
func (a *apiFlags) exportSeed(ctx context.Context, req primary.SeedRequest, tty io.Writer) (*primary.SeedResult, error) {
	body, _ := json.Marshal(req)
	resp, err := a.open(ctx, "POST", "/v1/seed/export", bytes.NewReader(body), 0)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var bar *progressbar.ProgressBar
	isTTY := false
	if f, ok := tty.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		isTTY = true
	}
	lastPct := -1
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var p primary.SeedProgress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, fmt.Errorf("the daemon's answer does not decode: %w", err)
		}
		switch {
		case p.Error != "":
			if bar != nil {
				bar.Exit()
				fmt.Fprintln(tty)
			}
			return nil, &seedErr{p.Error, p.Kind}
		case p.Result != nil:
			if bar != nil {
				bar.Finish()
				fmt.Fprintln(tty)
			}
			return p.Result, nil
		case p.Total > 0 && isTTY:
			if bar == nil {
				bar = progressbar.NewOptions64(p.Total, progressbar.OptionSetWriter(tty), progressbar.OptionShowBytes(true),
					progressbar.OptionSetDescription("exporting"), progressbar.OptionThrottle(100*time.Millisecond))
			}
			bar.Set64(p.Done)
		case p.Total > 0 && !a.json:
			if pct := int(100 * p.Done / p.Total); pct/10 > lastPct/10 {
				lastPct = pct
				fmt.Fprintf(tty, "exporting: %d%% (%s of %s)\n", pct, units.Bytes(p.Done), units.Bytes(p.Total))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("the daemon's answer broke off: %w", err)
	}
	return nil, errors.New("the daemon ended the export without a result (did it stop?)")
}

// seedImport is one import's arguments.
type seedImport struct {
	from                     []string
	data, api, vm, pri, root string
	noVerify, json           bool
}

func seedImportCmd() *cobra.Command {
	var o seedImport
	cmd := &cobra.Command{
		Use:   "import --from DIR [--from DIR ...] (--data DIR | --api SOCKET) [--vm VM] [--primary NAME] [--root NAME]",
		Short: "Import seed media as a VM's first copy on the replica",
		Long: `Reads the seed's directories (in any order; up to its parity may be missing),
checks every piece and chunk against its hash, rebuilds what is missing or
damaged from parity, and writes each disk's replica image under
DATA/ROOT/VM/DISK (ROOT: the primary's certificate name, or --root), with
the seed's point. Then it reads the images back and compares every chunk with
the seed's hashes. Nothing is visible to the replica until a disk is
written and durable.

With the replica daemon running (its API at DATA/api.sock, or --api), the
daemon imports: the primary's streams of those disks are refused, and retry,
until the import is done, and vrep status shows its progress. With no daemon
running, the command imports by itself (it takes the data directory's lock).
It says which mode ran. When the primary connects, shipping starts after the
seed: no initial copy goes over the network; the primary then verifies the
seed by checksums and resyncs what differs.

Run again after an interruption, it finishes the job: a disk already imported
from this very seed is skipped, and said so.
--vm and --primary refuse a seed of another VM or another primary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSeedImport(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.from, "from", nil, "a directory of the seed (repeat)")
	f.StringVar(&o.data, "data", "", "the replica's data directory")
	f.StringVar(&o.api, "api", "", "the replica daemon's API socket, [unix:]PATH (default DATA/api.sock)")
	f.StringVar(&o.vm, "vm", "", "refuse a seed that is not of this VM")
	f.StringVar(&o.pri, "primary", "", "refuse a seed that is not from this primary (certificate name)")
	f.StringVar(&o.root, "root", "", "the primary's root under DATA (default: the primary's certificate name, as --allow PRIMARY)")
	f.BoolVar(&o.noVerify, "no-verify", false, "skip reading the images back after the import")
	f.BoolVar(&o.json, "json", false, "print JSON, for scripts")
	return cmd
}

// ImportResult is what vrep seed import --json prints.
type ImportResult = replicad.SeedImportResult

func runSeedImport(cmd *cobra.Command, o seedImport) (err error) {
	out, tty := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if len(o.from) == 0 || (o.data == "" && o.api == "") {
		return fmt.Errorf("%w: give --from DIR for each directory of the seed, and --data DIR (or the daemon's --api SOCKET)", errUsage)
	}
	req := replicad.SeedImportRequest{VM: o.vm, Primary: o.pri, Root: o.root, NoVerify: o.noVerify}
	for _, d := range o.from {
		abs, err := filepath.Abs(d)
		if err != nil {
			return err
		}
		req.From = append(req.From, abs)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	prog := importProgress(tty, o.json)
	note := func(s string) { fmt.Fprintln(tty, "seed:", s) }
	sock := strings.TrimPrefix(o.api, "unix:")
	if sock == "" {
		sock = filepath.Join(o.data, "api.sock")
	}
	var res replicad.SeedImportResult
	if c, derr := net.Dial("unix", sock); derr == nil || o.api != "" {
		if c != nil {
			c.Close()
		}
		res, err = importThroughDaemon(ctx, sock, req, prog, note)
	} else {
		res, err = importOffline(ctx, o.data, req, prog, note)
	}
	prog(nil)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(out, res)
	}
	switch res.Mode {
	case "daemon":
		fmt.Fprintf(out, "imported through the running replica daemon (%s)\n", sock)
	default:
		fmt.Fprintf(out, "imported offline (no replica daemon runs on %s)\n", o.data)
	}
	for _, d := range res.Disks {
		if d.Skipped != "" {
			fmt.Fprintf(out, "%s: skipped: %s\n", d.Name, d.Skipped)
			continue
		}
		pt := "no point (the seed is at a log position, not a point)"
		if d.PointID != 0 {
			pt = fmt.Sprintf("point %d", d.PointID)
		}
		check := "verified by reading back every chunk against the seed's hashes"
		if !d.Verified {
			check = "not read back (--no-verify)"
		}
		fmt.Fprintf(out, "%s: imported at LSN %d, %s, %.0f MB/s; %s; the primary ships from LSN %d\n", d.Name, d.LSN, pt, d.MBPerSec, check, d.LSN+1)
	}
	return nil
}

// importOffline imports with no daemon running: it holds the data
// directory's lock for the whole import.
func importOffline(ctx context.Context, data string, req replicad.SeedImportRequest, prog func(*replicad.SeedImportStatus), note func(string)) (res replicad.SeedImportResult, err error) {
	res = replicad.SeedImportResult{Mode: "offline"}
	if data == "" {
		return res, fmt.Errorf("%w: give --data DIR", errUsage)
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		return res, err
	}
	lf, err := os.OpenFile(filepath.Join(data, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return res, err
	}
	defer lf.Close()
	if err := vdaemon.Lock(lf, "replica data directory "+data); err != nil {
		return res, fmt.Errorf("%w: a replica daemon holds it but its API is not at %s: give its socket with --api", err, filepath.Join(data, "api.sock"))
	}
	// The import is one of the replica's jobs (the daemon is stopped: the
	// lock is ours, and so is its jobs file).
	jl, _ := jobs.Open(filepath.Join(data, jobs.FileName), nil)
	cat, err := store.OpenCatalog(store.CatalogConfig{Data: data})
	if err != nil {
		return res, err
	}
	defer cat.Close()
	res, err = replicad.ImportSeed(ctx, replicad.SeedTarget{Data: data, Catalog: cat, Note: note, Jobs: jl,
		Progress: func(st replicad.SeedImportStatus) { prog(&st) }}, req)
	res.Mode = "offline"
	return res, err
}

// importThroughDaemon asks the running replica daemon to import and
// follows its progress lines.
func importThroughDaemon(ctx context.Context, sock string, req replicad.SeedImportRequest, prog func(*replicad.SeedImportStatus), note func(string)) (replicad.SeedImportResult, error) {
	res := replicad.SeedImportResult{Mode: "daemon"}
	a := &apiFlags{api: sock}
	a.needs("replica", "seeds are imported on the replica")
	body, _ := json.Marshal(req)
	resp, err := a.open(ctx, "POST", "/v1/seed/import", bytes.NewReader(body), 0)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var l replicad.SeedImportLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return res, fmt.Errorf("the daemon's answer does not decode: %w", err)
		}
		switch {
		case l.Error != "":
			return res, &seedErr{l.Error, l.Kind}
		case l.Result != nil:
			return *l.Result, nil
		case l.Note != "":
			note(l.Note)
		case l.Progress != nil:
			prog(l.Progress)
		}
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("the daemon's answer broke off: %w", err)
	}
	return res, errors.New("the daemon ended the import without a result (did it stop?)")
}

// importProgress returns a progress function for an import: a bar on a
// terminal, a line every 10% otherwise (none with quiet); nil ends it.
func importProgress(tty io.Writer, quiet bool) func(*replicad.SeedImportStatus) {
	f, ok := tty.(*os.File)
	if ok && term.IsTerminal(int(f.Fd())) {
		var bar *progressbar.ProgressBar
		return func(st *replicad.SeedImportStatus) {
			if st == nil {
				if bar != nil {
					bar.Finish()
					fmt.Fprintln(tty)
				}
				return
			}
			if bar == nil && st.BytesTotal > 0 {
				bar = progressbar.NewOptions64(st.BytesTotal, progressbar.OptionSetWriter(tty), progressbar.OptionShowBytes(true),
					progressbar.OptionSetDescription("importing"), progressbar.OptionThrottle(100*time.Millisecond))
			}
			if bar != nil {
				bar.Set64(st.BytesDone)
			}
		}
	}
	last := -1
	return func(st *replicad.SeedImportStatus) {
		if st == nil || quiet || st.State != "running" || st.BytesTotal == 0 {
			return
		}
		if pct := st.Percent; pct/10 > last/10 {
			last = pct
			fmt.Fprintf(tty, "importing %s: %d%% (%s of %s), %d drives rebuilt\n", st.Disk, pct, units.Bytes(st.BytesDone), units.Bytes(st.BytesTotal), st.DrivesRebuilt)
		}
	}
}
