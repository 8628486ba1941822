package primary

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/daemon"
	"github.com/vrep-io/vrep/internal/jobs"
	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/statefile"
	"github.com/vrep-io/vrep/internal/vfs"
	"github.com/vrep-io/vrep/replica/seed"
)

// Offline initial replication (vrep seed export). The daemon owns the
// volumes, so it writes the media itself:
//
//	POST /v1/seed/export   body SeedRequest; answers NDJSON lines
//	                       {"done":N,"total":T} while it writes, then one
//	                       {"result":SeedResult} or {"error":"sentence"}
//
// A seed holds each disk of the VM at an LSN where the base is frozen
// (merging paused), so the base is read as it is while the VM keeps
// writing into the log. The point is taken just after the pause; when
// only markers lie between the frozen base and the point's marker, the
// base is the disk at the point, and the seed is at the point's LSN (the
// replica registers the point). Otherwise (writes came in between, three
// times) the seed is at the base's LSN, with no point: a prefix of the
// log, which is crash-consistent but not the point asked for.
//
// After an export each disk waits for its seed: a state file
// STATE/disks/VM/DISK/seed (statefile, magic "VREPSEED", body: the seed's
// LSN uint64) survives restarts; meanwhile the log is kept from LSN+1
// (tracked.KeepFrom) and no initial copy goes over the network. Once the
// replica holds the disk at the seed's LSN or later, the file goes.

// SeedRequest asks for a seed export.
type SeedRequest struct {
	VM     string   `json:"vm"`
	To     []string `json:"to"` // absolute directories, one per drive
	Parity int      `json:"parity"`
	App    bool     `json:"app"`
}

// SeedResult is a finished export.
type SeedResult struct {
	VM       string       `json:"vm"`
	SeedID   string       `json:"seed_id"`
	Primary  string       `json:"primary"`
	PointID  uint64       `json:"point_id,string,omitempty"`
	Kind     string       `json:"kind,omitempty"`
	Note     string       `json:"note,omitempty"`
	Disks    []SeededDisk `json:"disks"`
	Data     int          `json:"data_shards"`
	Parity   int          `json:"parity_shards"`
	Seconds  float64      `json:"seconds"`
	Bytes    int64        `json:"image_bytes"`
	OnMedia  int64        `json:"media_bytes"`
	MBPerSec float64      `json:"mb_per_second"`
}

// SeedProgress is one progress line.
type SeedProgress struct {
	Done   int64       `json:"done,omitempty"`
	Total  int64       `json:"total,omitempty"`
	Result *SeedResult `json:"result,omitempty"`
	Error  string      `json:"error,omitempty"`
	// Kind classifies Error for the exit code: "usage", "conflict", or
	// "" for any other failure.
	Kind string `json:"kind,omitempty"`
}

// SeededDisk is one disk of a finished export.
type SeededDisk struct {
	Name   string `json:"name"`
	LSN    uint64 `json:"lsn"`
	Size   int64  `json:"size"`
	Stored int64  `json:"stored_chunks"`
	Zero   int64  `json:"zero_chunks"`
}

// ErrSeedBusy is returned while another export runs.
var ErrSeedBusy = errors.New("a seed export is already under way on this primary")

var seedMu sync.Mutex

const seedMagic = "VREPSEED"

func (d *Daemon) seedStatePath(disk *Disk) string {
	vm, name, _ := names.Disk(disk.Name)
	return filepath.Join(d.cfg.State, "disks", vm, name, "seed")
}

// awaitSeed makes a disk wait for its seed at lsn (see above).
func (d *Daemon) awaitSeed(disk *Disk, lsn uint64) {
	disk.Volume.KeepFrom(lsn + 1)
	if sh := d.shipper(disk.Name); sh != nil {
		sh.AwaitSeed(lsn, func() {
			if err := os.Remove(d.seedStatePath(disk)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				d.log.Warn("seed: removing the seed's state file", "disk", disk.Name, "err", err)
			}
			disk.Volume.KeepFrom(0)
			d.log.Info("seed: the replica imported the seed; the disk no longer waits for it", "disk", disk.Name, "lsn", lsn)
		})
	}
}

