package replicad

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vrep-io/vrep/internal/jobs"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/units"
	"github.com/vrep-io/vrep/replica/receive"
	"github.com/vrep-io/vrep/replica/seed"
	"github.com/vrep-io/vrep/replica/store"
)

// Seed import (vrep seed import): a VM's first copy read from seed media
// into the replica's data directory. It runs in one of two modes, with
// the same code (ImportSeed):
//
//   - through the running replica daemon, which reads the media itself:
//
//     POST /v1/seed/import   body SeedImportRequest; answers NDJSON lines
//     {"progress":SeedImportStatus} and {"note":"sentence"} while it
//     works, then one {"result":SeedImportResult} or {"error":"sentence",
//     "kind":"usage"|"conflict"|"corrupt"|""}
//
//     The disks are reserved on the replication server for the whole
//     import (receive.Server.Reserve): a stream of one of them that
//     arrives meanwhile is refused with a retry and the reason, never let
//     near the staged or published image. Status and metrics show the
//     import's progress.
//   - offline, with no daemon running: the command takes the data
//     directory's lock and opens the point index itself.
//
// A rerun of an import that was killed half-way finishes it: a disk
// already imported from this very seed (its seed record names the seed's
// id and LSN) is skipped, and said so, and its point indexed if that step
// was missing; the other disks are imported.

// SeedImportRequest asks for a seed import.
type SeedImportRequest struct {
	From     []string `json:"from"` // directories of the seed (absolute for the daemon)
	VM       string   `json:"vm,omitempty"`
	Primary  string   `json:"primary,omitempty"`
	Root     string   `json:"root,omitempty"`
	NoVerify bool     `json:"no_verify,omitempty"`
}

// SeedImportResult is a finished import (vrep seed import --json).
type SeedImportResult struct {
	// Mode says how the import ran: "daemon" (through the running replica
	// daemon) or "offline" (no daemon ran; the command held the lock).
	Mode   string                 `json:"mode"`
	SeedID string                 `json:"seed_id"`
	VM     string                 `json:"vm"`
	Root   string                 `json:"root"`
	Notes  []string               `json:"notes,omitempty"`
	Disks  []ImportedDisk         `json:"disks"`
	Report map[string]seed.Report `json:"reports"`
}

// ImportedDisk is one disk of an import.
type ImportedDisk struct {
	Name     string `json:"name"` // ROOT/VM/DISK
	LSN      uint64 `json:"lsn"`
	PointID  uint64 `json:"point_id,string,omitempty"`
	Verified bool   `json:"verified"`
	// Skipped says the disk was already imported from this seed (a rerun
	// of an import that was interrupted), and why.
	Skipped  string  `json:"skipped,omitempty"`
	Seconds  float64 `json:"seconds"`
	MBPerSec float64 `json:"mb_per_second"`
}

// SeedImportStatus is an import's progress, as status and metrics show
// it.
type SeedImportStatus struct {
	SeedID string `json:"seed_id"`
	VM     string `json:"vm"`
	Root   string `json:"root"`
	// State is "running", "done" or "failed"; Phase, while running, is
	// "restoring", "verifying" or "publishing" Disk.
	State string `json:"state"`
	Phase string `json:"phase,omitempty"`
	Disk  string `json:"disk,omitempty"`
	// Percent, BytesDone and BytesTotal count the disks' bytes restored
	// (a skipped disk counts as done).
	Percent    int   `json:"percent"`
	BytesDone  int64 `json:"bytes_done"`
	BytesTotal int64 `json:"bytes_total"`
	DisksDone  int   `json:"disks_done"`
	Disks      int   `json:"disks"`
	// DrivesRebuilt counts the seed's directories (shard indexes) found
	// missing or damaged so far, whose pieces were rebuilt from parity.
	DrivesRebuilt int       `json:"drives_rebuilt"`
	Started       time.Time `json:"started"`
	Finished      time.Time `json:"finished,omitzero"`
	Error         string    `json:"error,omitempty"`
}

// SeedImportLine is one NDJSON line of POST /v1/seed/import.
type SeedImportLine struct {
	Progress *SeedImportStatus `json:"progress,omitempty"`
	Note     string            `json:"note,omitempty"`
	Result   *SeedImportResult `json:"result,omitempty"`
	Error    string            `json:"error,omitempty"`
	Kind     string            `json:"kind,omitempty"`
}

