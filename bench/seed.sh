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
# so the source is read from cache by every contestant alike. Then the
# same for an image half zeros, for bytes on media. Medians of RUNS.
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

run_one() { # IMAGE → "cp export2 export1 import import-noverify media" MB/s and bytes
	local img=$1 st=$work/state sock=$work/nbd.sock
	rm -rf "$st" "$work"/d* "$work"/rep* "$work/copy.img"
	$vrep primary --state "$st" --disk "vm1/disk0=$img" --nbd "unix:$sock" --replica 127.0.0.1:9 \
		--tls-dir "$work/pki" --name p1 --replica-name r1 --retry-schedule 1h 2>"$work/primary.log" &
	local pid=$!
	for _ in $(seq 100); do [ -S "$st/api.sock" ] && break; sleep 0.1; done
	local t_cp t_e2 t_e1 t_i t_in media
	t_cp=$(secs bash -c "cp '$img' '$work/copy.img' && sync '$work/copy.img'")
	rm -f "$work/copy.img"
	t_e2=$(secs $vrep seed export vm1 --state "$st" --parity 2 --to "$work/d0" --to "$work/d1" --to "$work/d2" --to "$work/d3")
	media=$(du -cb "$work"/d0 "$work"/d1 "$work"/d2 "$work"/d3 | tail -1 | cut -f1)
	t_e1=$(secs $vrep seed export vm1 --state "$st" --parity 1 --to "$work/e0" --to "$work/e1" --to "$work/e2" --to "$work/e3")
	kill "$pid"; wait "$pid" || true
	t_i=$(secs $vrep seed import --data "$work/rep" --from "$work/d0" --from "$work/d1" --from "$work/d2" --from "$work/d3")
	t_in=$(secs $vrep seed import --no-verify --data "$work/rep2" --from "$work/d0" --from "$work/d1" --from "$work/d2" --from "$work/d3")
	cmp "$img" "$work/rep/p1/vm1/disk0/image"
	rm -rf "$work"/e* "$work"/rep*
	echo "$(mb "$t_cp") $(mb "$t_e2") $(mb "$t_e1") $(mb "$t_i") $(mb "$t_in") $media"
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
for r in $(seq "$RUNS"); do rows+=("$(run_one "$full")"); echo "run $r: ${rows[-1]}" >&2; done
col() { for row in "${rows[@]}"; do echo "$row" | cut -d' ' -f"$1"; done | median; }
cp_mb=$(col 1) e2=$(col 2) e1=$(col 3) im=$(col 4) imn=$(col 5)
halfrow=$(run_one "$half"); halfmedia=$(echo "$halfrow" | cut -d' ' -f6)
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
out=bench/results/seed-$(date +%Y%m%d-%H%M).md
{
	echo "| $SIZE image, $RUNS runs, medians | MB/s | vs cp |"
	echo "|---|---|---|"
	echo "| cp + fsync of the image | $cp_mb | 1.00 |"
	echo "| seed export, 4 dirs, parity 2 (2.0x bytes written) | $e2 | **$(ratio "$e2" "$cp_mb")** |"
	echo "| seed export, 4 dirs, parity 1 (1.33x bytes written) | $e1 | $(ratio "$e1" "$cp_mb") |"
	echo "| seed import, parity 2, with read-back verify | $im | **$(ratio "$im" "$cp_mb")** |"
	echo "| seed import, parity 2, --no-verify | $imn | $(ratio "$imn" "$cp_mb") |"
	echo
	echo "Half-empty $SIZE image (every other 4 MiB zero), 4 dirs, parity 2: $halfmedia bytes on media for $bytes of image ($(ratio "$halfmedia" "$bytes")x; data alone would be 0.50x, parity 2 of 4 doubles it)."
} | tee "$out"
