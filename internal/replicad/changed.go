package replicad

import (
	"strconv"
	"sync"

	"github.com/vrep-io/vrep/nbd"
	"github.com/vrep-io/vrep/replica/store"
)

// ChangedContext prefixes the NBD metadata contexts of a test failover
// export that report the blocks changed since an earlier point:
// "vrep:changed:ID" for point ID. A changed block has status flag 1, as
// qemu's "qemu:dirty-bitmap:" contexts mark a dirty one, so tools that
// take the context name (nbdinfo --map=NAME, qemu's x-dirty-bitmap=NAME,
// libnbd's block_status) read it as they read a dirty bitmap.
//
// An incremental copy from a copy OLD.img of point P1 to point P2
// (cmd/vrep TestIncrementalCopyBetweenPoints runs exactly this):
//
//	vrep failover test VM --point P2 --data DIR
//	nbdinfo --map=vrep:changed:P1 "nbd+unix:///VM/DISK-test?socket=SOCK" |
//	while read off len st _; do
//	  [ "$st" = 1 ] || continue
//	  qemu-img convert -n \
//	    --image-opts "driver=raw,offset=$off,size=$len,file.driver=nbd,file.server.type=unix,file.server.path=SOCK,file.export=VM/DISK-test" \
//	    --target-image-opts "driver=raw,offset=$off,size=$len,file.driver=file,file.filename=OLD.img"
//	done
//	vrep failover test-stop VM --data DIR
//
// OLD.img then holds P2 byte for byte. nbdcopy reads base:allocation
// only, never a dirty bitmap, so it serves full copies.
const ChangedContext = "vrep:changed:"

// export is the NBD export of a test disk: its overlay, with a
// vrep:changed:ID context for every point of the disk older than the
// test's. The block "differs" where the undo index holds an entry between
// the two points or the test has written it: what an incremental copy
// from a copy of point ID must take. No data is read to answer.
func (d *Daemon) export(key string, td testDisk) nbd.Export {
	var mu sync.Mutex
	built := map[uint64]*store.Changes{} // by the earlier point's LSN
	changes := func(lsn uint64) (*store.Changes, error) {
		mu.Lock()
		defer mu.Unlock()
		if ch := built[lsn]; ch != nil {
			return ch, nil
		}
		ch, err := td.view.ChangedSince(lsn)
		if err != nil {
			return nil, err
		}
		built[lsn] = ch
		return ch, nil
	}
	contexts := func() []nbd.Context {
		h, err := d.Catalog.History(key)
		if err != nil {
			d.log.Warn("replica: listing points for changed-block contexts", "disk", key, "err", err)
			return nil
		}
		var out []nbd.Context
		for _, p := range h.Points {
			if p.LSN >= td.view.LSN() {
				continue
			}
			lsn := p.LSN
			out = append(out, nbd.Context{Name: ChangedContext + strconv.FormatUint(p.ID, 10), Status: func(off, n int64) ([]nbd.Status, error) {
				ch, err := changes(lsn)
				if err != nil {
					return nil, err
				}
				runs, err := td.ov.ChangedRuns(ch, off, n)
				if err != nil {
					return nil, err
				}
				st := make([]nbd.Status, len(runs))
				for i, r := range runs {
					st[i].Length = r.Length
					if r.Changed {
						st[i].Flags = 1
					}
				}
				return st, nil
			}})
		}
		return out
	}
	return nbd.Export{Name: td.export, Device: td.ov, Contexts: contexts}
}
