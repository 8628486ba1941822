#!/usr/bin/env bash
# bench/nbd.sh [RUNS] [SECONDS] — vrep primary's NBD export (tracking on)
# against nbdkit's file plugin and qemu-nbd serving the same raw image,
# driven by fio's nbd engine over a unix socket.
#
# Every workload runs on a fresh server (start it, run the one workload,
# stop it, sync), on each image condition: sparse (a new sparse file for
# every server, so none inherits another's blocks) and alloc (a fully
# allocated file whose pages are dropped from the page cache before each
# server starts). RUNS runs (default 3), the server order rotated each
# run. Prints, per workload and condition, the median of each server's
# figure and min / median / max of the ratios vrep/nbdkit and
# vrep/qemu-nbd (each ratio taken within one run), and saves the table
# under bench/results/.
#
# Workloads (WORKLOADS, a subset of these, in this order):
#   rw4k        4k random write QD32, no flush
#   rw4k-f32    the same with a flush every 32 writes (--fsync=32)
#   mix7030     4k 70/30 random read/write QD16, --fsync=64: reads+writes/s
#   qd1-f1      4k random write QD1, a flush after each: IOPS, and the 99th
#               percentile of the writes' completion latency and of the
#               flushes' (fio reports them apart)
#   seq1m       1M sequential write QD8 for SECS
#   burst       BURST (default 512M, half of vrep's default merge bound of
#               1 GiB) of 1M sequential writes QD8, no flush: a burst that
#               fits within the bound, which vrep writes to its log once and
#               merges later
#   seq2g       2 GiB (or SIZE if smaller) 1M sequential write QD8 then one
#               fsync (--end_fsync=1): fio's write runtime includes that
#               fsync, so MB/s is the bytes over the whole job's time
#   rr-after-w  4k random read QD32 right after SECS of 4k random writes on
#               the same server (only the reads are reported)
#   sustained   4k random write QD32 until 4 × SUSTAIN_MERGE (default 256M)
#               is written, vrep started with --merge-after SUSTAIN_MERGE so
#               its log passes the bound four times; with each server's
#               peak RSS (VmHWM just before it stops)
#   repl        rw4k-f32 with vrep replicating to a vrep replica on
#               loopback (TLS), once its initial copy is done, vs nbdkit; and
#               the replica's lag in MiB when fio ends
#
# Settings: SIZE (default 4G), SECS (default 8), RUNS (default 3),
# WORKLOADS, CONDS (sparse alloc), SUSTAIN_MERGE, BURST; WORK (bench/work), VREP
# (bin/vrep). BARE=1 adds vrep's NBD server with no change tracking
# (bench/nbdbare), to tell the server loop's cost from the tracking's.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup "$@"
WORKLOADS=${WORKLOADS:-rw4k rw4k-f32 mix7030 qd1-f1 seq1m burst seq2g rr-after-w sustained repl}
burst_bytes=$(numfmt --from=iec "${BURST:-512M}")
SUSTAIN_MERGE=${SUSTAIN_MERGE:-256M}
sustain_bytes=$((4 * $(numfmt --from=iec "$SUSTAIN_MERGE")))
seq_bytes=$((bytes < 2147483648 ? bytes : 2147483648))
sock=$work/nbd.sock
timed=(--runtime="$SECS" --time_based)

servers=(nbdkit qemu-nbd vrep)
if [ "${BARE:-0}" = 1 ]; then
	go build -o "$work/nbdbare" ./bench/nbdbare
	servers+=(bare)
fi

pid="" rpid=""
stop() {
	local p
	for p in $pid $rpid; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	pid="" rpid=""
	rm -f "$sock"
}
trap stop EXIT

start() { # start SERVER [VREP_FLAG...]: serve $img; sets pid and uri
	local s=$1
	shift
	case $s in
	nbdkit)
		nbdkit -f -U "$sock" file "$img" &
		uri="nbd+unix:///?socket=$sock" ;;
	qemu-nbd)
		qemu-nbd -t -f raw -x disk -k "$sock" --aio=threads "$img" &
		uri="nbd+unix:///disk?socket=$sock" ;;
	bare)
		"$work/nbdbare" "$img" "$sock" &
		uri="nbd+unix:///vm1/disk0?socket=$sock" ;;
	vrep)
		rm -rf "$work/state"
		"$vrep" primary --state "$work/state" --disk vm1/disk0="$img" --nbd "unix:$sock" "$@" 2>"$work/vrep.log" &
		uri="nbd+unix:///vm1/disk0?socket=$sock" ;;
	esac
	pid=$!
	for _ in $(seq 200); do nbdinfo --size "$uri" >/dev/null 2>&1 && return; sleep 0.05; done
	echo "$s did not start" >&2
	exit 1
}

