#!/usr/bin/env bash
# bench/resync.sh — vrep's resync against rsync on the same pair, in one
# run: an image of $SIZE (default 1G) of random data is replicated
# (initial copy); then, in each round, 1% of its 64 KiB chunks are
# overwritten at random in the replica's copy and vrep resyncs it (vrep
# resync --now --wait); the same chunks are overwritten again in the same
# file, with the replica stopped, and rsync repairs it from the primary's
# image over loopback through an rsync daemon (--inplace --no-whole-file:
# its delta algorithm). Both tools repair the same file from the same
# source, so the page cache holds the same two files for both (at 8 GiB,
# a third copy for rsync would not fit beside them on a 24 GiB host and
# would make both read from the disk in turn). rsync --whole-file copies
# the whole image once (a full copy). Reports time, bytes on the wire
# against the differing bytes, and the hashing rate per core.
# COLD=1 drops both images' pages from the page cache before each vrep and
# each rsync run (written back first), so both read from the disk.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G}
RUNS=${1:-${RUNS:-5}}
command -v rsync >/dev/null || { echo "installing rsync" >&2; apt-get install -y -qq rsync >/dev/null; }
vrep=${VREP:-bin/vrep}
[ -n "${VREP:-}" ] || go build -o "$vrep" ./cmd/vrep
work=$(realpath -m "${WORK:-bench/work}")/resync
rm -rf "$work"; mkdir -p "$work" bench/results
bytes=$(numfmt --from=iec "$SIZE")
chunks=$((bytes / 65536))
changed=$((chunks / 100))
# The image is written in WRITE_BS writes (default 1M, as cp or qemu-img
# write one). The page cache keeps what it was written in: an image written
# 4 KiB at a time (WRITE_BS=4k, as `head -c` does) sits in 4 KiB folios and
# costs every reader of it about twice as much CPU per byte.
wbs=$(numfmt --from=iec "$(echo "${WRITE_BS:-1M}" | tr a-z A-Z)")
((bytes % wbs == 0)) || { echo "SIZE ($SIZE) is not a multiple of WRITE_BS (${WRITE_BS:-1M})" >&2; exit 2; }
echo "making $SIZE of random data in ${WRITE_BS:-1M} writes" >&2
dd if=/dev/urandom of="$work/disk.img" bs="$wbs" count=$((bytes / wbs)) iflag=fullblock status=none
"$vrep" cert init --dir "$work/pki" >/dev/null
"$vrep" cert issue --dir "$work/pki" --name replica1 >/dev/null
"$vrep" cert issue --dir "$work/pki" --name primary1 >/dev/null
port=$((11000 + RANDOM % 1000))
start_replica() {
	"$vrep" replica --data "$work/replica" --listen 127.0.0.1:$port --tls-dir "$work/pki" --name replica1 --allow primary1 2>>"$work/replica.log" &
	rpid=$!
	for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
}
status() { "$vrep" status --state "$work/state" --json; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin)['disks'][0]; r=d.get('replication') or {}; print(eval(sys.argv[1]))" "$1"; }
start_replica
"$vrep" primary --state "$work/state" --disk vm1/disk0="$work/disk.img" --nbd unix:"$work/nbd.sock" \
	--replica 127.0.0.1:$port --retry-schedule 100ms --tls-dir "$work/pki" --name primary1 --replica-name replica1 \
	--resync-window 03:00-03:01 2>>"$work/primary.log" &
