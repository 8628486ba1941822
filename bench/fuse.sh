#!/usr/bin/env bash
# bench/fuse.sh [RUNS] [SECONDS] — fio on vrep's FUSE file (tracking on)
# against the same fio on the raw image file it serves, on the same file
# system, one after the other in one run: 4k random write and read (QD32,
# libaio, O_DIRECT) and 1M sequential write (QD8). Prints a table of
# medians with the ratio and saves it under bench/results/. Needs root.
# BARE=1 adds the same FUSE file system with no change tracking
# (bench/fusebare), to tell the cost of FUSE from the cost of tracking.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup "$@"
mnt=$work/mnt

pid=""
stop() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	pid=""
}
trap stop EXIT


measure() { # measure FILE WORKLOAD
	local args
	case $2 in
	randwrite) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
	randread) args=(--rw=randread --bs=4k --iodepth=32) ;;
	seqwrite) args=(--rw=write --bs=1M --iodepth=8) ;;
	esac
	fio --name=b --filename="$1" --ioengine=libaio --direct=1 --size="$SIZE" --runtime="$SECS" \
		--time_based --output-format=json "${args[@]}" 2>/dev/null | fio_pick "$2"
}

declare -A res
kinds=(raw fuse)
if [ "${BARE:-0}" = 1 ]; then
	go build -o "$work/fusebare" ./bench/fusebare
	kinds+=(bare)
fi
for run in $(seq "$RUNS"); do
	k=$((run % ${#kinds[@]}))
	order=("${kinds[@]:$k}" "${kinds[@]:0:$k}")
	for s in "${order[@]}"; do
		file=$img
		if [ "$s" = bare ]; then
			"$work/fusebare" "$img" "$mnt" 2>"$work/fusebare.log" &
			pid=$!
			for _ in $(seq 200); do [ -f "$mnt/vm1/disk0.img" ] && break; sleep 0.05; done
			file=$mnt/vm1/disk0.img
		elif [ "$s" = fuse ]; then
			rm -rf "$work/state"
			"$vrep" primary --state "$work/state" --disk vm1/disk0="$img" --fuse "$mnt" 2>"$work/vrep.log" &
			pid=$!
			for _ in $(seq 200); do [ -f "$mnt/vm1/disk0.img" ] && break; sleep 0.05; done
			file=$mnt/vm1/disk0.img
		fi
		for w in randwrite randread seqwrite; do
			res[$s,$w]+="$(measure "$file" "$w") "
		done
		stop
		sync
	done
done


out=bench/results/fuse-$(date -u +%Y%m%d-%H%M).md
{
	echo "# FUSE: vrep's tracked disk file vs the raw image file"
	echo
	echo "fio libaio O_DIRECT, $SIZE image on the same file system, $RUNS runs x ${SECS}s, medians; $(nproc) cores; $(date -u +%F)."
	echo
	echo "| workload | raw file | vrep FUSE file | ratio |"
	echo "|---|---|---|---|"
	for w in randwrite randread seqwrite; do
		f=1; unit=IOPS; label="4k $w QD32"
		if [ "$w" = seqwrite ]; then f=2; unit=MB/s; label="1M write QD8"; fi
		r=$(pick raw $w $f); v=$(pick fuse $w $f)
		printf '| %s | %.0f %s | %.0f | %.2f |\n' "$label" "$r" "$unit" "$v" "$(echo "$v / $r" | bc -l)"
	done
	if [ "${BARE:-0}" = 1 ]; then
		echo
		echo "The same FUSE file system without change tracking (bench/fusebare), same run:"
		echo
		echo "| workload | bare FUSE | bare/raw | vrep/bare |"
		echo "|---|---|---|---|"
		for w in randwrite randread seqwrite; do
			f=1; label="4k $w QD32"
			if [ "$w" = seqwrite ]; then f=2; label="1M write QD8"; fi
			r=$(pick raw $w $f); b=$(pick bare $w $f); v=$(pick fuse $w $f)
			printf '| %s | %.0f | %.2f | %.2f |\n' "$label" "$b" "$(echo "$b / $r" | bc -l)" "$(echo "$v / $b" | bc -l)"
		done
	fi
} | tee "$out"
echo "saved $out"
