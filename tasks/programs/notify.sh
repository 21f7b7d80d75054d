#!/bin/sh
# tasktracker-notify 'message'  (or the message on stdin)   installed by fab; do not edit.
# Sends the message, prefixed with [host project], to the channels in notify.conf beside this
# program (Telegram and/or a webhook); none configured: sends nothing, exits 0.
# Exit status: 0 sent or nothing to send, 1 a channel failed (why: stderr), 2 no message.
# The bot token and the webhook URL reach curl/wget on stdin, never on a command line.
umask 077
PROJECT="" TELEGRAM_URL="" TELEGRAM_CHAT_ID="" WEBHOOK_URL="" TIMEOUT=10
conf="$(dirname "$0")/notify.conf"
# shellcheck source=/dev/null  # notify.conf, written by `fab deploy` beside this program
if [ -r "$conf" ]; then . "$conf"; fi
if [ $# -gt 0 ]; then text="$*"; else text=$(cat); fi
if [ -z "$text" ]; then echo "usage: tasktracker-notify 'message' (or the message on stdin)" >&2; exit 2; fi
[ -n "$TELEGRAM_URL$WEBHOOK_URL" ] || exit 0

text=$(printf '[%s %s] %s' "$(uname -n)" "$PROJECT" "$text" | head -c __MAX_BYTES__)
if command -v iconv >/dev/null 2>&1; then  # drop a character cut in half
  text=$(printf '%s' "$text" | iconv -c -f UTF-8 -t UTF-8 2>/dev/null)
fi
json() {  # $1 as a JSON string
  printf '%s' "$1" | tr '\t' ' ' | tr -d '\000-\010\013-\037' | sed 's/\\/\\\\/g; s/"/\\"/g' |
    awk 'BEGIN { printf "%s", "\"" } NR > 1 { printf "%s", "\\n" } { printf "%s", $0 } END { printf "%s", "\"" }'
}
body=$(mktemp) || exit 1
trap 'rm -f "$body"' EXIT
trap 'exit 1' HUP INT TERM

send() {  # send CHANNEL URL: POST the JSON in $body to URL (given on stdin, never in argv)
  if command -v curl >/dev/null 2>&1; then
    code=$(printf '%s\n' "$2" | sed 's/[\\"]/\\&/g; s/^/url = "/; s/$/"/' |
      curl -q -s -K - -m "$TIMEOUT" --connect-timeout 5 -H 'Content-Type: application/json' \
        --data-binary "@$body" -o /dev/null -w '%{http_code}')
    rc=$?
    case "$rc:$code" in
      0:2??) return 0 ;;
      0:401) why="HTTP 401: the bot token (or the webhook's) was refused" ;;
      0:400) why="HTTP 400: the request was refused (for Telegram: is the chat id right?)" ;;
      0:403) why="HTTP 403: forbidden (for Telegram: has the bot been added to the chat?)" ;;
      0:*) why="HTTP $code" ;;
      6:*) why="could not resolve the host name" ;;
      7:*) why="could not connect" ;;
      28:*) why="no answer within ${TIMEOUT}s" ;;
      35:* | 51:* | 58:* | 60:*) why="TLS failed (curl exit $rc)" ;;
      *) why="curl exit $rc" ;;
    esac
  elif command -v wget >/dev/null 2>&1; then
    printf '%s\n' "$2" | wget -q -T "$TIMEOUT" -t 1 -O /dev/null --header='Content-Type: application/json' \
      --post-file="$body" -i -
    rc=$?
    case "$rc" in
      0) return 0 ;;
      4) why="could not connect (or no answer within ${TIMEOUT}s)" ;;
      5) why="TLS failed" ;;
      8) why="the server refused the request (HTTP error)" ;;
      *) why="wget exit $rc" ;;
    esac
  else
    why="neither curl nor wget is installed (apt-get install curl)"
  fi
  echo "tasktracker-notify: $1 message not sent: $why" >&2
  return 1
}

status=0
if [ -n "$TELEGRAM_URL" ]; then
  printf '{"chat_id": %s, "text": %s, "disable_web_page_preview": true}\n' "$(json "$TELEGRAM_CHAT_ID")" "$(json "$text")" > "$body"
  send telegram "$TELEGRAM_URL" || status=1
fi
if [ -n "$WEBHOOK_URL" ]; then
  printf '{"text": %s}\n' "$(json "$text")" > "$body"
  send webhook "$WEBHOOK_URL" || status=1
fi
exit $status