var (
	// ErrSeedMismatch is a seed of another VM or primary than asked for.
	ErrSeedMismatch = errors.New("replica: wrong seed")
	// ErrImportBusy is returned while another import runs.
	ErrImportBusy = errors.New("replica: a seed import is already under way")
	// ErrNoRoom is returned when the data directory's drive lacks room.
	ErrNoRoom = errors.New("replica: no room for the seed")
)

// SeedTarget is where ImportSeed writes: the data directory, its point
// index, and (with a daemon) how to keep streams off the disks.
type SeedTarget struct {
	Data    string
	Catalog *store.Catalog
	// Reserve, if set, keeps the streams of the disks away until release.
	Reserve func(keys []string) (release func(), err error)
	// Progress and Note, if set, are told the import's progress and what
	// it found (directories missing, shards rebuilt, disks skipped).
	Progress func(SeedImportStatus)
	Note     func(string)
	// Jobs, if set, records the import as a job (target ROOT/VM).
	Jobs *jobs.Log
}

// SeedErrorKind classifies an import error for the exit code.
func SeedErrorKind(err error) string {
	switch {
	case errors.Is(err, seed.ErrDamaged), errors.Is(err, seed.ErrManifest), errors.Is(err, seed.ErrNoSeed):
		return "corrupt"
	case errors.Is(err, seed.ErrBadArgs), errors.Is(err, ErrSeedMismatch), errors.Is(err, names.ErrBadName):
		return "usage"
	case errors.Is(err, store.ErrSeeded), errors.Is(err, receive.ErrStreaming), errors.Is(err, ErrImportBusy):
		return "conflict"
	}
	return ""
}

