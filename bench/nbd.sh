#!/usr/bin/env bash
# bench/nbd.sh [RUNS] [SECONDS] — vrep's tracked NBD export against nbdkit's
# file plugin and qemu-nbd, serving the same raw file, one after another in
# one run, driven by fio's nbd engine over a unix socket. Prints a table of
# medians with the ratios vrep/nbdkit and vrep/qemu-nbd and saves it under
# bench/results/. Peers are rotated between runs and the page cache is
# written back (sync) between servers, so no server inherits another's
# dirty pages. BARE=1 adds vrep's NBD server with no change tracking
# (bench/nbdbare), to tell the server loop's cost from the tracking's.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup "$@"
sock=$work/nbd.sock

pid=""
stop() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	pid=""
	rm -f "$sock"
}
trap stop EXIT

start() { # start SERVER; sets uri
	stop
	case $1 in
	nbdkit)
		nbdkit -f -U "$sock" file "$img" &
		pid=$!
		uri="nbd+unix:///?socket=$sock" ;;
	qemu-nbd)
		qemu-nbd -t -f raw -x disk -k "$sock" --aio=threads "$img" &
		pid=$!
		uri="nbd+unix:///disk?socket=$sock" ;;
	bare)
		"$work/nbdbare" "$img" "$sock" &
		pid=$!
		uri="nbd+unix:///vm1/disk0?socket=$sock" ;;
	vrep)
		rm -rf "$work/state"
		"$vrep" primary --state "$work/state" --disk vm1/disk0="$img" --nbd "unix:$sock" 2>"$work/vrep.log" &
		pid=$!
		uri="nbd+unix:///vm1/disk0?socket=$sock" ;;
	esac
	for _ in $(seq 200); do nbdinfo --size "$uri" >/dev/null 2>&1 && return; sleep 0.05; done
	echo "$1 did not start" >&2
	exit 1
}


measure() { # measure WORKLOAD -> prints "iops MB/s"
	local args
	case $1 in
	randwrite) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
	randread) args=(--rw=randread --bs=4k --iodepth=32) ;;
	seqwrite) args=(--rw=write --bs=1M --iodepth=8) ;;
	esac
	fio --name=b --ioengine=nbd --uri="$uri" --size="$SIZE" --runtime="$SECS" --time_based \
		--output-format=json "${args[@]}" 2>/dev/null | fio_pick "$1"
}

declare -A res
servers=(nbdkit qemu-nbd vrep)
if [ "${BARE:-0}" = 1 ]; then
	go build -o "$work/nbdbare" ./bench/nbdbare
	servers+=(bare)
fi
for run in $(seq "$RUNS"); do
	# Rotate the order so no peer always runs first.
	k=$((run % ${#servers[@]}))
	order=("${servers[@]:$k}" "${servers[@]:0:$k}")
	for s in "${order[@]}"; do
		start "$s"
		for w in randwrite randread seqwrite; do
			res[$s,$w]+="$(measure "$w") "
		done
		stop
		sync
	done
done


out=bench/results/nbd-$(date -u +%Y%m%d-%H%M).md
{
	echo "# NBD: vrep (tracking on) vs nbdkit file plugin vs qemu-nbd"
	echo
	echo "fio nbd engine, unix socket, $SIZE fully allocated raw file, $RUNS runs x ${SECS}s, medians; $(nproc) cores; $(date -u +%F)."
	echo
	echo "| workload | nbdkit | qemu-nbd | vrep | vrep/nbdkit | vrep/qemu-nbd |"
	echo "|---|---|---|---|---|---|"
	for w in randwrite randread seqwrite; do
		f=1; unit=IOPS; label="4k $w QD32"
		if [ "$w" = seqwrite ]; then f=2; unit=MB/s; label="1M write QD8"; fi
		k=$(pick nbdkit $w $f); q=$(pick qemu-nbd $w $f); v=$(pick vrep $w $f)
		printf '| %s | %.0f %s | %.0f | %.0f | %.2f | %.2f |\n' "$label" "$k" "$unit" "$q" "$v" \
			"$(echo "$v / $k" | bc -l)" "$(echo "$v / $q" | bc -l)"
	done
	if [ "${BARE:-0}" = 1 ]; then
		echo
		echo "vrep's NBD server without change tracking (bench/nbdbare), same run:"
		echo
		echo "| workload | bare | bare/nbdkit | vrep/bare |"
		echo "|---|---|---|---|"
		for w in randwrite randread seqwrite; do
			f=1; label="4k $w QD32"
			if [ "$w" = seqwrite ]; then f=2; label="1M write QD8"; fi
			k=$(pick nbdkit $w $f); b=$(pick bare $w $f); v=$(pick vrep $w $f)
			printf '| %s | %.0f | %.2f | %.2f |\n' "$label" "$b" "$(echo "$b / $k" | bc -l)" "$(echo "$v / $b" | bc -l)"
		done
	fi
} | tee "$out"
echo "saved $out"
