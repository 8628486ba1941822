#!/usr/bin/env bash
# bench/fuse.sh [RUNS] [SECONDS] — fio on vrep's FUSE file (tracking on)
# against the same fio on the raw image file it serves, on the same file
# system: libaio, O_DIRECT.
#
# Every workload runs on a fresh vrep (start it, run the one workload,
# stop it, sync), on each image condition: sparse (a new sparse file for
# every run of a workload) and alloc (a fully allocated file whose pages
# are dropped from the page cache first). RUNS runs (default 3), the
# order rotated each run. Prints, per workload and condition, the median
# of each figure and min / median / max of the ratio vrep/raw (taken
# within one run), and saves the table under bench/results/. Needs root.
#
# Workloads (WORKLOADS, a subset of these, in this order):
#   seq1m     1M sequential write QD8, MB/s
#   burst     BURST (default 512M, half of vrep's default merge bound)
#             of 1M sequential writes QD8: a burst the log takes whole
#             and merges later; MB/s
#   rw4k      4k random write QD32, IOPS
#   rw4k-f32  the same with an fsync every 32 writes (--fsync=32)
#
# Settings: SIZE (default 4G), SECS (default 8), RUNS (default 3),
# WORKLOADS, CONDS (sparse alloc); WORK (bench/work), VREP (bin/vrep).
# BARE=1 adds the same FUSE file system with no change tracking
# (bench/fusebare), to tell the cost of FUSE from the cost of tracking.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup "$@"
WORKLOADS=${WORKLOADS:-seq1m burst rw4k rw4k-f32}
burst_bytes=$(numfmt --from=iec "${BURST:-512M}")
mnt=$work/mnt

kinds=(raw vrep)
if [ "${BARE:-0}" = 1 ]; then
	go build -o "$work/fusebare" ./bench/fusebare
	kinds+=(bare)
fi

pid=""
stop() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	pid=""
}
trap stop EXIT

start() { # start KIND: serve $img; sets file, the file fio writes
	file=$img
	case $1 in
	bare)
		"$work/fusebare" "$img" "$mnt" 2>"$work/fusebare.log" &
		pid=$! ;;
	vrep)
		rm -rf "$work/state"
		"$vrep" primary --state "$work/state" --disk vm1/disk0="$img" --fuse "$mnt" 2>"$work/vrep.log" &
		pid=$! ;;
	esac
	if [ "$1" != raw ]; then
		file=$mnt/vm1/disk0.img
		wait_file "$file"
	fi
}

measure() { # measure WORKLOAD KIND: run it on $file, record its figure
	local args f=$fiodir/$run-$cond-$1-$2.json v
	case $1 in
	seq1m) args=(--runtime="$SECS" --time_based --rw=write --bs=1M --iodepth=8) ;;
	burst) args=(--io_size="$burst_bytes" --rw=write --bs=1M --iodepth=8) ;;
	rw4k) args=(--runtime="$SECS" --time_based --rw=randwrite --bs=4k --iodepth=32) ;;
	rw4k-f32) args=(--runtime="$SECS" --time_based --rw=randwrite --bs=4k --iodepth=32 --fsync=32) ;;
	*) echo "unknown workload $1" >&2; exit 2 ;;
	esac
	fio --name=b --filename="$file" --ioengine=libaio --direct=1 --size="$SIZE" \
		--output-format=json "${args[@]}" >"$f" 2>"$f.err" ||
		{ echo "fio failed ($f.err): $(tail -3 "$f.err")" >&2; exit 1; }
	case $1 in
	seq1m | burst) v=$(fio_get "$f" w_mbs) ;;
	*) v=$(fio_get "$f" w_iops) ;;
	esac
	record "$run" "$cond" "$1" "$2" "$v"
}

row_label() {
	case $1 in
	seq1m) echo "1M write QD8, MB/s" ;;
	burst) echo "$(numfmt --to=iec "$burst_bytes") 1M write QD8 burst (within the merge bound), MB/s" ;;
	rw4k) echo "4k random write QD32, IOPS" ;;
	rw4k-f32) echo "4k random write QD32 --fsync=32, IOPS" ;;
	esac
}

t0=$SECONDS
for run in $(seq "$RUNS"); do
	for cond in $CONDS; do
		for w in $WORKLOADS; do
			# Rotate the order so no kind always runs first.
			k=$((run % ${#kinds[@]}))
			for s in "${kinds[@]:$k}" "${kinds[@]:0:$k}"; do
				image "$cond"
				start "$s"
				measure "$w" "$s"
				stop
				sync
				echo "run $run $cond $w $s: ${res[$run|$cond|$w|$s]} ($((SECONDS - t0)) s)" >&2
			done
		done
	done
done

ROWS=$WORKLOADS
out=bench/results/fuse-$(date -u +%Y%m%d-%H%M).md
{
	echo "# FUSE: vrep's tracked disk file vs the raw image file"
	echo
	echo "fio libaio O_DIRECT, $SIZE raw image on the same file system; sparse: a new sparse file per"
	echo "server; alloc: fully allocated, its pages dropped from the page cache first. A fresh vrep per"
	echo "workload and image, runs: $RUNS, order rotated, ${SECS}s per workload."
	echo "Figures: medians over the runs; ratios: min / median / max over the runs of the ratio within"
	echo "one run. $(nproc) cores; vrep $(git describe --always --dirty); $(date -u +%F); $((SECONDS - t0)) s."
	echo
	table vrep "${kinds[@]}"
	if [ "${BARE:-0}" = 1 ]; then
		echo
		echo "The same FUSE file system without change tracking (bench/fusebare), same runs:"
		echo
		table bare raw bare
	fi
} | tee "$out"
echo "saved $out"
