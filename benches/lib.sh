# Helpers shared by the bench scripts (sourced). They read $RELAY_PID,
# $HS and $STATE and call the sourcing script's die().

calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit } if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "nan") printf "%.2f", a / b; else print "n/a" }'; }
cpu_secs() {  # user+system CPU seconds the relay has used so far
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$RELAY_PID/stat"
}
goal() {  # goal NAME VALUE OP LIMIT UNIT
  local ok
  ok=$(awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN { if (v == "n/a") { print "n/a"; exit }
        if ((op == "<=" && v + 0 <= l + 0) || (op == ">=" && v + 0 >= l + 0)) print "met"; else print "MISSED" }')
  echo "$1: $2$5 (goal $3 $4$5) $ok"
}
relay_alive() { "$HS" relay status >/dev/null 2>&1 || die "the relay is not running any more (see $STATE/relay.log)"; }
status_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$RELAY_PID/status"; }
