# shellcheck shell=bash
# bench/lib.sh — helpers shared by the bench scripts (sourced).

# median: the median of the numbers on standard input; nothing if none.
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# mmm: "min / median / max" of the numbers on standard input, or "–" if
# there are none.
mmm() {
	tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1}
		END {if (!NR) {print "–"; exit}
		printf "%.2f / %.2f / %.2f\n", a[1], (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
}

# num N: a figure as a table prints it: whole numbers from 100 up, one
# decimal below.
num() { awk -v n="$1" 'BEGIN {printf (n >= 100 ? "%.0f" : "%.1f"), n}'; }

# bench_setup [RUNS] [SECONDS]: the settings every bench script shares.
# The arguments win over the environment (RUNS, SECS), as in the scripts'
# first versions; SIZE is the image size, CONDS the image conditions;
# fio's JSON goes under $fiodir.
bench_setup() {
	RUNS=${1:-${RUNS:-3}}
	SECS=${2:-${SECS:-8}}
	SIZE=${SIZE:-4G}
	CONDS=${CONDS:-sparse alloc}
	bytes=$(numfmt --from=iec "$SIZE")
	work=$(realpath -m "${WORK:-bench/work}")
	# fio's JSON output of every measurement, kept for a closer look.
	fiodir=$work/fio/$(basename "$0" .sh)
	rm -rf "$fiodir"
	mkdir -p "$fiodir" bench/results
	vrep=${VREP:-bin/vrep}
	[ -x "$vrep" ] || go build -o "$vrep" ./cmd/vrep
}

# image COND: set img to a fresh image of $SIZE in condition COND:
# sparse, a new sparse file (recreated for every server, so none inherits
# another's blocks); alloc, a fully allocated file (made once, kept while
# it stays fully allocated) whose pages are written back and then dropped
# from the page cache, so the server reads it from the disk.
image() {
	case $1 in
	sparse)
		img=$work/sparse.img
		rm -f "$img"
		truncate -s "$SIZE" "$img" ;;
	alloc)
		img=$work/alloc.img
		if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" != "$bytes" ] ||
			[ $(($(stat -c '%b * %B' "$img"))) -lt "$bytes" ]; then
			echo "making a fully allocated $SIZE image" >&2
			rm -f "$img"
			dd if=/dev/zero of="$img" bs=4M count=$((bytes / 4194304)) status=none
		fi
		drop_cache "$img" ;;
	*)
		echo "unknown image condition $1 (sparse, alloc)" >&2
		exit 2 ;;
	esac
}

# drop_cache FILE: write the dirty pages back, then drop FILE's pages from
# the page cache (POSIX_FADV_DONTNEED drops only clean pages, hence the
# sync first). fincore, when present, checks that nothing stayed.
drop_cache() {
	sync
	python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)' "$1"
	if command -v fincore >/dev/null; then
		local res
		res=$(fincore --bytes --noheadings --output RES "$1" | tr -d " ")
		[ "$res" = 0 ] || echo "warning: $res bytes of $1 still in the page cache" >&2
	fi
}

# fio_get FILE METRIC: one figure from fio's JSON output in FILE, or an
# error if fio did no I/O of that kind. METRIC: w_iops, r_iops, rw_iops
# (reads and writes), w_mbs (MB/s of written bytes over the write
# runtime: fio's runtime includes the fsync of --end_fsync), w_p99_us
# (99th percentile of the writes' completion latency, µs) or sync_p99_us
# (the same for the flushes of --fsync).
fio_get() {
	python3 - "$@" <<'PY'
import json, sys
raw = open(sys.argv[1]).read()
j = json.loads(raw[raw.find("{"):])["jobs"][0]
r, w, m = j["read"], j["write"], sys.argv[2]
if j["error"]:
    sys.exit(f"fio failed in {sys.argv[1]}: error {j['error']}")
v = {
    "w_iops": lambda: w["iops"],
    "r_iops": lambda: r["iops"],
    "rw_iops": lambda: r["iops"] + w["iops"],
    "w_mbs": lambda: w["io_bytes"] / w["runtime"] / 1e3,
    "w_p99_us": lambda: w["clat_ns"]["percentile"]["99.000000"] / 1e3,
    "sync_p99_us": lambda: j["sync"]["lat_ns"]["percentile"]["99.000000"] / 1e3,
}[m]()
if not v > 0:
    sys.exit(f"no {m} in {sys.argv[1]}")
print(round(v, 1))
PY
}

# peak_rss PID: the process's peak resident set (VmHWM) in MiB.
peak_rss() { awk '/^VmHWM:/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }

# Results: res[RUN|COND|ROW|SERVER] = a figure, where a ROW is a
# workload's metric (a script's row_label names it).
declare -A res
record() { res["$1|$2|$3|$4"]=$5; }

# ratios COND ROW_A A ROW_B B: "min / median / max" over the runs of A's
# figure in ROW_A over B's in ROW_B, each ratio within one run.
ratios() {
	local n a b
	for n in $(seq "$RUNS"); do
		a=${res[$n|$1|$2|$3]:-}
		b=${res[$n|$1|$4|$5]:-}
		if [ -n "$a" ] && [ -n "$b" ]; then awk -v a="$a" -v b="$b" 'BEGIN {print a / b}'; fi
	done | mmm
}

# table SUBJECT SERVER...: a markdown table with one line per row of
# $ROWS and condition of $CONDS that SUBJECT has figures for: the median over the
# runs of each server's figure, then min / median / max over the runs of
# SUBJECT's figure over each other server's (ratios within one run).
table() {
	local subj=$1 s row cond n line v sep="|---|---|"
	shift
	local peers=()
	for s in "$@"; do [ "$s" = "$subj" ] || peers+=("$s"); done
	line="| workload | image |"
	for s in "$@"; do line+=" $s |"; sep+="---|"; done
	for s in "${peers[@]}"; do line+=" $subj/$s |"; sep+="---|"; done
	echo "$line"
	echo "$sep"
	for row in $ROWS; do
		for cond in $CONDS; do
			line="| $(row_label "$row") | $cond |"
			for s in "$@"; do
				v=$(for n in $(seq "$RUNS"); do echo "${res[$n|$cond|$row|$s]:-}"; done | median)
				# A row the subject has no figure for is left out.
				if [ -z "$v" ] && [ "$s" = "$subj" ]; then continue 2; fi
				[ -z "$v" ] || v=$(num "$v")
				line+=" ${v:-–} |"
			done
			for s in "${peers[@]}"; do line+=" $(ratios "$cond" "$row" "$subj" "$row" "$s") |"; done
			echo "$line"
		done
	done
}

# wait_file FILE: wait (10 s at most) for FILE to appear.
wait_file() {
	for _ in $(seq 200); do [ -e "$1" ] && return; sleep 0.05; done
	echo "$1 did not appear" >&2
	exit 1
}
