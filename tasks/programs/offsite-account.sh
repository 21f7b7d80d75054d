#!/bin/sh
# The SFTP account that holds one VPS's off-site copies, on a server the operator owns; run as root
# there by `fab -H SERVER backup.offsite.account` (tasks/offsite.py). Idempotent: a second run
# changes nothing. Arguments: the account, the repository directory, the VPS's public key (the
# line `backup.offsite.init` prints), and the mode: `sftp` or `append-only`.
#
# The account can do SFTP and nothing else (a Match block of its own: ForceCommand internal-sftp,
# DisableForwarding, no TTY; its key line carries `restrict` too), its key sits in a root-owned file
# it cannot rewrite (/etc/ssh/tasktracker-offsite/ACCOUNT), and it owns only the restic repository
# DIR and pgBackRest's DIR-pgbackrest (mode 0700). It never takes over what it did not make: an
# existing account must be one this program made (a system user, no shell, or /bin/sh in the
# append-only mode, home /var/lib/ACCOUNT), and an existing directory must already be the account's. The sftp mode is
# not append-only: restic and pgBackRest delete and rename files there (locks, WAL pushes), so the
# VPS's key can delete its copies. The append-only mode forces `rclone serve restic --stdio
# --append-only DIR` instead of SFTP (installing rclone and restic; the shell is /bin/sh, which
# sshd needs to run a forced command): the key can add restic files and remove only locks, so it
# neither deletes nor overwrites a set; retention runs here (`backup.offsite.prune`), and there is
# no DIR-pgbackrest (docs/operations.md has the layouts).
#
# Prints `CHANGED what` for each change, then `FINGERPRINT SHA256:...` (the server's ed25519 host
# key: the VPS's OFFSITE_HOST_KEY). Exits (each changing nothing more, the reason on stderr): 4
# sshd refused the new configuration (removed again); 5 sshd does not apply it to the account; 6
# the account exists and is not one this program made; 7 a directory exists and is not the
# account's; 8 rclone or restic could not be installed.
set -eu
account=$1 dir=$2 key=$3 mode=$4
home=/var/lib/$account
shell=/usr/sbin/nologin force=internal-sftp dirs="$dir $dir-pgbackrest"
if [ "$mode" = append-only ]; then
  shell=/bin/sh force="rclone serve restic --stdio --append-only --config /dev/null --log-level ERROR $dir"
  dirs=$dir
fi

if entry=$(getent passwd "$account"); then
  uid=$(printf '%s' "$entry" | cut -d: -f3)
  if [ "$uid" = 0 ] || [ "$(printf '%s' "$entry" | cut -d: -f6)" != "$home" ] \
      || ! printf '%s' "$entry" | cut -d: -f7 | grep -qxE '/usr/sbin/nologin|/bin/sh'; then
    echo "the account $account exists and is not one this task made (uid $uid, home and shell" \
      "$(printf '%s' "$entry" | cut -d: -f6-)): choose another --user" >&2
    exit 6
  fi
fi
for d in $dirs; do
  if [ -e "$d" ] && [ "$(stat -c %U "$d")" != "$account" ]; then
    echo "$d exists and belongs to $(stat -c %U "$d"), not $account: choose another --path" >&2
    exit 7
  fi
done

if [ "$mode" = append-only ] && ! { command -v rclone && command -v restic; } >/dev/null; then
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone restic >/dev/null 2>&1 \
      && ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             rclone restic; } >/dev/null 2>&1; then
    echo "apt-get could not install rclone and restic" >&2
    exit 8
  fi
  echo "CHANGED installed rclone and restic"
fi
if ! getent passwd "$account" >/dev/null; then
  useradd --system --create-home --home-dir "$home" --shell "$shell" "$account"
  echo "CHANGED account $account (system user, $mode)"
elif [ "$(getent passwd "$account" | cut -d: -f7)" != "$shell" ]; then
  usermod --shell "$shell" "$account"
  echo "CHANGED account $account is $mode now"
fi
group=$(id -gn "$account")
for d in $dirs; do
  if [ ! -d "$d" ]; then
    install -d -m 700 -o "$account" -g "$group" "$d"
    echo "CHANGED directory $d"
  fi
done

keys_dir=/etc/ssh/tasktracker-offsite
keys=$keys_dir/$account
install -d -m 755 -o root -g root "$keys_dir"
if ! grep -qxF "restrict $key" "$keys" 2>/dev/null; then
  printf 'restrict %s\n' "$key" >>"$keys"
  echo "CHANGED key $(printf '%s' "$key" | cut -d' ' -f3-) authorized"
fi
chown root:root "$keys"
chmod 644 "$keys"

conf=/etc/ssh/sshd_config.d/tasktracker-offsite-$account.conf
wanted="# Written by \`fab backup.offsite.account\`: $account does $mode and nothing else.
Match User $account
    AuthorizedKeysFile $keys_dir/%u
    ForceCommand $force
    PasswordAuthentication no
    DisableForwarding yes
    PermitTTY no
    PermitTunnel no"
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
  mkdir -p /etc/ssh/sshd_config.d
  printf '%s\n' "$wanted" >"$conf"
  if ! refused=$(sshd -t 2>&1); then
    rm -f "$conf"
    echo "sshd refused the account's configuration: $refused" >&2
    exit 4
  fi
  echo "CHANGED sshd: $account is $mode only ($conf)"
fi
# Every run: a reload that failed before is retried (sshd -T reads the files, not the daemon).
systemctl reload ssh 2>/dev/null || systemctl reload sshd
if ! sshd -T -C "user=$account,host=tasktracker-check,addr=192.0.2.1" \
    | grep -qxF "forcecommand $force"; then
  echo "sshd does not apply $conf to $account: is /etc/ssh/sshd_config.d/*.conf included?" >&2
  exit 5
fi
echo "FINGERPRINT $(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)"
