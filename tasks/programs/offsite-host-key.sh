#!/bin/sh
# The SFTP server's host key, pinned (backup.offsite.init; commands/offsite.pin_host_key fills
# in the values). Prints each key the server offers with its fingerprint (`@@offered`); the one
# whose fingerprint is the pin replaces what ~/.ssh/known_hosts said of the server (`@@pinned`).
# Exits 3 when the server does not answer, 4 with no pin, 5 when no key matches: nothing changed.
host=@HOST@
port=@PORT@
name=@NAME@
pin=@PIN@
offered=$(ssh-keyscan -T 15 -p "$port" "$host" 2>/dev/null | grep -v '^#')
[ -n "$offered" ] || exit 3
match=""
while read -r line; do
  # "256 SHA256:... [host]:port (ED25519)" -> "SHA256:... (ED25519)"
  seen=$(printf '%s\n' "$line" | ssh-keygen -lf - | awk '{print $2, $NF}')
  echo "@@offered $seen"
  if [ "${seen%% *}" = "$pin" ]; then match=$line; fi
done <<KEYS
$offered
KEYS
[ -n "$pin" ] || exit 4
[ -n "$match" ] || exit 5
[ -d ~/.ssh ] || mkdir -m 700 ~/.ssh
touch ~/.ssh/known_hosts
chmod 600 ~/.ssh/known_hosts
ssh-keygen -R "$name" -f ~/.ssh/known_hosts >/dev/null 2>&1
rm -f ~/.ssh/known_hosts.old
printf '%s\n' "$match" >> ~/.ssh/known_hosts
echo "@@pinned $pin"
