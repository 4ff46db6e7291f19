# Trust scenarios: an untrusted client cannot poison trusted outputs through
# a backend's store (poison). Sourced by e2e.sh; helpers in lib.sh
# (edit_backends, reload_relay, lab_config).
#
# The lab's standard config has no backend for untrusted clients (eve's
# builds fail at once). untrusted_config adds "h3u": host h3 reached with
# `store = "/nix/eve-store"`, a chroot store of its own (h3's /nix/store is
# not touched), marked `untrusted_clients = true`. Scenarios that call it
# restore the lab config on exit (trap lab_config EXIT).
EVE_STORE=/nix/eve-store

# untrusted_config [PY]: relay.toml + h3u (untrusted), then PY (more
# edit_backends statements), reloaded; prints the reload summary. A relay
# that refuses the key (no such option) keeps its config: then the config
# is reloaded without h3u, so the scenario runs on with the old code's
# placement and shows what that code does (reported as a NOTE).
untrusted_config() {
  local r
  edit_backends "add('h3u', bs['h3'].replace('name = \"h3\"', 'name = \"h3u\"') + 'store = \"$EVE_STORE\"\nuntrusted_clients = true\n'); ${1:-pass}"
  r=$(reload_relay)
  case $r in
    *"running config kept"*)
      note "the relay refused untrusted_clients ($r): running without an untrusted backend"
      edit_backends "drop('h3u')"
      r=$(reload_relay);;
  esac
  echo "$r"
}

# eve_build NIXFILE LOG: nix-build NIXFILE as eve (client3, ssh://relay-eve); prints the output
eve_build() {
  echo "+ [client3 as eve] nix-build $1 (log: $2)" >&2
  in_ns client3 nix-build "$1" --no-out-link --max-jobs 0 --builders "$(cat "$STATE/machines-relay-eve")" 2>"$2"
}

sc_poison_desc="eve plants a doctored copy of lab's output path and builds with it; lab's build and the HTTP cache stay honest"
sc_poison() {
  local s=$SEED-poison target=$LOGS/poison-target.nix evil=$LOGS/poison-eve.nix drv out lab2 got pub i r
  http_up_or_skip
  pub=$(cat "$STATE/keys/relay-cache.sec.pub")
  trap lab_config EXIT
  # h1 is the only trusted backend: on a relay that mixes trust levels,
  # eve's build and lab's would meet there
  r=$(untrusted_config "drop('h2'); drop('h3')") || fail "could not reload the relay with the untrusted backend h3u"
  echo "  config: $r"
  cat >"$target" <<NIX
let lab = import $DRV { seed = "$s"; }; in
derivation {
  name = "lab-poison-target";
  system = builtins.currentSystem;
  seed = "$s";
  builder = "\${lab.bb}/bin/sh";
  args = [ "-e" "-c" "echo honest $s > \$out" ];
}
NIX
  # 1. eve computes lab's output path and registers a doctored file under it
  drv=$(in_ns client3 nix-instantiate "$target" 2>/dev/null) || fail "eve: nix-instantiate failed"
  out=$(in_ns client3 nix-store -q --outputs "$drv") || fail "eve: no output path for $drv"
  in_ns client3 sh -c "printf 'doctored by eve\n' > '$out' && printf '%s\n\n0\n' '$out' | nix-store --register-validity" \
    || fail "eve could not register a doctored $out in her own store"
  echo "  eve: registered a doctored $out in her store"
  # 2. eve builds with it as an input: the relay uploads it and pushes it to a backend
  cat >"$evil" <<NIX
let lab = import $DRV { seed = "$s"; }; in
derivation {
  name = "eve-poison";
  system = builtins.currentSystem;
  seed = "$s";
  builder = "\${lab.bb}/bin/sh";
  src = builtins.storePath "$out";
  args = [ "-e" "-c" "cat \$src > \$out" ];
}
NIX
  OFF=$(relay_log_size)
  eve_build "$evil" "$LOGS/poison.eve.nix.log" >/dev/null || { tail -5 "$LOGS/poison.eve.nix.log"; fail "eve's build failed"; }
  echo "  eve's build ran on: $(built_on eve-poison)"
  # 3. lab builds the honest derivation
  echo "+ [client] nix-build $target (log: $BLOG)" >&2
  lab2=$(in_ns client nix-build "$target" --no-out-link --max-jobs 0 --builders "$BUILDERS" 2>"$BLOG") \
    || { tail -5 "$BLOG"; fail "lab's build of the honest derivation failed"; }
  [ "$lab2" = "$out" ] || fail "lab built $lab2, eve computed $out"
  got=$(in_ns client cat "$out")
  [ "$got" = "honest $s" ] || fail "POISONED: lab's $out holds '$got' (built on: $(built_on lab-poison-target))"
  client_valid "$out"
  echo "  lab: $out holds 'honest $s' (built on $(built_on lab-poison-target))"
  # 4. the relay's public cache holds the honest content: substitute it over HTTP
  for i in $(seq 1 100); do [ -f "$CACHE/$(hash_part "$out").narinfo" ] && break; sleep 0.1; done
  grep -qx "NarHash: $(in_ns client nix-store -q --hash "$out")" "$CACHE/$(hash_part "$out").narinfo" \
    || fail "POISONED: the relay's public narinfo of $out has another NarHash than lab's honest build"
  in_ns client2 nix-store --delete "$out" >/dev/null 2>&1 || true
  in_ns client2 env XDG_CACHE_HOME="$LOGS/poison-xdg-cache" nix-store -r "$out" \
    --option substituters "$HTTP_URL" --option trusted-public-keys "$pub" \
    --max-jobs 0 --option builders "" >/dev/null 2>"$LOGS/poison.subst.log" \
    || { tail -3 "$LOGS/poison.subst.log" >&2; fail "client2 could not substitute $out from $HTTP_URL"; }
  got=$(in_ns client2 cat "$out")
  [ "$got" = "honest $s" ] || fail "POISONED: the HTTP cache serves '$got' for $out"
  echo "  HTTP cache: $out substitutes with the honest content"
  # 5. where eve's build ran: only on h3u, whose separate store now holds the doctored path
  [ "$(built_on eve-poison)" = "h3u " ] || fail "eve's build ran on '$(built_on eve-poison)', expected h3u only"
  [ "$(in_ns h3 cat "$EVE_STORE$out")" = "doctored by eve" ] || fail "the doctored $out is not in h3u's store ($EVE_STORE)"
  if on_host h1 "$out" && [ "$(in_ns h1 cat "$out")" != "honest $s" ]; then fail "h1 holds the doctored $out"; fi
  echo "  the doctored path reached only h3u's store ($EVE_STORE on h3)"
}
