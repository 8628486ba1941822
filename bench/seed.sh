#!/usr/bin/env bash
# bench/seed.sh [RUNS] — seed export and import MB/s against cp of the
# same image in the same run, and bytes on media for a half-empty disk.
#
# A fully written random image of $SIZE (default 1G) is protected by a
# primary that replicates to nowhere (an export needs replication on);
# `vrep seed export` writes it over 4 directories with parity 2 and with
# parity 1; `vrep seed import` reads it back (with and without the
# read-back verify). cp copies the image and fsyncs it (the export and
# import fsync what they write). All on one file system; the page cache
# is left as it is (dropping it would disturb the rest of the machine),
# so the source is read from cache by every contestant alike.
#
# The drive under this machine writes fast after a pause and slows as
# writes pile up (a virtual disk whose host writes back behind it): a
# contestant timed right after others' gigabytes is slow whatever it
# does (the import with --no-verify ran last and measured 0.26x cp, the
# same work with the verify, just before it, 0.98x). So each contestant
# is paired with a cp timed next to it, each after the drive has
# settled (sync, no dirty pages left, SETTLE seconds, default 5), its
# ratio taken against its own cp; the cp goes first in odd runs, second
# in even ones, and the two imports swap order every run.
# Ratios: min / median / max over RUNS. Then the same for an image half
# zeros, for bytes on media.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${1:-3}
SIZE=${SIZE:-1G}
work=$(realpath -m "${WORK:-bench/work}")/seed
rm -rf "$work"; mkdir -p "$work" bench/results
vrep=${VREP:-bin/vrep}
go build -o "$vrep" ./cmd/vrep
bytes=$(numfmt --from=iec "$SIZE")
mb() { python3 -c "print(round($bytes/1e6/$1))"; }
secs() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1; python3 -c "print(max($(date +%s.%N)-$s, 1e-3))"; }

$vrep cert init --dir "$work/pki" >/dev/null
$vrep cert issue --dir "$work/pki" --name p1 >/dev/null
$vrep cert issue --dir "$work/pki" --name r1 >/dev/null

# settle: sync, wait for the dirty pages to be written, then SETTLE s
# (the host's own writeback, which this machine cannot see).
settle() {
	sync
	for _ in $(seq 200); do
		awk '/^(Dirty|Writeback):/ {s += $2} END {exit !(s < 4096)}' /proc/meminfo && break
		sleep 0.1
	done
	sleep "${SETTLE:-5}"
}

# paired CMD...: "MB/s-of-cp MB/s-of-CMD", each timed after settle; cp
# first in odd runs ($run), second in even ones.
paired() {
	local t_cp t_x
	if ((run % 2)); then
		settle
		t_cp=$(secs bash -c "cp '$img' '$work/copy.img' && sync '$work/copy.img'")
		rm -f "$work/copy.img"
	fi
	settle
	t_x=$(secs "$@")
	if ((run % 2 == 0)); then
		settle
		t_cp=$(secs bash -c "cp '$img' '$work/copy.img' && sync '$work/copy.img'")
		rm -f "$work/copy.img"
	fi
	echo "$(mb "$t_cp") $(mb "$t_x")"
}

run_one() { # IMAGE RUN → "cp e2 cp e1 cp import cp import-noverify media" (MB/s, bytes)
	img=$1 run=$2
	local st=$work/state sock=$work/nbd.sock
	rm -rf "$st" "$work"/d* "$work"/e* "$work"/rep* "$work/copy.img"
	$vrep primary --state "$st" --disk "vm1/disk0=$img" --nbd "unix:$sock" --replica 127.0.0.1:9 \
		--tls-dir "$work/pki" --name p1 --replica-name r1 --retry-schedule 1h 2>"$work/primary.log" &
	local pid=$!
	for _ in $(seq 100); do [ -S "$st/api.sock" ] && break; sleep 0.1; done
	local e2 e1 i in media
	e2=$(paired $vrep seed export vm1 --state "$st" --parity 2 --to "$work/d0" --to "$work/d1" --to "$work/d2" --to "$work/d3")
	media=$(du -cb "$work"/d0 "$work"/d1 "$work"/d2 "$work"/d3 | tail -1 | cut -f1)
	e1=$(paired $vrep seed export vm1 --state "$st" --parity 1 --to "$work/e0" --to "$work/e1" --to "$work/e2" --to "$work/e3")
	kill "$pid"; wait "$pid" || true
	rm -rf "$work"/e*
	local from=(--from "$work/d0" --from "$work/d1" --from "$work/d2" --from "$work/d3")
	if ((run % 2)); then
		i=$(paired $vrep seed import --data "$work/rep" "${from[@]}")
		in=$(paired $vrep seed import --no-verify --data "$work/rep2" "${from[@]}")
	else
		in=$(paired $vrep seed import --no-verify --data "$work/rep2" "${from[@]}")
		i=$(paired $vrep seed import --data "$work/rep" "${from[@]}")
	fi
	cmp "$img" "$work/rep/p1/vm1/disk0/image"
	cmp "$img" "$work/rep2/p1/vm1/disk0/image"
	rm -rf "$work"/rep*
	echo "$e2 $e1 $i $in $media"
}

full=$work/full.img half=$work/half.img
head -c "$bytes" /dev/urandom >"$full"
cp "$full" "$half"
# Zero every other 4 MiB: half the chunks are zeros.
python3 - "$half" <<'PY'
import sys, os
f = open(sys.argv[1], "r+b"); n = os.path.getsize(sys.argv[1]); z = bytes(4 << 20)
for off in range(0, n, 8 << 20):
    f.seek(off); f.write(z[: min(len(z), n - off)])
PY
declare -a rows
for r in $(seq "$RUNS"); do rows+=("$(run_one "$full" "$r")"); echo "run $r: ${rows[-1]}" >&2; done
col() { for row in "${rows[@]}"; do echo "$row" | cut -d' ' -f"$1"; done | median; }
# rat N: min / median / max over the runs of field N+1 / field N.
rat() {
	for row in "${rows[@]}"; do echo "$row" | awk -v n="$1" '{print $(n+1) / $n}'; done | sort -g |
		awk '{a[NR]=$1} END {printf "%.2f / %.2f / %.2f", a[1], (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
}
cp_mb=$(for n in 1 3 5 7; do col $n; done | median)
halfrow=$(run_one "$half" 1); halfmedia=$(echo "$halfrow" | cut -d' ' -f9)
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
out=bench/results/seed-$(date +%Y%m%d-%H%M).md
{
	echo "| $SIZE image, $RUNS runs | MB/s (median) | vs its paired cp: min / median / max |"
	echo "|---|---|---|"
	echo "| cp + fsync of the image (every pairing) | $cp_mb | 1.00 |"
	echo "| seed export, 4 dirs, parity 2 (2.0x bytes written) | $(col 2) | **$(rat 1)** |"
	echo "| seed export, 4 dirs, parity 1 (1.33x bytes written) | $(col 4) | $(rat 3) |"
	echo "| seed import, parity 2, with read-back verify | $(col 6) | **$(rat 5)** |"
	echo "| seed import, parity 2, --no-verify | $(col 8) | $(rat 7) |"
	echo
	echo "Half-empty $SIZE image (every other 4 MiB zero), 4 dirs, parity 2: $halfmedia bytes on media for $bytes of image ($(ratio "$halfmedia" "$bytes")x; data alone would be 0.50x, parity 2 of 4 doubles it)."
} | tee "$out"
