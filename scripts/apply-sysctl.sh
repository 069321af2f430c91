#!/usr/bin/env bash
# Applies a fanout sysctl profile and reports each setting: applied, already at least as high,
# or not settable here (missing key, read-only in a container, or not root).
#
#   scripts/apply-sysctl.sh sysctl/c10k.conf          # apply (as root)
#   scripts/apply-sysctl.sh --check sysctl/c10k.conf  # only compare, change nothing
#
# Values are floors: a higher current value is kept (FANOUT_SYSCTL_EXACT=1 applies exactly).
# Exit status: 0 when every setting is at or above the profile, 1 otherwise.
set -u

check_only=0
if [ "${1:-}" = "--check" ]; then
  check_only=1
  shift
fi
profile=${1:?usage: apply-sysctl.sh [--check] PROFILE.conf}
[ -r "$profile" ] || { echo "cannot read $profile" >&2; exit 2; }

# "a b c" >= "x y z", compared field by field (multi-value keys such as tcp_rmem).
at_least() {
  local -a have=($1) want=($2)
  local i
  for i in "${!want[@]}"; do
    [ "${have[$i]:-0}" -ge "${want[$i]}" ] 2>/dev/null || return 1
  done
}

failed=0
applied=0
while IFS= read -r line; do
  line=${line%%#*}
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  key=$(echo "${line%%=*}" | xargs)
  want=$(echo "${line#*=}" | xargs)
  path="/proc/sys/${key//./\/}"
  if [ ! -e "$path" ]; then
    printf '%-36s MISSING  (no such key here: older kernel, module not loaded, or not per network namespace; wanted %s)\n' "$key" "$want"
    failed=1
    continue
  fi
  have=$(tr -s '[:space:]' ' ' < "$path" | xargs)
  # ip_local_port_range is a range: a wider range is "higher" only if it starts at or below ours.
  if [ "$key" = net.ipv4.ip_local_port_range ]; then
    read -r have_lo have_hi <<< "$have"; read -r want_lo want_hi <<< "$want"
    if [ "$have_lo" -le "$want_lo" ] && [ "$have_hi" -ge "$want_hi" ]; then ok=1; else ok=0; fi
  elif [ "${FANOUT_SYSCTL_EXACT:-0}" = 1 ]; then
    [ "$have" = "$want" ] && ok=1 || ok=0
  elif at_least "$have" "$want"; then ok=1; else ok=0; fi
  # Settings whose safe direction is "lower" (shorter timeouts, less swapping).
  case "$key" in
    net.ipv4.tcp_fin_timeout|net.ipv4.tcp_keepalive_*|vm.swappiness)
      [ "$have" -le "$want" ] 2>/dev/null && ok=1 || ok=0 ;;
  esac
  if [ "$ok" = 1 ]; then
    printf '%-36s ok       (%s)\n' "$key" "$have"
  elif [ "$check_only" = 1 ]; then
    printf '%-36s LOW      (%s, profile wants %s)\n' "$key" "$have" "$want"
    failed=1
  elif err=$(sysctl -q -w "$key=$want" 2>&1); then
    printf '%-36s applied  (%s -> %s)\n' "$key" "$have" "$want"
    applied=$((applied + 1))
  else
    printf '%-36s FAILED   (%s, wanted %s: %s)\n' "$key" "$have" "$want" "${err:-not permitted}"
    failed=1
  fi
done < "$profile"

if [ "$failed" = 1 ]; then
  echo "some settings of $profile are not in effect (see above)"
else
  echo "$profile: all settings in effect ($applied changed)"
fi
exit "$failed"
