#!/usr/bin/env bash
# container-usage ID...   (part of `status`'s one round trip: commands/status.py; do not edit)
# Each running container's memory and CPU, read from its cgroup rather than a `docker stats`
# sample (which waits about two seconds): memory as `docker stats` counts it (the cgroup's use
# less its inactive file cache), CPU as the percent of one CPU over SAMPLE_S seconds. Prints
# `ID|USED / 0B|CPU%` per container, the format of `docker stats --format
# '{{.ID}}|{{.MemUsage}}|{{.CPUPerc}}'`, which it runs instead when a cgroup is not found.
set -uo pipefail
SAMPLE_S=0.5
root=${CGROUP_ROOT:-/sys/fs/cgroup}  # another root only in tests/test_status.py
declare -A version mem cpu start
# The container's memory and CPU accounting directories: cgroup v2 or v1, with Docker's cgroupfs
# or systemd driver.
dirs() {
  local d
  for d in "$root/system.slice/docker-$1.scope" "$root/docker/$1"; do
    [ -f "$d/memory.current" ] && [ -f "$d/cpu.stat" ] && { echo "2 $d $d"; return 0; }
  done
  for d in "docker/$1" "system.slice/docker-$1.scope"; do
    [ -f "$root/memory/$d/memory.usage_in_bytes" ] && [ -f "$root/cpuacct/$d/cpuacct.usage" ] \
      && { echo "1 $root/memory/$d $root/cpuacct/$d"; return 0; }
  done
  return 1
}
cpu_ns() {  # VERSION DIR: the cgroup's CPU time so far, in nanoseconds
  if [ "$1" = 2 ]; then
    awk '$1 == "usage_usec" { printf "%.0f", $2 * 1000 }' "$2/cpu.stat" 2>/dev/null
  else
    cat "$2/cpuacct.usage" 2>/dev/null
  fi
}
for id in "$@"; do
  found=$(dirs "$id") \
    || exec docker stats --no-stream --format '{{.ID}}|{{.MemUsage}}|{{.CPUPerc}}' "$@"
  read -r v m c <<< "$found"
  version[$id]=$v mem[$id]=$m cpu[$id]=$c
  start[$id]=$(cpu_ns "$v" "$c")
done
began=$(date +%s%N)
sleep "$SAMPLE_S"
ended=$(date +%s%N)
for id in "$@"; do
  if [ "${version[$id]}" = 2 ]; then
    used=$(cat "${mem[$id]}/memory.current" 2>/dev/null)
    inactive=$(awk '$1 == "inactive_file" { print $2 }' "${mem[$id]}/memory.stat" 2>/dev/null)
  else
    used=$(cat "${mem[$id]}/memory.usage_in_bytes" 2>/dev/null)
    inactive=$(awk '$1 == "total_inactive_file" { print $2 }' "${mem[$id]}/memory.stat" \
      2>/dev/null)
  fi
  now=$(cpu_ns "${version[$id]}" "${cpu[$id]}")
  [ -n "$used" ] && [ -n "$now" ] || continue  # it stopped meanwhile
  spent=$((now - ${start[$id]:-0}))
  awk -v id="${id:0:12}" -v used="$used" -v inactive="${inactive:-0}" -v spent="$spent" \
      -v wall=$((ended - began)) 'BEGIN {
    mem = inactive < used ? used - inactive : used
    printf "%s|%.0fB / 0B|%.2f%%\n", id, mem, (wall > 0 ? 100 * spent / wall : 0) }'
done