# replica: start a vrep replica on loopback; sets rpid and repl_flags,
# the primary's flags to replicate to it.
replica() {
	local port=$((11000 + RANDOM % 1000))
	rm -rf "$work/replica"
	"$vrep" replica --data "$work/replica" --listen 127.0.0.1:$port --tls-dir "$work/pki" \
		--name replica1 --allow primary1 2>"$work/replica.log" &
	rpid=$!
	for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
	repl_flags=(--replica "127.0.0.1:$port" --retry-schedule 100ms --tls-dir "$work/pki"
		--name primary1 --replica-name replica1)
}

# replicated: wait until the primary's initial copy is done and its
# replication is healthy.
replicated() {
	until [ "$("$vrep" status --state "$work/state" --json 2>/dev/null | python3 -c 'import json, sys
r = json.load(sys.stdin)["disks"][0].get("replication") or {}
print(r.get("initial_percent") == 100 and r.get("health") == "Normal")' 2>/dev/null)" = True ]; do
		kill -0 "$pid" 2>/dev/null || { echo "vrep primary exited: $(tail -3 "$work/vrep.log")" >&2; exit 1; }
		sleep 0.2
	done
}

# lag_mib: the log the replica has not acknowledged, in MiB: a replica
# that falls behind does less of its work within the run.
lag_mib() {
	"$vrep" status --state "$work/state" --json | python3 -c 'import json, sys
r = json.load(sys.stdin)["disks"][0].get("replication")
if not r:
    sys.exit("vrep status has no replication")
print(round(r.get("lag_bytes", 0) / 2**20, 1))'
}

fio_run() { # fio_run NAME FIO_ARG...: fio against $uri, JSON to $fiodir/NAME.json
	local out=$fiodir/$1.json
	shift
	fio --name=b --ioengine=nbd --uri="$uri" --size="$SIZE" --output-format=json "$@" >"$out" 2>"$out.err" ||
		{ echo "fio failed ($out.err): $(tail -3 "$out.err")" >&2; exit 1; }
}

# measure WORKLOAD SERVER: run one workload against the started server
# and record its figures (run and cond are the loop's).
measure() {
	local w=$1 s=$2 f=$run-$cond-$1-$2
	case $w in
	rw4k) fio_run "$f" "${timed[@]}" --rw=randwrite --bs=4k --iodepth=32 ;;
	rw4k-f32 | repl) fio_run "$f" "${timed[@]}" --rw=randwrite --bs=4k --iodepth=32 --fsync=32 ;;
	mix7030) fio_run "$f" "${timed[@]}" --rw=randrw --rwmixread=70 --bs=4k --iodepth=16 --fsync=64 ;;
	qd1-f1) fio_run "$f" "${timed[@]}" --rw=randwrite --bs=4k --iodepth=1 --fsync=1 ;;
	seq1m) fio_run "$f" "${timed[@]}" --rw=write --bs=1M --iodepth=8 ;;
	seq2g) fio_run "$f" --io_size="$seq_bytes" --rw=write --bs=1M --iodepth=8 --end_fsync=1 ;;
	burst) fio_run "$f" --io_size="$burst_bytes" --rw=write --bs=1M --iodepth=8 ;;
	rr-after-w)
		fio_run "$f-w" "${timed[@]}" --rw=randwrite --bs=4k --iodepth=32
		fio_run "$f" "${timed[@]}" --rw=randread --bs=4k --iodepth=32 ;;
	sustained) fio_run "$f" --io_size="$sustain_bytes" --rw=randwrite --bs=4k --iodepth=32 ;;
	*) echo "unknown workload $w" >&2; exit 2 ;;
	esac
	f=$fiodir/$f.json
	case $w in
	mix7030) keep "$w" rw_iops ;;
	seq1m | seq2g | burst) keep "$w" w_mbs ;;
	rr-after-w) keep "$w" r_iops ;;
	*) keep "$w" w_iops ;;
	esac
	if [ "$w" = qd1-f1 ]; then
		keep qd1-f1:p99 w_p99_us
		keep qd1-f1:flush-p99 sync_p99_us
	fi
}

# keep ROW METRIC: record METRIC of measure's fio output $f as ROW.
keep() {
	local v
	v=$(fio_get "$f" "$2")
	record "$run" "$cond" "$1" "$s" "$v"
}

