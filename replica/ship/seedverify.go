package ship

import (
	"fmt"
	"time"
)

// A seed is trusted only once checked against the primary. When a
// replica first holds the disk from an imported seed (seeded, at the
// seed's LSN or later), the stream verifies it by chunk checksums
// (Verify's exchange, sending no data) before anything else, and:
//
//   - every chunk matches: the seed is verified; the disk stops waiting
//     for it (the primary's seed state file goes, its log is released);
//   - a chunk differs: the mismatch is logged as a "seed: " event and
//     shown in the status (SeedVerify), and a resync starts at once (the
//     resync window is for repairs of copies that were once right; this
//     one never was), sending only the differing chunks.
//
// The verify compares the seed at its own LSN when the primary still
// holds its disk there (its base not merged past it: the replica has
// applied nothing yet, so its image is the seed). When the primary has
// merged past the seed since the export, it cannot rebuild the disk at
// that LSN: the records after the seed ship up to the primary's frozen
// checkpoint first, and the replica's state there is compared: a
// difference the media brought in stays visible unless a later write
// replaced the whole chunk. The status says at which LSN it compared.
//
// Until the verify is done, the primary's seed state file stays, so a
// restart verifies again.

// SeedVerifyStatus is the check of an imported seed against the primary.
type SeedVerifyStatus struct {
	// State is "pending" (the replica holds the seed, the check is due on
	// the stream), "matched" or "differed" (a resync repairs it).
	State   string `json:"state"`
	SeedLSN uint64 `json:"seed_lsn"`
	// LSN is where the disks were compared: the seed's, or later (Note).
	LSN       uint64    `json:"lsn,omitempty"`
	Chunks    uint64    `json:"chunks,omitempty"`
	Differing uint64    `json:"differing_chunks"`
	Note      string    `json:"note,omitempty"`
	Time      time.Time `json:"time,omitzero"`
}

// seedCheck is a seed to verify (guarded by Shipper.mu, but req is the
// stream goroutine's).
type seedCheck struct {
	lsn  uint64
	done func()
	req  *verifyReq
}

// startSeedCheck notes that the replica holds the seed at lsn: the
// stream verifies it (seedCheckStep); done is called once it has.
func (s *Shipper) startSeedCheck(lsn uint64, done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seedChk != nil {
		return
	}
	s.seedChk = &seedCheck{lsn: lsn, done: done}
	s.st.SeedVerify = &SeedVerifyStatus{State: "pending", SeedLSN: lsn}
}

// seedCheckStep runs on the stream's goroutine between batches: it takes
// the answer of the seed's verify, if one came, and asks for one when
// none is pending.
func (s *Shipper) seedCheckStep() {
	s.mu.Lock()
	chk := s.seedChk
	s.mu.Unlock()
	if chk == nil {
		return
	}
	if chk.req != nil {
		select {
		case a := <-chk.req.answer:
			chk.req = nil
			if a.err != nil {
				s.cfg.Log.Warn(s.disk+": the seed's verify did not complete; it runs again", "disk", s.disk, "err", a.err)
				break
			}
			s.seedVerified(chk, a.res)
			return
		default:
			return // still under way
		}
	}
	if s.pendingVerify != nil {
		return // an operator's verify first
	}
	chk.req = &verifyReq{answer: make(chan verifyAnswer, 1)}
	s.pendingVerify = chk.req
}

// seedVerified acts on the seed's verify (see above).
func (s *Shipper) seedVerified(chk *seedCheck, res VerifyResult) {
	st := &SeedVerifyStatus{SeedLSN: chk.lsn, LSN: res.LSN, Chunks: res.Chunks, Differing: uint64(len(res.Differing)), Time: time.Now()}
	if res.LSN != chk.lsn {
		st.Note = fmt.Sprintf("compared at LSN %d: the primary had merged past the seed's LSN %d since the export", res.LSN, chk.lsn)
	}
	if len(res.Differing) == 0 {
		st.State = "matched"
		s.cfg.Log.Info(fmt.Sprintf("seed: %s: the imported seed matches the primary at LSN %d (%d chunks compared by checksum)", s.disk, res.LSN, res.Chunks),
			"disk", s.disk, "seed_lsn", chk.lsn)
	} else {
		st.State = "differed"
		why := fmt.Sprintf("the seed imported at LSN %d differs from the primary in %d of %d chunks at LSN %d (the first at byte %d): resyncing them",
			chk.lsn, len(res.Differing), res.Chunks, res.LSN, res.Differing[0]*uint64(res.ChunkSize))
		s.cfg.Log.Warn("seed: "+s.disk+": "+why, "disk", s.disk, "seed_lsn", chk.lsn)
		s.mu.Lock()
		s.rs.want, s.rs.why, s.rs.now = true, why, true
		s.rs.prog = &ResyncProgress{State: "waiting", Reason: why + ": starts at the stream's next batch"}
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.seedChk = nil
	s.st.SeedVerify = st
	s.mu.Unlock()
	if chk.done != nil {
		chk.done()
	}
}