// ImportSeed imports the seed in req.From into t (see above).
func ImportSeed(ctx context.Context, t SeedTarget, req SeedImportRequest) (res SeedImportResult, err error) {
	note := func(s string) {
		if t.Note != nil {
			t.Note(s)
		}
	}
	if len(req.From) == 0 {
		return res, fmt.Errorf("%w: give the seed's directories", seed.ErrBadArgs)
	}
	if req.Root != "" {
		if err := names.Part(req.Root); err != nil {
			return res, err
		}
	}
	s, err := seed.Open(req.From)
	if err != nil {
		return res, err
	}
	m := s.M
	switch {
	case req.VM != "" && m.VM != req.VM:
		return res, fmt.Errorf("%w: the seed in %s is of VM %s, not %s", ErrSeedMismatch, strings.Join(req.From, ", "), m.VM, req.VM)
	case req.Primary != "" && m.Primary != req.Primary:
		return res, fmt.Errorf("%w: the seed in %s is from primary %s, not %s", ErrSeedMismatch, strings.Join(req.From, ", "), m.Primary, req.Primary)
	}
	for _, d := range m.Disks {
		if len(d.Marker) > 0 {
			if _, err := hrl.DecodeMarker(d.Marker); err != nil {
				return res, fmt.Errorf("%w: disk %s: its point does not decode: %v", seed.ErrManifest, d.Name, err)
			}
		}
	}
	root := req.Root
	if root == "" {
		root = m.Primary
	}
	var seedID [16]byte
	hex.Decode(seedID[:], []byte(m.SeedID)) // checked by DecodeManifest
	res = SeedImportResult{SeedID: m.SeedID, VM: m.VM, Root: root, Notes: s.Notes, Report: map[string]seed.Report{}}
	job := t.Jobs.Start(jobs.SeedImport, root+"/"+m.VM)
	defer func() { job.End(err) }()
	keys := make([]string, len(m.Disks))
	for i, d := range m.Disks {
		keys[i] = root + "/" + m.VM + "/" + d.Name
	}
	if t.Reserve != nil {
		release, err := t.Reserve(keys)
		if err != nil {
			return res, err
		}
		defer release()
	}
	// Disks already imported from this seed (a rerun) are skipped.
	done := make([]string, len(m.Disks))
	var need int64
	for i := range m.Disks {
		d := &m.Disks[i]
		is, ok, err := store.ImportedFrom(t.Data, keys[i])
		if err != nil {
			return res, err
		}
		if ok && is.ID == seedID && is.LSN == d.LSN {
			if is.Seeded {
				done[i] = fmt.Sprintf("already imported from this seed (at LSN %d; applied now %d)", d.LSN, is.Applied)
				continue
			}
		}
		need += m.Stored(d) * m.ChunkSize
	}
	// Room for every stored chunk, checked before anything is written.
	var fs syscall.Statfs_t
	if err := syscall.Statfs(t.Data, &fs); err == nil {
		if free := int64(fs.Bavail) * int64(fs.Bsize); free < need {
			return res, fmt.Errorf("%w: %s has %s free and the seed needs %s: make room or import onto a larger drive; nothing was written",
				ErrNoRoom, t.Data, units.Bytes(free), units.Bytes(need))
		}
	}
	for _, n := range s.Notes {
		note(n)
	}
	st := SeedImportStatus{SeedID: m.SeedID, VM: m.VM, Root: root, State: "running", Disks: len(m.Disks), Started: time.Now()}
	rebuilt := map[int]bool{}
	for i := range m.Disks {
		st.BytesTotal += m.Disks[i].Size
		for _, x := range s.Missing(m.Disks[i].Name) {
			rebuilt[x] = true
		}
	}
	st.DrivesRebuilt = len(rebuilt)
	tell := func() {
		if st.BytesTotal > 0 {
			st.Percent = int(100 * st.BytesDone / st.BytesTotal)
		}
		job.Progress(st.BytesDone, st.BytesTotal)
		if t.Progress != nil {
			t.Progress(st)
		}
	}
	tell()
	defer func() {
		st.Finished, st.Phase, st.Disk = time.Now(), "", ""
		st.State = "done"
		if err != nil {
			st.State, st.Error = "failed", err.Error()
		}
		tell()
	}()

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
		key := keys[i]
		id := ImportedDisk{Name: key, LSN: d.LSN}
		if len(d.Marker) > 0 {
			id.PointID = d.PointID
		}
		if done[i] != "" {
			id.Skipped = done[i]
			res.Disks = append(res.Disks, id)
			st.BytesDone += d.Size
			st.DisksDone++
			note(fmt.Sprintf("disk %s: %s: skipped", key, done[i]))
			tell()
			continue
		}
		imp, err := store.BeginSeed(t.Data, key, d.Size)
		if err != nil {
			return res, err
		}
		imps = append(imps, imp)
		start := time.Now()
		st.Phase, st.Disk = "restoring", key
		base := st.BytesDone
		rep, err := s.Restore(ctx, d.Name, imp, 0, func(n int64) {
			st.BytesDone = base + n
			tell()
		})
		res.Report[d.Name] = rep
		if err != nil {
			return res, fmt.Errorf("%w; nothing was imported", err)
		}
		st.BytesDone = base + d.Size
		for _, sr := range rep.Shards {
			if !sr.HashOK {
				rebuilt[sr.Index] = true
			}
		}
		st.DrivesRebuilt = len(rebuilt)
		if err := imp.Stage(seedID, d.LSN, d.Marker); err != nil {
			return res, err
		}
		secs := time.Since(start).Seconds()
		id.Seconds, id.MBPerSec = secs, float64(d.Size)/1e6/secs
		if !req.NoVerify {
			st.Phase = "verifying"
			tell()
			bad, err := m.Verify(ctx, d.Name, imp, 0)
			if err != nil {
				return res, fmt.Errorf("reading back the image of %s: %w; nothing was imported", key, err)
			}
			if len(bad) > 0 {
				return res, fmt.Errorf("%w: the image of %s written from the seed reads back wrong in %d chunks (the first at byte %d): the target drive does not keep what is written; nothing was imported",
					seed.ErrDamaged, key, len(bad), bad[0]*m.ChunkSize)
			}
			id.Verified = true
		}
		res.Disks = append(res.Disks, id)
		for _, sr := range rep.Shards {
			switch {
			case sr.Path == "":
				note(fmt.Sprintf("disk %s: shard %d missing: rebuilt from parity", d.Name, sr.Index))
			case !sr.HashOK:
				what := fmt.Sprintf("%d damaged pieces", sr.BadPieces)
				if sr.Truncated {
					what = "truncated, " + what
				}
				note(fmt.Sprintf("disk %s: shard %d (%s) %s: rebuilt from parity", d.Name, sr.Index, sr.Path, what))
			}
		}
		st.DisksDone++
		tell()
	}
	st.Phase, st.Disk = "publishing", ""
	tell()
	if err := store.PublishSeeds(t.Catalog, t.Data, imps); err != nil {
		return res, fmt.Errorf("publishing the imported disks: %w", err)
	}
	published = true
	// A skipped disk may lack its point (a rerun after a crash between
	// its publication and its index).
	for i := range m.Disks {
		if done[i] == "" {
			continue
		}
		d := &m.Disks[i]
		ok, err := store.FinishSeed(t.Catalog, keys[i], d.LSN, d.Marker)
		switch {
		case errors.Is(err, store.ErrSeedPointLost):
			note(fmt.Sprintf("disk %s: the seed's point %d was never registered and replication has moved on since: the disk is seeded, without that point", keys[i], d.PointID))
		case err != nil:
			return res, err
		case ok:
			note(fmt.Sprintf("disk %s: the seed's point %d registered (the interrupted import had not)", keys[i], d.PointID))
		}
	}
	return res, nil
}

