# bench/lib.sh — helpers shared by the bench scripts (sourced).

# fio_pick WORKLOAD: "IOPS MB/s" of the read side of fio's JSON for
# randread, else of the write side.
fio_pick() {
	python3 -c 'import json,sys
raw = sys.stdin.read(); j = json.loads(raw[raw.find("{"):])
side = j["jobs"][0]["read" if sys.argv[1] == "randread" else "write"]
print(round(side["iops"]), round(side["bw"] * 1024 / 1e6, 1))' "$1" || echo "0 0"
}

# median: the median of the numbers on standard input.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# pick SERVER WORKLOAD FIELD: the median of field 1 (IOPS) or 2 (MB/s) over
# the runs kept in the associative array res.
pick() { echo "${res[$1,$2]}" | tr ' ' '\n' | awk 'NF' | paste - - | awk -v f="$3" '{print $f}' | median; }

# bench_setup [RUNS] [SECONDS]: the settings every bench script shares,
# and a fully allocated raw image of $SIZE (default 4G) at $img.
bench_setup() {
	RUNS=${1:-2}
	SECS=${2:-8}
	SIZE=${SIZE:-4G}
	work=$(realpath -m "${WORK:-bench/work}")
	mkdir -p "$work" bench/results
	img=$work/disk.img
	vrep=${VREP:-bin/vrep}
	[ -x "$vrep" ] || go build -o "$vrep" ./cmd/vrep
	local bytes
	bytes=$(numfmt --from=iec "$SIZE")
	if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" != "$bytes" ]; then
		echo "making a fully allocated $SIZE image" >&2
		rm -f "$img"
		dd if=/dev/zero of="$img" bs=4M count=$((bytes / 4194304)) status=none
		sync
	fi
}
