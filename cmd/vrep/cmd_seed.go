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
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vrep-io/vrep/hrl"
	vdaemon "github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/primary"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/seed"
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
	sock, err := a.socket()
	if err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	body, _ := json.Marshal(req)
	hreq, _ := http.NewRequestWithContext(ctx, "POST", "http://vrep/v1/seed/export", bytes.NewReader(body))
	resp, err := client.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s (is the daemon running?): %w", sock, err)
	}
	defer resp.Body.Close()
	if got := resp.Header.Get(roleHeader); got != "" && got != "primary" {
		return nil, fmt.Errorf("%w: seeds are exported on the primary, and the daemon at %s is a %s", errUsage, sock, got)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, &daemonError{resp.StatusCode, e.Error}
		}
		return nil, &daemonError{resp.StatusCode, "the daemon answered " + resp.Status}
	}
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
	from                []string
	data, vm, pri, root string
	noVerify, json      bool
}

func seedImportCmd() *cobra.Command {
	var o seedImport
	cmd := &cobra.Command{
		Use:   "import --from DIR [--from DIR ...] --data DIR [--vm VM] [--primary NAME] [--root NAME]",
		Short: "Import seed media as a VM's first copy on the replica (the replica daemon stopped)",
		Long: `Reads the seed's directories (in any order; up to its parity may be missing),
checks every piece and chunk against its hash, rebuilds what is missing or
damaged from parity, and writes each disk's replica image under
DATA/ROOT/VM/DISK (ROOT: the primary's certificate name, or --root), with
the seed's point. Then it reads the images back and compares every chunk with
the seed's hashes. Nothing is visible to the replica until every disk is
written and durable. Run it with the replica daemon stopped (it takes the data
directory's lock); when the daemon starts and the primary connects, shipping
starts after the seed: no initial copy goes over the network.
--vm and --primary refuse a seed of another VM or another primary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSeedImport(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.from, "from", nil, "a directory of the seed (repeat)")
	f.StringVar(&o.data, "data", "", "the replica's data directory")
	f.StringVar(&o.vm, "vm", "", "refuse a seed that is not of this VM")
	f.StringVar(&o.pri, "primary", "", "refuse a seed that is not from this primary (certificate name)")
	f.StringVar(&o.root, "root", "", "the primary's root under DATA (default: the primary's certificate name, as --allow PRIMARY)")
	f.BoolVar(&o.noVerify, "no-verify", false, "skip reading the images back after the import")
	f.BoolVar(&o.json, "json", false, "print JSON, for scripts")
	return cmd
}

// ImportResult is what vrep seed import --json prints.
type ImportResult struct {
	SeedID string                 `json:"seed_id"`
	VM     string                 `json:"vm"`
	Root   string                 `json:"root"`
	Notes  []string               `json:"notes,omitempty"`
	Disks  []ImportedDisk         `json:"disks"`
	Report map[string]seed.Report `json:"reports"`
}

// ImportedDisk is one disk of an import.
type ImportedDisk struct {
	Name     string  `json:"name"` // ROOT/VM/DISK
	LSN      uint64  `json:"lsn"`
	PointID  uint64  `json:"point_id,string,omitempty"`
	Verified bool    `json:"verified"`
	Seconds  float64 `json:"seconds"`
	MBPerSec float64 `json:"mb_per_second"`
}

func runSeedImport(cmd *cobra.Command, o seedImport) (err error) {
	out, tty := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if len(o.from) == 0 || o.data == "" {
		return fmt.Errorf("%w: give --from DIR for each directory of the seed, and --data DIR", errUsage)
	}
	if o.root != "" {
		if err := names.Part(o.root); err != nil {
			return err
		}
	}
	s, err := seed.Open(o.from)
	if err != nil {
		return err
	}
	m := s.M
	switch {
	case o.vm != "" && m.VM != o.vm:
		return fmt.Errorf("%w: the seed in %s is of VM %s, not %s", errSeedMismatch, strings.Join(o.from, ", "), m.VM, o.vm)
	case o.pri != "" && m.Primary != o.pri:
		return fmt.Errorf("%w: the seed in %s is from primary %s, not %s", errSeedMismatch, strings.Join(o.from, ", "), m.Primary, o.pri)
	}
	for _, d := range m.Disks {
		if len(d.Marker) > 0 {
			if _, err := hrl.DecodeMarker(d.Marker); err != nil {
				return fmt.Errorf("%w: disk %s: its point does not decode: %v", seed.ErrManifest, d.Name, err)
			}
		}
	}
	root := o.root
	if root == "" {
		root = m.Primary
	}
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return err
	}
	lf, err := os.OpenFile(filepath.Join(o.data, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := vdaemon.Lock(lf, "replica data directory "+o.data); err != nil {
		return fmt.Errorf("%w: stop the replica daemon, import the seed, then start it again", err)
	}
	// The import is one of the replica's jobs (the daemon is stopped: the
	// lock is ours, and so is its jobs file).
	var total, before int64
	for _, d := range m.Disks {
		total += d.Size
	}
	jl, _ := jobs.Open(filepath.Join(o.data, jobs.FileName), nil)
	job := jl.Start(jobs.SeedImport, root+"/"+m.VM)
	defer func() { job.End(err) }()
	// Room for every stored chunk, checked before anything is written.
	var need int64
	for i := range m.Disks {
		need += m.Stored(&m.Disks[i]) * m.ChunkSize
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(o.data, &fs); err == nil {
		if free := int64(fs.Bavail) * int64(fs.Bsize); free < need {
			return fmt.Errorf("%s has %s free and the seed needs %s: make room or import onto a larger drive; nothing was written",
				o.data, units.Bytes(free), units.Bytes(need))
		}
	}
	for _, n := range s.Notes {
		fmt.Fprintln(tty, "seed:", n)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res := ImportResult{SeedID: m.SeedID, VM: m.VM, Root: root, Notes: s.Notes, Report: map[string]seed.Report{}}
	var imps []*store.SeedImport
	published := false
	defer func() {
		if !published {
			for _, imp := range imps {
				imp.Abort()
			}
		}
	}()
	for i := range m.Disks {
		d := &m.Disks[i]
		key := root + "/" + m.VM + "/" + d.Name
		imp, err := store.BeginSeed(o.data, key, d.Size)
		if err != nil {
			return err
		}
		imps = append(imps, imp)
		start := time.Now()
		bar := importProgress(tty, key, d.Size, o.json)
		prog := func(n int64) {
			if n >= 0 {
				job.Progress(before+n, total)
			}
			bar(n)
		}
		rep, err := s.Restore(ctx, d.Name, imp, 0, prog)
		prog(-1)
		before += d.Size
		res.Report[d.Name] = rep
		if err != nil {
			return fmt.Errorf("%w; nothing was imported", err)
		}
		if err := imp.Stage(d.LSN, d.Marker); err != nil {
			return err
		}
		secs := time.Since(start).Seconds()
		id := ImportedDisk{Name: key, LSN: d.LSN, Seconds: secs, MBPerSec: float64(d.Size) / 1e6 / secs}
		if len(d.Marker) > 0 {
			id.PointID = d.PointID
		}
		if !o.noVerify {
			bad, err := m.Verify(ctx, d.Name, imp, 0)
			if err != nil {
				return fmt.Errorf("reading back the image of %s: %w; nothing was imported", key, err)
			}
			if len(bad) > 0 {
				return fmt.Errorf("%w: the image of %s written from the seed reads back wrong in %d chunks (the first at byte %d): the target drive does not keep what is written; nothing was imported",
					seed.ErrDamaged, key, len(bad), bad[0]*m.ChunkSize)
			}
			id.Verified = true
		}
		res.Disks = append(res.Disks, id)
		for _, sr := range rep.Shards {
			switch {
			case sr.Path == "":
				fmt.Fprintf(tty, "seed: disk %s: shard %d missing: rebuilt from parity\n", d.Name, sr.Index)
			case !sr.HashOK:
				what := fmt.Sprintf("%d damaged pieces", sr.BadPieces)
				if sr.Truncated {
					what = "truncated, " + what
				}
				fmt.Fprintf(tty, "seed: disk %s: shard %d (%s) %s: rebuilt from parity\n", d.Name, sr.Index, sr.Path, what)
			}
		}
	}
	cat, err := store.OpenCatalog(store.CatalogConfig{Data: o.data})
	if err != nil {
		return err
	}
	defer cat.Close()
	if err := store.PublishSeeds(cat, o.data, imps); err != nil {
		return fmt.Errorf("publishing the imported disks: %w", err)
	}
	published = true
	if o.json {
		return printJSON(out, res)
	}
	for _, d := range res.Disks {
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

// errSeedMismatch is a seed of another VM or primary than asked for.
var errSeedMismatch = errors.New("wrong seed")

// importProgress returns a progress function for one disk: a bar on a
// terminal, a line every 10% otherwise; -1 ends it.
func importProgress(tty io.Writer, name string, size int64, quiet bool) func(int64) {
	f, ok := tty.(*os.File)
	if ok && term.IsTerminal(int(f.Fd())) {
		bar := progressbar.NewOptions64(size, progressbar.OptionSetWriter(tty), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("importing "+name), progressbar.OptionThrottle(100*time.Millisecond))
		return func(n int64) {
			if n < 0 {
				bar.Finish()
				fmt.Fprintln(tty)
				return
			}
			bar.Set64(n)
		}
	}
	last := -1
	return func(n int64) {
		if n < 0 || quiet {
			return
		}
		if pct := int(100 * n / size); pct/10 > last/10 {
			last = pct
			fmt.Fprintf(tty, "importing %s: %d%%\n", name, pct)
		}
	}
}