row_label() {
	case $1 in
	rw4k) echo "4k random write QD32, IOPS" ;;
	rw4k-f32) echo "4k random write QD32 --fsync=32, IOPS" ;;
	mix7030) echo "4k 70/30 random read/write QD16 --fsync=64, IOPS (r+w)" ;;
	qd1-f1) echo "4k random write QD1 --fsync=1, IOPS" ;;
	qd1-f1:p99) echo "… its writes' p99 latency, µs (lower is better)" ;;
	qd1-f1:flush-p99) echo "… its flushes' p99 latency, µs (lower is better)" ;;
	seq1m) echo "1M write QD8, ${SECS}s, MB/s" ;;
	seq2g) echo "$(numfmt --to=iec "$seq_bytes") 1M write QD8 + fsync, MB/s" ;;
	burst) echo "$(numfmt --to=iec "$burst_bytes") 1M write QD8 burst (within the merge bound), MB/s" ;;
	rr-after-w) echo "4k random read QD32 after 4k random writes, IOPS" ;;
	sustained) echo "4k random write QD32, $(numfmt --to=iec "$sustain_bytes") (merge every $SUSTAIN_MERGE), IOPS" ;;
	sustained:rss) echo "… peak RSS, MiB (lower is better)" ;;
	repl) echo "4k random write QD32 --fsync=32, vrep replicating, IOPS" ;;
	repl:lag) echo "… the replica's lag when fio ends, MiB (lower is better)" ;;
	esac
}

if [[ " $WORKLOADS " == *" repl "* ]]; then
	rm -rf "$work/pki"
	"$vrep" cert init --dir "$work/pki" >/dev/null
	"$vrep" cert issue --dir "$work/pki" --name replica1 >/dev/null
	"$vrep" cert issue --dir "$work/pki" --name primary1 >/dev/null
fi

t0=$SECONDS
for run in $(seq "$RUNS"); do
	for cond in $CONDS; do
		for w in $WORKLOADS; do
			list=("${servers[@]}")
			[ "$w" = repl ] && list=(nbdkit vrep)
			# Rotate the order so no server always runs first.
			k=$((run % ${#list[@]}))
			for s in "${list[@]:$k}" "${list[@]:0:$k}"; do
				image "$cond"
				flags=()
				case $w,$s in
				sustained,vrep) flags=(--merge-after "$SUSTAIN_MERGE") ;;
				repl,vrep) replica; flags=("${repl_flags[@]}") ;;
				esac
				start "$s" "${flags[@]}"
				if [ "$w,$s" = repl,vrep ]; then
					replicated
					# The initial copy read the image into the page cache.
					[ "$cond" = sparse ] || drop_cache "$img"
				fi
				measure "$w" "$s"
				if [ "$w,$s" = repl,vrep ]; then
					lag=$(lag_mib)
					record "$run" "$cond" repl:lag vrep "$lag"
				fi
				if [ "$w" = sustained ]; then
					rss=$(peak_rss "$pid")
					record "$run" "$cond" sustained:rss "$s" "$rss"
				fi
				stop
				sync
				echo "run $run $cond $w $s: ${res[$run|$cond|$w|$s]} ($((SECONDS - t0)) s)" >&2
			done
		done
	done
done

ROWS=""
for w in $WORKLOADS; do
	ROWS+=" $w"
	[ "$w" = qd1-f1 ] && ROWS+=" qd1-f1:p99 qd1-f1:flush-p99"
	[ "$w" = sustained ] && ROWS+=" sustained:rss"
	[ "$w" = repl ] && ROWS+=" repl:lag"
done
out=bench/results/nbd-$(date -u +%Y%m%d-%H%M).md
{
	echo "# NBD: vrep primary (tracking on) vs nbdkit file plugin vs qemu-nbd"
	echo
	echo "fio nbd engine, unix socket, $SIZE raw image; sparse: a new sparse file per server; alloc: fully"
	echo "allocated, its pages dropped from the page cache before each server starts. A fresh server per"
	echo "workload and image, runs: $RUNS, server order rotated, ${SECS}s per timed workload."
	echo "Figures: medians over the runs; ratios: min / median / max over the runs of the ratio within"
	echo "one run. $(nproc) cores; vrep ${VREP:+binary $VREP, tree }$(git describe --always --dirty); $(date -u +%F); $((SECONDS - t0)) s."
	echo
	table vrep "${servers[@]}"
	if [[ " $WORKLOADS " == *" repl "* && " $WORKLOADS " == *" rw4k-f32 "* ]]; then
		echo
		echo "What shipping costs: vrep replicating / vrep alone (rw4k-f32 of the same run), min / median / max:"
		for cond in $CONDS; do echo "$cond $(ratios "$cond" repl vrep rw4k-f32 vrep)"; done | paste -sd';' | sed 's/;/; /g'
	fi
	if [ "${BARE:-0}" = 1 ]; then
		echo
		echo "vrep's NBD server without change tracking (bench/nbdbare), same runs:"
		echo
		table bare nbdkit qemu-nbd bare
	fi
} | tee "$out"
echo "saved $out"