// seedImports is the daemon's record of imports: the one running, and
// the last one finished.
type seedImports struct {
	run sync.Mutex // held by the import running
	mu  sync.Mutex
	cur *SeedImportStatus
}

// ImportSeed runs an import in the daemon (see above). progress and note
// get what the import tells.
func (d *Daemon) ImportSeed(ctx context.Context, req SeedImportRequest, progress func(SeedImportStatus), note func(string)) (res SeedImportResult, err error) {
	for _, dir := range req.From {
		if !filepath.IsAbs(dir) {
			return SeedImportResult{Mode: "daemon"}, fmt.Errorf("%w: %s: the daemon needs absolute directories", names.ErrBadName, dir)
		}
	}
	if !d.seeds.run.TryLock() {
		return SeedImportResult{Mode: "daemon"}, fmt.Errorf("%w on this replica: wait for it (vrep status shows its progress)", ErrImportBusy)
	}
	defer d.seeds.run.Unlock()
	t := SeedTarget{Data: d.cfg.Data, Catalog: d.Catalog, Jobs: d.cfg.Jobs, Note: func(s string) {
		d.log.Info("seed: " + s)
		if note != nil {
			note(s)
		}
	}}
	t.Reserve = func(keys []string) (func(), error) {
		return d.srv.Reserve(keys, "is being imported from seed media on the replica (vrep seed import): the stream retries once the import is done")
	}
	t.Progress = func(st SeedImportStatus) {
		d.seeds.mu.Lock()
		d.seeds.cur = &st
		d.seeds.mu.Unlock()
		if progress != nil {
			progress(st)
		}
	}
	res, err = ImportSeed(ctx, t, req)
	res.Mode = "daemon"
	if err != nil {
		d.log.Warn("seed: import failed", "seed", res.SeedID, "vm", res.VM, "err", err)
	} else {
		d.log.Info("seed: imported", "seed", res.SeedID, "vm", res.VM, "root", res.Root, "disks", len(res.Disks))
	}
	return res, err
}

// seedImportStatus returns the import running or the last one finished
// (nil: none since the daemon started).
func (d *Daemon) seedImportStatus() *SeedImportStatus {
	d.seeds.mu.Lock()
	defer d.seeds.mu.Unlock()
	if d.seeds.cur == nil {
		return nil
	}
	st := *d.seeds.cur
	return &st
}

// seedImportHandler serves POST /v1/seed/import.
func (d *Daemon) seedImportHandler(w http.ResponseWriter, r *http.Request) {
	var req SeedImportRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		daemon.WriteErr(w, http.StatusBadRequest, fmt.Errorf("%w: a seed import request must be JSON: %v", names.ErrBadName, err))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	flusher, _ := w.(http.Flusher)
	send := func(l SeedImportLine) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(l)
		if flusher != nil {
			flusher.Flush()
		}
	}
	last := time.Time{}
	res, err := d.ImportSeed(r.Context(), req, func(st SeedImportStatus) {
		if time.Since(last) < 200*time.Millisecond && st.State == "running" {
			return
		}
		last = time.Now()
		send(SeedImportLine{Progress: &st})
	}, func(s string) { send(SeedImportLine{Note: s}) })
	if err != nil {
		send(SeedImportLine{Error: err.Error(), Kind: SeedErrorKind(err)})
		return
	}
	send(SeedImportLine{Result: &res})
}
