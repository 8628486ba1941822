#!/usr/bin/env bash
# bench/resync.sh — vrep's resync against rsync on the same pair, in one
# run: an image of $SIZE (default 1G) of random data is replicated
# (initial copy), then 1% of its 64 KiB chunks are overwritten at random in
# the replica's copy; vrep resyncs it (vrep resync --now --wait), rsync
# brings a copy of the damaged image back over loopback to an rsync
# daemon (--inplace --no-whole-file: its delta algorithm), and rsync
# --whole-file copies the whole image (a full copy). Reports time, bytes
# on the wire against the differing bytes, and the hashing rate per core.
# COLD=1 drops the images' pages from the page cache before each vrep and
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
echo "making $SIZE of random data" >&2
head -c "$bytes" /dev/urandom >"$work/disk.img"
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
cp --sparse=never "$rimg" "$work/rsync-dst.img"
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
# 1% of the chunks, at random, in the replica's copy; the same damage in
# the copy rsync repairs (the same chunks and bytes every run).
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
# RUNS rounds, each: damage both copies, vrep resyncs (timed from the
# command to its end), then rsync repairs its copy; the ratio is per
# round, so both meet the machine in the same state.
declare -a ratios tv trs
for r in $(seq "$RUNS"); do
	since=$(status | jq_py "r.get('since')")
	kill $rpid; wait $rpid 2>/dev/null || true
	damage "$rimg" "$work/rsync-dst.img"
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
	cold "$work/disk.img" "$work/rsync-dst.img"
	t0=$(date +%s.%N)
	rs=$(rsync --inplace --no-whole-file --stats "$work/disk.img" rsync://127.0.0.1:$rport/dst/rsync-dst.img)
	t_rsync=$(echo "$(date +%s.%N) - $t0" | bc)
	cmp -s "$work/disk.img" "$work/rsync-dst.img" || echo "rsync left a difference" >&2
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
	echo "$SIZE image of random data$([ "${COLD:-0}" = 1 ] && echo " (cold: both images dropped from the page cache before each run)"), $changed of $chunks 64 KiB chunks changed ($(numfmt --to=iec $diff) differing), loopback, $(nproc) cores"
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
