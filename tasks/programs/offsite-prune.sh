#!/bin/sh
# Off-site retention from a trusted place: run as root on the off-site server by `fab -H SERVER
# backup.offsite.prune` (tasks/offsite.py), for a repository the VPS can only add to (an
# append-only account, `backup.offsite.account --append-only`). restic runs as the account, on the
# repository's directory, with the VPS's own policy (its OFFSITE_KEEP_*): the sets of PROJECT
# grouped by host, every set tagged `keep` kept (first tagging the sets the host asked to keep:
# its `keep` writes request snapshots there, tagged keep=SET). The password comes on stdin, one line
# (never an argument or a variable in the environment of any process).
# Arguments: the account, the directory, the project, keep daily, weekly, monthly, then
# `prune`, `dry-run` (what would go; nothing removed) or `unkeep SET|all` (hand kept sets back to
# retention, then prune).
# Exits: 3 no restic here; 4 the directory is not the account's restic repository; 5 the password
# was not on stdin; restic's own code when it fails (its message on stderr).
set -eu
account=$1 dir=$2 project=$3 daily=$4 weekly=$5 monthly=$6 action=$7 name=${8:-}
command -v restic >/dev/null || { echo "restic is not installed on this server" >&2; exit 3; }
if [ ! -f "$dir/config" ] || [ "$(stat -c %U "$dir")" != "$account" ]; then
  echo "$dir is not a restic repository of $account" >&2
  exit 4
fi
IFS= read -r password || [ -n "${password:-}" ] || { echo "no password on stdin" >&2; exit 5; }
restic_as() {  # restic as the account; the password through a pipe (restic reads a stdin that is
  # not a terminal for it; /dev/stdin, root's pipe, is not the account's to open)
  printf '%s\n' "$password" | runuser -u "$account" -- restic -r "$dir" \
    --cache-dir "/var/lib/$account/.cache/restic" "$@"
}
# What the host asked to keep (`keep` on an append-only repository writes a request snapshot
# tagged keep=SET, since it cannot tag a set): the set gets its `keep` tag, the request goes.
requests=$(restic_as snapshots --json --host "$project" --tag tasktracker-keep)
for request in $(printf '%s' "$requests" | tr '{' '\n' | sed -n 's/.*"keep=\([0-9TZ]\{16\}\)".*"id":"\([0-9a-f]\{64\}\)".*/\1:\2/p'); do
  if [ "$action" = dry-run ]; then  # changes nothing: the next prune applies it
    echo "KEEP REQUESTED ${request%%:*} (the prune applies it; this dry run does not count it)"
    continue
  fi
  restic_as tag --quiet --host "$project" --tag "set=${request%%:*}" --add keep
  restic_as forget --quiet "${request#*:}"
  echo "KEPT ${request%%:*}"
done
if [ "$action" = unkeep ]; then
  if [ "$name" = all ]; then
    restic_as tag --quiet --host "$project" --tag keep --remove keep
  else
    restic_as tag --quiet --host "$project" --tag "set=$name" --remove keep
  fi
  echo "UNKEPT $name"
fi
how=--prune
[ "$action" != dry-run ] || how=--dry-run
restic_as forget "$how" --host "$project" --tag tasktracker --group-by host --keep-daily "$daily" \
  --keep-weekly "$weekly" --keep-monthly "$monthly" --keep-tag keep
restic_as snapshots --json --host "$project" --tag tasktracker | sed 's/^/SNAPSHOTS /'