// restoreSeeds makes the disks that wait for a seed wait again after a
// restart.
func (d *Daemon) restoreSeeds() error {
	for _, disk := range d.Disks {
		body, err := statefile.Read(vfs.OS{}, d.seedStatePath(disk), seedMagic, 8)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("disk %s: %w", disk.Name, err)
		}
		lsn := binary.LittleEndian.Uint64(body)
		d.awaitSeed(disk, lsn)
		d.log.Info("seed: the disk waits for its seed to be imported on the replica", "disk", disk.Name, "lsn", lsn)
	}
	return nil
}

// ExportSeed writes a seed of a VM's disks (see above). progress gets the
// bytes read so far and in all.
func (d *Daemon) ExportSeed(ctx context.Context, req SeedRequest, progress func(done, total int64)) (SeedResult, error) {
	disks, err := d.vmShippers(req.VM)
	if err != nil {
		return SeedResult{}, err
	}
	for _, dir := range req.To {
		if !filepath.IsAbs(dir) {
			return SeedResult{}, fmt.Errorf("%w: %s: the daemon needs absolute directories", names.ErrBadName, dir)
		}
	}
	if !seedMu.TryLock() {
		return SeedResult{}, ErrSeedBusy
	}
	defer seedMu.Unlock()
	start := time.Now()
	res := SeedResult{VM: req.VM, Primary: d.replicaConfig().Name}
	lsns, marks, pt, err := d.freezeAtPoint(ctx, disks, req)
	defer func() {
		for _, disk := range disks {
			disk.Volume.ResumeMerge()
		}
	}()
	if err != nil {
		return res, err
	}
	if pt != 0 {
		res.PointID = pt
	} else {
		res.Note = "the disks kept being written between the frozen base and the point: the seed is at the base's LSN (crash-consistent), with no point"
	}
	var srcs []seed.Source
	for i, disk := range disks {
		_, name, _ := names.Disk(disk.Name)
		s := seed.Source{Name: name, Dev: disk.Volume.Base(), Size: disk.Volume.Size(), LSN: lsns[i]}
		if marks[i] != nil {
			s.PointID, s.Marker = pt, marks[i]
			if m, err := hrl.DecodeMarker(marks[i]); err == nil {
				res.Kind = hrl.KindName(m.Kind)
			}
		}
		srcs = append(srcs, s)
	}
	m, err := seed.Export(ctx, req.To, srcs, seed.Options{VM: req.VM, Primary: res.Primary, Parity: req.Parity, Progress: progress})
	if err != nil {
		return res, err
	}
	res.SeedID, res.Data, res.Parity = m.SeedID, m.DataShards, m.ParityShards
	for i, disk := range disks {
		md := &m.Disks[i]
		body := binary.LittleEndian.AppendUint64(nil, md.LSN)
		if err := statefile.Write(vfs.OS{}, d.seedStatePath(disk), seedMagic, body); err != nil {
			return res, fmt.Errorf("disk %s: %w", disk.Name, err)
		}
		replicated := false
		if sh := d.shipper(disk.Name); sh != nil {
			replicated = sh.Status().Initial == 100
		}
		d.awaitSeed(disk, md.LSN)
		// Records up to the seed are in it: a replica that has no copy yet
		// needs none of them. One that replicates already may still need
		// some (it is behind the seed); its own acks release them.
		if !replicated {
			if err := disk.Volume.Release(md.LSN); err != nil {
				d.log.Warn("seed: releasing the log the seed holds", "disk", disk.Name, "err", err)
			}
		}
		stored := m.Stored(md)
		res.Disks = append(res.Disks, SeededDisk{Name: disk.Name, LSN: md.LSN, Size: md.Size, Stored: stored, Zero: m.Chunks(md) - stored})
		res.Bytes += md.Size
		for _, s := range md.Shards {
			res.OnMedia += s.Size
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.MBPerSec = float64(res.Bytes) / 1e6 / res.Seconds
	d.log.Info("seed exported", "vm", req.VM, "seed", m.SeedID, "dirs", len(req.To), "parity", req.Parity, "point", pt, "seconds", res.Seconds)
	return res, nil
}

// freezeAtPoint pauses merging on every disk and takes a point; it
// returns each disk's seed LSN and the point's marker payload (nil with
// pt 0 when writes came between the base and the point three times).
// Merging stays paused (once per disk) whatever it returns.
func (d *Daemon) freezeAtPoint(ctx context.Context, disks []*Disk, req SeedRequest) (lsns []uint64, marks [][]byte, pt uint64, err error) {
	lsns = make([]uint64, len(disks))
	marks = make([][]byte, len(disks))
	for attempt := 0; ; attempt++ {
		var merr error
		for i, disk := range disks {
			if attempt > 0 {
				disk.Volume.ResumeMerge()
			}
			// Merge first: the base then holds nearly everything, and the
			// log left for the replica is short.
			if err := disk.Volume.Merge(); err != nil && merr == nil {
				merr = fmt.Errorf("disk %s: %w", disk.Name, err)
			}
			lsns[i] = disk.Volume.PauseMerge()
		}
		if merr != nil {
			return nil, nil, 0, merr
		}
		p, err := d.TakePoint(ctx, req.VM, req.App)
		if err != nil {
			return nil, nil, 0, err
		}
		clean := true
		for i, disk := range disks {
			at, ok := p.LSNs[disk.Name]
			if !ok {
				return nil, nil, 0, fmt.Errorf("point %d has no marker on disk %s", p.ID, disk.Name)
			}
			var payload []byte
			only := true
			err := disk.Volume.Log().Scan(lsns[i]+1, func(r hrl.Record) error {
				if r.LSN > at {
					return errStopScan
				}
				if r.Type != hrl.TypeMarker {
					only = false
					return errStopScan
				}
				if r.LSN == at {
					payload = append([]byte(nil), r.Payload...)
				}
				return nil
			})
			if err != nil && !errors.Is(err, errStopScan) {
				return nil, nil, 0, fmt.Errorf("disk %s: %w", disk.Name, err)
			}
			if !only || payload == nil {
				clean = false
				break
			}
			marks[i] = payload
		}
		if clean {
			for i, disk := range disks {
				lsns[i] = p.LSNs[disk.Name]
			}
			return lsns, marks, p.ID, nil
		}
		if attempt == 2 {
			clear(marks)
			return lsns, marks, 0, nil
		}
	}
}

var errStopScan = errors.New("stop")

// seedHandler serves POST /v1/seed/export.
func (d *Daemon) seedHandler(w http.ResponseWriter, r *http.Request) {
	var req SeedRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		daemon.WriteErr(w, http.StatusBadRequest, fmt.Errorf("%w: a seed request must be JSON: %v", names.ErrBadName, err))
		return
	}
	if _, err := d.vmShippers(req.VM); err != nil {
		replicationErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	last := time.Time{}
	flusher, _ := w.(http.Flusher)
	send := func(p SeedProgress) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(p)
		if flusher != nil {
			flusher.Flush()
		}
	}
	job := d.cfg.Jobs.Start(jobs.SeedExport, req.VM)
	res, err := d.ExportSeed(r.Context(), req, func(done, total int64) {
		job.Progress(done, total)
		if time.Since(last) < 200*time.Millisecond && done < total {
			return
		}
		last = time.Now()
		send(SeedProgress{Done: done, Total: total})
	})
	job.End(err)
	if err != nil {
		kind := ""
		switch {
		case errors.Is(err, seed.ErrBadArgs), errors.Is(err, names.ErrBadName):
			kind = "usage"
		case errors.Is(err, ErrSeedBusy):
			kind = "conflict"
		}
		send(SeedProgress{Error: err.Error(), Kind: kind})
		return
	}
	send(SeedProgress{Result: &res})
}
