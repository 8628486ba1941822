#!/usr/bin/env bash
# bench/fuse-options.sh [SECONDS] — what each go-fuse option is worth: fio
# 4k random write and read (QD32, libaio, O_DIRECT) and 1M sequential write
# on vrep's FUSE file, with vrep's settings and with one option changed at
# a time (VREP_FUSE_TUNING). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
work=$(realpath -m "${WORK:-bench/work}")
img=$work/disk.img
mnt=$work/mnt
vrep=${VREP:-bin/vrep}
[ -f "$img" ] || { mkdir -p "$work"; dd if=/dev/zero of="$img" bs=4M count=1024 status=none; }
pick() {
	python3 -c 'import json,sys
raw = sys.stdin.read(); j = json.loads(raw[raw.find("{"):])
s = j["jobs"][0]["read" if sys.argv[1] == "randread" else "write"]
print(round(s["iops"]) if sys.argv[1] != "write" else round(s["bw"] * 1024 / 1e6))' "$1"
}
printf '| setting | 4k randwrite IOPS | 4k randread IOPS | 1M write MB/s |\n|---|---|---|---|\n'
for t in "" noasyncdio noparallel nodirect splice maxwrite=131072 maxbackground=12; do
	rm -rf "$work/state"
	VREP_FUSE_TUNING=$t "$vrep" primary --state "$work/state" --disk vm1/disk0="$img" --fuse "$mnt" 2>/dev/null &
	pid=$!
	for _ in $(seq 100); do [ -f "$mnt/vm1/disk0.img" ] && break; sleep 0.05; done
	label=${t:-default}
	row="| $label |"
	for w in randwrite:4k:32 randread:4k:32 write:1M:8; do
		IFS=: read -r rw bs qd <<<"$w"
		v=$(fio --name=o --filename="$mnt/vm1/disk0.img" --ioengine=libaio --direct=1 --size=4G --runtime="$SECS" \
			--time_based --rw="$rw" --bs="$bs" --iodepth="$qd" --output-format=json 2>/dev/null | pick "$rw" || echo 0)
		row+=" $v |"
	done
	echo "$row"
	kill "$pid"; wait "$pid" 2>/dev/null || true
	sync
done