ppid=$!
trap 'kill $ppid $rpid 2>/dev/null || true' EXIT
t0=$(date +%s.%N)
until [ "$(status 2>/dev/null | jq_py "r.get('initial_percent')==100 and r.get('health')=='Normal'" 2>/dev/null)" = True ]; do sleep 0.2; done
t_initial=$(echo "$(date +%s.%N) - $t0" | bc)
rimg=$work/replica/primary1/vm1/disk0/image
# rsync daemon on loopback.
rport=$((port + 1))
cat >"$work/rsyncd.conf" <<CONF
use chroot = no
uid = $(id -u)
gid = $(id -g)
[dst]
path = $work
read only = no
CONF
rsync --daemon --no-detach --config="$work/rsyncd.conf" --port=$rport --address=127.0.0.1 &
dpid=$!
trap 'kill $ppid $rpid $dpid 2>/dev/null || true' EXIT
# 1% of the chunks, at random, in the replica's copy (the same chunks and
# bytes every time).
damage() {
	python3 - "$@" "$chunks" "$changed" <<'PY'
import os, random, sys
paths, chunks, n = sys.argv[1:-2], int(sys.argv[-2]), int(sys.argv[-1])
rnd = random.Random(1)
picks = rnd.sample(range(chunks), n)
for p in paths:
    with open(p, "r+b") as f:
        for c in picks:
            f.seek(c * 65536)
            f.write(random.Random(c).randbytes(65536))
PY
}
# cold FILES: with COLD=1, the files' pages leave the page cache (after
# a sync, so none is dirty); no-op otherwise.
cold() {
	[ "${COLD:-0}" = 1 ] || return 0
	sync
	python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
# RUNS rounds, each: damage the copy, vrep resyncs (timed from the command
# to its end), damage it again, rsync repairs it; the ratio is per round,
# so both meet the machine in the same state.
declare -a ratios tv trs
for r in $(seq "$RUNS"); do
	since=$(status | jq_py "r.get('since')")
	kill $rpid 2>/dev/null || true; wait $rpid 2>/dev/null || true
	damage "$rimg"
	sync
	start_replica
	# The stream notices the new replica when it next sends: a point.
	"$vrep" point create vm1 --state "$work/state" >/dev/null
	# The resync is timed from a connected stream (as an operator's is),
	# not from the reconnection to the restarted replica.
	until [ "$(status 2>/dev/null | jq_py "r.get('connected') is True and r.get('since') != '$since'" 2>/dev/null)" = True ]; do sleep 0.05; done
	cold "$work/disk.img" "$rimg"
	t0=$(date +%s.%N)
	"$vrep" resync vm1 --now --wait --state "$work/state" >/dev/null
	t_vrep=$(echo "$(date +%s.%N) - $t0" | bc)
	read -r v_sent v_wire v_hash v_chunks <<<"$(status | jq_py "'%d %d %d %d' % (r['resync']['bytes_sent'], r['resync']['wire_bytes'], r['resync']['hash_bytes'], r['resync']['chunks_sent'])")"
	cmp -s "$work/disk.img" "$rimg" && same=yes || same="no (the primary wrote meanwhile?)"
	# The same damage, in the same file, for rsync (the replica stopped, so
	# nothing else touches its image).
	kill $rpid 2>/dev/null || true; wait $rpid 2>/dev/null || true
	damage "$rimg"
	sync
	cold "$work/disk.img" "$rimg"
	t0=$(date +%s.%N)
	rs=$(rsync --inplace --no-whole-file --stats "$work/disk.img" rsync://127.0.0.1:$rport/dst/${rimg#"$work"/})
	t_rsync=$(echo "$(date +%s.%N) - $t0" | bc)
	cmp -s "$work/disk.img" "$rimg" || echo "rsync left a difference" >&2
	tv+=("$t_vrep"); trs+=("$t_rsync"); ratios+=("$(echo "$t_vrep / $t_rsync" | bc -l)")
	printf 'run %d: vrep %.2f s, rsync %.2f s, %.2f\n' "$r" "$t_vrep" "$t_rsync" "${ratios[-1]}" >&2
done
kill $ppid; wait $ppid 2>/dev/null || true
mmm() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.2f / %.2f / %.2f", a[1], (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'; }
rs_sent=$(echo "$rs" | awk -F': ' '/Total bytes sent/ {gsub(",","",$2); printf "%.0f\n", $2}')
rs_recv=$(echo "$rs" | awk -F': ' '/Total bytes received/ {gsub(",","",$2); printf "%.0f\n", $2}')
t0=$(date +%s.%N)
full=$(rsync --whole-file --stats "$work/disk.img" rsync://127.0.0.1:$rport/dst/full.img)
t_full=$(echo "$(date +%s.%N) - $t0" | bc)
full_sent=$(echo "$full" | awk -F': ' '/Total bytes sent/ {gsub(",","",$2); printf "%.0f\n", $2}')
kill $rpid $dpid 2>/dev/null || true
hash=$(go test -run - -bench 'ChunkHash/xxh3-128/64K' -cpu 1 -benchtime 0.5s ./replica/wire | awk '/MB\/s/ {print $(NF-1)}')
diff=$((changed * 65536))
out=bench/results/resync-$(date +%Y%m%d-%H%M).md
{
	echo "$SIZE image of random data written in ${WRITE_BS:-1M} writes$([ "${COLD:-0}" = 1 ] && echo " (cold: both images dropped from the page cache before each run)"), $changed of $chunks 64 KiB chunks changed ($(numfmt --to=iec $diff) differing), loopback, $(nproc) cores"
	echo
	echo "$RUNS runs (time: min / median / max; time / rsync: of each run's pair)"
	echo
	echo "| method | time | bytes on the wire | wire / differing bytes | time / rsync |"
	echo "|---|---|---|---|---|"
	printf '| vrep resync | %s s | %s (chunks %s, hashes %s) | %.3f | **%s** |\n' "$(mmm "${tv[@]}")" "$(numfmt --to=iec $((v_wire + v_hash)))" "$(numfmt --to=iec $v_wire)" "$(numfmt --to=iec $v_hash)" "$(echo "($v_wire + $v_hash) / $diff" | bc -l)" "$(mmm "${ratios[@]}")"
	printf '| rsync --inplace --no-whole-file | %s s | %s (sent %s, received %s) | %.3f | 1.00 |\n' "$(mmm "${trs[@]}")" "$(numfmt --to=iec $((rs_sent + rs_recv)))" "$(numfmt --to=iec $rs_sent)" "$(numfmt --to=iec $rs_recv)" "$(echo "($rs_sent + $rs_recv) / $diff" | bc -l)"
	printf '| full copy (rsync --whole-file) | %.2f s | %s | %.1f | %.2f |\n' "$t_full" "$(numfmt --to=iec $full_sent)" "$(echo "$full_sent / $diff" | bc -l)" "$(echo "$t_full / $(mmm "${trs[@]}" | cut -d' ' -f3)" | bc -l)"
	printf '| (vrep initial copy) | %.2f s | | | |\n' "$t_initial"
	echo
	echo "vrep resync: $v_chunks chunks sent, replica equal to the primary: $same; xxh3-128 on 64 KiB chunks: $hash MB/s on one core"
} | tee "$out"
